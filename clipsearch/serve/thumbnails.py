"""Small previews of cached photos for the web page (`serve`): made with the JPEG draft path
at the size asked for, upright (EXIF orientation applied), kept on disk under the data dir in
a bounded folder (least recently used evicted first) and keyed by the photo's content
fingerprint, size and mtime, so a changed photo gets a new one. Where the NAS already made
thumbnails (Synology `@eaDir/<name>/SYNOPHOTO_THUMB_M.jpg`, QNAP `.@__thumb/default<name>`)
and they are newer than the photo, those are served instead: no decoding at all.

Only files the cache holds reach this module (the server looks rows up by id), and only when
they still have the size and mtime they were indexed with, so a file swapped for a symlink to
something else since indexing is never opened by name alone.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
import threading
from pathlib import Path

THUMB_SIDE = 320  # grid tiles: 2-3 columns on a phone at device pixel ratio 2-3
PREVIEW_SIDE = 1600  # the photo view
DEFAULT_CACHE_MB = 512


class PhotoChanged(Exception):
    """The file is not the one the cache holds (changed, gone, or not a regular file)."""


def open_indexed(path: bytes, size: int, mtime_ns: int):
    """The photo at `path` opened for reading, if it is still the regular file that was
    indexed: the final name is not followed if it became a symlink, and size and mtime must
    match the cached row."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise PhotoChanged("gone or unreadable") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime_ns != mtime_ns:
        os.close(fd)
        raise PhotoChanged("changed since it was indexed")
    return os.fdopen(fd, "rb")


# What a browser shows itself; a RAW is a download; other formats (HEIC, TIFF) get a large preview.
PHOTO_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".avif": "image/avif"}


def original_file(path: bytes, size: int | None, mtime_ns: int | None) -> tuple[bytes, str, str | None] | None:
    """(bytes, content type, download name or None) of the photo as it is on disk, or None
    when a browser cannot show its format (the caller sends a preview). `size` None: the RAW
    of a pair, whose size the cache does not keep (still a regular file, never a link)."""
    from clipsearch.photos.raw import is_raw

    extension = os.path.splitext(path)[1].decode("ascii", "replace").lower()
    raw = is_raw(path)
    if not raw and extension not in PHOTO_TYPES:
        return None
    if size is None:
        try:
            st = os.lstat(path)
        except OSError:
            raise PhotoChanged("has its RAW file gone") from None
        size, mtime_ns = st.st_size, st.st_mtime_ns
    with open_indexed(path, size, mtime_ns) as f:
        data = f.read()
    if raw:
        return data, "application/octet-stream", os.path.basename(path).decode("utf-8", "replace")
    return data, PHOTO_TYPES[extension], None


def nas_thumbnail(path: bytes, mtime_ns: int) -> bytes | None:
    """The NAS's own medium thumbnail of the photo, when there is one newer than the photo."""
    folder, name = os.path.split(path)
    for candidate in (os.path.join(folder, b"@eaDir", name, b"SYNOPHOTO_THUMB_M.jpg"),
                      os.path.join(folder, b".@__thumb", b"default" + name)):
        try:
            with open(candidate, "rb") as f:
                st = os.fstat(f.fileno())
                if stat.S_ISREG(st.st_mode) and st.st_mtime_ns >= mtime_ns and st.st_size <= 4 << 20:
                    return f.read()
        except OSError:
            continue
    return None


class ThumbnailCache:
    """JPEG previews on disk under `folder`, at most `max_bytes` in all."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_CACHE_MB << 20, use_nas_thumbnails: bool = True):
        self.folder, self.max_bytes, self.use_nas = Path(folder), max_bytes, use_nas_thumbnails
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.total = sum(entry.stat().st_size for entry in self.folder.glob("*/*.jpg"))
        self.made = self.from_nas = self.hits = 0

    def get(self, row: tuple, side: int) -> bytes:
        """JPEG bytes of the photo `row` (path, size, mtime_ns, fingerprint) fitting `side`."""
        path, size, mtime_ns, fingerprint = row
        if side <= THUMB_SIDE and self.use_nas:
            data = nas_thumbnail(path, mtime_ns)
            if data is not None:
                self.from_nas += 1
                return data
        key = hashlib.sha256(b"%d:%d:%d:" % (side, size, mtime_ns) + (fingerprint or path)).hexdigest()
        target = self.folder / key[:2] / f"{key}.jpg"
        try:
            data = target.read_bytes()
            os.utime(target)  # recently used: evicted last
            self.hits += 1
            return data
        except OSError:
            pass
        data = render(path, size, mtime_ns, side)
        self.store(target, data)
        return data

    def store(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
        with self.lock:
            self.made += 1
            self.total += len(data)
            if self.total > self.max_bytes:
                self.evict()

    def evict(self) -> None:
        """Remove least recently used previews until the folder is at 90% of its bound."""
        entries = []
        for entry in self.folder.glob("*/*.jpg"):
            try:
                st = entry.stat()
            except OSError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, entry))
        self.total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if self.total <= 0.9 * self.max_bytes:
                break
            try:
                entry.unlink()
                self.total -= size
            except OSError:
                continue


def render(path: bytes, size: int, mtime_ns: int, side: int) -> bytes:
    """A JPEG preview of the indexed photo at `path`, its longer side at most `side`."""
    from PIL import Image

    from clipsearch.photos.preprocess import decode_image

    with open_indexed(path, size, mtime_ns) as f:
        # decode_image's draft makes the picture at least side*2 on its shorter side; the
        # pixel bound and decoder hardening are the indexer's.
        decoded = decode_image(f, side, use_draft=True, name=path)
    image = decoded.image
    image.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=82, optimize=False)
    return out.getvalue()
