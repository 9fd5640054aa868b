"""A library: the database a user names (`--db`; by default `index.db` in the data dir) and
the shards it lists, seen as one cache by `query`, `serve`, `tag`, `duplicates` and `status`.

A shard is an ordinary cache database (with its own packed file) holding the photos of one
folder given to `index`: in the data dir (`<db>.shards/`), or on the disk it describes
(`FOLDER/.clipsearch/index.db`, `index --shard-on-disk`), which then travels with it. The
library database holds its own rows too (shard 0: everything indexed with `--db FILE`, and a
cache from before shards until `index` moves each folder into its own shard).

Row ids are per database; a library hands out `global_id(shard, row)`, the shard's number in
the top bits (`SHARD_BITS`), so ids stay below 2**53 (exact in the page's JavaScript) and a
library of one database keeps its ids unchanged. A shard whose folder is not there (a disk
unplugged, a share down) is left out of answers with one note, never an error, and is read
again as it was once the folder is back. Which shard a folder goes into is decided by
`index/shards.py` (the writer's side).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipsearch.errors import DatabaseError, ModelMismatchError

from .store import Store
from .store_shards import ShardRow

SHARD_BITS = 40  # 10^12 rows a shard; 2^13 shards before ids pass 2^53
ROW_MASK = (1 << SHARD_BITS) - 1
PORTABLE_DIR = ".clipsearch"  # a folder starting with "." is never walked by `index`


def global_id(number: int, row_id: int) -> int:
    return number << SHARD_BITS | row_id


def global_ids(number: int, row_ids: np.ndarray) -> np.ndarray:
    """`global_id` of a whole column of one shard's row ids."""
    return (np.int64(number) << np.int64(SHARD_BITS)) | row_ids.astype(np.int64)


def split_id(gid: int) -> tuple[int, int]:
    return gid >> SHARD_BITS, gid & ROW_MASK


def portable_location(root: bytes) -> Path:
    """Where `--shard-on-disk` keeps the shard of `root`."""
    return Path(os.fsdecode(root)) / PORTABLE_DIR / "index.db"


def shard_present(shard: ShardRow) -> bool:
    return os.path.isdir(shard.root) and os.path.isfile(shard.location)


class Library:
    """The library database (`home`, shard 0) and every present shard it lists, opened
    read-only (or for writing: `tag`). `absent` lists the shards whose folder is not there."""

    def __init__(self, db_path: Path, readonly: bool = True):
        self.home = Store(db_path, readonly=readonly)
        self.path = self.home.path
        self.stores: dict[int, Store] = {0: self.home}
        self.roots: dict[int, bytes] = {}
        self.absent: list[ShardRow] = []
        self.elsewhere: list[ShardRow] = []  # carried shards last indexed at another mount point
        try:
            for shard in self.home.shard_rows():
                if not shard_present(shard):
                    self.absent.append(shard)
                    continue
                store = open_shard(shard, readonly)
                if store.meta("shard_root", shard.root.hex()) != shard.root.hex():
                    store.close()  # its disk was indexed at another mount point since: paths of there
                    self.elsewhere.append(shard)
                    continue
                self.stores[shard.number] = store
                self.roots[shard.number] = shard.root
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for store in self.stores.values():
            store.close()

    @property
    def sharded(self) -> bool:
        return len(self.stores) > 1 or bool(self.absent or self.elsewhere)

    def each(self, within: bytes | None = None) -> list[tuple[int, Store]]:
        """(number, store) of the present databases, those that can hold photos under
        `within` when given."""
        return [(number, store) for number, store in self.stores.items()
                if within is None or number == 0 or _related(self.roots[number], within)]

    # -- what the library is ---------------------------------------------------------------

    def meta(self, key: str, default: str | None = None) -> str | None:
        for store in self.stores.values():
            value = store.meta(key)
            if value is not None:
                return value
        return default

    def check_model(self, model_id: str, model_name: str) -> None:
        """Every present shard was indexed with this model (or is still empty)."""
        for number, store in self.stores.items():
            try:
                store.check_model(model_id, model_name, claim=False)
            except ModelMismatchError as exc:
                if not number:
                    raise
                raise ModelMismatchError(
                    f"the shard of {os.fsdecode(self.roots[number])} ({store.path}) was made with model "
                    f"{store.meta('model_name')}, not {model_name}: query it with --model set to that one, or "
                    f"re-index it (move {store.path} aside, then `clipsearch index {os.fsdecode(self.roots[number])}`)"
                ) from exc

    def change_counters(self) -> tuple:
        """What changes whenever any present shard changes (or one comes or goes)."""
        return tuple((number, store.current_seq()) for number, store in self.stores.items())

    def counts(self) -> dict:
        return summed(store.counts() for store in self.stores.values())

    def rows_bound(self) -> int:
        """At least as many as the indexed photos, without reading every row (`counts` does)."""
        return sum(store.rows_bound() for store in self.stores.values())

    def meta_coverage(self) -> dict:
        return summed(store.meta_coverage() for store in self.stores.values())

    def absent_notes(self) -> list[str]:
        """One line each for the shards left out (none: [])."""
        notes = []
        if self.absent:
            folders = ", ".join(os.fsdecode(shard.root) for shard in self.absent)
            photos = sum(shard.photos for shard in self.absent)
            notes.append(f"note: {photos} photos of {folders} left out: not there (disk unplugged, share not "
                         "mounted?); they are searched again as they were once it is back")
        for shard in self.elsewhere:
            notes.append(f"note: the photos of {os.fsdecode(shard.root)} left out: its disk was indexed at another "
                         f"mount point since; run `clipsearch index {os.fsdecode(shard.root)}` once to find them here")
        return notes

    # -- rows, by global id ----------------------------------------------------------------

    def _routed(self, gids, read) -> dict:
        by_shard: dict[int, list[int]] = {}
        for gid in gids:
            number, row_id = split_id(int(gid))
            by_shard.setdefault(number, []).append(row_id)
        found = {}
        for number, row_ids in by_shard.items():
            store = self.stores.get(number)
            if store is not None:
                found.update((global_id(number, row_id), value) for row_id, value in read(store, row_ids).items())
        return found

    def paths_of(self, gids) -> dict[int, bytes]:
        return self._routed(gids, Store.paths_of)

    def metadata_of(self, gids) -> dict[int, dict]:
        return self._routed(gids, Store.metadata_of)

    def companions_of(self, gids) -> dict[int, bytes]:
        return self._routed(gids, Store.companions_of)

    def unit_vectors(self, gids) -> dict:
        return self._routed(gids, Store.unit_vectors)

    def duplicate_details(self, gids) -> dict[int, dict]:
        return self._routed(gids, Store.duplicate_details)

    # -- columns of every shard, for `duplicates`: a copy on one disk of a photo on another is
    # found as within one database. The cost is one database's: 10M photos' prints take 640 MB.

    def print_columns(self, under: list[bytes] | None = None) -> dict:
        parts = [(number, store.print_columns(under)) for number, store in self.each()]  # the home one first
        if len(parts) == 1:
            return parts[0][1]
        merged = {name: np.concatenate([columns[name] for _, columns in parts])
                  for name in ("size", "head", "has_print", "print")}
        merged["id"] = np.concatenate([global_ids(number, columns["id"]) for number, columns in parts])
        return merged

    def burst_columns(self) -> dict:
        parts = [(number, store.burst_columns()) for number, store in self.each()]
        if len(parts) == 1:
            return parts[0][1]
        cameras: dict[tuple, int] = {}  # one number per (make, model) across shards
        ids, times, numbers = [], [], []
        for number, columns in parts:
            renumbered = np.array([cameras.setdefault(name, len(cameras)) for name in columns["cameras"]] or [0],
                                  dtype=np.int64)
            ids.append(global_ids(number, columns["id"]))
            times.append(columns["time"])
            numbers.append(renumbered[columns["camera"]])
        order = np.argsort(np.concatenate(times), kind="stable")
        return {"id": np.concatenate(ids)[order], "time": np.concatenate(times)[order],
                "camera": np.concatenate(numbers)[order], "cameras": list(cameras)}

    def photo_row(self, gid: int) -> tuple | None:
        number, row_id = split_id(gid)
        store = self.stores.get(number)
        return store.photo_row(row_id) if store is not None else None

    def store_of(self, path: bytes) -> tuple[int, Store]:
        """The database that holds (or would hold) the photo at `path`: the shard whose
        folder contains it, else the library database."""
        for number, root in self.roots.items():
            if path == root or path.startswith(root.rstrip(b"/") + b"/"):
                return number, self.stores[number]
        return 0, self.home

    def image_ids(self, paths: list[bytes]) -> dict[bytes, int]:
        """Path -> global id of the live rows among `paths`."""
        by_shard: dict[int, list[bytes]] = {}
        for path in paths:
            by_shard.setdefault(self.store_of(path)[0], []).append(path)
        found = {}
        for number, chunk in by_shard.items():
            found.update((path, global_id(number, row_id))
                         for path, row_id in self.stores[number].image_ids(chunk).items())
        return found


def summed(counts) -> dict:
    """Counts of several shards (dicts of numbers) added up key by key."""
    total: dict = {}
    for one in counts:
        for key, value in one.items():
            total[key] = total.get(key, 0) + value
    return total


def open_shard(shard: ShardRow, readonly: bool) -> Store:
    """A shard's database; one that cannot be read is named with what to do."""
    try:
        return Store(Path(shard.location), readonly=readonly)
    except DatabaseError as exc:
        error = DatabaseError(f"the shard of {os.fsdecode(shard.root)}: {exc}")
        error.exit_code = exc.exit_code
        raise error from None


def _related(root: bytes, within: bytes) -> bool:
    """A folder and a shard root that can share photos (one lies in the other)."""
    return any(a == b or a.startswith(b.rstrip(b"/") + b"/") for a, b in ((root, within), (within, root)))
