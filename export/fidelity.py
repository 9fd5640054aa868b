"""Fidelity of the exported graphs, measured by the export itself on the shared probe set
(`clipsearch.model.build`): PyTorch vs fp32 ONNX here, int8 vs fp32 ONNX there. Embeddings go
through the runtime's own preprocessing and tokenizer, so what is measured is what users get."""
from __future__ import annotations

import numpy as np
import torch

from clipsearch.model.build import PROBE_TEXTS, int8_fidelity, probe_pixels, summary, with_graphs
from clipsearch.model.encoders import TextEncoder
from clipsearch.model.manifest import Manifest
from clipsearch.model.tokens import encode_texts

from .graphs import TextTower, VisionTower

# PyTorch vs fp32 ONNX is the same arithmetic in another order: anything under 0.9999 means a
# wrong graph, not rounding.
MIN_COSINE_TORCH_VS_FP32 = 0.9999


def measure(clip, manifest: Manifest, fp32_files: dict[str, str]) -> dict:
    """Cosines torch vs fp32 ONNX and int8 vs fp32 ONNX, per tower, on the probe set.
    `manifest` points at the int8 graphs; `fp32_files` names the fp32 ones in the same folder
    (their sizes/hashes must be in manifest.data['files'])."""
    from clipsearch.model.encoders import ImageEncoder

    fp32_manifest = with_graphs(manifest, fp32_files)
    pixels = probe_pixels(manifest)
    # PyTorch gets CLIP's own form, padded to 77; the ONNX encoders cut after the end token.
    text_ids = np.array(encode_texts(TextEncoder(manifest).tokenizer, PROBE_TEXTS), dtype=np.int64)
    with torch.no_grad():
        torch_image = VisionTower(clip)(torch.from_numpy(pixels)).numpy()
        torch_text = TextTower(clip)(torch.from_numpy(text_ids)).numpy()
    result = int8_fidelity(manifest, fp32_files, pixels)
    result["vision"]["torch_vs_fp32_onnx"] = summary(torch_image, ImageEncoder(fp32_manifest, threads=None).encode_pixels(pixels))
    result["text"]["torch_vs_fp32_onnx"] = summary(torch_text, TextEncoder(fp32_manifest).encode(PROBE_TEXTS))
    result["thresholds"]["torch_vs_fp32_onnx"] = MIN_COSINE_TORCH_VS_FP32
    return result
