"""The packed vector file (`<db>.vectors`): a contiguous copy of the cached int8 rows (with
per-row scales) beside the database, laid out for the integer GEMM that ranks them
(`search/rank.py`), with the filter columns of the same rows (`columns.py`).

The packed file is derived state. Its header records the database change counter (`seq`)
and model it was built from; rows changed since then are read from the database and
overlaid, and a missing, foreign or badly stale file is rebuilt. It is never trusted blindly.
Whether it can be used or must be rewritten is decided here (`usable`, `up_to_date`).
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .columns import PackedColumns, read_columns, write_columns

# 03: filter columns after the matrix; 04: rows as uint8 (int8 + 128), row-major; 05: the matrix
# before the ids and scales, and a "read" column (metadata read or not). An older file is
# rebuilt on first use.
MAGIC = b"CLSVEC05"
HEADER_BYTES = 4096
# The matrix is stored row by row, each value as uint8 (int8 + 128, `ROW_ZERO`), and read in
# blocks of BLOCK_ROWS rows: block x query is then onnxruntime's integer GEMM with the block
# as its left operand, which it streams, and the query as the right one, the only operand it
# packs (`search/rank.IntegerScorer`). Measured per 65,536-row block on 2 cores: 2.7 ms,
# against 13 ms when each block was stored transposed as the right operand and packed on every
# query (bench/shards.py); a row is also one contiguous read for the exact re-scoring.
BLOCK_ROWS = 65536
ROW_ZERO = 128


def signed_rows(rows: np.ndarray) -> np.ndarray:
    """Stored uint8 rows back to the int8 vectors they hold."""
    return (rows ^ np.uint8(ROW_ZERO)).view(np.int8)


def quantize_rows(unit_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows -> (int8 rows, float32 scales) with row ~= int8 * scale."""
    peak = np.abs(unit_vectors).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(unit_vectors / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def packed_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".vectors")


@dataclass
class Packed:
    """An open packed file. Everything is read through `file`, opened once: an index run
    may replace the path at any moment (atomically), and this keeps reading the version
    whose header it checked."""

    path: Path
    seq: int
    model_id: str
    count: int
    dim: int
    ids: np.ndarray
    file: object
    directory_at: int = 0
    directory_len: int = 0
    _columns: object = None

    def read_into(self, array: np.ndarray, offset: int) -> None:
        self.file.seek(offset)
        if self.file.readinto(memoryview(array).cast("B")) != array.nbytes:
            raise OSError(f"{self.path}: shorter than its header says")

    def map(self, offset: int, count: int, dtype: str) -> np.ndarray:
        """`count` values at `offset`, through a read-only mapping of the open file (no copy:
        a filter reads a column's pages, which the page cache usually already holds)."""
        size = count * np.dtype(dtype).itemsize
        if not size:
            return np.zeros(0, dtype=dtype)
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self.file.fileno(), offset - base + size, access=mmap.ACCESS_READ, offset=base)
        return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset - base)

    @property
    def offsets(self) -> tuple[int, int]:
        """(where the scales start, where the matrix starts): header, matrix, ids, scales."""
        return HEADER_BYTES + (self.dim + 8) * self.count, HEADER_BYTES

    def columns(self):
        """The filter columns of these rows (`columns.PackedColumns`), read as filters need them."""
        if self._columns is None:
            self.file.seek(self.directory_at)
            directory = json.loads(self.file.read(self.directory_len))
            self._columns = PackedColumns(self, directory)
        return self._columns


def write_packed(store, dim: int) -> Packed:
    """Rebuild the packed file from the database in one read snapshot, atomically. The matrix
    comes first, so the rows stream straight into the file as they are read (format 04 put the
    ids first and went through a temporary copy of the matrix: 3.0 s for a 1.25M-row shard)."""
    path = packed_path(store.path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with store.snapshot(), os.fdopen(fd, "w+b") as f:
            seq, model_id = store.current_seq(), store.meta("model_id", "")  # agree with the rows read below
            ids, scales, count = [], [], 0
            f.write(b"\0" * HEADER_BYTES)
            for batch in store.live_vectors(BLOCK_ROWS):
                ids.extend(r[0] for r in batch)
                scales.extend(r[1] for r in batch)
                rows = np.frombuffer(b"".join(r[2] for r in batch), dtype=np.uint8)
                f.write((rows ^ np.uint8(ROW_ZERO)).tobytes())
                count += len(batch)
            ids = np.asarray(ids, dtype="<i8")
            f.write(ids.tobytes())
            f.write(np.asarray(scales, dtype="<f4").tobytes())
            directory = json.dumps(write_columns(f, read_columns(store, ids)), ensure_ascii=False).encode()
            directory_at = f.tell()
            f.write(directory)
            header = json.dumps({"seq": seq, "model_id": model_id, "count": count, "dim": dim,
                                 "block_rows": BLOCK_ROWS, "directory_at": directory_at,
                                 "directory_len": len(directory)}).encode()
            f.seek(0)
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return read_header(path)


def read_header(path: Path) -> Packed | None:
    """The packed file at `path` if it is whole and well-formed, else None."""
    try:
        f = open(path, "rb", buffering=0)
    except OSError:
        return None
    try:
        head = f.read(HEADER_BYTES)
        if len(head) < 12 or head[:8] != MAGIC:
            raise ValueError("not a packed vector file")
        (length,) = struct.unpack("<I", head[8:12])
        info = json.loads(head[12 : 12 + length])
        count, dim = int(info["count"]), int(info["dim"])
        if info.get("block_rows") != BLOCK_ROWS:
            raise ValueError("another block size")
        directory_at, directory_len = int(info["directory_at"]), int(info["directory_len"])
        if (directory_at < HEADER_BYTES + count * (8 + 4 + dim)
                or os.fstat(f.fileno()).st_size != directory_at + directory_len):
            raise ValueError("truncated")
        packed = Packed(path, int(info["seq"]), info["model_id"], count, dim, None, f, directory_at, directory_len)
        packed.ids = packed.map(HEADER_BYTES + dim * count, count, "<i8")
        return packed
    except (OSError, ValueError, KeyError, TypeError):
        f.close()
        return None


# -- freshness: the one place that decides whether the packed file can be used ---------------

def usable(packed: Packed | None, store, dim: int | None = None) -> bool:
    """Whole and made from this database's model (and `dim`): rows changed since can be
    overlaid from the database."""
    return (packed is not None and packed.model_id == store.meta("model_id", "")
            and (dim is None or packed.dim == dim))


def up_to_date(packed: Packed | None, store, dim: int | None = None) -> bool:
    """Usable, and no row changed since it was written."""
    return usable(packed, store, dim) and packed.seq == store.current_seq()


# An index run leaves up to this many changed rows (or OVERLAY_SHARE of the file's) to be
# overlaid from the database rather than rewrite the packed file: a nightly run adding 1,000
# photos to a 1.25M-photo shard wrote its whole 650 MB file (20 s) before; reading 2,000 rows
# for the overlay costs a query a few milliseconds (bench/shards.py). Below the 5% at which a
# query rebuilds it (`current_packed`), so a query never has to.
OVERLAY_ROWS = 2000
OVERLAY_SHARE = 0.01


def refresh_packed(store, dim: int, forgotten_seq: int = 0) -> bool:
    """After an index run: rewrite the packed file unless it is up to date or the rows
    changed since are few enough to overlay. `forgotten_seq`: rows deleted for good were last
    changed then; a file older than that still holds them, and the overlay cannot say so
    any more: rewritten. True when it was rewritten."""
    packed = read_header(packed_path(store.path))
    if up_to_date(packed, store, dim):
        return False
    if usable(packed, store, dim) and packed.seq >= forgotten_seq and len(store.changed_ids_since(packed.seq)) <= max(OVERLAY_ROWS,
                                                                                      OVERLAY_SHARE * packed.count):
        return False
    write_packed(store, dim)
    return True


def packed_status(store) -> str:
    """What `status` says about the packed file."""
    packed = read_header(packed_path(store.path))
    if up_to_date(packed, store):
        return "up to date"
    if usable(packed, store):
        return f"up to date, with {len(store.changed_ids_since(packed.seq))} changed rows read from the database"
    return "stale (refreshed on next query/index)" if packed is not None else "missing (written on next query/index)"


def current_packed(store, dim: int, rebuild_fraction: float = 0.05) -> tuple[Packed | None, list]:
    """The packed file plus the rows changed since it was written (id, deleted, vector, scale).
    Rebuilds it when missing, foreign or when the overlay would be large, if the folder is writable."""
    packed = read_header(packed_path(store.path))
    if not usable(packed, store, dim):
        packed = _try_rebuild(store, dim)
    since = packed.seq if packed is not None else -1
    delta = store.changed_since(since)
    if packed is not None and len(delta) > max(2000, rebuild_fraction * packed.count):
        rebuilt = _try_rebuild(store, dim)
        if rebuilt is not None:
            packed = rebuilt
            delta = store.changed_since(packed.seq)
    return packed, delta


def _try_rebuild(store, dim: int) -> Packed | None:
    if store.immutable or not os.access(store.path.parent, os.W_OK):
        return None
    try:
        return write_packed(store, dim)
    except OSError:  # a read-only volume that access() did not tell of: rank from the database
        return None


def iter_blocks(packed: Packed):
    """(first row, uint8 [rows, dim]: `signed_rows` gives the vectors) per block of
    BLOCK_ROWS rows, each through its own read-only mapping: no copy (measured 85 ms of
    copying at 1.28M rows with read()), and a block's mapping goes away with the caller's last
    reference to it, so only the blocks being ranked (32 MiB each at 512 dims) are resident
    whatever the library size."""
    _, matrix_at = packed.offsets
    for start in range(0, packed.count, BLOCK_ROWS):
        rows = min(BLOCK_ROWS, packed.count - start)
        offset = matrix_at + start * packed.dim
        yield start, packed.map(offset, rows * packed.dim, "u1").reshape(rows, packed.dim)


class MappedMatrices:
    """The whole matrix and scales of each packed file, mapped once and kept mapped by a
    long-running process (`serve`'s warm engine), so that a query touches pages whose page
    tables already exist. Mapping each block per query, as a one-off query does, set up those
    tables again every time: at 10M photos in 8 shards 0.39-0.40 s a scan against
    0.26-0.27 s kept mapped (bench/shards.py). The mapped pages are the page cache the
    scans read anyway, shared and given back under memory pressure; they show in the
    process's RSS as file pages (RssFile), not as memory of its own (RssAnon).

    A file is known by its inode: one replaced by an index run (`write_packed` renames a new
    one over it) is mapped afresh, and the old mapping is dropped (queries still reading it
    keep their own reference until they finish)."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.mapped: dict[Path, tuple[tuple[int, int], np.ndarray, np.ndarray]] = {}

    def get(self, packed: Packed) -> tuple[np.ndarray, np.ndarray] | None:
        """(uint8 rows [count, dim], float32 scales [count]) of `packed`, or None when it
        cannot be mapped whole (the caller then maps block by block)."""
        st = os.fstat(packed.file.fileno())
        identity = (st.st_dev, st.st_ino)
        with self.lock:
            found = self.mapped.get(packed.path)
            if found is not None and found[0] == identity:
                return found[1], found[2]
            self._forget_replaced()
            try:
                whole = mmap.mmap(packed.file.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError, OverflowError):
                return None
            scales_at, matrix_at = packed.offsets
            rows = np.frombuffer(whole, dtype=np.uint8, count=packed.count * packed.dim,
                                 offset=matrix_at).reshape(packed.count, packed.dim)
            scales = np.frombuffer(whole, dtype="<f4", count=packed.count, offset=scales_at)
            self.mapped[packed.path] = (identity, rows, scales)
            return rows, scales

    def _forget_replaced(self) -> None:
        for path, (identity, _, _) in list(self.mapped.items()):
            try:
                st = os.stat(path)
                current = (st.st_dev, st.st_ino)
            except OSError:
                current = None
            if current != identity:
                del self.mapped[path]


def read_scales(packed: Packed) -> np.ndarray:
    scales = np.empty(packed.count, dtype="<f4")
    packed.read_into(scales, packed.offsets[0])
    return scales
