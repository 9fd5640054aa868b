"""A library run end to end: validate the paths, take the lock, open the cache, check the
model, index, refresh the packed vectors, record the run. Also the `status` report."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import UsageError
from .indexer import Indexer, IndexOptions, Summary, count_pending
from .lock import IndexLock
from .manifest import Manifest
from .store import Store
from .walk import is_under, normalise_root


def check_roots(paths: list[str], absent: list[str] | None = None) -> list[bytes]:
    """The folders to walk, outermost only. A path that does not exist is an error, unless
    `absent` is given: then it is put there for the caller to judge (a disk unplugged)."""
    roots = []
    for path in paths:
        if not os.path.exists(path):
            if absent is not None:
                absent.append(path)
                continue
            raise UsageError(f"{path}: no such folder; check the path (is the share mounted?)")
        if not os.path.isdir(path):
            raise UsageError(f"{path}: is a file, not a folder; give the folder that contains it")
        if not os.access(path, os.R_OK | os.X_OK):
            raise UsageError(f"{path}: folder is not readable by this user; fix its permissions")
        roots.append(normalise_root(path))
    # `index A A` or `index A A/sub` walks A once, not every file twice.
    unique = sorted(set(roots))
    return [root for root in unique if not is_under(root, [other for other in unique if other != root])]


def index_paths(paths: list[str], db_path: Path, manifest: Manifest, options: IndexOptions,
                warn, progress=None, wait_seconds: float = 0.0) -> Summary:
    from .vectors import refresh_packed

    absent: list[str] = []
    roots = check_roots(paths, absent)
    if absent and not db_path.exists():
        raise UsageError(f"{absent[0]}: no such folder; check the path (is the share mounted?)")
    with IndexLock(db_path, wait_seconds):
        store = Store(db_path)
        try:
            if not paths:  # --retry-failed alone: the whole library
                roots = check_roots([f for f in library_folders(store) if os.path.isdir(f)])
            gone = absent_library_folders(store, absent)
            # Verify model files before any work: a damaged graph must not write vectors.
            manifest.graph_path("vision")
            store.check_model(manifest.model_id, manifest.name, claim=True)
            record_pipeline(store, options.use_draft)
            run_id = store.start_run([os.fsdecode(r) for r in roots])
            indexer = Indexer(store, manifest, options, warn, progress)
            indexer.summary.absent = gone
            try:
                summary = indexer.run(roots)
            except BaseException:
                store.rollback()
                store.finish_run(run_id, "interrupted", indexer.summary.as_dict())
                raise
            with store.atomic():
                store.purge_deleted()
            refresh_packed(store, manifest.embedding_dim)
            store.finish_run(run_id, "ok", summary.as_dict())
            return summary
        finally:
            store.close()


def absent_library_folders(store: Store, absent: list[str]) -> list[bytes]:
    """Of the paths given that do not exist, those the cache holds photos from: a disk
    unplugged or a share down. Their photos are kept and the rest is indexed (exit 6 at the
    end). A path the cache knows nothing of is a typo (exit 2), said before any work."""
    gone = []
    for path in absent:
        root = normalise_root(path)
        if not store.has_rows_under(root):
            raise UsageError(f"{path}: no such folder, and the cache holds no photos from there; check the path")
        gone.append(root)
    return gone


def record_pipeline(store: Store, use_draft: bool) -> None:
    """Remember which preprocessing made the vectors of this run. A newer pipeline does not
    force a re-index (its vectors differ from the old ones far less than int8 from fp32);
    files are re-embedded with it as they change."""
    from .preprocess import pipeline_version

    version = pipeline_version(use_draft)
    if store.meta("pipeline") != version:
        with store.atomic():
            store.set_meta("pipeline", version)


def status_report(db_path: Path, model_dir: Path) -> dict:
    from .vectors import packed_status

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
            "failed": counts["failed"],
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
            from .manifest import load_manifest

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
    the next run retries it by itself (its environment changed, `failures.retry_due`)."""
    from .failures import retry_due

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
    from .formats import AVIF, HEIF, JPEG2000, indexed_extensions, missing_decoder

    line = " ".join(sorted(ext[1:].decode() for ext in indexed_extensions()))
    hints = {missing_decoder(ext) for ext in AVIF | HEIF | JPEG2000} - {None}
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
