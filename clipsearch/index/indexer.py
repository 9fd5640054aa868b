"""`clipsearch index`: bring the cache in line with the folders, incrementally.

Per folder of the walk: unchanged files (same size and mtime) are not opened; files gone
are soft-deleted; a new file whose size and content fingerprint match a row whose file is
gone is a move (the row takes the new path, nothing is decoded); everything else goes to the
worker processes (`workers.py`), whose results come back as they finish. Writes go into one
open transaction committed every `commit_seconds`, so a kill loses at most those seconds of
work and never leaves half a row.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from clipsearch.config import available_cores
from clipsearch.model.manifest import Manifest
from clipsearch.photos.readers import metadata_readers, retry_due
from clipsearch.photos.readers import record as failure_record
from clipsearch.photos.walk import DEFAULT_EXCLUDES, Walker, is_under, parent_of

from .embed import HEADERS_ONLY, PRINT_ONLY, Result, fingerprint_file, task
from .summary import Summary
from .workers import DEFAULT_FILE_TIMEOUT, Embedder, WorkerPool, default_workers


@dataclass
class IndexOptions:
    workers: int = field(default_factory=default_workers)
    batch_size: int = 8  # files the walk gathers before handing them to the pool
    threads: int | None = None  # ORT threads per worker; default 1 with workers, all cores with one
    file_timeout: float = DEFAULT_FILE_TIMEOUT  # s a worker may spend on one file
    worker_memory: int | None = None  # MB a worker may hold; default `workers.default_worker_memory`
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    follow_links: bool = False
    commit_seconds: float = 2.0
    use_draft: bool = True
    count_first: bool = False  # walk once to count pending work, for a progress bar with ETA
    allow_empty: bool = False  # an empty folder that held photos was emptied on purpose: remove them
    cluster: str | None = None  # a Dask scheduler's address: embed there (`cluster.py`)
    cluster_inflight_mb: int = 256  # photo bytes sent to the cluster and not answered yet
    retry_failed: bool = False  # try every remembered failure again, changed or not
    quiet: bool = False  # -q: only what needs a look (cron mails the rest); Dask's own warnings dropped


def worker_pool(manifest: Manifest, options: IndexOptions, warn=None) -> Embedder:
    """The executor the run embeds with: local worker processes, or a Dask cluster."""
    if options.cluster:
        from clipsearch.model.encoders import ImageEncoder

        from .cluster import ClusterPool
        from .embed import EmbedWorker

        # Headers-only work stays here and never loads the model; this encoder only exists for it.
        local = EmbedWorker(ImageEncoder(manifest, threads=1, verify=False), options.use_draft)
        return ClusterPool(options.cluster, manifest, options.use_draft, local, warn, options.cluster_inflight_mb,
                           options.quiet)
    threads = options.threads or (available_cores() if options.workers == 1 else 1)
    return WorkerPool(str(manifest.folder), options.workers, threads, options.use_draft,
                      options.file_timeout, options.worker_memory)


class Indexer:
    def __init__(self, store, manifest: Manifest, options: IndexOptions,
                 warn: Callable[[bytes, str], None], progress: Callable[[Summary], None] | None = None):
        self.store, self.manifest, self.options = store, manifest, options
        self.warn, self.progress = warn, progress or (lambda summary: None)
        self.walker = Walker(options.excludes, options.follow_links, warn)
        self.summary = Summary()
        self.kinds: dict[bytes, str] = {}
        self.removed_this_run: set[int] = set()  # a move found later in the walk revives these
        self.displaced: set[int] = set()  # rows pushed to the other name of a swap, not yet walked
        self.seq = 0
        self.last_commit = 0.0
        self.bounds: dict[str, float] = {}  # the worker bounds a failure can depend on (`photos/readers.py`)
        self.other_shards = None  # `shards.OtherShards`: where a file new here may have moved from
        self.fingerprinted: tuple[bytes | None, bytes | None] = (None, None)  # (path, its fingerprint), the last read

    # -- transaction ---------------------------------------------------------------------

    def write(self):
        """The open write transaction, started on first use; committed by `maybe_commit`."""
        if not self.store.in_transaction:
            self.store.begin()
            self.seq = self.store.next_seq()
            self.last_commit = time.monotonic()
        return self.store

    def maybe_commit(self, force: bool = False) -> None:
        if self.store.in_transaction and (force or time.monotonic() - self.last_commit >= self.options.commit_seconds):
            self.store.commit()

    # -- the run ---------------------------------------------------------------------------

    def run(self, roots: list[bytes], embedder: Embedder | None = None) -> Summary:
        """Index `roots` into this store. `embedder`: a pool shared by the runs of several
        shards (`index/run.py`), which its owner closes; by default one of the run's own."""
        if self.options.count_first:
            from .status import count_pending

            self.summary.pending_total = ((self.summary.pending_total or 0)
                                          + sum(count_pending(self.store, root, self.options) for root in roots))
        from clipsearch.photos.prints import VERSION

        self.write().check_print_version(VERSION)  # prints of another version are made again
        own = embedder is None
        embedder = embedder or worker_pool(self.manifest, self.options, self.warn)
        if isinstance(embedder, WorkerPool):
            self.bounds = {"timeout": embedder.file_timeout, "memory": embedder.memory_mb}
        try:
            for root in roots:
                self.index_root(root, embedder)
            self.record(embedder.drain())
            self.maybe_commit(force=True)
            if self.options.cluster:
                self.summary.cluster_workers = embedder.workers_used
        except BaseException:
            # Results already written are whole rows: keep them, then stop.
            try:
                self.maybe_commit(force=True)
            finally:
                if own:
                    embedder.close(cancel=True)
            raise
        if own:
            embedder.close()
        return self.summary

    def index_root(self, root: bytes, embedder: Embedder) -> None:
        visited: set[bytes] = set()
        empty: list[bytes] = []  # folders with nothing inside: maybe a share that is not mounted
        chunk: list[tuple[bytes, int, int]] = []
        for folder in self.walker.walk(root):
            visited.add(folder.path)
            if folder.empty:
                empty.append(folder.path)
            known = self.store.rows_in_dir(folder.path)
            done: set[bytes] = set()
            for entry in folder.files:
                done.add(entry.path)
                row = known.pop(entry.path, None)
                same = unchanged(row, entry)
                if same and row.failed and (self.options.retry_failed or retry_due(row.failure, self.bounds)):
                    self.summary.retried += 1
                    self.kinds[entry.path] = "new"
                    chunk = self.queue(chunk, task(entry.path, entry.size, entry.mtime_ns, companion=entry.companion),
                                       embedder)
                    continue
                if same:
                    self.count_unchanged(row)
                    if not row.failed and row.companion != entry.companion:
                        # The RAW of its pair appeared, went, or is another file now: no pixel changed.
                        self.write().set_companion(row.id, entry.companion, self.seq)
                    stamp = folder.sidecar_stamp(entry.path, entry.companion)
                    if not row.failed and not row.printed:
                        # Cached before prints were kept: decoded for one (never the model), headers read too.
                        chunk = self.queue(chunk, task(entry.path, entry.size, entry.mtime_ns, PRINT_ONLY,
                                                       entry.companion), embedder)
                    elif not row.failed and (row.meta != (entry.size, entry.mtime_ns, stamp)
                                             or row.meta_readers not in (None, metadata_readers())):
                        # Cached before metadata was kept, or its sidecar changed: headers only.
                        chunk = self.queue(chunk, task(entry.path, entry.size, entry.mtime_ns, HEADERS_ONLY,
                                                       entry.companion), embedder)
                    continue
                if returned(row, entry):
                    # Back where it was (counted as a move back): no fingerprint to read.
                    self.write().revive(row.id, self.seq)
                    if self.forget_removal(row.id) or row.failed:
                        self.count_unchanged(row)
                    else:
                        self.summary.moved += 1
                    continue
                if (row is None or row.deleted) and self.adopt_pair(entry, folder.files):
                    # Its own headers, read now.
                    chunk = self.queue(chunk, task(entry.path, entry.size, entry.mtime_ns, HEADERS_ONLY), embedder)
                    known = {path: row for path, row in self.store.rows_in_dir(folder.path).items() if path not in done}
                    continue
                if self.try_move(entry, row):
                    # Rows of this folder may have changed places (a rename inside it, two
                    # names swapped): what is left to compare comes from the database again.
                    known = {path: row for path, row in self.store.rows_in_dir(folder.path).items() if path not in done}
                    continue
                if (row is None or row.deleted) and self.move_in(entry):  # from another shard: headers read here
                    chunk = self.queue(chunk, task(entry.path, entry.size, entry.mtime_ns, HEADERS_ONLY,
                                                   entry.companion), embedder)
                    continue
                self.kinds[entry.path] = "new" if row is None or row.deleted else "updated"
                chunk = self.queue(chunk, task(entry.path, entry.size, entry.mtime_ns, companion=entry.companion),
                                   embedder)
            if not folder.empty:
                self.mark_gone([row.id for row in known.values() if not row.deleted])
            self.maybe_commit()
        if chunk:
            self.record(embedder.submit(chunk))
        for hint, count in self.walker.missing_decoders.items():
            self.summary.skipped += count
            self.summary.missing_decoders[hint] = self.summary.missing_decoders.get(hint, 0) + count
        # What the cache still holds under an empty folder, once moves out of it were found.
        held = {folder: self.store.live_count_under(folder) for folder in empty}
        kept = [folder for folder, count in held.items() if count and not self.options.allow_empty]
        for folder in kept:
            if not is_under(folder, self.summary.kept_empty):
                self.summary.kept_empty.append(folder)
                self.summary.kept_empty_photos += held[folder]
        for folder in self.store.dirs_under(root):
            if folder not in visited and not is_under(folder, self.walker.unreadable + kept + self.summary.absent):
                self.summary.removed += self.write().mark_dir_deleted(folder, self.seq)
            elif folder in visited and folder in held and not is_under(folder, kept):
                # An empty folder the user confirmed (--allow-empty), or whose photos moved.
                self.mark_gone([row.id for row in self.store.rows_in_dir(folder).values() if not row.deleted])
        self.maybe_commit()

    def note_meta_problems(self, result: Result) -> None:
        """One warning per photo whose metadata could not all be read; it is indexed anyway."""
        problems = (result.meta or {}).get("problems")
        if problems:
            self.summary.meta_problems += 1
            self.warn(result.path, f"metadata partly unread ({'; '.join(problems)}); the photo is indexed, those "
                                   "fields stay empty (read again when the file, its sidecar or clipsearch changes)")

    def count_unchanged(self, row) -> None:
        if row.id in self.displaced:  # the other half of a swap: it was moved, not unchanged
            self.displaced.discard(row.id)
            self.summary.moved += 1
        elif row.failed:
            self.summary.skipped += 1
        else:
            self.summary.unchanged += 1

    def mark_gone(self, row_ids: list[int]) -> None:
        if row_ids:
            self.write().mark_deleted(row_ids, self.seq)
            self.removed_this_run.update(row_ids)
            self.summary.removed += len(row_ids)

    def forget_removal(self, row_id: int) -> bool:
        """A row soft-deleted earlier in this run is back: it was not removed after all."""
        if row_id in self.removed_this_run:
            self.removed_this_run.discard(row_id)
            self.summary.removed -= 1
            return True
        return False

    def adopt_pair(self, entry, files) -> bool:
        """A RAW whose pair's JPEG left its side (deleted, or moved: the walk then finds it as
        a move) becomes a photo of its own with the pair's vector, the same picture: nothing is
        embedded again (its metadata is read from its headers). Counted as a move."""
        if entry.companion is not None:
            return False
        pair = self.store.paired_with(entry.path)
        if pair is None or any(other.path == pair[1] for other in files):
            return False
        content = fingerprint_file(entry.path)
        self.write().split_pair(pair[0], entry.path, parent_of(entry.path), entry.size, entry.mtime_ns, content,
                                self.seq)
        self.summary.moved += 1
        return True

    def try_move(self, entry, row) -> bool:
        """A new or changed file with the content of a row whose file is gone (or now holds
        something else) takes over that row: renames, moves and swapped names are never
        decoded again. `row` is the cache's row at the entry's path, if any.

        The fingerprint is read only when some row has the same size, and rows are then
        matched on (size, fingerprint) through an index: libraries of same-size files
        (scanner BMPs, uncompressed TIFFs) cost one lookup per file, not one stat per row."""
        if not self.store.has_size(entry.size):
            return False
        content = self.fingerprint(entry)
        if content is None:
            return False
        for row_id, old_path, deleted, modified_at in self.store.same_content(entry.size, content):
            if row is not None and row_id == row.id and not deleted:
                continue  # this very row, rewritten in place with the same head and tail: re-embed it
            if not (deleted or old_path == entry.path or not holds(old_path, entry.size, modified_at)):
                continue  # its file is still where it was: this is a copy, embedded on its own
            store = self.write()
            if row is not None and not row.deleted and row.id != row_id:
                displaced = store.exchange(row_id, entry.path, parent_of(entry.path), entry.mtime_ns, row.id, self.seq)
                if deleted or not os.path.lexists(displaced):
                    self.mark_gone([row.id])
                else:
                    self.displaced.add(row.id)
            else:
                store.move(row_id, entry.path, parent_of(entry.path), entry.mtime_ns, self.seq)
            self.summary.moved += 1
            self.forget_removal(row_id)
            return True
        return False

    def move_in(self, entry) -> bool:
        """A new file whose photo left another shard's folder (`shards.OtherShards`): its row
        comes along under this path, its vector is not made again."""
        rows = self.other_shards.take(entry.size, lambda: self.fingerprint(entry)) if self.other_shards else None
        if rows is None:
            return False
        self.write().import_row(rows, entry.path, parent_of(entry.path), entry.mtime_ns, entry.companion, self.seq)
        self.summary.moved += 1
        return True

    def fingerprint(self, entry) -> bytes | None:
        """The content fingerprint of `entry`, read once though the move within this database
        and the one from another shard both look for it."""
        if self.fingerprinted[0] != entry.path:
            self.fingerprinted = (entry.path, fingerprint_file(entry.path))
        return self.fingerprinted[1]

    def queue(self, chunk: list, work, embedder: Embedder) -> list:
        """`work` added to the chunk being gathered; a full chunk goes to the workers."""
        chunk.append(work)
        if len(chunk) < self.options.batch_size:
            return chunk
        self.record(embedder.submit(chunk))
        return []

    def record(self, results: list[Result]) -> None:
        if not results:
            return
        store = self.write()
        for result in results:
            if result.headers_only:
                if not result.vanished:  # a failure still records an empty reading: not retried nightly
                    store.put_meta(result.path, result.size, result.mtime_ns, result.sidecars, result.meta or {}, self.seq)
                    self.summary.headers_read += 1
                    self.note_meta_problems(result)
                    if result.print_only:
                        store.put_print(result.path, result.print)
                        self.summary.printed += 1
                continue
            kind = self.kinds.pop(result.path, "new")
            folder = parent_of(result.path)
            if result.vanished:
                self.summary.vanished += 1
                self.warn(result.path, "vanished during the run; skipped")
            elif result.error is not None:
                self.summary.failed += 1
                self.warn(result.path, f"{result.error}; remembered and skipped until the file changes "
                                       "(`clipsearch status --failed` lists them, `index --retry-failed` retries)")
                store.put_error(result.path, folder, result.size, result.mtime_ns, result.error, self.seq,
                                failure_record(result.error, self.bounds))
            else:
                setattr(self.summary, kind, getattr(self.summary, kind) + 1)
                self.summary.embedded += 1
                store.put_vector(result.path, folder, result.size, result.mtime_ns, result.fingerprint,
                                 result.vector, result.scale, self.seq, result.companion, result.print,
                                 result.damage)
                if result.damage:
                    self.summary.damaged += 1
                    self.warn(result.path, f"damaged ({result.damage}); indexed from what is there "
                                           "(`clipsearch status --damaged` lists them)")
                if result.meta is not None:
                    store.put_meta(result.path, result.size, result.mtime_ns, result.sidecars, result.meta, self.seq)
                    self.note_meta_problems(result)
        self.progress(self.summary)
        self.maybe_commit()


def unchanged(row, entry) -> bool:
    """The cache already holds this file as it is now (indexed or failed): don't open it."""
    return row is not None and not row.deleted and row.size == entry.size and row.modified_at == entry.mtime_ns


def returned(row, entry) -> bool:
    """The file of a soft-deleted row is back at its path as it was (a share mounted again,
    a folder moved out and back): the row is revived, and a remembered failure stays quiet."""
    return row is not None and bool(row.deleted) and row.size == entry.size and row.modified_at == entry.mtime_ns


def holds(path: bytes, size: int, mtime_ns: int) -> bool:
    """The file at `path` is still the one a row with this size and mtime describes."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns
