"""Optional formats: HEIC/HEIF through pillow-heif when installed, AVIF through Pillow when
built with libavif; without a decoder those files are skipped with one note saying what to
install, and are indexed by the first run after it is installed."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from helpers import COLOURS, run_cli, write_photo
from PIL import Image

from clipsearch.cli.main import main
from clipsearch.photos import formats
from clipsearch.photos.preprocess import open_image

needs_heif = pytest.mark.skipif(not formats.heif_available(), reason="pillow-heif (the heic extra) not installed")


def write_heic(path, colour, size=(320, 240), exif_orientation: int | None = None):
    import pillow_heif

    pillow_heif.register_heif_opener()
    img = Image.new("RGB", size, colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    img.save(path, format="HEIF", quality=90, **kwargs)
    return path


def index_and_query(colour_model, db, library, *queries, workers: int = 1):
    runner = CliRunner()
    indexed = runner.invoke(main, ["index", str(library), "--db", str(db), "--model", str(colour_model),
                                   "--workers", str(workers)])
    assert indexed.exit_code == 0, indexed.output
    tops = []
    for query in queries:
        answer = runner.invoke(main, ["query", query, "--db", str(db), "--model", str(colour_model), "--paths", "--top", "1"])
        assert answer.exit_code == 0, answer.output
        tops.append(os.path.basename(answer.stdout.strip()))
    return indexed, tops


@pytest.fixture
def without_heif(monkeypatch):
    """This installation as if pillow-heif were not installed."""
    monkeypatch.setattr(formats, "heif_problem", lambda: "not installed")
    formats.indexed_extensions.cache_clear()
    yield
    formats.indexed_extensions.cache_clear()


@needs_heif
def test_heic_photos_are_indexed_and_found(colour_model, tmp_path):
    library = tmp_path / "library"
    write_heic(library / "IMG_0001.HEIC", COLOURS["red"])
    write_heic(library / "IMG_0002.heif", COLOURS["green"])
    write_photo(library / "blue.jpg", COLOURS["blue"])
    # two workers: the spawned worker processes register the decoder themselves
    indexed, tops = index_and_query(colour_model, tmp_path / "index.db", library, "red", "green", "blue", workers=2)
    assert "3 new" in indexed.stderr and "warning" not in indexed.stderr, indexed.stderr
    assert tops == ["IMG_0001.HEIC", "IMG_0002.heif", "blue.jpg"]
    like = CliRunner().invoke(main, ["query", "--like", str(library / "IMG_0002.heif"), "--db", str(tmp_path / "index.db"),
                                     "--model", str(colour_model), "--paths", "--top", "1"])
    assert like.exit_code == 0 and like.stdout.strip().endswith("IMG_0002.heif"), like.output
    status = CliRunner().invoke(main, ["status", "--db", str(tmp_path / "index.db"), "--model", str(colour_model)])
    formats_line = next(line for line in status.stdout.splitlines() if line.startswith("formats:"))
    assert " heic heif hif " in formats_line and "pillow-heif" not in formats_line, formats_line


@needs_heif
def test_heic_orientation_is_applied_once(tmp_path):
    # Landscape pixels tagged "rotate 90 degrees to display": the photo must come out portrait
    # (pillow-heif applies the transform; exif_transpose must not rotate it back).
    path = write_heic(tmp_path / "portrait.heic", (200, 10, 10), size=(400, 300), exif_orientation=6)
    assert open_image(path, 224).size == (300, 400)


def test_heic_without_its_decoder_is_skipped_with_one_note(colour_model, tmp_path, without_heif):
    library = tmp_path / "library"
    write_photo(library / "red.jpg", COLOURS["red"])
    for name in ("IMG_0001.HEIC", "IMG_0002.heic", "IMG_0003.heif"):
        (library / name).write_bytes(b"\x00\x00\x00\x18ftypheic" + os.urandom(64))  # never opened
    indexed, tops = index_and_query(colour_model, tmp_path / "index.db", library, "red")
    lines = indexed.stderr.splitlines()
    assert "1 new" in lines[0] and "3 skipped" in lines[0] and "warning" not in indexed.stderr, indexed.stderr
    assert lines[1:] == ["note: 3 files skipped: HEIC/HEIF photos need pillow-heif: pip install 'clipsearch[heic]'"]
    assert tops == ["red.jpg"]
    status = CliRunner().invoke(main, ["status", "--db", str(tmp_path / "index.db"), "--model", str(colour_model)])
    assert "pip install 'clipsearch[heic]'" in status.stdout and " heic" not in status.stdout, status.stdout
    quiet = CliRunner().invoke(main, ["index", str(library), "--db", str(tmp_path / "index.db"), "--model",
                                      str(colour_model), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output


@needs_heif
def test_installing_the_heic_decoder_later_indexes_what_was_skipped(colour_model, tmp_path, monkeypatch):
    library = tmp_path / "library"
    write_photo(library / "blue.jpg", COLOURS["blue"])
    write_heic(library / "IMG_0001.HEIC", COLOURS["red"])
    db = tmp_path / "index.db"
    monkeypatch.setattr(formats, "heif_problem", lambda: "not installed")
    formats.indexed_extensions.cache_clear()
    try:
        before, tops = index_and_query(colour_model, db, library, "red")
    finally:
        monkeypatch.undo()
        formats.indexed_extensions.cache_clear()
    assert "1 new" in before.stderr and "1 skipped" in before.stderr and tops == ["blue.jpg"]
    after, tops = index_and_query(colour_model, db, library, "red")
    assert "1 new" in after.stderr and "0 skipped" in after.stderr and "1 unchanged" in after.stderr, after.stderr
    assert tops == ["IMG_0001.HEIC"]


@pytest.mark.skipif(not formats.avif_available(), reason="this Pillow was built without libavif")
def test_avif_photos_are_indexed_and_found(colour_model, tmp_path):
    library = tmp_path / "library"
    write_photo(library / "red.avif", COLOURS["red"])
    write_photo(library / "green.jpg", COLOURS["green"])
    indexed, tops = index_and_query(colour_model, tmp_path / "index.db", library, "red", "green")
    assert "2 new" in indexed.stderr and "warning" not in indexed.stderr, indexed.stderr
    assert tops == ["red.avif", "green.jpg"]


def test_a_file_that_failed_before_is_counted_as_skipped_not_unchanged(colour_model, tmp_path):
    library = tmp_path / "library"
    write_photo(library / "red.jpg", COLOURS["red"])
    (library / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    first, _ = index_and_query(colour_model, tmp_path / "index.db", library)
    assert "1 new" in first.stderr and "1 failed" in first.stderr and "0 skipped" in first.stderr, first.stderr
    again, _ = index_and_query(colour_model, tmp_path / "index.db", library)
    assert "0 failed, 1 skipped, 1 unchanged" in again.stderr and "warning" not in again.stderr, again.stderr


def test_a_broken_heic_decoder_leaves_heic_out_instead_of_failing_every_file(colour_model, tmp_path):
    # An installed pillow-heif that cannot load (e.g. a wheel for another libc): shadowed here
    # by a package of the same name whose import fails the way a missing library does.
    broken = tmp_path / "site" / "pillow_heif"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('libheif.so.1: cannot open shared object file')\n")
    library = tmp_path / "library"
    write_photo(library / "red.jpg", COLOURS["red"])
    (library / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + os.urandom(64))
    db = tmp_path / "index.db"
    env = {"PYTHONPATH": str(tmp_path / "site")}
    result = run_cli("index", str(library), "--db", str(db), "--model", str(colour_model), "--workers", "2", env=env)
    message = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in message and "warning" not in message, message
    assert "1 new" in message and "1 skipped" in message, message
    assert "note: 1 file skipped: HEIC/HEIF photos need a working pillow-heif; it is installed but does not load: " \
           "ImportError: libheif.so.1" in message, message


@pytest.mark.skipif(not formats.avif_available(), reason="this Pillow was built without libavif")
def test_a_damaged_avif_is_one_warning_not_a_crash(colour_model, tmp_path):
    # Pillow's AVIF plugin raises RuntimeError (not OSError) when the primary item is missing,
    # as fuzzing found; it must be a per-file failure like any other damaged photo.
    library = tmp_path / "library"
    write_photo(library / "red.jpg", COLOURS["red"])
    data = bytearray(write_photo(tmp_path / "good.avif", COLOURS["green"]).read_bytes())
    item_id = data.index(b"pitm") + 8  # box type, then version + flags (4 bytes), then the 16-bit id
    data[item_id : item_id + 2] = b"\xff\xff"
    damaged = library / "damaged.avif"
    damaged.write_bytes(bytes(data))
    result = run_cli("index", str(library), "--db", str(tmp_path / "index.db"), "--model", str(colour_model),
                     "--workers", "2")
    message = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in message, message
    warnings = [line for line in message.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(damaged) in warnings[0] and "RuntimeError" in warnings[0], message
    assert "1 new" in message and "1 failed" in message, message


@pytest.mark.skipif(not formats.avif_available(), reason="Pillow without libavif")
def test_an_avif_claiming_too_many_pixels_is_refused_as_such(colour_model, tmp_path):
    """libavif refuses a 289 MP AVIF while parsing ("BMFF parsing failed"), which reached
    the user as "not a recognised image format"; it is a decompression bomb, and says so."""
    library = tmp_path / "library"
    data = bytearray(write_photo(tmp_path / "good.avif", COLOURS["green"]).read_bytes())
    size_at = data.index(b"ispe") + 8  # box type, then version + flags (4 bytes), then width, height
    data[size_at : size_at + 8] = (17000).to_bytes(4, "big") * 2
    library.mkdir()
    (library / "bomb.avif").write_bytes(bytes(data))
    (library / "text.avif").write_bytes(b"not an image at all" * 20)
    result = run_cli("index", str(library), "--db", str(tmp_path / "index.db"), "--model", str(colour_model))
    message = result.stderr.decode()
    assert f"warning: {library / 'bomb.avif'}: refused: too many pixels (AVIF of 17000x17000" in message, message
    assert f"warning: {library / 'text.avif'}: not a recognised image format" in message, message


def write_psd(path, colour, size=(64, 48)):
    """A minimal Photoshop file (Pillow reads PSD but cannot write it): RGB, 8 bits, no
    layers, the raw planar composite that Photoshop stores for readers like us."""
    import struct

    width, height = size
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers: empty
    planes = b"".join(bytes([channel]) * (width * height) for channel in colour)
    path.write_bytes(header + sections + struct.pack(">H", 0) + planes)
    return path


def test_the_photo_formats_people_keep_are_indexed(colour_model, tmp_path):
    """MPO (its first picture), JPEG 2000, PNM and PSD (its composite) are indexed and found;
    TGA, DDS and ICO are not photos for clipsearch: `status` counts them with the other files
    it leaves out, by extension."""
    library = tmp_path / "library"
    library.mkdir()
    red, blue = Image.new("RGB", (96, 64), COLOURS["red"]), Image.new("RGB", (96, 64), COLOURS["blue"])
    red.save(library / "portrait.mpo", format="MPO", save_all=True, append_images=[blue])
    Image.new("RGB", (96, 64), COLOURS["green"]).save(library / "scan.jp2")
    Image.new("RGB", (96, 64), COLOURS["yellow"]).save(library / "netpbm.ppm")
    Image.new("L", (96, 64), 245).save(library / "grey.pgm")
    Image.new("1", (96, 64), 0).save(library / "bilevel.pbm")
    write_psd(library / "edit.psd", COLOURS["teal"])
    Image.new("RGB", (32, 32), COLOURS["magenta"]).save(library / "texture.tga")
    Image.new("RGB", (32, 32), COLOURS["magenta"]).save(library / "icon.ico")
    (library / "clip.mov").write_bytes(b"\0" * 100)
    (library / "clip.MOV").write_bytes(b"\0" * 100)
    (library / "README").write_text("not a photo")
    assert Image.open(library / "portrait.mpo").format == "MPO"
    indexed, tops = index_and_query(colour_model, tmp_path / "index.db", library,
                                    "red", "green", "yellow", "white", "black", "teal", "magenta", workers=2)
    assert "6 new" in indexed.output and "failed" not in indexed.output.replace("0 failed", ""), indexed.output
    assert tops[:6] == ["portrait.mpo", "scan.jp2", "netpbm.ppm", "grey.pgm", "bilevel.pbm", "edit.psd"]
    assert tops[6] not in ("texture.tga", "icon.ico")
    status = CliRunner().invoke(main, ["status", "--db", str(tmp_path / "index.db"), "--model", str(colour_model),
                                       "--json"])
    import json

    assert json.loads(status.stdout)["skipped_by_extension"] == {".mov": 2, "(no extension)": 1, ".ico": 1, ".tga": 1}
    text = CliRunner().invoke(main, ["status", "--db", str(tmp_path / "index.db"), "--model", str(colour_model)])
    assert "skipped by extension:    2 .mov, 1 (no extension), 1 .ico, 1 .tga" in text.stdout, text.stdout
