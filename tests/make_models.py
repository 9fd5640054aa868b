"""Regenerate the small model folders committed under tests/data (needs the export extra).

    python tests/make_models.py

- tiny-model/: `python -m export --random-weights --tiny --seed 0`: real CLIP tokenizer and
  graph structure, narrow and shallow; rankings are meaningless.
- colour-model/: a deterministic pair with the same inputs and outputs as exported graphs,
  for tests that need right answers. The image graph embeds an image as its mean colour
  (RGB in [0,1], centred on grey); the text graph sums, over the query's tokens, the same
  centred colour of each colour word it knows ("red", "yellow", ...). "red" therefore ranks
  red photos first, "yellow" yellow ones, and so on.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
REPO = DATA.parent.parent
sys.path.insert(0, str(REPO))

COLOURS = {
    "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0),
    "teal": (0, 1, 1), "magenta": (1, 0, 1), "white": (1, 1, 1), "black": (0, 0, 0),
}
IMAGE_SIZE = 32


def centred(rgb) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) - 0.5


def build_colour_model(out: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    from clipsearch.model.build import finish_folder

    out.mkdir(parents=True, exist_ok=True)
    tokenizer_json = DATA / "tiny-model" / "tokenizer.json"
    (out / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    vocab_size = tokenizer.get_vocab_size()
    table = np.zeros((vocab_size, 3), dtype=np.float32)
    for word, rgb in COLOURS.items():
        token = tokenizer.token_to_id(word + "</w>")
        assert token is not None, f"{word} is not one CLIP token"
        table[token] = centred(rgb)

    pixels = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])
    image_out = helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", 3])
    half = numpy_helper.from_array(np.full((1, 3), 0.5, dtype=np.float32), "half")
    vision = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("Sub", ["mean", "half"], ["image_embeds"])],
        "colour_vision", [pixels], [image_out], [half])
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    text_out = helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", 3])
    axis = numpy_helper.from_array(np.array([1], dtype=np.int64), "token_axis")
    text = helper.make_graph(
        [helper.make_node("Gather", ["colour_table", "input_ids"], ["per_token"]),
         helper.make_node("ReduceSum", ["per_token", "token_axis"], ["text_embeds"], keepdims=0)],
        "colour_text", [ids], [text_out], [numpy_helper.from_array(table, "colour_table"), axis])
    for graph, name in ((vision, "vision.onnx"), (text, "text.onnx")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, out / name)
    tiny = json.loads((DATA / "tiny-model" / "manifest.json").read_text())
    data = {
        "format_version": 1, "name": "colour-test-model", "source": {"kind": "synthetic", "generator": "tests/make_models.py"},
        "embedding_dim": 3,
        "image": dict(tiny["image"], size=IMAGE_SIZE, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]),
        "text": tiny["text"],
        "graphs": {"vision": {"file": "vision.onnx", "input": "pixel_values", "output": "image_embeds"},
                   "text": {"file": "text.onnx", "input": "input_ids", "output": "text_embeds"}},
        "precision": "fp32", "quantization": None,
    }
    finish_folder(out, data, {})


def build_tiny_model(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "export", "--random-weights", "--tiny", "--seed", "0", "--out", str(out)],
                   check=True, cwd=REPO)


if __name__ == "__main__":
    build_tiny_model(DATA / "tiny-model")
    build_colour_model(DATA / "colour-model")
    print(DATA)
