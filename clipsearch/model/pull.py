"""`clipsearch models pull` and `remove`: pulling a model without PyTorch: download a
source's published fp32 ONNX towers (`hub.py`; the sources and their pins are
`catalogue.py`'s), quantize them here with the export's own settings, measure int8 against
fp32 on the probe set, embed the known answers (`known_answers.py`), and write a model folder
exactly like `python -m export`'s (`build.py`), into place only once it is complete.

Quantizing needs the `onnx` package (`pip install 'clipsearch[models]'`); nothing here is
imported by `index` or `query`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from clipsearch.config import models_dir
from clipsearch.errors import ClipsearchError, ModelError, UsageError

from .catalogue import Source, check_config_values
from .layouts import (
    UnsupportedSource,
    image_spec_from_open_clip,
    image_spec_from_processor,
    prepare_tokenizer,
    text_spec,
)

NO_ONNX = ("quantizing a pulled model needs the onnx package: pip install 'clipsearch[models]' "
           "(no PyTorch needed)")


def pull(sources: "list[Source] | Source", out: Path | None = None,
         progress: Callable[[str, int, int | None], None] | None = None,
         log: Callable[[str], None] = lambda message: None) -> dict:
    """Install the first of `sources` (the same weights, in order) that downloads, verifies,
    quantizes and gives the known answers, as models/<name>; returns a summary. When every
    one fails, the error says why for each."""
    try:
        import onnx  # noqa: F401 - needed by onnxruntime.quantization
    except ImportError:
        raise ClipsearchError(NO_ONNX) from None
    sources = sources if isinstance(sources, list) else [sources]
    try:
        return _pull_sources(sources, out, progress, log)
    except BaseException as exc:
        from .hub import DownloadInterrupted

        if not isinstance(exc, (DownloadInterrupted, KeyboardInterrupt)):
            # Nothing to resume: no hidden download folder is left behind.
            out_dir = (out or models_dir() / sources[0].name).expanduser().resolve()
            shutil.rmtree(out_dir.parent / f".{out_dir.name}.download", ignore_errors=True)
        raise


def _pull_sources(sources: list[Source], out, progress, log) -> dict:
    from .hub import DownloadInterrupted

    failures: list[ClipsearchError] = []
    for i, source in enumerate(sources):
        if i:
            log(f"trying {source.repo}@{source.revision[:12]} ({source.layout.name} layout), another source of "
                f"the same weights")
        try:
            return dict(_pull_one(source, out, progress, log), repo=source.repo)
        except UsageError:
            raise
        except ClipsearchError as exc:
            if len(sources) == 1:
                raise
            log(str(exc))
            failures.append(exc)
    kind = DownloadInterrupted if any(isinstance(exc, DownloadInterrupted) for exc in failures) else type(failures[0])
    raise kind(f"no source of {sources[0].name} could be installed: " + "; then ".join(str(exc) for exc in failures))


def _pull_one(source: Source, out: Path | None, progress, log) -> dict:
    from . import build as modelbuild
    from .hub import fetch

    started = time.perf_counter()
    out = (out or models_dir() / source.name).expanduser().resolve()
    # Kept after an interruption, so the next pull resumes; one folder per source (both have a config.json).
    downloads = out.parent / f".{out.name}.download" / source.repo.replace("/", "--")
    if not source.pinned:
        log(f"{source.repo}@{source.revision}: no sha256 pinned for its files; trusting the hub's TLS, then "
            "checking int8 against fp32 here")
    if source.kind == "text":
        from .pull_text import pull_text_tower

        return pull_text_tower(source, out, downloads, progress, log)
    fetched = {}
    for role, path in source.layout.files.items():
        target = downloads / path
        target.parent.mkdir(parents=True, exist_ok=True)
        report = (lambda have, total, path=path: progress(path, have, total)) if progress else None
        fetched[role] = fetch(source.repo, source.revision, path, target, source.files.get(path), report)
    commit = next((f.commit for f in fetched.values() if f.commit), None)
    work = modelbuild.work_dir(out)
    with modelbuild.installing(work):
        data = _manifest_data(source, {role: f.path for role, f in fetched.items()}, work, commit)
        check_config_values(source, data["image"], data["embedding_dim"])
        fp32 = {"vision": work / "vision.fp32.onnx", "text": work / "text.fp32.onnx"}
        for tower, path in fp32.items():
            _link_or_copy(fetched[tower].path, path)
        log("quantizing to int8")
        int8 = {tower: work / f"{tower}.int8.onnx" for tower in fp32}
        quant = {tower: modelbuild.quantize(fp32[tower], int8[tower]) for tower in fp32}
        data["quantization"] = quant["vision"]
        manifest = modelbuild.finish_folder(work, data, int8)
        log("measuring int8 against fp32 on the probe set")
        from .manifest import Manifest, describe_files

        fp32_files, _ = describe_files(work, [p.name for p in fp32.values()])
        probe = Manifest(folder=work, data=dict(manifest.data, files=dict(manifest.data["files"], **fp32_files)))
        fidelity = modelbuild.int8_fidelity(probe, {tower: p.name for tower, p in fp32.items()})
        problems = modelbuild.failures(fidelity)
        if problems:
            raise ModelError(f"{source.repo}: int8 graphs too far from fp32 ({'; '.join(problems)}); nothing was installed")
        answers = None
        if source.known_answers:
            from . import known_answers

            log("embedding the known answers (pictures with the original model's published answers)")
            answers = known_answers.check(manifest, source.known_answers, then="nothing was installed")
        sizes = {f"{role}_download_mb": round(f.size / 1e6, 1) for role, f in fetched.items() if role in fp32}
        data = dict(manifest.data, fidelity=dict(fidelity, sizes_mb={
            **sizes, "vision_int8": round(os.path.getsize(int8["vision"]) / 1e6, 1),
            "text_int8": round(os.path.getsize(int8["text"]) / 1e6, 1)}))
        if answers:
            data["known_answers"] = answers
        for key in ("files", "model_id", "reference"):
            data.pop(key)
        manifest = modelbuild.finish_folder(work, data, {})
        for path in [*fp32.values(), *int8.values()]:
            path.unlink()
        modelbuild.replace_dir(work, out)
    shutil.rmtree(downloads.parent, ignore_errors=True)
    return {"folder": str(out), "model_id": manifest.model_id, "seconds": round(time.perf_counter() - started, 1),
            "fidelity": data["fidelity"],
            "known_worst": max((a["deviation"] for a in data.get("known_answers") or []), default=None)}


def remove(name: str) -> Path:
    folder = models_dir() / name
    if not (folder / "manifest.json").is_file():
        installed = sorted(p.name for p in models_dir().glob("*") if (p / "manifest.json").is_file()) if models_dir().is_dir() else []
        raise UsageError(f"no model {name!r} in {models_dir()}; installed: {', '.join(installed) or 'none'}")
    shutil.rmtree(folder)
    return folder


def _manifest_data(source: Source, files: dict[str, Path], work: Path, commit: str | None) -> dict:
    """The manifest of the pulled model, from the source's own config files and graphs."""
    from .manifest import FORMAT_VERSION

    layout = source.layout
    where = f"{source.repo}: {layout.files['preprocess']}"
    config = _read_json(files["config"], f"{source.repo}: {layout.files['config']}")
    preprocess = _read_json(files["preprocess"], where)
    vision_in, text_in = _graph_inputs(files["vision"]), _graph_inputs(files["text"])
    if layout.vision_io[0] not in vision_in or layout.text_io[0] not in text_in:
        raise UnsupportedSource(f"{source.repo}: the graphs' inputs are {sorted(vision_in)} and {sorted(text_in)}, "
                                f"not the {layout.name} layout's {layout.vision_io[0]!r} and {layout.text_io[0]!r}")
    size = vision_in[layout.vision_io[0]][-1]
    if layout.name == "immich":
        image = image_spec_from_open_clip(preprocess, where)
        dim = config.get("embed_dim")
    else:
        image = image_spec_from_processor(preprocess, where, size if isinstance(size, int) else None)
        dim = config.get("projection_dim")
    if isinstance(size, int) and size != image["size"]:
        raise UnsupportedSource(f"{where}: size {image['size']} but the vision graph takes {size}x{size}")
    if not isinstance(dim, int):
        raise UnsupportedSource(f"{source.repo}: {layout.files['config']} does not give the embedding size")
    text = text_spec(files["tokenizer"], f"{source.repo}: {layout.files['tokenizer']}")
    prepare_tokenizer(files["tokenizer"], work / "tokenizer.json", text)
    text_graph = {"file": "text.onnx", "input": layout.text_io[0], "output": layout.text_io[1],
                  "input_shape": ["batch", f"tokens<={text['context_length']}"]}
    if layout.text_dtype == "int32":
        text_graph["input_dtype"] = "int32"
    if layout.fixed_text_length:
        text_graph["fixed_length"] = layout.fixed_text_length
    if "attention_mask" in text_in:
        text_graph["mask_input"] = "attention_mask"
    return {
        "format_version": FORMAT_VERSION,
        "name": source.name,
        **({"image_tower": source.image_tower} if source.image_tower else {}),
        "source": {"kind": "hub", "repo": source.repo, "revision": source.revision, "commit": commit,
                   "layout": layout.name, "pinned": source.pinned},
        "embedding_dim": dim,
        "image": image,
        "text": text,
        "graphs": {"vision": {"file": "vision.onnx", "input": layout.vision_io[0], "output": layout.vision_io[1],
                              "input_shape": ["batch", 3, image["size"], image["size"]]},
                   "text": text_graph},
        "precision": "int8",
        "pull": _versions(),
    }


def _graph_inputs(path: Path) -> dict[str, list]:
    """Input name -> shape (ints, or names for dynamic axes), without loading the weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initialisers = {init.name for init in model.graph.initializer}
    return {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input if i.name not in initialisers}


def _read_json(path: Path, where: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedSource(f"{where}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise UnsupportedSource(f"{where}: not a JSON object")
    return data


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _versions() -> dict:
    import platform

    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
