"""Image preprocessing in PIL + numpy.

Reproduces CLIP's own pipeline (OpenAI `clip.load`'s torchvision transform, and
transformers' CLIPImageProcessor, which agree): resize so the *shortest* side equals the
model's image size with PIL bicubic resampling (the long side becomes
int(size * long / short)), centre crop to size x size (offsets round((dim - size) / 2)),
scale to [0, 1], subtract mean and divide by std per channel, CHW float32. Every parameter
comes from the manifest's `image` section.

Two additions CLIP's pipeline lacks, both needed for real photo libraries:
- EXIF orientation is applied (`ImageOps.exif_transpose`), so a portrait phone photo is
  embedded upright;
- any mode becomes 8-bit RGB correctly: 16-bit and 32-bit grayscale are scaled, not clipped;
  images with alpha (RGBA, LA, palette with transparency) are composited over white;
  CMYK, grayscale, bilevel and palette go through Pillow's conversions.

Large JPEGs are decoded with Pillow's `draft()` (libjpeg DCT scaling) at the smallest
1/2, 1/4 or 1/8 scale whose shortest side is still at least `DRAFT_FACTOR` (sources below
`SMALL_SOURCE` px: `SMALL_SOURCE_FACTOR`) x the model's image size; the final bicubic resize
of the region that holds the photo then does the rest, with the exact decode's geometry.
`bench/draft.py` measures its effect against an exact decode by source size.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from .formats import photo_formats, prepare_decoders
from .raw import is_raw

# Shortest side kept by draft decoding, as a multiple of the model input size: 1x lets
# libjpeg scale down until the short side is just above the input size, and bicubic does the
# rest. Measured by source size (`bench/draft.py`, docs/design.md "Preprocessing", mean pixel
# difference to an exact decode in normalised units): at 1x the error is 0.013-0.034 for
# sources below 1600 px (the scaled image lands close to 224 and libjpeg's scaling replaces
# bicubic's anti-aliasing) and 2x brings it under 0.009 for 3-6 ms more per image; from 1600
# px up 1x stays at 0.006-0.013 while 2x would cost 7-12 ms (8-23% of a photo's time).
DRAFT_FACTOR = 1
SMALL_SOURCE = 1600  # short side below which SMALL_SOURCE_FACTOR applies
SMALL_SOURCE_FACTOR = 2
PIPELINE_VERSION = (f"pil-bicubic-shortest-centercrop-exif-alpha-white-draft{DRAFT_FACTOR}x-"
                    f"{SMALL_SOURCE_FACTOR}x-below{SMALL_SOURCE}-v2")
EXACT_PIPELINE = "pil-bicubic-shortest-centercrop-exif-alpha-white-exact-v2"


def pipeline_version(use_draft: bool) -> str:
    """What the database records about how its vectors' pixels were made (`status` shows it;
    `--like` decodes its image the same way)."""
    return PIPELINE_VERSION if use_draft else EXACT_PIPELINE


def draft_pipeline(version: str | None) -> bool:
    return version != EXACT_PIPELINE
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit (~89.5 MP)
# Largest resized picture made before the centre crop (6 MB of RGB): panoramas up to 40:1 take
# the exact resize-then-crop path; thinner strips resample the crop only.
WHOLE_RESIZE_LIMIT = 2_000_000


class ImageDecodeError(Exception):
    """The file is not an image we can decode; the message says why in a few words."""

    def __init__(self, message: str, truncated: bool = False):
        # One line, whatever the decoder said: libheif ends its reasons with a line break.
        super().__init__(" ".join(message.split()))
        self.truncated = truncated  # the file ends before its picture does: what is there may do


# A damaged photo (a copy cut short, a disk's bad stretch) is indexed from what decodes when
# at least this share of its rows is there, and marked damaged (`Decoded.damage`); JPEG and
# PNG decoders leave the rows they could not read uniform (grey, black), which is how the
# missing share is measured. bench/robustness.py measures how far such a copy's vector drifts.
MIN_DECODED_SHARE = 0.5
_truncated_lock = __import__("threading").Lock()


class Decoded(NamedTuple):
    """A decoded, upright RGB image, the original photo's upright size, and the region of
    `image` that holds the whole photo. Draft decoding at 1/s rounds the scaled size up
    (a 2133x1600 JPEG at 1/4 is 534x400, not 533.25x400): resizing that region instead of the
    whole image keeps the geometry, and so the centre crop, of an exact decode. Without it
    the crop moved by a pixel (measured: mean pixel difference 0.10 instead of 0.01)."""

    image: Image.Image
    full_size: tuple[int, int]
    box: tuple[float, float, float, float]
    headers: object = None  # what `read_headers` made of the opened file, when asked for
    damage: str | None = None  # what is missing from a damaged photo decoded in part


def open_image(path, image_size: int, use_draft: bool = True) -> Image.Image:
    """Open, draft-decode (JPEG), orient and convert one image to 8-bit RGB."""
    return decode_image(path, image_size, use_draft).image


def decode_image(path, image_size: int, use_draft: bool = True, read_headers=None, name=None) -> Decoded:
    """`read_headers(img, upright_size)`, if given, reads the opened file's headers (the
    indexer's metadata) while it is open: no second open, no second read. `name`: the file's
    path when `path` is an open file without one; a RAW file (by its extension) is read
    through `raw.py`."""
    prepare_decoders()
    # Pillow warns through Python's warnings (corrupt EXIF, DecompressionBombWarning, ...),
    # which would print two-line messages even under --quiet. A file that still decodes is
    # indexed; one we refuse gets our own one-line warning. Either way theirs adds nothing.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if is_raw(name if name is not None else getattr(path, "name", path)):
            from .raw import decode_raw

            return decode_raw(path, image_size, use_draft, caught, read_headers)
        try:
            return _decode_opened(_open(path, photo_formats(), caught), image_size, use_draft, read_headers)
        except ImageDecodeError as exc:
            if not exc.truncated or not (isinstance(path, (str, bytes)) or hasattr(path, "seek")):
                raise
        return _decode_damaged(path, image_size, use_draft, caught, read_headers)


def _decode_damaged(path, image_size: int, use_draft: bool, caught: list, read_headers) -> Decoded:
    """A photo whose file ends before its picture does, decoded as far as it goes: kept when
    most of it is there (`MIN_DECODED_SHARE`), with what is missing in `Decoded.damage`."""
    from PIL import ImageFile

    if hasattr(path, "seek"):
        path.seek(0)
    with _truncated_lock:  # Pillow's switch is global: one such decode at a time in a process
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            decoded = _decode_opened(_open(path, photo_formats(), caught), image_size, use_draft, read_headers,
                                     measure_missing=True)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
    missing = float(decoded.damage)
    if 1.0 - missing < MIN_DECODED_SHARE:
        raise ImageDecodeError(f"cannot decode (truncated: only {1.0 - missing:.0%} of the picture is there)")
    if missing >= 0.01:
        damage = f"truncated: the bottom {missing:.0%} of the picture is missing"
    else:  # a progressive JPEG cut short: every row is there, with less detail
        damage = "truncated: the file ends early; the picture is there with less detail"
    return decoded._replace(damage=damage)


def missing_share(img: Image.Image) -> float:
    """The share of rows at the bottom that are one flat value: what a JPEG or PNG decoder
    leaves where the file ended."""
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.reshape(arr.shape[0], -1)
    flat = np.all(arr == arr[:, :1], axis=1) & np.all(arr[:, :1] == arr[-1, :1], axis=1)
    rows = len(flat) - (np.flatnonzero(~flat)[-1] + 1 if (~flat).any() else 0)
    return rows / max(1, len(flat))


def open_jpeg_like(source, image_size: int, use_draft: bool, caught: list, orientation: int,
                   too_small: int) -> Decoded | None:
    """A RAW's embedded JPEG preview, decoded as a JPEG photo is but turned by `orientation`
    (the RAW's, not the preview's own); None when its shorter side is under `too_small`.
    `Decoded.headers` is the opened preview (its EXIF, for RAWs whose own structure has none)."""
    img = _open(source, ("JPEG",), caught)
    if min(img.size) < too_small:
        return None
    return _decode_opened(img, image_size, use_draft, lambda opened, upright: opened, orientation)


def _open(path, formats, caught: list) -> Image.Image:
    try:
        return Image.open(path, formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused: too many pixels ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(unidentified(path, caught)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - see _decode_opened
        raise ImageDecodeError(f"cannot decode ({type(exc).__name__}: {exc})") from None


def _decode_opened(img: Image.Image, image_size: int, use_draft: bool, read_headers=None,
                   orientation: int | None = None, measure_missing: bool = False) -> Decoded:
    try:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ImageDecodeError(f"refused: {width}x{height} exceeds the {MAX_PIXELS} pixel limit")
        if orientation is not None:
            img.getexif()[0x0112] = orientation  # exif_transpose below reads this Exif object
        box = None
        if use_draft and img.format == "JPEG":
            factor = SMALL_SOURCE_FACTOR if min(width, height) < SMALL_SOURCE else DRAFT_FACTOR
            wanted = int(image_size * factor)
            drafted = img.draft("RGB", (wanted, wanted))
            box = drafted[1] if drafted else None
        img.load()
        missing = missing_share(img) if measure_missing else None  # before turning: the file's last rows
        orientation = img.getexif().get(0x0112, 1) if box else 1
        stored_size = img.size
        # In place: without an orientation to apply, exif_transpose would return a copy,
        # doubling the memory of every large picture (measured +267 MB at 89 MP).
        ImageOps.exif_transpose(img, in_place=True)
        full = (width, height) if img.size == stored_size else (height, width)  # else turned by 90 degrees
        headers = read_headers(img, full) if read_headers else None
        return Decoded(to_rgb(img), full, upright_box(box, stored_size, orientation) if box else (0, 0, *img.size),
                       headers, None if missing is None else str(missing))
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode ({exc})", truncated="truncated" in str(exc)) from None
    except Exception as exc:  # noqa: BLE001
        # Decoder plugins raise what they like on damaged files (fuzzing found Pillow's AVIF
        # plugin raising RuntimeError); one bad photo must stay a per-file failure.
        raise ImageDecodeError(f"cannot decode ({type(exc).__name__}: {exc})") from None


# Rows converted at a time by `to_rgb`: conversions that need more than one full-size copy of
# the picture (16-bit scaling in numpy, compositing alpha over white) run band by band, so an
# 89 MP 16-bit or RGBA picture costs the source plus its RGB result, not 2.2 GB (measured).
BAND_ROWS = 256


def unidentified(source, caught: list) -> str:
    """Why no photo plugin opened a file. A plugin that recognised the file but failed says so
    in a warning (`WARN_POSSIBLE_FORMATS`, set by `prepare_decoders`): libavif refuses a 289 MP
    AVIF with "BMFF parsing failed", which was reported as "not a recognised image format";
    the size the file claims (its `ispe` box) tells the real reason."""
    failures = [str(w.message) for w in caught if " opening failed. " in str(w.message)]
    if not failures:
        return "not a recognised image format"
    plugin, _, reason = failures[0].partition(" opening failed. ")
    claimed = claimed_size(source)
    if claimed and claimed[0] * claimed[1] > MAX_PIXELS:
        return f"refused: too many pixels ({plugin} of {claimed[0]}x{claimed[1]}, over the {MAX_PIXELS} pixel limit)"
    return f"cannot decode ({plugin}: {reason})"


def claimed_size(source) -> tuple[int, int] | None:
    """The picture size an AVIF or HEIF file declares (its first `ispe` property), if any."""
    import struct

    try:
        if hasattr(source, "seek"):
            source.seek(0)
            head = source.read(65536)
        else:
            with open(source, "rb") as f:
                head = f.read(65536)
    except OSError:
        return None
    at = head.find(b"ispe")  # box type, then 4 bytes of version and flags, then width, height
    return struct.unpack(">II", head[at + 8 : at + 16]) if 0 <= at <= len(head) - 16 else None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB, per pixel (so band by band gives the very same pixels)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        if mode.startswith("I;16"):
            top = 65535.0
        else:
            top = float(img.getextrema()[1])
        top = top if top > 255 else 255.0

        def convert(band):
            arr = np.asarray(band, dtype=np.float64)
            return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L").convert("RGB")
    elif mode == "F":
        lo, hi = _finite_extrema(img)

        def convert(band):
            arr = np.nan_to_num(np.asarray(band, dtype=np.float32))
            scaled = np.rint((arr - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(arr)
            return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    elif (mode == "P" and "transparency" in img.info) or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        def convert(band):
            rgba = band.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    else:
        return img.convert("RGB")
    if img.height <= BAND_ROWS:
        return convert(img)
    out = Image.new("RGB", img.size)
    for top_row in range(0, img.height, BAND_ROWS):
        out.paste(convert(img.crop((0, top_row, img.width, min(img.height, top_row + BAND_ROWS)))), (0, top_row))
    return out


def _finite_extrema(img: Image.Image) -> tuple[float, float]:
    """Smallest and largest value of a float image, NaN and infinities as nan_to_num makes
    them (0 and the float32 limits), as the whole-array conversion saw them."""
    lo, hi = np.inf, -np.inf
    for top_row in range(0, img.height, BAND_ROWS):
        band = img.crop((0, top_row, img.width, min(img.height, top_row + BAND_ROWS)))
        arr = np.nan_to_num(np.asarray(band, dtype=np.float32))
        lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    return lo, hi


def upright_box(box, size: tuple[int, int], orientation: int) -> tuple[float, float, float, float]:
    """`box` (anchored at the top left of an image of `size`) after the EXIF `orientation`
    turn or flip that `ImageOps.exif_transpose` applies: it is then anchored at another corner."""
    w, h = size
    bw, bh = box[2], box[3]
    return {2: (w - bw, 0, w, bh), 3: (w - bw, h - bh, w, h), 4: (0, h - bh, bw, h), 5: (0, 0, bh, bw),
            6: (h - bh, 0, h, bw), 7: (h - bh, w - bw, h, w), 8: (0, w - bw, bh, w)}.get(orientation, (0, 0, bw, bh))


def to_pixels(img: Image.Image, spec: dict, full_size: tuple[int, int] | None = None, box=None) -> np.ndarray:
    """RGB PIL image -> normalised float32 [3, S, S] as the vision graph expects. With a
    draft-decoded image, `full_size` and `box` (see `Decoded`) keep the exact geometry."""
    size = int(spec["size"])
    resize = resize_side(spec)
    width, height = full_size or img.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    new_size = (resize, new_long) if width <= height else (new_long, resize)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    if new_size[0] * new_size[1] > WHOLE_RESIZE_LIMIT:
        # A thin strip (1 x 100000 px passes the pixel limit) resized whole asked for 224 x
        # 22.4M pixels: a worker grew to 9 GB. Resample only the crop: the same sampling grid,
        # work and memory bounded by the output; pixels may differ from the whole resize by a
        # level or two (the box's float position), so ordinary photos keep the exact path.
        x0, y0, x1, y1 = box if box is not None else (0, 0, *img.size)
        per_x, per_y = (x1 - x0) / new_size[0], (y1 - y0) / new_size[1]  # source pixels per resized pixel
        crop = (x0 + left * per_x, y0 + top * per_y, x0 + (left + size) * per_x, y0 + (top + size) * per_y)
        img = img.resize((size, size), resample=Image.BICUBIC, box=crop)
    else:
        if box is not None and tuple(box) != (0, 0, *img.size):
            img = img.resize(new_size, resample=Image.BICUBIC, box=box)
        elif img.size != new_size:
            img = img.resize(new_size, resample=Image.BICUBIC)
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    arr = (arr - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def resize_side(spec: dict) -> int:
    """The shortest side before the centre crop: the checkpoint's own (e.g. 80 for a 64 crop),
    or the crop size, as in OpenAI's CLIP."""
    return int(spec.get("shortest_side", spec["size"]))


def load_pixels(path, spec: dict, use_draft: bool = True) -> np.ndarray:
    """Decode (a path or an open file) and preprocess: what the vision graph takes."""
    decoded = decode_image(path, resize_side(spec), use_draft)
    return to_pixels(decoded.image, spec, decoded.full_size, decoded.box)


def reference_image(size: int = 256) -> Image.Image:
    """A deterministic test card (gradients and a disc), drawn without any file, so the export
    and a later runtime can embed the very same pixels and compare."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    disc = ((xs - 0.6) ** 2 + (ys - 0.4) ** 2) < 0.06
    red = 255 * xs
    green = 255 * ys
    blue = np.where(disc, 230.0, 255 * (1 - xs) * 0.5)
    arr = np.stack([red, green, blue], axis=-1).round().astype(np.uint8)
    return Image.fromarray(arr, "RGB")
