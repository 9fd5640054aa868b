"""Text-only towers trained to match another model's image tower (multilingual search over a
library indexed once with the default model): their published layouts, and turning each into
clipsearch's one text graph, "ids (and mask) in, vector out".

- sentence-transformers (`sentence-transformers/clip-ViT-B-32-multilingual-v1`): the
  transformer as ONNX (`onnx/model.onnx`, output `last_hidden_state`), then the modules that
  `modules.json` lists: mean pooling over the attention mask (`1_Pooling/config.json`) and a
  dense projection (`2_Dense/config.json`, weights in safetensors). Pooling and projection are
  folded into the graph here, as the nodes sentence-transformers runs in torch, so the runtime
  needs nothing but onnxruntime and the tokenizer, and int8 quantizing sees the projection too.
- immich-mclip (Immich's `XLM-Roberta-Large-Vit-B-32`): `textual/model.onnx` already pools,
  projects and normalises; `input_ids` and `attention_mask` int32 of a fixed [1, 77]; its
  weights in external data files, whose names the graph itself gives.

Each tokenizer keeps its own rules: no CLIP clean-up for WordPiece or SentencePiece (the
manifest's `text.clean`). Needs the `onnx` and `safetensors` packages (the `models` extra).
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layouts import UnsupportedSource, compact_tokenizer_json

TEXT_OUTPUT = "text_embeds"


@dataclass(frozen=True)
class TextLayout:
    name: str
    files: dict  # role -> path in the repo
    input: str
    output: str  # of the published graph (sentence-transformers: the transformer's, before pooling)
    input_dtype: str
    clean: str  # `model/tokens.prepare_text`


TEXT_LAYOUTS = {
    "sentence-transformers": TextLayout(
        "sentence-transformers",
        {"text": "onnx/model.onnx", "tokenizer": "tokenizer.json", "modules": "modules.json",
         "settings": "sentence_bert_config.json", "pooling": "1_Pooling/config.json",
         "dense_config": "2_Dense/config.json", "dense": "2_Dense/model.safetensors"},
        "input_ids", "last_hidden_state", "int64", "none"),
    "immich-mclip": TextLayout(
        "immich-mclip",
        {"text": "textual/model.onnx", "tokenizer": "textual/tokenizer.json",
         "tokenizer_config": "textual/tokenizer_config.json", "config": "config.json"},
        "input_ids", "embedding", "int32", "whitespace"),
}

# sentence-transformers modules (the class name: `sentence_transformers.models.Pooling` in the
# published repos, other module paths in newer releases), in the order this layout runs them.
_MODULES = (("Transformer", ""), ("Pooling", "1_Pooling"), ("Dense", "2_Dense"))
_ACTIVATIONS = {"torch.nn.modules.linear.Identity": None, "torch.nn.modules.activation.Tanh": "Tanh"}


def read_graph(path: Path, where: str, load_external_data: bool = True):
    """An ONNX graph from the hub, or UnsupportedSource naming it (bytes that are not one)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and onnx's checks have no common base
        raise UnsupportedSource(f"{where}: not an ONNX graph onnx can read ({type(exc).__name__})") from None


def external_data_files(graph: Path, where: str) -> list[str]:
    """The external weight files a graph names, as paths relative to its folder; a name that
    would leave the folder is refused (the graph is untrusted until checked)."""
    import onnx

    model = read_graph(graph, where, load_external_data=False)
    names = set()
    constants = [a.t for node in model.graph.node for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for tensor in [*model.graph.initializer, *constants]:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
            clean = posixpath.normpath(location)
            if not location or clean.startswith(("/", "..")) or "\\" in location or clean == ".":
                raise UnsupportedSource(f"{where}: external data location {location!r} is outside the graph's folder")
            names.add(clean)
    return sorted(names)


def read_json(path: Path, where: str) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedSource(f"{where}: unreadable ({exc})") from None


def text_spec(tokenizer_file: Path, where: str, context_length: int, clean: str, pad_token: str | None) -> dict:
    """The manifest's `text` section for a WordPiece or SentencePiece tokenizer.json: the
    start and end tokens its post-processor adds, its pad token, the longest input."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types
        raise UnsupportedSource(f"{where}: not a tokenizer.json the tokenizers library reads ({exc})") from None
    ids = tokenizer.encode("").ids
    if len(ids) < 2:
        raise UnsupportedSource(f"{where}: its post-processor adds no start and end tokens")
    pad = next((tokenizer.token_to_id(t) for t in (pad_token, "[PAD]", "<pad>") if t and tokenizer.token_to_id(t) is not None),
               ids[-1])
    return {"context_length": context_length, "start_token_id": ids[0], "end_token_id": ids[-1], "pad_token_id": pad,
            "vocab_size": tokenizer.get_vocab_size(), "clean": clean}


def prepare_tokenizer(source: Path, target: Path, text: dict) -> None:
    """The model folder's tokenizer.json: truncated to the model's longest input (the end
    token kept, as the original pipeline truncates), compact."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=text["context_length"])
    tokenizer.save(str(target))
    compact_tokenizer_json(target)


def sentence_transformers_graph(files: dict[str, Path], repo: str, out: Path) -> tuple[dict, int]:
    """Check that modules.json runs Transformer -> mean Pooling -> Dense (-> Normalize), fold
    the pooling and projection into the transformer's graph, write it to `out`. Returns the
    manifest's `text` section and the embedding size."""
    modules = read_json(files["modules"], f"{repo}: modules.json")
    steps = [(str(m.get("type")).rpartition(".")[2], m.get("path", ""))
             for m in sorted(modules, key=lambda m: m.get("idx", 0))] \
        if isinstance(modules, list) and all(isinstance(m, dict) for m in modules) else []
    if steps and steps[-1][0] == "Normalize":
        steps = steps[:-1]  # clipsearch normalises every embedding itself
    if tuple(steps) != _MODULES:
        raise UnsupportedSource(f"{repo}: modules.json runs {[t for t, _ in steps]}; clipsearch folds Transformer, "
                                "Pooling (mean) and Dense in that order only")
    pooling = read_json(files["pooling"], f"{repo}: 1_Pooling/config.json")
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
    if pooling.get("pooling_mode") is not None:  # newer sentence-transformers: one key
        modes = [f"pooling_mode_{pooling['pooling_mode']}_tokens"]
    if modes != ["pooling_mode_mean_tokens"]:
        raise UnsupportedSource(f"{repo}: 1_Pooling/config.json pools by {modes}; clipsearch folds mean pooling only")
    dense = read_json(files["dense_config"], f"{repo}: 2_Dense/config.json")
    activation = dense.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation not in _ACTIVATIONS:
        raise UnsupportedSource(f"{repo}: 2_Dense/config.json activation {activation!r} is not one clipsearch folds "
                                f"({', '.join(_ACTIVATIONS)})")
    weight, bias = _dense_weights(files["dense"], f"{repo}: 2_Dense/model.safetensors", dense)
    settings = read_json(files["settings"], f"{repo}: sentence_bert_config.json")
    length = settings.get("max_seq_length")
    if not isinstance(length, int) or not 2 <= length <= 4096:
        raise UnsupportedSource(f"{repo}: sentence_bert_config.json max_seq_length={length!r}")
    mask = fold_mean_pooling(files["text"], out, weight, bias, _ACTIVATIONS[activation], f"{repo}: onnx/model.onnx")
    text = text_spec(files["tokenizer"], f"{repo}: tokenizer.json", length, "none", None)
    return dict(text, mask_input=mask), int(weight.shape[0])


def _dense_weights(path: Path, where: str, config: dict) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError:
        from clipsearch.errors import ClipsearchError

        raise ClipsearchError("reading this text tower's projection needs the safetensors package: "
                              "pip install 'clipsearch[models]'") from None

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsupportedSource(f"{where}: unreadable ({exc})") from None
    weight, bias = tensors.get("linear.weight"), tensors.get("linear.bias")
    shape = (config.get("out_features"), config.get("in_features"))
    if weight is None or weight.ndim != 2 or tuple(weight.shape) != shape:
        raise UnsupportedSource(f"{where}: no linear.weight of shape {shape} (out_features, in_features)")
    if config.get("bias", True) != (bias is not None) or (bias is not None and bias.shape != (shape[0],)):
        raise UnsupportedSource(f"{where}: linear.bias does not match 2_Dense/config.json's bias={config.get('bias')}")
    return weight.astype(np.float32), None if bias is None else bias.astype(np.float32)


def fold_mean_pooling(source: Path, out: Path, weight: np.ndarray, bias: np.ndarray | None, activation: str | None,
                      where: str) -> str:
    """Append to the transformer graph what sentence-transformers runs after it: the mean of
    the token states over the attention mask (divided by the mask's sum clamped at 1e-9, as
    its Pooling does), then x @ W.T (+ b) and the activation, as output `text_embeds`.
    Returns the mask input's name."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = read_graph(source, where)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise UnsupportedSource(f"{where}: opset {opset}; clipsearch folds the pooling into opset 13 or newer")
    hidden = next((o.name for o in graph.output if o.name == "last_hidden_state"), None)
    inputs = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    if hidden is None or "attention_mask" not in inputs or "input_ids" not in inputs:
        raise UnsupportedSource(f"{where}: expected inputs input_ids and attention_mask and output last_hidden_state, "
                                f"found {sorted(inputs)} -> {[o.name for o in graph.output]}")
    hidden_size = weight.shape[1]
    names = {n: f"clipsearch_{n}" for n in ("mask_f", "mask_3", "axis1", "axis2", "masked", "summed", "count",
                                            "floor", "clamped", "mean", "weight_t", "projected", "biased", "bias")}
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], np.int64), names["axis1"]),
        numpy_helper.from_array(np.array([2], np.int64), names["axis2"]),
        numpy_helper.from_array(np.array(1e-9, np.float32), names["floor"]),
        numpy_helper.from_array(np.ascontiguousarray(weight.T), names["weight_t"])])
    nodes = [
        helper.make_node("Cast", ["attention_mask"], [names["mask_f"]], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [names["mask_f"], names["axis2"]], [names["mask_3"]]),
        helper.make_node("Mul", [hidden, names["mask_3"]], [names["masked"]]),
        helper.make_node("ReduceSum", [names["masked"], names["axis1"]], [names["summed"]], keepdims=0),
        helper.make_node("ReduceSum", [names["mask_3"], names["axis1"]], [names["count"]], keepdims=0),
        helper.make_node("Max", [names["count"], names["floor"]], [names["clamped"]]),
        helper.make_node("Div", [names["summed"], names["clamped"]], [names["mean"]]),
        helper.make_node("MatMul", [names["mean"], names["weight_t"]], [names["projected"]]),
    ]
    last = names["projected"]
    if bias is not None:
        graph.initializer.append(numpy_helper.from_array(bias, names["bias"]))
        nodes.append(helper.make_node("Add", [last, names["bias"]], [names["biased"]]))
        last = names["biased"]
    nodes.append(helper.make_node(activation or "Identity", [last], [TEXT_OUTPUT]))
    graph.node.extend(nodes)
    declared = next(o for o in graph.output if o.name == hidden)
    dims = declared.type.tensor_type.shape.dim
    if len(dims) == 3 and dims[2].HasField("dim_value") and dims[2].dim_value != hidden_size:
        raise UnsupportedSource(f"{where}: token states are {dims[2].dim_value} wide, 2_Dense takes {hidden_size}")
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(TEXT_OUTPUT, TensorProto.FLOAT, ["batch", weight.shape[0]]))
    big = model.ByteSize() > 1_800_000_000
    onnx.save(model, str(out), save_as_external_data=big, all_tensors_to_one_file=True,
              location=out.name + ".data" if big else None)
    return "attention_mask"


def immich_mclip_spec(files: dict[str, Path], repo: str, graph_inputs: dict) -> tuple[dict, int]:
    """Immich's M-CLIP text layout: the manifest's `text` section and the embedding size."""
    config = read_json(files["config"], f"{repo}: config.json")
    tokenizer_config = read_json(files["tokenizer_config"], f"{repo}: textual/tokenizer_config.json")
    text_cfg = config.get("text_cfg") if isinstance(config.get("text_cfg"), dict) else {}
    length = text_cfg.get("context_length", 77)
    dim = config.get("embed_dim")
    if not isinstance(dim, int) or not isinstance(length, int):
        raise UnsupportedSource(f"{repo}: config.json does not give embed_dim and text_cfg.context_length")
    if {"input_ids", "attention_mask"} - set(graph_inputs):
        raise UnsupportedSource(f"{repo}: textual/model.onnx takes {sorted(graph_inputs)}, not input_ids and "
                                "attention_mask")
    fixed = graph_inputs["input_ids"][-1]
    if isinstance(fixed, int) and fixed != length:
        raise UnsupportedSource(f"{repo}: the graph takes {fixed} tokens, config.json says {length}")
    pad = tokenizer_config.get("pad_token") if isinstance(tokenizer_config.get("pad_token"), str) else None
    text = text_spec(files["tokenizer"], f"{repo}: textual/tokenizer.json", length, "whitespace", pad)
    return dict(text, mask_input="attention_mask", fixed_length=fixed if isinstance(fixed, int) else None), dim
