"""The export step on tiny random-weight CLIPs (needs the export extra: torch, transformers, onnx)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers import DATA, REPO, write_photo  # noqa: E402

from clipsearch.model.encoders import ImageEncoder, TextEncoder  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402

pytestmark = pytest.mark.export


def run_export(*args, env=None):
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, **(env or {})), timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    result = run_export("--random-weights", "--tiny", "--seed", "0", "--out", str(out), "--keep-fp32")
    assert result.returncode == 0, result.stderr
    return out


def test_random_export_writes_the_four_files_and_a_complete_manifest(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["manifest.json", "text.onnx", "text.onnx.data", "tokenizer.json",
                                                         "vision.onnx"]
    assert json.loads((exported / "manifest.json").read_text())["graphs"]["text"]["external_data"] == "text.onnx.data"
    data = json.loads((exported / "manifest.json").read_text())
    assert data["source"] == {"kind": "random", "seed": 0, "tiny": True}
    assert data["precision"] == "int8" and data["quantization"]["weight_type"] == "QInt8" and data["quantization"]["reduce_range"]
    assert data["text"]["end_token_id"] == 49407 and data["text"]["context_length"] == 77
    for tower in ("vision", "text"):
        fid = data["fidelity"][tower]
        assert fid["torch_vs_fp32_onnx"]["min"] >= 0.9999 and fid["torch_vs_fp32_onnx"]["max_abs_diff"] < 1e-4
        assert fid["int8_vs_fp32_onnx"]["min"] >= 0.97
    for name, entry in data["files"].items():
        assert (exported / name).stat().st_size == entry["size"] and len(entry["sha256"]) == 64
    assert {"torch", "transformers", "onnx", "onnxruntime", "opset"} <= set(data["export"])
    assert len(data["reference"]["vision"]["first_values"]) == 8
    fp32 = load_manifest(exported.parent / "tiny-fp32")
    assert fp32.data["precision"] == "fp32" and fp32.model_id != data["model_id"]


def test_committed_tiny_model_is_still_reproducible(exported):
    committed = json.loads((DATA / "tiny-model" / "manifest.json").read_text())
    fresh = json.loads((exported / "manifest.json").read_text())
    for tower in ("vision", "text"):
        assert np.allclose(committed["reference"][tower]["first_values"], fresh["reference"][tower]["first_values"],
                           atol=1e-4), tower


def test_source_folder_export_matches_pytorch(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    from export.checkpoint import save_random_checkpoint

    checkpoint = save_random_checkpoint(tmp_path / "my-checkpoint", seed=7, tiny=True)
    out = tmp_path / "model"
    result = run_export("--source", str(checkpoint), "--out", str(out), "--keep-fp32")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out)
    assert manifest.data["source"] == {"kind": "local", "path": str(checkpoint)} and manifest.name == "my-checkpoint"

    clip = CLIPModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    tokenizer = CLIPTokenizer.from_pretrained(checkpoint)
    texts = ["a photo of a dog", "a red bicycle leaning on a wall"]
    photos = [write_photo(tmp_path / f"p{i}.jpg", (40 * i, 200 - 30 * i, 90), size=(300 + 50 * i, 240)) for i in range(3)]
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        ref_text = clip.get_text_features(input_ids=batch["input_ids"])
        ref_text = getattr(ref_text, "pooler_output", ref_text).numpy()
        pixels = ImageEncoder(manifest)  # the runtime's own preprocessing feeds both sides
        from clipsearch.photos.preprocess import load_pixels
        px = np.stack([load_pixels(p, manifest.image) for p in photos])
        ref_image = clip.get_image_features(pixel_values=torch.from_numpy(px))
        ref_image = getattr(ref_image, "pooler_output", ref_image).numpy()
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    fp32 = load_manifest(tmp_path / "model-fp32")
    assert np.abs(TextEncoder(fp32).encode(texts) - unit(ref_text)).max() < 1e-4
    assert np.abs(ImageEncoder(fp32).encode_pixels(px) - unit(ref_image)).max() < 1e-4
    int8_text, int8_image = TextEncoder(manifest).encode(texts), pixels.encode_pixels(px)
    assert np.min(np.sum(int8_text * unit(ref_text), axis=1)) > 0.99
    assert np.min(np.sum(int8_image * unit(ref_image), axis=1)) > 0.99


def test_hub_export_without_network_fails_with_advice(tmp_path):
    result = run_export("--out", str(tmp_path / "m"), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert "--source" in result.stderr and "--random-weights" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_unreachable_hub_fails_fast_in_one_line(tmp_path):
    import time

    started = time.monotonic()
    result = run_export("--out", str(tmp_path / "m"), env={"HF_ENDPOINT": "http://127.0.0.1:9",
                                                            "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 1 and "Retrying" not in result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("export: loading")]
    assert len(errors) == 1 and "cannot reach the model hub (127.0.0.1" in errors[0] and "--source" in errors[0]
    assert time.monotonic() - started < 25  # transformers alone retried for ~30 s
    assert not (tmp_path / "m").exists()


def test_shipped_rank_graph_is_what_the_generator_writes():
    from export.rank_graph import TARGET, build

    assert TARGET.read_bytes() == build()


def _checkpoint_with_processor(folder, **config):
    from export.checkpoint import save_random_checkpoint

    checkpoint = save_random_checkpoint(folder, seed=3, tiny=True)
    processor = {"do_resize": True, "size": {"shortest_edge": 80}, "resample": 3, "do_center_crop": True,
                 "crop_size": {"height": 64, "width": 64}, "do_rescale": True, "rescale_factor": 1 / 255,
                 "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                 "image_processor_type": "CLIPImageProcessor"}
    processor.update(config)
    (checkpoint / "preprocessor_config.json").write_text(json.dumps(processor))
    return checkpoint, processor


def test_source_export_takes_the_checkpoints_own_preprocessing(tmp_path):
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from clipsearch.photos.preprocess import to_pixels

    checkpoint, config = _checkpoint_with_processor(tmp_path / "half-normalised")
    out = tmp_path / "model"
    result = run_export("--source", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr
    image = load_manifest(out).image
    assert image["mean"] == [0.5, 0.5, 0.5] and image["std"] == [0.5, 0.5, 0.5]
    assert image["shortest_side"] == 80 and image["size"] == 64
    processor = CLIPImageProcessorPil(size=config["size"], crop_size=config["crop_size"],
                                      image_mean=config["image_mean"], image_std=config["image_std"])
    for size in ((300, 200), (100, 150)):  # even crop margins: torchvision and transformers round odd ones apart
        img = Image.open(write_photo(tmp_path / f"{size[0]}.png", (200, 90, 30), size=size, grain=25)).convert("RGB")
        theirs = np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0])
        assert np.abs(to_pixels(img, image) - theirs).max() < 1e-4, size


@pytest.mark.parametrize("change, words", [
    ({"resample": 2}, "bicubic"),
    ({"size": {"height": 64, "width": 64}}, "shortest side"),
    ({"crop_size": {"height": 64, "width": 48}}, "square"),
    ({"crop_size": {"height": 32, "width": 32}}, "takes 64x64"),
    ({"do_center_crop": False}, "centre crop"),
])
def test_source_export_refuses_preprocessing_the_runtime_cannot_reproduce(tmp_path, change, words):
    checkpoint, _ = _checkpoint_with_processor(tmp_path / "odd", **change)
    out = tmp_path / "model"
    result = run_export("--source", str(checkpoint), "--out", str(out))
    assert result.returncode == 1 and words in result.stderr and "nothing was written" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_an_unknown_catalogue_name_is_one_line():
    result = run_export("--model", "no-such-model")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("export: unknown model 'no-such-model'; known models: datacomp-vit-b-32, "
                                     "laion2b-vit-b-32, openai-vit-b-32")
