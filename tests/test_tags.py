"""`clipsearch tag` / `untag` on real photos and sidecars, read back by ExifTool (the XMP reader
the photo tools agree with): keywords where digiKam, darktable, Lightroom and Immich look,
everything else in a sidecar unchanged, hand-written keywords never touched."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, colour_library, run_cli, run_unprivileged, write_photo

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None,
                                reason="ExifTool not installed (apt-get install libimage-exiftool-perl; .ci/run does)")

DARKTABLE_SIDECAR = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:acme="http://example.com/acme/1.0/"
   xmp:Rating="4"
   xmp:Label="Red"
   darktable:history_end="1"
   acme:secret="keep me">
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Holiday</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Bag><rdf:li>{hand}</rdf:li></rdf:Bag></dc:subject>
   <darktable:history><rdf:Seq><rdf:li darktable:operation="exposure" darktable:enabled="1"/></rdf:Seq></darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""
KEYWORD_TAGS = ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList")


def exiftool(*paths) -> list[dict]:
    out = subprocess.run(["exiftool", "-j", "-G1", "-a", "-struct", *map(str, paths)], capture_output=True, check=True)
    return [{k: v for k, v in record.items() if not k.startswith(("System:", "ExifTool:", "File:"))}
            for record in json.loads(out.stdout)]


def as_list(value) -> list:
    return value if isinstance(value, list) else ([] if value in (None, "") else [value])


@pytest.fixture
def library(tmp_path, colour_model):
    root = tmp_path / "photos"
    photos = colour_library(root, per_colour=2)
    env = {"CLIPSEARCH_HOME": str(tmp_path / "home"), "CLIPSEARCH_MODEL": str(colour_model)}
    assert run_cli("index", str(root), "--workers", "1", env=env).returncode == 0
    return root, photos, env


def tag(env, *args):
    return run_cli("tag", *args, env=env)


def test_keywords_land_where_the_tools_read_them_and_nothing_else_changes(library):
    root, photos, env = library
    red0, red1 = photos["red"]
    darktable = Path(str(red0) + ".xmp")  # digiKam / darktable name
    darktable.write_text(DARKTABLE_SIDECAR.format(hand="holiday 2019"), encoding="utf-8")
    adobe = red1.with_suffix(".xmp")  # Lightroom name
    adobe.write_text(DARKTABLE_SIDECAR.format(hand="family"), encoding="utf-8")
    before = exiftool(darktable, adobe)
    result = tag(env, "red", "--top", "2")
    assert result.returncode == 0 and b"2 sidecars written" in result.stderr, result.stderr
    assert not Path(str(red1) + ".xmp").exists()  # the existing Adobe-style sidecar was the one updated
    after = exiftool(darktable, adobe)
    for old, new, hand in zip(before, after, ("holiday 2019", "family")):
        assert as_list(new["XMP-dc:Subject"]) == [hand, "red"]
        assert as_list(new["XMP-lr:HierarchicalSubject"]) == ["clipsearch|red"]
        assert as_list(new["XMP-digiKam:TagsList"]) == ["clipsearch/red"]
        rest = {k: v for k, v in new.items() if k not in KEYWORD_TAGS and k != "SourceFile"}
        assert rest == {k: v for k, v in old.items() if k not in KEYWORD_TAGS and k != "SourceFile"}
        assert rest["XMP-acme:Secret"] == "keep me" and rest["XMP-xmp:Rating"] == 4
    # Tagging again changes nothing, byte for byte.
    snapshot = darktable.read_bytes(), adobe.read_bytes()
    again = tag(env, "red", "--top", "2")
    assert b"0 sidecars written, 2 already so" in again.stderr and (darktable.read_bytes(), adobe.read_bytes()) == snapshot


def test_new_sidecars_by_either_name_and_dry_run(library):
    root, photos, env = library
    dry = tag(env, "blue", "--top", "2", "--dry-run")
    assert dry.returncode == 0 and b"2 sidecars would be written" in dry.stderr
    assert f"{photos['blue'][0]}.xmp: + blue, clipsearch|blue, clipsearch/blue".encode() in dry.stdout
    assert not list(root.rglob("*.xmp"))
    assert tag(env, "blue", "--top", "2", "--sidecar", "adobe", "--parent", "Things").returncode == 0
    sidecars = sorted(root.rglob("*.xmp"))
    assert sidecars == sorted(p.with_suffix(".xmp") for p in photos["blue"])
    for record in exiftool(*sidecars):
        assert as_list(record["XMP-lr:HierarchicalSubject"]) == ["Things|blue"]
        assert as_list(record["XMP-digiKam:TagsList"]) == ["Things/blue"]


def test_untag_removes_exactly_what_tag_added(library):
    root, photos, env = library
    person = Path(str(photos["green"][0]) + ".xmp")
    person.write_text(DARKTABLE_SIDECAR.format(hand="green"), encoding="utf-8")  # written by hand before
    assert tag(env, "green", "--top", "2").returncode == 0
    tagged = exiftool(person)[0]
    assert as_list(tagged["XMP-dc:Subject"]) == ["green"]  # there already: not added twice, not recorded
    result = run_cli("untag", "green", env=env)
    assert result.returncode == 0, result.stderr
    kept = exiftool(person)[0]
    assert as_list(kept["XMP-dc:Subject"]) == ["green"]  # the person's keyword stays
    assert "XMP-lr:HierarchicalSubject" not in kept and "XMP-digiKam:TagsList" not in kept
    assert kept["XMP-xmp:Rating"] == 4 and kept["XMP-darktable:History"] == [{"Operation": "exposure", "Enabled": 1}]
    assert not Path(str(photos["green"][1]) + ".xmp").exists()  # made by tag, empty again: removed
    assert b"0 photos" in run_cli("untag", "green", env=env).stderr  # nothing left to undo


def test_bad_sidecars_and_read_only_folders_are_left_alone_with_one_warning(library):
    root, photos, env = library
    broken = Path(str(photos["yellow"][0]) + ".xmp")
    broken.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF", encoding="utf-8")
    laughs = Path(str(photos["yellow"][1]) + ".xmp")
    laughs.write_text('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
                      "<x:xmpmeta xmlns:x='adobe:ns:meta/'>&lol2;</x:xmpmeta>", encoding="utf-8")
    before = broken.read_bytes(), laughs.read_bytes()
    result = tag(env, "yellow", "--top", "2")
    err = result.stderr.decode()
    # Every sidecar it had to change was left alone: exit 8 (issue 23), one line saying so.
    assert result.returncode == 8 and "Traceback" not in err and "none of the 2 sidecars" in err, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("not tagged" in w for w in warnings), err
    assert (broken.read_bytes(), laughs.read_bytes()) == before
    folder = photos["magenta"][0].parent
    os.chmod(folder, 0o555)
    try:
        locked = run_unprivileged("tag", "magenta", "--top", "2", env=env)
    finally:
        os.chmod(folder, 0o755)
    err = locked.stderr.decode()
    assert locked.returncode == 8 and "0 sidecars written" in err and "2 failed" in err, err
    assert "cannot write (Permission denied)" in err


def test_a_kill_at_any_moment_leaves_whole_sidecars(tmp_path, colour_model):
    root = tmp_path / "photos"
    for i in range(300):
        write_photo(root / f"p{i:03d}.jpg", (200, 10 + i % 50, 10), size=(64, 48), seed=i)
    env = {"CLIPSEARCH_HOME": str(tmp_path / "home"), "CLIPSEARCH_MODEL": str(colour_model)}
    assert run_cli("index", str(root), env=env).returncode == 0
    for delay in (0.6, 0.9, 1.2):
        proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "tag", f"red{delay}", "red", "--top", "300"],
                                cwd=REPO, env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sidecars = sorted(root.glob("*.jpg.xmp"))
    assert sidecars, "the runs were killed before writing anything: raise the delays"
    for record in exiftool(*sidecars):  # every sidecar a whole XMP file ExifTool reads
        assert as_list(record.get("XMP-dc:Subject")), record
    finished = tag(env, "red1.2", "red", "--top", "300")
    assert finished.returncode == 0, finished.stderr
    assert all("red1.2" in as_list(r["XMP-dc:Subject"]) for r in exiftool(*sorted(root.glob("*.jpg.xmp"))))


def test_labels_give_each_photo_its_best_labels(library, tmp_path):
    root, photos, env = library
    labels = tmp_path / "labels.txt"
    labels.write_text("# colours\nred\nsky\tblue\nleaf\tgreen\n", encoding="utf-8")
    result = tag(env, "--labels", str(labels), "--per-photo", "1", "--min-score", "0.9")
    assert result.returncode == 0, result.stderr
    found = {Path(r["SourceFile"]).name: as_list(r["XMP-dc:Subject"]) for r in exiftool(*sorted(root.rglob("*.xmp")))}
    expected = {f"{p.name}.xmp": [label] for colour, label in (("red", "red"), ("blue", "sky"), ("green", "leaf"))
                for p in photos[colour]}
    assert found == expected


def test_tag_without_a_limit_refuses(library):
    _, _, env = library
    result = tag(env, "everything")
    assert result.returncode == 2 and b"--top N or --min-score S" in result.stderr


def test_a_sidecar_changed_on_disk_meanwhile_is_left_as_it_is(tmp_path):
    """Someone saves the sidecar in digiKam between clipsearch's read and its write."""
    from clipsearch.photos.sidecars import SidecarError, read_sidecar, write_sidecar

    path = tmp_path / "photo.jpg.xmp"
    path.write_text(DARKTABLE_SIDECAR.format(hand="mine"), encoding="utf-8")
    sidecar = read_sidecar(bytes(path))
    sidecar.add("dc:subject", "beach")
    theirs = DARKTABLE_SIDECAR.format(hand="theirs, saved meanwhile")
    path.write_text(theirs, encoding="utf-8")
    with pytest.raises(SidecarError, match="changed on disk"):
        write_sidecar(sidecar)
    assert path.read_text(encoding="utf-8") == theirs
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg.xmp"]  # no temporary file left


def test_tag_and_untag_within_a_folder(library):
    root, photos, env = library
    red0, red1 = photos["red"]
    assert tag(env, "red", "--top", "2", "--in", str(red0.parent)).returncode == 0
    tagged = {p.name for p in root.rglob("*.xmp")}
    assert tagged == {f"{p.name}.xmp" for p in (red0, red1) if p.parent == red0.parent}
    other = next(p for colours in photos.values() for p in colours if p.parent != red0.parent)
    assert run_cli("untag", "red", "--in", str(other.parent), env=env).stderr.startswith(b"untag: 0 photos")
    assert run_cli("untag", "red", "--in", str(red0.parent), env=env).returncode == 0
    assert not list(root.rglob("*.xmp"))


def test_untag_follows_a_photo_moved_with_its_sidecar(library):
    """The cache follows the move (same content), and the sidecar moved along with the photo."""
    root, photos, env = library
    photo = photos["teal"][0]
    assert tag(env, "teal", "--top", "1").returncode == 0
    moved = root / "moved" / photo.name
    moved.parent.mkdir()
    photo.rename(moved)
    Path(str(photo) + ".xmp").rename(Path(str(moved) + ".xmp"))
    assert run_cli("index", str(root), env=env).returncode == 0
    result = run_cli("untag", "teal", env=env)
    assert result.returncode == 0 and b"1 sidecars written" in result.stderr, result.stderr
    assert not Path(str(moved) + ".xmp").exists()


def test_a_v1_cache_is_read_as_it_is_and_upgraded_by_the_first_tag(library):
    import sqlite3

    root, photos, env = library
    home = Path(env["CLIPSEARCH_HOME"])
    db = home / "index.db"
    # A one-file cache at the default place, as clipsearch before shards left it.
    shutil.rmtree(home / "index.db.shards")
    for old in home.glob("index.db*"):
        old.unlink()
    assert run_cli("index", str(root), "--workers", "1", env={**env, "CLIPSEARCH_DB": str(db)}).returncode == 0
    with sqlite3.connect(db) as conn:  # what clipsearch before `tag` wrote
        conn.execute("DROP TABLE keywords_added")
        conn.execute("DROP TABLE photo_meta")
        conn.execute("DROP TABLE photo_keywords")
        conn.execute("PRAGMA user_version = 1")
    answer = run_cli("query", "red", "--paths", "--top", "2", env=env)
    assert answer.returncode == 0 and len(answer.stdout.splitlines()) == 2, answer.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)  # a reader does not upgrade
    answer = run_cli("query", "red", "--json", "--top", "1", env=env)  # metadata fields empty, not an error
    assert answer.returncode == 0 and json.loads(answer.stdout)["taken_at"] is None, answer.stderr
    assert tag(env, "red", "--top", "2").returncode == 0
    from clipsearch.cache.schema import SCHEMA_VERSION

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT COUNT(*) FROM keywords_added").fetchone() == (6,)  # 2 photos x 3 fields
