"""A photo library full of surprises, written as real files. `build(root)` returns the
policy for every path: 'indexed', 'failed' (one warning, remembered), or 'skipped' (silently
not an image for clipsearch)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from helpers import write_photo
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def build(root: Path) -> dict[bytes, str]:
    root.mkdir(parents=True, exist_ok=True)
    policy: dict[bytes, str] = {}

    def put(path: Path, kind: str) -> None:
        policy[os.fsencode(path)] = kind

    put(write_photo(root / "ordinary.jpg", (200, 40, 40)), "indexed")
    put(write_photo(root / "sub" / "emoji 🐱 and spaces.jpg", (40, 200, 40)), "indexed")
    put(write_photo(root / "UPPER.JPEG", (40, 40, 200)), "indexed")
    bad_name = os.fsencode(root) + b"/latin1-\xe9t\xe9.png"
    Image.new("RGB", (50, 40), (120, 120, 0)).save(os.fsdecode(bad_name), format="PNG")
    policy[bad_name] = "indexed"
    Image.new("CMYK", (60, 40), (0, 200, 200, 0)).save(root / "cmyk.jpg")
    put(root / "cmyk.jpg", "indexed")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(root / "grey16.png")
    put(root / "grey16.png", "indexed")
    pal = Image.new("P", (30, 30), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(root / "palette-alpha.png", transparency=0)
    put(root / "palette-alpha.png", "indexed")
    Image.new("L", (30, 30), 90).save(root / "grey.jpg")
    put(root / "grey.jpg", "indexed")
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    put(root / "animated.gif", "indexed")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "one-pixel.png")
    put(root / "one-pixel.png", "indexed")
    Image.new("RGB", (4000, 3), (9, 99, 9)).save(root / "sliver.png")
    put(root / "sliver.png", "indexed")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 30), (0, 128, 0)).save(root / "rotated.jpg", exif=exif.tobytes())
    put(root / "rotated.jpg", "indexed")
    Image.new("RGB", (30, 30), (5, 5, 200)).save(root / "bitmap.BMP")
    put(root / "bitmap.BMP", "indexed")
    Image.new("RGB", (30, 30), (5, 200, 200)).save(root / "photo.webp")
    put(root / "photo.webp", "indexed")
    Image.new("RGB", (30, 30), (200, 5, 200)).save(root / "scan.tiff")
    put(root / "scan.tiff", "indexed")

    (root / "zero.jpg").write_bytes(b"")
    put(root / "zero.jpg", "failed")
    (root / "text.jpg").write_text("I am a shopping list, not a photo\n")
    put(root / "text.jpg", "failed")
    truncated = write_photo(root / "truncated.jpg", (90, 90, 90), size=(800, 600), grain=30)
    truncated.write_bytes(truncated.read_bytes()[:4000])
    put(truncated, "failed")
    (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    put(root / "garbage.png", "failed")
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    (root / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                                    + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b""))
    put(root / "bomb.png", "failed")
    # Just over Pillow's limit (under twice it): Pillow only warns, clipsearch refuses.
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)
    (root / "almost-bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                                           + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _png_chunk(b"IEND", b""))
    put(root / "almost-bomb.png", "failed")
    # An orientation tag whose value is cut short: Pillow warns "Corrupt EXIF data", decodes fine.
    Image.new("RGB", (64, 48), (128, 64, 0)).save(
        root / "corrupt-exif.jpg", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06")
    put(root / "corrupt-exif.jpg", "indexed")
    # Damaged TIFFs whose decoders print by themselves: libtiff on a garbled LZW strip, and
    # Pillow's logger on an absurd samples-per-pixel count.
    lzw = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(
        lzw, format="TIFF", compression="tiff_lzw")
    data = bytearray(lzw.getvalue())
    data[len(data) // 4 : len(data) // 2] = np.random.default_rng(1).integers(0, 256, len(data) // 2 - len(data) // 4,
                                                                              dtype=np.uint8).tobytes()
    (root / "garbled-lzw.tif").write_bytes(bytes(data))
    put(root / "garbled-lzw.tif", "failed")
    plain = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(plain, format="TIFF")
    data = bytearray(plain.getvalue())
    ifd = int.from_bytes(data[4:8], "little")
    for entry in range(ifd + 2, ifd + 2 + 12 * int.from_bytes(data[ifd : ifd + 2], "little"), 12):
        if int.from_bytes(data[entry : entry + 2], "little") == 277:  # SamplesPerPixel, a SHORT
            data[entry + 8 : entry + 10] = (5000).to_bytes(2, "little")
    (root / "many-samples.tif").write_bytes(bytes(data))
    put(root / "many-samples.tif", "failed")

    # Hostile within the limits: thin strips (resized whole, 224 x 13.4M pixels: 9 GB), a big
    # 16-bit scan (its conversion made 1.1 GB of float copies), PostScript named .jpg
    # (Pillow would hand it to Ghostscript, and `{} loop` never ends).
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (60000, 1, 3), dtype=np.uint8)).save(root / "strip-tall.png")
    put(root / "strip-tall.png", "indexed")
    Image.fromarray(rng.integers(0, 255, (1, 60000, 3), dtype=np.uint8)).save(root / "strip-wide.png")
    put(root / "strip-wide.png", "indexed")
    gradient = np.linspace(0, 65535, 6000, dtype=np.float64)[:, None] * np.ones((1, 6000))
    Image.fromarray(gradient.astype(np.uint16)).save(root / "scan16.png", compress_level=1)
    put(root / "scan16.png", "indexed")
    (root / "postscript.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{} loop\n")
    put(root / "postscript.jpg", "failed")

    (root / "folder.jpg").mkdir()
    put(root / "folder.jpg", "skipped")
    os.symlink(root / "does-not-exist.jpg", root / "dangling.jpg")
    put(root / "dangling.jpg", "skipped")
    os.symlink(root / "loop-b.jpg", root / "loop-a.jpg")
    os.symlink(root / "loop-a.jpg", root / "loop-b.jpg")
    put(root / "loop-a.jpg", "skipped")
    os.symlink(root, root / "sub" / "back-to-top")
    os.symlink(root / "ordinary.jpg", root / "link-to-ordinary.jpg")
    put(root / "link-to-ordinary.jpg", "skipped")
    (root / "notes.txt").write_text("not an image extension")
    put(root / "notes.txt", "skipped")
    write_photo(root / "@eaDir" / "thumb.jpg", (1, 2, 3))
    put(root / "@eaDir" / "thumb.jpg", "skipped")
    write_photo(root / ".hidden.jpg", (1, 2, 3))
    put(root / ".hidden.jpg", "skipped")
    from clipsearch.photos.formats import missing_decoder

    if missing_decoder(b".dng") is None:  # RAW files, with the raw extra (without it: skipped with a note)
        import rawfiles

        for name, (data, kind) in rawfiles.hostile().items():
            (root / "raw").mkdir(exist_ok=True)
            (root / "raw" / name).write_bytes(data)
            put(root / "raw" / name, kind)
    return policy
