"""RAW camera files: which extensions are RAW, decoding one through its embedded preview (or a
bounded half-size decode when it has none big enough), its orientation, and the headers its
metadata is read from.

The reading is LibRaw's, through rawpy (the `raw` extra: wheels with LibRaw inside for
x86-64 and ARM64 Linux with glibc 2.27+, Apple-silicon macOS and Windows, CPython 3.11+;
docs/design.md "RAW"; rclip reads RAW the same way). Measured (`bench/raw.py`,
docs/design.md "RAW"; 24 MP, decode and preprocess to 224): a DNG through its 1620 px preview
54 ms and 88 MB peak, a JPEG of the same picture 121 ms, LibRaw's half-size decode 375 ms and
214 MB; so the preview is used whenever its shorter side reaches the model's input side. ExifTool's
`-PreviewImage -b` gives the same bytes but starts a Perl process per file (or keeps one
running with -stay_open): more time than LibRaw's whole open, and a system package rather than
a wheel.

Orientation: a camera stores its previews as the sensor saw them and says how to turn them in
the RAW's own Orientation (LibRaw's `flip`, read per maker); a preview's own EXIF orientation
(when it has EXIF at all) is ignored, so a picture is never turned twice. The half-size decode
is turned by LibRaw itself.

Metadata, and the embedded JPEGs when LibRaw cannot open a file at all, come from the RAW's
own structure (`raw_structure.py`). Then the sidecars, as for any photo (`IMG_0001.CR2.xmp`,
darktable's name, and `IMG_0001.xmp`, Lightroom's).

Everything here is untrusted input to a large C library: it runs in the index workers under
their time and memory bounds, refuses sensors over `MAX_RAW_PIXELS`, and every failure is one
`ImageDecodeError` line naming what went wrong.
"""
from __future__ import annotations

import functools
import io
import os

from .raw_structure import RawHeaders, raw_headers

# Lower-case extensions of the RAW formats LibRaw reads. (.tif stays a TIFF photo.)
RAW = frozenset({b".cr2", b".cr3", b".crw", b".nef", b".nrw", b".arw", b".srf", b".sr2", b".raf", b".orf",
                 b".rw2", b".rwl", b".pef", b".dng", b".x3f", b".iiq", b".mrw", b".3fr", b".erf", b".srw",
                 b".kdc", b".dcr", b".mos", b".mef", b".raw", b".gpr"})
# Four times Pillow's decompression-bomb bound (about 358 MP): larger than any camera sensor
# (a 151 MP medium-format back included), small enough that a forged header cannot ask
# LibRaw for gigabytes.
MAX_RAW_PIXELS = 4 * 89_478_485
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
    try:
        return _decode_with_libraw(rawpy, data, image_size, use_draft, caught, read_headers)
    except ImageDecodeError as exc:
        # LibRaw could not open the file (a camera newer than it, sensor data cut short) or
        # found no picture in it: a JPEG preview the file still carries will do.
        decoded = _embedded_preview(data, image_size, use_draft, caught, read_headers)
        if decoded is None:
            raise exc from None
        return decoded


def _decode_with_libraw(rawpy, data: bytes, image_size: int, use_draft: bool, caught: list, read_headers):
    from .preprocess import ImageDecodeError

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
    its handler. While LibRaw runs, file descriptor 2 goes to a scratch file instead (an
    unlinked temporary file, one per process), and what LibRaw said (`text()`) becomes part of
    the file's one-line reason."""

    _scratch: int | None = None  # a bare descriptor: no file object left to close at exit

    def __enter__(self) -> "libraw_stderr":
        import sys
        import tempfile

        if libraw_stderr._scratch is None:
            fd, name = tempfile.mkstemp(prefix="clipsearch-libraw-")
            os.unlink(name)
            libraw_stderr._scratch = fd
        sys.stderr.flush()
        self.saved = os.dup(2)
        os.dup2(libraw_stderr._scratch, 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self.saved, 2)
        os.close(self.saved)
        os.ftruncate(libraw_stderr._scratch, 0)
        os.lseek(libraw_stderr._scratch, 0, os.SEEK_SET)

    def text(self) -> str:
        """LibRaw's words so far, its "unknown file: " prefix dropped, on one line."""
        said = os.pread(libraw_stderr._scratch, 4096, 0).decode("utf-8", "replace")
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


def read_raw_headers(data: bytes) -> tuple[RawHeaders, tuple[int, int] | None]:
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


def _embedded_preview(data: bytes, image_size: int, use_draft: bool, caught: list, read_headers):
    """The largest JPEG inside the file, found without LibRaw (`raw_structure.embedded_jpegs`),
    turned by the RAW's own Orientation tag; None when none is big enough or decodes."""
    from .preprocess import ImageDecodeError, open_jpeg_like
    from .raw_structure import Window, embedded_jpegs

    headers = raw_headers(data)
    try:
        orientation = int(headers.getexif().get(0x0112, 1))
    except (TypeError, ValueError):
        orientation = 1
    view = memoryview(data)
    for offset, size in embedded_jpegs(data):
        if min(size) < image_size:
            continue
        try:
            decoded = open_jpeg_like(Window(view, offset), image_size, use_draft, caught,
                                     orientation if orientation in FLIP_TO_ORIENTATION.values() else 1, image_size)
        except ImageDecodeError:
            continue
        if decoded is not None:
            if read_headers:
                read_headers(headers, decoded.full_size)
            return decoded._replace(headers=None)
    return None


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
    if not array.size or array.min() == array.max():
        # LibRaw decodes a file whose sensor data was stripped (ExifTool's DNG sample) or
        # never written to one flat colour, without a word: not a picture of anything.
        raise ImageDecodeError(f"cannot decode RAW ({why}, and its image data is empty: a stripped or unfinished file)")
    printed = said.text() if said is not None else ""
    if printed:
        # LibRaw fills what it could not read with zeros and carries on: a picture that is
        # partly black is not this photo (the stripped DNG in ExifTool's samples gave one).
        raise ImageDecodeError(f"cannot decode RAW ({why}, and its image data is cut short or corrupt: "
                               f"LibRaw: {printed})")
    img = Image.fromarray(array, "RGB")
    if read_headers:
        read_headers(headers(None), upright or img.size)
    return Decoded(img, img.size, (0, 0, *img.size), None)
