"""RAW files made at run time for the tests: a DNG written from scratch (a real CFA mosaic of a
picture that LibRaw demosaics, an optional JPEG preview in a SubIFD, orientation, EXIF, GPS,
embedded XMP), and the same structure under other makers' names. No camera file ships with
this project; ExifTool (where installed) is the reference reader of what these files hold.
"""
from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

# TIFF field types
BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL = 1, 2, 3, 4, 5, 7, 10
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1, SRATIONAL: 8}
# XYZ (D65) -> linear sRGB: a "camera" whose raw values are linear sRGB.
SRGB_FROM_XYZ = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))


def jpeg_bytes(picture: Image.Image, quality: int = 90, exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    picture.convert("RGB").save(out, "JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return out.getvalue()


def _pack_values(kind: int, values) -> tuple[bytes, int]:
    if kind in (ASCII,):
        data = values.encode("latin-1") + b"\0" if isinstance(values, str) else bytes(values)
        return data, len(data)
    if kind in (BYTE, UNDEFINED):
        data = bytes(values)
        return data, len(data)
    if isinstance(values, (int, float)):
        values = [values]
    if kind == SHORT:
        return struct.pack(f"<{len(values)}H", *values), len(values)
    if kind == LONG:
        return struct.pack(f"<{len(values)}I", *values), len(values)
    if kind in (RATIONAL, SRATIONAL):
        code = "I" if kind == RATIONAL else "i"
        flat = []
        for value in values:
            if isinstance(value, tuple):
                flat.extend(value)
            else:
                flat.extend((int(round(value * 10000)), 10000))
        return struct.pack(f"<{len(flat)}{code}", *flat), len(values)
    raise ValueError(kind)


def build_tiff(ifds: list[list[tuple]], blobs: dict[str, bytes], magic: bytes = b"II*\0") -> bytes:
    """`ifds`: lists of (tag, type, values); a value may be ("offset", name) to point at blob
    `name`, or ("ifd", i) to point at IFD number i. IFD 0 is the first IFD (linked from the
    header); the others are reached only through pointers (SubIFDs, Exif, GPS)."""
    # Lay out: header (8), then each IFD, then values that do not fit, then blobs.
    ifd_sizes = [2 + 12 * len(entries) + 4 for entries in ifds]
    ifd_offsets, at = [], 8
    for size in ifd_sizes:
        ifd_offsets.append(at)
        at += size
    extra, blob_offsets = bytearray(), {}
    data_start = at
    packed_ifds = []
    for entries in ifds:
        packed = []
        for tag, kind, values in sorted(entries, key=lambda e: e[0]):
            if isinstance(values, tuple) and len(values) == 2 and values[0] in ("offset", "ifd"):
                packed.append((tag, kind, values, 1))
                continue
            data, count = _pack_values(kind, values)
            if len(data) <= 4:
                packed.append((tag, kind, data.ljust(4, b"\0"), count))
            else:
                if len(extra) % 2:
                    extra += b"\0"
                packed.append((tag, kind, data_start + len(extra), count))
                extra += data
        packed_ifds.append(packed)
    blob_start = data_start + len(extra) + (len(extra) % 2)
    out_blobs = bytearray()
    for name, blob in blobs.items():
        blob_offsets[name] = blob_start + len(out_blobs)
        out_blobs += blob
        if len(out_blobs) % 2:
            out_blobs += b"\0"
    out = bytearray(magic + struct.pack("<I", ifd_offsets[0]))
    for packed in packed_ifds:
        out += struct.pack("<H", len(packed))
        for tag, kind, value, count in packed:
            if isinstance(value, tuple):
                target = blob_offsets[value[1]] if value[0] == "offset" else ifd_offsets[value[1]]
                out += struct.pack("<HHII", tag, kind, count, target)
            elif isinstance(value, bytes):
                out += struct.pack("<HHI", tag, kind, count) + value
            else:
                out += struct.pack("<HHII", tag, kind, count, value)
        out += struct.pack("<I", 0)  # one chain: every other IFD is reached through a pointer
    out += extra
    if len(extra) % 2:
        out += b"\0"
    out += out_blobs
    return bytes(out)


def mosaic(picture: Image.Image) -> np.ndarray:
    """An RGGB Bayer mosaic (16-bit) of an RGB picture whose sides are even."""
    rgb = np.asarray(picture.convert("RGB"), dtype=np.uint16) * 257
    cfa = np.empty(rgb.shape[:2], dtype=np.uint16)
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]
    cfa[0::2, 1::2] = rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2] = rgb[1::2, 0::2, 1]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return cfa


def make_dng(picture: Image.Image, preview: Image.Image | bytes | None = None, orientation: int = 1,
             make: str = "Canon", model: str = "Canon EOS 5D Mark IV", taken: str | None = "2024:07:14 18:30:05",
             lens: str | None = "EF24-105mm f/4L IS USM", gps: tuple[float, float] | None = None,
             rating: int | None = None, xmp_keywords: list[str] | None = None,
             raw: bool = True, magic: bytes = b"II*\0", dng: bool = True, preview_first: bool = False) -> bytes:
    """A DNG of `picture` (sides even): IFD0 holds the CFA data (unless `raw` is False: a file
    whose image data is stripped), a SubIFD the JPEG preview (a picture, or JPEG bytes as they
    are), the Exif IFD the capture time and lens, a GPS IFD the position. `dng` False leaves out
    the DNG tags (a maker's format LibRaw does not know); `preview_first` stores the preview
    before the sensor data, as most cameras do (a file cut short keeps it)."""
    width, height = picture.size
    cfa = mosaic(picture)
    blobs: dict[str, bytes] = {}
    if preview_first and preview is not None:
        blobs["preview"] = b""  # its place, filled below
    ifd0 = [
        (254, LONG, 0), (256, LONG, width), (257, LONG, height), (258, SHORT, 16), (259, SHORT, 1),
        (262, SHORT, 32803), (271, ASCII, make), (272, ASCII, model), (274, SHORT, orientation),
        (277, SHORT, 1), (278, LONG, height), (284, SHORT, 1),
        (33421, SHORT, [2, 2]), (33422, BYTE, [0, 1, 1, 2]),
        (34665, LONG, ("ifd", 1)),
    ]
    if dng:
        ifd0 += [(50706, BYTE, [1, 4, 0, 0]), (50707, BYTE, [1, 1, 0, 0]), (50708, ASCII, f"{make} {model}"),
                 (50714, LONG, 0), (50717, LONG, 65535),
                 (50721, SRATIONAL, [v for row in SRGB_FROM_XYZ for v in row]), (50728, RATIONAL, [1.0, 1.0, 1.0]),
                 (50778, SHORT, 21)]
    if raw:
        blobs["cfa"] = cfa.astype("<u2").tobytes()
        ifd0 += [(273, LONG, ("offset", "cfa")), (279, LONG, len(blobs["cfa"]))]
    else:  # the strip's pointer and length say nothing is there
        ifd0 += [(273, LONG, 0), (279, LONG, 0)]
    exif_ifd = []
    if taken:
        exif_ifd += [(36867, ASCII, taken), (36868, ASCII, taken)]
    if lens:
        exif_ifd.append((42036, ASCII, lens))
    if not exif_ifd:
        exif_ifd.append((41728, UNDEFINED, [3]))  # FileSource: something, so the IFD is not empty
    ifds = [ifd0, exif_ifd]
    if preview is not None:
        data = preview if isinstance(preview, bytes) else jpeg_bytes(preview)
        blobs["preview"] = data
        size = (Image.open(io.BytesIO(data)).size if not isinstance(preview, Image.Image) else preview.size) \
            if _opens(data) else (0, 0)
        ifds.append([(254, LONG, 1), (256, LONG, size[0]), (257, LONG, size[1]), (258, SHORT, [8, 8, 8]),
                     (259, SHORT, 7), (262, SHORT, 6), (273, LONG, ("offset", "preview")), (277, SHORT, 3),
                     (278, LONG, size[1]), (279, LONG, len(data))])
        ifd0.append((330, LONG, ("ifd", len(ifds) - 1)))
    if gps:
        lat, lon = gps
        ifds.append([(0, BYTE, [2, 3, 0, 0]), (1, ASCII, "N" if lat >= 0 else "S"), (2, RATIONAL, _dms(abs(lat))),
                     (3, ASCII, "E" if lon >= 0 else "W"), (4, RATIONAL, _dms(abs(lon)))])
        ifd0.append((34853, LONG, ("ifd", len(ifds) - 1)))
    if rating is not None or xmp_keywords:
        ifd0.append((700, BYTE, list(xmp_packet(rating, xmp_keywords or []))))
    return build_tiff(ifds, blobs, magic)


def raf(jpeg: bytes, make_sure_offset: int = 160) -> bytes:
    """A Fujifilm RAF's outline: its header, whose bytes 84-91 point at the JPEG it carries
    (with the camera's EXIF), then that JPEG; no sensor data LibRaw could decode."""
    header = b"FUJIFILMCCD-RAW 0201FF383501".ljust(84, b"\0")
    header += make_sure_offset.to_bytes(4, "big") + len(jpeg).to_bytes(4, "big")
    return header.ljust(make_sure_offset, b"\0") + jpeg + bytes(4096)


def _opens(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data))
        return True
    except Exception:  # noqa: BLE001
        return False


def _dms(value: float) -> list[tuple[int, int]]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60 * 100)
    return [(degrees, 1), (minutes, 1), (seconds, 100)]


def xmp_packet(rating: int | None, keywords: list[str]) -> bytes:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    rating_attr = f' xmp:Rating="{rating}"' if rating is not None else ""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
            f'xmlns:dc="http://purl.org/dc/elements/1.1/"{rating_attr}>'
            f'{"<dc:subject><rdf:Bag>" + items + "</rdf:Bag></dc:subject>" if keywords else ""}'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def landscape(width: int = 640, height: int = 480, left=(220, 30, 30), right=(30, 30, 220)) -> Image.Image:
    """A picture whose orientation shows: its left half `left`, its right half `right`, a
    white band along its top."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = left
    arr[:, width // 2 :] = right
    arr[: height // 8] = 255
    return Image.fromarray(arr, "RGB")


def hostile() -> dict[str, tuple[bytes, str]]:
    """RAW files as a damaged disk or a hostile upload gives them: name -> (bytes, "failed" or
    "indexed", what clipsearch does with it). Deterministic, so the outcome is too."""
    import random

    noise = random.Random(24)
    red = Image.new("RGB", (64, 48), (220, 30, 30))
    good = make_dng(red, preview=red)
    preview_first = make_dng(red, preview=red.resize((320, 240)), preview_first=True)
    return {
        "truncated.nef": (good[: len(good) // 3], "failed"),  # the preview (stored last) cut off too
        "cut_after_preview.nef": (preview_first[: len(preview_first) - 3000], "indexed"),
        "zeros.cr2": (bytes(200_000), "failed"),
        "stripped.dng": (make_dng(red, preview=None, raw=False), "failed"),
        "preview_past_end.arw": (good[: len(good) - 200], "failed"),
        # A preview whose JPEG header declares 60000 x 60000 pixels; the sensor data is fine.
        "huge_preview.dng": (make_dng(red, preview=(
            b"\xff\xd8\xff\xc0\x00\x11\x08\xea\x60\xea\x60\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01" + bytes(64))),
            "indexed"),
        "huge_preview_no_sensor.dng": (make_dng(red, raw=False, preview=(
            b"\xff\xd8\xff\xc0\x00\x11\x08\xea\x60\xea\x60\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01" + bytes(64))),
            "failed"),
        "text.orf": (b"IIRO" + b"not a raw file at all " * 100, "failed"),
        "garbage.raf": (b"FUJIFILMCCD-RAW 0201FF383501" + noise.randbytes(5000), "failed"),
        "box.cr3": (b"\0\0\0\x18ftypcrx \0\0\0\x01crx isom" + noise.randbytes(3000), "failed"),
        "many_jpeg_markers.pef": (b"II*\0" + b"\xff\xd8\xff\xe0" * 20000, "failed"),
    }
