"""Which photo formats this installation can decode, by file extension, and setting up the
decoders in a process (optional ones switched on, their own stderr output silenced).

Pillow always decodes JPEG (and MPO, the JPEG-based multi-picture format of many cameras'
3D and portrait shots: its first picture), PNG, WebP, GIF, BMP, TIFF, PNM (PBM/PGM/PPM,
what scanners and netpbm tools write) and PSD (the flattened composite Photoshop saves), and
AVIF and JPEG 2000 when it was built with libavif and OpenJPEG (its wheels are). HEIC/HEIF, the iPhone's format, needs pillow-heif (the `heic`
extra: prebuilt manylinux wheels for x86-64 and ARM64 with libheif/libde265 inside, nothing
to compile). RAW camera files need rawpy (the `raw` extra, `raw.py`). HEIC is optional rather than a runtime dependency because it adds ~6 MB of native
code only iPhone libraries need, and HEVC decoding is slow on a small CPU (no draft decoding
like JPEG's): docs/design.md "Formats" has the measured cost.

A format without its decoder is left out of the walk (not reported per file, not cached as
failed), so installing the decoder later indexes those files on the next run; the indexer
counts them and says once per run what to install.
"""
from __future__ import annotations

import functools
import importlib.util
import sys

from .raw import RAW, missing_raw_decoder, raw_problem

ALWAYS = frozenset({b".jpg", b".jpeg", b".png", b".webp", b".gif", b".bmp", b".tif", b".tiff", b".mpo",
                    b".pbm", b".pgm", b".ppm", b".pnm", b".psd"})
# Not indexed, though Pillow reads them: TGA has no signature (its plugin accepts almost any
# bytes, so it cannot be sniffed safely), DDS holds game textures, ICO/ICNS/CUR hold icons.
# The only Pillow plugins a photo is opened with. Pillow sniffs content with every plugin by
# default, and its EPS plugin runs Ghostscript: a PostScript file named .jpg could hang a run
# (`{} loop`) or print Ghostscript's error dump. Unknown names (no AVIF or HEIF decoder) are
# left out (`photo_formats`).
PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "PSD", "JPEG2000", "AVIF", "HEIF")


_PLUGINS = ("JpegImagePlugin", "MpoImagePlugin", "PngImagePlugin", "WebPImagePlugin", "GifImagePlugin",
            "BmpImagePlugin", "TiffImagePlugin", "PpmImagePlugin", "PsdImagePlugin", "Jpeg2KImagePlugin",
            "AvifImagePlugin")


@functools.cache  # once per process, after prepare_decoders (open_image calls it first)
def photo_formats() -> tuple[str, ...]:
    """`PHOTO_FORMATS` that this Pillow can open (after `prepare_decoders`, which registers
    HEIF). Only their plugins are loaded: `Image.init()` would import all ~45 (26 ms measured,
    on every `--like` query); and Pillow raises KeyError for a name with no plugin."""
    import importlib

    from PIL import Image

    for plugin in _PLUGINS:
        if f"PIL.{plugin}" not in sys.modules:
            try:
                importlib.import_module(f"PIL.{plugin}")
            except ImportError:  # AvifImagePlugin in Pillow without libavif, or too old
                pass
    return tuple(name for name in PHOTO_FORMATS if name in Image.OPEN)
AVIF = frozenset({b".avif"})
JPEG2000 = frozenset({b".jp2", b".j2k", b".jpf", b".jpx"})
HEIF = frozenset({b".heic", b".heif", b".hif"})


@functools.cache
def heif_problem() -> str | None:
    """Why HEIC cannot be decoded here, or None. Imports pillow-heif (16 ms, once per index
    run) rather than only finding it: an installed but broken build (a wheel for another
    libc, a missing shared library) must leave HEIC files out of the walk, not turn every
    one of them into a remembered failure."""
    if importlib.util.find_spec("pillow_heif") is None:
        return "not installed"
    try:
        import pillow_heif  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "no decoder"
        return f"installed but does not load: {type(exc).__name__}: {exc}"
    return None


def heif_available() -> bool:
    return heif_problem() is None


@functools.cache
def avif_available() -> bool:
    from PIL import features

    return bool(features.check("avif"))


@functools.cache
def jpeg2000_available() -> bool:
    from PIL import features

    return bool(features.check("jpg_2000"))


@functools.cache
def indexed_extensions() -> frozenset[bytes]:
    extensions = set(ALWAYS)
    if avif_available():
        extensions |= AVIF
    if jpeg2000_available():
        extensions |= JPEG2000
    if heif_available():
        extensions |= HEIF
    if raw_problem() is None:
        extensions |= RAW
    return frozenset(extensions)


def missing_decoder(extension: bytes) -> str | None:
    """What to install to index files with this (lower-case) extension, if that is the reason
    they are skipped."""
    if extension in HEIF and not heif_available():
        if heif_problem() == "not installed":
            return "HEIC/HEIF photos need pillow-heif: pip install 'clipsearch[heic]'"
        return f"HEIC/HEIF photos need a working pillow-heif; it is {heif_problem()}; reinstall it"
    if extension in RAW and raw_problem() is not None:
        return missing_raw_decoder()
    if extension in AVIF and not avif_available():
        return "AVIF photos need a Pillow built with libavif (the PyPI wheels are)"
    if extension in JPEG2000 and not jpeg2000_available():
        return "JPEG 2000 pictures need a Pillow built with OpenJPEG (the PyPI wheels are)"
    return None


_prepared = False


def prepare_decoders(threads: int = 1) -> None:
    """Set up decoding in this process, once: pillow-heif registered with Pillow if it is
    installed (`threads` caps libheif's own threads: index workers already run one per core),
    and the decoders' own stderr output silenced."""
    global _prepared
    if _prepared:
        return
    _prepared = True
    if heif_available():
        import pillow_heif

        pillow_heif.options.DECODE_THREADS = max(1, threads)
        # libheif applies the container's rotation/mirror boxes while decoding and pillow-heif
        # then sets the EXIF orientation to 1, so the later exif_transpose does not rotate twice.
        pillow_heif.register_heif_opener()
    from PIL import Image

    # A plugin that recognises a file but fails to open it says why in a warning (caught by
    # preprocess.decode_image for its message) instead of Pillow's bare "cannot identify".
    Image.WARN_POSSIBLE_FORMATS = True
    _quiet_decoders()


def _quiet_decoders() -> None:
    """Stop the decoders printing to stderr themselves: bare lines that would reach cron mail
    even under --quiet, about files Pillow then fails with an exception anyway (reported as
    our one-line warning). Two sources: Pillow's `logging` calls ("More samples per pixel
    than can be decoded", which Python's last-resort handler prints), and libtiff's C
    handlers ("tempfile.tif: Using code not yet in table." for a damaged LZW strip), set to
    none through ctypes on the copy this process loaded (found in /proc/self/maps, so Linux
    only; elsewhere libtiff keeps printing)."""
    import ctypes
    import logging

    pil_logger = logging.getLogger("PIL")
    pil_logger.addHandler(logging.NullHandler())
    pil_logger.propagate = False

    from PIL import _imaging  # noqa: F401 - loads the libtiff Pillow links against

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line and "/" in line}
        for path in paths:
            libtiff = ctypes.CDLL(path)
            for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
                setter = getattr(libtiff, name)
                setter.argtypes, setter.restype = [ctypes.c_void_p], ctypes.c_void_p
                setter(None)
    except (OSError, AttributeError):
        pass  # no /proc or an unusual build: libtiff keeps printing, nothing else changes
