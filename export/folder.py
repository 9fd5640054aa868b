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


# The text graph keeps its weights in a side file: onnxruntime maps external initializers
# instead of copying them out of the protobuf, which measured 13 ms instead of 61 ms to open
# the int8 text session, a sixth of a cold query. The vision session opens once per worker.
EXTERNAL_DATA_TOWERS = ("text",)


def place_graph(source: Path, target: Path, external: bool) -> None:
    data_file = target.with_name(target.name + ".data")
    data_file.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not external:
        shutil.copyfile(source, target)
        return
    import onnx

    onnx.save(onnx.load(str(source)), str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data_file.name, size_threshold=1024)
    data_file.chmod(0o644)


def finish_folder(work: Path, data: dict, graph_files: dict[str, Path]) -> Manifest:
    """Put `graph_files` in `work` as vision.onnx/text.onnx (+ text.onnx.data), hash
    everything, write manifest.json."""
    data = dict(data, graphs={tower: dict(graph) for tower, graph in data["graphs"].items()})
    for tower, source in graph_files.items():
        target = work / f"{tower}.onnx"
        if source != target:
            place_graph(source, target, tower in EXTERNAL_DATA_TOWERS)
    names = ["vision.onnx", "text.onnx", "tokenizer.json"]
    for tower, graph in data["graphs"].items():
        graph.pop("external_data", None)
        if (work / f"{tower}.onnx.data").exists():
            graph["external_data"] = f"{tower}.onnx.data"
            names.append(graph["external_data"])
    files, model_id = describe_files(work, names)
    data = dict(data, files=files, model_id=model_id)
    manifest = Manifest(folder=work, data=data)
    data["reference"] = reference_values(manifest)
    (work / "manifest.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


