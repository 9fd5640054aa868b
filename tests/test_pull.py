"""`clipsearch models pull` against a hub-shaped server on 127.0.0.1 (`HF_ENDPOINT`, as a
mirror user would set it), holding tiny random-weight towers in both published layouts: the
real download, quantization, fidelity check and model folder, then index and query with it.
No PyTorch: runs in the runtime-only environment too (with the onnx package)."""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("onnx", reason="pulling quantizes with onnx: pip install 'clipsearch[models]'")

import hubserver  # noqa: E402
from helpers import COLOURS, colour_library, run_cli  # noqa: E402

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
