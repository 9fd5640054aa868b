"""`clipsearch tag` speed: sidecar writes per second when tagging 10,000 photos (new sidecars,
then merging into the existing ones), and the labels mode over 100,000 cached vectors with
1,000 labels (texts encoded once, then a matrix product: no image decoded).

    python bench/tags.py [--photos 10000] [--vectors 100000] [--labels 1000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, cpu_summary, full_model  # noqa: E402
from bench.query import build_cache  # noqa: E402
from clipsearch.cache.store import Store  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402
from clipsearch.tag.keywords import TagOptions, apply_keywords
from clipsearch.tag.labels import tag_labels  # noqa: E402


def photo_cache(db: Path, folder: Path, count: int, manifest) -> list[bytes]:
    """A cache of `count` photos in folders of 1,000 under `folder` (random vectors; the photo
    files themselves are not needed to write their sidecars)."""
    import os

    import numpy as np

    from clipsearch.cache.packed import quantize_rows

    store = Store(db)
    store.check_model(manifest.model_id, manifest.name, claim=True)
    unit = np.random.default_rng(0).normal(size=(count, manifest.embedding_dim)).astype(np.float32)
    q, scales = quantize_rows(unit / np.linalg.norm(unit, axis=1, keepdims=True))
    paths = []
    for i in range(count):
        (folder / f"{i // 1000:04d}").mkdir(parents=True, exist_ok=True)
        paths.append(os.fsencode(folder / f"{i // 1000:04d}" / f"IMG_{i:07d}.jpg"))
    with store.atomic():
        seq = store.next_seq()
        store.insert_rows((path, os.path.dirname(path), 1_700_000_000_000_000_000 + i, 3_000_000 + i, os.urandom(32),
                           q[i].tobytes(), float(scales[i]), seq, time.time()) for i, path in enumerate(paths))
    store.close()
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--labels", type=int, default=1000)
    args = parser.parse_args()
    model = full_model()
    manifest = load_manifest(model)
    print(cpu_summary())
    warnings = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = tmp / "index.db"
        chosen = {path: ["beach"] for path in photo_cache(db, tmp / "photos", args.photos, manifest)}
        for round_name, keyword in (("new sidecars", "beach"), ("merge into existing sidecars", "sea")):
            chosen = {path: [keyword] for path in chosen}
            started = time.perf_counter()
            report = apply_keywords(chosen, db, TagOptions(), lambda p, m: warnings.append(m))
            seconds = time.perf_counter() - started
            store = Store(db, readonly=True)
            recorded = len(store.keywords_added(keyword, None))
            store.close()
            print(f"tag {len(chosen)} photos, {round_name}: {report.written} sidecars in {seconds:.1f} s "
                  f"({report.written / seconds:.0f} sidecar writes/s, each fsynced; {recorded} values recorded)")
    labels = CACHE / "labels.txt"
    labels.write_text("".join(f"label{i}\ta photo of thing number {i}\n" for i in range(args.labels)))
    db = CACHE / f"query-{args.vectors}.db"
    build_cache(db, args.vectors, manifest)
    from clipsearch.model.encoders import TextEncoder
    from clipsearch.tag.labels import read_labels

    started = time.perf_counter()
    TextEncoder(manifest).encode(read_labels(labels)[1])
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    report = tag_labels(labels, db, model, TagOptions(dry_run=True), lambda p, m: None, per_photo=3, min_score=-1.0)
    seconds = time.perf_counter() - started
    print(f"labels: {args.labels} labels x {args.vectors} cached vectors, best 3 each, dry run: {seconds:.1f} s "
          f"({report.photos} photos labelled; of which encoding the {args.labels} label texts: {encode_seconds:.1f} s)")
    if warnings:
        print(f"warnings: {len(warnings)}, e.g. {warnings[0]}")


if __name__ == "__main__":
    main()
