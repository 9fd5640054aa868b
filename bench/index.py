"""Indexing speed: shipped defaults vs a naive baseline in the same run, and the bound.

Folder: phone-size JPEGs with grain (half 4032x3024, half 1600x1200), made once and cached.
- baseline: fp32 graphs, full-size decode, one process, batch 8 (rclip's design);
- shipped defaults: int8 graphs, draft decode, one worker process per core, batch 8;
- 1 process x all threads (int8 + draft), to show why the default uses processes;
- bound: cores / (measured per-image decode+preprocess time + per-image inference time).

    python bench/index.py [--photos 240] [--repeats 3]
    python bench/index.py --metadata-cost [--photos 240] [--repeats 5]

--metadata-cost: what reading metadata adds to indexing. The same photos, re-saved once bare
and once described (EXIF date, offset, camera, lens, GPS; an embedded XMP packet with
keywords and rating; a digiKam-style `.jpg.xmp` sidecar), indexed with the defaults,
interleaved; and the per-photo cost of `metadata.photo_record` measured alone.
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
from clipsearch.index.indexer import IndexOptions  # noqa: E402
from clipsearch.index.run import index_paths  # noqa: E402
from clipsearch.index.workers import default_workers  # noqa: E402
from clipsearch.model.encoders import ImageEncoder  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402
from clipsearch.photos.preprocess import load_pixels  # noqa: E402


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
        assert summary.new == len(list(folder.glob("*.jpg"))), summary.as_dict()
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


XMP_PACKET = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
              '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
              'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
              'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmp:Rating="{rating}" '
              'xmp:CreateDate="2019-07-14T18:03:11"><dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>'
              '<lr:hierarchicalSubject><rdf:Bag>{hierarchy}</rdf:Bag></lr:hierarchicalSubject>'
              '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def described_folders(count: int) -> tuple[Path, Path]:
    """(bare, described): the bench photos re-saved alike, without and with metadata."""
    from PIL import Image, TiffImagePlugin

    bare, described = CACHE / f"photos-{count}-bare", CACHE / f"photos-{count}-described"
    bare.mkdir(exist_ok=True)
    described.mkdir(exist_ok=True)
    for i, path in enumerate(sorted(photo_folder(count).iterdir())):
        if (described / (path.name + ".xmp")).exists():
            continue
        keywords = [f"keyword {i % 7}", "family", "holiday"]
        xmp = XMP_PACKET.format(rating=i % 6, keywords="".join(f"<rdf:li>{k}</rdf:li>" for k in keywords),
                                hierarchy="".join(f"<rdf:li>places|{k}</rdf:li>" for k in keywords))
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "Canon EOS 80D", 1
        sub = exif.get_ifd(0x8769)
        sub[0x9003], sub[0x9011], sub[0x9291], sub[0xA434] = "2019:07:14 18:03:11", "+01:00", "25", "EF-S18-135mm"
        rational = TiffImagePlugin.IFDRational
        exif.get_ifd(0x8825).update({1: "N", 2: (rational(38), rational(43), rational(1234, 100)), 3: "W",
                                     4: (rational(9), rational(8), rational(2400, 100))})
        with Image.open(path) as image:
            image.save(bare / path.name, "JPEG", quality=90)
            image.save(described / path.name, "JPEG", quality=90, exif=exif.tobytes(), xmp=xmp.encode())
        sidecar = XMP_PACKET.format(rating=5, keywords="<rdf:li>edited in digiKam</rdf:li>", hierarchy="")
        (described / (path.name + ".xmp")).write_text(sidecar, encoding="utf-8")
    return bare, described


def metadata_cost(count: int, repeats: int) -> dict:
    from PIL import Image

    from clipsearch.photos.metadata import photo_record

    bare, described = described_folders(count)
    manifest = load_manifest(full_model(True))
    rates = {"bare": [], "described": []}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for name, folder in (("bare", bare), ("described", described)):
            rates[name].append(run_config(folder, manifest, IndexOptions()))
    per_photo = []
    for path in sorted(described.glob("*.jpg"))[:32]:
        with Image.open(path) as image:
            start = time.perf_counter()
            photo_record(image, image.size, bytes(path))
            per_photo.append(time.perf_counter() - start)
    decode, _, infer, _ = per_image_costs(bare, manifest)
    bare_rate, described_rate = median(rates["bare"]), median(rates["described"])
    print(f"machine: {cpu_summary()}; {count} photos (half 12 MP, half 2 MP), defaults, medians of {repeats} runs")
    print(f"indexing, bare photos:      {bare_rate:6.2f} images/s (runs: {', '.join(f'{v:.2f}' for v in rates['bare'])})")
    print(f"indexing, described photos: {described_rate:6.2f} images/s "
          f"(runs: {', '.join(f'{v:.2f}' for v in rates['described'])}): {bare_rate / described_rate - 1:+.1%} time")
    record = median(per_photo)
    print(f"metadata.photo_record alone: {record * 1000:.2f} ms per described photo (EXIF, XMP packet, sidecar) "
          f"against {(decode + infer) * 1000:.0f} ms decode+embed on one core: {record / (decode + infer):.2%}")
    return {"bare": bare_rate, "described": described_rate, "record_ms": record * 1000}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metadata-cost", action="store_true", help="only the cost of reading metadata")
    args = parser.parse_args(argv)
    if args.metadata_cost:
        return metadata_cost(args.photos, args.repeats)
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
