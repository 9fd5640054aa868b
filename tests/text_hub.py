"""Hub repos of text-only towers for tests/test_multilingual.py, served by `hubserver.Hub`:
the tiny random-weight towers committed under tests/data/text-towers (made by
tests/make_text_towers.py with sentence-transformers and transformers), and a
"colour words" tower in the sentence-transformers layout, made with the onnx package alone,
that pairs with tests/data/colour-model: its transformer gives each colour word, in eight
languages, the centred colour the colour model embeds a photo of that colour as, so
"rouge", "красный" and "赤" find the red photos."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from helpers import DATA

TOWERS = DATA / "text-towers"
REFERENCE = TOWERS / "reference.json"
ST_FILES = ["onnx/model.onnx", "tokenizer.json", "modules.json", "sentence_bert_config.json",
            "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors"]
IMMICH_FILES = ["textual/model.onnx", "textual/model.onnx_data", "textual/tokenizer.json",
                "textual/tokenizer_config.json", "config.json"]
COLOUR_WORDS = {
    "red": ["rouge", "rot", "rojo", "rosso", "красный", "红", "赤", "빨간"],
    "green": ["vert", "grün", "verde", "зелёный", "绿", "緑", "초록"],
    "blue": ["bleu", "blau", "azul", "blu", "синий", "蓝", "青", "파란"],
    "yellow": ["jaune", "gelb", "amarillo", "giallo", "жёлтый", "黄", "노란"],
}
CENTRED = {"red": (0.5, -0.5, -0.5), "green": (-0.5, 0.5, -0.5), "blue": (-0.5, -0.5, 0.5), "yellow": (0.5, 0.5, -0.5)}


def model_id(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["model_id"]


def copy_repo(layout: str, folder: Path) -> Path:
    shutil.copytree(TOWERS / layout, folder, dirs_exist_ok=True)
    return folder


def colour_words_repo(folder: Path) -> Path:
    """sentence-transformers layout: a "transformer" whose token states are the colour of each
    colour word (nearly zero for any other token), mean pooling, an identity Dense."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = [word for names in COLOUR_WORDS.values() for word in names]
    vocab = {token: i for i, token in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=None, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    # Every other token leans slightly one way, so no text embeds to zero (the probe texts
    # quantizing is checked on know no colour word).
    table = np.tile(np.array([0.01, 0.02, 0.03], np.float32), (len(vocab), 1))
    for colour, names in COLOUR_WORDS.items():
        for word in names:
            table[vocab[word]] = CENTRED[colour]
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])
    graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])],
                              "colour_words", [ids, mask],
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                                             ["batch", "tokens", 3])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipsearch-tests")
    model.ir_version = 8
    (folder / "onnx").mkdir(exist_ok=True)
    onnx.save(model, str(folder / "onnx" / "model.onnx"))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 3, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "2_Dense").mkdir(exist_ok=True)
    (folder / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": 3, "out_features": 3, "bias": False, "activation_function": "torch.nn.modules.linear.Identity"}))
    save_file({"linear.weight": np.eye(3, dtype=np.float32)}, str(folder / "2_Dense" / "model.safetensors"))
    return folder


def pins(folder: Path, paths) -> dict:
    return {path: {"size": (folder / path).stat().st_size, "sha256": hashlib.sha256((folder / path).read_bytes()).hexdigest()}
            for path in paths}


def text_catalogue(path: Path, entries: dict, image_model: tuple[str, str] = ("tiny", "")) -> Path:
    """A catalogue of text towers on the test hub: {name: (repo, revision, layout, files,
    image tower id)}, each pairing with the model named `image_model[0]`."""
    models = {image_model[0]: {"hub_id": image_model[1], "licence": "test"}}
    for name, (repo, revision, layout, files, tower) in entries.items():
        models[name] = {"kind": "text", "hub_id": repo, "licence": "test", "pairs_with": image_model[0],
                        "image_tower": tower, "pull": {"repo": repo, "revision": revision, "layout": layout,
                                                       "files": files}}
    path.write_text(json.dumps({"format_version": 1, "default": image_model[0], "models": models}))
    return path
