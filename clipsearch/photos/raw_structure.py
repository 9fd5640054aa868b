"""What a RAW file's own structure holds, read without LibRaw: its EXIF (for the metadata) and
its embedded JPEGs (for a file LibRaw cannot open: a camera newer than the LibRaw in rawpy's
wheel, sensor data cut short by an interrupted copy).

Metadata comes from the RAW's own structure, parsed by Pillow's EXIF reader: TIFF-based files
(CR2, NEF, NRW, ARW, SR2, SRF, DNG, PEF, IIQ, 3FR, ERF, SRW, KDC, DCR, MOS, MEF) as they are,
ORF and RW2 whose headers only differ in their magic number, RAF through the JPEG its header
points at, CR3 through its CMT1/CMT2/CMT4 boxes (TIFF structures inside its ISO-BMFF), MRW
through its TTW block; the preview's own EXIF otherwise.

Embedded JPEGs: every JPEG start marker in the file is a candidate (at most `MAX_CANDIDATES`),
opened by Pillow's JPEG plugin from the bytes already in memory; the largest that opens is
the preview, what ExifTool's PreviewImage/JpgFromRaw would give, turned by the RAW's own
Orientation tag. Everything here is untrusted input: offsets are bounds-checked, a structure
that does not parse is simply absent.
"""
from __future__ import annotations

import io
import struct

HEADER_BYTES = 4 << 20  # where every format read here keeps its EXIF structures
MAX_CANDIDATES = 64  # JPEG start markers tried in one file


class RawHeaders:
    """What `metadata.read_photo_meta` reads from an opened image, for a RAW: its EXIF (a
    Pillow `Image.Exif`, or an empty dict) and its embedded XMP (DNG's XMLPacket)."""

    def __init__(self, exif, xmp: bytes | None = None):
        self._exif, self.info = exif, ({"xmp": xmp} if xmp else {})

    def getexif(self):
        return self._exif


def raw_headers(data: bytes, preview_img=None) -> RawHeaders:
    """The RAW's own EXIF, found by its format (module docstring); the preview's otherwise."""
    exif = None
    try:
        exif = _structure_exif(data)
    except Exception:  # noqa: BLE001 - a damaged structure: try the preview's headers
        exif = None
    if not exif and preview_img is not None:
        try:
            exif = preview_img.getexif()
        except Exception:  # noqa: BLE001
            exif = None
    if not exif:
        return RawHeaders({})
    xmp = exif.get(700)
    if isinstance(xmp, tuple):
        xmp = bytes(xmp)
    return RawHeaders(exif, xmp if isinstance(xmp, bytes) else None)


_TIFF = (b"II*\0", b"MM\0*")
_ALIASES = {b"IIRO": b"II*\0", b"IIRS": b"II*\0", b"MMOR": b"MM\0*", b"IIU\0": b"II*\0"}


def _structure_exif(data: bytes):
    from PIL import Image

    head = data[:HEADER_BYTES]
    magic = head[:4]
    if magic in _TIFF or magic in _ALIASES:
        exif = Image.Exif()
        exif.load(_ALIASES.get(magic, magic) + head[4:])
        return exif
    if head.startswith(b"FUJIFILMCCD-RAW"):
        offset, length = struct.unpack(">II", head[84:92])
        if offset + length > len(data):
            return None
        return Image.open(io.BytesIO(data[offset : offset + length]), formats=("JPEG",)).getexif()
    if head[4:12] == b"ftypcrx ":
        return _cr3_exif(head)
    if head.startswith(b"\0MRM"):
        at = head.find(b"\0TTW", 8, 4096)
        if at > 0:
            (length,) = struct.unpack(">I", head[at + 4 : at + 8])
            exif = Image.Exif()
            exif.load(head[at + 8 : at + 8 + length])
            return exif
    return None


def _cr3_exif(head: bytes):
    """Canon CR3: IFD0 in box CMT1, the Exif IFD in CMT2, GPS in CMT4, each a whole TIFF."""
    from PIL import Image

    parts = {}
    for name in (b"CMT1", b"CMT2", b"CMT4"):
        at = head.find(name)
        if at < 4:
            continue
        (size,) = struct.unpack(">I", head[at - 4 : at])
        if not 8 < size <= len(head) - at + 4:
            continue
        exif = Image.Exif()
        exif.load(head[at + 4 : at - 4 + size])
        parts[name] = dict(exif)
    if b"CMT1" not in parts:
        return None
    return _MergedExif(parts[b"CMT1"], {0x8769: parts.get(b"CMT2", {}), 0x8825: parts.get(b"CMT4", {})})


class _MergedExif(dict):
    """IFD0 as a dict, with its sub-IFDs from other structures (`get_ifd` as Pillow's)."""

    def __init__(self, ifd0: dict, subs: dict):
        super().__init__(ifd0)
        self._subs = subs

    def get_ifd(self, tag: int) -> dict:
        return self._subs.get(tag, {})


# -- embedded JPEGs -------------------------------------------------------------------------------

def embedded_jpegs(data: bytes) -> list[tuple[int, tuple[int, int]]]:
    """(offset, (width, height)) of the JPEGs in `data` that Pillow opens, largest first."""
    import warnings

    from PIL import Image

    found, at, view = [], 0, memoryview(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(MAX_CANDIDATES):
            at = data.find(b"\xff\xd8\xff", at)
            if at < 0:
                break
            try:
                with Image.open(Window(view, at), formats=("JPEG",)) as img:
                    found.append((at, img.size))
            except Exception:  # noqa: BLE001 - not a JPEG after all (sensor bytes, lossless JPEG)
                pass
            at += 3
    return sorted(found, key=lambda item: -item[1][0] * item[1][1])


class Window:
    """A read-only file over `view` from `start` on, without copying it (Pillow reads a
    candidate JPEG's header through it; a BytesIO of the tail would copy megabytes each)."""

    def __init__(self, view: memoryview, start: int):
        self.view, self.start, self.pos = view, start, 0

    def read(self, size: int = -1) -> bytes:
        begin = self.start + self.pos
        end = len(self.view) if size is None or size < 0 else min(len(self.view), begin + size)
        self.pos = max(self.pos, end - self.start)
        return bytes(self.view[begin:end])

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.view) - self.start}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos
