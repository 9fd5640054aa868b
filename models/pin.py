"""Pin a catalogue entry's pull sources: resolve its revision to the commit the hub serves,
download each file once through clipsearch's own downloader, and record the commit and every
file's size and sha256 in the catalogue (`clipsearch/model/catalogue.json`, or
`CLIPSEARCH_CATALOGUE`). Run by a maintainer on a machine that reaches the hub; after it,
every user's `clipsearch models pull NAME` verifies those bytes before using them.

    python models/pin.py NAME [NAME ...]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clipsearch.config import catalogue_path  # noqa: E402
from clipsearch.model.hub import fetch  # noqa: E402
from clipsearch.model.layouts import LAYOUTS  # noqa: E402


def pin(catalogue: dict, name: str) -> None:
    """Every source of the entry (one, or a list of sources of the same weights)."""
    pulls = catalogue["models"][name]["pull"]
    for source in pulls if isinstance(pulls, list) else [pulls]:
        pin_source(name, source)


def pin_source(name: str, source: dict) -> None:
    files, commit = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for path in LAYOUTS[source["layout"]].files.values():
            got = fetch(source["repo"], commit or source["revision"], path, Path(tmp) / "file")
            commit = commit or got.commit  # every later file comes from the very same commit
            files[path] = {"size": got.size, "sha256": got.sha256}
            print(f"{name}: {path} {got.size} bytes sha256 {got.sha256}", file=sys.stderr)
    if commit is None:
        sys.exit(f"{source['repo']}: the hub did not say which commit it served (no X-Repo-Commit); not pinned")
    source["revision"], source["files"] = commit, files


def main(names: list[str]) -> None:
    path = catalogue_path()
    catalogue = json.loads(path.read_text(encoding="utf-8"))
    for name in names:
        pin(catalogue, name)
    path.write_text(json.dumps(catalogue, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"pinned {', '.join(names)} in {path}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
