"""`clipsearch models pull` against a hub-shaped server on 127.0.0.1 (`HF_ENDPOINT`, as a
mirror user would set it), holding tiny random-weight towers in both published layouts: the
real download, quantization, fidelity check and model folder, then index and query with it.
No PyTorch: runs in the runtime-only environment too (with the onnx package)."""
from __future__ import annotations

import hashlib
import json
import math
import os

import pytest

pytest.importorskip("onnx", reason="pulling quantizes with onnx: pip install 'clipsearch[models]'")

import hubserver  # noqa: E402
from helpers import COLOURS, REPO, colour_library, run_cli  # noqa: E402

XENOVA_FILES = ["onnx/vision_model.onnx", "onnx/text_model.onnx", "tokenizer.json", "preprocessor_config.json",
                "config.json"]
IMMICH_FILES = ["visual/model.onnx", "textual/model.onnx", "textual/tokenizer.json", "visual/preprocess_cfg.json",
                "config.json"]


@pytest.fixture
def hub(tmp_path):
    server = hubserver.Hub(tmp_path / "hub")
    yield server
    server.close()


@pytest.fixture
def env(tmp_path, hub):
    """What a user's shell would have: a data dir, and the hub's address in HF_ENDPOINT."""
    home = tmp_path / "home"
    return {"CLIPSEARCH_HOME": str(home), "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": ""}


def with_catalogue(env, tmp_path, hub, layout="transformers.js", pinned=True, **repo_options):
    if layout == "transformers.js":
        repo, files = "Xenova/tiny-clip", XENOVA_FILES
        folder = hubserver.transformers_js_repo(hub.repo(repo, hubserver.COMMIT), **repo_options)
    else:
        repo, files = "immich-app/tiny-clip", IMMICH_FILES
        folder = hubserver.immich_repo(hub.repo(repo, hubserver.COMMIT), **repo_options)
    pins = hubserver.pinned_files(folder, files) if pinned else dict.fromkeys(files)
    path = hubserver.catalogue(tmp_path / "catalogue.json", {"tiny": (repo, hubserver.COMMIT, layout, pins)})
    return dict(env, CLIPSEARCH_CATALOGUE=str(path)), folder


def pull(env, *args, timeout=300):
    return run_cli("models", "pull", *args, env=env, timeout=timeout)


def said(err: str) -> list[str]:
    """What a pull printed besides its first line ("pulling NAME from REPO@REV")."""
    return [line for line in err.splitlines() if not line.startswith("pulling ")]


def model_dir(env, name="tiny"):
    return os.path.join(env["CLIPSEARCH_HOME"], "models", name)


def index_and_query(env, tmp_path, model):
    colour_library(tmp_path / "photos", per_colour=1)
    db = str(tmp_path / "index.db")
    indexed = run_cli("index", str(tmp_path / "photos"), "--db", db, "--model", model, "--workers", "1", env=env)
    assert indexed.returncode == 0 and b"8 new" in indexed.stderr, indexed.stderr
    answer = run_cli("query", "red", "--db", db, "--model", model, "--json", "--top", "8", env=env)
    assert answer.returncode == 0, answer.stderr
    return [json.loads(line) for line in answer.stdout.splitlines()]


@pytest.mark.parametrize("layout", ["transformers.js", "immich"])
def test_pull_then_check_index_and_query(tmp_path, hub, env, layout):
    env, _ = with_catalogue(env, tmp_path, hub, layout)
    result = pull(env, "tiny")
    err = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    assert f"installed tiny at {model_dir(env)}" in err and "no sha256 pinned" not in err, err
    manifest = json.loads(open(os.path.join(model_dir(env), "manifest.json")).read())
    assert manifest["source"]["layout"] == layout and manifest["source"]["pinned"] is True
    assert manifest["source"]["commit"] == hubserver.COMMIT and manifest["precision"] == "int8"
    assert manifest["image"]["size"] == hubserver.IMAGE_SIZE and manifest["embedding_dim"] == hubserver.DIM
    assert manifest["fidelity"]["vision"]["int8_vs_fp32_onnx"]["min"] > 0.97
    text = manifest["graphs"]["text"]
    if layout == "immich":
        assert (text["input_dtype"], text["fixed_length"], text.get("mask_input")) == ("int32", 77, None)
    else:
        assert text["mask_input"] == "attention_mask" and "fixed_length" not in text
    check = run_cli("check-model", "--model", model_dir(env), env=env)
    assert check.returncode == 0 and b"vision: ok" in check.stdout and b"text: ok" in check.stdout, check.stderr
    rows = index_and_query(env, tmp_path, model_dir(env))
    assert len(rows) == len(COLOURS) and all(-1.0 <= row["score"] <= 1.0 for row in rows)
    listed = run_cli("models", "list", "--json", env=env)
    assert json.loads(listed.stdout.splitlines()[0])["installed"] is True
    # No download is left behind, and pulling the same entry again gives the same model id.
    assert not [p for p in os.listdir(os.path.dirname(model_dir(env))) if p.startswith(".")]
    again = pull(env, "tiny")
    assert again.returncode == 0, again.stderr
    assert json.loads(open(os.path.join(model_dir(env), "manifest.json")).read())["model_id"] == manifest["model_id"]


def test_the_default_model_is_used_by_index_and_query_without_options(tmp_path, hub, env):
    env, _ = with_catalogue(env, tmp_path, hub)
    path = json.loads(open(env["CLIPSEARCH_CATALOGUE"]).read())
    path["default"] = "openai-vit-b-32"
    path["models"]["openai-vit-b-32"] = path["models"].pop("tiny")
    open(env["CLIPSEARCH_CATALOGUE"], "w").write(json.dumps(path))
    assert pull(env).returncode == 0
    colour_library(tmp_path / "photos", per_colour=1)
    assert run_cli("index", str(tmp_path / "photos"), env=env).returncode == 0
    answer = run_cli("query", "red", "--paths", env=env)
    assert answer.returncode == 0 and len(answer.stdout.splitlines()) == 8, answer.stderr


def test_an_unpinned_repo_is_pulled_with_a_note_and_its_layout_found(tmp_path, hub, env):
    hubserver.immich_repo(hub.repo("someone/their-clip"))
    result = pull(env, "--repo", "someone/their-clip")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "(immich layout)" in err and "no sha256 pinned" in err, err
    assert os.path.isfile(os.path.join(model_dir(env, "their-clip"), "manifest.json"))


def test_a_wrong_sha256_installs_nothing(tmp_path, hub, env):
    env, folder = with_catalogue(env, tmp_path, hub)
    (folder / "onnx" / "vision_model.onnx").write_bytes((folder / "onnx" / "vision_model.onnx").read_bytes()[:-1] + b"\0")
    result = pull(env, "tiny")
    err = result.stderr.decode()
    assert result.returncode == 7 and len(said(err)) == 1, err
    assert "onnx/vision_model.onnx" in err and "altered on the hub or in transit" in err and "nothing was installed" in err
    assert not os.path.exists(model_dir(env))
    partials = [name for _, _, names in os.walk(os.path.dirname(model_dir(env))) for name in names if ".part" in name]
    assert partials == []  # the bad bytes are not kept for a later pull to resume from


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, hub, env):
    env, folder = with_catalogue(env, tmp_path, hub)
    size = (folder / "onnx" / "vision_model.onnx").stat().st_size
    hub.cut_after["onnx/vision_model.onnx"] = size // 3  # the server goes away a third into the file
    first = pull(env, "tiny")
    err = first.stderr.decode()
    assert first.returncode == 7 and "download interrupted" in err and "run the same command again to resume" in err, err
    assert len(said(err)) == 1 and "Traceback" not in err
    assert not os.path.exists(model_dir(env))
    hub.requests.clear()
    second = pull(env, "tiny")
    assert second.returncode == 0, second.stderr
    ranges = [rng for path, rng in hub.requests if path.endswith("vision_model.onnx")]
    assert ranges == [f"bytes={size // 3}-"], hub.requests
    manifest = json.loads(open(os.path.join(model_dir(env), "manifest.json")).read())
    assert manifest["fidelity"]["sizes_mb"]["vision_download_mb"] == round(size / 1e6, 1)


def test_an_unreachable_hub_is_one_line_saying_what_to_do(tmp_path, hub, env):
    env, _ = with_catalogue(env, tmp_path, hub)
    hub.close()
    result = pull(env, "tiny")
    err = result.stderr.decode()
    assert result.returncode == 7 and len(said(err)) == 1, err
    assert "cannot reach the model hub" in err and "copy a model folder made elsewhere" in err and "HF_ENDPOINT" in err


def test_a_repo_missing_a_file_names_it(tmp_path, hub, env):
    env, folder = with_catalogue(env, tmp_path, hub, pinned=False)
    (folder / "onnx" / "text_model.onnx").unlink()
    result = pull(env, "tiny")
    err = result.stderr.decode()
    assert result.returncode == 7 and "onnx/text_model.onnx: not found (404)" in err, err
    assert not os.path.exists(model_dir(env))


def test_the_sources_own_mean_and_std_are_used(tmp_path, hub, env):
    env, _ = with_catalogue(env, tmp_path, hub, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert pull(env, "tiny").returncode == 0
    image = json.loads(open(os.path.join(model_dir(env), "manifest.json")).read())["image"]
    assert image["mean"] == [0.5, 0.5, 0.5] and image["std"] == [0.25, 0.25, 0.25]


def test_preprocessing_the_runtime_cannot_reproduce_is_refused(tmp_path, hub, env):
    env, _ = with_catalogue(env, tmp_path, hub, resample=2)  # bilinear
    result = pull(env, "tiny")
    err = result.stderr.decode()
    assert result.returncode == 3 and "resample=2" in err and "nothing was installed" in err, err
    assert not os.path.exists(model_dir(env))


def test_remove(tmp_path, hub, env):
    env, _ = with_catalogue(env, tmp_path, hub)
    assert pull(env, "tiny").returncode == 0
    assert run_cli("models", "remove", "tiny", env=env).returncode == 0
    assert not os.path.exists(model_dir(env))
    missing = run_cli("models", "remove", "tiny", env=env)
    assert missing.returncode == 2 and b"no model 'tiny'" in missing.stderr


def test_a_maintainer_pins_an_entry_and_users_then_verify_against_it(tmp_path, hub, env):
    """models/pin.py resolves the revision to the commit served and records sizes and sha256s;
    a later change of a file on the hub is then caught before anything is installed."""
    import subprocess
    import sys

    from helpers import REPO

    env, folder = with_catalogue(env, tmp_path, hub, pinned=False)
    catalogue = json.loads(open(env["CLIPSEARCH_CATALOGUE"]).read())
    catalogue["models"]["tiny"]["pull"]["revision"] = "main"
    open(env["CLIPSEARCH_CATALOGUE"], "w").write(json.dumps(catalogue))
    hubserver.transformers_js_repo(hub.repo("Xenova/tiny-clip", "main"))
    pinned = subprocess.run([sys.executable, "models/pin.py", "tiny"], cwd=REPO, env=dict(os.environ, **env),
                            capture_output=True, text=True, timeout=120)
    assert pinned.returncode == 0, pinned.stderr
    entry = json.loads(open(env["CLIPSEARCH_CATALOGUE"]).read())["models"]["tiny"]["pull"]
    assert entry["revision"] == hubserver.COMMIT
    assert entry["files"] == hubserver.pinned_files(folder, XENOVA_FILES)
    listed = json.loads(run_cli("models", "list", "--json", env=env).stdout.splitlines()[0])
    assert listed["pinned"] is True and listed["download_mb"] == round(sum(f["size"] for f in entry["files"].values()) / 1e6)
    (folder / "config.json").write_text('{"model_type": "clip", "projection_dim": 8}')
    changed = pull(env, "tiny")
    assert changed.returncode == 7 and b"config.json" in changed.stderr and b"altered" in changed.stderr


# -- the shipped catalogue: pinned sources of the default model, tried in order, and known answers

DEFAULT = "openai-vit-b-32"
SHIPPED = json.loads((REPO / "clipsearch" / "model" / "catalogue.json").read_text())
PUBLISHED = {  # issue 21's table: where each hash was published (Git LFS pointers, public manifests)
    ("Xenova/clip-vit-base-patch32", "onnx/vision_model.onnx"): (351685709, "fd6e1402a588279d1723c7534d4bcba5bc0b14b47dfab0e46f8c47b8270d7d40"),
    ("Xenova/clip-vit-base-patch32", "onnx/text_model.onnx"): (254058553, "3f6571f5bad13a97c469c1622e1cfc4d9aef78b79fdbfcff804ca357bfada8cc"),
    ("Xenova/clip-vit-base-patch32", "tokenizer.json"): (2224119, "f7f3b7af117d467b58374797691a6438d3e6b9e9cef800dfd5dced7f697a90cd"),
    ("Xenova/clip-vit-base-patch32", "preprocessor_config.json"): (None, "6f638fb9401a6d6296feff533ee7efe657b787c49f954f82f5906b36ef2a1b1f"),
    ("immich-app/ViT-B-32__openai", "visual/model.onnx"): (351613724, "33a3df41ceef21acdf371af00f6dd0456ec1f9eba24d03a7720f9c3734e40859"),
    ("immich-app/ViT-B-32__openai", "textual/model.onnx"): (254193396, "b80cf0af751533a6712d92247f0ddc0c95208748bc59a1a27f33e67be6864e3b"),
    ("immich-app/ViT-B-32__openai", "textual/tokenizer.json"): (3642073, "6d9109cc838977f3ca94a379eec36aecc7c807e1785cd729660ca2fc0171fb35"),
}


def test_the_shipped_catalogue_pins_the_default_model_as_published(env):
    sources = SHIPPED["models"][DEFAULT]["pull"]
    assert [(s["repo"], s["revision"]) for s in sources] == [
        ("Xenova/clip-vit-base-patch32", "d15189d7028b43f1d3e65039190477f6af591c2a"),
        ("immich-app/ViT-B-32__openai", "a857c8de2c07bbcfa6646adfcf31b798845afa1e")]
    pinned = {(s["repo"], path): (pin.get("size"), pin["sha256"]) for s in sources for path, pin in s["files"].items() if pin}
    assert pinned == PUBLISHED
    for answer in SHIPPED["models"][DEFAULT]["known_answers"]:
        assert (REPO / "clipsearch" / "model" / "known_answer_pictures" / answer["picture"]).is_file()
    rows = {row["name"]: row for row in map(json.loads, run_cli("models", "list", "--json", env=env).stdout.splitlines())}
    assert rows[DEFAULT]["pinned"] is True and rows[DEFAULT]["download_mb"] == 608 and rows[DEFAULT]["known_answers"] == 2
    assert rows["laion2b-vit-b-32"]["pinned"] is False
    text = run_cli("models", "list", env=env).stdout.decode()
    assert "608 MB, pinned" in text and "size not pinned, NOT pinned" in text


def default_on_the_test_hub(tmp_path, hub, env, answers=None):
    """The shipped default entry with its two sources served under their exact names and
    revisions by the test hub, holding tiny towers (the same weights in both layouts, though
    the Immich text graph sums its 77 padded positions, so its answers differ); pins
    are the tiny files' own (the hub cannot serve the real bytes), the configs unpinned where
    the shipped entry has them unpinned and checked against the entry's values."""
    entry = json.loads(json.dumps(SHIPPED["models"][DEFAULT]))
    folders = {}
    for source in entry["pull"]:
        folder = hub.repo(source["repo"], source["revision"])
        make = hubserver.transformers_js_repo if source["layout"] == "transformers.js" else hubserver.immich_repo
        folders[source["repo"]] = make(folder)
        source["files"] = {path: (hubserver.pinned_files(folder, [path])[path] if pin else None)
                           for path, pin in source["files"].items()}
    entry["preprocess"] = dict(entry["preprocess"], image_size=hubserver.IMAGE_SIZE)
    entry["embedding_dim"] = hubserver.DIM
    entry["known_answers"] = answers or []
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"format_version": 1, "default": DEFAULT, "models": {DEFAULT: entry}}))
    return dict(env, CLIPSEARCH_CATALOGUE=str(path)), folders


def installed_manifest(env):
    return json.loads(open(os.path.join(model_dir(env, DEFAULT), "manifest.json")).read())


def test_the_default_model_pulls_from_its_first_source(tmp_path, hub, env):
    env, _ = default_on_the_test_hub(tmp_path, hub, env)
    result = pull(env)
    err = result.stderr.decode()
    assert result.returncode == 0 and "from Xenova/clip-vit-base-patch32 in" in err and "no sha256" not in err, err
    assert installed_manifest(env)["source"]["repo"] == "Xenova/clip-vit-base-patch32"


@pytest.mark.parametrize("path", ["onnx/vision_model.onnx", "onnx/text_model.onnx", "tokenizer.json",
                                  "preprocessor_config.json"])
def test_a_byte_changed_in_a_pinned_file_is_refused_and_the_second_source_used(tmp_path, hub, env, path):
    env, folders = default_on_the_test_hub(tmp_path, hub, env)
    file = folders["Xenova/clip-vit-base-patch32"] / path
    expected = hashlib.sha256(file.read_bytes()).hexdigest()
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    received = hashlib.sha256(bytes(data)).hexdigest()
    result = pull(env)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    refusal = next(line for line in err.splitlines() if "altered on the hub or in transit" in line)
    assert path in refusal and expected in refusal and received in refusal, refusal
    assert "trying immich-app/ViT-B-32__openai" in err and "from immich-app/ViT-B-32__openai in" in err, err
    assert installed_manifest(env)["source"]["repo"] == "immich-app/ViT-B-32__openai"


def test_when_every_source_fails_nothing_is_installed_and_each_reason_is_given(tmp_path, hub, env):
    env, folders = default_on_the_test_hub(tmp_path, hub, env)
    (folders["Xenova/clip-vit-base-patch32"] / "tokenizer.json").write_text("{}")
    (folders["immich-app/ViT-B-32__openai"] / "textual" / "model.onnx").unlink()
    result = pull(env)
    err = result.stderr.decode()
    assert result.returncode == 7 and "Traceback" not in err, err
    final = err.strip().splitlines()[-1]
    assert final.startswith(f"Error: no source of {DEFAULT} could be installed") and "tokenizer.json" in final
    assert "textual/model.onnx: not found (404)" in final
    assert not os.path.exists(model_dir(env, DEFAULT))


def test_an_unpinned_config_is_accepted_only_with_the_catalogues_values(tmp_path, hub, env):
    env, folders = default_on_the_test_hub(tmp_path, hub, env)
    config = folders["immich-app/ViT-B-32__openai"] / "visual" / "preprocess_cfg.json"
    config.write_text(config.read_text().replace("}", ' }'))  # other bytes, same values: accepted
    (folders["Xenova/clip-vit-base-patch32"] / "config.json").write_text(
        json.dumps({"model_type": "clip", "projection_dim": hubserver.DIM + 1}))
    result = pull(env)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert f"config.json says embedding_dim {hubserver.DIM + 1}, the catalogue records {hubserver.DIM}" in err, err
    assert installed_manifest(env)["source"]["repo"] == "immich-app/ViT-B-32__openai"
    values = json.loads(config.read_text())
    values["mean"][0] += 0.01
    config.write_text(json.dumps(values))
    refused = pull(env)
    assert refused.returncode == 7 and b"says mean" in refused.stderr, refused.stderr


def answers_of_the_test_model(tmp_path, hub, env):
    """What the tiny model answers on the shipped pictures: its 'published' answers."""
    from clipsearch.model import known_answers
    from clipsearch.model.manifest import load_manifest

    plain, _ = default_on_the_test_hub(tmp_path / "first", hub, env)
    assert pull(plain).returncode == 0
    shipped = SHIPPED["models"][DEFAULT]["known_answers"]
    measured = known_answers.measure(load_manifest(model_dir(plain, DEFAULT)), shipped)
    coco = dict(shipped[0], cosines=measured[0]["got"])
    diagram = dict(shipped[1])  # probabilities at scale 100 from the cosines, as OpenAI's README gives them
    logits = [100 * c for c in measured[1]["got"]]
    top = max(logits)
    total = sum(math.exp(l - top) for l in logits)
    diagram["probabilities"] = [math.exp(l - top) / total for l in logits]
    import shutil

    shutil.rmtree(model_dir(plain, DEFAULT))
    return [coco, diagram]


def test_a_model_that_gives_the_known_answers_is_installed_and_check_model_repeats_them(tmp_path, hub, env):
    answers = answers_of_the_test_model(tmp_path, hub, env)
    env, _ = default_on_the_test_hub(tmp_path, hub, env, answers)
    result = pull(env)
    assert result.returncode == 0 and b"known answers kept (worst deviation 0.0000)" in result.stderr, result.stderr
    kept = installed_manifest(env)["known_answers"]
    assert [a["picture"] for a in kept] == [a["picture"] for a in answers] and all(a["order_kept"] for a in kept)
    check = run_cli("check-model", "--model", model_dir(env, DEFAULT), env=env)
    assert check.returncode == 0 and b"known answers: ok (2 pictures" in check.stdout, check.stderr


@pytest.mark.parametrize("change", ["cosine", "order"])
def test_a_model_that_misses_a_known_answer_is_not_installed(tmp_path, hub, env, change):
    answers = answers_of_the_test_model(tmp_path, hub, env)
    if change == "cosine":
        answers[0]["cosines"][1] += 0.05
    else:
        # Two texts the tokenizer makes the same ids of: equal cosines, published 0.008 apart in
        # the other order. Within the tolerance, but the published order is not kept.
        cosine = answers[0]["cosines"][0]
        answers[0] = dict(answers[0], texts=["a photo of a cat", "a photo of a CAT"], cosines=[cosine - 0.004, cosine + 0.004])
    env, _ = default_on_the_test_hub(tmp_path, hub, env, answers)
    result = pull(env)
    err = result.stderr.decode()
    assert result.returncode == 3 and "Traceback" not in err, err
    final = err.strip().splitlines()[-1]
    if change == "cosine":
        assert "known answer missed on coco-val2017-000000039769.png" in final and "off by 0.05" in final, final
        assert "'a photo of a dog'" in final
    else:
        assert "known answer missed on coco-val2017-000000039769.png" in final and "another order" in final, final
    assert "nothing was installed" in final and not os.path.exists(model_dir(env, DEFAULT))
