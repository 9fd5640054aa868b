"""`clipsearch index`: bring the cache in line with the folders, incrementally.

Per folder of the walk: unchanged files (same size and mtime) are not opened; files gone
are soft-deleted; a new file whose size and content fingerprint match a row whose file is
gone is a move (the row takes the new path, nothing is decoded); everything else is sent in
chunks to the embedding workers. Writes go into one open transaction committed every
`commit_seconds`, so a kill loses at most those seconds of work and never leaves half a row.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .config import available_cores
from .embedjob import EmbedWorker, Result, embed_chunk, fingerprint_file, init_worker
from .errors import ClipsearchError, EmptyFolderError
from .manifest import Manifest
from .walk import DEFAULT_EXCLUDES, Walker, is_under, parent_of


def default_workers() -> int:
    # Measured (README "Indexing speed"): one single-threaded worker per core beats one
    # process with N ORT threads, because decoding is serial per image. Capped for RAM.
    return min(available_cores(), 8)


@dataclass
class IndexOptions:
    workers: int = field(default_factory=default_workers)
    batch_size: int = 8
    threads: int | None = None  # ORT threads per worker; default 1 with workers, all cores without
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    follow_links: bool = False
    commit_seconds: float = 2.0
    use_draft: bool = True
    count_first: bool = False  # walk once to count pending work, for a progress bar with ETA
    allow_empty: bool = False  # an empty folder that held photos was emptied on purpose: remove them


@dataclass
class Summary:
    new: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    skipped: int = 0  # failed before and unchanged since, or no decoder installed for the format
    vanished: int = 0
    missing_decoders: dict[str, int] = field(default_factory=dict)
    pending_total: int | None = None
    kept_empty: list[bytes] = field(default_factory=list)  # empty folders whose photos were kept
    kept_empty_photos: int = 0
    started: float = field(default_factory=time.monotonic)
    embedded: int = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def done(self) -> int:
        return self.new + self.updated + self.failed + self.vanished

    def as_dict(self) -> dict:
        elapsed = self.elapsed
        return {"new": self.new, "updated": self.updated, "moved": self.moved, "removed": self.removed,
                "failed": self.failed, "skipped": self.skipped, "unchanged": self.unchanged,
                "vanished": self.vanished, "missing_decoders": dict(self.missing_decoders),
                "kept_empty": [os.fsdecode(f) for f in self.kept_empty],
                "elapsed_s": round(elapsed, 2), "images_per_s": round(self.embedded / elapsed, 2) if elapsed else 0.0}


def kept_empty_error(summary: "Summary") -> EmptyFolderError:
    folders = ", ".join(os.fsdecode(f) for f in summary.kept_empty)
    return EmptyFolderError(
        f"{folders}: empty, but the cache holds {summary.kept_empty_photos} photos from there; is the share or disk "
        "mounted? They were kept. If you emptied it on purpose, run `clipsearch index --allow-empty` on it once")


def worker_died() -> ClipsearchError:
    return ClipsearchError("a worker process died (out of memory, or a decoder crashed on a file); "
                           "everything finished so far is saved: run `clipsearch index` again, with "
                           "fewer --workers if memory is short")


_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


class Embedder:
    """Chunks in, results out, with a bounded number of chunks in flight. Worker processes
    start with the first chunk: a run of renames and unchanged files never loads the model."""

    def __init__(self, manifest: Manifest, options: IndexOptions):
        self.manifest, self.options = manifest, options
        self.pool = None
        self.local: EmbedWorker | None = None  # with one worker: embeds in this process
        self.started = False
        self.inflight: deque = deque()
        self.max_inflight = max(2, 2 * options.workers)

    def start(self) -> None:
        self.started = True
        manifest, options = self.manifest, self.options
        if options.workers <= 1:
            from .encoders import ImageEncoder

            self.local = EmbedWorker(ImageEncoder(manifest, threads=options.threads, background=True), options.use_draft)
        else:
            import multiprocessing
            import sys
            from concurrent.futures import ProcessPoolExecutor

            # multiprocessing's resource tracker (started with the pool, with this process's
            # -W options) frees the pool's semaphores when this process is killed, and then
            # warns about them on our stderr in two lines that cron would mail: keep the
            # clean-up, drop the warning.
            if _QUIET_TRACKER not in sys.warnoptions:
                sys.warnoptions.append(_QUIET_TRACKER)
            # spawn, not fork: onnxruntime's thread pools do not survive a fork.
            self.pool = ProcessPoolExecutor(
                max_workers=options.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker, initargs=(str(manifest.folder), options.threads or 1, options.use_draft, os.getpid()))

    def submit(self, chunk) -> list[Result]:
        if not self.started:
            self.start()
        if self.pool is None:
            return self.local.embed(chunk)
        from concurrent.futures.process import BrokenProcessPool

        try:
            self.inflight.append(self.pool.submit(embed_chunk, chunk))
        except BrokenProcessPool:
            # A worker died between two submits: the pool refuses new work before any
            # pending future reports the death.
            raise worker_died() from None
        done = []
        while self.inflight and (len(self.inflight) >= self.max_inflight or self.inflight[0].done()):
            done.extend(self._result(self.inflight.popleft()))
        return done

    def drain(self) -> list[Result]:
        done = []
        while self.inflight:
            done.extend(self._result(self.inflight.popleft()))
        return done

    @staticmethod
    def _result(future) -> list[Result]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool:
            raise worker_died() from None

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


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

    def run(self, roots: list[bytes]) -> Summary:
        if self.options.count_first:
            self.summary.pending_total = sum(count_pending(self.store, root, self.options) for root in roots)
        embedder = Embedder(self.manifest, self.options)
        try:
            for root in roots:
                self.index_root(root, embedder)
            self.record(embedder.drain())
            self.maybe_commit(force=True)
        except BaseException:
            # Results already written are whole rows: keep them, then stop.
            try:
                self.maybe_commit(force=True)
            finally:
                embedder.close(cancel=True)
            raise
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
                if unchanged(row, entry):
                    self.count_unchanged(row)
                    continue
                if returned(row, entry):
                    # Back where it was (counted as a move back): no fingerprint to read.
                    self.write().revive(row.id, self.seq)
                    if self.forget_removal(row.id) or row.failed:
                        self.count_unchanged(row)
                    else:
                        self.summary.moved += 1
                    continue
                if self.try_move(entry, row):
                    # Rows of this folder may have changed places (a rename inside it, two
                    # names swapped): what is left to compare comes from the database again.
                    known = {path: row for path, row in self.store.rows_in_dir(folder.path).items() if path not in done}
                    continue
                self.kinds[entry.path] = "new" if row is None or row.deleted else "updated"
                chunk.append((entry.path, entry.size, entry.mtime_ns))
                if len(chunk) >= self.options.batch_size:
                    self.record(embedder.submit(chunk))
                    chunk = []
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
            if folder not in visited and not is_under(folder, self.walker.unreadable + kept):
                self.summary.removed += self.write().mark_dir_deleted(folder, self.seq)
            elif folder in visited and folder in held and not is_under(folder, kept):
                # An empty folder the user confirmed (--allow-empty), or whose photos moved.
                self.mark_gone([row.id for row in self.store.rows_in_dir(folder).values() if not row.deleted])
        self.maybe_commit()

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

    def try_move(self, entry, row) -> bool:
        """A new or changed file with the content of a row whose file is gone (or now holds
        something else) takes over that row: renames, moves and swapped names are never
        decoded again. `row` is the cache's row at the entry's path, if any.

        The fingerprint is read only when some row has the same size, and rows are then
        matched on (size, fingerprint) through an index: libraries of same-size files
        (scanner BMPs, uncompressed TIFFs) cost one lookup per file, not one stat per row."""
        if not self.store.has_size(entry.size):
            return False
        content = fingerprint_file(entry.path)
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

    def record(self, results: list[Result]) -> None:
        if not results:
            return
        store = self.write()
        for result in results:
            kind = self.kinds.pop(result.path, "new")
            folder = parent_of(result.path)
            if result.vanished:
                self.summary.vanished += 1
                self.warn(result.path, "vanished during the run; skipped")
            elif result.error is not None:
                self.summary.failed += 1
                self.warn(result.path, f"{result.error}; remembered and skipped until the file changes")
                store.put_error(result.path, folder, result.size, result.mtime_ns, result.error, self.seq)
            else:
                setattr(self.summary, kind, getattr(self.summary, kind) + 1)
                self.summary.embedded += 1
                store.put_vector(result.path, folder, result.size, result.mtime_ns, result.fingerprint,
                                 result.vector, result.scale, self.seq)
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


def count_pending(store, root: bytes, options: IndexOptions) -> int:
    """Files under `root` that an index run would open (new or changed): a stat-only walk."""
    pending = 0
    for folder in Walker(options.excludes, options.follow_links).walk(root):
        known = store.rows_in_dir(folder.path)
        pending += sum(not unchanged(known.get(entry.path), entry) for entry in folder.files)
    return pending
