"""Turning the two CLIP towers into ONNX graphs (quantizing them is `clipsearch.model.build`'s,
shared with `clipsearch models pull`)."""
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
