"""Indexing speed: shipped defaults vs a naive baseline in the same run, and the bound.

Folder: phone-size JPEGs with grain (half 4032x3024, half 1600x1200), made once and cached.
- baseline: fp32 graphs, full-size decode, one process, batch 8 (rclip's design);
- shipped defaults: int8 graphs, draft decode, one worker process per core, batch 8;
- 1 process x all threads (int8 + draft), to show why the default uses processes;
- bound: cores / (measured per-image decode+preprocess time + per-image inference time).

    python bench/index.py [--photos 240] [--repeats 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, REPO, cpu_summary, full_model, median, phone_photo  # noqa: E402
from clipsearch.config import available_cores  # noqa: E402
from clipsearch.encoders import ImageEncoder  # noqa: E402
from clipsearch.indexer import IndexOptions  # noqa: E402
from clipsearch.workers import default_workers  # noqa: E402
from clipsearch.library import index_paths  # noqa: E402
from clipsearch.manifest import load_manifest  # noqa: E402
from clipsearch.preprocess import load_pixels  # noqa: E402


def photo_folder(count: int) -> Path:
    folder = CACHE / f"photos-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"IMG_{i:05d}.jpg"
        if not path.exists():
            phone_photo(path, (4032, 3024) if i % 2 == 0 else (1600, 1200), seed=i)
    return folder


def run_config(folder: Path, manifest, options: IndexOptions) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        summary = index_paths([str(folder)], Path(tmp) / "index.db", manifest, options, lambda p, m: None)
        assert summary.new == len(list(folder.iterdir())), summary.as_dict()
        return summary.embedded / summary.elapsed


def per_image_costs(folder: Path, manifest, sample: int = 16) -> tuple[float, float, float, float]:
    files = sorted(folder.iterdir())[:sample]
    decode = []
    for path in files:
        start = time.perf_counter()
        load_pixels(path, manifest.image, use_draft=True)
        decode.append(time.perf_counter() - start)
    full = []
    for path in files[:6]:
        start = time.perf_counter()
        load_pixels(path, manifest.image, use_draft=False)
        full.append(time.perf_counter() - start)
    encoder = ImageEncoder(manifest, threads=1)
    size = int(manifest.image["size"])
    batch = np.random.default_rng(0).normal(size=(8, 3, size, size)).astype(np.float32)
    graph = manifest.graph("vision")
    encoder.encode_pixels(batch)
    runs, batched = [], []
    for _ in range(3):
        start = time.perf_counter()
        encoder.encode_pixels(batch)  # shipped: one graph run per image (batch-independent vectors)
        runs.append((time.perf_counter() - start) / 8)
        start = time.perf_counter()
        encoder.session.run(None, {graph["input"]: batch})  # one run of 8: vectors depend on the batch
        batched.append((time.perf_counter() - start) / 8)
    return float(np.mean(decode)), float(np.mean(full)), median(runs), median(batched)


def worker_startup(manifest, repeats: int = 3) -> float:
    """Seconds for a fresh process to become a ready worker (interpreter, imports, model
    session): what the pool pays once per run before the first image."""
    code = ("import os, sys\nfrom clipsearch import embedjob\n"
            "embedjob.init_worker(sys.argv[1], 1, True, os.getppid())\nembedjob._process_worker.encoder.session\n")
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, str(manifest.folder)], check=True, cwd=REPO)
        runs.append(time.perf_counter() - start)
    return median(runs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cores = available_cores()
    folder = photo_folder(args.photos)
    int8 = load_manifest(full_model(True))
    fp32_folder = full_model(False, required=False)
    # rclip's design; with only an int8 folder at hand, the same with int8 graphs.
    baseline = load_manifest(fp32_folder) if fp32_folder else int8
    configs = {
        f"baseline ({'fp32' if fp32_folder else 'int8'}, full decode, 1 proc, batch 8)":
            (baseline, IndexOptions(workers=1, batch_size=8, threads=cores, use_draft=False)),
        f"defaults (int8, draft, {default_workers()} workers x 1 thread, batch 8)": (int8, IndexOptions()),
        f"int8, draft, 1 proc x {cores} threads, batch 8": (int8, IndexOptions(workers=1, threads=cores)),
    }
    print(f"machine: {cpu_summary()}; {args.photos} photos (half 12 MP, half 2 MP); medians of {args.repeats} runs")
    rates = {name: [] for name in configs}
    costs = []
    for _ in range(args.repeats):  # interleaved, so drift hits every config alike
        for name, (manifest, options) in configs.items():
            rates[name].append(run_config(folder, manifest, options))
        costs.append(per_image_costs(folder, int8))
    base = median(rates[next(iter(configs))])
    for name, values in rates.items():
        print(f"{name:55} {median(values):6.1f} images/s  x{median(values) / base:.2f} vs baseline  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
    decode, full_decode, infer, infer_batched = (median(c[i] for c in costs) for i in range(4))
    bound = cores / (decode + infer)
    shipped = median(rates[list(configs)[1]])
    print(f"per image, one core: decode+preprocess {decode * 1000:.1f} ms with draft ({full_decode * 1000:.1f} ms "
          f"full decode), int8 inference {infer * 1000:.1f} ms (one run per image, 1 thread); medians over the runs")
    print(f"inference in one run of 8 (vectors then depend on the batch): {infer_batched * 1000:.1f} ms per image; "
          f"one run per image costs x{infer / infer_batched:.2f}; bound with batched runs "
          f"{cores / (decode + infer_batched):.1f} images/s")
    print(f"bound over {cores} cores: {bound:.1f} images/s; defaults reach {shipped / bound:.0%} of it; "
          f"time split: decode {decode / (decode + infer):.0%}, inference {infer / (decode + infer):.0%}")
    # The workers start in parallel, once per run: on a few hundred photos that is a visible
    # share of the run, on a real library it vanishes.
    startup = worker_startup(int8)
    bound_run = args.photos / (startup + args.photos / bound)
    print(f"worker start-up {startup:.2f} s (once per run, in parallel); bound for a {args.photos}-photo run "
          f"counting it: {bound_run:.1f} images/s; defaults reach {shipped / bound_run:.0%} of that")
    names = list(configs)
    return {"baseline": base, "defaults": shipped, "one_process": median(rates[names[2]]), "bound": bound,
            "startup_s": startup, "bound_with_startup": bound_run,
            "decode_ms": decode * 1000, "full_decode_ms": full_decode * 1000, "infer_ms": infer * 1000,
            "infer_batched_ms": infer_batched * 1000}


if __name__ == "__main__":
    main()
