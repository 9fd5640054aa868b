"""`clipsearch status` (what the cache holds) and `status --failed` (what it could not index),
as text or JSON (core: `index/status.py`)."""
from __future__ import annotations

import json

import click

from clipsearch.errors import UsageError

from .index import run_counts
from .options import db_option, handle_errors, model_option


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@db_option
@model_option
@click.option("--failed", "list_failed", is_flag=True,
              help="List the files that could not be indexed (under PATHS if given), with the reason.")
@click.option("--damaged", "list_damaged", is_flag=True,
              help="List the photos indexed from the part of them that decodes (under PATHS if given), and what is "
                   "missing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (with --failed: one object per line).")
def status(paths, db_path, model_dir, list_failed, list_damaged, as_json):
    """Library folders, counts, model and database of the cache."""
    with handle_errors():
        from clipsearch.index.status import failed_report, status_report

        if list_damaged:
            from clipsearch.index.status import damaged_report

            damaged = damaged_report(db_path, list(paths))
            for row in damaged:
                click.echo(json.dumps(row) if as_json else f"{row['path']}: {row['damage']}")
            if not as_json:
                click.echo(f"{len(damaged)} damaged photo{'s' if len(damaged) != 1 else ''}"
                           + ("; they are indexed from what is there (restore them from a backup if you have one)"
                              if damaged else ""), err=True)
            return
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
            raise UsageError("folders go with --failed or --damaged; `clipsearch status` describes the whole cache")
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
