"""`clipsearch status`: what the cache holds and for which folders (missing ones named), the
model and packed file, what is pending (a stat-only walk), what this installation reads, the
last run; and `status --failed`, every remembered failure with its reason."""
from __future__ import annotations

import os
import time
from pathlib import Path

from clipsearch.cache.store import Store
from clipsearch.photos.raw import RAW
from clipsearch.photos.walk import Walker, is_under, normalise_root

from .indexer import IndexOptions, unchanged


def status_report(db_path: Path, model_dir: Path) -> dict:
    from clipsearch.cache.library import Library, summed
    from clipsearch.cache.packed import packed_status

    library = Library(db_path)
    store = library.home
    try:
        stores = [shard_store for _, shard_store in library.each()]
        counts = library.counts()
        last = store.last_run()
        folders = sorted({folder for shard_store in stores for folder in library_folders(shard_store)}
                         | {os.fsdecode(shard.root) for shard in library.absent})
        missing = [folder for folder in folders if not mounted(folder)]
        raw = summed(shard_store.raw_counts(RAW) for shard_store in stores)
        packed = {packed_status(shard_store) for shard_store in stores}
        report = {
            "database": str(db_path),
            "database_mb": round(sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*")
                                     if p.is_file()) / 1e6, 1),
            "schema_version": store.version,
            "library_folders": folders,
            **({"missing_folders": missing} if missing else {}),
            **({"shards": shard_lines(library)} if library.sharded else {}),
            "indexed": counts["indexed"],
            # Each pair is one photo among `indexed`; `--json` keeps the numbers.
            "raw_files": {"alone": raw.get("raw", 0), "in RAW+JPEG pairs": raw.get("pairs", 0)},
            "failed": counts["failed"],
            "damaged": sum(len(shard_store.damaged_ids()) for shard_store in stores),
            # Photos indexed before prints were kept: the next `index` decodes them for one.
            "awaiting_print": sum(shard_store.unprinted_count() for shard_store in stores),
            "deleted_kept_for_moves": counts["deleted_kept"],
            "model_name": library.meta("model_name"),
            "model_id": library.meta("model_id"),
            "preprocessing": library.meta("pipeline"),
            "packed_vectors": packed.pop() if len(packed) == 1 else "; ".join(sorted(packed)),
        }
        report["metadata"] = library.meta_coverage()
        report["formats"] = formats_line()
        other_files: dict[str, int] = {}
        pending = None
        for shard_store in stores:
            present = [folder for folder in library_folders(shard_store) if folder not in missing]
            found = _pending(shard_store, present, other_files)
            pending = found if pending is None else pending + (found or 0)
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
        library.close()


def shard_lines(library) -> list[str]:
    """One line per shard: its folder, photos, where it is kept, whether it is there."""
    lines = []
    for shard in library.home.shard_rows():
        there = shard.number in library.stores
        photos = library.stores[shard.number].counts()["indexed"] if there else shard.photos
        lines.append(f"{os.fsdecode(shard.root)}: {photos} photos, "
                     + ("on its disk" if shard.portable else f"in {shard.location}")
                     + ("" if there else " (NOT THERE: left out of answers until it is back)"))
    return lines



def failed_report(db_path: Path, paths: list[str]) -> list[dict]:
    """`status --failed`: every remembered failure (under `paths`), its reason, and whether
    the next run retries it by itself (its environment changed, `photos/readers.retry_due`)."""
    from clipsearch.photos.readers import retry_due

    rows = sorted(_each_store(db_path, lambda store: store.failed_rows([normalise_root(p) for p in paths] or None)))
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
    rows = sorted(_each_store(db_path, lambda store: store.damaged_rows([normalise_root(p) for p in paths] or None)))
    return [{"path": os.fsdecode(path), "damage": damage, "size": size,
             "modified": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime_ns / 1e9))}
            for path, damage, size, mtime_ns in rows]


def _each_store(db_path: Path, read) -> list:
    """`read(store)` over every present database of the library, concatenated."""
    from clipsearch.cache.library import Library

    library = Library(db_path)
    try:
        return [row for _, store in library.each() for row in read(store)]
    finally:
        library.close()


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


def count_pending(store, root: bytes, options: IndexOptions, other_files: dict[str, int] | None = None) -> int:
    """Files under `root` that an index run would open (new or changed): a stat-only walk.
    Files it leaves out by extension are added to `other_files` (extension -> count)."""
    pending = 0
    walker = Walker(options.excludes, options.follow_links)
    for folder in walker.walk(root):
        known = store.rows_in_dir(folder.path)
        pending += sum(not unchanged(known.get(entry.path), entry) for entry in folder.files)
    if other_files is not None:
        for kind, count in walker.other_files.items():
            other_files[kind] = other_files.get(kind, 0) + count
    return pending
