"""`clipsearch tag` and `untag`: what a query finds, given back to the photo tools as keywords
in XMP sidecars (`sidecars.py`), and taken back exactly.

`tag` selects photos with the query language of `query` (or scores every cached photo against
a list of labels: zero-shot labelling, a matrix product over the cached vectors, no image
decoded), then adds the keyword to each photo's sidecar(s). The cache remembers each value it
added (field by field, sidecar by sidecar) and only those: a keyword a person wrote before
is neither recorded nor ever removed by `untag`. A sidecar is written before its record is
committed, so a kill between the two leaves a keyword `untag` will not touch, never a record
of one that a person might later write by hand.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UsageError
from .sidecars import (SidecarError, delete_sidecar, field_values, new_sidecar_path, read_sidecar, sidecar_paths,
                       write_sidecar)

DEFAULT_PARENT = "clipsearch"


@dataclass
class TagReport:
    photos: int = 0  # photos selected
    written: int = 0  # sidecars written (or, with --dry-run, that would be)
    unchanged: int = 0  # sidecars that already said so
    failed: int = 0  # sidecars left alone, with a warning
    changes: list[tuple[bytes, bytes, str, list[str]]] = field(default_factory=list)  # photo, sidecar, keyword, values


@dataclass
class TagOptions:
    style: str = "digikam"  # new sidecars: photo.jpg.xmp ("digikam") or photo.xmp ("adobe")
    parent: str | None = DEFAULT_PARENT  # level above the keyword in the hierarchical fields
    dry_run: bool = False


def tag_query(keyword: str, texts: list[str], db_path: Path, model_dir: Path, options: TagOptions,
              warn: Callable[[bytes, str], None], *, top: int | None = None, min_score: float | None = None,
              weighted=(), negated=(), like=(), unlike=(), within: str | None = None, filters=None) -> TagReport:
    """Add `keyword` to the photos the query (default: the keyword itself) selects."""
    from .search import run_query

    check_keyword(keyword)
    if top is None and min_score is None:
        raise UsageError("tag needs --top N or --min-score S (or both): without a limit it would tag every photo")
    answer = run_query(list(texts) or [keyword], db_path, model_dir, top=top, min_score=min_score,
                       weighted=weighted, negated=negated, like=like, unlike=unlike, within=within, filters=filters)
    chosen = {path: [keyword] for path, _ in answer.results}
    return apply_keywords(chosen, db_path, options, warn)


def tag_labels(labels_file: Path, db_path: Path, model_dir: Path, options: TagOptions,
               warn: Callable[[bytes, str], None], *, per_photo: int = 3, min_score: float | None = None,
               within: str | None = None) -> TagReport:
    """Score every cached photo against every label; give each its best `per_photo` labels
    whose cosine reaches `min_score`."""
    if min_score is None:
        raise UsageError("--labels needs --min-score S: every photo is closest to some label")
    labels, prompts = read_labels(labels_file)
    from .encoders import TextEncoder
    from .manifest import load_manifest
    from .store import Store
    from .walk import is_under, normalise_root

    manifest = load_manifest(model_dir)
    texts = TextEncoder(manifest).encode(prompts)  # [labels, dim], unit rows
    root = normalise_root(within) if within else None
    store = Store(db_path, readonly=True)
    chosen: dict[bytes, list[str]] = {}
    try:
        store.check_model(manifest.model_id, manifest.name, claim=False)
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
    finally:
        store.close()
    return apply_keywords(chosen, db_path, options, warn)


def best_columns(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k highest-scoring columns, best first, and their scores. argpartition,
    not a full argsort: 1,000 labels x 100,000 photos measured 25 s sorted whole."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def untag(keyword: str, db_path: Path, options: TagOptions, warn: Callable[[bytes, str], None],
          within: str | None = None) -> TagReport:
    """Remove from the sidecars exactly the values `tag` added for `keyword`."""
    from .store import Store
    from .walk import normalise_root

    check_keyword(keyword)
    report = TagReport()
    store = Store(db_path)
    try:
        records: dict[tuple[int, bytes, bytes], list[tuple[str, str]]] = {}
        for image_id, photo, sidecar, field_name, value in store.keywords_added(
                keyword, normalise_root(within) if within else None):
            records.setdefault((image_id, photo, sidecar), []).append((field_name, value))
        report.photos = len({photo for _, photo, _ in records})
        for (image_id, photo, recorded), values in records.items():
            # A photo moved since (the cache follows moves) usually took its sidecar along.
            targets = [recorded] if os.path.lexists(recorded) else sidecar_paths(photo)
            removed = []
            for sidecar_path in targets:
                try:
                    sidecar = read_sidecar(sidecar_path)
                    gone = [value for field_name, value in values if sidecar.remove(field_name, value)]
                    if gone and not options.dry_run:
                        if sidecar.only_ours_left():
                            delete_sidecar(sidecar)  # clipsearch made it, and it now says nothing
                        else:
                            write_sidecar(sidecar)
                except SidecarError as exc:
                    report.failed += 1
                    warn(sidecar_path, f"{exc}; {keyword!r} not removed from it")
                    break
                if gone:
                    removed.append(sidecar_path)
                    report.changes.append((photo, sidecar_path, keyword, gone))
            else:
                if not options.dry_run:
                    with store.atomic():
                        store.forget_keywords(image_id, keyword, recorded)
                report.written += len(removed)
                report.unchanged += not removed
    finally:
        store.close()
    return report


def apply_keywords(chosen: dict[bytes, list[str]], db_path: Path, options: TagOptions,
                   warn: Callable[[bytes, str], None]) -> TagReport:
    """Add each photo's keywords to its sidecar(s): the existing ones, else a new one."""
    from .store import Store

    report = TagReport(photos=len(chosen))
    store = Store(db_path, readonly=options.dry_run)
    try:
        ids = {}
        paths = sorted(chosen)
        for start in range(0, len(paths), 500):
            ids.update(store.image_ids(paths[start : start + 500]))
        for photo in paths:
            for sidecar_path in sidecar_paths(photo) or [new_sidecar_path(photo, options.style)]:
                try:
                    sidecar = read_sidecar(sidecar_path)
                    added = {keyword: [(name, value) for name, value in field_values(keyword, options.parent).items()
                                       if sidecar.add(name, value)] for keyword in chosen[photo]}
                    added = {keyword: values for keyword, values in added.items() if values}
                    if added and not options.dry_run:
                        write_sidecar(sidecar)
                except SidecarError as exc:
                    report.failed += 1
                    warn(sidecar_path, f"{exc}; not tagged")
                    continue
                if not added:
                    report.unchanged += 1
                    continue
                report.written += 1
                for keyword, values in added.items():
                    report.changes.append((photo, sidecar_path, keyword, [value for _, value in values]))
                    if not options.dry_run and photo in ids:
                        with store.atomic():
                            store.record_keywords(ids[photo], keyword, sidecar_path, values)
    finally:
        store.close()
    return report


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


def check_keyword(keyword: str) -> None:
    if not keyword.strip() or any(c in keyword for c in "|/\n\r\t") or len(keyword) > 200:
        raise UsageError(f"keyword {keyword!r}: must be non-empty, at most 200 characters, without | / or line breaks "
                         "(they separate levels in the hierarchical fields)")
