"""`clipsearch query`: texts taken literally (a leading dash included), weights, images, filters,
output forms; answered by a running `serve` when there is one, else here (core:
`search/query.py`, `run_query`)."""
from __future__ import annotations

import os
import sys
import threading

import click

from .options import (
    db_option,
    filter_options,
    filters_from,
    handle_errors,
    model_option,
    text_model_option,
    threads_option,
)

fast_exit = False  # set once a query has printed its answer: `main.run` then leaves at once


class QueryCommand(click.Command):
    """Query texts that start with a dash ("-1 degrees outside", "-5 C") are texts, not
    unknown options: they become positional terms without needing `--`. A dash word that is
    one of the command's options, or the value of one, keeps its meaning."""

    def parse_args(self, ctx, args):
        ctx.meta["raw_args"] = list(args)  # what a running server is sent to parse itself
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


@click.command(cls=QueryCommand)
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
@click.option("--damaged", is_flag=True, help="Only photos indexed from the part of them that decodes (a file cut "
                                             "short): `clipsearch status --damaged` says what is missing.")
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
@text_model_option
@threads_option
@click.pass_context
def query(ctx, terms, top, min_score, within, weighted, negated, like, unlike, after, before, camera, near,
          within_distance, tags, min_rating, damaged, sort, as_json, bare_paths, null_sep, no_server, db_path,
          model_dir, text_model_dir, threads):
    """Find the images that best match TERMS, each a text taken literally ("16:9 panorama",
    "3:30 pm", "-1 degrees"). Weights only with -w/--weighted W TEXT; subtract with --not:
    clipsearch query "a beach" -w 2 sunset --not people
    """
    global fast_exit
    with handle_errors():
        from clipsearch.serve import localsocket

        if not no_server and not localsocket.asked:  # `cli/entry.py` asks first; a test may call this directly
            code = localsocket.forward_query(ctx.meta["raw_args"], db_path)
            if code is not None:
                fast_exit = True
                ctx.exit(code)
        answer = answer_query(ctx.params, lambda kwargs: _run_cold(kwargs, threads))
        for note in answer.notes:
            click.echo(note, err=True)
        from .output import write_results

        try:
            write_results(answer.results, as_json, bare_paths, null_sep, answer.meta, answer.raw)
        except BrokenPipeError:  # the reader (e.g. `head`) has all it wanted
            sys.stdout = open(os.devnull, "w")
        fast_exit = True


def _run_cold(kwargs: dict, threads: int | None):
    from clipsearch.search.query import run_query

    return run_query(**kwargs, threads=threads)


def answer_query(params: dict, run):
    """The command's parameters as `run_query`'s arguments, run by `run` (here, or warm in a
    server: `answer_forwarded`)."""
    filters = filters_from(params["after"], params["before"], params["camera"], params["near"],
                           params["within_distance"], params["tags"], params["min_rating"])
    if params["damaged"]:
        import dataclasses

        filters = dataclasses.replace(filters, damaged=True)
    return run(dict(texts=params["terms"], db_path=params["db_path"], model_dir=params["model_dir"], top=params["top"],
                    weighted=params["weighted"], negated=params["negated"], like=params["like"],
                    unlike=params["unlike"], within=params["within"], min_score=params["min_score"], filters=filters,
                    sort=params["sort"], with_meta=params["as_json"], text_model_dir=params["text_model_dir"]))


_PARSING = threading.Lock()


def answer_forwarded(request: dict, served: tuple, run) -> dict | None:
    """A `clipsearch query` command line forwarded by a client (`serve/localsocket.py`), in a
    running server for the cache, model and text model `served`: parsed with this command's own
    definition in the client's environment and working directory, run warm by `run`; its
    stdout bytes and stderr text as a cold run would print them. None: not this server's to
    answer (another cache or model, --no-server, --help, a usage error, a relative --in, which
    a cold run names as given, or any error: the client then runs cold and says it itself)."""
    import io

    env, cwd = request["env"], request["cwd"]
    # After `--` the parser may have a note to print: the client's own run says it.
    if env.get("CLIPSEARCH_HOME") != os.environ.get("CLIPSEARCH_HOME") or "--" in request["args"]:
        return None
    # The options' environment variables (CLIPSEARCH_TOP) and the defaults' (CLIPSEARCH_DB,
    # CLIPSEARCH_MODEL) are read while parsing: the client's, not ours. CLIPSEARCH_HOME is
    # the same on both sides (checked above), the only one other threads read meanwhile.
    envvars = {name for name in [*os.environ, *env] if name.startswith("CLIPSEARCH_")} - {"CLIPSEARCH_HOME"}
    with _PARSING:
        saved = {name: os.environ.pop(name, None) for name in envvars}
        os.environ.update({name: env[name] for name in envvars if name in env})
        try:
            ctx = query.make_context("query", list(request["args"]))
        except (click.exceptions.ClickException, click.exceptions.Exit):
            return None
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    params = dict(ctx.params)
    within = params["within"]
    if params["no_server"] or (within is not None and not os.path.isabs(within)):
        return None
    for key in ("db_path", "model_dir", "text_model_dir"):
        if params[key] is not None:
            params[key] = type(params[key])(os.path.join(cwd, params[key]))
    asked = tuple(os.path.realpath(params[key]) if params[key] else None for key in ("db_path", "model_dir",
                                                                                      "text_model_dir"))
    if asked != tuple(os.path.realpath(p) if p else None for p in served):
        return None
    params["like"] = [os.path.join(cwd, path) for path in params["like"]]
    params["unlike"] = [os.path.join(cwd, path) for path in params["unlike"]]
    try:
        answer = answer_query(params, run)
    except Exception:  # noqa: BLE001 - the cold run gives the error its own words and exit code
        return None
    from .output import write_results

    out = io.BytesIO()
    write_results(answer.results, params["as_json"], params["bare_paths"], params["null_sep"], answer.meta, answer.raw,
                  out)
    return {"code": 0, "stdout": out.getvalue(), "stderr": "".join(note + "\n" for note in answer.notes)}
