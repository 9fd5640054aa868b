"""`clipsearch models pull` of a text-only model (`multilingual`): download a published text
tower trained to match another model's image tower (`text_layouts.py`), make it one fp32 graph,
quantize it to int8 with the project's settings, measure int8 against fp32 on the probe
texts, and write a model folder holding only the text tower and a `pairs_with` naming the
image tower it searches. The photos keep the vectors they have: nothing is embedded again.

Quantizing holds the fp32 graph and its int8 copy in memory at once (measured peaks are in
docs/models.md "Multilingual search"); before it starts, a machine with too little memory
available is told so in one line instead of being pushed into swap or the OOM killer.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from clipsearch.errors import ModelError

from . import build as modelbuild
from .catalogue import Source
from .layouts import UnsupportedSource
from .text_layouts import (
    TEXT_OUTPUT,
    external_data_files,
    immich_mclip_spec,
    prepare_tokenizer,
    sentence_transformers_graph,
)

# Peak memory of a pull, as a multiple of the fp32 graph's size: onnxruntime's quantizer holds
# the graph, a shape-inferred copy and the int8 result. Measured in
# docs/models.md "Multilingual search": 5.0x for the 541 MB multilingual tower, 3.8x for the
# 2.2 GB one, whose weights stay in external data; with a margin.
QUANTIZE_MEMORY_FACTOR = 5.3
QUANTIZE_MEMORY_FACTOR_EXTERNAL = 4.0


def pull_text_tower(source: Source, out: Path, downloads: Path, progress, log) -> dict:
    """Download, build, quantize and verify the text tower of `source` into `out`."""
    from .hub import fetch

    started = time.perf_counter()
    layout = source.layout
    fetched = {}
    for role, path in layout.files.items():
        fetched[role] = _fetch(fetch, source, path, downloads, progress)
    try:
        extra = external_data_files(fetched["text"].path, f"{source.repo}: {layout.files['text']}")
    except UnsupportedSource as exc:
        raise ModelError(f"{exc}; nothing was installed") from None
    folder = repo_folder_of(layout.files["text"])
    data_files = [_fetch(fetch, source, f"{folder}{name}", downloads, progress) for name in extra]
    commit = next((f.commit for f in fetched.values() if f.commit), None)
    work = modelbuild.work_dir(out)
    with modelbuild.installing(work):
        data = build_fp32(source, {role: f.path for role, f in fetched.items()},
                          {name: f.path for name, f in zip(extra, data_files)}, work, move=True)
        data["source"]["commit"] = commit
        fp32 = work / "text.fp32.onnx"
        fp32_size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file() and p.name != "tokenizer.json")
        check_memory(fp32_size, source, external=fp32_size > 1_800_000_000)
        log("quantizing the text tower to int8")
        quantize_started = time.perf_counter()
        int8 = work / "text.int8.onnx"
        quant = modelbuild.quantize(fp32, int8, external_data=fp32_size > 1_800_000_000)
        quantize_seconds = time.perf_counter() - quantize_started
        data["quantization"] = quant
        manifest = modelbuild.finish_folder(work, data, {"text": int8})
        log("measuring int8 against fp32 on the probe texts")
        fidelity = modelbuild.text_fidelity(manifest, fp32)
        problems = modelbuild.failures(fidelity)
        if problems:
            raise ModelError(f"{source.repo}: int8 graph too far from fp32 ({'; '.join(problems)}); nothing was installed")
        fidelity["sizes_mb"] = {"text_download_mb": round(sum(f.size for f in [fetched["text"], *data_files]) / 1e6, 1),
                                "text_int8": round(sum(p.stat().st_size for p in work.glob("text.onnx*")) / 1e6, 1)}
        fidelity["quantize_seconds"] = round(quantize_seconds, 1)
        data = dict(manifest.data, fidelity=fidelity)
        for key in ("files", "model_id", "reference"):
            data.pop(key)
        for path in work.iterdir():
            if path.name not in ("text.onnx", "text.onnx.data", "tokenizer.json", "manifest.json"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        manifest = modelbuild.finish_folder(work, data, {})
        modelbuild.replace_dir(work, out)
    shutil.rmtree(downloads.parent, ignore_errors=True)
    return {"folder": str(out), "model_id": manifest.model_id, "seconds": round(time.perf_counter() - started, 1),
            "fidelity": data["fidelity"], "known_worst": None, "pairs_with": source.pairs_with}


def build_fp32(source: Source, files: dict[str, Path], data_files: dict[str, Path], work: Path,
               move: bool = False) -> dict:
    """From the downloaded `files` (role -> path) and the graph's external `data_files`: the
    fp32 text graph `work/text.fp32.onnx` (pooling and projection folded in where the layout
    keeps them apart), `work/tokenizer.json`, and the manifest's data (without its files).
    `move`: the graph and its data files are moved, not copied (a 2.2 GB download). Never
    hard-linked: onnx refuses external data with more than one link (a hard-link attack)."""
    from .pull import _graph_inputs, _versions

    def place(path: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target) if move else shutil.copyfile(path, target)

    layout = source.layout
    fp32 = work / "text.fp32.onnx"
    if layout.name == "sentence-transformers":
        text, dim = sentence_transformers_graph(files, source.repo, fp32)
        graph = {"input": layout.input, "output": TEXT_OUTPUT}
    else:
        text, dim = immich_mclip_spec(files, source.repo, _graph_inputs(files["text"]))
        # The external data files keep their names beside the graph: it finds them by those.
        place(files["text"], fp32)
        for name, path in data_files.items():
            place(path, work / name)
        graph = {"input": layout.input, "output": layout.output}
    expected = source.expected.get("embedding_dim")
    if expected and dim != expected:
        raise UnsupportedSource(f"{source.repo}: embeddings of {dim} values; {source.pairs_with} makes {expected}")
    prepare_tokenizer(files["tokenizer"], work / "tokenizer.json", text)
    mask, fixed = text.pop("mask_input", None), text.pop("fixed_length", None)
    graph.update(file="text.onnx", input_shape=["batch", f"tokens<={text['context_length']}"])
    if layout.input_dtype == "int32":
        graph["input_dtype"] = "int32"
    if fixed:
        graph["fixed_length"] = fixed
    if mask:
        graph["mask_input"] = mask
    from .manifest import FORMAT_VERSION

    return {"format_version": FORMAT_VERSION, "kind": "text", "name": source.name,
            "pairs_with": {"image_tower": source.image_tower, "model": source.pairs_with},
            "source": {"kind": "hub", "repo": source.repo, "revision": source.revision, "commit": None,
                       "layout": layout.name, "pinned": source.pinned},
            "embedding_dim": dim, "text": text, "graphs": {"text": graph}, "precision": "int8", "pull": _versions()}


def repo_folder_of(path: str) -> str:
    """"textual/model.onnx" -> "textual/"; "model.onnx" -> ""."""
    return path.rpartition("/")[0] + "/" if "/" in path else ""


def _fetch(fetch, source: Source, path: str, downloads: Path, progress):
    target = downloads / path
    target.parent.mkdir(parents=True, exist_ok=True)
    report = (lambda have, total: progress(path, have, total)) if progress else None
    return fetch(source.repo, source.revision, path, target, source.files.get(path), report)


def check_memory(fp32_bytes: int, source: Source, external: bool) -> None:
    """Refuse, before quantizing, on a machine that has too little memory available for it."""
    need = fp32_bytes * (QUANTIZE_MEMORY_FACTOR_EXTERNAL if external else QUANTIZE_MEMORY_FACTOR)
    available = available_memory()
    if available is not None and available < need:
        raise ModelError(
            f"{source.repo}: quantizing its {fp32_bytes / 1e9:.1f} GB text tower needs about {need / 1e9:.1f} GB of "
            f"memory, {available / 1e9:.1f} GB is available; pull it on a machine with more memory and copy the "
            f"folder into {out_hint()}, or pull the smaller one (`clipsearch models pull multilingual`)")


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), or None where it cannot be read;
    `CLIPSEARCH_MEMORY_AVAILABLE` (bytes) overrides it, for a test to play a 4 GB NAS."""
    forced = os.environ.get("CLIPSEARCH_MEMORY_AVAILABLE")
    if forced:
        return int(forced)
    from clipsearch.config import available_memory_mb

    megabytes = available_memory_mb()
    return None if megabytes is None else megabytes << 20


def out_hint() -> str:
    from clipsearch.config import models_dir

    return str(models_dir())
