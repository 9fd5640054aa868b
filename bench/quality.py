"""Search quality on a labelled image dataset: text-to-image retrieval, the way the
reference publication measures it.

Every class name becomes one query through a prompt template (default "a photo of a {}.",
CLIP's convention). For each query the whole dataset is ranked; reported:
- top-1: fraction of queries whose first result has the queried label;
- top-5: fraction of queries with the queried label among the first five results;
- mAP: mean over queries of average precision over the full ranking.

Datasets: an ImageNet-style folder (one sub-folder per class; `--class-names FILE` maps
folder names such as n01440764 to names, JSON object or "folder<TAB>name" lines), or the
CIFAR-100 python version (the folder holding `test` and `meta`; its images are written out
as PNG files once). Indexing goes through clipsearch itself, into `--work DIR`.

Memory stays bounded at 1.28M images: vectors are scored in chunks, 64 classes at a time.

    python bench/quality.py DATASET --model MODEL_DIR [--model OTHER_DIR]   # two: compare
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clipsearch.cache.packed import iter_blocks, packed_path, read_header, read_scales, signed_rows  # noqa: E402
from clipsearch.cache.store import Store  # noqa: E402
from clipsearch.index.indexer import IndexOptions  # noqa: E402
from clipsearch.index.run import index_paths  # noqa: E402
from clipsearch.model.encoders import TextEncoder  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402

CLASS_GROUP = 64


def prepare(dataset: Path, work: Path, class_names_file: Path | None) -> tuple[Path, dict[str, str]]:
    """The image folder to index and {folder name: class name}."""
    if (dataset / "meta").is_file() and (dataset / "test").is_file():
        return cifar100_as_pngs(dataset, work / "cifar100-test"), {}
    folders = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    names = {name: name.replace("_", " ") for name in folders}
    if class_names_file:
        text = class_names_file.read_text(encoding="utf-8")
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError:
            mapping = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
        names.update({k: v.strip() for k, v in mapping.items() if k in names})
    return dataset, names


def cifar100_as_pngs(dataset: Path, out: Path) -> Path:
    from PIL import Image

    done = out / ".complete"
    if done.exists():
        return out
    with open(dataset / "meta", "rb") as f:
        labels = pickle.load(f, encoding="latin1")["fine_label_names"]
    with open(dataset / "test", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    pixels = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for i, (image, label) in enumerate(zip(pixels, batch["fine_labels"])):
        folder = out / labels[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    done.touch()
    return out


def evaluate(images: Path, names: dict[str, str], model_dir: Path, work: Path, template: str,
             workers: int | None) -> dict:
    manifest = load_manifest(model_dir)
    db = work / f"{manifest.name}-{manifest.model_id[:8]}.db"
    options = IndexOptions() if workers is None else IndexOptions(workers=workers)
    index_paths([str(images)], db, manifest, options, lambda path, message: print(
        f"warning: {os.fsdecode(path)}: {message}", file=sys.stderr))
    return score(db, manifest, names, template)


def score(db: Path, manifest, names: dict[str, str], template: str) -> dict:
    """Rank an indexed dataset (label = the image's folder name) for every class prompt."""
    store = Store(db, readonly=True)
    packed = read_header(packed_path(db))
    # Labels as numpy arrays, streamed from the cursor: a dict or a fetched list of 1.28M rows
    # would cost a few hundred MB more at peak.
    row_ids = np.empty(packed.count, dtype=np.int64)
    row_dirs = np.empty(packed.count, dtype=np.int32)
    dir_index: dict[bytes, int] = {}
    count = 0
    for row_id, folder in store.live_vector_dirs():
        if count == packed.count:
            raise SystemExit(f"{db}: more vectors than its packed file holds; run clipsearch index on it first")
        row_ids[count], row_dirs[count] = row_id, dir_index.setdefault(folder, len(dir_index))
        count += 1
    store.close()
    folder_names = [os.fsdecode(os.path.basename(folder)) for folder in dir_index]
    folders = sorted(set(folder_names))
    class_of_dir = np.array([folders.index(name) for name in folder_names], dtype=np.int32)
    position = np.minimum(np.searchsorted(row_ids[:count], packed.ids), max(count - 1, 0))
    if count == 0 or not np.array_equal(row_ids[position], packed.ids):
        raise SystemExit(f"{db}: its packed vector file is stale; run clipsearch index on it first")
    labels = class_of_dir[row_dirs[position]]
    prompts = [template.format(names.get(folder, folder.replace("_", " "))) for folder in folders]
    text = TextEncoder(manifest).encode(prompts)
    scales = read_scales(packed)
    top1 = top5 = 0
    average_precisions = []
    for first in range(0, len(folders), CLASS_GROUP):
        group = text[first : first + CLASS_GROUP]
        scores = np.empty((packed.count, len(group)), dtype=np.float32)
        for start, block in iter_blocks(packed):
            rows = block.shape[0]
            scores[start : start + rows] = (signed_rows(block).astype(np.float32) @ group.T) * scales[start : start + rows,
                                                                                                      None]
        for j in range(len(group)):
            cls = first + j
            order = np.argsort(-scores[:, j], kind="stable")
            hits = labels[order] == cls
            top1 += bool(hits[0])
            top5 += bool(hits[:5].any())
            positions = np.flatnonzero(hits) + 1
            average_precisions.append(float(np.mean(np.arange(1, len(positions) + 1) / positions)) if len(positions) else 0.0)
    queries = len(folders)
    return {"model": manifest.name, "precision": manifest.data.get("precision"), "images": int(packed.count),
            "classes": queries, "top1": top1 / queries, "top5": top5 / queries, "mAP": float(np.mean(average_precisions))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", type=Path, action="append", required=True, help="model folder; give two to compare")
    parser.add_argument("--template", default="a photo of a {}.")
    parser.add_argument("--class-names", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "clipsearch-quality")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    images, names = prepare(args.dataset, args.work, args.class_names)
    results = [evaluate(images, names, model, args.work, args.template, args.workers) for model in args.model]
    print(f"{'model':32} {'images':>9} {'classes':>7} {'top-1':>7} {'top-5':>7} {'mAP':>7}")
    for r in results:
        print(f"{r['model'] + ' (' + str(r['precision']) + ')':32} {r['images']:9d} {r['classes']:7d} "
              f"{r['top1']:7.2%} {r['top5']:7.2%} {r['mAP']:7.4f}")
    if len(results) == 2:
        a, b = results
        print(f"{'difference (first - second)':32} {'':9} {'':7} {a['top1'] - b['top1']:+7.2%} "
              f"{a['top5'] - b['top5']:+7.2%} {a['mAP'] - b['mAP']:+7.4f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
