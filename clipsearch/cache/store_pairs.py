"""The cache's statements about RAW files: the RAW of a RAW+JPEG pair kept on the row of the
photo that stands for both (schema v5 `images.companion`), handing that row to the RAW when
its JPEG is gone, and the counts `status` shows. A mixin of `store.Store`."""
from __future__ import annotations

from .schema import SUFFIX


class PairQueries:
    def companions_of(self, row_ids: list[int]) -> dict[int, bytes]:
        """The RAW paired with each of these rows that has one."""
        if self.version < 5 or not row_ids:
            return {}
        found = {}
        for start in range(0, len(row_ids), 500):  # SQLite bounds the variables of one statement
            chunk = row_ids[start : start + 500]
            found.update(self.query(f"SELECT id, companion FROM images WHERE id IN ({','.join('?' * len(chunk))}) "
                                    "AND companion IS NOT NULL", chunk))
        return found

    def set_companion(self, row_id: int, companion: bytes | None, seq: int) -> None:
        self.db.execute("UPDATE images SET companion = ?, seq = ? WHERE id = ?", (companion, seq, row_id))

    def paired_with(self, raw_path: bytes) -> tuple | None:
        """(id, path, size, mtime_ns) of the live indexed row whose pair's RAW is `raw_path`."""
        rows = self.query("SELECT id, filepath, size, modified_at FROM images WHERE companion = ? AND deleted = 0 "
                          "AND vector IS NOT NULL", (raw_path,))
        return rows[0] if rows else None

    def split_pair(self, row_id: int, filepath: bytes, folder: bytes, size: int, mtime_ns: int,
                   fingerprint: bytes | None, seq: int) -> None:
        """The pair's JPEG is gone from beside its RAW (deleted or moved): the RAW becomes a photo
        of its own with the pair's vector (the same picture), and the JPEG's row is no longer
        paired (the walk removes it, or finds it moved, as any file)."""
        import time

        self.db.execute("DELETE FROM images WHERE filepath = ?", (filepath,))  # a stale soft-deleted row
        self.db.execute("""INSERT INTO images (filepath, dir, modified_at, size, fingerprint, vector, scale, error,
                                              deleted, deleted_at, seq, indexed_at, companion, print)
                           SELECT ?, ?, ?, ?, ?, vector, scale, NULL, 0, NULL, ?, ?, NULL, print FROM images
                           WHERE id = ?""",
                        (filepath, folder, mtime_ns, size, fingerprint, seq, time.time(), row_id))
        self.db.execute("UPDATE images SET companion = NULL, seq = ? WHERE id = ?", (seq, row_id))

    def raw_counts(self, extensions: frozenset[bytes]) -> dict:
        """Indexed RAW files on their own (by their lower-case four-byte `extensions`,
        `photos/raw.RAW`), and RAW+JPEG pairs (one photo each)."""
        if self.version < 5:
            return {"raw": 0, "pairs": 0}
        live = "deleted = 0 AND vector IS NOT NULL"
        pairs = self.query(f"SELECT COUNT(*) FROM images WHERE companion IS NOT NULL AND {live}")[0][0]
        tails = sorted(ext.decode("ascii") for ext in extensions if len(ext) == 4)
        raw = self.query(f"SELECT COUNT(*) FROM images WHERE {SUFFIX} IN ({','.join('?' * len(tails))}) "
                         f"AND companion IS NULL AND {live}", tails)[0][0]  # by index from schema v6
        return {"raw": raw, "pairs": pairs}
