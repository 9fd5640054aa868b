"""RAW photos as a photographer's NAS holds them: RAW files made at run time (`rawfiles.py`: a
real CFA mosaic LibRaw demosaics, a JPEG preview, orientation, EXIF, GPS, XMP), indexed by the
real CLI with the colour model, found by `query`, shown by `serve`, tagged by `tag`; RAW+JPEG
pairs as one photo; stripped and hostile RAW files as one line each. ExifTool, where installed,
is the reference reader of what the files hold."""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess

import pytest
import rawfiles
from helpers import COLOURS, run_cli
from PIL import Image

from clipsearch.photos import formats

needs_rawpy = pytest.mark.skipif(formats.missing_decoder(b".dng") is not None,
                                 reason="rawpy (the raw extra) not installed")
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None,
                                    reason="ExifTool not installed (apt-get install libimage-exiftool-perl)")


def flat(colour, size=(640, 480)) -> Image.Image:
    return Image.new("RGB", size, colour)


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def exiftool(path) -> dict:
    out = subprocess.run(["exiftool", "-j", "-n", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)[0]


def query_json(cli, *args) -> list[dict]:
    return [json.loads(line) for line in cli("query", *args, "--json", "--no-server").stdout.splitlines()]


# Formats made here: DNG's TIFF structure under each maker's extension (LibRaw reads by content),
# and with ORF's and RW2's own magic numbers in place of TIFF's.
KINDS = {"dng": b"II*\0", "nef": b"II*\0", "cr2": b"II*\0", "arw": b"II*\0", "pef": b"II*\0",
         "orf": b"IIRO", "rw2": b"IIU\0"}


@needs_rawpy
def test_raw_files_are_indexed_from_their_previews_and_found_with_their_metadata(tmp_path, cli):
    """The preview (one colour) is what gets embedded, not the sensor data (another colour)."""
    root = tmp_path / "photos"
    colours = ["red", "green", "blue", "yellow", "teal", "magenta", "white"]
    made = {}
    for (kind, magic), colour in zip(KINDS.items(), colours):
        made[kind] = write(root / f"shot_{kind}.{kind.upper()}", rawfiles.make_dng(
            flat(COLOURS["black"]), preview=flat(COLOURS[colour], (320, 240)), magic=magic, make="NIKON CORPORATION",
            model=f"Camera {kind}", taken="2023:05:06 07:08:09", lens="24-70mm f/2.8", gps=(48.8584, -2.2945)))
    result = cli("index", str(root), "--workers", "1")
    assert f"{len(KINDS)} new" in result.stderr and "0 failed" in result.stderr, result.stderr
    for kind, colour in zip(KINDS, colours):
        best = query_json(cli, colour, "--top", "1")[0]
        assert best["path"] == str(made[kind]), (kind, best)
        assert best["make"] == "NIKON CORPORATION" and best["model"] == f"Camera {kind}"
        assert best["taken_at"] == "2023-05-06T07:08:09" and best["lens"] == "24-70mm f/2.8"
        assert abs(best["lat"] - 48.8584) < 1e-3 and abs(best["lon"] + 2.2945) < 1e-3
        assert (best["width"], best["height"]) == (640, 480)  # the sensor's size, not the preview's
    # Filters work on RAW metadata like on any photo's.
    assert cli("query", "--camera", "Camera orf", "--paths", "--no-server").stdout.split() == [str(made["orf"])]


@needs_rawpy
@needs_exiftool
def test_what_we_read_from_a_raw_is_what_exiftool_reads(tmp_path):
    from clipsearch.photos.metadata import read_photo_meta
    from clipsearch.photos.raw import raw_headers

    for kind, magic in KINDS.items():
        data = rawfiles.make_dng(flat(COLOURS["red"]), preview=flat(COLOURS["red"], (320, 240)), magic=magic,
                                 gps=(-33.8568, 151.2153), rating=3, xmp_keywords=["harbour"])
        path = write(tmp_path / f"x.{kind}", data)
        theirs = exiftool(path)
        ours = read_photo_meta(raw_headers(data))
        assert ours.make == theirs["Make"] and ours.model == theirs["Model"], kind
        assert ours.taken_at.replace("-", ":").replace("T", " ") == theirs["DateTimeOriginal"], kind
        assert ours.lens == theirs["LensModel"]
        assert abs(ours.lat - theirs["GPSLatitude"]) < 1e-4 and abs(ours.lon - theirs["GPSLongitude"]) < 1e-4
        assert ours.rating == theirs["Rating"] == 3 and ours.keywords == ["harbour"] == [theirs["Subject"]]


def landscape_raw(orientation: int, preview_size=(320, 240), preview_exif_orientation: int | None = None) -> bytes:
    picture = rawfiles.landscape(640, 480)
    exif = None
    if preview_exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = preview_exif_orientation
    preview = rawfiles.jpeg_bytes(picture.resize(preview_size), exif=exif) if preview_size else None
    return rawfiles.make_dng(picture, preview=preview, orientation=orientation)


def where_is_the_band(img: Image.Image) -> str:
    """Which side of an upright `rawfiles.landscape` picture holds its white band."""
    w, h = img.size
    sides = {"top": img.getpixel((w // 2, 2)), "bottom": img.getpixel((w // 2, h - 3)),
             "left": img.getpixel((2, h // 2)), "right": img.getpixel((w - 3, h // 2))}
    return max(sides, key=lambda side: min(sides[side]))


# EXIF orientation -> where the band (the picture's top as stored) is once shown upright.
BAND = {1: "top", 3: "bottom", 6: "right", 8: "left"}


@needs_rawpy
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("source", ["preview", "half-size decode"])
def test_a_raw_is_upright_by_its_own_orientation(orientation, source):
    from clipsearch.photos.preprocess import decode_image

    data = landscape_raw(orientation, preview_size=(320, 240) if source == "preview" else (40, 30))
    decoded = decode_image(io.BytesIO(data), 224 if source == "preview" else 100, name=b"x.dng")
    assert where_is_the_band(decoded.image) == BAND[orientation]
    assert (decoded.image.width > decoded.image.height) == (orientation in (1, 3))


@needs_rawpy
def test_a_previews_own_exif_orientation_is_not_applied_on_top_of_the_raws():
    """Previews are stored as the sensor saw them; a maker that also tags the preview must not
    get the picture turned twice."""
    from clipsearch.photos.preprocess import decode_image

    decoded = decode_image(io.BytesIO(landscape_raw(1, preview_exif_orientation=6)), 100, name=b"x.nef")
    assert where_is_the_band(decoded.image) == "top"
    decoded = decode_image(io.BytesIO(landscape_raw(6, preview_exif_orientation=6)), 100, name=b"x.nef")
    assert where_is_the_band(decoded.image) == "right"


@needs_rawpy
def test_a_raw_without_a_big_enough_preview_falls_back_to_the_half_size_decode(tmp_path, cli):
    root = tmp_path / "photos"
    # The sensor data is red; the only preview (where there is one) is blue and too small for the model's 32 px.
    small = write(root / "small_preview.dng", rawfiles.make_dng(flat(COLOURS["red"]), preview=flat(COLOURS["blue"], (40, 30))))
    none = write(root / "no_preview.dng", rawfiles.make_dng(flat(COLOURS["red"]), preview=None))
    write(root / "blue.jpg", rawfiles.jpeg_bytes(flat(COLOURS["blue"], (64, 48))))
    result = cli("index", str(root), "--workers", "1")
    assert "3 new" in result.stderr and "0 failed" in result.stderr
    assert set(cli("query", "red", "--top", "2", "--paths", "--no-server").stdout.split()) == {str(small), str(none)}


@needs_rawpy
def test_stripped_and_hostile_raw_files_end_in_one_line_each(tmp_path, colour_model):
    root = tmp_path / "photos"
    for name, (data, _) in rawfiles.hostile().items():
        write(root / name, data)
    write(root / "fine.jpg", rawfiles.jpeg_bytes(flat(COLOURS["green"], (64, 48))))
    db = tmp_path / "index.db"
    result = run_cli("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1",
                     "--file-timeout", "20", timeout=240)
    err = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    failed = {line.split(":")[1].strip().rsplit("/", 1)[1] for line in lines}
    with sqlite3.connect(db) as con:
        indexed = {os.path.basename(os.fsdecode(p)) for (p,) in con.execute("SELECT filepath FROM images WHERE vector IS NOT NULL")}
    # Each hostile file is refused in exactly one line naming it, or indexed from what it still
    # holds, as `rawfiles.hostile` says; LibRaw's own stderr never leaks out.
    hostile = rawfiles.hostile()
    assert failed == {name for name, (_, kind) in hostile.items() if kind == "failed"}, (failed, indexed)
    assert indexed == {name for name, (_, kind) in hostile.items() if kind == "indexed"} | {"fine.jpg"}
    assert len(lines) == len(failed)
    assert "fine.jpg" in indexed
    for line in lines:
        assert "RAW" in line or "cannot decode" in line or "refused" in line, line
    assert not [line for line in err.splitlines() if line.startswith("unknown file")], err  # LibRaw's own words


def make_pair(root, colour="blue", raw_colour=None, name="IMG_0001", raw_ext="CR2", jpeg_exif=True):
    """A camera's RAW+JPEG: the same shot twice, the JPEG with the camera's EXIF."""
    raw = write(root / f"{name}.{raw_ext}", rawfiles.make_dng(
        flat(COLOURS[raw_colour or colour]), preview=flat(COLOURS[raw_colour or colour], (320, 240))))
    exif = Image.Exif()
    if jpeg_exif:
        exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R6"
    jpeg = write(root / f"{name}.JPG", rawfiles.jpeg_bytes(flat(COLOURS[colour], (320, 240)), exif=exif))
    return raw, jpeg


def vectors(db) -> dict[str, bytes]:
    with sqlite3.connect(db) as con:
        return {os.path.basename(os.fsdecode(p)): v for p, v in
                con.execute("SELECT filepath, vector FROM images WHERE deleted = 0 AND vector IS NOT NULL")}


@needs_rawpy
def test_a_raw_and_jpeg_pair_is_one_photo_decoded_from_its_jpeg(tmp_path, cli):
    root = tmp_path / "photos"
    # The RAW is red, its JPEG blue: which file was decoded shows in what the photo is found as.
    raw, jpeg = make_pair(root, "blue", raw_colour="red")
    lone = write(root / "lone.NEF", rawfiles.make_dng(flat(COLOURS["green"]), preview=flat(COLOURS["green"], (320, 240))))
    result = cli("index", str(root), "--workers", "1")
    assert "2 new" in result.stderr, result.stderr
    text = cli("query", "blue", "--top", "5", "--no-server").stdout.splitlines()
    assert len(text) == 2 and text[0].split("\t")[1:] == [str(jpeg), str(raw)]  # one result, the RAW named beside
    best = query_json(cli, "blue", "--top", "1")[0]
    assert best["path"] == str(jpeg) and best["raw"] == str(raw) and best["make"] == "Canon"
    assert query_json(cli, "green", "--top", "1")[0]["raw"] is None
    assert set(cli("query", "red", "--top", "5", "--paths", "--no-server").stdout.split()) == {str(jpeg), str(lone)}
    status = cli("status").stdout
    assert "raw files:               1 alone, 1 in RAW+JPEG pairs" in status and "indexed:                 2" in status


@needs_rawpy
def test_a_pair_split_later_embeds_nothing_again(tmp_path, cli):
    root = tmp_path / "photos"
    raw, jpeg = make_pair(root)
    raw2, jpeg2 = make_pair(root, "red", name="IMG_0002", raw_ext="ARW")
    cli("index", str(root), "--workers", "1")
    before = vectors(cli.db)
    # The JPEG deleted (the photographer keeps the RAW only): the RAW is the photo, with the pair's vector.
    jpeg.unlink()
    result = cli("index", str(root), "--workers", "1")
    assert "0 new, 0 updated, 1 moved, 1 removed, 0 failed" in result.stderr, result.stderr
    after = vectors(cli.db)
    assert after["IMG_0001.CR2"] == before["IMG_0001.JPG"] and "IMG_0001.JPG" not in after
    found = query_json(cli, "blue", "--top", "1")[0]
    assert found["path"] == str(raw) and found["raw"] is None and found["model"] == "Canon EOS 5D Mark IV"
    # The RAW deleted: the JPEG stays the photo, without a RAW beside it.
    raw2_bytes = raw2.read_bytes()
    raw2.unlink()
    result = cli("index", str(root), "--workers", "1")
    assert "0 new, 0 updated, 0 moved, 0 removed, 0 failed" in result.stderr, result.stderr
    assert query_json(cli, "red", "--top", "1")[0]["raw"] is None and vectors(cli.db)["IMG_0002.JPG"] == before["IMG_0002.JPG"]
    # A RAW put back beside its JPEG pairs again, still nothing embedded.
    raw2.write_bytes(raw2_bytes)
    result = cli("index", str(root), "--workers", "1")
    assert "0 new, 0 updated, 0 moved, 0 removed, 0 failed" in result.stderr, result.stderr
    assert query_json(cli, "red", "--top", "1")[0]["raw"] == str(raw2)
    # The JPEG moved to another folder (an export, a phone sync): both stay photos, nothing embedded.
    (root / "exports").mkdir()
    os.rename(root / "IMG_0002.JPG", root / "exports" / "IMG_0002.JPG")
    result = cli("index", str(root), "--workers", "1")
    assert "0 new, 0 updated, 2 moved, 0 removed, 0 failed" in result.stderr, result.stderr
    now = vectors(cli.db)
    assert now["IMG_0002.JPG"] == now["IMG_0002.ARW"] == before["IMG_0002.JPG"]
    assert {f["path"] for f in query_json(cli, "red", "--top", "5")} == {str(raw), str(raw2),
                                                                         str(root / "exports" / "IMG_0002.JPG")}


@needs_rawpy
@needs_exiftool
def test_tag_writes_the_keyword_where_the_tools_look_for_each_file_of_a_pair(tmp_path, cli):
    root = tmp_path / "photos"
    raw, jpeg = make_pair(root)
    # darktable's sidecar of the RAW, with a photographer's keyword: found through the pair.
    (root / "IMG_0001.CR2.xmp").write_text(rawfiles.xmp_packet(4, ["harbour"]).decode(), encoding="utf-8")
    cli("index", str(root), "--workers", "1")
    found = query_json(cli, "--tag", "harbour")
    assert [f["path"] for f in found] == [str(jpeg)] and found[0]["rating"] == 4
    cli("tag", "sea", "blue", "--top", "1")
    for sidecar in (root / "IMG_0001.JPG.xmp", root / "IMG_0001.CR2.xmp"):
        subject = exiftool(sidecar)["Subject"]
        assert "sea" in (subject if isinstance(subject, list) else [subject]), sidecar
    assert "harbour" in exiftool(root / "IMG_0001.CR2.xmp")["Subject"]  # the photographer's stays
    run_cli("untag", "sea", "--db", str(cli.db), check=True)
    assert not (root / "IMG_0001.JPG.xmp").exists()  # clipsearch made it and it now says nothing
    assert exiftool(root / "IMG_0001.CR2.xmp")["Subject"] == "harbour"


@needs_rawpy
def test_serve_shows_a_raw_from_its_preview_and_downloads_the_raw(tmp_path, cli):
    from test_serve import Served

    root = tmp_path / "photos"
    lone = write(root / "lone.NEF", landscape_raw(6))
    raw, jpeg = make_pair(root)
    cli("index", str(root), "--workers", "1")
    served = Served(cli)
    try:
        status, body = served.api("q=blue&top=5")
        pair = next(r for r in body["results"] if r["name"] == "IMG_0001.JPG")
        assert pair["raw"] == str(raw) and pair["raw_name"] == "IMG_0001.CR2"
        single = next(r for r in body["results"] if r["name"] == "lone.NEF")
        status, headers, data = served.request(f"/thumb/{single['id']}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(data))
        assert thumb.height > thumb.width and where_is_the_band(thumb) == "right"  # upright from the preview
        status, headers, data = served.request(f"/photo/{single['id']}")
        assert status == 200 and data == lone.read_bytes() and headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''lone.NEF"
        status, headers, data = served.request(f"/raw/{pair['id']}")
        assert status == 200 and data == raw.read_bytes() and "IMG_0001.CR2" in headers["Content-Disposition"]
        assert served.request(f"/photo/{pair['id']}")[2] == jpeg.read_bytes()
        assert served.request(f"/raw/{single['id']}")[0] == 404
        assert served.api(f"like={pair['id']}")[0] == 200
        assert json.loads(served.request(f"/api/photo/{pair['id']}")[2])["raw_name"] == "IMG_0001.CR2"
    finally:
        served.stop()


def rawpy_shim(tmp_path):
    """First on PYTHONPATH: `import rawpy` fails as when the raw extra is not installed."""
    shim = tmp_path / "shim" / "rawpy"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'rawpy'\", name='rawpy')\n")
    return tmp_path / "shim"


def test_without_rawpy_raw_files_are_skipped_with_one_note_and_picked_up_once_it_is_installed(tmp_path, colour_model):
    root = tmp_path / "photos"
    write(root / "lone.CR3", rawfiles.make_dng(flat(COLOURS["green"]), preview=flat(COLOURS["green"], (320, 240))))
    make_pair(root)
    db = tmp_path / "index.db"
    args = ("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    result = run_cli(*args, env={"PYTHONPATH": str(rawpy_shim(tmp_path))})
    err = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    assert "1 new" in err and "0 failed" in err and "1 skipped" in err
    assert err.count("clipsearch[raw]") == 1, err  # one note naming the extra
    assert set(vectors(db)) == {"IMG_0001.JPG"}  # the pair needs no RAW decoder
    status = run_cli("status", "--db", str(db), "--model", str(colour_model),
                     env={"PYTHONPATH": str(rawpy_shim(tmp_path))}).stdout.decode()
    assert "RAW photos need rawpy: pip install 'clipsearch[raw]'" in status
    if formats.missing_decoder(b".dng") is not None:
        return  # this environment has no rawpy: what follows needs it
    result = run_cli(*args)
    assert "1 new" in result.stderr.decode() and set(vectors(db)) == {"IMG_0001.JPG", "lone.CR3"}


def cr3(ifd0: bytes, exif_ifd: bytes) -> bytes:
    """A Canon CR3's structure (ISO-BMFF) holding the given TIFF structures in CMT1/CMT2."""
    def box(kind: bytes, payload: bytes) -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload
    canon = bytes.fromhex("85c0b687820f11e08111f4ce462b6a48")
    return box(b"ftyp", b"crx \0\0\0\x01crx isom") + box(b"moov", box(b"uuid", canon + box(b"CMT1", ifd0) + box(b"CMT2", exif_ifd)))


def test_metadata_is_read_from_cr3_raf_and_orf_structures():
    from clipsearch.photos.metadata import read_photo_meta
    from clipsearch.photos.raw import raw_headers

    ifd0 = rawfiles.build_tiff([[(271, rawfiles.ASCII, "Canon"), (272, rawfiles.ASCII, "Canon EOS R5")]], {})
    exif_ifd = rawfiles.build_tiff([[(36867, rawfiles.ASCII, "2022:01:02 03:04:05"),
                                     (42036, rawfiles.ASCII, "RF24-70mm F2.8 L IS USM")]], {})
    meta = read_photo_meta(raw_headers(cr3(ifd0, exif_ifd)))
    assert (meta.make, meta.model, meta.taken_at, meta.lens) == ("Canon", "Canon EOS R5", "2022-01-02T03:04:05",
                                                                 "RF24-70mm F2.8 L IS USM")
    # Fujifilm RAF: the header points at a JPEG carrying the EXIF.
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "FUJIFILM", "X-T5"
    jpeg = rawfiles.jpeg_bytes(flat(COLOURS["red"], (32, 24)), exif=exif)
    header = b"FUJIFILMCCD-RAW 0201FF383501".ljust(84, b"\0") + (100).to_bytes(4, "big") + len(jpeg).to_bytes(4, "big")
    meta = read_photo_meta(raw_headers(header.ljust(100, b"\0") + jpeg))
    assert (meta.make, meta.model) == ("FUJIFILM", "X-T5")
    # A RAF whose pointer is past its end: no metadata, no exception.
    assert read_photo_meta(raw_headers(header.ljust(100, b"\0"))).make is None
    # Olympus ORF: TIFF but for its magic number.
    meta = read_photo_meta(raw_headers(b"IIRO" + ifd0[4:]))
    assert meta.model == "Canon EOS R5"


@needs_rawpy
def test_a_raw_libraw_cannot_open_is_indexed_from_the_jpeg_it_carries(tmp_path, cli):
    """A camera newer than the LibRaw in rawpy's wheel, a RAF without its sensor data, a copy
    cut short after its preview: the embedded JPEG still stands for the photo."""
    root = tmp_path / "photos"
    picture = rawfiles.landscape(640, 480, left=COLOURS["yellow"], right=COLOURS["yellow"])
    unknown = write(root / "future.NEF", rawfiles.make_dng(
        flat(COLOURS["black"]), preview=picture.resize((320, 240)), dng=False, raw=False, make="FUTURECAM",
        model="FC-1", orientation=6))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "FUJIFILM", "X-T5"
    fuji = write(root / "DSCF0001.RAF", rawfiles.raf(rawfiles.jpeg_bytes(flat(COLOURS["teal"], (320, 240)), exif=exif)))
    whole = rawfiles.make_dng(flat(COLOURS["magenta"]), preview=flat(COLOURS["magenta"], (320, 240)), preview_first=True)
    cut = write(root / "cut_short.ARW", whole[: len(whole) // 2])
    result = cli("index", str(root), "--workers", "1")
    assert "3 new" in result.stderr and "0 failed" in result.stderr, result.stderr
    found = query_json(cli, "yellow", "--top", "1")[0]
    assert found["path"] == str(unknown) and found["make"] == "FUTURECAM" and found["height"] > found["width"]
    assert query_json(cli, "teal", "--top", "1")[0] | {"score": 0} == query_json(cli, "teal", "--top", "1")[0] | {
        "path": str(fuji), "make": "FUJIFILM", "model": "X-T5", "score": 0}
    assert query_json(cli, "magenta", "--top", "1")[0]["path"] == str(cut)
    # Upright by the RAW's own orientation: the 320x240 preview is shown 240x320.
    from clipsearch.photos.preprocess import decode_image

    assert decode_image(str(unknown), 100).image.size == (240, 320)


@needs_rawpy
def test_a_raw_whose_sensor_data_is_empty_is_refused_not_indexed_as_a_black_picture(tmp_path, cli):
    root = tmp_path / "photos"
    write(root / "blank.dng", rawfiles.make_dng(flat((0, 0, 0)), preview=None))
    result = cli("index", str(root), "--workers", "1")
    assert "1 failed" in result.stderr and "image data is empty" in result.stderr, result.stderr


@needs_rawpy
def test_a_standalone_raws_lightroom_and_darktable_sidecars_are_read(tmp_path, cli):
    root = tmp_path / "photos"
    lightroom = write(root / "DSC_0001.NEF", rawfiles.make_dng(flat(COLOURS["red"]), preview=flat(COLOURS["red"], (320, 240))))
    darktable = write(root / "DSC_0002.NEF", rawfiles.make_dng(flat(COLOURS["blue"]), preview=flat(COLOURS["blue"], (320, 240))))
    (root / "DSC_0001.xmp").write_text(rawfiles.xmp_packet(5, ["portfolio"]).decode(), encoding="utf-8")
    (root / "DSC_0002.NEF.xmp").write_text(rawfiles.xmp_packet(2, ["archive"]).decode(), encoding="utf-8")
    cli("index", str(root), "--workers", "1")
    assert [f["path"] for f in query_json(cli, "--tag", "portfolio")] == [str(lightroom)]
    assert [f["path"] for f in query_json(cli, "--tag", "archive")] == [str(darktable)]
    assert [f["path"] for f in query_json(cli, "--min-rating", "5")] == [str(lightroom)]


@needs_rawpy
def test_a_half_size_decode_keeps_to_the_workers_bounds(tmp_path, colour_model):
    """LibRaw runs in the index workers: a RAW that needs more memory than --worker-memory is
    refused in one line, and indexed once the bound is raised (nothing else to do)."""
    root = tmp_path / "photos"
    write(root / "big.dng", rawfiles.make_dng(rawfiles.landscape(6000, 4000), preview=None))  # 24 MP
    db = tmp_path / "index.db"
    args = ("index", str(root), "--db", str(db), "--model", str(colour_model), "--workers", "1")
    result = run_cli(*args, "--worker-memory", "150", timeout=240)
    err = result.stderr.decode()
    assert "big.dng: refused: needed more than 150 MB of memory (--worker-memory)" in err and "Traceback" not in err, err
    result = run_cli(*args, "--worker-memory", "2000", timeout=240)  # retried by itself: the bound was raised
    assert "1 new" in result.stderr.decode(), result.stderr.decode()
    assert set(vectors(db)) == {"big.dng"}
