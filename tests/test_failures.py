"""Failures as a user lives with them: metadata never fails a photo (a reader that cannot be
imported, a hostile sidecar), failed files are listed and retried, a failure caused by the
environment is retried once it changes, and a library folder on an unplugged disk does not
cancel the run. The real CLI (in-process, or in a subprocess where the environment differs),
real JPEGs and sidecars, real databases."""
from __future__ import annotations

import io
import json
import os
import sqlite3

from helpers import COLOURS, colour_library, run_cli, write_photo
from PIL import Image
from test_bad_input import failed_paths, indexed_paths
from test_metadata import XMP, bag
from test_poison import big_flat_png


def xmp_photo(path, colour, keywords, rating=None):
    """A phone-style JPEG whose keywords sit in embedded XMP."""
    attrs = f'xmp:Rating="{rating}"' if rating is not None else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), colour).save(path, "JPEG", xmp=XMP.format(attrs=attrs, body=bag("dc:subject", keywords)).encode())
    return path


def broken_defusedxml(tmp_path):
    """A folder that, first on PYTHONPATH, makes `import defusedxml` fail as when it is absent."""
    shim = tmp_path / "shim" / "defusedxml"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'defusedxml'\", name='defusedxml')\n")
    return tmp_path / "shim"


def listed(db, model, *tags):
    """Paths a filter-only query lists (no text: every photo matching the filters)."""
    args = ["query", "--db", str(db), "--model", str(model), "--paths", "--no-server"]
    for tag in tags:
        args += ["--tag", tag]
    result = run_cli(*args, check=True)
    return set(result.stdout.decode().split())


def test_photos_with_xmp_get_their_vectors_when_the_xml_reader_cannot_be_imported(tmp_path, colour_model):
    root = tmp_path / "photos"
    embedded = xmp_photo(root / "phone.jpg", COLOURS["red"], ["beach"])
    with_sidecar = write_photo(root / "camera.jpg", COLOURS["blue"])
    (root / "camera.jpg.xmp").write_text(XMP.format(attrs="", body=bag("dc:subject", ["mountain"])), encoding="utf-8")
    plain = write_photo(root / "plain.jpg", COLOURS["green"])
    db = tmp_path / "index.db"
    shim = broken_defusedxml(tmp_path)

    result = run_cli("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1",
                     env={"PYTHONPATH": str(shim)})
    err = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    assert "3 new, 0 updated, 0 moved, 0 removed, 0 failed" in err, err
    assert indexed_paths(db) == {os.fsencode(p) for p in (embedded, with_sidecar, plain)}
    # One warning per photo whose metadata went unread, naming it; none for the plain photo.
    assert err.count("metadata partly unread") == 2 and f"warning: {embedded}: metadata" in err, err
    with sqlite3.connect(db) as conn:
        problems = dict(conn.execute("SELECT i.filepath, m.problems FROM photo_meta m JOIN images i ON i.id = m.image_id"))
    assert "defusedxml" in problems[os.fsencode(embedded)] and problems[os.fsencode(plain)] is None

    # The next run with the reader importable reads those two again (headers only) and finds the keywords.
    again = run_cli("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    err = again.stderr.decode()
    assert again.returncode == 0 and "warning" not in err and "0 new" in err, err
    assert listed(db, colour_model, "beach") == {str(embedded)}
    assert listed(db, colour_model, "mountain") == {str(with_sidecar)}
    quiet = run_cli("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr.decode()


def test_a_hostile_or_broken_sidecar_leaves_the_metadata_empty_and_indexes_the_photo(cli, tmp_path):
    root = tmp_path / "photos"
    bomb = write_photo(root / "bomb.jpg", COLOURS["red"])
    (root / "bomb.jpg.xmp").write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
                                       '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><x>&b;</x>', encoding="utf-8")
    cut = xmp_photo(root / "cut.jpg", COLOURS["blue"], ["kept"])
    (root / "cut.xmp").write_bytes(XMP.format(attrs="", body=bag("dc:subject", ["lost"])).encode()[:150])
    result = cli("index", str(root), "--workers", "1")
    assert "2 new" in result.stderr and "0 failed" in result.stderr, result.stderr
    assert f"warning: {bomb}: metadata partly unread (sidecar XMP ignored" in result.stderr, result.stderr
    assert f"warning: {cut}: metadata partly unread" in result.stderr
    assert indexed_paths(cli.db) == {os.fsencode(bomb), os.fsencode(cut)}
    # The embedded keyword of the photo whose sidecar is broken is still there.
    found = cli("query", "--tag", "kept", "--paths").stdout.split()
    assert found == [str(cut)]


def broken_then_fixed(path, colour):
    """A file that cannot be decoded, and the bytes of a good JPEG of exactly its size."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, "JPEG")
    good = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * len(good))
    return good


def put_back(path, data):
    """Rewrite a file keeping its size and mtime: to the walk, nothing changed."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_failed_files_are_listed_and_retried_on_demand(cli, tmp_path):
    root = tmp_path / "photos"
    colour_library(root, per_colour=1)
    first, second = root / "album0" / "broken.jpg", root / "album1" / "broken.jpg"
    good = {first: broken_then_fixed(first, COLOURS["red"]), second: broken_then_fixed(second, COLOURS["blue"])}
    result = cli("index", str(root), "--workers", "1")
    assert "2 failed" in result.stderr and "status --failed" in result.stderr

    text = cli("status", "--failed")
    lines = text.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [str(first), str(second)], lines
    assert all(line.endswith(": not a recognised image format") for line in lines), lines
    assert "2 failed files; retry them with `clipsearch index --retry-failed`" in text.stderr
    rows = [json.loads(line) for line in cli("status", "--failed", "--json").stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(first), str(second)] and all(row["error"] for row in rows)
    only = cli("status", "--failed", str(root / "album1")).stdout.splitlines()
    assert len(only) == 1 and only[0].startswith(f"{second}: ")

    for path, data in good.items():
        put_back(path, data)
    unchanged = cli("index", str(root), "--workers", "1")
    assert "0 new" in unchanged.stderr and "2 skipped" in unchanged.stderr  # remembered: not tried nightly
    scoped = cli("index", str(root / "album0"), "--retry-failed", "--workers", "1")
    assert "1 new" in scoped.stderr and "1 retried" in scoped.stderr, scoped.stderr
    assert failed_paths(cli.db) == {os.fsencode(second)}
    everything = cli("index", "--retry-failed", "--workers", "1")  # no folder: the whole library
    assert "1 new" in everything.stderr and "0 failed" in everything.stderr, everything.stderr
    assert failed_paths(cli.db) == set() and {os.fsencode(first), os.fsencode(second)} <= indexed_paths(cli.db)
    assert cli("status", "--failed").stdout == ""


def test_a_failure_is_retried_by_itself_when_what_it_depended_on_changed(cli, tmp_path):
    root = tmp_path / "photos"
    path = root / "photo.jpg"
    good = broken_then_fixed(path, COLOURS["red"])
    cli("index", str(root), "--workers", "1")
    with sqlite3.connect(cli.db) as conn:
        failure = json.loads(conn.execute("SELECT failure FROM images").fetchone()[0])
    assert failure["versions"]["pillow"] == Image.__version__ and failure["versions"]["clipsearch"]
    put_back(path, good)
    assert "1 skipped" in cli("index", str(root), "--workers", "1").stderr
    # As if the failure had been met with another Pillow: the next run tries it again.
    failure["versions"]["pillow"] = "9.0.0"
    with sqlite3.connect(cli.db) as conn:
        conn.execute("UPDATE images SET failure = ?", (json.dumps(failure),))
    listed_retry = json.loads(cli("status", "--failed", "--json").stdout)
    assert listed_retry["retry"] == "pillow changed"
    result = cli("index", str(root), "--workers", "1")
    assert "1 new" in result.stderr and "1 retried" in result.stderr, result.stderr


def test_a_file_refused_at_the_time_bound_is_retried_when_the_bound_is_raised(tmp_path, colour_model):
    root = tmp_path / "photos"
    colour_library(root, per_colour=1)
    big = big_flat_png(root / "album1" / "big.png")
    db = tmp_path / "index.db"
    args = ("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    refused = run_cli(*args, "--file-timeout", "0.3")
    assert refused.returncode == 0 and failed_paths(db) == {os.fsencode(big)}, refused.stderr
    same = run_cli(*args, "--file-timeout", "0.3")
    assert b"1 skipped" in same.stderr and b"retried" not in same.stderr, same.stderr
    raised = run_cli(*args, "--file-timeout", "60")  # the file itself did not change
    assert raised.returncode == 0 and b"1 new" in raised.stderr and b"1 retried" in raised.stderr, raised.stderr
    assert os.fsencode(big) in indexed_paths(db)


def test_an_unplugged_disk_among_the_folders_keeps_its_photos_and_indexes_the_rest(cli, tmp_path):
    home, usb = tmp_path / "Pictures", tmp_path / "usb" / "Photos"
    write_photo(home / "a.jpg", COLOURS["red"])
    on_usb = write_photo(usb / "b.jpg", COLOURS["blue"])
    cli("index", str(home), str(usb), "--workers", "1")
    (usb.parent).rename(tmp_path / "usb-unplugged")
    later = write_photo(home / "c.jpg", COLOURS["green"])

    result = cli("index", str(home), str(usb), "--workers", "1", expect=6)
    assert "1 new" in result.stderr, result.stderr
    assert f"{usb}: not there (disk unplugged, share not mounted?); its cached photos were kept" in result.stderr
    assert "Traceback" not in result.output
    assert {os.fsencode(later), os.fsencode(on_usb)} <= indexed_paths(cli.db)
    # The disk is back: nothing to do, nothing re-embedded, exit 0.
    (tmp_path / "usb-unplugged").rename(usb.parent)
    back = cli("index", str(home), str(usb), "--workers", "1")
    assert "0 new" in back.stderr and "0 removed" in back.stderr and "3 unchanged" in back.stderr, back.stderr


def test_a_folder_never_indexed_that_does_not_exist_is_a_typo(cli, tmp_path):
    home = tmp_path / "Pictures"
    write_photo(home / "a.jpg", COLOURS["red"])
    cli("index", str(home), "--workers", "1")
    result = cli("index", str(home), str(tmp_path / "Pictrues"), "--workers", "1", expect=2)
    assert "Pictrues: no such folder, and the cache holds no photos from there; check the path" in result.stderr
    assert "new" not in result.stderr  # said before any work
