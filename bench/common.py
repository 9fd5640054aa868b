"""Shared by the bench scripts: a full-size random-weight model folder (exported once and
cached), peak RSS, medians, and phone-like JPEGs."""
from __future__ import annotations

import importlib.util
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CLIPSEARCH_BENCH_CACHE", Path.home() / ".cache" / "clipsearch-bench"))


def full_model(int8: bool = True, required: bool = True) -> Path | None:
    """The model folder the benchmarks use: `CLIPSEARCH_BENCH_MODEL` (any model folder, e.g.
    one copied to a NAS; its `-fp32` twin from `python -m export --keep-fp32` beside it for the
    fp32 comparisons), else the full-size ViT-B/32 random-weight export in the bench cache,
    made once (that needs PyTorch). Without `required`, a missing fp32 twin gives None and
    the caller leaves its fp32 comparison out; anything else missing ends the run in one line."""
    env = os.environ.get("CLIPSEARCH_BENCH_MODEL")
    folder = Path(env).expanduser() if env else CACHE / "random-vit-b-32"
    wanted = folder if int8 else folder.with_name(folder.name + "-fp32")
    if (wanted / "manifest.json").is_file():
        return wanted
    if env or (folder / "manifest.json").is_file():
        if not int8 and not required:
            return None
        sys.exit(f"bench: {wanted}: no model folder there" + ("" if int8 else
                 "; the fp32 comparison needs the twin that `python -m export --keep-fp32` writes"))
    if importlib.util.find_spec("torch") is None:
        sys.exit(f"bench: no model folder at {folder} and no PyTorch here to export one: set "
                 "CLIPSEARCH_BENCH_MODEL=DIR to a model folder (DIR-fp32 beside it for fp32 comparisons)")
    print(f"bench: exporting a full-size random-weight model to {folder} (once)", file=sys.stderr)
    result = subprocess.run([sys.executable, "-m", "export", "--random-weights", "--seed", "0", "--out", str(folder),
                             "--keep-fp32"], cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"bench: exporting the bench model failed (exit {result.returncode}); see the lines above")
    return wanted


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values) -> float:
    return statistics.median(list(values))


def phone_photo(path: Path, size: tuple[int, int], seed: int) -> None:
    """A JPEG with smooth structure plus sensor-like grain, so it compresses like a photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.uniform(0, 255, (h // 64 + 2, w // 64 + 2, 3)).astype(np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 10, (h, w, 3)).astype(np.int16)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=88)


def cpu_summary() -> str:
    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    from clipsearch.config import available_cores

    marks = [f for f in ("sse4_2", "avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp") if f in flags]
    cores = available_cores()
    pinned = f" (pinned to {cores} of {os.cpu_count()})" if cores != os.cpu_count() else ""
    return f"{model}, {cores} cores{pinned}, {' '.join(marks) or 'no SIMD flags read'}"
