"""Multilingual search over photos already indexed (issue 27): text-only towers in the
sentence-transformers and Immich M-CLIP layouts, pulled from a hub-shaped server on
127.0.0.1, built into one int8 text graph, paired with the image tower that indexed the cache.

The tiny towers under tests/data/text-towers have random weights of the real architectures;
`reference.json` is what the original pipelines answered for them (sentence-transformers, and
M-CLIP's modules in torch: tests/make_text_towers.py). The colour-words tower (text_hub.py)
pairs with the colour model, so a query in French or Russian must find the photos of that
colour. No PyTorch needed except for the live-reference test."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("onnx", reason="pulling quantizes with onnx: pip install 'clipsearch[models]'")
pytest.importorskip("safetensors", reason="pulling reads the projection with safetensors: pip install 'clipsearch[models]'")

import hubserver  # noqa: E402
import text_hub  # noqa: E402
from helpers import DATA, REPO, colour_library, run_cli  # noqa: E402

from clipsearch.model.build import MIN_COSINE_INT8_VS_FP32  # noqa: E402

REFERENCE = json.loads(text_hub.REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture
def hub(tmp_path):
    server = hubserver.Hub(tmp_path / "hub")
    yield server
    server.close()


def environment(tmp_path, hub, entries, image_model=("tiny", "")) -> dict:
    catalogue = text_hub.text_catalogue(tmp_path / "catalogue.json", entries, image_model)
    return {"CLIPSEARCH_HOME": str(tmp_path / "home"), "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "",
            "CLIPSEARCH_CATALOGUE": str(catalogue)}


def serve_layout(hub, layout: str, tower: str, name: str = "multilingual", pinned: bool = True) -> dict:
    repo = {"sentence-transformers": "sentence-transformers/tiny-multilingual",
            "immich-mclip": "immich-app/Tiny-XLM-Roberta"}[layout]
    folder = text_hub.copy_repo(layout, hub.repo(repo, hubserver.COMMIT))
    files = text_hub.ST_FILES if layout == "sentence-transformers" else text_hub.IMMICH_FILES
    pins = text_hub.pins(folder, files) if pinned else dict.fromkeys(f for f in files if "onnx_data" not in f)
    return {name: (repo, hubserver.COMMIT, layout, pins, tower)}


def text_vectors(folder, texts) -> np.ndarray:
    from clipsearch.model.encoders import TextEncoder
    from clipsearch.model.manifest import load_text_model

    return TextEncoder(load_text_model(folder)).encode(texts)


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("layout", ["sentence-transformers", "immich-mclip"])
def test_the_built_fp32_graph_matches_the_original_pipeline(tmp_path, layout):
    """Folding pooling and projection (sentence-transformers) or feeding the fixed-length
    graph (Immich) gives what the original pipeline gave, to 1e-5, in every script."""
    from clipsearch.model.catalogue import Source
    from clipsearch.model.encoders import TextEncoder
    from clipsearch.model.manifest import Manifest, describe_files
    from clipsearch.model.pull_text import build_fp32
    from clipsearch.model.text_layouts import TEXT_LAYOUTS

    source = Source("tiny", "test/tiny", "main", TEXT_LAYOUTS[layout], {}, kind="text", image_tower="x")
    repo = text_hub.TOWERS / layout
    files = {role: repo / path for role, path in source.layout.files.items()}
    data_files = {"model.onnx_data": repo / "textual" / "model.onnx_data"} if layout == "immich-mclip" else {}
    work = tmp_path / "work"
    work.mkdir()
    data = build_fp32(source, files, data_files, work)
    data["graphs"]["text"]["file"] = "text.fp32.onnx"
    data["files"], _ = describe_files(work, ["tokenizer.json"])
    vectors = TextEncoder(Manifest(work, data), verify=False).encode(REFERENCE["texts"])
    assert np.abs(vectors - unit(REFERENCE[layout])).max() < 1e-5
    assert data["text"]["clean"] == ("none" if layout == "sentence-transformers" else "whitespace")


def test_the_reference_is_what_sentence_transformers_answers():
    """The committed reference is the original pipeline's answer (not something this project
    computed): sentence-transformers loads the committed repo and encodes the texts again."""
    pytest.importorskip("sentence_transformers", reason="the reference pipeline needs the export extra")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(text_hub.TOWERS / "sentence-transformers"), device="cpu")
    again = model.encode(REFERENCE["texts"], convert_to_numpy=True)
    assert np.abs(unit(again) - unit(REFERENCE["sentence-transformers"])).max() < 1e-5


@pytest.mark.parametrize("layout", ["sentence-transformers", "immich-mclip"])
def test_pull_index_once_then_query_in_any_language(tmp_path, hub, tiny_model, layout):
    """Index with the tiny model; pull a text tower paired with its image tower; query in
    several scripts with `--text-model`: the scores are the pulled tower's vectors against the
    cached ones, the int8 tower stays within the fidelity bound of the original pipeline, no
    photo is embedded again and the vision graph is never opened (it is gone)."""
    model = tmp_path / "image-model"
    shutil.copytree(tiny_model, model)
    env = environment(tmp_path, hub, serve_layout(hub, layout, text_hub.model_id(model)))
    colour_library(tmp_path / "photos", per_colour=1)
    db = tmp_path / "index.db"
    run_cli("index", str(tmp_path / "photos"), "--db", str(db), "--model", str(model), "--workers", "1", env=env,
            check=True)
    rows_of = "SELECT id, vector, seq, indexed_at FROM images ORDER BY id"
    before = sqlite3.connect(db).execute(rows_of).fetchall()
    pulled = run_cli("models", "pull", "multilingual", env=env, timeout=300)
    err = pulled.stderr.decode()
    assert pulled.returncode == 0 and "Traceback" not in err, err
    assert "installed multilingual" in err and "--text-model multilingual" in err
    folder = tmp_path / "home" / "models" / "multilingual"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "text" and manifest["pairs_with"]["image_tower"] == text_hub.model_id(model)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "text.onnx", "text.onnx.data", "tokenizer.json"]
    int8 = text_vectors(folder, REFERENCE["texts"])
    cosines = np.sum(int8 * unit(REFERENCE[layout]), axis=1)
    assert cosines.min() >= MIN_COSINE_INT8_VS_FP32, cosines
    assert manifest["fidelity"]["text"]["int8_vs_fp32_onnx"]["min"] >= MIN_COSINE_INT8_VS_FP32

    checked = run_cli("check-model", "--model", str(folder), env=env)
    assert checked.returncode == 0 and b"text: ok" in checked.stdout and b"vision" not in checked.stdout, checked

    (model / "vision.onnx").unlink()  # a query that opened the vision graph would fail now
    stored = {row[0]: np.frombuffer(row[1], np.int8).astype(np.float32) for row in before}
    for text in ["un chat qui dort sur un canapé", "кошка спит на диване", "沙发上睡觉的猫", "소파에서 자는 고양이"]:
        answer = run_cli("query", text, "--db", str(db), "--model", str(model), "--text-model", "multilingual",
                         "--json", "--top", "8", "--no-server", env=env)
        assert answer.returncode == 0, answer.stderr
        rows = [json.loads(line) for line in answer.stdout.splitlines()]
        assert len(rows) == 8
        query = text_vectors(folder, [text])[0]
        ids = {os.fsencode(path): row_id for row_id, path in sqlite3.connect(db).execute("SELECT id, filepath FROM images")}
        for row in rows:
            vector = stored[ids[os.fsencode(row["path"])]]
            assert row["score"] == pytest.approx(float(query @ (vector / np.linalg.norm(vector))), abs=0.02)
    after = sqlite3.connect(db).execute(rows_of).fetchall()
    assert after == before


def test_colour_words_find_the_photos_in_eight_languages_from_query_serve_and_tag(tmp_path, hub, colour_model):
    """A tower that knows colour words in many languages, paired with the colour model: the
    French, Russian, Japanese and Korean words find the photos of that colour from `query`, from
    the page of a `serve` started with CLIPSEARCH_TEXT_MODEL, and label them with `tag --labels`;
    a query without the text model is not answered by that server's tower."""
    repo = "sentence-transformers/colour-words"
    folder = text_hub.colour_words_repo(hub.repo(repo, hubserver.COMMIT))
    entries = {"colour-words": (repo, hubserver.COMMIT, "sentence-transformers", text_hub.pins(folder, text_hub.ST_FILES),
                                text_hub.model_id(colour_model))}
    env = dict(environment(tmp_path, hub, entries, ("colour", "")), CLIPSEARCH_MODEL=str(colour_model),
               CLIPSEARCH_DB=str(tmp_path / "index.db"))
    library = colour_library(tmp_path / "photos", per_colour=2)
    run_cli("index", str(tmp_path / "photos"), "--workers", "1", env=env, check=True)
    run_cli("models", "pull", "colour-words", env=env, check=True, timeout=300)
    names = {colour: {p.name for p in paths} for colour, paths in library.items()}
    for word, colour in [("rouge", "red"), ("une voiture rouge", "red"), ("синий", "blue"), ("黄", "yellow"),
                         ("초록", "green"), ("grün", "green")]:
        answer = run_cli("query", word, "--text-model", "colour-words", "--top", "2", "--paths", "--no-server", env=env)
        assert answer.returncode == 0, answer.stderr
        assert {os.path.basename(line) for line in answer.stdout.decode().splitlines()} == names[colour], word
    english_only = run_cli("query", "rouge", "--no-server", env=env)
    assert english_only.returncode != 0 and b"cancel out" in english_only.stderr

    server = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", "--port", "0"], cwd=REPO,
                              env=dict(os.environ, **env, CLIPSEARCH_TEXT_MODEL="colour-words"),
                              stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line, "serve stopped before it served"
            found = re.search(r"serving .* at (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        while "Ctrl-C" not in line:
            line = server.stderr.readline()
        with urllib.request.urlopen(url + "api/search?q=" + urllib.parse.quote("красный") + "&top=2", timeout=30) as r:
            body = json.loads(r.read())
        assert {result["name"] for result in body["results"]} == names["red"]
        # The server reads queries with its text tower: a query without it runs cold, with the
        # colour model's own English tower, for which "rouge" means nothing.
        assert run_cli("query", "rouge", env=env).returncode != 0
        warm = run_cli("query", "rouge", "--text-model", "colour-words", "--top", "2", "--paths", env=env)
        assert {os.path.basename(line) for line in warm.stdout.decode().splitlines()} == names["red"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    labels = tmp_path / "labels.txt"
    labels.write_text("rouge\nbleu\n", encoding="utf-8")
    tagged = run_cli("tag", "--labels", str(labels), "--text-model", "colour-words", "--per-photo", "1",
                     "--min-score", "0.5", env=env)
    assert tagged.returncode == 0, tagged.stderr
    for path in library["red"]:
        assert "rouge" in path.with_name(path.name + ".xmp").read_text(encoding="utf-8")
    assert not library["green"][0].with_name(library["green"][0].name + ".xmp").exists()


def test_a_tower_made_for_another_image_tower_is_refused_in_one_line(tmp_path, hub, tiny_model):
    env = environment(tmp_path, hub, serve_layout(hub, "sentence-transformers", "someone/other-vit"))
    colour_library(tmp_path / "photos", per_colour=1)
    db = str(tmp_path / "index.db")
    run_cli("index", str(tmp_path / "photos"), "--db", db, "--model", str(tiny_model), "--workers", "1", env=env,
            check=True)
    run_cli("models", "pull", "multilingual", env=env, check=True, timeout=300)
    answer = run_cli("query", "a cat", "--db", db, "--model", str(tiny_model), "--text-model", "multilingual", env=env)
    err = answer.stderr.decode().strip()
    assert answer.returncode == 5 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "someone/other-vit" in err and text_hub.model_id(tiny_model) in err and "--text-model" in err
    # Given as --model, a text-only folder is refused with what to do instead.
    wrong = run_cli("index", str(tmp_path / "photos"), "--db", db, "--model", str(tmp_path / "home" / "models" /
                                                                                 "multilingual"), env=env)
    assert wrong.returncode != 0 and b"text-only model" in wrong.stderr and b"--text-model multilingual" in wrong.stderr


def test_too_little_memory_to_quantize_is_said_before_it_starts(tmp_path, hub):
    env = dict(environment(tmp_path, hub, serve_layout(hub, "immich-mclip", "x", pinned=False)),
               CLIPSEARCH_MEMORY_AVAILABLE=str(100_000))
    result = run_cli("models", "pull", "multilingual", env=env, timeout=300)
    err = result.stderr.decode()
    assert result.returncode != 0 and "Traceback" not in err
    assert "needs about" in err and "memory" in err and "pull it on a machine with more memory" in err
    assert not (tmp_path / "home" / "models" / "multilingual").exists()


def test_an_external_data_name_leaving_the_folder_is_refused(tmp_path):
    import onnx

    from clipsearch.model.layouts import UnsupportedSource
    from clipsearch.model.text_layouts import external_data_files

    graph = onnx.load(str(text_hub.TOWERS / "immich-mclip" / "textual" / "model.onnx"), load_external_data=False)
    tensor = next(t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    next(e for e in tensor.external_data if e.key == "location").value = "../../../etc/passwd"
    onnx.save(graph, str(tmp_path / "model.onnx"))
    with pytest.raises(UnsupportedSource, match="outside the graph's folder"):
        external_data_files(tmp_path / "model.onnx", "test")
    assert external_data_files(text_hub.TOWERS / "immich-mclip" / "textual" / "model.onnx", "t") == ["model.onnx_data"]


def test_without_safetensors_the_pull_says_which_extra_in_one_line(tmp_path, hub):
    shim = tmp_path / "shim" / "safetensors"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'safetensors'\", name='safetensors')\n")
    env = dict(environment(tmp_path, hub, serve_layout(hub, "sentence-transformers", "x")),
               PYTHONPATH=str(tmp_path / "shim"))
    result = run_cli("models", "pull", "multilingual", env=env, timeout=300)
    err = result.stderr.decode().strip()
    assert result.returncode != 0 and "Traceback" not in err, err
    assert err.splitlines()[-1].endswith("needs the safetensors package: pip install 'clipsearch[models]'")
    assert not (tmp_path / "home" / "models" / "multilingual").exists()


@pytest.mark.parametrize("path, content, words", [
    ("modules.json", '[{"idx": 0, "type": "sentence_transformers.models.Transformer", "path": ""}]', "modules.json runs"),
    ("modules.json", "not json", "modules.json: unreadable"),
    ("1_Pooling/config.json", '{"pooling_mode_cls_token": true}', "pools by"),
    ("2_Dense/config.json", '{"in_features": 32, "out_features": 64, "bias": false}', "no linear.weight of shape (64, 32)"),
    ("2_Dense/config.json", '{"in_features": 32, "out_features": 32, "bias": false, "activation_function": "os.system"}',
     "activation 'os.system'"),
    ("2_Dense/model.safetensors", "\x00" * 16, "2_Dense/model.safetensors: unreadable"),
    ("sentence_bert_config.json", '{"max_seq_length": 100000}', "max_seq_length=100000"),
    ("tokenizer.json", "{}", "not a tokenizer.json"),
    ("onnx/model.onnx", "\x08\xff\xff garbage", "not an ONNX graph"),
])
def test_a_repo_the_runtime_cannot_reproduce_is_refused_in_one_line(tmp_path, hub, path, content, words):
    entries = serve_layout(hub, "sentence-transformers", "x", pinned=False)
    folder = hub.root / entries["multilingual"][0] / hubserver.COMMIT
    (folder / path).write_text(content, encoding="latin-1")
    result = run_cli("models", "pull", "multilingual", env=environment(tmp_path, hub, entries), timeout=300)
    err = result.stderr.decode()
    lines = [line for line in err.splitlines() if not line.startswith(("pulling ", "note: "))]
    assert result.returncode == 3 and len(lines) == 1 and words in lines[0] and "nothing was installed" in lines[0], err
    assert not (tmp_path / "home" / "models" / "multilingual").exists()
    assert not [p for p in (tmp_path / "home" / "models").iterdir()]  # no work folder or download left
