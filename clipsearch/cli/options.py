"""What the commands share: the mapping of domain errors to exit codes (`handle_errors`, the
one place), the `--db`, `--model` and `--threads` options, the metadata filter options, the
warning line, loading the model folder. Imported by every command module; imports none."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from clipsearch.config import default_db_path, default_model_dir, text_model_dir
from clipsearch.errors import ClipsearchError


class CommandError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def handle_errors():
    try:
        yield
    except ClipsearchError as exc:
        PROGRESS.clear()
        raise CommandError(str(exc), exc.exit_code) from None
    except KeyboardInterrupt:
        PROGRESS.clear()
        click.echo("clipsearch: interrupted; everything committed so far is kept", err=True)
        sys.exit(130)


class ProgressSlot:
    """The one progress line a command may draw on a terminal's stderr (`\r`, no newline):
    a warning or an error first clears it, so it starts on its own line instead of being
    glued to the progress text."""

    def __init__(self):
        self.drawn = False

    def draw(self, text: str) -> None:
        click.echo(f"\r{text}\x1b[K", err=True, nl=False)
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            click.echo("\r\x1b[K", err=True, nl=False)
            self.drawn = False


PROGRESS = ProgressSlot()


# --db and --model fall back to config.py, the one reader of CLIPSEARCH_DB / CLIPSEARCH_MODEL.
def db_option(f):
    return click.option("--db", "db_path", type=click.Path(path_type=Path), default=None,
                        callback=lambda ctx, param, value: value or default_db_path(),
                        help="Cache database [env CLIPSEARCH_DB; default <CLIPSEARCH_HOME>/index.db].")(f)


def default_library() -> bool:
    """The library is the data dir's (no --db, no CLIPSEARCH_DB): one shard per folder there;
    a database named by the user stays one file (`index/shards.py`)."""
    ctx = click.get_current_context()
    return (ctx.get_parameter_source("db_path") == click.core.ParameterSource.DEFAULT
            and not os.environ.get("CLIPSEARCH_DB"))


def model_option(f):
    return click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
                        callback=lambda ctx, param, value: value or default_model_dir(),
                        help="Model folder [env CLIPSEARCH_MODEL; default <CLIPSEARCH_HOME>/models/openai-vit-b-32, "
                             "else the only model folder there].")(f)


def text_model_option(f):
    return click.option("--text-model", "text_model_dir", metavar="NAME|FOLDER", envvar="CLIPSEARCH_TEXT_MODEL",
                        default=None, callback=lambda ctx, param, value: text_model_dir(value),
                        help="Read the query with this text tower, e.g. multilingual (`clipsearch models pull "
                             "multilingual`: any language) over the photos --model indexed; nothing is embedded "
                             "again [env CLIPSEARCH_TEXT_MODEL].")(f)


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
        click.option("--tag", "tags", multiple=True, metavar="KEYWORD",
                     help="Has this keyword or one under it (People finds People/Ana and People|Ana; =People: "
                          "exactly that one; any case; repeatable: all)."),
        click.option("--min-rating", type=click.IntRange(-1, 5), default=None, metavar="N", help="Rated N stars or more."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def filters_from(after, before, camera, near, within_distance, tags, min_rating):
    from clipsearch.search.filters import make_filters

    return make_filters(after, before, camera, near, within_distance, tags, min_rating)


def threads_option(f):
    return click.option("--threads", type=click.IntRange(1, 256), envvar="CLIPSEARCH_THREADS", default=None,
                        help="onnxruntime threads [env CLIPSEARCH_THREADS].")(f)


def load_model(model_dir: Path):
    from clipsearch.model.manifest import load_manifest

    return load_manifest(model_dir)


def warn(path: bytes, message: str) -> None:
    PROGRESS.clear()
    click.echo(f"warning: {os.fsdecode(path)}: {message}", err=True)
