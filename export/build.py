"""The export pipeline: checkpoint -> fp32 ONNX -> int8 ONNX -> fidelity -> model folder.

The folder is assembled in a temporary sibling and renamed into place at the end, so an
interrupted or failed export never leaves a half-written model where the runtime looks."""
from __future__ import annotations

import platform
import shutil
import sys
import time
from pathlib import Path

from clipsearch.model.build import failures, finish_folder, quantize, replace_dir, work_dir
from clipsearch.model.layouts import CONTEXT_LENGTH, UnsupportedSource, compact_tokenizer_json
from clipsearch.model.manifest import FORMAT_VERSION, Manifest, describe_files

from . import fidelity
from .checkpoint import load_model, load_preprocess, load_tokenizer, save_random_checkpoint
from .errors import ExportError
from .graphs import OPSET, TEXT_INPUT, TEXT_OUTPUT, VISION_INPUT, VISION_OUTPUT, export_towers, file_mb


def log(message: str) -> None:
    print(f"export: {message}", file=sys.stderr, flush=True)


def write_tokenizer(tokenizer, path: Path) -> dict:
    backend = tokenizer.backend_tokenizer
    # Truncation keeps room for the start and end tokens (the post-processor adds them);
    # padding to the full context matches CLIP's convention for other consumers, and the
    # runtime cuts ids after the end token anyway.
    backend.enable_truncation(max_length=CONTEXT_LENGTH)
    end_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    backend.enable_padding(length=CONTEXT_LENGTH, pad_id=pad_id, pad_token=tokenizer.convert_ids_to_tokens(pad_id))
    backend.save(str(path))
    compact_tokenizer_json(path)
    return {"context_length": CONTEXT_LENGTH, "start_token_id": tokenizer.bos_token_id,
            "end_token_id": end_id, "pad_token_id": pad_id, "vocab_size": backend.get_vocab_size()}


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def run_export(*, name: str, source: str, source_info: dict, out: Path, preprocess: dict,
               revision: str | None = None, keep_fp32: bool = False, weight_type: str = "QInt8",
               per_channel: bool = True, reduce_range: bool = True, random_seed: int | None = None, tiny: bool = False) -> dict:
    started = time.perf_counter()
    out = out.expanduser().resolve()
    work = work_dir(out)
    try:
        if random_seed is not None:
            source = str(save_random_checkpoint(work / "checkpoint", random_seed, tiny=tiny))
            log(f"saved a random-weight checkpoint (seed {random_seed}{', tiny' if tiny else ''}) and loading it back")
        log(f"loading {source}")
        clip, commit = load_model(source, revision)
        if commit:
            source_info = dict(source_info, commit=commit)
        image_size = clip.config.vision_config.image_size
        try:
            image_spec = load_preprocess(source, revision, preprocess, image_size)
        except UnsupportedSource as exc:
            raise ExportError(f"{exc}; nothing was written") from None
        text_info = write_tokenizer(load_tokenizer(source, revision), work / "tokenizer.json")
        log("exporting fp32 ONNX graphs")
        fp32 = export_towers(clip, work, CONTEXT_LENGTH)
        log("quantizing to int8")
        int8 = {tower: work / f"{tower}.int8.onnx" for tower in fp32}
        quant = {tower: quantize(fp32[tower], int8[tower], weight_type, per_channel, reduce_range) for tower in fp32}
        data = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "source": source_info,
            # What a text-only model must pair with (`models pull multilingual`): the weights' hub id.
            **({"image_tower": source_info["hub_id"]} if source_info.get("kind") == "hub" else {}),
            "embedding_dim": clip.config.projection_dim,
            "image": image_spec,
            "text": text_info,
            "graphs": {"vision": {"file": "vision.onnx", "input": VISION_INPUT, "output": VISION_OUTPUT,
                                  "input_shape": ["batch", 3, image_size, image_size]},
                       "text": {"file": "text.onnx", "input": TEXT_INPUT, "output": TEXT_OUTPUT,
                                "input_shape": ["batch", f"tokens<={CONTEXT_LENGTH}"]}},
            "precision": "int8",
            "quantization": quant["vision"],
            "export": dict(versions(), opset=OPSET, exporter="torch.onnx.export(dynamo=True)",
                           date=time.strftime("%Y-%m-%d")),
        }
        manifest = finish_folder(work, data, int8)
        log("measuring fidelity on the probe set")
        fp32_files, _ = describe_files(work, [p.name for p in fp32.values()])
        probe_manifest = Manifest(folder=work, data=dict(manifest.data, files=dict(manifest.data["files"], **fp32_files)))
        fid = fidelity.measure(clip, probe_manifest, {t: p.name for t, p in fp32.items()})
        fid["sizes_mb"] = {"vision_int8": file_mb(int8["vision"]), "text_int8": file_mb(int8["text"]),
                           "vision_fp32": file_mb(fp32["vision"]), "text_fp32": file_mb(fp32["text"])}
        problems = failures(fid)
        if problems:
            raise ExportError("fidelity below threshold: " + "; ".join(problems)
                              + ". The graphs are wrong for this checkpoint; nothing was written.")
        data = dict(manifest.data, fidelity=fid)
        data.pop("files"), data.pop("model_id"), data.pop("reference")
        finish_folder(work, data, {})
        if keep_fp32:
            fp32_work = work_dir(out.parent / f"{out.name}-fp32")
            shutil.copyfile(work / "tokenizer.json", fp32_work / "tokenizer.json")
            fp32_data = dict(data, name=f"{name}-fp32", precision="fp32", quantization=None)
            finish_folder(fp32_work, fp32_data, fp32)
            replace_dir(fp32_work, out.parent / f"{out.name}-fp32")
        for path in list(fp32.values()) + list(int8.values()):
            path.unlink()
        shutil.rmtree(work / "checkpoint", ignore_errors=True)
        replace_dir(work, out)
        fid["seconds"] = round(time.perf_counter() - started, 1)
        return fid
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def print_summary(out: Path, fid: dict) -> None:
    sizes = fid["sizes_mb"]
    log(f"wrote {out}")
    log(f"sizes MB: vision int8 {sizes['vision_int8']} (fp32 {sizes['vision_fp32']}), "
        f"text int8 {sizes['text_int8']} (fp32 {sizes['text_fp32']})")
    for tower in ("vision", "text"):
        t, q = fid[tower]["torch_vs_fp32_onnx"], fid[tower]["int8_vs_fp32_onnx"]
        log(f"{tower}: cosine torch vs fp32 ONNX min {t['min']} mean {t['mean']} (max abs diff {t['max_abs_diff']}); "
            f"int8 vs fp32 min {q['min']} mean {q['mean']}")
