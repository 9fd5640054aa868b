"""`clipsearch duplicates`: groups of copies, near-copies and bursts, best copy first, as text
or JSON; `--tag` marks the others (core: `health/`)."""
from __future__ import annotations

import json
import os

import click

from .options import db_option, handle_errors, model_option, warn


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(path_type=str))
@db_option
@model_option
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["exact", "same", "burst"]),
              help="Only these kinds (repeatable): exact copies, the same picture in another file, bursts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group: kind, members with their evidence.")
@click.option("--tag", "keyword", default=None, metavar="KEYWORD",
              help="Add KEYWORD (PARENT/KEYWORD for a hierarchy, e.g. review/duplicate) to every member but the best, "
                   "in its sidecar; `clipsearch untag KEYWORD` takes it back.")
@click.option("--dry-run", is_flag=True, help="With --tag: print what would change; write nothing.")
@click.option("--burst-cosine", type=click.FloatRange(-1, 1), default=None, metavar="C",
              help="Cosine two frames of a burst reach at least (default: the model's measured one, if any).")
def duplicates(folders, db_path, model_dir, kinds, as_json, keyword, dry_run, burst_cosine):
    """Photos you have twice: exact copies, the same picture in another file, bursts. Never deletes."""
    with handle_errors():
        from clipsearch.health.report import duplicate_report, group_json, tag_duplicates

        report = duplicate_report(db_path, model_dir, kinds or ("exact", "same", "burst"), folders, burst_cosine)
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        for group in report.groups:
            if as_json:
                click.echo(json.dumps(group_json(report, group)))
                continue
            click.echo(f"{group.kind}: {len(group.members)} photos")
            for member in group.members:
                detail, evidence = report.details[member], group.evidence.get(member, {})
                size = f"{detail['width']}x{detail['height']}" if detail["width"] else "?"
                click.echo(f"  {'best' if evidence.get('best') else '    '}  {os.fsdecode(detail['path'])}  {size}"
                           + (f"  {describe(evidence)}" if not evidence.get("best") else ""))
        photos = sum(len(g.members) for g in report.groups)
        click.echo(f"{len(report.groups)} groups, {photos} photos, {photos - len(report.groups)} beside a best copy",
                   err=True)
        if keyword:
            done = tag_duplicates(report, keyword, db_path, dry_run, warn)
            click.echo(f"tag: {done.photos} photos, {done.written} sidecars {'to write' if dry_run else 'written'}, "
                       f"{done.unchanged} already so, {done.failed} failed", err=True)


def describe(evidence: dict) -> str:
    if evidence.get("identical_bytes"):
        return "identical bytes"
    if "print_difference" in evidence:
        turned = "" if evidence["turned"] == "no" else f", turned {evidence['turned']}"
        return f"print {evidence['print_difference']:.0%} different{turned}"
    return f"cosine {evidence['cosine']:.3f}, {evidence['seconds_apart']:g} s apart"
