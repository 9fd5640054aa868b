"""`clipsearch tag --labels FILE`: zero-shot labelling. Every cached photo is scored against
every label's prompt (one matrix product over the cached vectors, no photo decoded), and each
photo gets its best labels reaching the score, as keywords written by `keywords.apply_keywords`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from clipsearch.errors import UsageError

from .keywords import TagOptions, TagReport, apply_keywords, check_keyword


def tag_labels(labels_file: Path, db_path: Path, model_dir: Path, options: TagOptions,
               warn: Callable[[bytes, str], None], *, per_photo: int = 3, min_score: float | None = None,
               within: str | None = None, text_model_dir: Path | None = None) -> TagReport:
    """Score every cached photo against every label; give each its best `per_photo` labels
    whose cosine reaches `min_score`."""
    if min_score is None:
        raise UsageError("--labels needs --min-score S: every photo is closest to some label")
    labels, prompts = read_labels(labels_file)
    from clipsearch.cache.library import Library
    from clipsearch.model.encoders import TextEncoder
    from clipsearch.model.manifest import load_manifest, load_text_model
    from clipsearch.photos.walk import normalise_root
    from clipsearch.search.query import check_text_model

    manifest = load_manifest(model_dir)
    text_manifest = load_text_model(text_model_dir) if text_model_dir else manifest
    root = normalise_root(within) if within else None
    library = Library(db_path)
    chosen: dict[bytes, list[str]] = {}
    try:
        library.check_model(manifest.model_id, manifest.name)
        check_text_model(library, manifest, text_manifest)
        texts = TextEncoder(text_manifest).encode(prompts)  # [labels, dim], unit rows
        for _, store in library.each(root):
            label_rows(store, texts, labels, per_photo, min_score, root, chosen)
    finally:
        library.close()
    return apply_keywords(chosen, db_path, options, warn)


def label_rows(store, texts: np.ndarray, labels: list[str], per_photo: int, min_score: float, root: bytes | None,
               chosen: dict[bytes, list[str]]) -> None:
    """The labels of the photos of one database of the library, into `chosen`."""
    from clipsearch.photos.walk import is_under

    with store.snapshot():
        for rows in store.live_vectors(4096):
            ids = [row[0] for row in rows]
            vectors = np.frombuffer(b"".join(row[2] for row in rows), dtype=np.int8).reshape(len(rows), -1)
            unit = vectors.astype(np.float32)
            unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
            scores = unit @ texts.T  # cosines, [photos, labels]
            best, best_scores = best_columns(scores, per_photo)
            keep = best_scores >= min_score
            paths = store.paths_of([row_id for row_id, wanted in zip(ids, keep.any(axis=1)) if wanted])
            for row in np.flatnonzero(keep.any(axis=1)):
                path = paths[ids[row]]
                if root is None or is_under(path, [root]):
                    chosen[path] = [labels[j] for j in best[row][keep[row]]]


def best_columns(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k highest-scoring columns, best first, and their scores. argpartition,
    not a full argsort: 1,000 labels x 100,000 photos measured 25 s sorted whole."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def read_labels(path: Path) -> tuple[list[str], list[str]]:
    """One label per line, or `label<TAB>prompt`; blank lines and #comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the labels ({exc})") from None
    labels, prompts = [], []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        label, _, prompt = line.partition("\t")
        check_keyword(label.strip())
        labels.append(label.strip())
        prompts.append(prompt.strip() or label.strip())
    if not labels:
        raise UsageError(f"{path}: no labels in it")
    return labels, prompts
