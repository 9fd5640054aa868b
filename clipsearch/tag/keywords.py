"""`clipsearch tag` and `untag`: what a query finds, given back to the photo tools as keywords
in XMP sidecars (`photos/sidecars.py`), and taken back exactly.

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

from clipsearch.errors import UsageError
from clipsearch.photos.metadata import embedded_keyword_fields
from clipsearch.photos.sidecars import (
    SidecarError,
    delete_sidecar,
    field_values,
    new_sidecar_path,
    read_sidecar,
    sidecar_paths,
    write_sidecar,
)

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
              weighted=(), negated=(), like=(), unlike=(), within: str | None = None, filters=None,
              text_model_dir=None) -> TagReport:
    """Add `keyword` to the photos the query (default: the keyword itself) selects."""
    from clipsearch.search.query import run_query

    check_keyword(keyword)
    if top is None and min_score is None:
        raise UsageError("tag needs --top N or --min-score S (or both): without a limit it would tag every photo")
    answer = run_query(list(texts) or [keyword], db_path, model_dir, top=top, min_score=min_score,
                       weighted=weighted, negated=negated, like=like, unlike=unlike, within=within, filters=filters,
                       text_model_dir=text_model_dir)
    chosen = {path: [keyword] for path, _ in answer.results}
    return apply_keywords(chosen, db_path, options, warn)


def untag(keyword: str, db_path: Path, options: TagOptions, warn: Callable[[bytes, str], None],
          within: str | None = None) -> TagReport:
    """Remove from the sidecars exactly the values `tag` added for `keyword`."""
    from clipsearch.cache.library import Library
    from clipsearch.photos.walk import normalise_root

    check_keyword(keyword)
    report = TagReport()
    library = Library(db_path, readonly=False)
    try:
        for _, store in library.each():
            untag_in(store, keyword, normalise_root(within) if within else None, options, warn, report)
    finally:
        library.close()
    return report


def untag_in(store, keyword: str, root: bytes | None, options: TagOptions, warn, report: TagReport) -> None:
    """`untag` in one database of the library (the keywords a shard's photos got are in it)."""
    records: dict[tuple[int, bytes, bytes], list[tuple[str, str]]] = {}
    for image_id, photo, sidecar, field_name, value in store.keywords_added(keyword, root):
        records.setdefault((image_id, photo, sidecar), []).append((field_name, value))
    report.photos += len({photo for _, photo, _ in records})
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


def apply_keywords(chosen: dict[bytes, list[str]], db_path: Path, options: TagOptions,
                   warn: Callable[[bytes, str], None]) -> TagReport:
    """Add each photo's keywords to its sidecar(s): the existing ones, else a new one."""
    from clipsearch.cache.library import Library, split_id

    report = TagReport(photos=len(chosen))
    library = Library(db_path, readonly=options.dry_run)
    try:
        ids = {}
        paths = sorted(chosen)
        for start in range(0, len(paths), 500):
            ids.update(library.image_ids(paths[start : start + 500]))
        companions = library.companions_of(list(ids.values()))
        for photo in paths:
            for sidecar_path, new in sidecar_targets(photo, companions.get(ids.get(photo)), options.style):
                try:
                    sidecar = read_sidecar(sidecar_path)
                    if new:
                        # A new sidecar wins over the photo: it carries the photo's own keywords
                        # too (not recorded as added, so `untag` never removes them).
                        for name, values in embedded_keyword_fields(photo).items():
                            for value in values:
                                sidecar.add(name, value)
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
                        number, row_id = split_id(ids[photo])
                        store = library.stores[number]
                        with store.atomic():
                            store.record_keywords(row_id, keyword, sidecar_path, values)
    finally:
        library.close()
    return report


def sidecar_targets(photo: bytes, raw: bytes | None, style: str) -> list[tuple[bytes, bool]]:
    """(sidecar, is new) for each file of the photo: its existing sidecars, else a new one. A
    RAW+JPEG pair gets the keyword where the tools look for each file: the JPEG's sidecars and
    the RAW's (`IMG_0001.CR2.xmp` for darktable and digiKam; `IMG_0001.xmp`, Lightroom's, is
    the RAW's and the JPEG's at once and is written once)."""
    targets: list[tuple[bytes, bool]] = []
    for file in (photo, raw) if raw else (photo,):
        existing = sidecar_paths(file)
        for path in existing or [new_sidecar_path(file, style)]:
            if path not in (known for known, _ in targets):
                targets.append((path, not existing))
    return targets


def check_keyword(keyword: str) -> None:
    if not keyword.strip() or any(c in keyword for c in "|/\n\r\t") or len(keyword) > 200:
        raise UsageError(f"keyword {keyword!r}: must be non-empty, at most 200 characters, without | / or line breaks "
                         "(they separate levels in the hierarchical fields)")
