"""The catalogue of models to pull (`catalogue.json`, or `CLIPSEARCH_CATALOGUE`): each entry's
sources, tried in order, with what is known of their bytes, and the answers the model must
give on pictures whose published answers exist (`known_answers.py`).

A source pins its revision and, per file, the size and sha256 published for it (Git LFS
pointers, public manifests), checked before a byte is used (`hub.fetch`). A small config file
with no published hash is accepted only when what it says (image size, shortest side, mean,
std, embedding size) equals what the entry records (`check_config_values`): the bytes of a
JSON file may differ in spacing, the values may not. One entry can have several sources of
the same weights (the default model is served by Xenova's transformers.js export and by
Immich's): the next is tried when one is unreachable, missing a file or fails a check. Their
int8 graphs differ slightly, so each gives its own model id.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from clipsearch.config import catalogue_path, models_dir
from clipsearch.errors import DownloadError, UsageError

from .layouts import LAYOUTS, Layout
from .text_layouts import TEXT_LAYOUTS

VALUE_TOLERANCE = 1e-6  # mean and std written with 8 digits by one tool, 17 by another


@dataclass(frozen=True)
class Source:
    name: str
    repo: str
    revision: str
    layout: Layout
    files: dict  # path in the repo -> {"size", "sha256"} (size may be absent), or None where nothing is pinned
    licence: str = "see the repo"
    expected: dict = field(default_factory=dict)  # the entry's preprocess + embedding_dim: unpinned configs must say so
    known_answers: list = field(default_factory=list)  # `known_answers.py`
    kind: str = "clip"  # or "text": a text tower searching photos another model's image tower embedded
    image_tower: str | None = None  # the image weights' id (a text tower: the one it pairs with)
    pairs_with: str | None = None  # a text tower: the catalogue name of the model whose image tower it matches

    @property
    def pinned(self) -> bool:
        """Every graph and the tokenizer pinned by sha256; the other files pinned or checked by value."""
        big = [role for role in ("vision", "text", "tokenizer") if role in self.layout.files]
        return all((self.files.get(self.layout.files[role]) or {}).get("sha256") for role in big) and (
            all(self.files.get(path) for path in self.layout.files.values()) or bool(self.expected))


def load_catalogue() -> dict:
    path = catalogue_path()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the model catalogue ({exc})") from None


def _pulls(entry: dict) -> list[dict]:
    pull = entry.get("pull")
    return [] if pull is None else pull if isinstance(pull, list) else [pull]


def catalogue_sources(name: str | None) -> list[Source]:
    """The sources of a catalogue entry (default: the catalogue's default), in the order to try."""
    catalogue = load_catalogue()
    name = name or catalogue["default"]
    entry = catalogue["models"].get(name)
    if entry is None or not _pulls(entry):
        pullable = ", ".join(sorted(n for n, e in catalogue["models"].items() if _pulls(e)))
        why = "unknown model" if entry is None else "no published ONNX source for"
        raise UsageError(f"{why} {name!r}; models to pull: {pullable}, or any hub repo in a supported layout "
                         "with --repo OWNER/NAME")
    expected = {}
    if entry.get("preprocess") and entry.get("embedding_dim"):
        expected = dict(entry["preprocess"], embedding_dim=entry["embedding_dim"])
    kind, pairs_with = entry.get("kind", "clip"), entry.get("pairs_with")
    if kind == "text":
        image_model = catalogue["models"].get(pairs_with) or {}
        image_tower = entry.get("image_tower") or image_model.get("image_tower") or image_model.get("hub_id")
        expected = {"embedding_dim": image_model.get("embedding_dim") or entry.get("embedding_dim")}
    else:
        image_tower = entry.get("image_tower") or entry.get("hub_id")
    layouts = TEXT_LAYOUTS if kind == "text" else LAYOUTS
    return [Source(name, pull["repo"], pull["revision"], layouts[pull["layout"]], pull.get("files") or {},
                   entry.get("licence", "see the repo"), expected, entry.get("known_answers") or [], kind,
                   image_tower, pairs_with)
            for pull in _pulls(entry)]


def repo_source(repo: str, revision: str | None, layout: str | None, name: str | None) -> Source:
    """A hub repo outside the catalogue: nothing pinned; the layout is found by its config file."""
    if repo.count("/") != 1:
        raise UsageError(f"--repo {repo!r}: expected OWNER/NAME, as on the hub")
    revision = revision or "main"
    name = name or repo.split("/")[1].lower()
    if layout is None:
        import tempfile
        from pathlib import Path

        from .hub import fetch

        with tempfile.TemporaryDirectory() as probe:
            for candidate in LAYOUTS.values():
                try:
                    fetch(repo, revision, candidate.files["preprocess"], Path(probe) / "config.json")
                except DownloadError as exc:
                    if "(404)" not in str(exc):
                        raise
                    continue
                layout = candidate.name
                break
            else:
                looked = ", ".join(f"{l.files['preprocess']} ({l.name})" for l in LAYOUTS.values())
                raise DownloadError(f"{repo}@{revision}: no supported layout found (looked for {looked})")
    return Source(name, repo, revision, LAYOUTS[layout], {})


def catalogue_rows() -> list[dict]:
    """`models list`: every catalogue entry, how to get it, and whether it is installed here."""
    catalogue = load_catalogue()
    rows = []
    for name, entry in catalogue["models"].items():
        pulls = _pulls(entry)
        sources = catalogue_sources(name) if pulls else []
        first = pulls[0] if pulls else None
        sizes = [f.get("size") for f in (first or {}).get("files", {}).values() if f]
        graphs = [(first or {}).get("files", {}).get(sources[0].layout.files[role]) for role in ("vision", "text")
                  if role in sources[0].layout.files] if sources else []
        rows.append({
            "name": name, "default": name == catalogue["default"],
            "source": f"{first['repo']}@{first['revision'][:12]}" if first else f"{entry['hub_id']} (python -m export only)",
            "fallback_sources": [f"{p['repo']}@{p['revision'][:12]}" for p in pulls[1:]],
            "layout": first["layout"] if first else None,
            # What is known of the download: every published size (small configs may have none).
            "download_mb": round(sum(s for s in sizes if s) / 1e6) if graphs and all(g and g.get("size") for g in graphs)
            else None,
            "pinned": bool(sources) and all(source.pinned for source in sources),
            "known_answers": len(entry.get("known_answers") or []),
            "licence": entry.get("licence"), "installed": (models_dir() / name / "manifest.json").is_file(),
            "pairs_with": entry.get("pairs_with")})
    for folder in installed_models():
        if folder.name not in catalogue["models"]:
            try:
                source = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("source") or {}
            except (OSError, ValueError):
                source = {}
            made = f"{source['repo']}@{str(source.get('revision'))[:12]}" if source.get("repo") else "exported here"
            rows.append({"name": folder.name, "default": False, "source": f"{made} (not in the catalogue)",
                         "fallback_sources": [], "layout": source.get("layout"), "download_mb": None, "pinned": False,
                         "known_answers": 0, "licence": None, "installed": True, "pairs_with": None})
    return rows


def installed_models() -> list:
    """The model folders in the data dir's models folder, by name."""
    base = models_dir()
    return sorted(p for p in base.iterdir() if (p / "manifest.json").is_file()) if base.is_dir() else []


def check_config_values(source: Source, image: dict, dim: int) -> None:
    """An unpinned config file is accepted only when its values are the catalogue's."""
    expected = source.expected
    unpinned = [path for role, path in source.layout.files.items()
                if role in ("preprocess", "config") and not source.files.get(path)]
    if not expected or not unpinned:
        return
    said = {"image_size": image["size"], "shortest_side": image.get("shortest_side", image["size"]),
            "mean": image["mean"], "std": image["std"], "embedding_dim": dim}
    wanted = dict(expected, shortest_side=expected.get("shortest_side", expected.get("image_size")))
    for key, value in said.items():
        want = wanted.get(key)
        if want is None:
            continue
        same = (all(abs(a - b) <= VALUE_TOLERANCE for a, b in zip(value, want)) and len(value) == len(want)
                if isinstance(want, list) else value == want)
        if not same:
            raise DownloadError(f"{source.repo}@{source.revision[:12]}: {' or '.join(unpinned)} says {key} {value}, "
                                f"the catalogue records {want} for {source.name}; altered on the hub or in transit; "
                                "nothing was installed")
