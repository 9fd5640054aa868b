"""The cache's statements about perceptual prints (schema v6 `images.print`, 64 bytes) and what
`duplicates` reads to group photos: prints and content fingerprints column by column (a
library of a million photos fits in tens of megabytes), and the few rows' details a report
names. A mixin of `store.Store`."""
from __future__ import annotations

import json

import numpy as np

PRINT_BYTES = 64  # photos/prints.BYTES


class PrintQueries:
    def put_print(self, filepath: bytes, print_: bytes | None) -> None:
        """A print made for a photo cached before (b"": none could be made; not tried again)."""
        self.db.execute("UPDATE images SET print = ? WHERE filepath = ?", (b"" if print_ is None else print_, filepath))

    def put_prints_bulk(self, rows) -> None:
        """(print, size) pairs for rows already inserted by `insert_rows`: how the benchmarks give
        a synthetic library its prints."""
        self.db.executemany("UPDATE images SET print = ? WHERE size = ?", rows)

    def check_print_version(self, version: str) -> bool:
        """Forget prints made by another version of the print (they are made again); True if so."""
        if self.version < 6 or self.meta("print_version") == version:
            return False
        self.db.execute("UPDATE images SET print = NULL WHERE print IS NOT NULL")
        self.set_meta("print_version", version)
        return True

    def print_columns(self, under: list[bytes] | None = None) -> dict[str, np.ndarray]:
        """Every live indexed photo (under the folders `under`): ids, sizes, prints ([n, 64] uint8,
        zeros where none), whether it has one, and content fingerprints' first 8 bytes."""
        where, params = "deleted = 0 AND vector IS NOT NULL", []
        if under:
            where += " AND (" + " OR ".join([self.UNDER] * len(under)) + ")"
            params = [p for root in under for p in self.under_params(root)]
        print_column = "print" if self.version >= 6 else "NULL"
        count = self.query(f"SELECT COUNT(*) FROM images WHERE {where}", params)[0][0]
        # Filled in place, row by row: Python lists of a million ints and byte strings took 400 MB.
        columns = {"id": np.zeros(count, dtype=np.int64), "size": np.zeros(count, dtype=np.int64),
                   "head": np.zeros(count, dtype=np.int64), "has_print": np.zeros(count, dtype=bool),
                   "print": np.zeros((count, PRINT_BYTES), dtype=np.uint8)}
        cursor = self.db.execute(f"SELECT id, size, fingerprint, {print_column} FROM images WHERE {where} ORDER BY id",
                                 params)
        at = 0
        while rows := cursor.fetchmany(65536):
            for offset, (row_id, size, fingerprint, print_) in enumerate(rows[: count - at]):
                columns["id"][at + offset], columns["size"][at + offset] = row_id, size
                columns["head"][at + offset] = int.from_bytes((fingerprint or b"")[:8].ljust(8, b"\0"), "little",
                                                              signed=True)
                if print_ is not None and len(print_) == PRINT_BYTES:
                    columns["has_print"][at + offset] = True
                    columns["print"][at + offset] = np.frombuffer(print_, dtype=np.uint8)
            at += len(rows)
        return columns

    def damaged_rows(self, under: list[bytes] | None = None) -> list[tuple[bytes, str, int, int]]:
        """(path, what is missing, size, mtime_ns) of the live photos indexed from part of them."""
        if self.version < 6:
            return []
        where, params = "deleted = 0 AND vector IS NOT NULL AND damage IS NOT NULL", []
        if under:
            where += " AND (" + " OR ".join([self.UNDER] * len(under)) + ")"
            params = [p for root in under for p in self.under_params(root)]
        return self.query(f"SELECT filepath, damage, size, modified_at FROM images WHERE {where} ORDER BY filepath",
                          params)

    def damaged_ids(self) -> list[int]:
        if self.version < 6:
            return []
        return [row[0] for row in self.query("SELECT id FROM images WHERE damage IS NOT NULL AND deleted = 0 "
                                             "AND vector IS NOT NULL ORDER BY id")]

    def unprinted_count(self) -> int:
        if self.version < 6:
            return 0
        return self.query("SELECT COUNT(*) FROM images WHERE deleted = 0 AND vector IS NOT NULL "
                          "AND print IS NULL")[0][0]

    def burst_columns(self) -> dict[str, np.ndarray]:
        """Live dated photos with a camera: ids, capture times (seconds) and a camera number
        (`cameras` names them), sorted by time; what the burst pass walks in windows."""
        rows = self.query("SELECT i.id, m.taken_key, m.make, m.model FROM photo_meta m JOIN images i ON i.id = m.image_id "
                          "WHERE i.deleted = 0 AND i.vector IS NOT NULL AND m.taken_key IS NOT NULL "
                          "AND m.model IS NOT NULL ORDER BY m.taken_key") if self.has_metadata else []
        cameras: dict[tuple, int] = {}
        return {"id": np.array([r[0] for r in rows], dtype=np.int64),
                "time": np.array([r[1] for r in rows], dtype=np.float64),
                "camera": np.array([cameras.setdefault((r[2], r[3]), len(cameras)) for r in rows], dtype=np.int64),
                "cameras": list(cameras)}  # camera number -> (make, model)

    def duplicate_details(self, row_ids: list[int]) -> dict[int, dict]:
        """What a report says of each photo: path, size, mtime, pixels, capture time, camera, and
        how much metadata it carries (for the best-copy choice)."""
        out = {}
        for start in range(0, len(row_ids), 500):
            chunk = row_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            meta = "m.width, m.height, m.taken_at, m.taken_key, m.make, m.model, m.lens, m.lat, m.keywords, m.rating" \
                if self.has_metadata else "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
            join = "LEFT JOIN photo_meta m ON m.image_id = i.id" if self.has_metadata else ""
            for row in self.query(f"SELECT i.id, i.filepath, i.size, i.modified_at, {meta} FROM images i {join} "
                                  f"WHERE i.id IN ({marks})", chunk):
                keywords = json.loads(row[12]) if row[12] else []
                out[row[0]] = {"path": row[1], "size": row[2], "mtime_ns": row[3], "width": row[4], "height": row[5],
                               "taken_at": row[6], "taken_key": row[7], "make": row[8], "model": row[9],
                               "facts": sum(value is not None for value in (row[6], row[8], row[9], row[10], row[11],
                                                                            row[13])) + len(keywords)}
        return out
