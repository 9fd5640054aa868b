"""The indexing worker processes and their supervision: how many there are, what each file
may cost, and what happens to a file that kills, stalls or bloats its worker.

Each worker is a spawned process holding one `EmbedWorker`; it is handed a few files at a
time and sends one `Result` back per file, so the main process always knows which file a
worker is on. While it waits for results it checks every worker:
- dead (a decoder crashed, the kernel's OOM killer): replaced;
- on one file for longer than `file_timeout` seconds: stopped and replaced;
- resident memory above `memory_mb`: stopped and replaced.
The file it was on is tried once more alone, in a fresh worker (the OOM killer may have
picked an innocent worker); if that try ends the same way it comes back as a failed Result,
which the indexer remembers like any undecodable file. The other workers go on meanwhile,
and results are taken in the order they come, so one stuck file never holds up the run.
"""
from __future__ import annotations

import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from clipsearch.config import available_cores, available_memory_mb
from clipsearch.errors import ClipsearchError

from .embed import Result, result_for

# Measured with ViT-B/32 int8 (docs/models.md "What it takes"): a worker holds ~250 MB with its
# model loaded and peaks at 276 MB on a 12 MP JPEG; the largest pictures within the pixel
# limit (89 MP PNG, RGBA, 16-bit) peak at 624-755 MB.
TYPICAL_WORKER_MB = 400  # what a worker is counted at when sizing the default worker count
MIN_WORKER_MB, MAX_WORKER_MB = 1024, 2048  # the default memory bound lies between these
MEMORY_SHARE = 0.8  # of the memory available at the start of a run, what the workers may use
DEFAULT_FILE_TIMEOUT = 120.0  # s; an 89 MP 16-bit PNG takes ~3 s here, ~10 s on a NAS Celeron
POLL_SECONDS = 0.05  # how often memory and time are checked while results are awaited
QUEUED_PER_WORKER = 2  # files handed to a worker at a time: one in progress, one waiting
START_ATTEMPTS = 3  # workers that die before they are ready, in a row, before the run gives up
START_SECONDS = 300.0  # to start and load the model (ViT-B/32 int8: ~1 s here, a few on a NAS)


def default_workers() -> int:
    """One per core (decoding is serial per image; docs/design.md "Performance"), at most 8, and
    no more than the available memory holds at TYPICAL_WORKER_MB each."""
    workers = min(available_cores(), 8)
    memory = available_memory_mb()
    if memory is not None:
        workers = min(workers, int(memory * MEMORY_SHARE) // TYPICAL_WORKER_MB)
    return max(1, workers)


def default_worker_memory(workers: int) -> int:
    """Each worker's bound in MB: its share of the available memory, at least MIN_WORKER_MB
    (the largest legitimate picture fits) and at most MAX_WORKER_MB."""
    memory = available_memory_mb()
    share = int(memory * MEMORY_SHARE) // max(1, workers) if memory is not None else MIN_WORKER_MB
    return min(MAX_WORKER_MB, max(MIN_WORKER_MB, share))


def resident_mb(pid: int) -> float | None:
    """A process's resident memory (Linux /proc; None elsewhere or once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return None


def serve(conn, model_folder: str, threads: int, use_draft: bool, parent: int) -> None:
    """A worker process: say it is ready, then handle the files it is sent, one Result per
    file, until it is sent None or its pipe closes. The vision graph loads before the first
    file to embed (between "loading" and "loaded", outside that file's time bound): a run that
    only reads headers (metadata of photos cached before, a changed sidecar) never loads it."""
    from . import embed as embedjob

    # Ctrl-C reaches the whole process group: the main process commits and stops the workers,
    # which must not print a traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        embedjob.init_worker(model_folder, threads, use_draft, parent)
        conn.send(("ready", None))
        loaded = False
        while (files := conn.recv()) is not None:
            for file in files:
                if not loaded and not embedjob.mode_of(file):
                    conn.send(("loading", None))
                    embedjob.process_worker().ready()
                    loaded = True
                    conn.send(("loaded", None))
                conn.send(embedjob.embed_file(file))
    except (EOFError, OSError):
        return  # the main process is gone (killed, or it stopped this worker): nothing to say
    except Exception as exc:  # noqa: BLE001 - the model would not load: the main process says it once
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))


@dataclass
class Slot:
    """One worker process and the files handed to it that it has not answered yet; the
    first of them is the one it is working on, since `since`."""

    process: object
    conn: object
    files: deque = field(default_factory=deque)
    ready: bool = False
    fresh: bool = True  # has not been handed a file yet
    alone: bool = False  # trying a file that stopped a worker before: it gets nothing else
    loading: bool = False  # loading the model, before its first file to embed
    since: float = field(default_factory=time.monotonic)  # started, then: on its current file since


class Embedder(Protocol):
    """What the indexer embeds with: `WorkerPool` here, or `cluster.ClusterPool` on a Dask
    cluster. Files are `embed.task` tuples."""

    def submit(self, files) -> list[Result]:
        """Queue files; the Results finished so far, in the order they finished."""

    def drain(self) -> list[Result]:
        """Wait for every queued file; their Results."""

    def close(self, cancel: bool = False) -> None:
        """Stop the workers (at once with `cancel`: the run is being abandoned)."""


class WorkerPool:
    """Files in, Results out (in the order they finish), with every file's time and memory
    bounded. Workers start with the first file: a run of renames never loads the model."""

    def __init__(self, model_folder: str, workers: int, threads: int, use_draft: bool,
                 file_timeout: float = DEFAULT_FILE_TIMEOUT, memory_mb: int | None = None):
        self.model_folder, self.workers, self.threads, self.use_draft = model_folder, workers, threads, use_draft
        self.file_timeout = file_timeout
        self.memory_mb = memory_mb if memory_mb is not None else default_worker_memory(workers)
        self.waiting: deque = deque()  # files not handed to a worker yet
        self.retry: deque = deque()  # files that stopped a worker once: each is tried again alone
        self.stopped_once: set[bytes] = set()
        self.slots: list[Slot] = []
        self.finished: list[Result] = []
        self.failed_starts = 0
        self.backlog = max(8, 4 * workers)

    # -- the indexer's side ----------------------------------------------------------------

    def submit(self, files) -> list[Result]:
        """Queue files; returns the Results finished so far (waits only if the queue is long)."""
        self.waiting.extend(files)
        self._pump(0)
        while len(self.waiting) + len(self.retry) > self.backlog:
            self._pump(POLL_SECONDS)
        return self._take()

    def drain(self) -> list[Result]:
        while self.waiting or self.retry or any(slot.files for slot in self.slots):
            self._pump(POLL_SECONDS)
        return self._take()

    def close(self, cancel: bool = False) -> None:
        for slot in self.slots:  # all told at once, so they exit together
            if cancel:
                slot.process.kill()
            else:
                try:
                    slot.conn.send(None)
                except OSError:
                    pass
        for slot in list(self.slots):
            self._retire(slot)

    def _take(self) -> list[Result]:
        done, self.finished = self.finished, []
        return done

    # -- supervision -----------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Hand out files, wait up to `timeout` for answers, and enforce the bounds."""
        from multiprocessing.connection import wait

        self._start_workers()
        self._hand_out()
        watched = {}
        for slot in self.slots:
            watched[slot.conn] = slot
            watched[slot.process.sentinel] = slot
        for ready in wait(list(watched), timeout):
            slot = watched[ready]
            if slot in self.slots:
                self._receive(slot)
        self._enforce_bounds()

    def _start_workers(self) -> None:
        wanted = min(self.workers, len(self.waiting) + len(self.retry) + sum(len(s.files) for s in self.slots))
        while len(self.slots) < wanted:
            self._start_worker()
        if self.retry and not any(slot.fresh for slot in self.slots):
            # A file is tried again in a worker that has done nothing else (its memory is the
            # model's alone): an idle worker makes room for one if the pool is full.
            idle = [slot for slot in self.slots if slot.ready and not slot.files]
            if len(self.slots) >= self.workers and idle:
                self._retire(idle[0])
            if len(self.slots) < self.workers:
                self._start_worker()

    def _start_worker(self) -> None:
        import multiprocessing

        # spawn, not fork: onnxruntime's thread pools do not survive a fork.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=serve, name="clipsearch-worker", daemon=True,
                                  args=(theirs, self.model_folder, self.threads, self.use_draft, os.getpid()))
        from multiprocessing import spawn

        started_by = spawn.get_command_line
        spawn.get_command_line = quiet_if_orphaned(started_by)
        try:
            process.start()
        finally:
            spawn.get_command_line = started_by
        theirs.close()
        self.slots.append(Slot(process, ours))

    def _retire(self, slot: Slot) -> None:
        try:
            slot.conn.send(None)
        except OSError:
            pass
        slot.process.join(1)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()
        slot.conn.close()
        self.slots.remove(slot)

    def _hand_out(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if not slot.ready or slot.alone:
                continue
            if self.retry and slot.fresh:
                slot.alone = True
                self._send(slot, [self.retry.popleft()], now)
            elif self.waiting and len(slot.files) < QUEUED_PER_WORKER:
                files = [self.waiting.popleft() for _ in range(min(len(self.waiting), QUEUED_PER_WORKER - len(slot.files)))]
                self._send(slot, files, now)

    def _send(self, slot: Slot, files: list, now: float) -> None:
        slot.fresh = False
        if not slot.files:
            slot.since = now
        slot.files.extend(files)
        try:
            slot.conn.send(files)
        except OSError:
            pass  # it has died: its sentinel says so on the next pump

    def _receive(self, slot: Slot) -> None:
        try:
            while slot.conn.poll():
                kind = slot.conn.recv()
                if isinstance(kind, Result):
                    slot.files.popleft()
                    slot.since = time.monotonic()
                    if slot.alone:
                        slot.alone = False
                        self.stopped_once.discard(kind.path)
                    self.finished.append(kind)
                elif kind[0] == "ready":
                    slot.ready, slot.since = True, time.monotonic()
                elif kind[0] == "loading":
                    slot.loading, slot.since = True, time.monotonic()
                elif kind[0] == "loaded":
                    slot.loading, slot.since = False, time.monotonic()
                    self.failed_starts = 0
                else:
                    raise ClipsearchError(f"a worker process could not load the model: {kind[1]}")
        except (EOFError, OSError):
            pass
        if not slot.process.is_alive():
            slot.process.join()
            if slot.loading:
                slot.ready = False  # it died loading the model: the model's fault, not the file's
            self._stop(slot, died(slot.process.exitcode))

    def _enforce_bounds(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            if (not slot.ready or slot.loading) and now - slot.since > START_SECONDS:
                slot.ready = False  # the model's fault, not the file's
                self._stop(slot, f"a worker did not load the model within {START_SECONDS:g} s")
                continue
            if slot.loading:
                continue
            if not (slot.ready and slot.files):
                continue
            if now - slot.since > self.file_timeout:
                self._stop(slot, f"took longer than {self.file_timeout:g} s (--file-timeout)")
                continue
            rss = resident_mb(slot.process.pid)
            if rss is not None and rss > self.memory_mb:
                self._stop(slot, f"needed more than {self.memory_mb} MB of memory (--worker-memory)")

    def _stop(self, slot: Slot, why: str | None) -> None:
        """End a worker; the file it was on is tried again alone once, then failed with `why`."""
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()
        slot.conn.close()
        self.slots.remove(slot)
        if not slot.ready:
            self.failed_starts += 1
            self.retry.extendleft(reversed([f for f in slot.files if f[0] in self.stopped_once]))
            self.waiting.extendleft(reversed([f for f in slot.files if f[0] not in self.stopped_once]))
            if self.failed_starts >= START_ATTEMPTS:
                raise ClipsearchError(f"worker processes die while loading the model ({why}); is memory short? "
                                      "Everything finished so far is saved: try `clipsearch index --workers 1`")
            return
        if not slot.files:
            return
        culprit, *rest = slot.files
        self.waiting.extendleft(reversed(rest))
        if culprit[0] in self.stopped_once:
            self.stopped_once.discard(culprit[0])
            self.finished.append(result_for(culprit, error=f"refused: {why}, twice"))
        else:
            self.stopped_once.add(culprit[0])
            self.retry.append(culprit)


def quiet_if_orphaned(command_line):
    """multiprocessing's spawn command line, wrapped: a worker still starting when its run is
    killed (SIGKILL, the OOM killer, a random moment) finds the pipe its start-up data comes
    through closed, and Python would print an EOFError traceback on the run's stderr, which
    cron mails. Such a worker now leaves without a word (exit 1)."""

    def wrapped(**kwds) -> list[str]:
        line = list(command_line(**kwds))
        at = line.index("-c") + 1
        line[at] = f"import sys\ntry:\n    {line[at]}\nexcept EOFError:\n    sys.exit(1)\n"
        return line

    return wrapped


def died(exitcode: int | None) -> str:
    """Why a worker process ended, in words for the file it was on."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return f"its worker was killed ({name}: out of memory?)"
        return f"its decoder crashed the worker ({name})"
    return f"its worker exited (code {exitcode})"
