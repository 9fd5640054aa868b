"""The model folder: reading and validating `manifest.json`, and checking that the files it
lists are the ones that were exported (size always; sha256 once per file version, remembered
in a small stamp so a query does not hash 70 MB on every start)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from clipsearch.errors import ModelError

FORMAT_VERSION = 1
EXPORT_HINT = ("get one with `clipsearch models pull` (no PyTorch needed; see docs/models.md), or make one with "
               "`python -m export` on a machine with PyTorch and copy it here, or point --model / CLIPSEARCH_MODEL at one")


@dataclass(frozen=True)
class Manifest:
    folder: Path
    data: dict

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def model_id(self) -> str:
        """Identity of the exported weights: vectors made by one model_id never mix with another's."""
        return self.data["model_id"]

    @property
    def untrained(self) -> str | None:
        """A warning when the weights are random (`python -m export --random-weights`): such
        a folder works like a real one, and nothing else would tell the scores are noise."""
        if self.data.get("source", {}).get("kind") == "random":
            return f"model {self.name} is untrained (random weights): rankings are meaningless"
        return None

    @property
    def kind(self) -> str:
        """"clip": both towers; "text": a text tower trained to match another model's image
        tower (`pairs_with`), used with `--text-model` over a cache that model indexed."""
        return self.data.get("kind", "clip")

    @property
    def image_tower(self) -> str:
        """What made (or must have made) the photos' vectors: the image weights' hub id
        (`openai/clip-vit-base-patch32` for both published exports of the default), else the
        model id. A text tower names the image tower it pairs with."""
        if self.kind == "text":
            return self.data["pairs_with"]["image_tower"]
        return self.data.get("image_tower") or self.model_id

    @property
    def embedding_dim(self) -> int:
        return int(self.data["embedding_dim"])

    @property
    def image(self) -> dict:
        return self.data["image"]

    @property
    def text(self) -> dict:
        return self.data["text"]

    def graph(self, tower: str) -> dict:
        return self.data["graphs"][tower]

    def graph_path(self, tower: str, verify: bool = True) -> Path:
        """The tower's .onnx file, checked together with its external weights file if any."""
        graph = self.graph(tower)
        if graph.get("external_data"):
            self.path(graph["external_data"], verify)
        return self.path(graph["file"], verify)

    def path(self, filename: str, verify: bool = True) -> Path:
        path = self.folder / filename
        if verify:
            verify_file(path, self.data["files"][filename])
        return path


REQUIRED_KEYS = ("format_version", "name", "model_id", "embedding_dim", "image", "text", "graphs", "files")
REQUIRED_TEXT_KEYS = ("format_version", "name", "model_id", "embedding_dim", "text", "graphs", "files", "pairs_with")


def load_text_model(folder: Path) -> Manifest:
    """A folder whose text tower a query may use: a text-only model, or a whole one."""
    return load_manifest(folder, text_only=True)


def load_manifest(folder: Path, text_only: bool = False) -> Manifest:
    """A whole model's folder (both towers); with `text_only`, a text-only one is accepted too."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        others = sorted(p.name for p in folder.parent.glob("*") if (p / "manifest.json").is_file()) \
            if folder.parent.is_dir() else []
        if others:
            raise ModelError(f"{folder}: no model there; installed in {folder.parent}: {', '.join(others)}: choose one "
                             "with --model or CLIPSEARCH_MODEL, or `clipsearch models pull` the default")
        raise ModelError(f"{manifest_path}: no model manifest here; {EXPORT_HINT}")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{manifest_path}: unreadable manifest ({exc}); re-export the model: {EXPORT_HINT}") from None
    text_kind = isinstance(data, dict) and data.get("kind") == "text"
    if not isinstance(data, dict) or any(key not in data for key in (REQUIRED_TEXT_KEYS if text_kind else REQUIRED_KEYS)):
        raise ModelError(f"{manifest_path}: manifest is incomplete; re-export the model: {EXPORT_HINT}")
    if text_kind and not text_only:
        pairs = data["pairs_with"].get("model") or data["pairs_with"]["image_tower"]
        raise ModelError(f"{folder}: {data['name']} is a text-only model (it searches photos indexed with {pairs}): "
                         f"give it as --text-model {data['name']}, and a whole model such as {pairs} as --model")
    version = data["format_version"]
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{manifest_path}: manifest format version {version} is not supported by this clipsearch "
            f"(expects {FORMAT_VERSION}); upgrade clipsearch or re-export the model with this version"
        )
    return Manifest(folder=folder, data=data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path, names: list[str]) -> tuple[dict, str]:
    """The manifest's `files` section for `names` in `folder`, and the model_id derived from it
    (a hash of the file hashes: same bytes, same id)."""
    files = {name: {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)} for name in names}
    joined = "".join(f"{name}:{files[name]['sha256']};" for name in sorted(files))
    return files, hashlib.sha256(joined.encode()).hexdigest()[:32]


def verify_file(path: Path, expected: dict) -> None:
    """Raise ModelError unless `path` has the exported size and sha256."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file is missing; re-copy the model folder or {EXPORT_HINT}") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror})") from None
    if st.st_size != expected["size"]:
        raise ModelError(
            f"{path}: model file has {st.st_size} bytes, the manifest says {expected['size']}; "
            f"it is damaged or from another export: re-copy the model folder or {EXPORT_HINT}"
        )
    stamp = _stamp_path(path, st, expected["sha256"])
    if stamp is not None and stamp.exists():
        return
    actual = sha256_file(path)
    if actual != expected["sha256"]:
        raise ModelError(
            f"{path}: model file sha256 does not match the manifest; it is damaged or altered: "
            f"re-copy the model folder or {EXPORT_HINT}"
        )
    if stamp is not None:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
        except OSError:
            pass  # a read-only home only costs re-hashing next time


def _stamp_path(path: Path, st: os.stat_result, sha256: str) -> Path | None:
    # Any rewrite of the file changes mtime_ns or inode, so a stale stamp cannot vouch for it.
    from clipsearch.config import home

    key = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{sha256}"
    return home() / "verified" / hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
