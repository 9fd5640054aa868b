"""Command line: parses options, calls the core, and maps domain errors to click errors in
one place (`handle_errors`). Results go to stdout, progress and warnings to stderr.
Heavy modules are imported inside the commands so `query` starts fast."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from .config import default_db_path, default_model_dir
from .errors import ClipsearchError, LockedError, UsageError

EXIT_CODES = """Exit codes: 0 success (per-file warnings included), 1 unexpected error, 2 bad usage or
path, 3 model folder problem, 4 database problem, 5 cache built with another model,
6 a library folder that held photos is empty or gone (not mounted?; its photos were kept), 75 another index run holds the lock, 130 interrupted."""


class CommandError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def handle_errors():
    try:
        yield
    except ClipsearchError as exc:
        raise CommandError(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        click.echo("clipsearch: interrupted; everything committed so far is kept", err=True)
        sys.exit(130)


_fast_exit = False  # set by `query`: see run()


def run() -> None:
    """Console entry point. After a query, leave with os._exit once output is flushed:
    tearing down the interpreter and the onnxruntime session costs ~60 ms, a sixth of a
    cold query, and there is nothing left to clean up (the database was only read)."""
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not _fast_exit:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `clipsearch query ... | head -1`
        pass
    os._exit(code)


# --db and --model fall back to config.py, the one reader of CLIPSEARCH_DB / CLIPSEARCH_MODEL.
def db_option(f):
    return click.option("--db", "db_path", type=click.Path(path_type=Path), default=None,
                        callback=lambda ctx, param, value: value or default_db_path(),
                        help="Cache database [env CLIPSEARCH_DB; default <CLIPSEARCH_HOME>/index.db].")(f)


def model_option(f):
    return click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
                        callback=lambda ctx, param, value: value or default_model_dir(),
                        help="Model folder [env CLIPSEARCH_MODEL; default <CLIPSEARCH_HOME>/models/openai-vit-b-32, "
                             "else the only model folder there].")(f)


def filter_options(f):
    """What the photos say about themselves (read by `index`), as filters of `query` and `tag`."""
    options = [
        click.option("--after", metavar="DATE", help="Taken on or after DATE (YYYY, YYYY-MM, YYYY-MM-DD or a timestamp; "
                                                     "the camera's clock)."),
        click.option("--before", metavar="DATE", help="Taken before DATE (exclusive: --before 2019-09 ends with August)."),
        click.option("--camera", metavar="TEXT", help="Camera make or model contains TEXT (any case)."),
        click.option("--near", metavar="LAT,LON", help="Taken near this point (decimal degrees; with --within)."),
        click.option("--within", "within_distance", metavar="DIST", help="With --near: at most DIST away (25km, 800m; "
                                                                          "default 10km)."),
        click.option("--tag", "tags", multiple=True, metavar="KEYWORD", help="Has this keyword (any case; repeatable: all)."),
        click.option("--min-rating", type=click.IntRange(-1, 5), default=None, metavar="N", help="Rated N stars or more."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def filters_from(after, before, camera, near, within_distance, tags, min_rating):
    from .filters import make_filters

    return make_filters(after, before, camera, near, within_distance, tags, min_rating)


def threads_option(f):
    return click.option("--threads", type=click.IntRange(1, 256), envvar="CLIPSEARCH_THREADS", default=None,
                        help="onnxruntime threads [env CLIPSEARCH_THREADS].")(f)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
def main():
    """Semantic photo search on small CPUs. Index once, then query in well under a second."""


def load_model(model_dir: Path):
    from .manifest import load_manifest

    return load_manifest(model_dir)


def warn(path: bytes, message: str) -> None:
    click.echo(f"warning: {os.fsdecode(path)}: {message}", err=True)


@main.command()
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
                   "pipeline makes them (see README \"Preprocessing\") [env CLIPSEARCH_EXACT_DECODE].")
@click.option("--allow-empty", is_flag=True,
              help="A folder that held photos and is now empty was emptied on purpose: remove its photos "
                   "(without it they are kept and the run exits 6, as for a share that is not mounted).")
@click.option("--cluster", metavar="ADDRESS", envvar="CLIPSEARCH_CLUSTER", default=None,
              help="Embed on a Dask cluster: its scheduler, tcp://HOST:8786 (a private address) or tls://... "
                   "[env CLIPSEARCH_CLUSTER; needs clipsearch[cluster]; README \"Index on a cluster\"].")
@click.option("--cluster-insecure", is_flag=True, help="Allow plain TCP to a scheduler outside the private networks.")
@click.option("--cluster-inflight", type=click.IntRange(1), default=256, show_default=True, metavar="MB",
              help="Photo bytes sent to the cluster and not answered yet, at most (memory on this machine).")
@click.option("--retry-failed", is_flag=True,
              help="Try the remembered failures again, changed or not (those under PATHS; without PATHS, the whole "
                   "library). `clipsearch status --failed` lists them.")
@click.option("-q", "--quiet", is_flag=True, envvar="CLIPSEARCH_QUIET", help="Print only warnings and errors (for cron).")
def index(paths, db_path, model_dir, workers, file_timeout, worker_memory, batch_size, threads, excludes, no_default_excludes, list_excludes,
          follow_links, wait_seconds, commit_seconds, exact_decode, allow_empty, cluster, cluster_insecure, cluster_inflight,
          retry_failed, quiet):
    """Embed new and changed images under PATHS (default: the current folder) into the cache."""
    from .walk import DEFAULT_EXCLUDES

    if list_excludes:
        click.echo("\n".join(DEFAULT_EXCLUDES + ("(and every name starting with '.')",)))
        return
    with handle_errors():
        from .indexer import IndexOptions
        from .workers import default_workers
        from .library import index_paths

        if cluster:
            try:
                from .cluster import check_address
            except ImportError:
                raise UsageError("--cluster needs Dask: pip install 'clipsearch[cluster]'") from None
            cluster = check_address(cluster, cluster_insecure)

        options = IndexOptions(
            workers=workers or default_workers(), batch_size=batch_size, threads=threads,
            file_timeout=file_timeout, worker_memory=worker_memory,
            excludes=(() if no_default_excludes else DEFAULT_EXCLUDES) + tuple(excludes),
            follow_links=follow_links, commit_seconds=commit_seconds, count_first=not quiet and sys.stderr.isatty(),
            use_draft=not exact_decode, allow_empty=allow_empty, cluster=cluster,
            cluster_inflight_mb=cluster_inflight, retry_failed=retry_failed)
        signal.signal(signal.SIGTERM, _interrupt)
        progress = None if quiet or not sys.stderr.isatty() else ProgressLine()
        try:
            summary = index_paths(list(paths) or ([] if retry_failed else ["."]), db_path, load_model(model_dir), options,
                                  warn, progress, wait_seconds)
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
        from .indexer import kept_empty_error

        left_alone = kept_empty_error(summary)
        if left_alone:
            raise left_alone


def run_counts(run: dict) -> str:
    """One index run's counts, as the summary line and `status` print them."""
    return (f"{run['new']} new, {run['updated']} updated, {run['moved']} moved, {run['removed']} removed, "
            f"{run['failed']} failed, {run.get('skipped', 0)} skipped, {run['unchanged']} unchanged"
            + (f", {run['retried']} retried" if run.get("retried") else "") + " "
            f"in {run['elapsed_s']:.1f}s ({run['images_per_s']:.1f} images/s"
            + (f", {run['cluster_workers']} Dask worker{'s' if run['cluster_workers'] != 1 else ''})"
               if run.get("cluster_workers") is not None else ")"))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class ProgressLine:
    """A one-line progress display with rate and ETA, only drawn on a terminal."""

    def __init__(self):
        self.last = 0.0

    def __call__(self, summary) -> None:
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        done, total = summary.done, summary.pending_total
        rate = summary.embedded / summary.elapsed if summary.elapsed else 0.0
        text = f"indexing: {done}" + (f"/{total}" if total else "") + f" images, {rate:.1f}/s"
        if total and rate > 0:
            eta = max(0, total - done) / rate
            text += f", ETA {int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}"
        click.echo(f"\r{text}\x1b[K", err=True, nl=False)

    def clear(self) -> None:
        click.echo("\r\x1b[K", err=True, nl=False)


class QueryCommand(click.Command):
    """Query texts that start with a dash ("-1 degrees outside", "-5 C") are texts, not
    unknown options: they become positional terms without needing `--`. A dash word that is
    one of the command's options, or the value of one, keeps its meaning."""

    def parse_args(self, ctx, args):
        values: dict[str, int] = {}  # option name -> how many values follow it
        for param in self.params:
            if isinstance(param, click.Option):
                for name in param.opts + param.secondary_opts:
                    values[name] = 0 if param.is_flag or param.count else param.nargs
        kept, texts, expect = [], [], 0
        for i, arg in enumerate(args):
            if arg == "--":
                kept += args[i:]
                stray = [a for a in args[i + 1:] if a.split("=", 1)[0] in values]
                if stray:  # POSIX: after `--` everything is text; say so, it is rarely meant
                    click.echo(f"note: after --, {' '.join(stray)} is search text, not an option; "
                               "put options before --", err=True)
                break
            if expect:
                expect -= 1
            elif arg.split("=", 1)[0] in values:
                expect = 0 if "=" in arg else values[arg]
            elif arg.startswith("-") and (any(c.isspace() for c in arg) or arg[1:2].isdigit() or arg[1:2] == "."):
                texts.append(arg)
                continue
            kept.append(arg)
        if texts:  # the sum of terms does not depend on their order
            kept += texts if "--" in kept else ["--", *texts]
        return super().parse_args(ctx, kept)


@main.command(cls=QueryCommand)
@click.argument("terms", nargs=-1)
@click.option("--top", "-n", type=click.IntRange(1), default=None, envvar="CLIPSEARCH_TOP",
              help="How many results [env CLIPSEARCH_TOP; default 10, or all with --min-score].")
@click.option("--min-score", type=float, default=None, metavar="S",
              help="Only results whose score (cosine) reaches S: a cut-off instead of a fixed --top.")
@click.option("--in", "within", type=click.Path(path_type=str), default=None,
              help="Only results under this folder (default: the whole library).")
@click.option("-w", "--weighted", multiple=True, nargs=2, type=(float, str), metavar="W TEXT",
              help="A text with weight W (negative subtracts); repeatable: -w 2 snow -w -0.5 people.")
@click.option("--not", "negated", multiple=True, metavar="TEXT", help="Subtract a text (weight -1; repeatable).")
@click.option("--like", multiple=True, metavar="IMAGE", help="Add an image to the query (repeatable).")
@click.option("--unlike", multiple=True, metavar="IMAGE", help="Subtract an image from the query (repeatable).")
@filter_options
@click.option("--sort", type=click.Choice(["score", "date"]), default="score", show_default=True,
              help="Order of the results chosen: best match first, or newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: path, score, and what the photo says "
                                                      "about itself (date, camera, place, size, keywords, rating).")
@click.option("--paths", "bare_paths", is_flag=True, help="Bare paths, one per line.")
@click.option("-0", "--null", "null_sep", is_flag=True, help="Bare paths separated by NUL (for xargs -0).")
@click.option("--no-server", is_flag=True, help="Run here even when `clipsearch serve` is running for this cache "
                                                "(by default it answers, warm).")
@db_option
@model_option
@threads_option
def query(terms, top, min_score, within, weighted, negated, like, unlike, after, before, camera, near, within_distance,
          tags, min_rating, sort, as_json, bare_paths, null_sep, no_server, db_path, model_dir, threads):
    """Find the images that best match TERMS, each a text taken literally ("16:9 panorama",
    "3:30 pm", "-1 degrees"). Weights only with -w/--weighted W TEXT; subtract with --not:
    clipsearch query "a beach" -w 2 sunset --not people
    """
    with handle_errors():
        from .search import run_query

        filters = filters_from(after, before, camera, near, within_distance, tags, min_rating)
        answer = None
        # A relative --in is named as given in messages: only a cold run says it the same way.
        if not no_server and (within is None or os.path.isabs(within)):
            from .localsocket import ask_server

            absolute = [os.path.abspath(path) for path in like], [os.path.abspath(path) for path in unlike]
            answer = ask_server(db_path, model_dir, dict(
                texts=list(terms), top=top, weighted=[list(pair) for pair in weighted], negated=list(negated),
                like=absolute[0], unlike=absolute[1], within=within,
                min_score=min_score, filters=vars(filters), sort=sort, with_meta=as_json))
        if answer is None:
            answer = run_query(terms, db_path, model_dir, top, weighted=weighted, negated=negated, like=like,
                               unlike=unlike, within=within, threads=threads, min_score=min_score, filters=filters,
                               sort=sort, with_meta=as_json)
        for note in answer.notes:
            click.echo(note, err=True)
        from .output import write_results

        try:
            write_results(answer.results, as_json, bare_paths, null_sep, answer.meta)
        except BrokenPipeError:  # the reader (e.g. `head`) has all it wanted
            sys.stdout = open(os.devnull, "w")
        global _fast_exit
        _fast_exit = True




@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@db_option
@model_option
@click.option("--failed", "list_failed", is_flag=True,
              help="List the files that could not be indexed (under PATHS if given), with the reason.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with --failed: one object per line).")
def status(paths, db_path, model_dir, list_failed, as_json):
    """Library folders, counts, model and database of the cache."""
    with handle_errors():
        from .library import failed_report, status_report

        if list_failed:
            failed = failed_report(db_path, list(paths))
            for row in failed:
                if as_json:
                    click.echo(json.dumps(row))
                else:
                    click.echo(f"{row['path']}: {row['error']}" + (f" (retried by itself: {row['retry']})"
                                                                   if row.get("retry") else ""))
            if not as_json:
                click.echo(f"{len(failed)} failed file{'s' if len(failed) != 1 else ''}"
                           + ("; retry them with `clipsearch index --retry-failed`" if failed else ""), err=True)
            return
        if paths:
            raise UsageError("folders go with --failed; `clipsearch status` describes the whole cache")
        report = status_report(db_path, model_dir)
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        for key, value in report.items():
            if key == "last_run":
                run = value
                value = f"{run['started']}, {run['status']}" + (f": {run_counts(run)}" if "new" in run else "")
            elif isinstance(value, list):
                value = ", ".join(value) or "-"
            elif isinstance(value, dict):
                value = ", ".join(f"{count} {kind}" for kind, count in value.items()) or "-"
            click.echo(f"{key.replace('_', ' ') + ':':24} {value}")


@main.command("check-model")
@model_option
@threads_option
def check_model(model_dir, threads):
    """Verify the model folder: file sizes and hashes, and that both graphs reproduce the
    reference embeddings recorded at export time."""
    with handle_errors():
        from .encoders import check_reference

        manifest = load_model(model_dir)
        for tower in ("text", "vision"):
            diff = check_reference(manifest, tower, threads)
            click.echo(f"{tower}: ok (max diff {diff:.1e} from the export)")
        answers = manifest.data.get("known_answers")
        if answers:
            from .known_answers import check

            measured = check(manifest, answers, threads, then="re-pull the model (`clipsearch models pull`)")
            worst = max(measured, key=lambda answer: answer["deviation"])
            click.echo(f"known answers: ok ({len(measured)} pictures; worst deviation {worst['deviation']:.4f} on "
                       f"{worst['picture']})")
        click.echo(f"model {manifest.name} ({manifest.model_id}) at {manifest.folder}: ok")
        if manifest.untrained:
            click.echo(f"note: {manifest.untrained}")


from .modelcli import models  # noqa: E402 - the group uses handle_errors, defined above

main.add_command(models)

from .tagcli import tag, untag  # noqa: E402 - as models

main.add_command(tag)
main.add_command(untag)

from .servecli import serve  # noqa: E402 - as models

main.add_command(serve)
