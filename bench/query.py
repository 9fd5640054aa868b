"""Cold `clipsearch query` processes on large caches, and an unchanged re-index.

For each size (default 100,000 and 1,281,167 vectors), fills a cache with synthetic int8
vectors (the layout `index` writes), then times whole `clipsearch query` processes (start to
results printed) and reads their peak RSS; prints the split of a cold start, disk use per
image, and for 100,000 files on disk whose rows are already cached, how long a re-index takes.

    python bench/query.py [--sizes 100000,1281167] [--runs 7] [--reindex-files 100000]
    python bench/query.py --sizes 100000 --reindex-files 0 --texts "a red car" "café au lait" --against ../old
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, REPO, cpu_summary, full_model, median  # noqa: E402
from clipsearch.cache.packed import quantize_rows, write_packed  # noqa: E402
from clipsearch.cache.store import Store  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402

WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "out = subprocess.run(sys.argv[1:], capture_output=True)\n"
    "wall = time.perf_counter() - start\n"
    "assert out.returncode == 0, out.stderr\n"
    "print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, len(out.stdout.splitlines()))\n"
)

PHASES = (
    "import time; t0 = time.perf_counter()\n"
    "import numpy, onnxruntime, tokenizers, click, sqlite3; t1 = time.perf_counter()\n"
    "from pathlib import Path\n"
    "from clipsearch.model.manifest import load_manifest; from clipsearch.model.encoders import TextEncoder\n"
    "from clipsearch.cache.store import Store; from clipsearch.search.query import search\n"
    "m = load_manifest(Path(MODEL)); enc = TextEncoder(m); t2 = time.perf_counter()\n"
    "enc.tokenizer; t3 = time.perf_counter()\n"
    "enc.session; t4 = time.perf_counter()\n"
    "v = enc.encode(['a kitten peeking from behind a corner'])[0]; t5 = time.perf_counter()\n"
    "s = Store(Path(DB), readonly=True); r = search(s, m, v, 10); t6 = time.perf_counter()\n"
    "r = search(s, m, v, 10); t7 = time.perf_counter()\n"
    "print(json.dumps(dict(imports=t1 - t0, manifest=t2 - t1, tokenizer=t3 - t2, session=t4 - t3, encode=t5 - t4,"
    " rank_cold=t6 - t5, rank_warm=t7 - t6)))\n"
)


def build_cache(db: Path, count: int, manifest) -> None:
    if db.exists():
        store = Store(db, readonly=True)
        if store.counts()["indexed"] == count and store.meta("model_id") == manifest.model_id:
            store.close()
            return
        store.close()
        for p in db.parent.glob(db.name + "*"):
            p.unlink()
    store = Store(db)
    store.check_model(manifest.model_id, manifest.name, claim=True)
    insert_synthetic(store, np.random.default_rng(0), count, manifest.embedding_dim, b"/volume1/photo")
    write_packed(store, manifest.embedding_dim)
    store.close()


def insert_synthetic(store, rng, count: int, dim: int, prefix: bytes, each_chunk=None, chunk: int = 50_000) -> None:
    """`count` random unit vectors as cached photos PREFIX/0000/IMG_0000000.jpg ..., a
    transaction per `chunk`; `each_chunk(store, seq, n)` runs inside it (metadata)."""
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        unit = rng.normal(size=(n, dim)).astype(np.float32)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        q, scales = quantize_rows(unit)
        with store.atomic():
            seq = store.next_seq()
            store.insert_rows(
                (prefix + b"/%04d/IMG_%07d.jpg" % ((start + i) // 1000, start + i),
                 prefix + b"/%04d" % ((start + i) // 1000), 1_700_000_000_000_000_000 + start + i,
                 3_000_000 + start + i, os.urandom(32), q[i].tobytes(), float(scales[i]), seq, time.time())
                for i in range(n))
            if each_chunk is not None:
                each_chunk(store, seq, n)


QUERY = "a kitten peeking from behind a corner"


def cold_runs(db: Path, model: Path, runs: int, text: str = QUERY, checkout: Path = REPO) -> tuple[list[float], list[float]]:
    """Whole `clipsearch query` processes of the clipsearch in `checkout` (`python -m` runs the
    package of its working directory)."""
    walls, rss = [], []
    cmd = [sys.executable, "-m", "clipsearch", "query", text, "--db", str(db), "--model", str(model)]
    run = dict(check=True, capture_output=True, text=True, cwd=checkout)
    subprocess.run([sys.executable, "-c", WRAPPER, *cmd], **run)  # warm the page cache
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], **run)
        wall, peak, lines = out.stdout.split()
        assert int(lines) == 10
        walls.append(float(wall))
        rss.append(float(peak))
    return walls, rss


def compare_texts(db: Path, model: Path, runs: int, texts: list[str], other: Path | None) -> None:
    """Cold queries per text, interleaved, and against another checkout (e.g. the previous
    release in a `git worktree`) in the same run."""
    checkouts = {"this": REPO, **({"other": other} if other else {})}
    walls = {(t, c): [] for t in texts for c in checkouts}
    for _ in range(runs):
        for text in texts:
            for name, path in checkouts.items():
                walls[(text, name)] += cold_runs(db, model, 1, text, path)[0]
    for text in texts:
        line = ", ".join(f"{name} {median(walls[(text, name)]):.3f} s" for name in checkouts)
        if other:
            line += f" (this - other: {(median(walls[(text, 'this')]) - median(walls[(text, 'other')])) * 1000:+.0f} ms)"
        print(f"  cold query {text!r}: {line}")


def phases(db: Path, model: Path, runs: int) -> dict:
    code = f"import json\nMODEL = {str(model)!r}\nDB = {str(db)!r}\n" + PHASES
    samples = [json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                         text=True).stdout) for _ in range(runs)]
    return {key: median(s[key] for s in samples) for key in samples[0]}


def reindex_unchanged(files: int, model: Path, manifest) -> tuple[float, str]:
    root = CACHE / f"tiny-files-{files}"
    if not (root / "done").exists():
        root.mkdir(parents=True, exist_ok=True)
        payload = b"\xff\xd8\xff" + os.urandom(600)
        for i in range(files):
            folder = root / f"{i // 500:04d}"
            folder.mkdir(exist_ok=True)
            (folder / f"IMG_{i:06d}.jpg").write_bytes(payload)
        (root / "done").write_text("ok")
    db = CACHE / f"reindex-{files}.db"
    for p in CACHE.glob(db.name + "*"):
        p.unlink()
    store = Store(db)
    store.check_model(manifest.model_id, manifest.name, claim=True)
    vector = bytes(manifest.embedding_dim)
    with store.atomic():
        seq = store.next_seq()
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            rows = []
            with os.scandir(os.fsencode(folder)) as it:
                for entry in it:
                    st = entry.stat()
                    rows.append((entry.path, os.fsencode(folder), st.st_mtime_ns, st.st_size, b"f", vector, 1.0, seq,
                                 time.time()))
            store.insert_rows(rows)
        # Cached with their prints (none can be made of these bytes) by this print version: an
        # unchanged re-index then has nothing to decode (before, it timed decoding every file for one).
        from clipsearch.photos.prints import VERSION

        store.put_prints_bulk([(b"", 603)])  # every file: 3 + 600 bytes
        store.set_meta("print_version", VERSION)
    store.close()
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(root), "--db", str(db), "--model",
                          str(model)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stderr.strip().splitlines()[-1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1281167")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reindex-files", type=int, default=100_000)
    parser.add_argument("--texts", nargs="+", default=None, help="also time cold queries of these texts")
    parser.add_argument("--against", type=Path, default=None,
                        help="with --texts: another checkout of clipsearch to time in the same run")
    args = parser.parse_args(argv)
    figures: dict = {}
    model = full_model(True)
    manifest = load_manifest(model)
    print(f"machine: {cpu_summary()}; full-size random-weight int8 graphs; medians of {args.runs} cold processes")
    for size in (int(s) for s in args.sizes.split(",")):
        db = CACHE / f"query-{size}.db"
        build_cache(db, size, manifest)
        walls, rss = cold_runs(db, model, args.runs)
        disk = sum(p.stat().st_size for p in CACHE.glob(db.name + "*"))
        split = phases(db, model, max(3, args.runs // 2))
        print(f"{size:>9,} vectors: cold query median {median(walls):.3f} s (min {min(walls):.3f}, max {max(walls):.3f}), "
              f"peak RSS median {median(rss):.0f} MB, disk {disk / size:.0f} bytes/image ({disk / 1e6:.0f} MB)")
        print("           split: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in split.items()))
        figures[size] = {"cold_s": median(walls), "rss_mb": median(rss), "bytes_per_image": disk / size,
                         "warm_rank_ms": split["rank_warm"] * 1000, "split": split}
        if args.texts:
            compare_texts(db, model, args.runs, args.texts, args.against)
    if args.reindex_files:
        seconds, line = reindex_unchanged(args.reindex_files, model, manifest)
        print(f"re-index of {args.reindex_files:,} unchanged files: {seconds:.2f} s (whole process) -> {line}")
        figures["reindex_s"] = seconds
    return figures


if __name__ == "__main__":
    main()
