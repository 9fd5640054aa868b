"""Walking a photo library: which files are images, which folders to skip, and how
symlinks are treated. Streams one folder at a time, so memory does not grow with the
library."""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from .formats import indexed_extensions, missing_decoder

# Matched against each folder's and file's own name. Hidden names (leading dot) are always
# skipped as well, which covers .thumbnails, .@__thumb and .git.
DEFAULT_EXCLUDES = ("@eaDir", "#recycle", "#snapshot", ".@__thumb", ".thumbnails", "lost+found",
                    "System Volume Information", "$RECYCLE.BIN", "node_modules")


@dataclass(frozen=True)
class FileEntry:
    path: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Folder:
    path: bytes
    files: list[FileEntry]
    # Nothing at all inside, not even hidden or excluded names: what an unmounted share's
    # mount point looks like (a folder emptied by a photo app keeps its @eaDir or #recycle).
    empty: bool = False
    # XMP sidecars here: lower-cased name -> (size, mtime_ns), to notice one that changed alone.
    sidecars: dict = None

    def sidecar_stamp(self, photo: bytes) -> str:
        """The same stamp `metadata.sidecar_stamp` makes for the sidecars of `photo` here."""
        if not self.sidecars:
            return ""
        name = os.path.basename(photo).lower()
        names = {name + b".xmp", os.path.splitext(name)[0] + b".xmp"}
        return ";".join(sorted(f"{n.decode('utf-8', 'replace')}:{self.sidecars[n][0]}:{self.sidecars[n][1]}"
                               for n in names if n in self.sidecars))


class Walker:
    """Yields one `Folder` per directory, files sorted by name.

    Symlinks are not followed by default (no loops, no duplicates of a folder reached twice);
    with `follow_links` they are, and each real directory is still visited once."""

    def __init__(self, excludes: tuple[str, ...] = DEFAULT_EXCLUDES, follow_links: bool = False,
                 warn: Callable[[bytes, str], None] | None = None):
        self.patterns = [p.encode("utf-8", "surrogateescape") for p in excludes]
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

    def excluded(self, name: bytes) -> bool:
        return name.startswith(b".") or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

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
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.warn(folder, f"cannot read folder ({exc.strerror}); what is cached below it is kept")
                self.unreadable.append(folder)
                continue
            files, subdirs, sidecars = [], [], {}
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
                    extension = os.path.splitext(entry.name)[1].lower()
                    if extension == b".xmp" and entry.is_file(follow_symlinks=self.follow_links):
                        st = entry.stat(follow_symlinks=self.follow_links)
                        sidecars[entry.name.lower()] = (st.st_size, st.st_mtime_ns)
                        continue
                    if extension not in self.extensions:
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
            stack.extend(reversed(subdirs))
            yield Folder(folder, files, empty=not entries, sidecars=sidecars)


def normalise_root(path: str) -> bytes:
    """Absolute, symlink-free bytes path: the same photo always gets the same key."""
    return os.fsencode(os.path.realpath(os.path.abspath(path)))


def is_under(path: bytes, folders: list[bytes]) -> bool:
    return any(path == f or path.startswith(f.rstrip(b"/") + b"/") for f in folders)


def parent_of(path: bytes) -> bytes:
    return os.path.dirname(path)
