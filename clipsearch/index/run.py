"""`clipsearch index` end to end: validate the paths (an absent one that the cache knows is a
disk unplugged, not a typo), take the lock, open the library, check the model, place each
folder in its shard (`shards.py`), index each shard under its own lock, refresh each changed
shard's packed vectors, record the run."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from clipsearch.cache.packed import refresh_packed
from clipsearch.cache.store import Store
from clipsearch.errors import UsageError
from clipsearch.model.manifest import Manifest
from clipsearch.photos.walk import is_under, normalise_root

from .indexer import Indexer, IndexOptions, worker_pool
from .lock import IndexLock
from .shards import OtherShards, absent_shard_roots, place_roots
from .status import library_folders
from .summary import Summary


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
                warn, progress=None, wait_seconds: float = 0.0, *, on_disk: bool = False,
                per_folder: bool = False) -> Summary:
    """Index `paths` into the library at `db_path`: each folder into its shard
    (`shards.place_roots`; `on_disk`: `--shard-on-disk`; `per_folder`: the default library,
    one shard per folder), one worker pool for all of them."""
    absent: list[str] = []
    roots = check_roots(paths, absent)
    if absent and not db_path.exists():
        raise UsageError(f"{absent[0]}: no such folder; check the path (is the share mounted?)")
    with IndexLock(db_path, wait_seconds):
        home = Store(db_path)
        try:
            if not paths:  # --retry-failed alone: the whole library
                roots = check_roots([f for f in all_library_folders(home) if os.path.isdir(f)])
            gone = absent_library_folders(home, absent)
            # Verify model files before any work: a damaged graph must not write vectors.
            manifest.graph_path("vision")
            home.check_model(manifest.model_id, manifest.name, claim=True, image_tower=manifest.image_tower)
            targets = place_roots(home, roots, manifest, on_disk, per_folder)
            record_pipeline(home, options.use_draft)
            run_id = home.start_run([os.fsdecode(r) for r in roots])
            summary = Summary(absent=gone)
            embedder = worker_pool(manifest, options, warn) if targets else None
            try:
                for target in targets:
                    index_target(home, target, manifest, options, warn, progress, summary, embedder, wait_seconds)
            except BaseException:
                if embedder is not None:
                    embedder.close(cancel=True)
                home.rollback()
                home.finish_run(run_id, "interrupted", summary.as_dict())
                raise
            if embedder is not None:
                embedder.close()
            if not any(target.number == 0 for target in targets):
                refresh_packed(home, manifest.embedding_dim)  # rows moved out into shards
            home.finish_run(run_id, "ok", summary.as_dict())
            return summary
        finally:
            home.close()


def index_target(home: Store, target, manifest: Manifest, options: IndexOptions, warn, progress, summary: Summary,
                 embedder, wait_seconds: float) -> None:
    """One database's part of a run (the library database's own, or a shard's under its own
    lock), with its own record of the run: a shard carried to another machine keeps it."""
    with contextlib.ExitStack() as stack:
        if target.number:
            stack.enter_context(IndexLock(target.location, wait_seconds))
            store = Store(target.location)
            stack.callback(store.close)
            store.check_model(manifest.model_id, manifest.name, claim=True, image_tower=manifest.image_tower)
            record_pipeline(store, options.use_draft)
            run_id = store.start_run([os.fsdecode(r) for r in target.roots])
        else:
            store, run_id = home, None
        indexer = Indexer(store, manifest, options, warn, progress)
        indexer.summary = summary
        if home.shard_rows():  # a photo moved between library folders takes its row along
            indexer.other_shards = stack.enter_context(contextlib.closing(OtherShards(home, target.number)))
        try:
            indexer.run(target.roots, embedder)
        except BaseException:
            store.rollback()
            if run_id is not None:
                store.finish_run(run_id, "interrupted", summary.as_dict())
            raise
        with store.atomic():
            forgotten_seq = store.purge_deleted()
        refresh_packed(store, manifest.embedding_dim, forgotten_seq)
        if run_id is not None:
            store.finish_run(run_id, "ok", summary.as_dict())
            with home.atomic():
                home.set_shard_photos(target.number, store.counts()["indexed"])


def all_library_folders(home: Store) -> list[str]:
    """The library database's folders and those of every shard it lists."""
    folders = library_folders(home)
    for shard in home.shard_rows():
        if os.path.isfile(shard.location):
            store = Store(Path(shard.location), readonly=True)
            try:
                folders += library_folders(store)
            finally:
                store.close()
    return folders


def absent_library_folders(store: Store, absent: list[str]) -> list[bytes]:
    """Of the paths given that do not exist, those the cache holds photos from: a disk
    unplugged or a share down. Their photos are kept and the rest is indexed (exit 6 at the
    end). A path the cache knows nothing of is a typo (exit 2), said before any work."""
    gone = []
    for path in absent:
        root = normalise_root(path)
        if not store.has_rows_under(root) and not absent_shard_roots(store, [root]):
            raise UsageError(f"{path}: no such folder, and the cache holds no photos from there; check the path")
        gone.append(root)
    return gone


def record_pipeline(store: Store, use_draft: bool) -> None:
    """Remember which preprocessing made the vectors of this run. A newer pipeline does not
    force a re-index (its vectors differ from the old ones far less than int8 from fp32);
    files are re-embedded with it as they change."""
    from clipsearch.photos.preprocess import pipeline_version

    version = pipeline_version(use_draft)
    if store.meta("pipeline") != version:
        with store.atomic():
            store.set_meta("pipeline", version)
