"""The cache's SQL about shards (`library.py` decides what they are): the list of shards a
library database keeps (`shards`, schema v7), moving a folder's rows out of a cache into a
shard of its own, and rewriting a shard's paths when its disk is mounted somewhere else. Part
of the database layer: `store.Store` inherits these, so every statement runs on its
connection, in its transactions."""
from __future__ import annotations

import contextlib
import time
from typing import NamedTuple


class ShardRow(NamedTuple):
    number: int
    root: bytes
    location: str  # the shard's database file
    portable: bool  # kept on the disk it describes (`index --shard-on-disk`)
    photos: int  # photos it held at its last index run


# What a shard takes with it from the cache it leaves: its rows, what they say about
# themselves, and the keywords `tag` wrote for them (so `untag` still finds them).
MOVED_TABLES = (
    ("images", "i", "images i"),
    ("photo_meta", "m", "photo_meta m JOIN images i ON i.id = m.image_id"),
    ("photo_keywords", "k", "photo_keywords k JOIN images i ON i.id = k.image_id"),
    ("keywords_added", "k", "keywords_added k JOIN images i ON i.id = k.image_id"),
)
# What a shard must know of the cache it comes from.
MOVED_META = ("model_id", "model_name", "image_tower", "pipeline", "seq")


class ShardQueries:
    """Mixed into `store.Store` (uses its `db`, `query`, `version`, `UNDER`, `under_params`)."""

    def shard_rows(self) -> list[ShardRow]:
        if self.version < 7:  # a reader of an older cache (opened as it is) lists none
            return []
        return [ShardRow(n, bytes(root), location, bool(portable), photos) for n, root, location, portable, photos
                in self.query("SELECT number, root, location, portable, photos FROM shards ORDER BY number")]

    def add_shard(self, root: bytes, location: str, portable: bool, uuid: str) -> int:
        """Register a shard (call inside a transaction). One listed for the same root, or the
        same shard (`uuid`) at another mount point, is replaced; the number is kept then, so
        the ids of its photos stay the same."""
        old = self.query("SELECT number FROM shards WHERE root = ? OR uuid = ? ORDER BY root = ? DESC",
                         (root, uuid, root))
        self.db.execute("DELETE FROM shards WHERE root = ? OR uuid = ?", (root, uuid))
        cursor = self.db.execute("INSERT INTO shards (number, root, location, portable, uuid, added_at) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (old[0][0] if old else None, root, location, int(portable), uuid, time.time()))
        return cursor.lastrowid

    def set_shard_photos(self, number: int, photos: int) -> None:
        self.db.execute("UPDATE shards SET photos = ? WHERE number = ?", (photos, number))


    def copy_rows_under(self, root: bytes, target: str) -> int:
        """Copy the rows under `root` (ids kept) and the cache's identity into the empty
        database file `target`. One transaction on `target`; returns the rows copied."""
        self.db.execute("ATTACH DATABASE ? AS shard", (target,))
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for table, prefix, source in MOVED_TABLES:
                    names = [row[1] for row in self.db.execute(f"PRAGMA shard.table_info({table})")]
                    own = {row[1] for row in self.db.execute(f"PRAGMA main.table_info({table})")}
                    picked = [n for n in names if n in own]
                    self.db.execute(f"INSERT INTO shard.{table} ({','.join(picked)}) SELECT "
                                    f"{','.join(prefix + '.' + n for n in picked)} FROM main.{source} "
                                    "WHERE (i.dir = ? OR (i.dir >= ? AND i.dir < ?))", self.under_params(root))
                marks = ",".join("?" * len(MOVED_META))
                self.db.execute(f"INSERT OR REPLACE INTO shard.meta (key, value) SELECT key, value FROM main.meta "
                                f"WHERE key IN ({marks})", MOVED_META)
                copied = self.db.execute("SELECT COUNT(*) FROM shard.images").fetchone()[0]
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        finally:
            self.db.execute("DETACH DATABASE shard")
        return copied

    def export_row(self, row_id: int) -> dict[str, list[dict]]:
        """A photo's row and the rows that refer to it (`MOVED_TABLES`), as column -> value:
        what it takes along when it moves to another shard's folder (`import_row`)."""
        found = {}
        for table, prefix, source in MOVED_TABLES:
            cursor = self.db.execute(f"SELECT {prefix}.* FROM {source} WHERE i.id = ?", (row_id,))
            names = [column[0] for column in cursor.description]
            found[table] = [dict(zip(names, row)) for row in cursor.fetchall()]
        return found

    def import_row(self, rows: dict[str, list[dict]], filepath: bytes, folder: bytes, mtime_ns: int,
                   companion: bytes | None, seq: int) -> int:
        """`export_row`'s rows of another database, live at `filepath` under a new id (call in a
        transaction; no live row holds `filepath`). Columns this database lacks are left out."""
        self.db.execute("DELETE FROM images WHERE filepath = ?", (filepath,))  # a stale soft-deleted row
        new_id = None
        for table, _, _ in MOVED_TABLES:
            own = {row[1] for row in self.db.execute(f"PRAGMA main.table_info({table})")}
            for row in rows[table]:
                if table == "images":
                    row = {**row, "filepath": filepath, "dir": folder, "modified_at": mtime_ns, "deleted": 0,
                           "deleted_at": None, "seq": seq, "companion": companion}
                    row.pop("id")
                else:
                    row = {**row, "image_id": new_id}
                names = [name for name in row if name in own]
                marks = ",".join("?" * len(names))
                cursor = self.db.execute(f"INSERT INTO {table} ({','.join(names)}) VALUES ({marks})",
                                         [row[name] for name in names])
                new_id = cursor.lastrowid if table == "images" else new_id
        return new_id

    def holds_only_rows_under(self, root: bytes) -> bool:
        """Every row of this database lies under `root` (a one-folder cache from before shards)."""
        return not self.query(f"SELECT 1 FROM images WHERE NOT {self.UNDER} LIMIT 1", self.under_params(root))

    def copy_whole_into(self, target: str) -> None:
        """The whole database into the new file `target` (VACUUM INTO: one sequential copy; a
        1.28M-photo cache in seconds, where copying its rows one by one took minutes), then
        without the shard list, which only a library database keeps."""
        self.db.execute("VACUUM INTO ?", (target,))
        import sqlite3

        copy = sqlite3.connect(target, isolation_level=None)
        try:
            copy.execute("DELETE FROM shards")
            copy.execute("DELETE FROM runs")
        finally:
            copy.close()

    @contextlib.contextmanager
    def foreign_keys_off(self):
        """Around a transaction that removes parents and children itself (`delete_all_rows`):
        SQLite takes this setting only outside a transaction."""
        self.db.execute("PRAGMA foreign_keys = OFF")
        try:
            yield
        finally:
            self.db.execute("PRAGMA foreign_keys = ON")

    def delete_all_rows(self) -> int:
        """Forget every photo (they moved into a shard; call in a transaction, foreign keys
        off): without a WHERE, SQLite drops the tables' pages instead of deleting row by row
        (1.28M rows through their indexes and cascades took minutes)."""
        count = self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        for table in ("photo_keywords", "photo_meta", "keywords_added", "images"):
            self.db.execute(f"DELETE FROM {table}")
        return count

    def delete_rows_under(self, root: bytes) -> int:
        """Forget the rows under `root` for good (they moved into a shard; call in a
        transaction); the tables that refer to them follow (ON DELETE CASCADE)."""
        return self.db.execute(f"DELETE FROM images WHERE {self.UNDER}", self.under_params(root)).rowcount

    def rebase(self, old_root: bytes, new_root: bytes) -> int:
        """Every path under `old_root` moves under `new_root` (a disk mounted elsewhere; call in
        a transaction). Byte-wise in SQL: `||` makes text of its operands, which SQLite never
        validates as UTF-8, so CAST back to BLOB gives the bytes exactly, names that are not
        UTF-8 included."""
        cut = len(old_root) + 1
        swap = "CAST(CAST(? AS BLOB) || substr({0}, ?) AS BLOB)"
        cursor = self.db.execute(
            f"UPDATE images SET filepath = {swap.format('filepath')}, dir = {swap.format('dir')}, "
            f"companion = CASE WHEN companion IS NULL THEN NULL ELSE {swap.format('companion')} END "
            f"WHERE {self.UNDER}", (new_root, cut, new_root, cut, new_root, cut, *self.under_params(old_root)))
        self.db.execute(f"UPDATE keywords_added SET sidecar = {swap.format('sidecar')} "
                        "WHERE sidecar >= ? AND sidecar < ?", (new_root, cut, *self.under_params(old_root)[1:]))
        return cursor.rowcount

    def reclaim(self) -> bool:
        """Give the space of rows moved out back to the disk (VACUUM: the library database of a
        1.28M-photo cache keeps its 1.3 GB otherwise). Skipped, False, while a reader holds
        the database; the next move tries again."""
        import sqlite3

        try:
            self.db.execute("VACUUM")
            return True
        except sqlite3.OperationalError:
            return False
