"""A hub-shaped HTTP server on 127.0.0.1 for the pull tests, and tiny random-weight CLIP
towers in each published layout, made with the onnx package alone (no PyTorch): what
`clipsearch models pull` fetches from the real hub, at `HF_ENDPOINT`.

Served like the hub: `GET /{owner}/{name}/resolve/{revision}/{path}` with `ETag` (the file's
sha256), `X-Repo-Commit`, `Range` and `If-Range`. Faults on demand: cut a file after N bytes
(the server going away mid-file), drop a file (404)."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from helpers import DATA

IMAGE_SIZE = 32
DIM = 16
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


class Hub:
    def __init__(self, root: Path):
        self.root = root
        self.cut_after: dict[str, int] = {}  # path in a repo -> bytes sent before the connection drops
        self.requests: list[tuple[str, str | None]] = []  # (url path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.requests.append((self.path, self.headers.get("Range")))
                parts = self.path.lstrip("/").split("/", 4)
                if len(parts) != 5 or parts[2] != "resolve":
                    return self.send_error(404)
                owner, name, _, revision, path = parts
                file = hub.root / owner / name / revision / path
                if not file.is_file():
                    return self.send_error(404)
                data = file.read_bytes()
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                start = 0
                wanted = self.headers.get("Range")
                if wanted and self.headers.get("If-Range", etag) == etag and wanted.startswith("bytes="):
                    start = int(wanted[6:].split("-")[0])
                    if start >= len(data):
                        return self.send_error(416)
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", etag)
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                cut = hub.cut_after.pop(path, None)
                body = data[start:] if cut is None else data[start:start + cut]
                self.wfile.write(body)
                if cut is not None:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, repo: str, revision: str = "main") -> Path:
        folder = self.root / repo / revision
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _save(model, path: Path) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def vision_graph(input_name: str, output_name: str, batch, normalise: bool, seed: int):
    """pixels [batch, 3, S, S] -> flatten -> MatMul -> Relu -> MatMul -> [batch, DIM]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.05, (3 * IMAGE_SIZE * IMAGE_SIZE, 64)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (64, DIM)).astype(np.float32), "w2")
    nodes = [helper.make_node("Flatten", [input_name], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w1"], ["hidden"]),
             helper.make_node("Relu", ["hidden"], ["active"]),
             helper.make_node("MatMul", ["active", "w2"], ["raw" if normalise else output_name])]
    if normalise:
        nodes.append(helper.make_node("LpNormalization", ["raw"], [output_name], axis=-1, p=2))
    graph = helper.make_graph(
        nodes, "tiny_vision",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, DIM])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch-tests")


def text_graph(input_name: str, output_name: str, dtype: str, shape, with_mask: bool, normalise: bool, seed: int):
    """ids [batch, tokens] -> Gather -> (x mask) -> ReduceSum over tokens -> MatMul -> [batch, DIM]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed + 1)
    vocab = 49408
    table = numpy_helper.from_array(rng.normal(0, 0.1, (vocab, 32)).astype(np.float32), "table")
    proj = numpy_helper.from_array(rng.normal(0, 0.3, (32, DIM)).astype(np.float32), "proj")
    axis = numpy_helper.from_array(np.array([1], dtype=np.int64), "token_axis")
    last = numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis")
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.INT32 if dtype == "int32" else TensorProto.INT64, shape)]
    nodes = []
    ids = input_name
    if dtype == "int32":
        nodes.append(helper.make_node("Cast", [input_name], ["ids64"], to=TensorProto.INT64))
        ids = "ids64"
    nodes.append(helper.make_node("Gather", ["table", ids], ["per_token"]))
    summed_input = "per_token"
    if with_mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, shape))
        nodes += [helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", ["maskf", "last_axis"], ["mask3"]),
                  helper.make_node("Mul", ["per_token", "mask3"], ["masked"])]
        summed_input = "masked"
    nodes += [helper.make_node("ReduceSum", [summed_input, "token_axis"], ["pooled"], keepdims=0),
              helper.make_node("MatMul", ["pooled", "proj"], ["raw" if normalise else output_name])]
    if normalise:
        nodes.append(helper.make_node("LpNormalization", ["raw"], [output_name], axis=-1, p=2))
    graph = helper.make_graph(nodes, "tiny_text", inputs,
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [shape[0], DIM])],
                              [table, proj, axis, last])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch-tests")


def transformers_js_repo(folder: Path, mean=OPENAI_MEAN, std=OPENAI_STD, resample: int = 3, seed: int = 0) -> Path:
    """The transformers.js layout (Xenova/clip-...): dynamic axes, attention_mask, raw outputs."""
    _save(vision_graph("pixel_values", "image_embeds", "batch_size", False, seed), folder / "onnx" / "vision_model.onnx")
    _save(text_graph("input_ids", "text_embeds", "int64", ["batch_size", "sequence_length"], True, False, seed),
          folder / "onnx" / "text_model.onnx")
    shutil.copyfile(DATA / "tiny-model" / "tokenizer.json", folder / "tokenizer.json")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": mean, "image_std": std, "resample": resample,
        "size": {"shortest_edge": IMAGE_SIZE}, "do_rescale": True, "rescale_factor": 1 / 255}))
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": DIM}))
    return folder


def immich_repo(folder: Path, seed: int = 0) -> Path:
    """Immich's layout (immich-app/...): batch fixed at 1, int32 text [1, 77], normalised outputs."""
    _save(vision_graph("image", "embedding", 1, True, seed), folder / "visual" / "model.onnx")
    _save(text_graph("text", "embedding", "int32", [1, 77], False, True, seed), folder / "textual" / "model.onnx")
    shutil.copyfile(DATA / "tiny-model" / "tokenizer.json", folder / "textual" / "tokenizer.json")
    (folder / "visual" / "preprocess_cfg.json").write_text(json.dumps({
        "size": [IMAGE_SIZE, IMAGE_SIZE], "mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD,
        "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}))
    (folder / "config.json").write_text(json.dumps({"embed_dim": DIM, "vision_cfg": {"image_size": IMAGE_SIZE}}))
    return folder


def pinned_files(folder: Path, paths) -> dict:
    return {path: {"size": (folder / path).stat().st_size, "sha256": hashlib.sha256((folder / path).read_bytes()).hexdigest()}
            for path in paths}


def catalogue(path: Path, entries: dict) -> Path:
    """A catalogue of the test hub's repos: {name: (repo, revision, layout, files or None)}."""
    models = {}
    for name, (repo, revision, layout, files) in entries.items():
        models[name] = {"hub_id": repo, "licence": "test", "pull": {"repo": repo, "revision": revision,
                                                                   "layout": layout, "files": files}}
    path.write_text(json.dumps({"format_version": 1, "default": next(iter(entries)), "models": models}))
    return path
