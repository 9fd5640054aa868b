"""RAW camera files: which extensions are RAW, decoding one through its embedded preview (or a
bounded half-size decode when it has none big enough), its orientation, and the headers its
metadata is read from.

The reading is LibRaw's, through rawpy (the `raw` extra: wheels with LibRaw inside for
x86-64 and ARM64 Linux, macOS and Windows; rclip reads RAW the same way). Measured on this
project's files (`bench/raw.py`, docs/design.md "RAW"): a 24 MP DNG through its 1620 px preview
costs about what a JPEG of the preview's size costs, a half-size demosaic many times that, so
the preview is used whenever its shorter side reaches the model's input side. ExifTool's
`-PreviewImage -b` gives the same bytes but starts a Perl process per file (or keeps one
running with -stay_open): more time than LibRaw's whole open, and a system package rather than
a wheel.

Orientation: a camera stores its previews as the sensor saw them and says how to turn them in
the RAW's own Orientation (LibRaw's `flip`, read per maker); a preview's own EXIF orientation
(when it has EXIF at all) is ignored, so a picture is never turned twice. The half-size decode
is turned by LibRaw itself.

Metadata comes from the RAW's own structure, parsed by Pillow's EXIF reader: TIFF-based files
(CR2, NEF, NRW, ARW, SR2, SRF, DNG, PEF, IIQ, 3FR, ERF, SRW, KDC, DCR, MOS, MEF) as they are,
ORF and RW2 whose headers only differ in their magic number, RAF through the JPEG its header
points at, CR3 through its CMT1/CMT2/CMT4 boxes (TIFF structures inside its ISO-BMFF), MRW
through its TTW block; the preview's own EXIF otherwise. Then the sidecars, as for any photo
(`IMG_0001.CR2.xmp`, darktable's name, and `IMG_0001.xmp`, Lightroom's).

Everything here is untrusted input to a large C library: it runs in the index workers under
their time and memory bounds, refuses sensors over `MAX_RAW_PIXELS`, and every failure is one
`ImageDecodeError` line naming what went wrong.
"""
from __future__ import annotations

import functools
import io
import os
import struct

# Lower-case extensions of the RAW formats LibRaw reads. (.tif stays a TIFF photo.)
RAW = frozenset({b".cr2", b".cr3", b".crw", b".nef", b".nrw", b".arw", b".srf", b".sr2", b".raf", b".orf",
                 b".rw2", b".rwl", b".pef", b".dng", b".x3f", b".iiq", b".mrw", b".3fr", b".erf", b".srw",
                 b".kdc", b".dcr", b".mos", b".mef", b".raw", b".gpr"})
# Four times Pillow's decompression-bomb bound (about 358 MP): larger than any camera sensor
# (a 151 MP medium-format back included), small enough that a forged header cannot ask
# LibRaw for gigabytes.
MAX_RAW_PIXELS = 4 * 89_478_485
HEADER_BYTES = 4 << 20  # where every format above keeps its EXIF structures
# LibRaw's `flip` -> the EXIF orientation it came from (dcraw's "50132467" table, inverted).
FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def is_raw(name) -> bool:
    """Whether a path (str or bytes) names a RAW file, by its extension."""
    if isinstance(name, str):
        name = os.fsencode(name)
    return isinstance(name, bytes) and os.path.splitext(name)[1].lower() in RAW


@functools.cache
def raw_problem() -> str | None:
    """Why RAW files cannot be decoded here, or None (as `formats.heif_problem`)."""
    try:
        import rawpy  # noqa: F401 - imported, not only found: a wheel for another libc must not load
    except ModuleNotFoundError as exc:
        if exc.name == "rawpy":
            return "not installed"
        return f"installed but does not load: {type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any import failure means "no decoder"
        return f"installed but does not load: {type(exc).__name__}: {exc}"
    return None


def missing_raw_decoder() -> str:
    if raw_problem() == "not installed":
        return "RAW photos need rawpy: pip install 'clipsearch[raw]'"
    return f"RAW photos need a working rawpy; it is {raw_problem()}; reinstall it"


def decode_raw(source, image_size: int, use_draft: bool, caught: list, read_headers=None):
    """A RAW (a path, or an open file or BytesIO) -> `preprocess.Decoded`, upright. The embedded
    preview when its shorter side reaches `image_size`, else LibRaw's half-size decode."""
    import rawpy

    from .preprocess import ImageDecodeError

    data = _bytes_of(source)
    with libraw_stderr() as said:
        try:
            raw = rawpy.RawPy()
            raw.open_buffer(io.BytesIO(data))  # read() hands rawpy these bytes, not a copy
        except rawpy.LibRawError as exc:
            raise ImageDecodeError(f"cannot decode RAW ({_libraw_reason(exc, said)})") from None
        except Exception as exc:  # noqa: BLE001 - a C library's surprises stay one file's failure
            raise ImageDecodeError(f"cannot decode RAW ({type(exc).__name__}: {exc})") from None
        with raw:
            orientation = FLIP_TO_ORIENTATION.get(raw.sizes.flip, 1)
            upright = upright_size(raw.sizes, orientation)
            headers = functools.partial(raw_headers, data)
            preview, why = _preview(raw, rawpy)
            if preview is not None:
                decoded = _decode_preview(preview, image_size, use_draft, caught, orientation, headers, read_headers,
                                          upright)
                if decoded is not None:
                    return decoded
                why = "its preview does not decode"
            elif why is None:
                why = "no preview"
            return _half_size(raw, rawpy, why, headers, read_headers, said, upright)


class libraw_stderr:
    """LibRaw prints a damaged file's trouble to stderr itself ("unknown file: Unexpected end
    of file"), bare lines that would reach cron mail under --quiet; rawpy offers no way to set
    its handler. While LibRaw runs, file descriptor 2 goes to a scratch file instead, and what
    it said (`self.text()`) becomes part of the file's one-line reason."""

    _scratch = None

    def __enter__(self) -> "libraw_stderr":
        import sys
        import tempfile

        if libraw_stderr._scratch is None:
            libraw_stderr._scratch = tempfile.TemporaryFile()
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(libraw_stderr._scratch.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self.saved, 2)
        os.close(self.saved)
        libraw_stderr._scratch.seek(0)
        libraw_stderr._scratch.truncate()

    def text(self) -> str:
        """LibRaw's words so far, its "unknown file: " prefix dropped, on one line."""
        scratch = libraw_stderr._scratch
        scratch.seek(0)
        said = scratch.read(4096).decode("utf-8", "replace")
        scratch.seek(0, 2)
        lines = [line.removeprefix("unknown file: ").strip() for line in said.splitlines() if line.strip()]
        return "; ".join(dict.fromkeys(lines))[:200]


def _bytes_of(source) -> bytes:
    if isinstance(source, (str, bytes)):
        with open(source, "rb") as f:
            return f.read()
    source.seek(0)
    if isinstance(source, io.BytesIO):
        return source.getvalue()
    return source.read()


def _libraw_reason(exc, said: "libraw_stderr | None" = None) -> str:
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    name = type(exc).__name__.removeprefix("LibRaw").removesuffix("Error")
    reason = f"{name}: {text}" if text and text.lower() not in name.lower() else name
    printed = said.text() if said is not None else ""
    return f"{reason}; LibRaw: {printed}" if printed else reason


def _preview(raw, rawpy):
    """The embedded preview, as JPEG bytes or an RGB array, or (None, why not)."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None, None
    except rawpy.LibRawError as exc:
        return None, f"preview unreadable ({_libraw_reason(exc)})"
    except Exception as exc:  # noqa: BLE001
        return None, f"preview unreadable ({type(exc).__name__})"
    return thumb, None


def upright_size(sizes, orientation: int) -> tuple[int, int] | None:
    """The picture's size as shown (the sensor's visible area, turned): what `status` and the
    page say a RAW measures, whichever picture was decoded."""
    if not sizes.width or not sizes.height:
        return None
    return (sizes.height, sizes.width) if orientation in (5, 6, 7, 8) else (sizes.width, sizes.height)


def read_raw_headers(data: bytes) -> tuple["RawHeaders", tuple[int, int] | None]:
    """A cached RAW's headers and upright size without decoding any picture (`index`'s
    headers-only pass); never raises."""
    upright = None
    try:
        import rawpy

        with libraw_stderr():
            with rawpy.RawPy() as raw:
                raw.open_buffer(io.BytesIO(data))  # read() hands rawpy these bytes, not a copy
                upright = upright_size(raw.sizes, FLIP_TO_ORIENTATION.get(raw.sizes.flip, 1))
    except Exception:  # noqa: BLE001 - no size then; the EXIF below is read on its own
        upright = None
    return raw_headers(data), upright


def _decode_preview(thumb, image_size, use_draft, caught, orientation, headers, read_headers, upright=None):
    """The preview through the same draft decoding and preprocessing as a JPEG, turned by the
    RAW's orientation; None when it is too small for the model or does not decode."""
    import rawpy
    from PIL import Image

    from .preprocess import Decoded, ImageDecodeError, open_jpeg_like, to_rgb

    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            decoded = open_jpeg_like(io.BytesIO(thumb.data), image_size, use_draft, caught, orientation,
                                     too_small=image_size)
        except ImageDecodeError:
            return None
        if decoded is None:
            return None
        if read_headers:
            read_headers(headers(decoded.headers), upright or decoded.full_size)
        return decoded._replace(headers=None)
    array = thumb.data  # a bitmap preview (older cameras): RGB, sensor orientation
    if array.ndim != 3 or min(array.shape[:2]) < image_size:
        return None
    img = Image.fromarray(array[..., :3].astype("uint8"), "RGB")
    img = _turn(img, orientation)
    if read_headers:
        read_headers(headers(None), upright or img.size)
    return Decoded(to_rgb(img), img.size, (0, 0, *img.size), None)


def _turn(img, orientation: int):
    from PIL import Image

    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    return img.transpose(method) if method is not None else img


def _half_size(raw, rawpy, why: str, headers, read_headers, said=None, upright=None):
    """LibRaw's half-size decode (each 2x2 Bayer block one pixel: no demosaic), turned upright."""
    from PIL import Image

    from .preprocess import Decoded, ImageDecodeError

    sizes = raw.sizes
    if sizes.raw_width * sizes.raw_height > MAX_RAW_PIXELS:
        raise ImageDecodeError(f"refused: a {sizes.raw_width}x{sizes.raw_height} sensor exceeds the "
                               f"{MAX_RAW_PIXELS} pixel limit ({why})")
    try:
        array = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    except rawpy.LibRawError as exc:
        raise ImageDecodeError(f"cannot decode RAW ({why}, and its image data: {_libraw_reason(exc, said)})") from None
    except (MemoryError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode RAW ({why}, and its image data: {type(exc).__name__})") from None
    img = Image.fromarray(array, "RGB")
    if read_headers:
        read_headers(headers(None), upright or img.size)
    return Decoded(img, img.size, (0, 0, *img.size), None)


# -- headers ------------------------------------------------------------------------------------

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
