"""The `clipsearch` group: its exit codes, the console entry point, and the registration of
every command (one module each, over an interface-agnostic core). Results go to stdout,
progress and warnings to stderr. Heavy modules are imported inside the commands, so `query`
starts fast."""
from __future__ import annotations

import os
import sys

import click

from . import query as query_command
from .duplicates import duplicates
from .index import index
from .models import check_model, models
from .serve import serve
from .status import status
from .tag import tag, untag

EXIT_CODES = """Exit codes: 0 success (per-file warnings included), 1 unexpected error, 2 bad usage or
path, 3 model folder problem (a known answer missed included), 4 database problem (a read-only
cache for index/tag included), 5 cache built with another model, 6 a library folder that held
photos is empty or gone (not mounted?; its photos were kept), 7 a model download failed, 8 tag
or untag could write none of its sidecars, 75 another index run holds the lock, 130
interrupted."""


def run() -> None:
    """Console entry point. After a query, leave with os._exit once output is flushed:
    tearing down the interpreter and the onnxruntime session costs ~60 ms, a sixth of a
    cold query, and there is nothing left to clean up (the database was only read)."""
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not query_command.fast_exit:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `clipsearch query ... | head -1`
        pass
    os._exit(code)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
def main():
    """Semantic photo search on small CPUs. Index once, then query in well under a second."""


for command in (index, query_command.query, status, duplicates, check_model, models, tag, untag, serve):
    main.add_command(command)
