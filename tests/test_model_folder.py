"""Manifest validation, encoders, lazy sessions, and the torch-free runtime."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import COLOURS, REPO, colour_library, run_cli, write_photo

from clipsearch.cache.packed import quantize_rows
from clipsearch.cli.main import main
from clipsearch.errors import ModelError
from clipsearch.model.encoders import ImageEncoder, TextEncoder, check_reference
from clipsearch.model.manifest import load_manifest
from clipsearch.search.query import Term, query_vector


def test_tiny_model_loads_and_reproduces_its_reference(tiny_model):
    manifest = load_manifest(tiny_model)
    for tower in ("text", "vision"):
        assert check_reference(manifest, tower) < 1e-4
    text = TextEncoder(manifest).encode(["a photo of a cat", "a dog"])
    assert text.shape == (2, manifest.embedding_dim)
    assert np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)


def test_text_ids_are_cut_after_each_texts_own_end_token(tiny_model):
    manifest = load_manifest(tiny_model)
    encoder = TextEncoder(manifest)
    short, long = encoder.token_ids(["a cat", "a much longer sentence about a cat on a mat"])
    end = manifest.text["end_token_id"]
    assert short.shape == (1, 4) and short[0, -1] == end and short[0, 0] == manifest.text["start_token_id"]
    assert long.shape[1] > 4 and long[0, -1] == end
    full = np.array([e.ids for e in encoder.tokenizer.encode_batch(["a cat"])], dtype=np.int64)
    assert full.shape == (1, 77)
    graph = manifest.graph("text")
    full_vec = encoder.session.run(None, {graph["input"]: full})[0]
    cut_vec = encoder.session.run(None, {graph["input"]: short})[0]
    # Identical in fp32 (causal mask); int8's dynamic per-tensor activation scale also sees
    # the padding, so the two differ by quantization noise only.
    cosine = float(full_vec[0] @ cut_vec[0] / np.linalg.norm(full_vec) / np.linalg.norm(cut_vec))
    assert cosine > 0.999


def test_an_embedding_does_not_depend_on_what_else_is_in_the_batch(tiny_model):
    """Bit-identical alone and beside other inputs, extreme ones included: the int8 graphs
    quantize activations per input tensor, so inputs must never share a graph run."""
    manifest = load_manifest(tiny_model)
    size = int(manifest.image["size"])
    rng = np.random.default_rng(0)
    photo = rng.normal(0, 1, (3, size, size)).astype(np.float32)
    neighbours = [np.full((3, size, size), 40.0, np.float32), rng.normal(0, 9, (3, size, size)).astype(np.float32),
                  np.zeros((3, size, size), np.float32)]
    image = ImageEncoder(manifest, threads=1)
    alone = image.encode_pixels(photo[None])[0]
    for other in neighbours:
        assert np.array_equal(image.encode_pixels(np.stack([other, photo]))[1], alone)
    assert np.array_equal(ImageEncoder(manifest).encode_pixels(np.stack([photo, *neighbours]))[0], alone)

    text = TextEncoder(manifest)
    alone = text.encode(["a kitten peeking from behind a corner"])[0]
    beside = text.encode(["a kitten peeking from behind a corner", "!!!! " * 60, "x"])[0]
    assert np.array_equal(alone, beside)


def test_encoders_open_only_their_own_graph(tiny_model):
    manifest = load_manifest(tiny_model)
    text, image = TextEncoder(manifest), ImageEncoder(manifest)
    assert text._session is None and image._session is None
    text.encode(["hello"])
    assert text._session is not None and image._session is None


def test_text_query_never_opens_the_vision_graph(colour_model, tmp_path):
    """The real CLI in a fresh process: with vision.onnx deleted after indexing, queries still work."""
    colour_library(tmp_path / "photos", per_colour=1)
    db = tmp_path / "index.db"
    run_cli("index", str(tmp_path / "photos"), "--db", str(db), "--model", str(colour_model), "--workers", "1", check=True)
    (colour_model / "vision.onnx").unlink()
    result = run_cli("query", "red", "--db", str(db), "--model", str(colour_model), "--paths", "--top", "1", check=True)
    assert result.stdout.decode().strip().endswith("red_0.jpg")
    like = run_cli("query", "--like", str(tmp_path / "photos" / "album0" / "red_0.jpg"), "--db", str(db),
                   "--model", str(colour_model))
    assert like.returncode == 3 and b"vision.onnx: model file is missing" in like.stderr


def test_runtime_never_imports_torch_or_transformers():
    # Every module of the package, imported for real (tests/test_layout.py checks the source too).
    code = (
        "import importlib, pkgutil, sys, clipsearch\n"
        "for m in pkgutil.walk_packages(clipsearch.__path__, 'clipsearch.'):\n"
        "    if m.name != 'clipsearch.__main__' and m.name != 'clipsearch.index.cluster': importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'export')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("damage, words", [
    (lambda f: (f / "text.onnx").unlink(), "model file is missing"),
    (lambda f: (f / "text.onnx.data").unlink(), "model file is missing"),
    (lambda f: (f / "text.onnx.data").write_bytes(b"\0" * (f / "text.onnx.data").stat().st_size), "sha256 does not match"),
    (lambda f: (f / "text.onnx").write_bytes((f / "text.onnx").read_bytes()[:-10]), "manifest says"),
    (lambda f: (f / "tokenizer.json").write_bytes(b"X" + (f / "tokenizer.json").read_bytes()[1:]), "sha256 does not match"),
    (lambda f: (f / "manifest.json").unlink(), "no model manifest here"),
    (lambda f: (f / "manifest.json").write_text("{not json"), "unreadable manifest"),
    (lambda f: (f / "manifest.json").write_text(json.dumps(dict(json.loads((f / "manifest.json").read_text()), format_version=99))),
     "format version 99 is not supported"),
])
def test_damaged_model_folder_gives_a_clear_error(tiny_model, damage, words):
    damage(tiny_model)
    with pytest.raises(ModelError, match=words):
        TextEncoder(load_manifest(tiny_model)).encode(["a cat"])
    result = CliRunner().invoke(main, ["check-model", "--model", str(tiny_model)])
    assert result.exit_code == 3 and words in result.output and "Traceback" not in result.output


def test_altered_file_is_caught_even_after_a_successful_verification(tiny_model):
    TextEncoder(load_manifest(tiny_model)).encode(["warm the verification stamp"])
    data = bytearray((tiny_model / "text.onnx").read_bytes())
    data[5000] ^= 0xFF
    (tiny_model / "text.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        TextEncoder(load_manifest(tiny_model)).encode(["a cat"])


def test_check_model_command(tiny_model):
    result = CliRunner().invoke(main, ["check-model", "--model", str(tiny_model)])
    assert result.exit_code == 0 and "text: ok" in result.output and "vision: ok" in result.output


def test_missing_default_model_says_how_to_export(tmp_path):
    write_photo(tmp_path / "p" / "a.jpg", COLOURS["red"])
    result = CliRunner().invoke(main, ["index", str(tmp_path / "p")])
    assert result.exit_code == 3 and "clipsearch models pull" in result.output and "python -m export" in result.output


def test_tokenizer_prefetch_in_a_child_matches_and_falls_back(tiny_model):
    from clipsearch.model.tokens import TokenPrefetch, encode_texts

    manifest = load_manifest(tiny_model)
    texts = ["a kitten peeking from behind a corner", "東京の夜景 🎉", "Don\u2019t &amp; ﬁsh"]
    direct = encode_texts(TextEncoder(manifest).tokenizer, texts)
    assert direct[2] == encode_texts(TextEncoder(manifest).tokenizer, ["don't & fish"])[0]
    assert TokenPrefetch(manifest, texts).ids(texts) == direct
    encoder = TextEncoder(manifest, prefetch=TokenPrefetch(manifest, texts))
    assert np.allclose(encoder.encode(texts), TextEncoder(manifest).encode(texts), atol=1e-6)
    (tiny_model / "tokenizer.json").write_text("{}")  # the child fails; the caller gets None
    assert TokenPrefetch(manifest, texts).ids(texts) is None


def test_like_query_vector_equals_the_cached_vector_of_that_photo(tiny_model, tmp_path):
    """Indexed in batches of 8 by two worker processes with one thread each, then used as
    `--like` in a query process with all cores: the same vector, to the bit."""
    photos = [write_photo(tmp_path / "p" / f"{i}.jpg", (30 * i, 250 - 30 * i, 120), grain=4 + 10 * i, seed=i)
              for i in range(8)]
    db = tmp_path / "index.db"
    result = CliRunner().invoke(main, ["index", str(tmp_path / "p"), "--db", str(db), "--model", str(tiny_model),
                                       "--workers", "2", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tiny_model)
    with sqlite3.connect(db) as con:
        cached = {os.fsdecode(p): (v, s) for p, v, s in con.execute("SELECT filepath, vector, scale FROM images")}
    for photo in (photos[0], photos[5]):
        vector = query_vector([Term("image", str(photo), 1.0)], manifest)
        q, scale = quantize_rows(vector[None])
        assert (q[0].tobytes(), float(scale[0])) == cached[str(photo)]


@pytest.mark.parametrize("how", ["option", "env"])
def test_exact_decode_embeds_the_full_decode_and_like_follows_the_cache(tiny_model, tmp_path, monkeypatch, how):
    from clipsearch.photos.preprocess import load_pixels

    photo = write_photo(tmp_path / "p" / "big.jpg", (90, 140, 200), size=(1600, 1200), grain=25)
    db = tmp_path / "index.db"
    args = ["index", str(tmp_path / "p"), "--db", str(db), "--model", str(tiny_model), "--workers", "1"]
    if how == "option":
        args.append("--exact-decode")
    else:
        monkeypatch.setenv("CLIPSEARCH_EXACT_DECODE", "1")
    assert CliRunner().invoke(main, args).exit_code == 0
    manifest = load_manifest(tiny_model)
    encoder = ImageEncoder(manifest)
    exact = quantize_rows(encoder.encode_pixels(load_pixels(photo, manifest.image, use_draft=False)[None]))
    draft = quantize_rows(encoder.encode_pixels(load_pixels(photo, manifest.image, use_draft=True)[None]))
    with sqlite3.connect(db) as con:
        ((vector, scale),) = con.execute("SELECT vector, scale FROM images").fetchall()
        (pipeline,) = con.execute("SELECT value FROM meta WHERE key = 'pipeline'").fetchone()
    assert (vector, scale) == (exact[0][0].tobytes(), float(exact[1][0]))
    assert vector != draft[0][0].tobytes() and "exact" in pipeline
    like = quantize_rows(query_vector([Term("image", str(photo), 1.0)], manifest, pipeline=pipeline)[None])
    assert like[0][0].tobytes() == vector
