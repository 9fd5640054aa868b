"""`clipsearch status`: what the cache holds and for which folders (missing ones named), the
model and packed file, what is pending (a stat-only walk), what this installation reads, the
last run; and `status --failed`, every remembered failure with its reason."""
from __future__ import annotations

import os
import time
from pathlib import Path

from clipsearch.cache.store import Store
from clipsearch.photos.raw import RAW
from clipsearch.photos.walk import is_under, normalise_root

from .indexer import IndexOptions, count_pending


def status_report(db_path: Path, model_dir: Path) -> dict:
    from clipsearch.cache.packed import packed_status

    store = Store(db_path, readonly=True)
    try:
        counts = store.counts()
        last = store.last_run()
        folders = library_folders(store)
        missing = [folder for folder in folders if not mounted(folder)]
        report = {
            "database": str(db_path),
            "database_mb": round(sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*")
                                     if p.is_file()) / 1e6, 1),
            "schema_version": store.version,
            "library_folders": folders,
            **({"missing_folders": missing} if missing else {}),
            "indexed": counts["indexed"],
            # Each pair is one photo among `indexed`; `--json` keeps the numbers.
            "raw_files": {"alone": (raw := store.raw_counts(RAW))["raw"], "in RAW+JPEG pairs": raw["pairs"]},
            "failed": counts["failed"],
            "damaged": len(store.damaged_ids()),
            # Photos indexed before prints were kept: the next `index` decodes them for one.
            "awaiting_print": store.unprinted_count(),
            "deleted_kept_for_moves": counts["deleted_kept"],
            "model_name": store.meta("model_name"),
            "model_id": store.meta("model_id"),
            "preprocessing": store.meta("pipeline"),
            "packed_vectors": packed_status(store),
        }
        report["metadata"] = store.meta_coverage()
        report["formats"] = formats_line()
        other_files: dict[str, int] = {}
        pending = _pending(store, [folder for folder in folders if folder not in missing], other_files)
        if pending is not None:
            report["pending"] = pending
            report["skipped_by_extension"] = dict(sorted(other_files.items(), key=lambda item: (-item[1], item[0])))
        if last:
            report["last_run"] = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["started_at"])),
                                  "status": last["status"], **(last["summary"] or {})}
        model_file = Path(model_dir) / "manifest.json"
        if model_file.is_file():
            from clipsearch.model.manifest import load_manifest

            loaded = load_manifest(Path(model_dir))
            report["loaded_model"] = f"{loaded.name} ({loaded.model_id})" + (
                "" if report["model_id"] in (None, loaded.model_id) else " DIFFERENT from the cache's model")
            if loaded.untrained:
                report["warning"] = loaded.untrained
        return report
    finally:
        store.close()


def failed_report(db_path: Path, paths: list[str]) -> list[dict]:
    """`status --failed`: every remembered failure (under `paths`), its reason, and whether
    the next run retries it by itself (its environment changed, `photos/readers.retry_due`)."""
    from clipsearch.photos.readers import retry_due

    store = Store(db_path, readonly=True)
    try:
        rows = store.failed_rows([normalise_root(p) for p in paths] or None)
    finally:
        store.close()
    report = []
    for path, error, size, mtime_ns, failed_at, failure in rows:
        row = {"path": os.fsdecode(path), "error": error, "size": size,
               "modified": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9)),
               "failed_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(failed_at))}
        # Bounds are a run's options: only what does not depend on them is known here.
        retry = retry_due(failure, {})
        if retry:
            row["retry"] = retry
        report.append(row)
    return report


def damaged_report(db_path: Path, paths: list[str]) -> list[dict]:
    """`status --damaged`: the photos indexed from the part of them that decodes, and what is missing."""
    store = Store(db_path, readonly=True)
    try:
        rows = store.damaged_rows([normalise_root(p) for p in paths] or None)
    finally:
        store.close()
    return [{"path": os.fsdecode(path), "damage": damage, "size": size,
             "modified": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9))}
            for path, damage, size, mtime_ns in rows]


def mounted(folder: str) -> bool:
    """The folder is there and not empty: an unplugged disk or a share that is not mounted
    leaves nothing, or an empty mount point (see `index`'s empty-folder rule)."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


def formats_line() -> str:
    """The extensions this installation indexes, and what to install for the others."""
    from clipsearch.photos.formats import AVIF, HEIF, JPEG2000, indexed_extensions, missing_decoder

    line = " ".join(sorted(ext[1:].decode() for ext in indexed_extensions()))
    hints = {missing_decoder(ext) for ext in AVIF | HEIF | JPEG2000 | RAW} - {None}
    return "; ".join([line, *sorted(hints)])


def library_folders(store: Store) -> list[str]:
    """The folders indexed so far that still hold cached photos, outermost only: a library
    moved elsewhere, or a sub-folder also indexed on its own, is not listed twice."""
    roots = sorted(set(store.run_roots()))
    live = [root for root in roots if store.has_rows_under(os.fsencode(root))]
    return [root for root in live if not is_under(os.fsencode(root), [os.fsencode(other) for other in live
                                                                      if other != root])]


def _pending(store: Store, folders: list[str], other_files: dict[str, int]) -> int | None:
    """New or changed files under the library folders, by a stat-only walk (fast); the files
    it leaves out by extension are counted into `other_files`."""
    if not folders:
        return None
    return sum(count_pending(store, os.fsencode(f), IndexOptions(workers=1), other_files) for f in folders)
