"""Turning the two CLIP towers into ONNX graphs, and quantizing them to int8.

Quantization choices (measured; see README "Quantization"):
- dynamic quantization of the weight-constant MatMul/Gemm nodes only (`MatMulConstBOnly`), so
  attention's activation x activation products stay fp32; the token-embedding table (Gather)
  is stored as int8 too: it is 40% of the text graph and costs no speed (one row per token);
- int8 weights with `reduce_range` (7-bit weight values) by default. U8S8 is onnxruntime's
  fast path on VNNI x86 (measured here: 61-63 img/s vs 34 for uint8 weights) and on ARM64;
  on AVX2 CPUs without VNNI its VPMADDUBSW kernel adds two u8 x s8 products in int16, which
  saturates with full 8-bit weights (255*127*2 > 32767) but cannot with 7-bit ones
  (255*63*2 = 32130). SSE4-only x86 (Celeron J3455) runs one widening SSE kernel for both
  types. reduce_range cost no speed here and moved the probe cosine from 0.99985 to 0.99971;
- per-channel weight scales (no speed cost measured, better fidelity);
- the patch-embedding Conv, LayerNorm and the embeddings stay fp32 (the CPU ConvInteger kernel
  needs uint8 weights and the convolution is a small share of the time);
- no onnxruntime transformer fusion before quantizing: measured slower for int8 here.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch

OPSET = 18
VISION_INPUT, VISION_OUTPUT = "pixel_values", "image_embeds"
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"


class VisionTower(torch.nn.Module):
    """pixel_values [N,3,S,S] -> projected (not normalised) image embedding [N,D]."""

    def __init__(self, clip):
        super().__init__()
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection

    def forward(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class TextTower(torch.nn.Module):
    """input_ids [N,L] -> projected (not normalised) text embedding [N,D].

    No attention mask input: CLIP's text mask is causal, so ids after the end token cannot
    change the end token's state, which is what the tower pools."""

    def __init__(self, clip):
        super().__init__()
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection

    def forward(self, input_ids):
        return self.text_projection(self.text_model(input_ids=input_ids).pooler_output)


def export_towers(clip, out_dir: Path, context_length: int, quiet: bool = True) -> dict[str, Path]:
    """Write `vision.fp32.onnx` and `text.fp32.onnx` with dynamic batch (and token) axes."""
    image_size = clip.config.vision_config.image_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    tokens = torch.export.Dim("tokens", min=2, max=context_length)
    vision_path, text_path = out_dir / "vision.fp32.onnx", out_dir / "text.fp32.onnx"
    sample_pixels = torch.randn(2, 3, image_size, image_size)
    sample_ids = torch.randint(1, 1000, (2, 9))
    sample_ids[:, -1] = clip.config.text_config.vocab_size - 1
    with _maybe_silenced(quiet), torch.no_grad():
        torch.onnx.export(VisionTower(clip).eval(), (sample_pixels,), str(vision_path),
                          input_names=[VISION_INPUT], output_names=[VISION_OUTPUT],
                          dynamic_shapes={VISION_INPUT: {0: batch}}, opset_version=OPSET,
                          dynamo=True, external_data=False)
        torch.onnx.export(TextTower(clip).eval(), (sample_ids,), str(text_path),
                          input_names=[TEXT_INPUT], output_names=[TEXT_OUTPUT],
                          dynamic_shapes={TEXT_INPUT: {0: batch, 1: tokens}}, opset_version=OPSET,
                          dynamo=True, external_data=False)
    return {"vision": vision_path, "text": text_path}


QUANT_DEFAULTS = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "op_types": ["MatMul", "Gemm", "Gather"],
    "weight_type": "QInt8",
    "activation_type": "QUInt8 (dynamic, per tensor)",
    "per_channel": True,
    "reduce_range": True,
    "matmul_const_b_only": True,
    "kept_fp32": "patch-embedding Conv, LayerNorm, class/position embeddings' arithmetic, attention activation products",
    "transformer_optimizer": False,
}


def quantize(fp32_path: Path, int8_path: Path, weight_type: str = "QInt8", per_channel: bool = True,
             reduce_range: bool = True) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path), str(int8_path),
        op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        weight_type=getattr(QuantType, weight_type),
        per_channel=per_channel,
        reduce_range=reduce_range,
        extra_options={"MatMulConstBOnly": True},
    )
    settings = dict(QUANT_DEFAULTS, weight_type=weight_type, per_channel=per_channel, reduce_range=reduce_range)
    return settings


@contextlib.contextmanager
def _maybe_silenced(quiet: bool):
    # torch.onnx's dynamo exporter prints progress lines and warnings on stdout/stderr.
    if not quiet:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def file_mb(path: Path) -> float:
    return round(os.path.getsize(path) / 1e6, 1)
