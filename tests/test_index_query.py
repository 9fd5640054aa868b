"""End to end through the CLI (click's CliRunner) with the deterministic colour model:
right answers, incremental behaviour, moves, failures, output formats."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
from click.testing import CliRunner
from helpers import COLOURS, colour_library, write_photo

from clipsearch.cli.main import main


def ranked_paths(result) -> list[str]:
    return [line.split("\t", 1)[1] for line in result.stdout.splitlines()]


def summary_of(result) -> str:
    return [line for line in result.stderr.splitlines() if line.startswith("indexed:")][-1]


def test_query_finds_the_right_colour(cli, tmp_path):
    library = colour_library(tmp_path / "photos")
    result = cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert "16 new" in summary_of(result)
    for colour in ("red", "yellow", "blue", "magenta"):
        top = ranked_paths(cli("query", colour, "--top", "2"))
        assert sorted(top) == sorted(str(p) for p in library[colour]), colour


def test_index_with_worker_processes_gives_the_same_vectors(cli, tmp_path):
    colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "2", "--batch-size", "3")
    with sqlite3.connect(cli.db) as db:
        multi = dict(db.execute("SELECT filepath, vector FROM images"))
    os.remove(cli.db)
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    with sqlite3.connect(cli.db) as db:
        single = dict(db.execute("SELECT filepath, vector FROM images"))
    assert len(multi) == 16 and multi == single


def test_incremental_changed_deleted_moved(cli, tmp_path):
    library = colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert "16 unchanged" in summary_of(cli("index", str(tmp_path / "photos"), "--workers", "1"))

    # changed: a red photo repainted blue is re-embedded and now answers "blue"
    write_photo(library["red"][0], COLOURS["blue"], seed=99)
    os.utime(library["red"][0], ns=(1, 10**18))
    # deleted
    library["green"][0].unlink()
    # moved to another folder and renamed: keeps its row and vector, nothing decoded
    moved_to = tmp_path / "photos" / "sorted" / "sunny.jpg"
    moved_to.parent.mkdir()
    shutil.move(library["yellow"][0], moved_to)
    with sqlite3.connect(cli.db) as db:
        (yellow_id,) = db.execute("SELECT id FROM images WHERE filepath = ?", (bytes(library["yellow"][0]),)).fetchone()

    line = summary_of(cli("index", str(tmp_path / "photos"), "--workers", "1"))
    assert "0 new, 1 updated, 1 moved, 1 removed" in line, line
    with sqlite3.connect(cli.db) as db:
        assert db.execute("SELECT id FROM images WHERE filepath = ?", (bytes(moved_to),)).fetchone() == (yellow_id,)
    assert str(library["red"][0]) in ranked_paths(cli("query", "blue", "--top", "3"))
    assert str(moved_to) in ranked_paths(cli("query", "yellow", "--top", "2"))
    everything = ranked_paths(cli("query", "green", "--top", "50"))
    assert str(library["green"][0]) not in everything and len(everything) == 15


def test_removed_folder_disappears_and_moving_it_back_reuses_vectors(cli, tmp_path):
    colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    shutil.move(tmp_path / "photos" / "album1", tmp_path / "elsewhere")
    line = summary_of(cli("index", str(tmp_path / "photos"), "--workers", "1"))
    assert "removed" in line and " 0 removed" not in line
    remaining = ranked_paths(cli("query", "red", "--top", "50"))
    assert all("album1" not in p for p in remaining)
    shutil.move(tmp_path / "elsewhere", tmp_path / "photos" / "album1")
    line = summary_of(cli("index", str(tmp_path / "photos"), "--workers", "1"))
    assert "0 new" in line and "moved" in line and " 0 moved" not in line


def test_failed_file_is_remembered_until_it_changes(cli, tmp_path):
    colour_library(tmp_path / "photos", per_colour=1)
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_text("this is not a jpeg")
    result = cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert f"warning: {bad}:" in result.stderr and "1 failed" in summary_of(result)
    again = cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert "warning" not in again.stderr and "0 failed" in summary_of(again)
    write_photo(bad, COLOURS["teal"])
    fixed = cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert "1 updated" in summary_of(fixed)
    assert str(bad) in ranked_paths(cli("query", "teal", "--top", "2"))


def test_output_formats_and_scope(cli, tmp_path):
    library = colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    rows = [json.loads(line) for line in cli("query", "red", "--json", "--top", "3").stdout.splitlines()]
    assert len(rows) == 3 and rows[0]["path"] in {str(p) for p in library["red"]} and rows[0]["score"] > 0.99
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    bare = cli("query", "red", "--paths", "--top", "2").stdout.splitlines()
    assert sorted(bare) == sorted(str(p) for p in library["red"])
    nul = cli("query", "red", "-0", "--top", "2").stdout_bytes
    assert nul.endswith(b"\0") and sorted(nul.rstrip(b"\0").split(b"\0")) == sorted(bytes(p) for p in library["red"])
    scoped = ranked_paths(cli("query", "red", "--in", str(tmp_path / "photos" / "album2"), "--top", "50"))
    assert scoped and all("/album2/" in p for p in scoped)


def test_combined_and_image_queries(cli, tmp_path):
    library = colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    # In this model white and black are opposite directions: weights decide which wins.
    assert set(ranked_paths(cli("query", "black", "-w", "2", "white", "--top", "2"))) == {str(p) for p in library["white"]}
    assert set(ranked_paths(cli("query", "white", "--weighted", "-2", "white", "--top", "2"))) == {str(p) for p in library["black"]}
    assert set(ranked_paths(cli("query", "black", "--not", "white", "--top", "2"))) == {str(p) for p in library["black"]}
    assert "cancel out" in cli("query", "white", "--not", "white", expect=2).output
    assert "weight other than 0" in cli("query", "-w", "0", "white", expect=2).output
    probe = write_photo(tmp_path / "probe.png", COLOURS["magenta"])
    assert set(ranked_paths(cli("query", "--like", str(probe), "--top", "2"))) == {str(p) for p in library["magenta"]}


def test_excludes_and_hidden(cli, tmp_path):
    root = tmp_path / "photos"
    write_photo(root / "keep.jpg", COLOURS["red"])
    write_photo(root / "@eaDir" / "thumb.jpg", COLOURS["red"])
    write_photo(root / ".hidden" / "x.jpg", COLOURS["red"])
    write_photo(root / ".dotfile.jpg", COLOURS["red"])
    write_photo(root / "raw" / "skip.jpg", COLOURS["red"])
    write_photo(root / "UPPER.JPG", COLOURS["red"])
    write_photo(root / "trip.2024.Jpeg", COLOURS["red"])  # the last dot's extension, any case
    # Wildcard patterns (folders and files alike) and a plain name with regex characters in it.
    write_photo(root / "tmp-2024" / "x.jpg", COLOURS["red"])
    write_photo(root / "draft-copy.jpg", COLOURS["red"])
    write_photo(root / "(old)+" / "y.jpg", COLOURS["red"])
    write_photo(root / "old" / "kept.jpg", COLOURS["red"])
    (root / "notes.txt").write_text("not an image")
    cli("index", str(root), "--workers", "1", "--exclude", "raw", "--exclude", "tmp-[0-9]*",
        "--exclude", "draft-?opy.*", "--exclude", "(old)+")
    found = sorted(ranked_paths(cli("query", "red", "--top", "50")))
    assert found == sorted([str(root / "UPPER.JPG"), str(root / "keep.jpg"), str(root / "trip.2024.Jpeg"),
                            str(root / "old" / "kept.jpg")])
    listing = CliRunner().invoke(main, ["index", "--list-excludes"]).stdout
    assert "@eaDir" in listing and "#recycle" in listing


def test_status_reports_counts(cli, tmp_path):
    colour_library(tmp_path / "photos", per_colour=1)
    (tmp_path / "photos" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    write_photo(tmp_path / "photos" / "later.jpg", COLOURS["red"])
    report = json.loads(cli("status", "--json").stdout)
    assert report["indexed"] == 8 and report["failed"] == 1 and report["pending"] == 1
    assert report["model_name"] == "colour-test-model" and report["library_folders"] == [str(tmp_path / "photos")]


def test_status_lists_each_library_once_and_says_which_are_missing(cli, tmp_path):
    colour_library(tmp_path / "vol1" / "photo", per_colour=1)
    cli("index", str(tmp_path / "vol1" / "photo"), "--workers", "1")
    cli("index", str(tmp_path / "vol1" / "photo" / "album0"), "--workers", "1")  # a sub-folder on its own
    (tmp_path / "vol2").mkdir()
    shutil.move(tmp_path / "vol1" / "photo", tmp_path / "vol2" / "photo")  # the library moves to a new disk
    assert "8 moved" in cli("index", str(tmp_path / "vol2" / "photo"), "--workers", "1").stderr
    write_photo(tmp_path / "usb" / "holiday.jpg", COLOURS["blue"])
    cli("index", str(tmp_path / "usb"), "--workers", "1")
    (tmp_path / "usb").rename(tmp_path / "usb-unplugged")
    write_photo(tmp_path / "vol2" / "photo" / "new.jpg", COLOURS["red"])
    report = json.loads(cli("status", "--json").stdout)
    assert report["library_folders"] == [str(tmp_path / "usb"), str(tmp_path / "vol2" / "photo")]
    assert report["missing_folders"] == [str(tmp_path / "usb")]
    assert report["pending"] == 1 and report["indexed"] == 9
    assert f"missing folders:         {tmp_path / 'usb'}" in cli("status").stdout


def test_model_mismatch_is_refused(cli, tmp_path, tiny_model):
    colour_library(tmp_path / "photos", per_colour=1)
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    runner = CliRunner()
    for command in (["query", "red"], ["index", str(tmp_path / "photos")]):
        result = runner.invoke(main, [command[0], "--db", str(cli.db), "--model", str(tiny_model), *command[1:]])
        assert result.exit_code == 5 and "built with model colour-test-model" in result.output


def test_bad_paths_give_one_line_errors(cli, tmp_path):
    photo = write_photo(tmp_path / "a.jpg", COLOURS["red"])
    for path, words in ((tmp_path / "missing", "no such folder"), (photo, "is a file")):
        result = cli("index", str(path), expect=2)
        assert words in result.output and "Traceback" not in result.output
    assert "nothing to search for" in cli("query", expect=2).output


def test_default_model_is_the_only_exported_folder(tmp_path, colour_model, isolated_home):
    import shutil as sh

    models = isolated_home / "models"
    sh.copytree(colour_model, models / "colour")
    sh.copytree(colour_model, models / "colour-fp32")  # --keep-fp32's twin does not count
    write_photo(tmp_path / "p" / "r.jpg", COLOURS["red"])
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(tmp_path / "p")]).exit_code == 0
    result = runner.invoke(main, ["query", "red", "--paths"])
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "p" / "r.jpg")


def test_a_folder_that_cannot_be_read_keeps_its_cached_vectors(cli, tmp_path, monkeypatch):
    """A share hiccup (here: scandir failing for one folder, as it does on EACCES or EIO)
    warns and keeps what the cache holds below that folder, instead of deleting it."""
    library = colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    broken = os.fsencode(tmp_path / "photos" / "album1")
    real_scandir = os.scandir

    def failing_scandir(path):
        if path == broken:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("clipsearch.photos.walk.os.scandir", failing_scandir)
    result = cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert f"warning: {tmp_path / 'photos' / 'album1'}: cannot read folder" in result.stderr
    assert " 0 removed" in summary_of(result)
    monkeypatch.undo()
    everything = set(ranked_paths(cli("query", "red", "--top", "50")))
    assert everything == {str(p) for paths in library.values() for p in paths}


def scores(result) -> list[str]:
    return [line.split("\t", 1)[0] for line in result.stdout.splitlines()]


@pytest.mark.parametrize("text", ["16:9 white", "3:30 pm white", "2:white", "-1 degrees white", "-0.5:white",
                                  ".5 white", "-white in the snow"])
def test_query_texts_are_taken_literally(cli, tmp_path, text):
    """Digits, colons and leading dashes are part of the text, never a weight or an option:
    the query ranks exactly as the same text given with an explicit weight of 1."""
    colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    literal = cli("query", "red", text, "--top", "16")
    assert literal.stdout == cli("query", "red", "-w", "1", text, "--top", "16").stdout
    assert literal.stdout == cli("query", "--top", "16", "red", "--", text).stdout
    assert len(literal.stdout.splitlines()) == 16  # --top after the text still applies


def test_a_weight_prefix_no_longer_changes_the_query(cli, tmp_path):
    colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    literal = cli("query", "red", "3:white", "--top", "16", "--json").stdout
    weighted = cli("query", "red", "-w", "3", "white", "--top", "16", "--json").stdout
    assert literal != weighted


def test_options_after_a_dash_text_and_option_values_keep_their_meaning(cli, tmp_path):
    library = colour_library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert len(ranked_paths(cli("query", "-1 degrees red", "--top", "2"))) == 2
    assert set(cli("query", "red", "-n", "2", "-0").stdout_bytes.rstrip(b"\0").split(b"\0")) == \
        {bytes(p) for p in library["red"]}
    assert "No such option" in cli("query", "red", "--tpo", "2", expect=2).output
    late = cli("query", "--", "red", "--top", "2")
    assert "after --, --top is search text" in late.stderr and len(late.stdout.splitlines()) == 10


def test_like_ranks_the_identical_photo_first_with_score_1(tiny_model, tmp_path):
    from PIL import Image

    photo = write_photo(tmp_path / "p" / "original.jpg", (120, 90, 200), size=(640, 480), grain=30, seed=4)
    Image.open(photo).resize((320, 240)).save(tmp_path / "p" / "smaller copy.jpg", quality=95)
    for i in range(6):
        write_photo(tmp_path / "p" / f"other{i}.jpg", (30 * i, 200, 40 * i), size=(400, 300), seed=10 + i)
    runner, db = CliRunner(), tmp_path / "index.db"
    common = ["--db", str(db), "--model", str(tiny_model)]
    assert runner.invoke(main, ["index", str(tmp_path / "p"), *common, "--workers", "1"]).exit_code == 0
    result = runner.invoke(main, ["query", "--like", str(photo), "--json", "--top", "8", *common])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert (rows[0]["path"], rows[0]["score"]) == (str(photo), 1.0)
    assert all(row["score"] <= 1.0 for row in rows) and rows[1]["score"] < 1.0


def test_db_and_model_come_from_the_environment_and_options_override_it(colour_model, tmp_path, monkeypatch):
    colour_library(tmp_path / "photos")
    monkeypatch.setenv("CLIPSEARCH_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("CLIPSEARCH_MODEL", str(colour_model))
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(tmp_path / "photos"), "--workers", "1"]).exit_code == 0
    assert (tmp_path / "env.db").exists()
    assert len(runner.invoke(main, ["query", "red"]).stdout.splitlines()) == 10
    assert json.loads(runner.invoke(main, ["status", "--json"]).stdout)["database"] == str(tmp_path / "env.db")
    other = runner.invoke(main, ["query", "red", "--db", str(tmp_path / "none.db")])
    assert other.exit_code == 4 and "none.db" in other.output


def test_min_score_is_a_cut_off_instead_of_a_fixed_top(cli, tmp_path):
    colour_library(tmp_path / "photos", per_colour=3)
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    ranked = [json.loads(line) for line in cli("query", "red", "--json", "--top", "24").stdout.splitlines()]
    cut = (ranked[2]["score"] + ranked[3]["score"]) / 2  # between the 3 red photos and the rest
    found = [json.loads(line) for line in cli("query", "red", "--json", "--min-score", str(cut)).stdout.splitlines()]
    assert [row["path"] for row in found] == [row["path"] for row in ranked[:3]]
    assert all("red_" in row["path"] for row in found)
    assert len(cli("query", "red", "--paths", "--min-score", "-1").stdout.splitlines()) == 24  # all, not 10
    assert len(cli("query", "red", "--paths", "--min-score", str(cut), "--top", "2").stdout.splitlines()) == 2
    above = cli("query", "red", "--min-score", "0.9999999")
    assert above.stdout == "" and "no photo reaches --min-score 0.9999999" in above.stderr
