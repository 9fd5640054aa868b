"""The sharded cache (`cache/library.py`, `index/shards.py`): one shard per folder in the default
library, portable shards kept on their disk and adopted elsewhere, caches from before shards
moved into shards without embedding anything again, a folder that is not there left out with
a note and back as it was, refusals named, and kills at any moment of a run over several
shards. Real files, real databases, the real CLI (a subprocess where a kill is involved)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO, colour_library, run_cli, write_photo

from clipsearch.cli.main import main


def clipsearch(*args, expect=0, env=None):
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == expect, (args, result.output, result.stderr)
    return result


def rows(db: Path) -> dict[bytes, tuple]:
    """path -> (vector, scale, indexed_at) of a database's live rows."""
    with sqlite3.connect(db) as conn:
        return {bytes(r[0]): tuple(r[1:]) for r in conn.execute(
            "SELECT filepath, vector, scale, indexed_at FROM images WHERE deleted = 0 AND vector IS NOT NULL")}


def results(output: str) -> list[tuple[float, str]]:
    return [(float(line.split("\t")[0]), line.split("\t")[1]) for line in output.splitlines() if "\t" in line]


def shard_files(home: Path) -> list[Path]:
    return sorted((home / "index.db.shards").glob("*.db"))


@pytest.fixture
def two_folders(tmp_path):
    colour_library(tmp_path / "internal", 2)
    colour_library(tmp_path / "usb", 1)
    return tmp_path / "internal", tmp_path / "usb"


def test_the_default_library_keeps_a_shard_per_folder_and_answers_as_one_file_does(two_folders, colour_model,
                                                                                   isolated_home, tmp_path):
    internal, usb = two_folders
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    shards = shard_files(isolated_home)
    assert [p.name.split("-")[0] for p in shards] == ["internal", "usb"]
    assert all(p.with_name(p.name + ".vectors").is_file() for p in shards)  # each its own packed file
    assert len(rows(shards[0])) == 16 and len(rows(shards[1])) == 8 and not rows(isolated_home / "index.db")

    # The same folders in one file (--db): the same answers, score for score.
    one = tmp_path / "one.db"
    clipsearch("index", str(internal), str(usb), "--db", str(one), "--model", str(colour_model))
    assert not (tmp_path / "one.db.shards").exists()
    for words in ("red", "blue", "a green thing"):
        sharded = clipsearch("query", words, "--model", str(colour_model), "--top", "30").output
        single = clipsearch("query", words, "--db", str(one), "--model", str(colour_model), "--top", "30").output
        assert sorted(results(sharded)) == sorted(results(single))
        assert results(sharded) == sorted(results(sharded), key=lambda r: -r[0])
    red = [path for _, path in results(clipsearch("query", "red", "--model", str(colour_model), "--top", "3").stdout)]
    assert {Path(p).parent.parent.name for p in red} == {"internal", "usb"}
    status = clipsearch("status", "--model", str(colour_model)).output
    assert "indexed:                 24" in status and f"{usb}: 8 photos" in status
    # Filters run per shard; a listing by date merges them.
    assert len(results(clipsearch("query", "red", "--in", str(usb), "--model", str(colour_model)).stdout)) == 8


def test_a_folder_that_is_not_there_is_left_out_with_a_note_and_comes_back_as_it_was(two_folders, colour_model,
                                                                                    isolated_home):
    internal, usb = two_folders
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    usb_shard = shard_files(isolated_home)[1]
    before = rows(usb_shard)
    away = usb.with_name("usb-unplugged")
    usb.rename(away)
    try:
        answer = clipsearch("query", "red", "--model", str(colour_model), "--top", "30")
        assert len(results(answer.stdout)) == 16 and "usb" not in answer.stdout
        assert f"note: 8 photos of {usb} left out: not there" in answer.stderr
        # The nightly run over both: the other folder indexed, that one's photos kept (exit 6).
        run = clipsearch("index", str(internal), str(usb), "--model", str(colour_model), expect=6)
        assert "0 new" in run.stderr and "16 unchanged" in run.stderr and "not there" in run.stderr
        assert "NOT THERE" in clipsearch("status", "--model", str(colour_model)).output
    finally:
        away.rename(usb)
    assert rows(usb_shard) == before  # nothing touched while it was away
    answer = clipsearch("query", "red", "--model", str(colour_model), "--top", "30")
    assert len(results(answer.stdout)) == 24 and "left out" not in answer.stderr
    run = clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    assert "0 new, 0 updated, 0 moved, 0 removed" in run.stderr and "24 unchanged" in run.stderr
    assert rows(usb_shard) == before


def all_rows(db: Path) -> dict[bytes, tuple]:
    """path -> (deleted, vector, scale, indexed_at, fingerprint) of every row, deleted ones too."""
    with sqlite3.connect(db) as conn:
        return {bytes(r[0]): tuple(r[1:]) for r in conn.execute(
            "SELECT filepath, deleted, vector, scale, indexed_at, fingerprint FROM images")}


def test_a_photo_moved_between_shards_takes_its_row_along(two_folders, colour_model, isolated_home):
    """Moved from the USB disk's folder to the internal one (another shard): nothing embedded
    again, the vector, what `tag` recorded and the metadata come along, and the row it left is
    deleted there, also when only the folder it went to is indexed. A source shard that another
    run holds is left alone: the photo is embedded instead."""
    from clipsearch.index.lock import IndexLock

    internal, usb = two_folders
    beach = write_photo(usb / "trip" / "beach.jpg", (240, 200, 60), seed=777)
    lake = write_photo(usb / "trip" / "lake.jpg", (30, 90, 200), seed=778)
    pier = write_photo(usb / "trip" / "pier.jpg", (90, 90, 90), seed=779)
    write_photo(usb / "trip" / "stays.jpg", (20, 160, 40), seed=780)  # an emptied folder would be kept (exit 6)
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    inner, outer = shard_files(isolated_home)
    clipsearch("tag", "holiday", "--like", str(beach), "--in", str(usb / "trip"), "--top", "1", "--model",
               str(colour_model))
    assert Path(f"{beach}.xmp").is_file()
    left = all_rows(outer)

    # Both folders indexed, the photo (and its sidecar) renamed on the way.
    moved = internal / "2024" / "beach-day.jpg"
    moved.parent.mkdir()
    shutil.move(beach, moved)
    shutil.move(f"{beach}.xmp", f"{moved}.xmp")
    run = clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    assert "0 new, 0 updated, 1 moved, 0 removed" in run.stderr, run.stderr
    arrived = all_rows(inner)[os.fsencode(moved)]
    assert arrived[0] == 0 and arrived[1:] == left[os.fsencode(beach)][1:]  # vector, scale, indexed_at, content
    assert all_rows(outer)[os.fsencode(beach)][0] == 1
    with sqlite3.connect(inner) as conn:
        assert conn.execute("SELECT DISTINCT k.keyword FROM keywords_added k JOIN images i ON i.id = k.image_id "
                            "WHERE i.filepath = ?", (os.fsencode(moved),)).fetchall() == [("holiday",)]
        assert conn.execute("SELECT m.width FROM photo_meta m JOIN images i ON i.id = m.image_id WHERE i.filepath = ?",
                            (os.fsencode(moved),)).fetchall() == [(320,)]
    found = [path for _, path in results(clipsearch("query", "yellow", "--model", str(colour_model), "--top", "40").stdout)]
    assert str(moved) in found and str(beach) not in found
    assert str(moved) in clipsearch("query", "--tag", "holiday", "--model", str(colour_model)).stdout
    clipsearch("untag", "holiday")  # what `tag` recorded came along: its sidecar (only its own) goes
    assert not Path(f"{moved}.xmp").exists()

    # Only the folder it went to indexed: the row it left is deleted there all the same.
    shutil.move(lake, internal / "2024" / "lake.jpg")
    run = clipsearch("index", str(internal), "--model", str(colour_model))
    assert "0 new, 0 updated, 1 moved, 0 removed" in run.stderr, run.stderr
    assert all_rows(outer)[os.fsencode(lake)][0] == 1
    found = [path for _, path in results(clipsearch("query", "blue", "--model", str(colour_model), "--top", "40").stdout)]
    assert str(internal / "2024" / "lake.jpg") in found and str(lake) not in found

    # The USB shard held by another run: not a source; the photo is embedded here instead.
    shutil.move(pier, internal / "2024" / "pier.jpg")
    with IndexLock(outer):
        run = clipsearch("index", str(internal), "--model", str(colour_model))
    assert "1 new, 0 updated, 0 moved, 0 removed" in run.stderr, run.stderr
    assert all_rows(outer)[os.fsencode(pier)][0] == 0  # untouched; its own next run finds it gone
    run = clipsearch("index", str(usb), "--model", str(colour_model))
    assert "1 removed" in run.stderr and all_rows(outer)[os.fsencode(pier)][0] == 1


def test_a_damaged_shard_is_no_source_of_moves_and_stops_no_other_shard(two_folders, colour_model, isolated_home):
    internal, usb = two_folders
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    outer = shard_files(isolated_home)[1]
    for leftover in (outer.with_name(outer.name + "-wal"), outer.with_name(outer.name + "-shm")):
        leftover.unlink(missing_ok=True)
    outer.write_bytes(b"not a database " * 100)
    write_photo(internal / "new" / "x.jpg", (10, 200, 200), seed=901)
    run = clipsearch("index", str(internal), "--model", str(colour_model))
    assert "1 new, 0 updated, 0 moved, 0 removed" in run.stderr, run.stderr


def test_a_shard_on_its_disk_is_adopted_by_another_library_at_another_mount_point(tmp_path, colour_model):
    disk = tmp_path / "mnt" / "usb" / "Photos"
    colour_library(disk, 1)
    odd = write_photo(tmp_path / "x.jpg", (230, 20, 20))
    os.rename(odd, os.fsencode(disk / "album0") + b"/caf\xe9-latin1.jpg")  # a name that is not UTF-8
    first = tmp_path / "first" / "library.db"
    clipsearch("index", str(disk), "--shard-on-disk", "--db", str(first), "--model", str(colour_model))
    carried = disk / ".clipsearch" / "index.db"
    assert carried.is_file() and (disk / ".clipsearch" / "index.db.vectors").is_file()
    made = rows(carried)
    assert len(made) == 9 and not rows(first)

    # The disk, plugged into another machine: another data dir, another mount point.
    elsewhere = tmp_path / "media" / "someone" / "DISK" / "Photos"
    elsewhere.parent.mkdir(parents=True)
    shutil.copytree(disk, elsewhere, symlinks=True, copy_function=shutil.copy2)
    second = tmp_path / "second" / "index.db"
    run = clipsearch("index", str(elsewhere), "--db", str(second), "--model", str(colour_model))
    assert "0 new, 0 updated, 0 moved, 0 removed, 0 failed" in run.stderr and "9 unchanged" in run.stderr
    adopted = rows(elsewhere / ".clipsearch" / "index.db")
    old, new = os.fsencode(disk), os.fsencode(elsewhere)
    assert adopted == {new + path[len(old):]: value for path, value in made.items()}  # vectors, dates: as made
    answer = clipsearch("query", "red", "--db", str(second), "--model", str(colour_model), "--top", "2")
    assert all(path.startswith(str(elsewhere)) for _, path in results(answer.stdout))
    assert os.fsencode(elsewhere / "album0") + b"/caf\xe9-latin1.jpg" in adopted

    # Plugged back at its first mount point: the first library finds it again, nothing embedded.
    shutil.rmtree(disk)
    shutil.copytree(elsewhere, disk, symlinks=True, copy_function=shutil.copy2)
    run = clipsearch("index", str(disk), "--db", str(first), "--model", str(colour_model))
    assert "0 new" in run.stderr and "9 unchanged" in run.stderr
    assert rows(carried) == made


def test_a_cache_from_before_shards_moves_into_shards_without_embedding_anything(two_folders, colour_model,
                                                                                isolated_home):
    internal, usb = two_folders
    # What an older version left: one file at the default place (CLIPSEARCH_DB makes it one file).
    db = isolated_home / "index.db"
    env = {"CLIPSEARCH_DB": str(db)}
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model), env=env)
    clipsearch("tag", "redthing", "red", "--model", str(colour_model), "--top", "2", env=env)
    before = rows(db)
    assert len(before) == 24 and not (isolated_home / "index.db.shards").exists()

    run = clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    assert "0 new, 0 updated, 0 moved, 0 removed" in run.stderr and "24 unchanged" in run.stderr
    moved = {}
    for shard in shard_files(isolated_home):
        moved.update(rows(shard))
    assert moved == before and not rows(db)  # same rows, same vectors, same dates; none left behind
    # What `tag` wrote moved with its photos: `untag` still removes exactly that.
    untag = clipsearch("untag", "redthing")
    assert "2 photos" in untag.output + untag.stderr
    results_after = results(clipsearch("query", "red", "--model", str(colour_model), "--top", "24").stdout)
    assert len(results_after) == 24


def test_a_shard_made_with_another_model_or_by_a_newer_clipsearch_is_refused_by_name(tmp_path, colour_model,
                                                                                    tiny_model):
    disk = tmp_path / "disk" / "Photos"
    colour_library(disk, 1)
    clipsearch("index", str(disk), "--shard-on-disk", "--db", str(tmp_path / "a.db"), "--model", str(tiny_model))
    refused = clipsearch("index", str(disk), "--db", str(tmp_path / "b.db"), "--model", str(colour_model), expect=5)
    assert f"{disk}/.clipsearch/index.db: a shard made with model" in refused.output
    assert "move" in refused.output and ".clipsearch aside" in refused.output
    if (tmp_path / "b.db").exists():  # nothing listed
        assert sqlite3.connect(tmp_path / "b.db").execute("SELECT COUNT(*) FROM shards").fetchone() == (0,)

    shard = disk / ".clipsearch" / "index.db"
    with sqlite3.connect(shard) as conn:
        conn.execute("PRAGMA user_version = 99")
    refused = clipsearch("query", "red", "--db", str(tmp_path / "a.db"), "--model", str(tiny_model), expect=4)
    assert f"the shard of {disk}" in refused.output and "newer clipsearch" in refused.output


def test_a_folder_holding_other_shards_is_refused_with_what_to_do(tmp_path, colour_model):
    colour_library(tmp_path / "photos" / "2023", 1)
    colour_library(tmp_path / "photos" / "2024", 1)
    clipsearch("index", str(tmp_path / "photos" / "2023"), "--model", str(colour_model))
    refused = clipsearch("index", str(tmp_path / "photos"), "--model", str(colour_model), expect=2)
    assert f"{tmp_path / 'photos'}: holds the shards of {tmp_path / 'photos' / '2023'}" in refused.output


def test_tag_duplicates_and_the_page_see_every_shard(two_folders, colour_model, isolated_home):
    internal, usb = two_folders
    shutil.copy2(usb / "album0" / "red_0.jpg", usb / "album0" / "red_copy.jpg")
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    tag = clipsearch("tag", "reds", "red", "--model", str(colour_model), "--top", "3")
    sidecars = sorted(p.parent.parent.name for p in (internal.parent).rglob("*.xmp"))
    assert sidecars == ["internal", "internal", "usb"], tag.output
    dups = clipsearch("duplicates", "--model", str(colour_model), "--json").output
    assert "red_copy.jpg" in dups

    from clipsearch.cache.library import SHARD_BITS
    from clipsearch.search.query import run_query

    answer = run_query(["red"], isolated_home / "index.db", colour_model, top=3)
    assert {row_id >> SHARD_BITS for row_id in answer.ids} == {1, 2}
    from clipsearch.cache.library import Library

    library = Library(isolated_home / "index.db")
    try:
        for row_id, (path, _) in zip(answer.ids, answer.results):
            assert library.photo_row(row_id)[0] == path  # what the page's thumbnails and originals read
    finally:
        library.close()


def test_duplicates_are_found_across_shards(colour_model, isolated_home, tmp_path):
    """A copy on the USB disk of a photo on the internal volume is one group with it, as in one
    database: byte-identical, resized, and frames of one burst split over the two disks (camera
    numbers are per database; a Nikon frame in between stays out of the Canon burst)."""
    import json

    import numpy as np
    from PIL import Image
    from test_duplicates import save, scene

    internal, usb = tmp_path / "internal", tmp_path / "usb"
    original = save(scene(1), internal / "camera" / "IMG_0001.jpg", quality=95)
    (usb / "backup").mkdir(parents=True)
    shutil.copy2(original, usb / "backup" / "IMG_0001.jpg")
    save(scene(1).resize((240, 180)), usb / "web" / "small.jpg", quality=80)
    save(scene(2), internal / "camera" / "IMG_0002.jpg", quality=95)  # another picture

    def frame(folder, name, make, model, second, seed):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = make, model
        exif.get_ifd(0x8769)[0x9003] = f"2024:07:14 18:30:{second:02d}"
        pixels = np.clip(np.array((200, 30, 30)) + np.random.default_rng(seed).normal(0, 12, (240, 320, 3)), 0, 255)
        save(Image.fromarray(pixels.astype(np.uint8)), folder / "burst" / name, quality=90, exif=exif.tobytes())

    frame(internal, "burst_0.jpg", "Canon", "EOS R6", 0, 0)
    frame(internal, "burst_1.jpg", "Canon", "EOS R6", 2, 1)
    frame(usb, "nikon.jpg", "Nikon", "Z 6", 1, 2)  # first on the USB disk: its camera number 0 there
    frame(usb, "burst_2.jpg", "Canon", "EOS R6", 4, 3)
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    assert len(shard_files(isolated_home)) == 2
    out = clipsearch("duplicates", "--model", str(colour_model), "--json", "--burst-cosine", "0.95").stdout
    found = {g["kind"]: sorted(os.path.relpath(m["path"], tmp_path) for m in g["members"])
             for g in map(json.loads, out.splitlines())}
    assert found == {"same": ["internal/camera/IMG_0001.jpg", "usb/backup/IMG_0001.jpg", "usb/web/small.jpg"],
                     "burst": ["internal/burst/burst_0.jpg", "internal/burst/burst_1.jpg", "usb/burst/burst_2.jpg"]}
    exact = clipsearch("duplicates", "--model", str(colour_model), "--kind", "exact", "--json").stdout
    assert sorted(os.path.relpath(m["path"], tmp_path) for m in json.loads(exact)["members"]) == [
        "internal/camera/IMG_0001.jpg", "usb/backup/IMG_0001.jpg"]
    # Within one disk (a folder given), only what is under it.
    within = clipsearch("duplicates", str(usb), "--model", str(colour_model), "--json").stdout
    assert [sorted(os.path.relpath(m["path"], tmp_path) for m in g["members"]) for g in map(json.loads, within.splitlines())] \
        == [["usb/backup/IMG_0001.jpg", "usb/web/small.jpg"]]


def start_index(folders, model, home):
    return subprocess.Popen([sys.executable, "-m", "clipsearch", "index", *map(str, folders), "--model", str(model),
                             "--workers", "1", "--batch-size", "2", "--commit-seconds", "0.05"],
                            cwd=REPO, env=dict(os.environ, CLIPSEARCH_HOME=str(home)), stderr=subprocess.PIPE)


def test_sigkill_at_random_moments_of_a_run_over_several_shards(tmp_path, tiny_model):
    """Every shard intact, nothing committed lost, no photo in two places; a cache from before
    shards being moved into shards included."""
    folders = [tmp_path / name for name in ("a", "b", "c")]
    for n, folder in enumerate(folders):
        for k in range(12):
            write_photo(folder / f"p{k}.jpg", (20 * k, 10 * n, 200 - 10 * k), size=(96, 64), seed=k + 100 * n)
    home = tmp_path / "home"
    run_cli("index", str(folders[0]), "--db", str(home / "index.db"), "--model", str(tiny_model), check=True)
    rng = random.Random(7)
    for attempt in range(6):
        proc = start_index(folders, tiny_model, home)
        time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        paths = []
        for db in [home / "index.db", *shard_files(home)]:
            with sqlite3.connect(db) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            paths += list(rows(db))
        assert len(paths) == len(set(paths)), f"a photo in two databases after kill {attempt}"
    final = run_cli("index", *map(str, folders), "--model", str(tiny_model),
                    env={"CLIPSEARCH_HOME": str(home)}, check=True, timeout=300)
    assert b"0 removed, 0 failed" in final.stderr
    everything = {}
    for db in [home / "index.db", *shard_files(home)]:
        everything.update(rows(db))
    assert len(everything) == 36 and not rows(home / "index.db")
    answer = run_cli("query", "a photo", "--model", str(tiny_model), "--top", "100",
                     env={"CLIPSEARCH_HOME": str(home)}, check=True)
    assert len(answer.stdout.splitlines()) == 36


def test_a_run_adding_a_few_photos_overlays_them_instead_of_rewriting_the_packed_file(tmp_path, colour_model):
    library = tmp_path / "photos"
    photos = colour_library(library, 2)
    db = tmp_path / "index.db"
    clipsearch("index", str(library), "--db", str(db), "--model", str(colour_model))
    packed = tmp_path / "index.db.vectors"
    written = packed.stat().st_ino, packed.stat().st_mtime_ns
    write_photo(library / "new" / "red_new.jpg", (230, 20, 20), seed=99)
    photos["blue"][0].unlink()
    clipsearch("index", str(library), "--db", str(db), "--model", str(colour_model))
    assert (packed.stat().st_ino, packed.stat().st_mtime_ns) == written  # not rewritten
    assert "2 changed rows read from the database" in clipsearch("status", "--db", str(db), "--model",
                                                                 str(colour_model)).stdout
    found = [path for _, path in results(clipsearch("query", "red", "--db", str(db), "--model", str(colour_model),
                                                    "--top", "3").stdout)]
    assert any(path.endswith("red_new.jpg") for path in found)
    blue = results(clipsearch("query", "blue", "--db", str(db), "--model", str(colour_model), "--top", "30").stdout)
    assert len(blue) == 16 and not any(path.endswith("blue_0.jpg") for _, path in blue)

    # 30 days on, the deleted row is forgotten for good: the packed file that still holds it is
    # rewritten (the overlay no longer knows the row was deleted).
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE images SET deleted_at = deleted_at - 31 * 86400 WHERE deleted = 1")
    clipsearch("index", str(library), "--db", str(db), "--model", str(colour_model))
    assert (packed.stat().st_ino, packed.stat().st_mtime_ns) != written
    blue = results(clipsearch("query", "blue", "--db", str(db), "--model", str(colour_model), "--top", "30").stdout)
    assert len(blue) == 16 and not any(path.endswith("blue_0.jpg") for _, path in blue)


def test_the_page_searches_every_shard_and_shows_their_photos(two_folders, colour_model, isolated_home):
    from types import SimpleNamespace

    from test_serve import Served

    internal, usb = two_folders
    clipsearch("index", str(internal), str(usb), "--model", str(colour_model))
    served = Served(SimpleNamespace(db=isolated_home / "index.db", model=colour_model))
    try:
        status, body = served.api("q=red&top=3")
        assert status == 200 and {Path(r["path"]).parent.parent.name for r in body["results"]} == {"internal", "usb"}
        on_usb = next(r for r in body["results"] if "/usb/" in r["path"])
        status, headers, thumb = served.request(f"/thumb/{on_usb['id']}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and thumb[:2] == b"\xff\xd8"
        # More like this, from a shard: the three red photos (the colour model sees them as one vector).
        status, like = served.api(f"like={on_usb['id']}&top=3")
        assert status == 200 and on_usb["path"] in [r["path"] for r in like["results"]]
        assert [r["score"] for r in like["results"]] == [1.0, 1.0, 1.0]
        away = usb.with_name("usb-unplugged")
        usb.rename(away)
        try:
            status, body = served.api("q=red&top=30")
            assert status == 200 and len(body["results"]) == 16
            assert any("8 photos of" in note and "left out" in note for note in body["notes"])
        finally:
            away.rename(usb)
    finally:
        served.stop()


def test_a_one_folder_cache_from_before_shards_moves_whole_and_leaves_nothing_behind(tmp_path, colour_model,
                                                                                    isolated_home):
    photos = tmp_path / "photos"
    colour_library(photos, 2)
    db = isolated_home / "index.db"
    clipsearch("index", str(photos), "--model", str(colour_model), env={"CLIPSEARCH_DB": str(db)})
    clipsearch("tag", "reds", "red", "--model", str(colour_model), "--top", "2", env={"CLIPSEARCH_DB": str(db)})
    before = rows(db)
    run = clipsearch("index", str(photos), "--model", str(colour_model))
    assert "0 new, 0 updated, 0 moved, 0 removed" in run.stderr and "16 unchanged" in run.stderr
    (shard,) = shard_files(isolated_home)
    assert rows(shard) == before and not rows(db)
    with sqlite3.connect(shard) as conn:  # a shard lists no shards, and took the keywords tag wrote
        assert conn.execute("SELECT COUNT(*) FROM shards").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM keywords_added").fetchone()[0] == 6
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM photo_meta").fetchone() == (0,)
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (0,)  # (a new connection's default)
    assert "2 photos" in clipsearch("untag", "reds").stderr
    assert len(results(clipsearch("query", "red", "--model", str(colour_model), "--top", "30").stdout)) == 16
