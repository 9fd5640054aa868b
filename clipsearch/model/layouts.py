"""What a model source's own files say, in the manifest's terms: the published hub layouts
(file names, graph inputs and outputs), image preprocessing from transformers'
`preprocessor_config.json` or open_clip's `preprocess_cfg.json`, and the tokenizer's special
tokens. Preprocessing is never assumed: what the runtime cannot reproduce is refused, rather
than a model silently fed other pixels than it was trained on. Torch-free; `python -m export`
reads checkpoints' preprocessing through here too."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONTEXT_LENGTH = 77
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers stores `resample`


class UnsupportedSource(ValueError):
    """The source preprocesses or tokenizes in a way the runtime cannot reproduce."""


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps each file, and its graphs' inputs and outputs."""

    name: str
    files: dict  # role -> path in the repo: vision, text, tokenizer, preprocess, config
    vision_io: tuple[str, str]
    text_io: tuple[str, str]
    text_dtype: str  # int64 or int32
    fixed_text_length: int | None  # a text graph whose token axis is fixed takes padded ids


LAYOUTS = {
    # transformers.js / optimum exports (e.g. Xenova/clip-vit-base-patch32): fp32, dynamic
    # batch and token axes, the names clipsearch's own export uses, outputs not normalised.
    "transformers.js": Layout(
        "transformers.js",
        {"vision": "onnx/vision_model.onnx", "text": "onnx/text_model.onnx", "tokenizer": "tokenizer.json",
         "preprocess": "preprocessor_config.json", "config": "config.json"},
        ("pixel_values", "image_embeds"), ("input_ids", "text_embeds"), "int64", None),
    # Immich's open_clip exports (immich-app/<model>): fp32, batch fixed at 1 (clipsearch runs
    # every image and text alone anyway, so this costs nothing), text int32 [1, 77], outputs
    # already normalised.
    "immich": Layout(
        "immich",
        {"vision": "visual/model.onnx", "text": "textual/model.onnx", "tokenizer": "textual/tokenizer.json",
         "preprocess": "visual/preprocess_cfg.json", "config": "config.json"},
        ("image", "embedding"), ("text", "embedding"), "int32", CONTEXT_LENGTH),
}


def image_spec_from_processor(config: dict, where: str, image_size: int | None, default: dict | None = None) -> dict:
    """transformers' `preprocessor_config.json` -> the manifest's `image` section."""
    default = default or {}
    if config.get("resample", BICUBIC) != BICUBIC:
        raise UnsupportedSource(f"{where}: resample={config['resample']}; clipsearch resizes with bicubic (3) only")
    if not config.get("do_resize", True) or not config.get("do_center_crop", True):
        raise UnsupportedSource(f"{where}: clipsearch needs a resize and a centre crop (do_resize, do_center_crop)")
    shortest = _side(config.get("size"), "shortest_edge")
    crop = _side(config.get("crop_size", config.get("size")), "height", "width")
    if shortest is None:
        raise UnsupportedSource(f"{where}: size={config.get('size')!r}; clipsearch resizes the shortest side only")
    if crop is None:
        raise UnsupportedSource(f"{where}: crop_size={config.get('crop_size')!r}; clipsearch crops a square only")
    if image_size is not None and crop != image_size:
        raise UnsupportedSource(f"{where}: crop {crop} but the vision model takes {image_size}x{image_size}")
    if shortest < crop:
        raise UnsupportedSource(f"{where}: shortest side {shortest} is smaller than the crop {crop}")
    if config.get("do_rescale", True) is False or abs(config.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise UnsupportedSource(f"{where}: clipsearch scales pixels by 1/255 only (do_rescale, rescale_factor)")
    normalize = config.get("do_normalize", True)
    mean = _three(config.get("image_mean", default.get("mean")), where, "image_mean") if normalize else [0.0] * 3
    std = _three(config.get("image_std", default.get("std")), where, "image_std") if normalize else [1.0] * 3
    return {"resize": "shortest_side", "interpolation": "bicubic", "crop": "center", "mean": mean, "std": std,
            "size": crop, "shortest_side": shortest}


def image_spec_from_open_clip(config: dict, where: str) -> dict:
    """open_clip's `preprocess_cfg.json` (Immich's layout) -> the manifest's `image` section."""
    size = config.get("size")
    side = size if isinstance(size, int) else (size[0] if isinstance(size, list) and len(set(size)) == 1 else None)
    if side is None:
        raise UnsupportedSource(f"{where}: size={size!r}; clipsearch crops a square only")
    if config.get("interpolation", "bicubic") != "bicubic":
        raise UnsupportedSource(f"{where}: interpolation={config['interpolation']!r}; clipsearch resizes with bicubic only")
    if config.get("resize_mode", "shortest") != "shortest":
        raise UnsupportedSource(f"{where}: resize_mode={config['resize_mode']!r}; clipsearch resizes the shortest "
                                "side, then crops the centre")
    if config.get("mode", "RGB") != "RGB":
        raise UnsupportedSource(f"{where}: mode={config['mode']!r}; clipsearch feeds RGB")
    return {"resize": "shortest_side", "interpolation": "bicubic", "crop": "center",
            "mean": _three(config.get("mean"), where, "mean"), "std": _three(config.get("std"), where, "std"),
            "size": int(side)}


def text_spec(tokenizer_file: Path, where: str) -> dict:
    """The manifest's `text` section from a CLIP tokenizer.json: its start and end tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    start, end = tokenizer.token_to_id("<|startoftext|>"), tokenizer.token_to_id("<|endoftext|>")
    if start is None or end is None:
        raise UnsupportedSource(f"{where}: not a CLIP tokenizer (no <|startoftext|> / <|endoftext|> tokens)")
    return {"context_length": CONTEXT_LENGTH, "start_token_id": start, "end_token_id": end, "pad_token_id": end,
            "vocab_size": tokenizer.get_vocab_size()}


def prepare_tokenizer(source: Path, target: Path, text: dict) -> None:
    """Write `source` as the model folder's tokenizer.json: truncated and padded to the
    context like clipsearch's own export (the runtime cuts ids after the end token), compact."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.enable_truncation(max_length=text["context_length"])
    tokenizer.enable_padding(length=text["context_length"], pad_id=text["pad_token_id"],
                             pad_token=tokenizer.id_to_token(text["pad_token_id"]))
    tokenizer.save(str(target))
    compact_tokenizer_json(target)


def compact_tokenizer_json(path: Path) -> None:
    """Rewrite tokenizer.json without indentation and with merges as "a b" strings (a form
    every tokenizers release reads): 1.5 MB instead of 3.6 MB, and measured 78 ms instead of
    94 ms to load, which every cold query pays."""
    data = json.loads(path.read_text(encoding="utf-8"))
    merges = data.get("model", {}).get("merges")
    if merges and isinstance(merges[0], list) and all(" " not in part for pair in merges for part in pair):
        data["model"]["merges"] = [" ".join(pair) for pair in merges]
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def _side(value, *keys: str) -> int | None:
    """An int from transformers' size forms: 224, {"shortest_edge": 224} or {"height": h, "width": w}
    (square only)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and all(k in value for k in keys) and len(value) == len(keys):
        sides = {int(value[k]) for k in keys}
        return sides.pop() if len(sides) == 1 else None
    return None


def _three(values, where: str, name: str) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 3 or (name in ("std", "image_std") and min(numbers) <= 0):
        raise UnsupportedSource(f"{where}: {name} must be three numbers{' > 0' if 'std' in name else ''}")
    return numbers
