"""Preprocessing on real files: CLIP's pipeline reproduced, modes, EXIF, draft decoding, bombs."""
from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from helpers import DATA, REPO, write_photo
from PIL import Image

from clipsearch.model.manifest import load_manifest
from clipsearch.photos.preprocess import ImageDecodeError, load_pixels, open_image, to_pixels

SPEC = load_manifest(DATA / "tiny-model").image | {"size": 224}


def test_matches_transformers_clip_image_processor(tmp_path):
    transformers = pytest.importorskip("transformers", reason="reference needs the export extra")
    processor = transformers.models.clip.image_processing_pil_clip.CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
        image_mean=SPEC["mean"], image_std=SPEC["std"])
    for size in ((640, 480), (300, 517), (224, 224), (1001, 333)):
        path = write_photo(tmp_path / f"p{size[0]}.png", (120, 80, 200), size=size, grain=30)
        img = Image.open(path).convert("RGB")
        ours = to_pixels(img, SPEC)
        theirs = np.asarray(processor(images=img, return_tensors="np")["pixel_values"][0])
        assert ours.shape == theirs.shape == (3, 224, 224)
        assert np.abs(ours - theirs).max() < 1e-4, size


def test_modes_are_converted_correctly(tmp_path):
    # 16-bit grey at half scale must come out mid-grey, not clipped white
    grey16 = Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))
    grey16.save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = np.asarray(open_image(tmp_path / "g16.png", 32))
    assert abs(int(rgb.mean()) - 127) <= 2
    # palette with a transparent index, and RGBA: transparent pixels become white
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 20))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    arr = np.asarray(open_image(tmp_path / "pal.png", 32))
    assert tuple(arr[5, 2]) == (255, 0, 0) and tuple(arr[5, 15]) == (255, 255, 255)
    rgba = Image.new("RGBA", (10, 10), (0, 0, 255, 0))
    rgba.save(tmp_path / "clear.png")
    assert tuple(np.asarray(open_image(tmp_path / "clear.png", 32))[0, 0]) == (255, 255, 255)
    # CMYK JPEG and 1-bit / grayscale
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = np.asarray(open_image(tmp_path / "cmyk.jpg", 32))[10, 10]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    Image.new("L", (30, 30), 77).save(tmp_path / "l.jpg")
    assert open_image(tmp_path / "l.jpg", 32).mode == "RGB"
    Image.new("1", (30, 30), 1).save(tmp_path / "bw.png")
    assert np.asarray(open_image(tmp_path / "bw.png", 32)).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 30), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert open_image(tmp_path / "rotated.jpg", 16).size == (30, 60)


def test_draft_decoding_stays_close_to_the_full_decode(tmp_path):
    """A 12 MP phone-size JPEG decoded at reduced DCT scale vs in full: the model's input
    pixels barely move (the measured figures for the full model are in the README)."""
    path = write_photo(tmp_path / "big.jpg", (90, 140, 200), size=(4032, 3024), grain=25)
    drafted = open_image(path, 224, use_draft=True)
    assert 224 <= drafted.size[1] < 3024  # decoded at 1/8 scale (378 px), not in full
    fast, full = load_pixels(path, SPEC, use_draft=True), load_pixels(path, SPEC, use_draft=False)
    assert np.abs(fast - full).mean() < 0.02  # normalised units: ~0.1 % of the range


def test_decompression_bomb_is_refused_quickly(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                        + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="refused"):
        open_image(tmp_path / "bomb.png", 224)
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("content, words", [
    (b"", "not a recognised"), (b"hello, not an image", "not a recognised"),
    (b"\x89PNG\r\n\x1a\n" + b"\0garbage" * 20, "not a recognised|cannot decode"),
])
def test_garbage_is_a_decode_error(tmp_path, content, words):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(ImageDecodeError, match=words):
        open_image(tmp_path / "x.png", 224)


def test_truncated_jpeg_is_a_decode_error(tmp_path):
    path = write_photo(tmp_path / "t.jpg", (10, 200, 10), size=(800, 600), grain=30)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ImageDecodeError):
        open_image(path, 224)


def fuzz_formats() -> list[str]:
    from clipsearch.photos import formats

    names = ["JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP"]
    if formats.avif_available():
        names.append("AVIF")
    if formats.heif_available():
        formats.prepare_decoders()
        names.append("HEIF")
    return names


@pytest.mark.parametrize("fmt", fuzz_formats())
def test_damaged_files_only_ever_raise_image_decode_error(fmt):
    """Seeded mutations (flipped bytes, truncation) of a real file of each format: decoding
    either works or raises ImageDecodeError, never anything that would stop an index run."""
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    photo.save(buffer, format=fmt)
    original = buffer.getvalue()
    rng = random.Random(fmt)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(300):
        data = bytearray(original)
        if rng.random() < 0.5:
            data = data[: rng.randint(8, len(data))]
        for _ in range(rng.randint(0, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            to_pixels(open_image(io.BytesIO(bytes(data)), 224), {"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3})
            outcomes["decoded"] += 1
        except ImageDecodeError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0, outcomes  # the mutations did damage something


def test_16_bit_images_are_rounded_to_8_bits_not_truncated(tmp_path):
    # 40000 / 65535 * 255 = 155.65: rounding gives 156, truncation gave 155
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(tmp_path / "g16.png")
    assert set(np.asarray(open_image(tmp_path / "g16.png", 16)).ravel()) == {156}
    Image.fromarray(np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20), "F").save(tmp_path / "f.tiff")
    values = np.asarray(open_image(tmp_path / "f.tiff", 16))[..., 0].ravel()
    expected = np.rint(np.linspace(0, 1, 400) * 255)
    assert np.abs(values.astype(int) - expected).max() <= 1 and values.max() == 255


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_decoding_keeps_the_exact_geometry_in_every_orientation(tmp_path, orientation):
    """A 2133x1600 JPEG drafted at 1/4 decodes to 534x400, not 533.25x400: resizing the whole
    decoded image moved the crop by a pixel (mean difference ~0.1 on grainy photos). The
    photo's own region is resized instead, whichever way EXIF turns it."""
    path = tmp_path / f"o{orientation}.jpg"
    write_photo(path, (90, 140, 200), size=(2133, 1600), grain=25)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.open(path).save(path, quality=90, exif=exif.tobytes())
    fast, exact = load_pixels(path, SPEC, use_draft=True), load_pixels(path, SPEC, use_draft=False)
    assert np.abs(fast - exact).mean() < 0.02, orientation


def test_small_sources_keep_twice_the_input_size(tmp_path):
    """667x500: drafting to 1/2 (250 px) left libjpeg's scaling doing bicubic's work; below
    1600 px the decoder keeps a short side of at least 2 x 224, here the whole picture."""
    path = write_photo(tmp_path / "small.jpg", (90, 140, 200), size=(667, 500), grain=25)
    assert open_image(path, 224, use_draft=True).size == (667, 500)
    fast, exact = load_pixels(path, SPEC, use_draft=True), load_pixels(path, SPEC, use_draft=False)
    assert np.abs(fast - exact).mean() < 0.001


THIN_STRIP = """
import resource, sys
import numpy as np
from PIL import Image
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GB of address space
from clipsearch.photos.preprocess import load_pixels
spec = {"size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
for path in sys.argv[1:]:
    assert load_pixels(path, spec).shape == (3, 224, 224)
print("ok")
"""


def test_thin_strips_cost_memory_bounded_by_the_output(tmp_path):
    """1 x 60000 and 60000 x 1 pass the pixel limit; resized whole they asked for 224 x 13.4M
    pixels (9 GB): under a 2 GB address-space limit they must still preprocess."""
    strips = []
    for size in ((1, 60000), (60000, 1), (3, 45000)):
        path = tmp_path / f"strip{size[0]}x{size[1]}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        strips.append(str(path))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", THIN_STRIP, *strips], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_a_wide_panorama_keeps_the_exact_resize(tmp_path):
    """Up to 40:1 the whole picture is resized and then cropped, as CLIP's pipeline does."""
    path = write_photo(tmp_path / "pano.png", (90, 140, 200), size=(8000, 250), grain=30)
    img = Image.open(path).convert("RGB")
    resized = img.resize((7168, 224), resample=Image.BICUBIC).crop((3472, 0, 3696, 224))
    expected = (np.asarray(resized, dtype=np.float32) / 255.0 - np.float32(SPEC["mean"])) / np.float32(SPEC["std"])
    assert np.abs(load_pixels(path, SPEC) - expected.transpose(2, 0, 1)).max() < 1e-5  # same pixels, float rounding


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_big_16_bit_and_alpha_pictures_convert_in_bounded_memory(tmp_path, mode):
    """16-bit scaling and compositing over white made several full-size copies (an 89 MP
    16-bit PNG took a worker to 2.2 GB); band by band a 36 MP one fits in 640 MB of address
    space, pixels unchanged (`test_modes_become_rgb` and friends)."""
    rows = np.linspace(0, 1, 6000, dtype=np.float32)[:, None] * np.ones((1, 6000), dtype=np.float32)
    if mode == "I;16":
        img = Image.fromarray((rows * 65535).astype(np.uint16))
    else:
        img = Image.fromarray(np.dstack([(rows * 255).astype(np.uint8)] * 4), "RGBA")
    path = tmp_path / "big.png"
    img.save(path, compress_level=1)
    assert Image.open(path).mode == mode
    script = THIN_STRIP.replace("2 << 30, 2 << 30", "640 << 20, 640 << 20")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_banded_conversion_gives_the_pixels_of_a_whole_conversion():
    """Band edges must not show: each mode converted band by band equals one whole conversion."""
    from clipsearch.photos import preprocess

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 65535, (700, 333), dtype=np.uint16)),
              Image.fromarray(rng.integers(0, 1 << 20, (700, 333), dtype=np.int32), "I"),
              Image.fromarray(np.where(rng.random((700, 333)) < 0.01, np.nan, rng.normal(0, 5, (700, 333)))
                              .astype(np.float32), "F"),
              Image.fromarray(rng.integers(0, 255, (700, 333, 4), dtype=np.uint8), "RGBA")]
    for img in images:
        banded = preprocess.to_rgb(img)
        whole_rows = preprocess.BAND_ROWS
        try:
            preprocess.BAND_ROWS = 10_000
            whole = preprocess.to_rgb(img)
        finally:
            preprocess.BAND_ROWS = whole_rows
        assert np.array_equal(np.asarray(banded), np.asarray(whole)), img.mode
