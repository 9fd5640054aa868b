"""The second hour with clipsearch: the small things that go wrong once it is part of the
house (issue 23). Real files, real CLI."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

import clipsearch.errors as errors
from helpers import COLOURS, DATA, run_cli, run_unprivileged, write_photo
from test_metadata import dms, jpeg
from test_metadata_index import dated_photo


def test_gps_seconds_of_exactly_60_are_normalised_not_dropped():
    from PIL.TiffImagePlugin import IFDRational

    from clipsearch.photos.metadata import read_photo_meta

    gps = {1: "N", 2: (IFDRational(41, 1), IFDRational(8, 1), IFDRational(60, 1)),
           3: "W", 4: (IFDRational(8, 1), IFDRational(36, 1), IFDRational(60, 1))}
    meta = read_photo_meta(jpeg(gps=gps))
    assert meta.lat == pytest.approx(41.15) and meta.lon == pytest.approx(-8.6166667) and meta.problems == []
    beyond = {**gps, 2: (IFDRational(41, 1), IFDRational(8, 1), IFDRational(61, 1))}
    assert read_photo_meta(jpeg(gps=beyond)).lat is None
    assert read_photo_meta(jpeg(gps={**gps, 2: dms(41, 8, 59.5)})).lat == pytest.approx(41.1498611)


def test_the_help_lists_every_exit_code():
    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.ClipsearchError)} | {0, 130}
    text = " ".join(run_cli("--help", check=True).stdout.decode().split())
    listed = {int(code) for code in re.findall(r"\b(\d+) [a-z]", text.split("Exit codes:", 1)[1])}
    assert codes <= listed, codes - listed


def test_tag_exits_non_zero_when_no_sidecar_could_be_written(tmp_path, cli):
    root = tmp_path / "photos"
    for name in ("red", "blue"):
        write_photo(root / f"{name}.jpg", COLOURS[name])
    cli("index", str(root), "--workers", "1")
    root.chmod(0o555)  # a read-only folder: no sidecar can be created
    try:
        result = run_unprivileged("tag", "colour", "red", "--top", "2", "--db", str(cli.db), "--model", str(cli.model),
                                  env={})
    finally:
        root.chmod(0o755)
    err = result.stderr.decode()
    assert result.returncode == 8 and "Traceback" not in err, err
    assert "none of the 2 sidecars could be written" in err


def test_models_list_shows_installed_models_outside_the_catalogue(isolated_home):
    shutil.copytree(DATA / "colour-model", isolated_home / "models" / "my-colours")
    rows = [json.loads(line) for line in run_cli("models", "list", "--json", check=True).stdout.splitlines()]
    mine = next(row for row in rows if row["name"] == "my-colours")
    assert mine["installed"] and "not in the catalogue" in mine["source"]


def test_several_models_and_no_default_names_them(isolated_home, tmp_path):
    for name in ("colours-a", "colours-b"):
        shutil.copytree(DATA / "colour-model", isolated_home / "models" / name)
    dated_photo(tmp_path / "photos" / "a.jpg", COLOURS["red"])
    result = run_cli("index", str(tmp_path / "photos"))
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert f"installed in {isolated_home / 'models'}: colours-a, colours-b" in err and "--model" in err


def test_a_failed_pull_leaves_no_hidden_download_folder_and_names_the_models_folder(tmp_path, isolated_home):
    pytest.importorskip("onnx", reason="pulling quantizes with onnx: pip install 'clipsearch[models]'")
    import hubserver

    hub = hubserver.Hub(tmp_path / "hub")
    try:
        folder = hubserver.transformers_js_repo(hub.repo("Xenova/tiny-clip", hubserver.COMMIT))
        pins = hubserver.pinned_files(folder, ["onnx/vision_model.onnx", "onnx/text_model.onnx", "tokenizer.json",
                                               "preprocessor_config.json", "config.json"])
        catalogue = hubserver.catalogue(tmp_path / "catalogue.json",
                                        {"tiny": ("Xenova/tiny-clip", hubserver.COMMIT, "transformers.js", pins)})
        (folder / "tokenizer.json").write_text("{}")  # altered: nothing to resume from
        env = {"CLIPSEARCH_CATALOGUE": str(catalogue), "HF_ENDPOINT": hub.endpoint}
        result = run_cli("models", "pull", "tiny", env=env)
        assert result.returncode == 7 and b"altered" in result.stderr
        assert not [p for p in os.listdir(isolated_home / "models") if p.startswith(".")]
    finally:
        hub.close()
    unreachable = run_cli("models", "pull", "tiny", env=dict(env, HF_ENDPOINT="http://127.0.0.1:9"))
    assert unreachable.returncode == 7 and str(isolated_home / "models").encode() in unreachable.stderr
