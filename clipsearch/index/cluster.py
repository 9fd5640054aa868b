"""The indexer's executor on a Dask cluster (`clipsearch index --cluster ADDRESS`): the same
interface as `workers.WorkerPool` (files in, Results out as they finish), with the embedding
done by Dask workers on other machines.

Where the work happens:
- here (the NAS): the walk, reading each photo and its sidecars once (`embed.ship`),
  headers-only work (metadata of photos cached before: no model needed), and every write to
  the cache, with the indexer's usual commits;
- on the workers: decoding, preprocessing and embedding, with their own copy of the model
  folder (`ModelPlugin`, one per worker process, found as `clipsearch` finds it there:
  `CLIPSEARCH_MODEL`, else the data dir). A worker whose model id differs from the cache's is
  refused, by name, and never given work.
Files in flight are capped in bytes, so memory here stays bounded whatever the cluster's
speed. A worker that leaves mid-run has its tasks run elsewhere by the scheduler (the task
carries the photo's bytes); a scheduler that goes away stops the run, keeping what finished.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import time
import urllib.parse

from distributed import WorkerPlugin  # the caller turns an ImportError into "install the extra"

from clipsearch.errors import ClipsearchError, UsageError

from .embed import Result, mode_of, result_for, ship

PLUGIN = "clipsearch-model"
INFLIGHT_MB = 256  # photo bytes sent and not answered yet (--cluster-inflight)
CONNECT_SECONDS = 20
POLL_SECONDS = 0.02
RECONNECT_SECONDS = 10.0  # a scheduler unreachable this long has gone away
NO_WORKER_SECONDS = 120.0  # with no usable worker this long, the run stops (finished work kept)


class ClusterError(ClipsearchError):
    """The cluster could not be used or went away."""


def check_address(address: str, insecure: bool) -> str:
    """A scheduler address to connect to. Plain TCP only to a private or loopback address
    (a Dask scheduler runs code its clients send): else TLS, or `--cluster-insecure`."""
    parsed = urllib.parse.urlsplit(address if "://" in address else "tcp://" + address)
    if parsed.scheme not in ("tcp", "tls") or not parsed.hostname:
        raise UsageError(f"--cluster {address}: give the scheduler as tcp://HOST:PORT or tls://HOST:PORT")
    if parsed.scheme == "tcp" and not insecure:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(parsed.hostname, parsed.port or 8786)}
        except OSError as exc:
            raise UsageError(f"--cluster {address}: cannot resolve {parsed.hostname} ({exc.strerror})") from None
        public = [a for a in addresses if not (ipaddress.ip_address(a).is_private or ipaddress.ip_address(a).is_loopback)]
        if public:
            raise UsageError(f"--cluster {address}: {public[0]} is not a private network address, and plain TCP "
                             "would let anyone on the way run code on the workers; use tls:// "
                             "(docs/indexing.md \"Index on a cluster: the desktop helps the NAS\") or, if you know the network, --cluster-insecure")
    return f"{parsed.scheme}://{parsed.netloc}"


class ModelPlugin(WorkerPlugin):
    """Held by each Dask worker process: its own model folder, loaded once, and an
    EmbedWorker over it (one thread, as the local workers)."""

    name = PLUGIN
    idempotent = True

    def __init__(self, use_draft: bool):
        self.use_draft = use_draft
        self.embedder, self.model_id, self.problem = None, None, None

    def setup(self, worker=None):
        try:
            from clipsearch.config import default_model_dir
            from clipsearch.model.encoders import ImageEncoder
            from clipsearch.model.manifest import load_manifest
            from clipsearch.photos.formats import prepare_decoders

            from .embed import EmbedWorker

            prepare_decoders(1)
            manifest = load_manifest(default_model_dir())
            self.model_id = manifest.model_id
            self.embedder = EmbedWorker(ImageEncoder(manifest, threads=1), self.use_draft)
        except Exception as exc:  # noqa: BLE001 - reported by name to the run, which refuses this worker
            self.problem = f"{type(exc).__name__}: {exc}"

    def teardown(self, worker=None):
        pass


def _worker_model(dask_worker) -> tuple[str | None, str | None]:
    plugin = dask_worker.plugins.get(PLUGIN)
    return (plugin.model_id, plugin.problem) if plugin is not None else (None, "no clipsearch model plugin")


def _one_line_dask_warnings(address: str, warn, quiet: bool) -> None:
    """Dask's own Python warnings ("Sending large graph of size 21.56 MiB ...", from its event
    loop's thread) as one line each, once per kind, or none with `-q`: a nightly run's mail
    should not hold a two-line warning per big photo."""
    import warnings

    if quiet:
        warnings.filterwarnings("ignore", module=r"distributed(\.|$)")
        return
    shown: set[str] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if f"{os.sep}distributed{os.sep}" not in filename:
            return original(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())
        kind = text.split(" of ")[0][:40]
        if kind not in shown:
            shown.add(kind)
            warn(address.encode(), f"Dask: {text}")

    warnings.showwarning = show


def _embed(shipment) -> tuple[Result, str]:
    """The task: this worker's embedder on one shipped photo; also says which worker it was."""
    from distributed import get_worker

    worker = get_worker()
    return worker.plugins[PLUGIN].embedder.embed_shipped(shipment), worker.address


class ClusterPool:
    """Files in, Results out, embedded on a Dask cluster (see the module docstring)."""

    def __init__(self, address: str, manifest, use_draft: bool, local, warn, inflight_mb: int = INFLIGHT_MB,
                 quiet: bool = False):
        import logging

        from distributed import Client

        # Dask logs a traceback for every failed reconnection; this run says what happened in
        # one line of its own instead.
        for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("distributed", "tornado")]:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        _one_line_dask_warnings(address, warn, quiet)
        self.address, self.model_id, self.local, self.warn = address, manifest.model_id, local, warn
        self.inflight_bytes = inflight_mb << 20
        try:
            self.client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({exc}); is `dask scheduler` running "
                               "there?") from None
        self.client.register_plugin(ModelPlugin(use_draft), name=PLUGIN)
        self.good: set[str] = set()
        self.refused: set[str] = set()
        self.used: set[str] = set()
        self.futures: dict = {}  # future -> (file, bytes)
        self.sent = 0
        self.bytes_shipped = 0  # photo and sidecar bytes sent to workers this run
        self.finished: list[Result] = []
        self.check_workers()

    # -- the indexer's side ----------------------------------------------------------------

    def submit(self, files) -> list[Result]:
        for file in files:
            if mode_of(file):
                self.finished.append(self.local.embed_one(file))  # metadata or print only: no model, no cluster
                continue
            shipment = ship(file)
            if isinstance(shipment, Result):
                self.finished.append(shipment)
                continue
            while self.futures and self.sent + len(shipment.data) > self.inflight_bytes:
                self._collect(wait=True)
            self._send(shipment, file)
        self._collect(wait=False)
        return self._take()

    def drain(self) -> list[Result]:
        while self.futures:
            self._collect(wait=True)
        return self._take()

    def close(self, cancel: bool = False) -> None:
        if cancel and self.futures:
            self.client.cancel(list(self.futures))
        self.client.close()

    @property
    def workers_used(self) -> int:
        return len(self.used)

    # -- the cluster's side ----------------------------------------------------------------

    def check_workers(self) -> None:
        """Sort the scheduler's workers into usable and refused (another model, none loaded)."""
        waited = time.monotonic()
        while True:
            try:
                models = self.client.run(_worker_model)
            except Exception as exc:  # noqa: BLE001 - a worker leaving during the call
                models, problem = {}, exc
            else:
                problem = None
            for address, (model_id, why) in models.items():
                if address in self.good or address in self.refused:
                    continue
                if model_id == self.model_id:
                    self.good.add(address)
                else:
                    self.refused.add(address)
                    reason = why or f"its model id is {model_id}, this cache's is {self.model_id}"
                    self.warn(address.encode(), f"Dask worker refused: {reason}; give it the same model folder "
                                                "(CLIPSEARCH_MODEL or its data dir)")
            if problem is None:
                self.good &= set(models)  # workers that left
            if self.good:
                return
            if time.monotonic() - waited > NO_WORKER_SECONDS:
                raise ClusterError(f"no Dask worker at {self.address} can embed for this cache "
                                   f"({len(self.refused)} refused); start one with the same model folder")
            time.sleep(1.0)

    def _send(self, shipment, file) -> None:
        try:
            future = self.client.submit(_embed, shipment, pure=False, workers=sorted(self.good),
                                        allow_other_workers=False, retries=2)
        except Exception as exc:  # noqa: BLE001
            raise ClusterError(f"the Dask scheduler at {self.address} went away ({type(exc).__name__}); the photos "
                               "embedded so far are kept: run `clipsearch index` again") from None
        self.futures[future] = (file, len(shipment.data))
        self.sent += len(shipment.data)
        self.bytes_shipped += len(shipment.data) + sum(len(data) for *_, data in shipment.sidecars if isinstance(data, bytes))

    def _collect(self, wait: bool) -> None:
        if not self.futures:
            return
        if wait:
            deadline = time.monotonic() + NO_WORKER_SECONDS
            lost = None  # since when the client has not been connected to the scheduler
            while not any(future.done() for future in self.futures):
                if self.client.status == "running":
                    lost = None
                elif lost is None:
                    lost = time.monotonic()
                if lost is not None and time.monotonic() - lost > RECONNECT_SECONDS:
                    raise ClusterError(f"the Dask scheduler at {self.address} went away; the photos embedded so "
                                       "far are kept: run `clipsearch index` again")
                if time.monotonic() > deadline:
                    self._no_progress()
                    deadline = time.monotonic() + NO_WORKER_SECONDS
                time.sleep(POLL_SECONDS)
        for future in [f for f in self.futures if f.done()]:
            file, size = self.futures.pop(future)
            self.sent -= size
            self._finish(future, file)

    def _finish(self, future, file) -> None:
        if future.status == "finished":
            result, worker = future.result()
            self.finished.append(result)
            self.used.add(worker)
            return
        if future.status == "cancelled" or self.client.status in ("closing", "closed"):
            raise ClusterError(f"the Dask scheduler at {self.address} went away; the photos embedded so far are "
                               "kept: run `clipsearch index` again")
        # The task itself failed on every try (a worker crashing on this photo): like any file
        # that cannot be embedded, it is remembered as failed.
        exc = future.exception()
        self.finished.append(result_for(file, error=f"cannot embed on the cluster ({type(exc).__name__}: {exc})"))

    def _no_progress(self) -> None:
        self.good.clear()
        self.refused.clear()
        self.check_workers()  # raises if no usable worker comes back in time

    def _take(self) -> list[Result]:
        done, self.finished = self.finished, []
        return done
