"""`clipsearch index`: its options, the progress line on a terminal, the summary line, and
the exit code of a run that left a library folder alone (core: `index/run.py`)."""
from __future__ import annotations

import signal
import sys
import time

import click

from clipsearch.errors import LockedError, UsageError

from .options import PROGRESS, db_option, default_library, handle_errors, load_model, model_option, threads_option, warn


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@db_option
@model_option
@click.option("--workers", type=click.IntRange(1, 64), envvar="CLIPSEARCH_WORKERS", default=None,
              help="Decode+embed processes [env CLIPSEARCH_WORKERS; default: one per core, at most 8, "
                   "and no more than available memory holds at 400 MB each].")
@click.option("--file-timeout", type=click.FloatRange(0.1), envvar="CLIPSEARCH_FILE_TIMEOUT", default=120.0,
              show_default=True, metavar="SECONDS",
              help="A file that keeps its worker busy longer is stopped, tried once more, then remembered as "
                   "failed [env CLIPSEARCH_FILE_TIMEOUT].")
@click.option("--worker-memory", type=click.IntRange(128), envvar="CLIPSEARCH_WORKER_MEMORY", default=None, metavar="MB",
              help="A worker growing past this on one file is stopped; the file is tried once more, then remembered "
                   "as failed [env CLIPSEARCH_WORKER_MEMORY; default: its share of available memory, 1024-2048].")
@click.option("--batch-size", type=click.IntRange(1, 256), envvar="CLIPSEARCH_BATCH_SIZE", default=8, show_default=True,
              help="Photos per worker task (each photo still runs through the graph alone, so its vector "
                   "never depends on its neighbours) [env CLIPSEARCH_BATCH_SIZE].")
@threads_option
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Skip folders/files whose name matches this glob; repeatable.")
@click.option("--no-default-excludes", is_flag=True, help="Do not skip @eaDir, #recycle, .thumbnails, ... (see --list-excludes).")
@click.option("--list-excludes", is_flag=True, help="Print the default excluded names and exit.")
@click.option("--follow-links", is_flag=True, help="Follow symbolic links (each real folder is still walked once).")
@click.option("--wait", "wait_seconds", type=click.FloatRange(0), default=0, envvar="CLIPSEARCH_WAIT",
              help="If another index run holds the lock, wait this many seconds before giving up (exit 75).")
@click.option("--commit-seconds", type=click.FloatRange(0), default=2.0, envvar="CLIPSEARCH_COMMIT_SECONDS",
              show_default=True, help="Commit finished work at least this often; a kill loses at most this much.")
@click.option("--exact-decode", is_flag=True, envvar="CLIPSEARCH_EXACT_DECODE",
              help="Decode JPEGs in full instead of at reduced DCT scale: slower, pixels exactly as CLIP's "
                   "pipeline makes them (see docs/design.md \"Preprocessing\") [env CLIPSEARCH_EXACT_DECODE].")
@click.option("--allow-empty", is_flag=True,
              help="A folder that held photos and is now empty was emptied on purpose: remove its photos "
                   "(without it they are kept and the run exits 6, as for a share that is not mounted).")
@click.option("--cluster", metavar="ADDRESS", envvar="CLIPSEARCH_CLUSTER", default=None,
              help="Embed on a Dask cluster: its scheduler, tcp://HOST:8786 (a private address) or tls://... "
                   "[env CLIPSEARCH_CLUSTER; needs clipsearch[cluster]; docs/indexing.md \"Index on a cluster: the desktop helps the NAS\"].")
@click.option("--cluster-insecure", is_flag=True, help="Allow plain TCP to a scheduler outside the private networks.")
@click.option("--cluster-inflight", type=click.IntRange(1), default=256, show_default=True, metavar="MB",
              help="Photo bytes sent to the cluster and not answered yet, at most (memory on this machine).")
@click.option("--retry-failed", is_flag=True,
              help="Try the remembered failures again, changed or not (those under PATHS; without PATHS, the whole "
                   "library). `clipsearch status --failed` lists them.")
@click.option("--shard-on-disk", "on_disk", is_flag=True,
              help="Keep the shard of each folder given on its disk (FOLDER/.clipsearch/): another machine "
                   "with the same model adopts it, nothing embedded again (docs/indexing.md \"Shards: a folder, a disk, a database\").")
@click.option("-q", "--quiet", is_flag=True, envvar="CLIPSEARCH_QUIET", help="Print only warnings and errors (for cron).")
def index(paths, db_path, model_dir, workers, file_timeout, worker_memory, batch_size, threads, excludes, no_default_excludes, list_excludes,
          follow_links, wait_seconds, commit_seconds, exact_decode, allow_empty, cluster, cluster_insecure, cluster_inflight,
          retry_failed, on_disk, quiet):
    """Embed new and changed images under PATHS (default: the current folder) into the cache."""
    from clipsearch.photos.walk import DEFAULT_EXCLUDES

    if list_excludes:
        click.echo("\n".join(DEFAULT_EXCLUDES + ("(and every name starting with '.')",)))
        return
    with handle_errors():
        from clipsearch.index.indexer import IndexOptions
        from clipsearch.index.run import index_paths
        from clipsearch.index.workers import default_workers

        if cluster:
            try:
                from clipsearch.index.cluster import check_address
            except ImportError:
                raise UsageError("--cluster needs Dask: pip install 'clipsearch[cluster]'") from None
            cluster = check_address(cluster, cluster_insecure)

        options = IndexOptions(
            workers=workers or default_workers(), batch_size=batch_size, threads=threads,
            file_timeout=file_timeout, worker_memory=worker_memory,
            excludes=(() if no_default_excludes else DEFAULT_EXCLUDES) + tuple(excludes),
            follow_links=follow_links, commit_seconds=commit_seconds, count_first=not quiet and sys.stderr.isatty(),
            use_draft=not exact_decode, allow_empty=allow_empty, cluster=cluster,
            cluster_inflight_mb=cluster_inflight, retry_failed=retry_failed, quiet=quiet)
        signal.signal(signal.SIGTERM, _interrupt)
        progress = None if quiet or not sys.stderr.isatty() else ProgressLine(options.workers)
        try:
            summary = index_paths(list(paths) or ([] if retry_failed else ["."]), db_path, load_model(model_dir), options,
                                  warn, progress, wait_seconds, on_disk=on_disk, per_folder=default_library())
        except LockedError:
            if quiet:  # cron: a run still busy with a long first index is not news; exit 75 says it
                sys.exit(LockedError.exit_code)
            raise
        if progress:
            progress.clear()
        if not quiet:
            click.echo(f"indexed: {run_counts(summary.as_dict())}", err=True)
            for hint, count in summary.missing_decoders.items():
                click.echo(f"note: {count} file{'s' if count > 1 else ''} skipped: {hint}", err=True)
        from clipsearch.index.summary import kept_empty_error

        left_alone = kept_empty_error(summary)
        if left_alone:
            raise left_alone


def run_counts(run: dict) -> str:
    """One index run's counts, as the summary line and `status` print them."""
    return (f"{run['new']} new, {run['updated']} updated, {run['moved']} moved, {run['removed']} removed, "
            f"{run['failed']} failed, {run.get('skipped', 0)} skipped, {run['unchanged']} unchanged"
            + (f", {run['retried']} retried" if run.get("retried") else "")
            + (f", {run['printed']} printed for duplicates" if run.get("printed") else "")
            + (f", {run['damaged']} damaged" if run.get("damaged") else "") + " "
            f"in {run['elapsed_s']:.1f}s ({run['images_per_s']:.1f} images/s"
            + (f", {run['cluster_workers']} Dask worker{'s' if run['cluster_workers'] != 1 else ''})"
               if run.get("cluster_workers") is not None else ")"))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class ProgressLine:
    """A one-line progress display with rate and ETA, only drawn on a terminal. The rate is
    measured from the first finished photo (the workers' start-up, loading the model, is not
    indexing speed), and the ETA is shown once a few photos per worker are done: the first
    ETA of a 28 s run was 4:42 when it counted the start-up."""

    SETTLE = 3  # photos per worker before the rate says anything about the rest

    def __init__(self, workers: int = 1):
        self.last = 0.0
        self.settle = self.SETTLE * max(1, workers)
        self.first: tuple[float, int] | None = None  # (when, embedded) at the first finished photo

    def __call__(self, summary) -> None:
        now = time.monotonic()
        if self.first is None and summary.embedded:
            self.first = (now, summary.embedded)
        if now - self.last < 0.5:
            return
        self.last = now
        done, total = summary.done, summary.pending_total
        rate = 0.0
        if self.first is not None and now > self.first[0]:
            rate = (summary.embedded - self.first[1]) / (now - self.first[0])
        text = f"indexing: {done}" + (f"/{total}" if total else "") + " images" + (f", {rate:.1f}/s" if rate else "")
        if total and rate > 0 and summary.embedded - self.first[1] >= self.settle:
            eta = max(0, total - done) / rate
            text += f", ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
        PROGRESS.draw(text)

    def clear(self) -> None:
        PROGRESS.clear()
