"""Which database each folder given to `index` is written into (`cache/library.py` says what
a library and its shards are), and the three ways a shard comes to be: made for a new folder,
moved out of the library database (a cache from before shards: its rows are copied, never
embedded again), or adopted from a disk that carries one (`FOLDER/.clipsearch/index.db`,
another machine's, or this one's at another mount point: its paths are rewritten once).

A folder goes into the shard whose folder holds it; else into the shard found on its disk;
else into a new shard, on the disk with `--shard-on-disk`, in the data dir for the default
library (`index.db` in the data dir: one shard per folder); else, for a library named with
`--db FILE`, into that one file, as before shards.

A photo moved from one shard's folder to another's takes its row along (`OtherShards`): its
vector, metadata and what `tag` wrote, as a move within one database does; it is not embedded
again.

Crash safety: a shard is built under a `.part` name and renamed into place; it is listed
(and its rows leave the library database) in one transaction of the library database, so a
kill at any moment leaves either the old state or the new one. A `.part`, or a data-dir
shard file that no entry lists, is what such a kill left: it is made again.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from clipsearch.cache.library import portable_location
from clipsearch.cache.packed import packed_path
from clipsearch.cache.store import Store
from clipsearch.errors import ModelMismatchError, UsageError
from clipsearch.photos.walk import is_under


@dataclass
class Target:
    """Where some folders of a run are written: shard `number` (0: the library database)."""

    number: int
    location: Path
    roots: list[bytes] = field(default_factory=list)


def place_roots(home: Store, roots: list[bytes], manifest, on_disk: bool, per_folder: bool) -> list[Target]:
    """The databases this run writes, each with its folders; shards are made, moved out of
    the library database or adopted as needed (before any photo is indexed)."""
    targets: dict[int, Target] = {}
    for root in roots:
        shard = next((s for s in home.shard_rows() if is_under(root, [s.root])), None)
        if shard is not None and on_disk and not shard.portable and shard.root == root:
            shard = None  # `--shard-on-disk` on a folder with a shard in the data dir: moved onto the disk
        elif shard is not None and shard.portable:
            # Its disk may have been indexed at another mount point since (another machine).
            location = Path(shard.location)
            shard = (adopt(home, (shard.root, location), manifest) if location.is_file()
                     else make_shard(home, shard.root, location, True))
        if shard is None:
            found = carried_shard(root)
            if found is not None:
                shard = adopt(home, found, manifest)
        if shard is None and (on_disk or per_folder):
            nested = [s for s in home.shard_rows() if is_under(s.root, [root]) and s.root != root]
            if nested:
                raise UsageError(f"{os.fsdecode(root)}: holds the shards of {os.fsdecode(nested[0].root)}"
                                 f"{' and others' if len(nested) > 1 else ''}; index those folders, or the "
                                 "other folders of it one by one")
            shard = make_shard(home, root, portable_location(root) if on_disk else data_dir_location(home, root),
                               on_disk)
        if shard is None:
            targets.setdefault(0, Target(0, home.path)).roots.append(root)
        else:
            targets.setdefault(shard.number, Target(shard.number, Path(shard.location))).roots.append(root)
    return sorted(targets.values(), key=lambda target: target.number)


def data_dir_location(home: Store, root: bytes) -> Path:
    """`<db>.shards/<last folder name>-<hash of the path>.db` beside the library database."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.fsdecode(os.path.basename(root.rstrip(b"/")) or b"root"))[:40]
    return home.path.with_name(home.path.name + ".shards") / f"{name}-{hashlib.sha1(root).hexdigest()[:10]}.db"


def carried_shard(root: bytes) -> tuple[bytes, Path] | None:
    """(its folder, its database) of a shard kept on the disk at `root` or a folder above."""
    folder = root
    while True:
        location = portable_location(folder)
        if location.is_file():
            return folder, location
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def adopt(home: Store, found: tuple[bytes, Path], manifest):
    """List the shard a disk carries in this library: same model (else refused by name, with
    what to do); its paths rewritten when its folder is mounted elsewhere than where it was
    last indexed; photos of the same folder in the library database dropped (the shard
    holds that folder now)."""
    root, location = found
    store = Store(location)
    try:
        made_with = store.meta("model_id")
        if made_with is not None and made_with != manifest.model_id:
            raise ModelMismatchError(
                f"{location}: a shard made with model {store.meta('model_name')} ({made_with}); this run indexes with "
                f"{manifest.name}: index it into a library of that model (--model with it, --db another file), or "
                f"move {location.parent} aside to index {os.fsdecode(root)} anew with {manifest.name}")
        shard_uuid = store.meta("shard_uuid") or uuid.uuid4().hex
        was = bytes.fromhex(store.meta("shard_root") or root.hex())
        with store.atomic():
            if was != root:
                store.rebase(was, root)
            store.set_meta("shard_root", root.hex())
            store.set_meta("shard_uuid", shard_uuid)
    finally:
        store.close()
    return register(home, root, location, True, shard_uuid)


def make_shard(home: Store, root: bytes, location: Path, portable: bool):
    """A new shard for `root`, holding the library database's rows under it (copied: nothing
    is embedded again), or those of the data-dir shard it had (`--shard-on-disk` later)."""
    location.parent.mkdir(parents=True, exist_ok=True)
    part = location.with_name(location.name + ".part")
    for leftover in (part, location, packed_path(location)):  # what a kill left (nothing lists it)
        _remove(leftover)
    previous = next((s for s in home.shard_rows() if s.root == root), None)
    shard_uuid = uuid.uuid4().hex
    source = Store(Path(previous.location)) if previous is not None else home
    try:
        whole = (previous is not None or home.has_rows_under(root)) and source.holds_only_rows_under(root)
        if whole:
            source.copy_whole_into(str(part))
        store = Store(part)
        try:
            store.db.execute("PRAGMA journal_mode = DELETE")  # one file to rename, no write-ahead log beside it
            with store.atomic():
                store.set_meta("shard_root", root.hex())
                store.set_meta("shard_uuid", shard_uuid)
        finally:
            store.close()
        if not whole and (previous is not None or home.has_rows_under(root)):
            source.copy_rows_under(root, str(part))
    finally:
        if source is not home:
            source.close()
    _sync(part)
    os.replace(part, location)
    _sync(location.parent)
    shard = register(home, root, location, portable, shard_uuid)
    if previous is not None:
        for old in (Path(previous.location), packed_path(Path(previous.location))):
            _remove(old)
    return shard


def register(home: Store, root: bytes, location: Path, portable: bool, shard_uuid: str):
    """List the shard; the library database's own rows under `root` go (the shard has them)."""
    whole = home.has_rows_under(root) and home.holds_only_rows_under(root)
    with home.foreign_keys_off() if whole else contextlib.nullcontext(), home.atomic():
        number = home.add_shard(root, str(location), portable, shard_uuid)
        moved = bool(home.delete_all_rows() if whole else home.delete_rows_under(root))
        if moved:
            home.next_seq()
    if moved:
        # Rows deleted for good never show in the packed file's overlay: rewritten at the end of the run.
        _remove(packed_path(home.path))
        home.reclaim()
    return next(s for s in home.shard_rows() if s.number == number)


def absent_shard_roots(home: Store, absent: list[bytes]) -> list[bytes]:
    """Of the folders given that are not there, those a listed shard holds."""
    listed = [s.root for s in home.shard_rows()]
    return [root for root in absent if is_under(root, listed)]


def _remove(path: Path) -> None:
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OtherShards:
    """The library's other databases, while one shard is indexed: where a file new to it may
    have come from. A row of the same content (size and fingerprint) whose file is gone from
    there is taken: marked deleted there first, in its own transaction under that shard's lock
    (taken without waiting: a shard another run holds is not a source, and its photo is
    embedded instead), then written here by the indexer. A kill between the two leaves the
    photo deleted there and not yet here: the next run finds it the same way; it is never live
    in both databases. Opened on the first file that needs them."""

    def __init__(self, home: Store, target: int):
        self.home, self.target = home, target
        self.library = None

    def take(self, size: int, content) -> dict | None:
        """`Store.export_row` of the photo of this content gone from another shard, now marked
        deleted there, or None. `content()`: the file's fingerprint, read only when some
        shard holds a photo of that size. A shard that cannot be read or written (damaged, on
        a read-only disk, locked) is never a source: the photo is embedded, as it always can be."""
        from clipsearch.errors import DatabaseError, LockedError

        from .indexer import holds
        from .lock import IndexLock

        if self.library is None:
            from clipsearch.cache.library import Library

            try:
                self.library = Library(self.home.path)  # read-only: looking costs no lock
            except DatabaseError:
                self.library = False
        for number, found in self.library.each() if self.library else ():
            if number == self.target or not found.has_size(size):
                continue
            for row_id, old_path, deleted, modified_at in found.same_content(size, content()):
                if not deleted and holds(old_path, size, modified_at):
                    continue  # its file is still there: a copy, embedded on its own
                try:
                    # The library database is this run's own (its lock taken); a shard's is taken here.
                    with IndexLock(found.path) if number else contextlib.nullcontext():
                        rows = found.export_row(row_id)
                        if not deleted:
                            source = Store(found.path) if number else self.home
                            try:
                                with source.atomic():
                                    source.mark_deleted([row_id], source.next_seq())
                            finally:
                                if number:
                                    source.close()
                except (LockedError, DatabaseError):
                    return None
                return rows
        return None

    def close(self) -> None:
        if self.library:
            self.library.close()
