"""The model catalogue (`clipsearch/model/catalogue.json`, shared with `clipsearch models pull`):
which checkpoints clipsearch knows."""
from __future__ import annotations

import json
from pathlib import Path

from clipsearch.config import catalogue_path

from .errors import ExportError

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB_PATH = REPO_ROOT / "models" / "vocab" / "bpe_simple_vocab_16e6.txt.gz"


def load_catalogue() -> dict:
    with open(catalogue_path(), encoding="utf-8") as f:
        return json.load(f)


def catalogue_entry(name: str | None) -> tuple[str, dict]:
    catalogue = load_catalogue()
    name = name or catalogue["default"]
    # Text-only entries (`multilingual`) are pulled, never exported: they have no image tower.
    models = {n: e for n, e in catalogue["models"].items() if e.get("kind", "clip") == "clip"}
    try:
        return name, models[name]
    except KeyError:
        known = ", ".join(sorted(models))
        raise ExportError(f"unknown model {name!r}; known models: {known}") from None
