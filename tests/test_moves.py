"""Renames, moves and swaps, and folders that come back empty (an unmounted share): after ONE
index run the cache must hold exactly the photos on disk, under their current names, and
pure renames must never decode a photo or load the vision graph."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import COLOURS, write_photo


def summary_of(result) -> str:
    return [line for line in result.stderr.splitlines() if line.startswith("indexed:")][-1]


def photos_on_disk(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.jpg")}


def found_by_query(cli) -> set[str]:
    return set(cli("query", "red", "--top", "1000", "--paths").stdout.splitlines())


def vectors_by_path(cli) -> dict[str, bytes]:
    with sqlite3.connect(cli.db) as db:
        return {os.fsdecode(p): v for p, v in db.execute("SELECT filepath, vector FROM images WHERE deleted = 0")}


def break_vision_graph(model: Path) -> None:
    """Garble vision.onnx in place, keeping its size, inode and mtime: the verified-file stamp
    still vouches for it, so any attempt to load the graph fails loudly."""
    path = model / "vision.onnx"
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def library(tmp_path, cli):
    root = tmp_path / "photos"
    for i, (name, rgb) in enumerate(COLOURS.items()):
        write_photo(root / ("album" if i < 4 else "other") / f"IMG_{i:04d}.jpg", rgb, seed=i)
    cli("index", str(root), "--workers", "1")
    return root


def rename_in_folder(root):
    (root / "album" / "IMG_0001.jpg").rename(root / "album" / "beach.jpg")
    return {"album/beach.jpg": "album/IMG_0001.jpg"}, "0 new, 0 updated, 1 moved, 0 removed"


def move_to_other_folder(root):
    (root / "album" / "IMG_0001.jpg").rename(root / "other" / "beach.jpg")
    return {"other/beach.jpg": "album/IMG_0001.jpg"}, "0 new, 0 updated, 1 moved, 0 removed"


def rename_folder(root):
    (root / "album").rename(root / "Summer 2019")
    return ({f"Summer 2019/IMG_{i:04d}.jpg": f"album/IMG_{i:04d}.jpg" for i in range(4)},
            "0 new, 0 updated, 4 moved, 0 removed")


def swap_names(root):
    a, b = root / "album" / "IMG_0000.jpg", root / "album" / "IMG_0002.jpg"
    a.rename(root / "album" / "tmp")
    b.rename(a)
    (root / "album" / "tmp").rename(b)
    return ({"album/IMG_0000.jpg": "album/IMG_0002.jpg", "album/IMG_0002.jpg": "album/IMG_0000.jpg"},
            "0 new, 0 updated, 2 moved, 0 removed")


def swap_across_folders(root):
    a, b = root / "album" / "IMG_0003.jpg", root / "other" / "IMG_0005.jpg"
    a.rename(root / "tmp.jpg")
    b.rename(a)
    (root / "tmp.jpg").rename(b)
    return ({"album/IMG_0003.jpg": "other/IMG_0005.jpg", "other/IMG_0005.jpg": "album/IMG_0003.jpg"},
            "0 new, 0 updated, 2 moved, 0 removed")


def rename_plus_new_file(root):
    (root / "other" / "IMG_0006.jpg").rename(root / "other" / "cake.jpg")
    write_photo(root / "other" / "IMG_9999.jpg", (90, 60, 30), seed=77)
    return {"other/cake.jpg": "other/IMG_0006.jpg"}, "1 new, 0 updated, 1 moved, 0 removed"


@pytest.mark.parametrize("change", [rename_in_folder, move_to_other_folder, rename_folder, swap_names,
                                    swap_across_folders, rename_plus_new_file])
def test_one_run_after_renames_finds_every_photo_under_its_new_name(cli, library, change):
    before = vectors_by_path(cli)
    renamed, counts = change(library)
    if counts.startswith("0 new"):
        break_vision_graph(cli.model)
    result = cli("index", str(library), "--workers", "2")
    assert counts in summary_of(result), summary_of(result)
    assert found_by_query(cli) == photos_on_disk(library)
    after = vectors_by_path(cli)
    for new, old in renamed.items():  # the vector followed the photo, nothing was re-embedded
        assert after[str(library / new)] == before[str(library / old)], new
    # and the next run has nothing left to do
    assert "0 new, 0 updated, 0 moved, 0 removed" in summary_of(cli("index", str(library), "--workers", "1"))


def test_a_copy_beside_its_original_is_embedded_and_both_are_found(cli, library):
    shutil.copy2(library / "album" / "IMG_0001.jpg", library / "album" / "IMG_0001 copy.jpg")
    result = cli("index", str(library), "--workers", "1")
    assert "1 new, 0 updated, 0 moved, 0 removed" in summary_of(result)
    assert found_by_query(cli) == photos_on_disk(library)
    vectors = vectors_by_path(cli)
    assert vectors[str(library / "album" / "IMG_0001 copy.jpg")] == vectors[str(library / "album" / "IMG_0001.jpg")]


def test_a_file_rewritten_with_another_photo_of_the_same_size_is_re_embedded(cli, library):
    """Content match must not steal a row whose file is still in place: an in-place edit is
    an update, and the other photo keeps its row."""
    target = library / "album" / "IMG_0000.jpg"
    shutil.copy(library / "album" / "IMG_0002.jpg", target)  # new mtime, other content
    result = cli("index", str(library), "--workers", "1")
    assert "0 new, 1 updated, 0 moved, 0 removed" in summary_of(result)
    assert found_by_query(cli) == photos_on_disk(library)


# -- folders that come back empty ------------------------------------------------------------

def test_an_empty_library_root_keeps_its_photos_and_exits_6(cli, library):
    before = found_by_query(cli)
    hidden = library.parent / "unmounted"
    library.rename(hidden)
    library.mkdir()  # the mount point, left behind as an empty folder
    result = cli("index", str(library), "--workers", "1", "-q", expect=6)
    assert "is the share or disk mounted" in result.stderr and str(library) in result.stderr
    assert "--allow-empty" in result.stderr
    assert found_by_query(cli) == before  # nothing was removed
    status = json.loads(cli("status", "--json").stdout)
    assert status["missing_folders"] == [str(library)] and status["indexed"] == len(before)

    library.rmdir()
    hidden.rename(library)  # mounted again
    result = cli("index", str(library), "--workers", "1")
    assert "0 new, 0 updated, 0 moved, 0 removed" in summary_of(result)
    assert found_by_query(cli) == photos_on_disk(library)


def test_an_empty_sub_folder_is_kept_and_the_rest_is_indexed(cli, library):
    shutil.rmtree(library / "other")
    (library / "other").mkdir()
    write_photo(library / "album" / "new.jpg", (1, 2, 3), seed=5)
    result = cli("index", str(library), "--workers", "1", expect=6)
    assert "1 new" in summary_of(result)
    assert str(library / "other") in result.stderr and "4 photos" in result.stderr
    assert len(found_by_query(cli)) == 9


def test_allow_empty_confirms_a_folder_emptied_on_purpose(cli, library):
    shutil.rmtree(library / "other")
    (library / "other").mkdir()
    cli("index", str(library), "--workers", "1", expect=6)
    result = cli("index", str(library), "--workers", "1", "--allow-empty")
    assert "0 new, 0 updated, 0 moved, 4 removed" in summary_of(result)
    assert found_by_query(cli) == photos_on_disk(library)
    cli("index", str(library), "--workers", "1")  # and the next plain run is quiet about it


def test_photos_moved_out_of_a_folder_that_stays_empty_are_moves_not_an_alarm(cli, library):
    (library / "sorted").mkdir()
    for photo in (library / "other").iterdir():
        photo.rename(library / "sorted" / photo.name)
    result = cli("index", str(library), "--workers", "1")
    assert "0 new, 0 updated, 4 moved, 0 removed" in summary_of(result)
    assert found_by_query(cli) == photos_on_disk(library)


def test_remembered_failures_are_not_announced_again_when_their_folder_returns(cli, tmp_path):
    root = tmp_path / "share"
    write_photo(root / "a" / "good.jpg", (200, 10, 10))
    (root / "a" / "bad.jpg").write_bytes(b"not a photo")
    first = cli("index", str(root), "--workers", "1")
    assert "bad.jpg" in first.stderr
    (root / "a").rename(tmp_path / "away")
    cli("index", str(root), "--workers", "1", "--allow-empty")  # away for a while: soft-deleted
    (tmp_path / "away").rename(root / "a")
    result = cli("index", str(root), "--workers", "1", "-q")
    assert result.stderr == ""
    assert found_by_query(cli) == {str(root / "a" / "good.jpg")}
