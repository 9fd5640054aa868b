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
    try:
        return name, catalogue["models"][name]
    except KeyError:
        known = ", ".join(sorted(catalogue["models"]))
        raise ExportError(f"unknown model {name!r}; known models: {known}") from None
