"""Writing a model folder's manifest (file hashes, model_id, reference values). Torch-free,
so test-model generators can use it too."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from clipsearch.encoders import ImageEncoder, TextEncoder
from clipsearch.manifest import Manifest, describe_files
from clipsearch.preprocess import reference_image, to_pixels

REFERENCE_TEXT = "a photo of a cat"
REFERENCE_VALUES = 8


def reference_values(manifest: Manifest) -> dict:
    image = ImageEncoder(manifest).encode_pixels(to_pixels(reference_image(), manifest.image)[None])[0]
    text = TextEncoder(manifest).encode([REFERENCE_TEXT])[0]
    rounded = lambda v: [round(float(x), 6) for x in v[:REFERENCE_VALUES]]  # noqa: E731
    return {"vision": {"probe": "clipsearch.preprocess.reference_image(256)", "first_values": rounded(image)},
            "text": {"text": REFERENCE_TEXT, "first_values": rounded(text)}}


def finish_folder(work: Path, data: dict, graph_files: dict[str, Path]) -> Manifest:
    """Put `graph_files` in `work` as vision.onnx/text.onnx, hash everything, write manifest.json."""
    for tower, source in graph_files.items():
        target = work / f"{tower}.onnx"
        if source != target:
            shutil.copyfile(source, target)
    files, model_id = describe_files(work, ["vision.onnx", "text.onnx", "tokenizer.json"])
    data = dict(data, files=files, model_id=model_id)
    manifest = Manifest(folder=work, data=data)
    data["reference"] = reference_values(manifest)
    (work / "manifest.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


