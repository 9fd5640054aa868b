"""`clipsearch models list | pull | remove` and `clipsearch check-model`: the command line over
`model/pull.py`, `model/catalogue.py` and the model folder's own checks (one core call per
command; errors mapped to exit codes by `options.handle_errors`)."""
from __future__ import annotations

import json
import sys

import click

from .options import handle_errors, load_model, model_option, threads_option


@click.group()
def models():
    """Model folders: the catalogue, pulling one from the hub (no PyTorch), removing one."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_models(as_json):
    """The catalogue: name, source, download size, licence, installed here or not."""
    with handle_errors():
        from clipsearch.model.catalogue import catalogue_rows

        for row in catalogue_rows():
            if as_json:
                click.echo(json.dumps(row))
                continue
            size = f"{row['download_mb']} MB" if row["download_mb"] else "size not pinned"
            size += ", pinned" if row["pinned"] else ", NOT pinned" if row["layout"] else ""
            flags = ", ".join(f for f, on in (("default", row["default"]), ("installed", row["installed"]),
                                              (f"text only, for {row['pairs_with']}", row["pairs_with"])) if on)
            click.echo(f"{row['name']:20} {row['source']:50} {size:16} {row['licence'] or '-'}"
                       + (f"  [{flags}]" if flags else ""))


@models.command()
@click.argument("name", required=False)
@click.option("--repo", metavar="OWNER/NAME", help="Any hub repo in a supported layout (transformers.js, immich).")
@click.option("--revision", metavar="REV", help="With --repo: branch, tag or commit (default main).")
@click.option("--layout", type=click.Choice(["transformers.js", "immich"]), help="With --repo: skip layout detection.")
def pull(name, repo, revision, layout):
    """Download a model's published ONNX towers, quantize them to int8 here and verify them:
    NAME from `clipsearch models list` (default: the catalogue's default), or --repo."""
    with handle_errors():
        from clipsearch.errors import UsageError
        from clipsearch.model import pull as pulling
        from clipsearch.model.catalogue import catalogue_sources, repo_source

        if repo:
            sources = [repo_source(repo, revision, layout, name)]
        elif revision or layout:
            raise UsageError("--revision and --layout go with --repo; catalogue entries pin their own")
        else:
            sources = catalogue_sources(name)
        first = sources[0]
        click.echo(f"pulling {first.name} from {first.repo}@{first.revision} ({first.layout.name} layout)", err=True)
        summary = pulling.pull(sources, progress=DownloadProgress() if sys.stderr.isatty() else None,
                               log=lambda message: click.echo(f"note: {message}", err=True))
        fidelity = summary["fidelity"]
        images = f"{fidelity['vision']['int8_vs_fp32_onnx']['min']} (images), " if "vision" in fidelity else ""
        click.echo(f"installed {first.name} at {summary['folder']} from {summary['repo']} in {summary['seconds']} s: "
                   f"int8 vs fp32 cosine min {images}{fidelity['text']['int8_vs_fp32_onnx']['min']} (texts)"
                   + (f"; known answers kept (worst deviation {summary['known_worst']:.4f})"
                      if summary.get("known_worst") is not None else ""), err=True)
        if summary.get("pairs_with"):
            click.echo(f"search photos indexed with {summary['pairs_with']} in any language: clipsearch query "
                       f"--text-model {first.name} TEXT (or CLIPSEARCH_TEXT_MODEL={first.name})", err=True)


@models.command()
@click.argument("name")
def remove(name):
    """Delete an installed model folder."""
    with handle_errors():
        from clipsearch.model.pull import remove as remove_model

        click.echo(f"removed {remove_model(name)}", err=True)


class DownloadProgress:
    """One updating line per file on a terminal."""

    def __init__(self):
        self.current = None

    def __call__(self, path: str, have: int, total: int | None) -> None:
        of = f" / {total / 1e6:.1f}" if total else ""
        end = "\n" if total and have >= total else ""
        click.echo(f"\r{path}: {have / 1e6:.1f}{of} MB\033[K{end}", err=True, nl=False)


@click.command("check-model")
@model_option
@threads_option
def check_model(model_dir, threads):
    """Verify the model folder: file sizes and hashes, and that both graphs reproduce the
    reference embeddings recorded at export time."""
    with handle_errors():
        from clipsearch.model.encoders import check_reference
        from clipsearch.model.manifest import load_text_model

        manifest = load_text_model(model_dir)  # a whole model, or a text-only one
        for tower in [t for t in ("text", "vision") if t in manifest.data["graphs"]]:
            diff = check_reference(manifest, tower, threads)
            click.echo(f"{tower}: ok (max diff {diff:.1e} from the export)")
        answers = manifest.data.get("known_answers")
        if answers:
            from clipsearch.model.known_answers import check

            measured = check(manifest, answers, threads, then="re-pull the model (`clipsearch models pull`)")
            worst = max(measured, key=lambda answer: answer["deviation"])
            click.echo(f"known answers: ok ({len(measured)} pictures; worst deviation {worst['deviation']:.4f} on "
                       f"{worst['picture']})")
        click.echo(f"model {manifest.name} ({manifest.model_id}) at {manifest.folder}: ok")
        if manifest.untrained:
            click.echo(f"note: {manifest.untrained}")
