"""Fidelity of the exported graphs, measured by the export itself on a fixed probe set:
images drawn by code and written as real JPEG/PNG files, and varied texts. Embeddings go
through the runtime's own preprocessing and tokenizer (clipsearch.preprocess/encoders), so
what is measured is what users get."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipsearch.encoders import ImageEncoder, TextEncoder, l2_normalise
from clipsearch.manifest import Manifest
from clipsearch.preprocess import load_pixels
from clipsearch.tokens import encode_texts

from .graphs import TextTower, VisionTower

PROBE_TEXTS = [
    "a photo of a cat",
    "a kitten peeking from behind a corner",
    "A red car parked in front of a blue house at sunset.",
    "crème brûlée on a café table",
    "東京の夜景",
    "a birthday party 🎂🎉 with balloons",
    "dog",
    "two people hiking on a snowy mountain ridge under a clear sky, " * 6,  # > 77 tokens
    "",
    "screenshot of a spreadsheet with numbers",
]

# Export fails below these cosines. PyTorch vs fp32 ONNX is the same arithmetic in another
# order: anything under 0.9999 means a wrong graph, not rounding. int8 vs fp32: published
# ViT-B/32 weights-only int8 keeps zero-shot accuracy within 0.1 point, which corresponds to
# cosines well above 0.99; 0.97 leaves room for random weights (no outlier structure) while
# still catching a broken quantization (those land far below 0.9).
MIN_COSINE_TORCH_VS_FP32 = 0.9999
MIN_COSINE_INT8_VS_FP32 = 0.97


def probe_images(folder: Path, count: int = 12) -> list[Path]:
    """Gradients, discs, stripes and grain at several sizes and aspect ratios, half JPEG, half PNG."""
    rng = np.random.default_rng(1234)
    paths = []
    for i in range(count):
        width, height = [(640, 480), (300, 500), (1024, 768), (224, 224), (800, 200), (97, 131)][i % 6]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        freq = rng.uniform(0.005, 0.05)
        arr = np.empty((height, width, 3), np.float32)
        arr[..., 0] = base[0] * (xs / width)
        arr[..., 1] = 127 + 120 * np.sin(freq * (xs + ys) + i)
        arr[..., 2] = base[2] * (ys / height)
        cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, rng.uniform(0.1, 0.3) * min(width, height)
        arr[((xs - cx) ** 2 + (ys - cy) ** 2) < r * r] = rng.uniform(0, 255, 3)
        arr += rng.normal(0, 12, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        path = folder / (f"probe{i:02d}.jpg" if i % 2 == 0 else f"probe{i:02d}.png")
        img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)
        paths.append(path)
    return paths


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(l2_normalise(a) * l2_normalise(b), axis=1)


def summary(a: np.ndarray, b: np.ndarray) -> dict:
    """min/mean cosine, and the largest absolute difference between the unit embeddings."""
    cosines = cosine_rows(a, b)
    return {"min": round(float(cosines.min()), 7), "mean": round(float(cosines.mean()), 7),
            "max_abs_diff": float(f"{np.abs(l2_normalise(a) - l2_normalise(b)).max():.3g}")}


def with_graphs(manifest: Manifest, vision_file: str, text_file: str) -> Manifest:
    data = dict(manifest.data)
    data["graphs"] = {
        "vision": dict(manifest.data["graphs"]["vision"], file=vision_file, external_data=None),
        "text": dict(manifest.data["graphs"]["text"], file=text_file, external_data=None),
    }
    return Manifest(folder=manifest.folder, data=data)


def measure(clip, manifest: Manifest, fp32_files: dict[str, str]) -> dict:
    """Cosines torch vs fp32 ONNX and int8 vs fp32 ONNX, per tower, on the probe set.
    `manifest` points at the int8 graphs; `fp32_files` names the fp32 ones in the same folder
    (their sizes/hashes must be in manifest.data['files'])."""
    fp32_manifest = with_graphs(manifest, fp32_files["vision"], fp32_files["text"])
    with tempfile.TemporaryDirectory() as tmp:
        pixels = np.stack([load_pixels(p, manifest.image) for p in probe_images(Path(tmp))])
    # PyTorch gets CLIP's own form, padded to 77; the ONNX encoders cut after the end token.
    text_ids = np.array(encode_texts(TextEncoder(manifest).tokenizer, PROBE_TEXTS), dtype=np.int64)
    with torch.no_grad():
        torch_image = VisionTower(clip)(torch.from_numpy(pixels)).numpy()
        torch_text = TextTower(clip)(torch.from_numpy(text_ids)).numpy()
    fp32_image = ImageEncoder(fp32_manifest, threads=None).encode_pixels(pixels)
    int8_image = ImageEncoder(manifest, threads=None).encode_pixels(pixels)
    fp32_text = TextEncoder(fp32_manifest).encode(PROBE_TEXTS)
    int8_text = TextEncoder(manifest).encode(PROBE_TEXTS)
    return {
        "probe": f"{len(pixels)} generated JPEG/PNG images, {len(PROBE_TEXTS)} texts",
        "vision": {"torch_vs_fp32_onnx": summary(torch_image, fp32_image),
                   "int8_vs_fp32_onnx": summary(int8_image, fp32_image)},
        "text": {"torch_vs_fp32_onnx": summary(torch_text, fp32_text),
                 "int8_vs_fp32_onnx": summary(int8_text, fp32_text)},
        "thresholds": {"torch_vs_fp32_onnx": MIN_COSINE_TORCH_VS_FP32, "int8_vs_fp32_onnx": MIN_COSINE_INT8_VS_FP32},
    }


def failures(fidelity: dict) -> list[str]:
    problems = []
    for tower in ("vision", "text"):
        for key, limit in fidelity["thresholds"].items():
            low = fidelity[tower][key]["min"]
            if low < limit:
                problems.append(f"{tower} {key.replace('_', ' ')}: min cosine {low} < {limit}")
    return problems
