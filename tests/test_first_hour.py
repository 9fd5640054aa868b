"""What a new user trips over in the first hour: help flags, repeated paths, --like on a
folder, --in on an excluded folder, status after an interrupted first run, JSON for
non-UTF-8 names, and a random-weights model that must say so."""
from __future__ import annotations

import base64
import json
import os

import pytest
from click.testing import CliRunner
from helpers import COLOURS, colour_library, write_photo

from clipsearch.cli.main import main


def summary_of(result) -> str:
    return [line for line in result.stderr.splitlines() if line.startswith("indexed:")][-1]


@pytest.mark.parametrize("args", [["-h"], ["query", "-h"], ["index", "-h"]])
def test_dash_h_is_help(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and result.output.startswith("Usage:")


def test_a_folder_given_twice_or_inside_another_is_walked_once(cli, tmp_path):
    colour_library(tmp_path / "photos")
    photos = str(tmp_path / "photos")
    line = summary_of(cli("index", photos, photos, os.path.join(photos, "album1"), "--workers", "1"))
    assert "16 new, 0 updated, 0 moved, 0 removed, 0 failed, 0 skipped, 0 unchanged" in line, line


def test_like_on_a_folder_says_so(cli, tmp_path):
    colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert "is a folder" in cli("query", "--like", str(tmp_path / "photos"), expect=2).output


def test_in_an_excluded_folder_says_it_is_never_indexed(cli, tmp_path):
    colour_library(tmp_path / "photos")
    write_photo(tmp_path / "photos" / "@eaDir" / "thumb.jpg", COLOURS["red"])
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    result = cli("query", "red", "--in", str(tmp_path / "photos" / "@eaDir"))
    assert "@eaDir folders are never indexed" in result.stderr and "run `clipsearch index" not in result.stderr


def test_status_after_an_interrupted_first_run_shows_the_folder_and_whats_left(cli, colour_model, tmp_path):
    from clipsearch.index.indexer import IndexOptions
    from clipsearch.index.run import index_paths
    from clipsearch.model.manifest import load_manifest

    colour_library(tmp_path / "photos", per_colour=3)

    def interrupt(summary):  # Ctrl-C after the first results are in
        if summary.new:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index_paths([str(tmp_path / "photos")], cli.db, load_manifest(colour_model),
                    IndexOptions(workers=1, batch_size=2, commit_seconds=0), lambda p, m: None, interrupt)
    report = json.loads(cli("status", "--json").stdout)
    assert report["library_folders"] == [str(tmp_path / "photos")]
    assert report["last_run"]["status"] == "interrupted"
    assert report["pending"] == 24 - report["indexed"] and report["indexed"] >= 1


def test_json_output_is_valid_utf8_for_any_file_name(cli, tmp_path):
    root = tmp_path / "photos"
    write_photo(root / "plain.jpg", COLOURS["red"])
    odd = os.fsencode(root) + b"/caf\xe9.jpg"
    write_photo(root / "tmp.jpg", COLOURS["red"], seed=3).rename(os.fsdecode(odd))
    cli("index", str(root), "--workers", "1")
    lines = cli("query", "red", "--json").stdout_bytes.splitlines()
    rows = [json.loads(line.decode("utf-8")) for line in lines]
    assert all("\\ud" not in line.decode() for line in lines)  # no lone surrogates
    by_name = {row["path"]: row for row in rows}
    assert "path_b64" not in by_name[str(root / "plain.jpg")]
    odd_row = by_name[str(root) + "/caf\ufffd.jpg"]
    assert base64.b64decode(odd_row["path_b64"]) == odd


def test_a_random_weights_model_says_it_is_untrained(tiny_model, tmp_path):
    runner = CliRunner()
    common = ["--db", str(tmp_path / "index.db"), "--model", str(tiny_model)]
    write_photo(tmp_path / "p" / "a.jpg", COLOURS["red"])
    assert runner.invoke(main, ["index", str(tmp_path / "p"), *common, "--workers", "1"]).exit_code == 0
    warning = "untrained (random weights): rankings are meaningless"
    query = runner.invoke(main, ["query", "a cat", *common])
    assert query.stderr.count(warning) == 1 and warning not in query.stdout
    assert warning in runner.invoke(main, ["status", *common]).stdout
    assert warning in runner.invoke(main, ["check-model", "--model", str(tiny_model)]).stdout


def test_a_trained_model_prints_no_such_note(cli, tmp_path):
    colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert cli("query", "red").stderr == ""
