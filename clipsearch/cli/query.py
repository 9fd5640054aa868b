"""`clipsearch query`: texts taken literally (a leading dash included), weights, images, filters,
output forms; answered by a running `serve` when there is one, else here (core:
`search/query.py`, `run_query`)."""
from __future__ import annotations

import os
import sys

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
def query(terms, top, min_score, within, weighted, negated, like, unlike, after, before, camera, near, within_distance,
          tags, min_rating, damaged, sort, as_json, bare_paths, null_sep, no_server, db_path, model_dir, text_model_dir,
          threads):
    """Find the images that best match TERMS, each a text taken literally ("16:9 panorama",
    "3:30 pm", "-1 degrees"). Weights only with -w/--weighted W TEXT; subtract with --not:
    clipsearch query "a beach" -w 2 sunset --not people
    """
    with handle_errors():
        from clipsearch.search.query import run_query

        filters = filters_from(after, before, camera, near, within_distance, tags, min_rating)
        if damaged:
            import dataclasses

            filters = dataclasses.replace(filters, damaged=True)
        answer = None
        # A relative --in is named as given in messages: only a cold run says it the same way.
        if not no_server and (within is None or os.path.isabs(within)):
            from clipsearch.serve.localsocket import ask_server

            absolute = [os.path.abspath(path) for path in like], [os.path.abspath(path) for path in unlike]
            answer = ask_server(db_path, model_dir, dict(
                texts=list(terms), top=top, weighted=[list(pair) for pair in weighted], negated=list(negated),
                like=absolute[0], unlike=absolute[1], within=within,
                min_score=min_score, filters=vars(filters), sort=sort, with_meta=as_json), text_model_dir)
        if answer is None:
            answer = run_query(terms, db_path, model_dir, top, weighted=weighted, negated=negated, like=like,
                               unlike=unlike, within=within, threads=threads, min_score=min_score, filters=filters,
                               sort=sort, with_meta=as_json, text_model_dir=text_model_dir)
        for note in answer.notes:
            click.echo(note, err=True)
        from .output import write_results

        try:
            write_results(answer.results, as_json, bare_paths, null_sep, answer.meta, answer.raw)
        except BrokenPipeError:  # the reader (e.g. `head`) has all it wanted
            sys.stdout = open(os.devnull, "w")
        global fast_exit
        fast_exit = True
