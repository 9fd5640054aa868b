"""One entry point for `duplicates` whatever asks (the command line, the page): the cache and
model opened as `query` opens them, the groups found (`duplicates.py`), and each group as
JSON; and `--tag`, the non-best members handed to the tag machinery."""
from __future__ import annotations

from pathlib import Path

from clipsearch.errors import UsageError

from .duplicates import KINDS, Report, find_duplicates


def duplicate_report(db_path: Path, model_dir: Path, kinds=KINDS, folders=(), burst_cosine: float | None = None) -> Report:
    """The groups of the whole library (`cache/library.py`), members by global id: a copy on
    one disk of a photo on another is grouped with it, as within one database."""
    from clipsearch.cache.library import Library
    from clipsearch.model.manifest import load_manifest
    from clipsearch.photos.walk import normalise_root

    manifest = load_manifest(model_dir)
    if burst_cosine is None:
        burst_cosine = manifest.data.get("burst_cosine")
    for folder in folders:
        if not Path(folder).is_dir():
            raise UsageError(f"{folder}: not a folder; duplicates takes library folders to look in")
    library = Library(db_path)
    try:
        library.check_model(manifest.model_id, manifest.name)
        found = find_duplicates(library, kinds, [normalise_root(f) for f in folders] or None, burst_cosine)
        found.notes[:0] = library.absent_notes()
        return found
    finally:
        library.close()


def group_json(report: Report, group) -> dict:
    """A group as `duplicates --json` prints it and the page shows it."""
    from clipsearch.search.answer import json_path

    members = []
    for member in group.members:
        detail = report.details[member]
        members.append({"id": member, **json_path(detail["path"]), "size": detail["size"],
                        "width": detail["width"], "height": detail["height"], "taken_at": detail["taken_at"],
                        "camera": " ".join(filter(None, (detail["make"], detail["model"]))) or None,
                        **group.evidence.get(member, {})})
    return {"kind": group.kind, "members": members}


def tag_duplicates(report: Report, keyword: str, db_path: Path, dry_run: bool, warn):
    """`--tag KEYWORD` (or PARENT/KEYWORD): the keyword on every member but the best copy."""
    from clipsearch.tag.keywords import DEFAULT_PARENT, TagOptions, apply_keywords, check_keyword

    parent, _, name = keyword.rpartition("/")
    check_keyword(name)
    chosen = {report.details[m]["path"]: [name] for group in report.groups for m in group.members[1:]}
    return apply_keywords(chosen, db_path, TagOptions(parent=parent or DEFAULT_PARENT, dry_run=dry_run), warn)
