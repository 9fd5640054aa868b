"""What photos say about themselves, kept by `clipsearch index`: read in the same pass that
embeds a photo; for photos cached before, from their headers alone (no re-embedding, no vision
graph); again when only a sidecar changed. Real JPEGs, sidecars and databases."""
from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

from clipsearch.store import Store
from helpers import COLOURS, write_photo
from test_metadata import XMP, bag, dms
from test_moves import break_vision_graph

pytest.importorskip("defusedxml")


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
