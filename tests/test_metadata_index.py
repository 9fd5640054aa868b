"""What photos say about themselves, kept by `clipsearch index`: read in the same pass that
embeds a photo; for photos cached before, from their headers alone (no re-embedding, no vision
graph); again when only a sidecar changed. Real JPEGs, sidecars and databases."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest
from helpers import COLOURS, write_photo
from PIL import Image
from test_metadata import XMP, bag, dms
from test_moves import break_vision_graph

from clipsearch.cache.store import Store


def dated_photo(path, colour, when="2019:07:14 18:03:11", gps=None, make="Canon"):
    exif = Image.Exif()
    exif[0x010F] = make
    exif.get_ifd(0x8769)[0x9003] = when
    for tag, value in (gps or {}).items():
        exif.get_ifd(0x8825)[tag] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path, "JPEG", exif=exif.tobytes())
    return path


def meta(db, path):
    store = Store(db, readonly=True)
    try:
        return store.meta_of(bytes(path))
    finally:
        store.close()


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "photos"
    beach = dated_photo(root / "beach.jpg", COLOURS["yellow"], gps={1: "N", 2: dms(38, 43, 12), 3: "W", 4: dms(9, 8, 24)})
    night = dated_photo(root / "night.jpg", COLOURS["black"], when="2024:12:24 21:00:00", make="FUJIFILM")
    (root / "night.jpg.xmp").write_text(XMP.format(attrs='xmp:Rating="4"', body=bag("dc:subject", ["christmas"])),
                                        encoding="utf-8")
    plain = write_photo(root / "plain.jpg", COLOURS["red"])
    return root, beach, night, plain


def test_index_keeps_what_the_photos_say(library, cli):
    root, beach, night, plain = library
    cli("index", str(root), "--workers", "1")
    got = meta(cli.db, beach)
    assert (got["taken_at"], got["taken_source"], got["make"]) == ("2019-07-14T18:03:11", "exif:DateTimeOriginal", "Canon")
    assert got["lat"] == pytest.approx(38.72) and got["lon"] == pytest.approx(-9.14) and (got["width"], got["height"]) == (64, 48)
    assert got["taken_key"] == pytest.approx(1563127391.0)
    got = meta(cli.db, night)
    assert got["keywords"] == ["christmas"] and got["rating"] == 4 and got["make"] == "FUJIFILM"
    assert meta(cli.db, plain)["taken_at"] is None  # never the file's mtime
    status = json.loads(cli("status", "--json").stdout)
    assert status["metadata"] == {"read": 3, "dated": 2, "located": 1, "with_keywords": 1}


def test_a_cache_from_before_gets_its_metadata_from_headers_alone(library, cli, colour_model):
    root, beach, night, plain = library
    cli("index", str(root), "--workers", "1")
    with sqlite3.connect(cli.db) as db:  # the cache as clipsearch before metadata left it
        db.execute("DROP TABLE photo_meta")
        db.execute("DROP TABLE photo_keywords")
        db.execute("PRAGMA user_version = 2")
        vectors = dict(db.execute("SELECT filepath, vector FROM images"))
    break_vision_graph(colour_model)  # any attempt to embed would fail loudly
    result = cli("index", str(root), "--workers", "2")
    assert "0 new, 0 updated" in result.stderr and "3 unchanged" in result.stderr, result.stderr
    assert meta(cli.db, beach)["make"] == "Canon" and meta(cli.db, night)["keywords"] == ["christmas"]
    with sqlite3.connect(cli.db) as db:
        assert dict(db.execute("SELECT filepath, vector FROM images")) == vectors
    again = json.loads(cli("status", "--json").stdout)
    assert again["last_run"]["headers_read"] == 3 and again["metadata"]["read"] == 3
    cli("index", str(root), "--workers", "2")  # nothing left to read
    assert json.loads(cli("status", "--json").stdout)["last_run"]["headers_read"] == 0


def test_a_sidecar_that_changed_alone_is_read_again_without_the_vision_graph(library, cli, colour_model):
    root, beach, night, plain = library
    cli("index", str(root), "--workers", "1")
    break_vision_graph(colour_model)
    (root / "beach.xmp").write_text(XMP.format(attrs='xmp:Rating="5"', body=bag("dc:subject", ["sea", "holiday"])),
                                    encoding="utf-8")  # tagged in Lightroom
    cli("index", str(root), "--workers", "1")
    assert meta(cli.db, beach)["keywords"] == ["sea", "holiday"] and meta(cli.db, beach)["rating"] == 5
    (root / "beach.xmp").unlink()
    cli("index", str(root), "--workers", "1")
    assert meta(cli.db, beach)["keywords"] == [] and meta(cli.db, beach)["rating"] is None


def test_bad_metadata_never_costs_a_photo_its_vector(tmp_path, cli):
    root = tmp_path / "photos"
    dated_photo(root / "zeros.jpg", COLOURS["blue"], when="0000:00:00 00:00:00",
                gps={1: "N", 2: dms(95, 0, 0), 3: "E", 4: dms(9, 0, 0)})
    (root / "zeros.jpg.xmp").write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "a">]><x>&a;</x>', encoding="utf-8")
    cli("index", str(root), "--workers", "1")
    got = meta(cli.db, root / "zeros.jpg")
    assert (got["taken_at"], got["lat"], got["keywords"]) == (None, None, [])
    assert cli("query", "blue", "--paths").stdout.strip().endswith("zeros.jpg")


LISBON, PORTO, SYDNEY = (38.7223, -9.1393), (41.1579, -8.6291), (-33.8688, 151.2093)


def gps_of(point):
    lat, lon = point

    def part(value):
        degrees = int(abs(value))
        minutes = int((abs(value) - degrees) * 60)
        return dms(degrees, minutes, round(((abs(value) - degrees) * 60 - minutes) * 60, 2))

    return {1: "N" if lat >= 0 else "S", 2: part(lat), 3: "E" if lon >= 0 else "W", 4: part(lon)}


@pytest.fixture
def described(tmp_path, cli):
    """Five photos whose metadata the expected answers below are computed from by hand."""
    root = tmp_path / "described"
    spec = {  # name: (colour, date, make, model, place, keywords, rating)
        "a": ("yellow", "2019:07:14 10:00:00", "Canon", "EOS 80D", LISBON, ["beach"], 4),
        "b": ("yellow", "2019:08:02 10:00:00", "Canon", "EOS 80D", PORTO, ["beach", "family"], 2),
        "c": ("red", "2019:12:24 20:00:00", "FUJIFILM", "X-T3", LISBON, ["christmas"], 5),
        "d": ("red", "2024:12:25 09:00:00", "Google", "Pixel 7", SYDNEY, ["Christmas", "family"], 3),
    }
    for name, (colour, when, make, model, place, keywords, rating) in spec.items():
        path = dated_photo(root / f"{name}.jpg", COLOURS[colour], when=when, gps=gps_of(place), make=make)
        exif = Image.open(path).getexif()
        exif[0x0110] = model
        Image.open(path).save(path, "JPEG", exif=exif.tobytes())
        (root / f"{name}.jpg.xmp").write_text(XMP.format(attrs=f'xmp:Rating="{rating}"', body=bag("dc:subject", keywords)),
                                              encoding="utf-8")
    write_photo(root / "e.jpg", COLOURS["red"])  # says nothing about itself
    cli("index", str(root), "--workers", "1")
    return root


def names(result) -> list[str]:
    return [line.rsplit("/", 1)[1].removesuffix(".jpg") for line in result.stdout.splitlines()]


@pytest.mark.parametrize("args,expected", [
    (["--after", "2019-06", "--before", "2019-09"], {"a", "b"}),
    (["--after", "2019-12-24T19:00", "--before", "2019-12-25"], {"c"}),
    (["--before", "2019-08-02"], {"a"}),  # exclusive
    (["--camera", "canon"], {"a", "b"}),
    (["--camera", "x-t3"], {"c"}),
    (["--camera", "PIXEL"], {"d"}),
    (["--near", "38.72,-9.14", "--within", "25km"], {"a", "c"}),
    (["--near", "38.72,-9.14", "--within", "400km"], {"a", "b", "c"}),
    (["--near", "-33.87,151.21"], {"d"}),  # default 10 km
    (["--tag", "family"], {"b", "d"}),
    (["--tag", "CHRISTMAS"], {"c", "d"}),
    (["--tag", "christmas", "--tag", "family"], {"d"}),
    (["--min-rating", "4"], {"a", "c"}),
    (["--tag", "beach", "--min-rating", "3"], {"a"}),
    (["--camera", "canon", "--near", "38.72,-9.14", "--within", "25km"], {"a"}),
    (["--after", "2030"], set()),
])
def test_each_filter_alone_and_combined(described, cli, args, expected):
    # Through the packed file's filter columns, then through the database rows changed since
    # the packed file was written (an index run that has committed rows and not yet packed them).
    for view in ("packed", "changed since packed"):
        if view != "packed":
            rewind_packed(cli.db)
        for text in ("red", "yellow"):  # whatever the ranking, the filters decide the set
            result = cli("query", text, "--top", "10", "--paths", *args)
            assert set(names(result)) == expected, (view, args, result.stderr)
        assert set(names(cli("query", "--paths", *args))) == expected  # listing, no text
    if not expected:
        assert "no photo matches the filters" in cli("query", "red", *args).stderr


def test_an_empty_filtered_answer_counts_the_photos_whose_metadata_is_not_read(described, cli):
    """Photos cached before metadata was kept: an empty filtered answer says how many (those
    the filters were tried on: `--in` counts), from the packed file's columns and from rows
    changed since it was written alike."""
    from clipsearch.cache.packed import packed_path

    (described / "sub").mkdir()
    for name in ("c", "d"):
        (described / f"{name}.jpg").rename(described / "sub" / f"{name}.jpg")
        (described / f"{name}.jpg.xmp").rename(described / "sub" / f"{name}.jpg.xmp")
    cli("index", str(described), "--workers", "1")
    with sqlite3.connect(cli.db) as conn:  # as a cache from before metadata was kept
        deleted = conn.execute("DELETE FROM photo_meta WHERE image_id IN (SELECT id FROM images WHERE dir = ?)",
                               (os.fsencode(described / "sub"),)).rowcount
    assert deleted == 2
    packed_path(cli.db).unlink()  # made again from the database by the next query
    for view in ("packed", "changed since packed"):
        if view != "packed":
            rewind_packed(cli.db)
        found = cli("query", "red", "--after", "2030")
        assert "no photo matches the filters; the metadata of 2 photos is not read yet" in found.stderr, (view, found)
        inside = cli("query", "red", "--after", "2030", "--in", str(described / "sub"))
        assert "the metadata of 2 photos is not read yet" in inside.stderr, view
        assert cli("query", "red", "--camera", "fujifilm").stdout == ""  # c's camera is not known any more
    cli("index", str(described), "--workers", "1")  # reads their headers, embeds nothing
    found = cli("query", "red", "--after", "2030")
    assert "no photo matches the filters" in found.stderr and "not read yet" not in found.stderr
    assert names(cli("query", "red", "--camera", "fujifilm")) == ["c"]


def rewind_packed(db, seq=0):
    """Make the packed vector file look written at change counter `seq`: every row changed
    later is then read from the database."""
    from clipsearch.cache.packed import MAGIC, packed_path

    path = packed_path(db)
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[8:12], "little")
    header = json.loads(data[12 : 12 + length])
    header["seq"] = seq
    encoded = json.dumps(header).encode()
    data[: 12 + len(encoded)] = MAGIC + len(encoded).to_bytes(4, "little") + encoded
    path.write_bytes(bytes(data))


def test_filters_see_metadata_changed_after_the_packed_file_was_written(described, cli):
    """A sidecar changed alone updates only metadata; it must reach the filters even while the
    packed file (with its filter columns) still holds the old values."""
    from clipsearch.cache.packed import packed_path

    old_packed = packed_path(cli.db).read_bytes()
    (described / "a.jpg.xmp").write_text(XMP.format(attrs='xmp:Rating="1"', body=bag("dc:subject", ["sea"])),
                                         encoding="utf-8")
    (described / "e.jpg.xmp").write_text(XMP.format(attrs="", body=bag("dc:subject", ["ÄPFEL"])), encoding="utf-8")
    cli("index", str(described), "--workers", "1")
    for view in ("packed", "old packed file"):
        if view != "packed":
            packed_path(cli.db).write_bytes(old_packed)
        assert set(names(cli("query", "red", "--paths", "--tag", "beach"))) == {"b"}, view
        assert set(names(cli("query", "red", "--paths", "--tag", "sea"))) == {"a"}, view
        assert set(names(cli("query", "red", "--paths", "--min-rating", "4"))) == {"c"}, view
        assert set(names(cli("query", "red", "--paths", "--tag", "äpfel"))) == {"e"}, view  # any case, not only ASCII


def test_sort_by_date_and_listing_without_text(described, cli):
    assert names(cli("query", "red", "--top", "3", "--sort", "date", "--paths")) == ["d", "c", "e"]
    assert names(cli("query", "--camera", "canon", "--paths")) == ["b", "a"]  # newest first
    assert names(cli("query", "--after", "2019-12-24", "--before", "2019-12-27", "--paths")) == ["c"]
    listing = cli("query", "--tag", "family")
    assert [line.split("\t")[0] for line in listing.stdout.splitlines()] == ["-", "-"]  # no score without text


def test_json_lines_carry_the_metadata(described, cli):
    rows = [json.loads(line) for line in cli("query", "yellow", "--json", "--tag", "beach", "--min-rating", "3").stdout.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["path"].endswith("a.jpg") and row["taken_at"] == "2019-07-14T10:00:00" and row["make"] == "Canon"
    assert row["model"] == "EOS 80D" and row["keywords"] == ["beach"] and row["rating"] == 4
    assert row["lat"] == pytest.approx(LISBON[0], abs=1e-4) and row["lon"] == pytest.approx(LISBON[1], abs=1e-4)
    assert (row["width"], row["height"]) == (64, 48) and 0 < row["score"] <= 1


@pytest.mark.parametrize("args,message", [
    (["--after", "2019-13"], "--after '2019-13'"),
    (["--near", "95,0"], "latitude must be within"),
    (["--near", "lisbon"], "give LAT,LON"),
    (["--within", "25km"], "--within needs --near"),
    (["--near", "1,1", "--within", "far"], "give a distance such as 25km"),
    (["--after", "2020", "--before", "2019"], "nothing can match"),
])
def test_bad_filter_values_say_which_option(described, cli, args, message):
    result = cli("query", "red", *args, expect=2)
    assert message in result.stderr and "Traceback" not in result.stderr


def test_tag_takes_the_same_filters(described, cli, tmp_path):
    result = cli("tag", "xmas", "red", "--top", "5", "--tag", "christmas", "--dry-run")
    assert "2 photos" in result.stderr and "c.jpg.xmp: + xmas" in result.stdout and "d.jpg.xmp: + xmas" in result.stdout


def test_the_fill_of_an_old_cache_killed_midway_resumes(tmp_path, colour_model):
    """An old cache upgraded and filled from headers, SIGKILLed during the fill: nothing lost,
    the next run reads only what is left, nothing is embedded again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import REPO, run_cli

    root = tmp_path / "photos"
    for i in range(600):
        dated_photo(root / f"{i // 100}" / f"p{i:03d}.jpg", (i % 250, 100, 50), when=f"2020:01:{1 + i % 28:02d} 10:00:00")
    db = tmp_path / "index.db"
    args = ["index", str(root), "--db", str(db), "--model", str(colour_model)]
    assert run_cli(*args).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE photo_meta")
        conn.execute("DROP TABLE photo_keywords")
        conn.execute("PRAGMA user_version = 2")
        vectors = dict(conn.execute("SELECT filepath, vector FROM images"))
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", *args, "--commit-seconds", "0.05", "--workers", "1"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    read = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(db) as conn:
                read = conn.execute("SELECT COUNT(*) FROM photo_meta").fetchone()[0]
        except sqlite3.OperationalError:
            continue  # not upgraded yet
        if read >= 50:
            break
    assert proc.poll() is None, "the fill finished before it could be killed: give it more photos"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        partial = conn.execute("SELECT COUNT(*) FROM photo_meta").fetchone()[0]
    assert 50 <= partial < 600
    final = run_cli(*args)
    assert final.returncode == 0 and b"0 new, 0 updated" in final.stderr, final.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM photo_meta WHERE taken_at IS NOT NULL").fetchone()[0] == 600
        assert dict(conn.execute("SELECT filepath, vector FROM images")) == vectors
    status = json.loads(run_cli("status", "--json", "--db", str(db), "--model", str(colour_model)).stdout)
    assert status["last_run"]["headers_read"] == 600 - partial
