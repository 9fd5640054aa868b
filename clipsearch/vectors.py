"""Ranking cached vectors fast: int8 rows with per-row scales, and the packed file
(`<db>.vectors`) that holds a contiguous copy of them beside the database.

The packed file is derived state. Its header records the database change counter (`seq`)
and model it was built from; rows changed since then are read from the database and
overlaid, and a missing, foreign or badly stale file is rebuilt. It is never trusted blindly.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"CLSVEC01"
HEADER_BYTES = 4096
CHUNK_ROWS = 8192  # 4 MiB int8 + 16 MiB float32: stays in cache; measured 3x faster than 32768 rows at 1.28M


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

    def read_into(self, array: np.ndarray, offset: int) -> None:
        self.file.seek(offset)
        if self.file.readinto(memoryview(array).cast("B")) != array.nbytes:
            raise OSError(f"{self.path}: shorter than its header says")

    @property
    def offsets(self) -> tuple[int, int]:
        scales_at = HEADER_BYTES + 8 * self.count
        return scales_at, scales_at + 4 * self.count


def write_packed(store, dim: int) -> Packed:
    """Rebuild the packed file from the database in one read snapshot, atomically."""
    path = packed_path(store.path)
    store.db.execute("BEGIN")  # one snapshot: seq and rows agree
    try:
        seq = int(store.meta("seq", "0"))
        model_id = store.meta("model_id", "")
        rows = store.db.execute("SELECT id, scale, vector FROM images WHERE deleted = 0 AND vector IS NOT NULL "
                                "ORDER BY id")
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        ids, scales, count = [], [], 0
        with os.fdopen(fd, "w+b") as f:
            matrix_file = tempfile.TemporaryFile(dir=path.parent)
            while True:
                batch = rows.fetchmany(8192)
                if not batch:
                    break
                ids.extend(r[0] for r in batch)
                scales.extend(r[1] for r in batch)
                matrix_file.write(b"".join(r[2] for r in batch))
                count += len(batch)
            header = json.dumps({"seq": seq, "model_id": model_id, "count": count, "dim": dim}).encode()
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            f.write(b"\0" * (HEADER_BYTES - f.tell()))
            f.write(np.asarray(ids, dtype="<i8").tobytes())
            f.write(np.asarray(scales, dtype="<f4").tobytes())
            matrix_file.seek(0)
            while block := matrix_file.read(1 << 24):
                f.write(block)
            matrix_file.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        store.db.execute("COMMIT")
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
        if os.fstat(f.fileno()).st_size != HEADER_BYTES + count * (8 + 4 + dim):
            raise ValueError("truncated")
        ids = np.fromfile(f, dtype="<i8", count=count)
        return Packed(path, int(info["seq"]), info["model_id"], count, dim, ids, f)
    except (OSError, ValueError, KeyError, TypeError):
        f.close()
        return None


def current_packed(store, dim: int, rebuild_fraction: float = 0.05) -> tuple[Packed | None, list]:
    """The packed file plus the rows changed since it was written (id, deleted, vector, scale).
    Rebuilds it when missing, foreign or when the overlay would be large, if the folder is writable."""
    packed = read_header(packed_path(store.path))
    model_id = store.meta("model_id", "")
    if packed is None or packed.model_id != model_id or packed.dim != dim:
        packed = _try_rebuild(store, dim)
    since = packed.seq if packed is not None else -1
    delta = store.query("SELECT id, deleted, vector, scale FROM images WHERE seq > ?", (since,))
    if packed is not None and len(delta) > max(2000, rebuild_fraction * packed.count):
        rebuilt = _try_rebuild(store, dim)
        if rebuilt is not None:
            packed = rebuilt
            delta = store.query("SELECT id, deleted, vector, scale FROM images WHERE seq > ?", (packed.seq,))
    return packed, delta


def _try_rebuild(store, dim: int) -> Packed | None:
    if not os.access(store.path.parent, os.W_OK):
        return None
    return write_packed(store, dim)


def iter_chunks(packed: Packed):
    """(first row, int8 [rows, dim]) for CHUNK_ROWS rows at a time, read into one reused
    buffer: RSS stays a few MB whatever the library size. (A memory map measured slower:
    dropping its pages to bound RSS makes every query fault 160k pages back in at 1.28M.)
    Each chunk is only valid until the next one is read."""
    _, matrix_at = packed.offsets
    buffer = np.empty((min(CHUNK_ROWS, packed.count), packed.dim), dtype=np.int8)
    for start in range(0, packed.count, CHUNK_ROWS):
        chunk = buffer[: min(CHUNK_ROWS, packed.count - start)]
        packed.read_into(chunk, matrix_at + start * packed.dim)
        yield start, chunk


def read_scales(packed: Packed) -> np.ndarray:
    scales = np.empty(packed.count, dtype="<f4")
    packed.read_into(scales, packed.offsets[0])
    return scales


def top_k(query: np.ndarray, store, dim: int, k: int, allowed_ids: np.ndarray | None = None) -> list[tuple[int, float]]:
    """Best k (id, score) by cosine, optionally among `allowed_ids` (sorted int64)."""
    query = np.asarray(query, dtype=np.float32)
    packed, delta = current_packed(store, dim)
    changed = np.array(sorted(row[0] for row in delta), dtype=np.int64)
    best_ids, best_scores = [], []
    if packed is not None and packed.count:
        scales = read_scales(packed)
        keep = np.ones(packed.count, dtype=bool)
        if len(changed):
            keep &= ~_member(packed.ids, changed)
        if allowed_ids is not None:
            keep &= _member(packed.ids, allowed_ids)
        for start, chunk in iter_chunks(packed):
            rows = len(chunk)
            scores = (chunk.astype(np.float32) @ query) * scales[start : start + rows]
            scores[~keep[start : start + rows]] = -np.inf
            _collect(scores, packed.ids[start : start + rows], k, best_ids, best_scores)
    live = [row for row in delta if not row[1] and row[2] is not None
            and (allowed_ids is None or _member(np.array([row[0]]), allowed_ids)[0])]
    if live:
        matrix = np.frombuffer(b"".join(row[2] for row in live), dtype=np.int8).reshape(len(live), dim)
        scores = (matrix.astype(np.float32) @ query) * np.array([row[3] for row in live], dtype=np.float32)
        _collect(scores, np.array([row[0] for row in live], dtype=np.int64), k, best_ids, best_scores)
    if not best_ids:
        return []
    ids, scores = np.concatenate(best_ids), np.concatenate(best_scores)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in order if np.isfinite(scores[i])]


def _collect(scores: np.ndarray, ids: np.ndarray, k: int, best_ids: list, best_scores: list) -> None:
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[part], ids[part]
    best_ids.append(ids)
    best_scores.append(scores)


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.clip(np.searchsorted(sorted_set, values), 0, len(sorted_set) - 1)
    return sorted_set[pos] == values
