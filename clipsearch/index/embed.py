"""What one indexing worker does with a file: read it once, fingerprint it, decode and
preprocess it, then embed it (`EmbedWorker`).

Runs in worker processes (decoding holds the GIL for much of its time; `workers.py` starts and
watches them), each holding one `EmbedWorker` made by `init_worker`. Results are plain bytes
and numbers, cheap to pickle back to the main process."""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np

FINGERPRINT_BLOCK = 64 * 1024
# Files up to this size are read into memory once (fingerprint and decode from the same
# bytes); larger ones are decoded from disk so a worker never holds a huge file whole.
WHOLE_READ_LIMIT = 64 * 1024 * 1024
# A RAW's headers-only read: LibRaw needs the file whole to open it (for the picture's size), and
# medium-format RAW files pass 100 MB; past this only the EXIF is read.
HEADERS_READ_LIMIT = 256 * 1024 * 1024

_process_worker = None  # this worker process's EmbedWorker, made once by init_worker


@dataclass
class Result:
    path: bytes
    size: int
    mtime_ns: int
    fingerprint: bytes | None = None
    vector: bytes | None = None
    scale: float | None = None
    error: str | None = None
    vanished: bool = False
    meta: dict | None = None  # what the photo says about itself (metadata.photo_record)
    sidecars: str = ""  # the sidecar versions `meta` was read from
    headers_only: bool = False  # a photo cached before: its metadata (and print) read, nothing embedded
    companion: bytes | None = None  # the RAW of a RAW+JPEG pair this photo stands for (its sidecars are read too)
    print: bytes | None = None  # the perceptual print of its pixels (`photos/prints.py`)
    print_only: bool = False  # a photo cached before, decoded for its print (b"" kept when none can be made)
    damage: str | None = None  # decoded in part (a file cut short): what is missing


# A task's 4th element: what to do with a photo cached before, whose vector stays.
HEADERS_ONLY = "headers"  # read its metadata; decode nothing
PRINT_ONLY = "print"  # decode it for its perceptual print (and read its metadata); never run the model


def task(path: bytes, size: int, mtime_ns: int, mode: str = "", companion: bytes | None = None) -> tuple:
    """What a worker is given for one file: (path, size, mtime[, mode[, companion]]); small to pickle."""
    if companion is not None:
        return (path, size, mtime_ns, mode, companion)
    return (path, size, mtime_ns, mode) if mode else (path, size, mtime_ns)


def mode_of(file: tuple) -> str:
    """"" (embed it), HEADERS_ONLY or PRINT_ONLY."""
    return file[3] if len(file) > 3 else ""


def result_for(file: tuple, **fields) -> Result:
    """The Result of a task, before anything was read."""
    return Result(*file[:3], headers_only=mode_of(file) != "", companion=file[4] if len(file) > 4 else None,
                  print_only=mode_of(file) == PRINT_ONLY, **fields)


def fingerprint(data: bytes) -> bytes:
    """Content identity for move detection: sha256 of size, first and last 64 KiB (the whole
    file when smaller than 128 KiB)."""
    digest = hashlib.sha256(len(data).to_bytes(8, "little"))
    digest.update(data[:FINGERPRINT_BLOCK])
    digest.update(data[-FINGERPRINT_BLOCK:])
    return digest.digest()


def fingerprint_file(path: bytes) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return fingerprint_open(f, os.fstat(f.fileno()).st_size)
    except OSError:
        return None


def fingerprint_open(f, size: int) -> bytes:
    """`fingerprint` of an open file of `size` bytes, reading only its first and last 64 KiB."""
    head = f.read(FINGERPRINT_BLOCK)
    if size <= 2 * FINGERPRINT_BLOCK:
        return fingerprint(head + f.read())
    f.seek(size - FINGERPRINT_BLOCK)
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    digest.update(head)
    digest.update(f.read(FINGERPRINT_BLOCK))
    return digest.digest()


def init_worker(model_folder: str, threads: int, use_draft: bool, parent: int) -> None:
    global _process_worker
    # `parent` comes from the main process, not from os.getppid() here: a worker still booting
    # when the main process was killed is already an orphan, and would watch the wrong parent.
    _exit_with_parent(parent)
    from clipsearch.model.encoders import ImageEncoder
    from clipsearch.model.manifest import load_manifest
    from clipsearch.photos.formats import prepare_decoders

    prepare_decoders(threads)  # before any file is opened: one decoding thread per worker
    # The main process verified the files already; re-hashing per worker would waste seconds.
    manifest = load_manifest(model_folder)
    _process_worker = EmbedWorker(ImageEncoder(manifest, threads=threads, verify=False), use_draft)


def _exit_with_parent(parent: int) -> None:
    """A worker whose main process was killed (SIGKILL, OOM killer) would wait forever on
    its task pipe, whose write end its sibling workers also hold. Watch the parent instead."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def process_worker() -> "EmbedWorker":
    return _process_worker


def embed_file(file: tuple[bytes, int, int]) -> Result:
    """The task a worker process runs: its EmbedWorker embeds one file."""
    return _process_worker.embed_one(file)


class EmbedWorker:
    """Holds what embedding photos needs, the vision encoder, the image spec and the draft
    choice, and turns a chunk of (path, size, mtime) into Results."""

    def __init__(self, encoder, use_draft: bool = True):
        self.encoder, self.spec, self.use_draft = encoder, encoder.manifest.image, use_draft

    def ready(self) -> None:
        """Load the model now, so a file's time bound counts decoding and embedding only."""
        self.encoder.session  # noqa: B018 - the property loads it

    def embed_one(self, file: tuple) -> Result:
        """A `task` as the walk saw it -> its Result."""
        result = result_for(file)
        try:
            with open(result.path, "rb") as f:
                if mode_of(file) == HEADERS_ONLY:
                    _read_headers(f, result)
                    return result
                pixels = _read_and_decode(f, result, self.spec, self.use_draft)
                if mode_of(file) == PRINT_ONLY:
                    if result.error is not None:  # its pixels will not decode now: its headers still can
                        result.error, result.print = None, None
                        f.seek(0)
                        _read_headers(f, result)
                    return result
        except FileNotFoundError:
            result.vanished = True
            return result
        except OSError as exc:
            result.error = f"cannot read ({exc.strerror})"
            return result
        self._embed(pixels, result)
        return result

    def embed_shipped(self, shipment: "Shipment") -> Result:
        """A photo whose bytes (and sidecars' bytes) were read on another machine -> its
        Result, as `embed_one` would have made it there (`cluster.py`)."""
        result = Result(shipment.path, len(shipment.data), shipment.mtime_ns, fingerprint(shipment.data),
                        companion=shipment.companion)
        self._embed(_decode(io.BytesIO(shipment.data), result, self.spec, self.use_draft, shipment.sidecars), result)
        return result

    def _embed(self, pixels, result: Result) -> None:
        from clipsearch.cache.packed import quantize_rows

        if pixels is not None:
            q, scales = quantize_rows(self.encoder.encode_pixels(pixels[None]))
            result.vector, result.scale = q[0].tobytes(), float(scales[0])


@dataclass
class Shipment:
    """A photo read once where the files are, for a worker that cannot read them: its path
    (a name only), mtime, bytes, and its sidecars as `metadata.read_sidecars` reads them."""

    path: bytes
    mtime_ns: int
    data: bytes
    sidecars: list
    companion: bytes | None = None


def ship(file: tuple) -> "Shipment | Result":
    """Read a walked (path, size, mtime) and its sidecars for a remote worker; a Result
    instead when there is nothing to ship (vanished, unreadable, empty)."""
    from clipsearch.photos.metadata import read_sidecars

    result = result_for(file)
    try:
        with open(result.path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        result.vanished = True
        return result
    except OSError as exc:
        result.error = f"cannot read ({exc.strerror})"
        return result
    if not data:
        result.size, result.mtime_ns, result.error = 0, st.st_mtime_ns, "empty file (0 bytes)"
        return result
    return Shipment(result.path, st.st_mtime_ns, data, read_sidecars(result.path, result.companion), result.companion)


def _read_and_decode(f, result: Result, spec: dict, use_draft: bool) -> np.ndarray | None:
    """Fingerprint and preprocess one open file, recording what was actually read (a file
    rewritten since the walk gets its new size and mtime). Sets `result.error` on failure."""
    st = os.fstat(f.fileno())
    if st.st_size <= WHOLE_READ_LIMIT:
        # One read serves both the fingerprint and the decoder: the file is read exactly once.
        data = f.read()
        result.size, result.fingerprint, source = len(data), fingerprint(data), io.BytesIO(data)
    else:
        # A huge file (a big scan, a video misnamed .jpg) is not pulled into memory whole: the
        # decoder reads it from disk, and most non-images are refused from their header.
        result.size, result.fingerprint, source = st.st_size, fingerprint_open(f, st.st_size), f
        f.seek(0)
    result.mtime_ns = st.st_mtime_ns
    return _decode(source, result, spec, use_draft)


def _decode(source, result: Result, spec: dict, use_draft: bool, sidecars=None) -> np.ndarray | None:
    """Preprocess the photo in `source` (and read its metadata on the way; `sidecars`: the
    sidecar files' bytes, when they were read elsewhere). Sets `result.error` on failure."""
    from PIL import Image

    from clipsearch.photos.preprocess import ImageDecodeError, decode_image, resize_side, to_pixels

    if not result.size:
        result.error = "empty file (0 bytes)"
        return None
    try:
        decoded = decode_image(source, resize_side(spec), use_draft, read_headers=_headers_reader(result, sidecars),
                               name=result.path)
        result.print, result.damage = photo_print(decoded), decoded.damage
        return to_pixels(decoded.image, spec, decoded.full_size, decoded.box)
    except ImageDecodeError as exc:
        result.error = str(exc)
    except (MemoryError, Image.DecompressionBombError, ValueError, OSError) as exc:
        result.error = f"cannot decode ({type(exc).__name__}: {exc})"
    return None


def photo_print(decoded) -> bytes | None:
    """The perceptual print of the decoded photo (the region that holds it, when draft decoding
    rounded the picture up); None when it cannot be made, which never fails the photo."""
    from clipsearch.photos.prints import print_of

    image = decoded.image
    box = tuple(round(value) for value in decoded.box)
    try:
        if box != (0, 0, *image.size) and box[2] > box[0] and box[3] > box[1]:
            image = image.crop(box)
        return print_of(image)
    except (ValueError, MemoryError, OSError):
        return None


def _headers_reader(result: Result, sidecars=None):
    def read(img, upright_size):
        from clipsearch.photos.metadata import photo_record

        result.meta, result.sidecars = photo_record(img, upright_size, result.path, sidecars, result.companion)

    return read


def _read_headers(f, result: Result) -> None:
    """A cached photo's metadata from its headers: Pillow opens the file (photo formats only)
    without decoding its pixels. Whatever fails leaves an empty record, never an error."""
    import warnings

    from PIL import Image

    from clipsearch.photos.formats import photo_formats, prepare_decoders
    from clipsearch.photos.metadata import photo_record

    prepare_decoders()
    st = os.fstat(f.fileno())
    result.size, result.mtime_ns = st.st_size, st.st_mtime_ns
    from clipsearch.photos.raw import is_raw, read_raw_headers

    if is_raw(result.path):
        headers, upright = read_raw_headers(f.read(HEADERS_READ_LIMIT))
        result.meta, result.sidecars = photo_record(headers, upright, result.path, None, result.companion)
        return
    source = io.BytesIO(f.read()) if st.st_size <= WHOLE_READ_LIMIT else f
    upright, img = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(source, formats=photo_formats())
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            upright = (img.height, img.width) if turned else img.size
        except Exception:  # noqa: BLE001 - unreadable headers: an empty record, the vector stays
            img = None
        if img is None:
            result.meta, result.sidecars = photo_record(_NoHeaders(), None, result.path, None, result.companion)
        else:
            result.meta, result.sidecars = photo_record(img, upright, result.path, None, result.companion)


class _NoHeaders:
    """Stands for an image whose headers could not be read: no EXIF, no XMP."""

    info: dict = {}

    def getexif(self):
        return {}
