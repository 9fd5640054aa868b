"""`clipsearch duplicates` on real files: byte-identical copies, the same picture re-encoded,
resized, turned (by EXIF and in its pixels), converted and toned; unrelated pictures and
another framing of one scene kept apart; flat pictures never one giant group; bursts only with
a measured threshold; `--tag` through the tag machinery (ExifTool reads the keyword); prints
of photos indexed before made by an `index` run that never embeds. The real CLI, the colour
model, real SQLite caches."""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from helpers import COLOURS, run_cli
from PIL import Image, ImageEnhance


def scene(seed: int, size=(480, 360)) -> Image.Image:
    """A photo-like picture with structure of its own (smooth shapes, edges, grain)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    img = Image.fromarray(small).resize(size, Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16).copy()
    for _ in range(6):
        x, y = int(rng.integers(0, size[0] - 60)), int(rng.integers(0, size[1] - 60))
        arr[y : y + 60, x : x + 60] = rng.integers(0, 255, 3)
    arr += rng.normal(0, 4, arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def save(img: Image.Image, path, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **options)
    return path


def library(root):
    """name -> path: one picture in many forms, unrelated pictures, another framing."""
    a, b = scene(1), scene(2)
    exif = Image.Exif()
    exif[0x0112] = 6
    made = {
        "original": save(a, root / "camera" / "IMG_0001.jpg", quality=95),
        "copy": root / "backup" / "IMG_0001.jpg",
        "re-encoded": save(a, root / "messenger" / "received.jpg", quality=45),
        "resized": save(a.resize((240, 180)), root / "web" / "small.jpg", quality=80),
        "turned by EXIF": save(a.transpose(Image.Transpose.ROTATE_90), root / "camera" / "IMG_0001_r.jpg",
                               quality=92, exif=exif.tobytes()),
        "turned in pixels": save(a.transpose(Image.Transpose.ROTATE_270), root / "edits" / "turned.jpg", quality=90),
        "as PNG": save(a, root / "exports" / "IMG_0001.png"),
        "brighter": save(ImageEnhance.Brightness(a).enhance(1.2), root / "edits" / "bright.jpg", quality=90),
        "unrelated": save(b, root / "camera" / "IMG_0002.jpg", quality=95),
        "other framing": save(a.crop((80, 30, 480, 360)).resize((480, 360)), root / "camera" / "IMG_0003.jpg",
                              quality=95),
    }
    made["copy"].parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(made["original"], made["copy"])
    return made


def groups(cli, *args) -> list[dict]:
    return [json.loads(line) for line in cli("duplicates", *args, "--json").stdout.splitlines()]


def test_the_same_picture_in_every_form_is_one_group_best_copy_first(tmp_path, cli):
    made = library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    found = groups(cli)
    assert [g["kind"] for g in found] == ["same"], found
    members = {m["path"]: m for m in found[0]["members"]}
    expected = {str(made[k]) for k in ("original", "copy", "re-encoded", "resized", "turned by EXIF",
                                       "turned in pixels", "as PNG", "brighter")}
    assert set(members) == expected  # the unrelated picture and the other framing stay out
    best = found[0]["members"][0]
    # Largest, then an original format (JPEG over the PNG export), then oldest: the camera's file.
    assert best["best"] is True and best["path"] in (str(made["original"]), str(made["copy"]), str(made["turned by EXIF"]))
    identical = str(made["copy"]) if best["path"] == str(made["original"]) else str(made["original"])
    if best["path"] in (str(made["original"]), str(made["copy"])):
        assert members[identical]["identical_bytes"] is True
    assert members[str(made["turned in pixels"])]["turned"] in ("90°", "180°")
    assert all(m.get("print_difference", 0) <= 0.2 for m in found[0]["members"])
    # Text: one line per member, the best marked; the counts on stderr.
    text = cli("duplicates")
    assert text.stdout.splitlines()[0] == "same: 8 photos" and "  best  " in text.stdout.splitlines()[1]
    assert "1 groups, 8 photos, 7 beside a best copy" in text.stderr
    # Only byte-identical files with --kind exact; a folder limits the search.
    exact = groups(cli, "--kind", "exact")
    assert [sorted(m["path"] for m in g["members"]) for g in exact] == [sorted([str(made["original"]), str(made["copy"])])]
    assert groups(cli, str(tmp_path / "photos" / "edits")) == [] or all(
        m["path"].startswith(str(tmp_path / "photos" / "edits")) for g in groups(cli, str(tmp_path / "photos" / "edits"))
        for m in g["members"])


def test_flat_pictures_are_never_one_giant_group_and_cost_little(tmp_path, cli):
    """A library of grey squares (a scanner's blank pages, black frames): each file its own
    (slightly different sizes and greys, so not byte-identical), none grouped as the same."""
    root = tmp_path / "photos"
    for i in range(400):
        save(Image.new("RGB", (64 + i % 7, 64), (128 + i % 3, 128, 128)), root / f"{i // 100}" / f"grey_{i:03d}.png")
    save(scene(5), root / "photo.jpg")
    cli("index", str(root), "--workers", "1")
    started = time.monotonic()
    found = groups(cli, "--kind", "same")
    assert found == [] and time.monotonic() - started < 60
    exact = groups(cli, "--kind", "exact")
    assert all(len(g["members"]) <= 400 for g in exact)


def test_a_library_without_duplicates_says_so(tmp_path, cli):
    """Printed photos of which no two match: nothing found, no error (it raised IndexError)."""
    for seed in (1, 2, 3):
        save(scene(seed), tmp_path / "photos" / f"IMG_{seed}.jpg", quality=95)
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    result = cli("duplicates")
    assert result.stdout == "" and "0 groups, 0 photos" in result.stderr


def test_bursts_need_a_measured_threshold_and_group_frames_of_one_moment(tmp_path, cli):
    root = tmp_path / "photos"
    for i, colour in enumerate(("red", "red", "red", "blue")):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Canon", "EOS R6"
        exif.get_ifd(0x8769)[0x9003] = f"2024:07:14 18:30:{i * 2:02d}"
        rng = np.random.default_rng(i)
        frame = np.clip(np.array(COLOURS[colour]) + rng.normal(0, 12, (240, 320, 3)), 0, 255).astype(np.uint8)
        save(Image.fromarray(frame), root / f"burst_{i}.jpg", quality=90, exif=exif.tobytes())
    cli("index", str(root), "--workers", "1")
    result = cli("duplicates", "--kind", "burst")
    assert result.stdout == "" and "no burst groups: this model has no measured burst threshold" in result.stderr
    found = groups(cli, "--kind", "burst", "--burst-cosine", "0.95")
    assert len(found) == 1 and [m["path"].rsplit("/", 1)[1] for m in found[0]["members"]] != []
    names = sorted(m["path"].rsplit("/", 1)[1] for m in found[0]["members"])
    assert names == ["burst_0.jpg", "burst_1.jpg", "burst_2.jpg"]  # the blue frame is another picture
    assert all(m.get("seconds_apart", 0) <= 10 and m.get("cosine", 1) >= 0.95 for m in found[0]["members"])


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="ExifTool not installed (apt-get install libimage-exiftool-perl)")
def test_tag_marks_every_copy_but_the_best_and_untag_takes_it_back(tmp_path, cli):
    made = library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    best = groups(cli)[0]["members"][0]["path"]
    result = cli("duplicates", "--tag", "review/duplicate")
    assert "tag: 7 photos, 7 sidecars written" in result.stderr, result.stderr
    for path in made.values():
        sidecar = f"{path}.xmp"
        if str(path) == best or "unrelated" in str(path) or path == made["unrelated"] or path == made["other framing"]:
            assert not os.path.exists(sidecar), sidecar
            continue
        record = json.loads(subprocess.run(["exiftool", "-j", "-HierarchicalSubject", "-TagsList", sidecar],
                                           capture_output=True, check=True).stdout)[0]
        assert record["HierarchicalSubject"] == "review|duplicate" and record["TagsList"] == "review/duplicate"
    # The files themselves are never touched; untag removes exactly what was added.
    assert all(os.path.exists(p) for p in made.values())
    run_cli("untag", "duplicate", "--db", str(cli.db), check=True)
    assert not any(os.path.exists(f"{p}.xmp") for p in made.values())


def test_photos_indexed_before_prints_get_them_from_an_index_run_that_never_embeds(tmp_path, cli):
    made = library(tmp_path / "photos")
    cli("index", str(tmp_path / "photos"), "--workers", "1")
    with sqlite3.connect(cli.db) as db:  # as a cache from before prints were kept
        vectors = dict(db.execute("SELECT filepath, vector FROM images"))
        db.execute("UPDATE images SET print = NULL")
    result = cli("duplicates", "--kind", "same")
    assert "10 photos have no print yet: run `clipsearch index` once" in result.stderr
    assert json.loads(cli("status", "--json").stdout)["awaiting_print"] == 10
    result = cli("index", str(tmp_path / "photos"), "--workers", "1")
    assert "0 new, 0 updated" in result.stderr and "10 printed for duplicates" in result.stderr, result.stderr
    with sqlite3.connect(cli.db) as db:
        assert dict(db.execute("SELECT filepath, vector FROM images")) == vectors  # nothing re-embedded
        assert db.execute("SELECT COUNT(*) FROM images WHERE length(print) = 64").fetchone()[0] == len(made)
    assert len(groups(cli)[0]["members"]) == 8
    assert json.loads(cli("status", "--json").stdout)["awaiting_print"] == 0
    assert "printed" not in cli("index", str(tmp_path / "photos"), "--workers", "1").stderr  # done once


def test_the_print_of_every_turn_and_mirror_comes_from_the_stored_bits():
    from clipsearch.photos import prints

    img = scene(9)
    stored = prints.as_array(prints.print_of(img))
    variants = prints.dihedral(stored)
    T = Image.Transpose
    for k, op in enumerate((None, T.ROTATE_90, T.ROTATE_180, T.ROTATE_270, T.FLIP_LEFT_RIGHT, T.FLIP_TOP_BOTTOM,
                            T.TRANSPOSE, T.TRANSVERSE)):
        turned = prints.as_array(prints.print_of(img if op is None else img.transpose(op)))
        assert float(prints.distance(variants[k], turned)[0]) < 0.02, op
        assert (prints.keys(variants[k]) == prints.keys(turned)).sum() >= 3, op
    flat = prints.as_array(prints.print_of(Image.new("RGB", (50, 40), (90, 90, 90))))
    assert prints.is_flat(flat)[0] and not prints.is_flat(stored)[0]
    # A picture and its re-encode share keys; an unrelated picture shares none.
    out = io.BytesIO()
    img.save(out, "JPEG", quality=40)
    again = prints.as_array(prints.print_of(Image.open(out)))
    assert (prints.keys(again) == prints.keys(stored)).any()
    other = prints.as_array(prints.print_of(scene(10)))
    assert float(prints.distance(other, stored)[0]) > 0.3


def test_a_models_measured_burst_threshold_comes_from_its_manifest(tmp_path, cli):
    """The threshold belongs to the model: a manifest that records `burst_cosine` groups bursts
    without the option."""
    manifest_path = cli.model / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["burst_cosine"] = 0.95
    manifest_path.write_text(json.dumps(manifest))
    root = tmp_path / "photos"
    for i in range(3):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "FUJIFILM", "X-T5"
        exif.get_ifd(0x8769)[0x9003] = f"2024:07:14 18:30:{i:02d}"
        rng = np.random.default_rng(i)
        frame = np.clip(np.array(COLOURS["green"]) + rng.normal(0, 12, (240, 320, 3)), 0, 255).astype(np.uint8)
        save(Image.fromarray(frame), root / f"DSCF{i:04d}.jpg", quality=90, exif=exif.tobytes())
    cli("index", str(root), "--workers", "1")
    found = groups(cli, "--kind", "burst")
    assert len(found) == 1 and len(found[0]["members"]) == 3 and found[0]["kind"] == "burst"
