"""The console entry point (`clipsearch`, `python -m clipsearch`). A `clipsearch query` is
first offered to a running `clipsearch serve` for its cache, before click or anything else of
the command line is imported: the server parses the raw arguments with the query command's
own definition and answers warm (`serve/localsocket.py`). Measured at 100,000 photos: the
whole process in about 50 ms this way, against 171 ms when click and the client's own parsing
came first (docs/serve.md "The local socket"). Everything else, and a query no server answers,
goes on to `main.py`."""
from __future__ import annotations

import os
import sys


def run() -> None:
    args = sys.argv[1:]
    if args[:1] == ["query"] and "--no-server" not in args:
        from clipsearch.serve import localsocket

        code = localsocket.forward_query(args[1:], localsocket.db_path_of(args[1:]))
        localsocket.asked = True  # declined or no server: the command below runs cold at once
        if code is not None:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except BrokenPipeError:
                pass
            os._exit(code)  # nothing to tear down: the process only read a socket
    from .main import run as run_command

    run_command()
