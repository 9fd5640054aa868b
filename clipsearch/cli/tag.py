"""`clipsearch tag` and `untag`: the command line over `tag/keywords.py` (one core call per command;
errors mapped to exit codes by `options.handle_errors`)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from .options import db_option, filter_options, filters_from, handle_errors, model_option, text_model_option, warn


def sidecar_options(f):
    f = click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")(f)
    f = click.option("--parent", default="clipsearch", show_default=True, metavar="NAME",
                     help="Level above the keyword in lr:hierarchicalSubject (NAME|kw) and digiKam:TagsList "
                          "(NAME/kw); empty for none. dc:subject gets the bare keyword.")(f)
    f = click.option("--sidecar", "style", type=click.Choice(["digikam", "adobe"]), default="digikam", show_default=True,
                     help="Name of a new sidecar: photo.jpg.xmp (digiKam, darktable, Immich) or photo.xmp "
                          "(Lightroom, Capture One). An existing sidecar of either name is always the one updated.")(f)
    return f


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("keyword", required=False)
@click.argument("terms", nargs=-1)
@click.option("--top", "-n", type=click.IntRange(1), default=None, help="Tag the N best matches.")
@click.option("--min-score", type=float, default=None, metavar="S", help="Tag matches with a cosine of at least S.")
@click.option("--in", "within", type=click.Path(path_type=str), default=None, metavar="DIR",
              help="Only photos under DIR.")
@click.option("-w", "--weighted", multiple=True, nargs=2, type=(float, str), metavar="W TEXT",
              help="Add a text with weight W (repeatable).")
@click.option("--not", "negated", multiple=True, metavar="TEXT", help="Subtract a text (repeatable).")
@click.option("--like", multiple=True, metavar="IMAGE", help="Add an image to the query (repeatable).")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Label the library: one label per line (or label<TAB>prompt); each photo gets its "
                   "--per-photo best labels reaching --min-score. No KEYWORD then.")
@click.option("--per-photo", type=click.IntRange(1), default=3, show_default=True, help="With --labels.")
@filter_options
@sidecar_options
@db_option
@model_option
@text_model_option
def tag(keyword, terms, top, min_score, within, weighted, negated, like, labels_file, per_photo, after, before, camera,
        near, within_distance, tags, min_rating, dry_run, parent, style, db_path, model_dir, text_model_dir):
    """Add KEYWORD to the XMP sidecars of the photos QUERY finds (default: the keyword itself).

    \b
      clipsearch tag beach "a sandy beach with the sea" --top 300 --dry-run
      clipsearch tag --labels labels.txt --per-photo 3 --min-score 0.24
    """
    with handle_errors():
        from clipsearch.errors import UsageError
        from clipsearch.tag import keywords, labels

        options = keywords.TagOptions(style=style, parent=parent or None, dry_run=dry_run)
        filters = filters_from(after, before, camera, near, within_distance, tags, min_rating)
        if labels_file is not None:
            if filters.active:
                raise UsageError("--labels labels every cached photo (or those under --in): no metadata filters")
            if keyword or terms:
                raise UsageError("with --labels the labels come from the file: no KEYWORD or QUERY")
            report = labels.tag_labels(labels_file, db_path, model_dir, options, warn, per_photo=per_photo,
                                     min_score=min_score, within=within, text_model_dir=text_model_dir)
        elif keyword is None:
            raise UsageError("tag needs a KEYWORD (or --labels FILE); see clipsearch tag --help")
        else:
            report = keywords.tag_query(keyword, list(terms), db_path, model_dir, options, warn, top=top,
                                    min_score=min_score, weighted=weighted, negated=negated, like=like, within=within,
                                    filters=filters, text_model_dir=text_model_dir)
        say(report, "tag", dry_run)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("keyword")
@click.option("--in", "within", type=click.Path(path_type=str), default=None, metavar="DIR",
              help="Only photos under DIR.")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@db_option
def untag(keyword, within, dry_run, db_path):
    """Remove from the sidecars exactly what `clipsearch tag KEYWORD` added (never a keyword a
    person wrote)."""
    with handle_errors():
        from clipsearch.tag import keywords

        report = keywords.untag(keyword, db_path, keywords.TagOptions(dry_run=dry_run), warn, within=within)
        say(report, "untag", dry_run)


def say(report, verb: str, dry_run: bool) -> None:
    sign = "-" if verb == "untag" else "+"
    for photo, sidecar, keyword, values in report.changes:
        click.echo(f"{os.fsdecode(sidecar)}: {sign} {', '.join(values)}")
    would = "would be " if dry_run else ""
    click.echo(f"{verb}: {report.photos} photos, {report.written} sidecars {would}written, "
               f"{report.unchanged} already so, {report.failed} failed", err=True)
    if report.failed and not report.written and not report.unchanged:
        from clipsearch.errors import SidecarWriteError

        raise SidecarWriteError(f"{verb}: none of the {report.failed} sidecars could be written (see the warnings "
                                "above); nothing was changed")
