"""The SQLite vector cache: opening and upgrading it (the tables and upgrade steps are
`schema.py`'s), transactions, and every other SQL statement clipsearch (and its benchmarks) run. The database is the single source of truth;
`packed.py` keeps a derived packed copy for fast ranking, read through `live_vectors`.

Paths are stored as raw bytes (`os.fsencode`): photo libraries contain names that are not
valid UTF-8, and SQLite TEXT cannot hold them. Vectors are stored as int8 with one float
scale per row (unit vector ~= int8 * scale): 512 bytes instead of 2 KiB, and the search
quality loss is far below the int8 model's own (docs/design.md "Storage").
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

from clipsearch.errors import DatabaseError, ModelMismatchError, ReadOnlyCacheError

from .schema import MIGRATIONS, READABLE_FROM, SCHEMA_VERSION
from .store_pairs import PairQueries
from .store_photos import PhotoQueries
from .store_prints import PrintQueries
from .store_runs import RunQueries
from .store_shards import ShardQueries


class KnownRow(NamedTuple):
    """What the indexer needs to know about a file the cache has seen."""

    id: int
    size: int
    modified_at: int
    deleted: int
    failed: int  # the last attempt could not decode it (error kept); not retried until it changes
    meta: tuple | None = None  # (size, mtime, sidecars) its metadata was read from; None: never read
    failure: str | None = None  # what a failure depended on (`photos/readers.record`)
    meta_readers: str | None = None  # what read metadata that had problems (`photos/readers.metadata_readers`)
    companion: bytes | None = None  # the RAW of a RAW+JPEG pair this row stands for
    printed: bool = True  # its perceptual print was made (or found impossible); False: decode it for one


class Store(PhotoQueries, RunQueries, PairQueries, PrintQueries, ShardQueries):
    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.immutable = False  # opened as files that cannot change (a read-only volume)
        self.db = self._connect()
        self._upgrade()

    # -- opening -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.readonly and not self.path.exists():
            raise DatabaseError(f"{self.path}: no index yet; run `clipsearch index PATH` first")
        try:
            if self.readonly:
                db = self._connect_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 30000")
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal" and not self.readonly:
                db.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a crash or power loss can drop the last commits, never corrupt.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            self.version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise self.explain(exc) from None
        except OSError as exc:
            raise DatabaseError(f"{self.path}: cannot open the index database ({exc.strerror}); check the path and its permissions") from None
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        """Readers never write: `mode=ro`. A cache in WAL mode on a read-only volume (a degraded
        NAS volume, a snapshot, a backup) cannot be opened so, since SQLite would need to create
        its shared-memory file beside it: it is then opened `immutable`, as the read-only files
        it is; only a write-ahead log a crash left behind there would go unread."""
        from urllib.parse import quote

        uri = "file:" + quote(os.fsdecode(self.path.resolve()))
        for flags in ("?mode=ro", "?mode=ro&immutable=1"):
            db = sqlite3.connect(uri + flags, uri=True, isolation_level=None, timeout=30, check_same_thread=False)
            try:
                db.execute("PRAGMA user_version").fetchone()
                self.immutable = "immutable" in flags
                return db
            except sqlite3.OperationalError as exc:
                db.close()
                if "unable to open" not in str(exc) and "readonly" not in str(exc):
                    raise
        raise sqlite3.OperationalError("unable to open database file")

    def explain(self, exc: Exception) -> DatabaseError:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            return DatabaseError(f"{self.path}: not a clipsearch database or damaged ({text}); move it aside "
                                 "(it is never overwritten) and run `clipsearch index` to build a new one")
        if "readonly" in text or "read-only" in text or ("unable to open" in text and self._on_read_only_folder()):
            return ReadOnlyCacheError(self.path)
        if "disk is full" in text or "disk I/O error" in text:
            return DatabaseError(f"{self.path}: the disk is full or failing ({text}); the last committed state is "
                                 "intact: free some space and run again")
        if "locked" in text:
            return DatabaseError(f"{self.path}: database is busy ({text}); try again")
        return DatabaseError(f"{self.path}: {text}")

    def _on_read_only_folder(self) -> bool:
        """The cache's folder is on a read-only volume, or not writable by this user."""
        try:
            if os.statvfs(self.path.parent).f_flag & os.ST_RDONLY:
                return True
        except OSError:
            return False
        return not os.access(self.path.parent, os.W_OK)

    def _upgrade(self) -> None:
        if self.version > SCHEMA_VERSION:
            raise DatabaseError(f"{self.path}: written by a newer clipsearch (schema {self.version}, this one knows "
                                f"{SCHEMA_VERSION}); upgrade clipsearch, or use another --db")
        if self.version == SCHEMA_VERSION or (self.readonly and self.version >= READABLE_FROM):
            return
        if self.readonly:
            raise DatabaseError(f"{self.path}: schema {self.version} needs an upgrade; run `clipsearch index` once")
        while self.version < SCHEMA_VERSION:
            with self.atomic():
                # Re-read inside the write lock: an overlapping run may have upgraded already.
                self.version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if self.version >= SCHEMA_VERSION:
                    break
                MIGRATIONS[self.version](self.db)
                self.db.execute(f"PRAGMA user_version = {self.version + 1}")
            self.version += 1

    def close(self) -> None:
        self.db.close()

    def begin(self) -> None:
        """Start a write transaction (BEGIN IMMEDIATE: takes the write lock up front)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self.explain(exc) from None

    def commit(self) -> None:
        try:
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self.rollback()
            raise self.explain(exc) from None

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    @contextlib.contextmanager
    def atomic(self):
        """One write transaction around the block; rolled back if it raises."""
        self.begin()
        try:
            yield self.db
        except sqlite3.DatabaseError as exc:
            self.rollback()
            raise self.explain(exc) from None
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    @contextlib.contextmanager
    def snapshot(self):
        """One read transaction around the block: everything read in it is one state."""
        try:
            self.db.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise self.explain(exc) from None
        try:
            yield self
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("COMMIT")

    def query(self, sql: str, params=()) -> list:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self.explain(exc) from None

    # -- meta --------------------------------------------------------------------------

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0][0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value))

    def check_model(self, model_id: str, model_name: str, claim: bool, image_tower: str | None = None) -> None:
        """Vectors of one model never mix with another's. An empty cache is claimed by the
        first model that indexes into it (when `claim`), which also records the image tower
        it embeds with (what a text-only model must pair with: `search/query.check_text_model`)."""
        stored = self.meta("model_id")
        if stored is None:
            if claim:
                with self.atomic():
                    if self.meta("model_id") is None:
                        self.set_meta("model_id", model_id)
                        self.set_meta("model_name", model_name)
                return self.check_model(model_id, model_name, True, image_tower)
            return
        if stored != model_id:
            raise ModelMismatchError(
                f"{self.path}: the cache was built with model {self.meta('model_name')} ({stored}), not with the loaded "
                f"{model_name} ({model_id}); use --model with that folder, or a separate --db for this model "
                f"(or delete the database to re-index everything with it)")
        if claim and image_tower and self.meta("image_tower") != image_tower:
            with self.atomic():
                self.set_meta("image_tower", image_tower)

    def current_seq(self) -> int:
        """The change counter: every write stamps its rows with a new value."""
        return int(self.meta("seq", "0"))

    def next_seq(self) -> int:
        """Bump the change counter; call inside a transaction and stamp changed rows with it."""
        seq = int(self.meta("seq", "0")) + 1
        self.set_meta("seq", str(seq))
        return seq

    # -- reads for the indexer ---------------------------------------------------------

    def rows_in_dir(self, folder: bytes) -> dict[bytes, "KnownRow"]:
        rows = self.query("SELECT i.filepath, i.id, i.size, i.modified_at, i.deleted, i.error IS NOT NULL, "
                          "m.read_size, m.read_mtime, m.sidecars, i.failure, "
                          "CASE WHEN m.problems IS NOT NULL THEN m.readers END, "
                          f"{'i.companion' if self.version >= 5 else 'NULL'}, "
                          f"{'i.print IS NOT NULL' if self.version >= 6 else '1'} FROM images i "
                          "LEFT JOIN photo_meta m ON m.image_id = i.id WHERE i.dir = ?", (folder,))
        return {row[0]: KnownRow(*row[1:6], None if row[6] is None else tuple(row[6:9]), *row[9:11], row[11],
                                 bool(row[12])) for row in rows}

    # `dir` is `root` or lies below it: an index range scan, since b"0" follows b"/" in byte order.
    UNDER = "(dir = ? OR (dir >= ? AND dir < ?))"

    @staticmethod
    def under_params(root: bytes) -> tuple[bytes, bytes, bytes]:
        return root, root.rstrip(b"/") + b"/", root.rstrip(b"/") + b"0"

    def dirs_under(self, root: bytes) -> list[bytes]:
        rows = self.query(f"SELECT DISTINCT dir FROM images WHERE deleted = 0 AND {self.UNDER}", self.under_params(root))
        return [row[0] for row in rows]

    def has_rows_under(self, root: bytes) -> bool:
        rows = self.query(f"SELECT 1 FROM images WHERE deleted = 0 AND {self.UNDER} LIMIT 1", self.under_params(root))
        return bool(rows)

    def vector_ids_under(self, root: bytes) -> list[int]:
        rows = self.query(f"SELECT id FROM images WHERE deleted = 0 AND vector IS NOT NULL AND {self.UNDER} ORDER BY id",
                          self.under_params(root))
        return [row[0] for row in rows]

    def has_size(self, size: int) -> bool:
        return bool(self.query("SELECT 1 FROM images WHERE size = ? AND fingerprint IS NOT NULL LIMIT 1", (size,)))

    def same_content(self, size: int, fingerprint: bytes) -> list[tuple]:
        """(id, filepath, deleted, modified_at) of the rows holding this content's vector."""
        return self.query("SELECT id, filepath, deleted, modified_at FROM images "
                          "WHERE size = ? AND fingerprint = ? AND vector IS NOT NULL ORDER BY deleted, id",
                          (size, fingerprint))

    def live_count_under(self, folder: bytes) -> int:
        return self.query(f"SELECT COUNT(*) FROM images WHERE deleted = 0 AND {self.UNDER}", self.under_params(folder))[0][0]

    # -- reads for ranking and reports -------------------------------------------------

    def live_vectors(self, batch: int):
        """(id, scale, vector) of every live vector, by id, in batches (call in `snapshot`)."""
        cursor = self.db.execute("SELECT id, scale, vector FROM images WHERE deleted = 0 AND vector IS NOT NULL "
                                 "ORDER BY id")
        while rows := cursor.fetchmany(batch):
            yield rows

    def live_vector_dirs(self):
        """(id, folder) of every live vector, by id, streamed (labels for bench/quality.py)."""
        yield from self.db.execute("SELECT id, dir FROM images WHERE deleted = 0 AND vector IS NOT NULL ORDER BY id")

    def changed_since(self, seq: int) -> list[tuple]:
        """(id, deleted, vector, scale) of the rows written after change counter `seq`."""
        return self.query("SELECT id, deleted, vector, scale FROM images WHERE seq > ?", (seq,))

    def changed_ids_since(self, seq: int) -> list[int]:
        return [row[0] for row in self.query("SELECT id FROM images WHERE seq > ?", (seq,))]

    def unit_vectors(self, row_ids: list[int]) -> dict:
        """Row id -> its stored vector as a float32 unit vector (live rows only)."""
        import numpy as np

        if not row_ids:
            return {}
        rows = self.query(f"SELECT id, vector FROM images WHERE id IN ({','.join('?' * len(row_ids))}) "
                          "AND deleted = 0 AND vector IS NOT NULL", row_ids)
        vectors = {}
        for row_id, vector in rows:
            v = np.frombuffer(vector, dtype=np.int8).astype(np.float32)
            vectors[row_id] = v / (np.linalg.norm(v) or 1.0)
        return vectors

    def photo_row(self, row_id: int) -> tuple | None:
        """(path, size, mtime_ns, fingerprint) of a live, indexed photo, else None."""
        rows = self.query("SELECT filepath, size, modified_at, fingerprint FROM images WHERE id = ? AND deleted = 0 "
                          "AND vector IS NOT NULL", (row_id,))
        return rows[0] if rows else None

    def paths_of(self, row_ids: list[int]) -> dict[int, bytes]:
        placeholders = ",".join("?" * len(row_ids))
        return dict(self.query(f"SELECT id, filepath FROM images WHERE id IN ({placeholders})", row_ids))

    # -- writes (call inside atomic()) ------------------------------------------------

    def insert_rows(self, rows) -> None:
        """Bulk rows (filepath, dir, modified_at, size, fingerprint, vector, scale, seq, indexed_at):
        how the benchmarks fill a cache of a million synthetic photos."""
        self.db.executemany("INSERT INTO images (filepath, dir, modified_at, size, fingerprint, vector, scale, seq, "
                            "indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def insert_meta_rows(self, rows, seq: int) -> None:
        """Bulk metadata (image_id, taken_key, make, model, lat, lon, rating, keywords JSON): how
        the benchmarks describe a cache of synthetic photos. The rows take change counter `seq`."""
        rows = list(rows)
        self.db.executemany("UPDATE images SET seq = ? WHERE id = ?", ((seq, row[0]) for row in rows))
        self.db.executemany("INSERT OR REPLACE INTO photo_meta (image_id, read_size, read_mtime, sidecars, taken_key, "
                            "make, model, lat, lon, rating, keywords) VALUES (?, 0, 0, '', ?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.executemany("INSERT OR IGNORE INTO photo_keywords (image_id, keyword) VALUES (?, ?)",
                            ((row[0], keyword) for row in rows for keyword in json.loads(row[7])))

    def live_ids(self) -> list[int]:
        return [row[0] for row in self.query("SELECT id FROM images WHERE deleted = 0 AND vector IS NOT NULL ORDER BY id")]

    def put_vector(self, filepath: bytes, folder: bytes, size: int, mtime_ns: int, fingerprint: bytes,
                   vector: bytes, scale: float, seq: int, companion: bytes | None = None,
                   print_: bytes | None = None, damage: str | None = None) -> None:
        self.db.execute(
            """INSERT INTO images (filepath, dir, modified_at, size, fingerprint, vector, scale, error, deleted,
                                   deleted_at, seq, indexed_at, companion, print, damage)
               VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0, NULL, ?, ?, ?, ?, ?)
               ON CONFLICT(filepath) DO UPDATE SET dir = excluded.dir, modified_at = excluded.modified_at,
                 size = excluded.size, fingerprint = excluded.fingerprint, vector = excluded.vector,
                 scale = excluded.scale, error = NULL, failure = NULL, deleted = 0, deleted_at = NULL,
                 seq = excluded.seq, indexed_at = excluded.indexed_at, companion = excluded.companion,
                 print = excluded.print, damage = excluded.damage""",
            (filepath, folder, mtime_ns, size, fingerprint, vector, scale, seq, time.time(), companion,
             b"" if print_ is None else print_, damage))

    def put_error(self, filepath: bytes, folder: bytes, size: int, mtime_ns: int, error: str, seq: int,
                  failure: str | None = None) -> None:
        """A file that could not be decoded, with what the failure depended on (`photos/readers.py`)."""
        self.db.execute(
            """INSERT INTO images (filepath, dir, modified_at, size, fingerprint, vector, scale, error, failure,
                                   deleted, deleted_at, seq, indexed_at)
               VALUES (?, ?, ?, ?, NULL, NULL, NULL, ?, ?, 0, NULL, ?, ?)
               ON CONFLICT(filepath) DO UPDATE SET dir = excluded.dir, modified_at = excluded.modified_at,
                 size = excluded.size, fingerprint = NULL, vector = NULL, scale = NULL, error = excluded.error,
                 failure = excluded.failure, deleted = 0, deleted_at = NULL, seq = excluded.seq,
                 indexed_at = excluded.indexed_at""",
            (filepath, folder, mtime_ns, size, error, failure, seq, time.time()))

    def move(self, row_id: int, filepath: bytes, folder: bytes, mtime_ns: int, seq: int) -> None:
        # A stale soft-deleted row may still hold the target path: the new location wins.
        self.db.execute("DELETE FROM images WHERE filepath = ? AND id != ?", (filepath, row_id))
        self.db.execute("UPDATE images SET filepath = ?, dir = ?, modified_at = ?, deleted = 0, deleted_at = NULL, "
                        "seq = ? WHERE id = ?", (filepath, folder, mtime_ns, seq, row_id))

    def exchange(self, row_id: int, filepath: bytes, folder: bytes, mtime_ns: int, occupant_id: int,
                 seq: int) -> bytes:
        """`row_id` takes `filepath`, whose live row `occupant_id` takes `row_id`'s old path
        (two files that swapped names keep both vectors). Returns that old path. Through a
        placeholder path: filepath is UNIQUE at every step."""
        old_path, old_folder = self.db.execute("SELECT filepath, dir FROM images WHERE id = ?", (row_id,)).fetchone()
        self.db.execute("UPDATE images SET filepath = ? WHERE id = ?", (b"\0exchange:%d" % occupant_id, occupant_id))
        self.move(row_id, filepath, folder, mtime_ns, seq)
        self.db.execute("UPDATE images SET filepath = ?, dir = ?, seq = ? WHERE id = ?",
                        (old_path, old_folder, seq, occupant_id))
        return old_path

    def revive(self, row_id: int, seq: int) -> None:
        """A soft-deleted row whose file is back as it was (a share mounted again)."""
        self.db.execute("UPDATE images SET deleted = 0, deleted_at = NULL, seq = ? WHERE id = ?", (seq, row_id))

    def mark_deleted(self, row_ids: list[int], seq: int) -> None:
        now = time.time()
        self.db.executemany("UPDATE images SET deleted = 1, deleted_at = ?, seq = ? WHERE id = ? AND deleted = 0",
                            [(now, seq, row_id) for row_id in row_ids])

    def mark_dir_deleted(self, folder: bytes, seq: int) -> int:
        """Soft-delete the live rows of `folder` itself (not of its sub-folders)."""
        cursor = self.db.execute("UPDATE images SET deleted = 1, deleted_at = ?, seq = ? WHERE dir = ? AND deleted = 0",
                                 (time.time(), seq, folder))
        return cursor.rowcount

    def purge_deleted(self, older_than_days: float = 30.0) -> int:
        """Forget soft-deleted rows for good. They are kept a while so a file moved out of the
        library and back (or across two runs) keeps its vector. Returns the newest change
        counter among them (0: none): a packed file older than that still holds one."""
        before = time.time() - older_than_days * 86400
        newest = self.db.execute("SELECT MAX(seq) FROM images WHERE deleted = 1 AND deleted_at < ?",
                                 (before,)).fetchone()[0]
        self.db.execute("DELETE FROM images WHERE deleted = 1 AND deleted_at < ?", (before,))
        return newest or 0
