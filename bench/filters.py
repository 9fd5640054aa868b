"""Metadata filters: warm query time with each filter against the unfiltered query, in the
same run, at 100k and 1.28M cached photos (synthetic vectors and metadata: capture times over
ten years, 20 camera models, ratings, keywords, positions), and the headers-only fill of
photos cached before metadata was kept.

    python bench/filters.py [--sizes 100000 1280000] [--runs 7] [--fill 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, REPO, cpu_summary, full_model, median  # noqa: E402
from bench.query import build_cache  # noqa: E402
from clipsearch.cache.store import Store  # noqa: E402
from clipsearch.model.encoders import TextEncoder  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402
from clipsearch.search.filters import make_filters  # noqa: E402
from clipsearch.search.query import ranked  # noqa: E402
from clipsearch.search.select import select_rows  # noqa: E402

YEAR = 365.25 * 86400
START = 1_420_070_400  # 2015-01-01
KEYWORDS = ["beach", "family", "christmas", "dog", "mountains", "birthday", "city", "food", "snow", "garden"]
FILTERS = {  # name: (options, roughly the share of photos kept)
    "1% (a month)": dict(after="2019-03", before="2019-04-06"),
    "camera (5%)": dict(camera="model 07"),
    "tag (10%)": dict(tags=("snow",)),
    "near 50 km (~4%)": dict(near="38.7,-9.1", within="50km"),
    "rating >= 4 (40%)": dict(min_rating=4),
    "half the years": dict(after="2020"),
    "combined": dict(after="2016", camera="model", tags=("family",), min_rating=2),
}


def describe(db: Path) -> None:
    """Give every cached photo synthetic metadata (once per cache file)."""
    store = Store(db)
    try:
        if store.meta_coverage()["read"] == store.counts()["indexed"]:
            return
        ids = store.live_ids()
        rng = np.random.default_rng(1)
        taken = START + rng.uniform(0, 10 * YEAR, len(ids))
        lat = 38.7 + rng.normal(0, 3, len(ids))
        lon = -9.1 + rng.normal(0, 3, len(ids))
        model = rng.integers(0, 20, len(ids))
        rating = rng.integers(0, 6, len(ids))
        keys = rng.integers(0, len(KEYWORDS), (len(ids), 2))
        with store.atomic():
            seq = store.next_seq()
            store.insert_meta_rows(((row_id, float(taken[i]), "Make", f"Model {model[i]:02d}", float(lat[i]),
                                    float(lon[i]), int(rating[i]), json.dumps(sorted({KEYWORDS[k] for k in keys[i]})))
                                   for i, row_id in enumerate(ids)), seq)
    finally:
        store.close()


def warm(db: Path, manifest, runs: int) -> None:
    vector = TextEncoder(manifest).encode(["a kitten peeking from behind a corner"])[0]
    store = Store(db, readonly=True)
    try:
        ranked(store, manifest, vector, 10)  # warm the page cache and the scorer
        base = median([timed(lambda: ranked(store, manifest, vector, 10)) for _ in range(runs)])
        print(f"  unfiltered: {base * 1000:.0f} ms")
        for name, options in FILTERS.items():
            filters = make_filters(**options)

            def filtered():
                selection = select_rows(store, manifest.embedding_dim, filters, None)
                return ranked(store, manifest, vector, 10, selection=selection), len(selection)

            seconds = median([timed(filtered) for _ in range(runs)])
            kept = filtered()[1]
            print(f"  {name:20} keeps {kept / store.counts()['indexed']:6.1%}: {seconds * 1000:5.0f} ms "
                  f"({seconds / base:.2f}x unfiltered)")
    finally:
        store.close()


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def headers_fill(count: int, model: Path) -> None:
    """`count` real JPEGs with EXIF cached as if indexed before metadata was kept; one
    `clipsearch index` then reads their headers only."""
    from PIL import Image

    from clipsearch.cache.packed import quantize_rows

    manifest = load_manifest(model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exif = Image.Exif()
        exif[0x010F] = "Canon"
        exif.get_ifd(0x8769)[0x9003] = "2019:07:14 18:03:11"
        template = tmp / "template.jpg"
        Image.new("RGB", (64, 48), (10, 120, 200)).save(template, "JPEG", exif=exif.tobytes())
        data = template.read_bytes()
        db = tmp / "index.db"
        store = Store(db)
        store.check_model(manifest.model_id, manifest.name, claim=True)
        unit = np.random.default_rng(0).normal(size=(count, manifest.embedding_dim)).astype(np.float32)
        q, scales = quantize_rows(unit / np.linalg.norm(unit, axis=1, keepdims=True))
        rows = []
        for i in range(count):
            path = tmp / "photos" / f"{i // 1000:03d}" / f"IMG_{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            st = path.stat()
            rows.append((os.fsencode(path), os.fsencode(path.parent), st.st_mtime_ns, st.st_size, os.urandom(32),
                         q[i].tobytes(), float(scales[i]), 1, time.time()))
        with store.atomic():
            store.insert_rows(rows)
        store.close()
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(tmp / "photos"), "--db", str(db),
                              "--model", str(model)], capture_output=True, text=True, cwd=REPO, check=True)
        seconds = time.perf_counter() - started
        store = Store(db, readonly=True)
        read = store.meta_coverage()["read"]
        store.close()
        print(f"headers-only fill: {read} of {count} cached photos in {seconds:.1f} s "
              f"({count / seconds:.0f} photos/s; 100,000 would take {100_000 / (count / seconds):.0f} s)")
        print("  " + out.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_280_000])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--fill", type=int, default=10_000)
    args = parser.parse_args()
    model = full_model()
    manifest = load_manifest(model)
    print(cpu_summary())
    for size in args.sizes:
        db = CACHE / f"query-{size}.db"
        build_cache(db, size, manifest)
        describe(db)
        print(f"{size} cached photos, median of {args.runs} warm runs (text already encoded):")
        warm(db, manifest, args.runs)
    if args.fill:
        headers_fill(args.fill, model)


if __name__ == "__main__":
    main()
