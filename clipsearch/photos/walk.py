"""Walking a photo library: which files are images, which folders to skip, how symlinks are
treated, and which RAW files are one photo with a JPEG beside them. Streams one folder at a
time, so memory does not grow with the library.

A RAW+JPEG pair (the same name in the same folder, `IMG_0001.CR2` and `IMG_0001.JPG`, as a
camera shooting both writes them) is one photo: the walk yields the cheaper file to decode (a
JPEG, else a HEIC, else another non-RAW photo) with the RAW as its `companion`, and not the RAW
on its own. Pairing needs no RAW decoder: a pair is indexed from its JPEG without rawpy."""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, Iterator, NamedTuple

from .formats import indexed_extensions, missing_decoder
from .raw import RAW

# Matched against each folder's and file's own name. Hidden names (leading dot) are always
# skipped as well, which covers .thumbnails, .@__thumb and .git.
DEFAULT_EXCLUDES = ("@eaDir", "#recycle", "#snapshot", ".@__thumb", ".thumbnails", "lost+found",
                    "System Volume Information", "$RECYCLE.BIN", "node_modules")


class FileEntry(NamedTuple):
    # A tuple, not a frozen dataclass: one is made per file of every walk, and an unchanged
    # re-index of 1.28M files is mostly the walk (a frozen dataclass costs 3x to build).
    path: bytes
    size: int
    mtime_ns: int
    companion: bytes | None = None  # the RAW of a RAW+JPEG pair this file stands for


@dataclass(frozen=True)
class Folder:
    path: bytes
    files: list[FileEntry]
    # Nothing at all inside, not even hidden or excluded names: what an unmounted share's
    # mount point looks like (a folder emptied by a photo app keeps its @eaDir or #recycle).
    empty: bool = False
    # XMP sidecars here: lower-cased name -> (size, mtime_ns), to notice one that changed alone.
    sidecars: dict = None

    def sidecar_stamp(self, photo: bytes, companion: bytes | None = None) -> str:
        """The same stamp `metadata.sidecar_stamp` makes for the sidecars of `photo` (and of the
        RAW it is paired with) here."""
        if not self.sidecars:
            return ""
        names = set()
        for path in (photo, companion) if companion else (photo,):
            name = os.path.basename(path).lower()
            names |= {name + b".xmp", os.path.splitext(name)[0] + b".xmp"}
        return ";".join(sorted(f"{n.decode('utf-8', 'replace')}:{self.sidecars[n][0]}:{self.sidecars[n][1]}"
                               for n in names if n in self.sidecars))


class Walker:
    """Yields one `Folder` per directory, files sorted by name.

    Symlinks are not followed by default (no loops, no duplicates of a folder reached twice);
    with `follow_links` they are, and each real directory is still visited once."""

    def __init__(self, excludes: tuple[str, ...] = DEFAULT_EXCLUDES, follow_links: bool = False,
                 warn: Callable[[bytes, str], None] | None = None):
        patterns = [p.encode("utf-8", "surrogateescape") for p in excludes]
        # Most patterns are plain names: a set look-up. The others become one regular
        # expression, as fnmatch would make each (an fnmatch call per name and pattern was a
        # third of an unchanged re-index).
        self.excluded_names = frozenset(p for p in patterns if not any(c in p for c in b"*?["))
        wildcards = [fnmatch.translate(p.decode("latin-1")) for p in patterns if p not in self.excluded_names]
        self.excluded_pattern = re.compile("|".join(wildcards).encode("latin-1")) if wildcards else None
        self.follow_links = follow_links
        self.warn = warn or (lambda path, message: None)
        # Folders the last walk could not read: what the cache holds below them is kept, not
        # taken for deleted (a NAS share hiccup must not empty the index).
        self.unreadable: list[bytes] = []
        # Photo files left out because this installation lacks their decoder: what to install -> count.
        self.missing_decoders: dict[str, int] = {}
        # Other files, not images for clipsearch (.mov, .xmp, .tga, ...): extension -> count.
        self.other_files: dict[str, int] = {}
        self.extensions = indexed_extensions()

    def pair_raw(self, files: list[FileEntry]) -> list[FileEntry]:
        """RAW files sharing a name with a non-RAW photo become that photo's companion; RAW
        files left on their own without a decoder are counted as skipped (`missing_decoders`)."""
        stems: dict[bytes, list[FileEntry]] = {}
        for entry in files:
            stems.setdefault(os.path.splitext(os.path.basename(entry.path))[0].lower(), []).append(entry)
        paired: dict[bytes, FileEntry] = {}
        dropped: set[bytes] = set()
        for group in stems.values():
            raws = [entry for entry in group if _extension(entry.path) in RAW]
            others = sorted((entry for entry in group if _extension(entry.path) not in RAW),
                            key=lambda entry: (_PAIR_PREFERENCE.get(_extension(entry.path), len(_PAIR_PREFERENCE)),
                                               entry.path))
            if raws and others:
                paired[others[0].path] = others[0]._replace(companion=raws[0].path)
                dropped.add(raws[0].path)
        kept = []
        for entry in files:
            if entry.path in dropped:
                continue
            if _extension(entry.path) not in self.extensions:  # a RAW on its own, no rawpy here
                hint = missing_decoder(_extension(entry.path))
                self.missing_decoders[hint] = self.missing_decoders.get(hint, 0) + 1
                continue
            kept.append(paired.get(entry.path, entry))
        return kept

    def excluded(self, name: bytes) -> bool:
        return (name[:1] == b"." or name in self.excluded_names
                or (self.excluded_pattern is not None and self.excluded_pattern.match(name) is not None))

    def walk(self, root: bytes) -> Iterator[Folder]:
        self.unreadable = []
        self.missing_decoders = {}
        self.other_files = {}
        seen_dirs: set[tuple[int, int]] = set()
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    continue
                seen_dirs.add(key)
                with os.scandir(folder) as it:
                    entries = sorted(it, key=_NAME)
            except OSError as exc:
                self.warn(folder, f"cannot read folder ({exc.strerror}); what is cached below it is kept")
                self.unreadable.append(folder)
                continue
            files, subdirs, sidecars, raws = [], [], {}, 0
            for entry in entries:
                if self.excluded(entry.name):
                    continue
                is_link = False
                try:
                    is_link = entry.is_symlink()
                    if is_link and not self.follow_links:
                        continue
                    if entry.is_dir(follow_symlinks=self.follow_links):
                        subdirs.append(entry.path)
                        continue
                    extension = _extension(entry.name)
                    if extension == b".xmp" and entry.is_file(follow_symlinks=self.follow_links):
                        st = entry.stat(follow_symlinks=self.follow_links)
                        sidecars[entry.name.lower()] = (st.st_size, st.st_mtime_ns)
                        continue
                    if extension not in self.extensions and extension not in RAW:
                        hint = missing_decoder(extension)
                        if hint:
                            self.missing_decoders[hint] = self.missing_decoders.get(hint, 0) + 1
                        else:
                            kind = os.fsdecode(extension) or "(no extension)"
                            self.other_files[kind] = self.other_files.get(kind, 0) + 1
                        continue
                    if not entry.is_file(follow_symlinks=self.follow_links):
                        continue
                    st = entry.stat(follow_symlinks=self.follow_links)
                except OSError as exc:
                    if not is_link:  # broken links (dangling, loops) are skipped like dangling ones: silently
                        self.warn(entry.path, f"cannot stat ({exc.strerror}); skipped")
                    continue
                files.append(FileEntry(entry.path, st.st_size, st.st_mtime_ns))
                raws += extension in RAW
            if raws:  # most folders have none: nothing to pair or count
                files = self.pair_raw(files)
            stack.extend(reversed(subdirs))
            yield Folder(folder, files, empty=not entries, sidecars=sidecars)


# Which file of a RAW+JPEG pair is decoded: the cheapest (draft-decoded JPEG first).
_PAIR_PREFERENCE = {b".jpg": 0, b".jpeg": 0, b".heic": 1, b".heif": 1, b".hif": 1}


_NAME = attrgetter("name")


def _extension(path: bytes) -> bytes:
    """`os.path.splitext(path)[1].lower()` for the paths a walk yields (a name with a leading
    dot has none), at a third of its cost: it runs for every file of every walk."""
    start, dot = path.rfind(b"/") + 1, path.rfind(b".")
    if dot <= start or path[start:start + 1] == b".":
        return os.path.splitext(path)[1].lower()  # no dot in the name, or a hidden name: the exact rule
    return path[dot:].lower()


def normalise_root(path: str) -> bytes:
    """Absolute, symlink-free bytes path: the same photo always gets the same key."""
    return os.fsencode(os.path.realpath(os.path.abspath(path)))


def is_under(path: bytes, folders: list[bytes]) -> bool:
    return any(path == f or path.startswith(f.rstrip(b"/") + b"/") for f in folders)


def parent_of(path: bytes) -> bytes:
    return os.path.dirname(path)
