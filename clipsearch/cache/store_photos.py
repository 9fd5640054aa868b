"""The cache's SQL about what photos say about themselves (`photo_meta`, `photo_keywords`:
metadata read by `index`, the filters of `query` and `tag`) and about the keywords `tag`
wrote (`keywords_added`). Part of the database layer: `store.Store` inherits these, so every
statement still runs on its connection, in its transactions."""
from __future__ import annotations

import json
import time


class PhotoQueries:
    """Mixed into `store.Store` (uses its `db`, `query`, `version`, `under_params`)."""

    # -- what photos say about themselves (metadata.py) ----------------------------------

    def put_meta(self, filepath: bytes, size: int, mtime_ns: int, sidecars: str, meta: dict, seq: int) -> bool:
        """Store the metadata read from this version of the file; False if the row holds another.
        The row takes change counter `seq`: the packed file's filter columns follow it."""
        cursor = self.db.execute(
            """INSERT INTO photo_meta (image_id, read_size, read_mtime, sidecars, taken_at, taken_key, taken_source,
                                       make, model, lens, lat, lon, width, height, rating, keywords, problems,
                                       readers)
               SELECT id, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM images
               WHERE filepath = ? AND size = ? AND modified_at = ?
               ON CONFLICT(image_id) DO UPDATE SET read_size = excluded.read_size, read_mtime = excluded.read_mtime,
                 sidecars = excluded.sidecars, taken_at = excluded.taken_at, taken_key = excluded.taken_key,
                 taken_source = excluded.taken_source, make = excluded.make, model = excluded.model,
                 lens = excluded.lens, lat = excluded.lat, lon = excluded.lon, width = excluded.width,
                 height = excluded.height, rating = excluded.rating, keywords = excluded.keywords,
                 problems = excluded.problems, readers = excluded.readers""",
            (size, mtime_ns, sidecars, meta.get("taken_at"), meta.get("taken_key"), meta.get("taken_source"),
             meta.get("make"), meta.get("model"), meta.get("lens"), meta.get("lat"), meta.get("lon"),
             meta.get("width"), meta.get("height"), meta.get("rating"), json.dumps(meta.get("keywords") or []),
             "; ".join(meta.get("problems") or []) or None, meta.get("readers"), filepath, size, mtime_ns))
        if cursor.rowcount <= 0:
            return False
        image_id = self.db.execute("SELECT id FROM images WHERE filepath = ?", (filepath,)).fetchone()[0]
        self.db.execute("UPDATE images SET seq = ? WHERE id = ?", (seq, image_id))
        self.db.execute("DELETE FROM photo_keywords WHERE image_id = ?", (image_id,))
        self.db.executemany("INSERT OR IGNORE INTO photo_keywords (image_id, keyword) VALUES (?, ?)",
                            [(image_id, keyword) for keyword in meta.get("keywords") or []])
        return True

    def meta_of(self, filepath: bytes) -> dict | None:
        cursor = self.db.execute("SELECT m.* FROM photo_meta m JOIN images i ON i.id = m.image_id "
                                 "WHERE i.filepath = ?", (filepath,))
        row = cursor.fetchone()
        if row is None:
            return None
        meta = dict(zip([column[0] for column in cursor.description], row))
        meta["keywords"] = json.loads(meta["keywords"])
        return meta

    @property
    def has_metadata(self) -> bool:
        """A reader of a cache from before v3 (opened as it is) finds no metadata in it."""
        return self.version >= 3

    def meta_fields(self, since_seq: int | None = None, batch: int = 65536):
        """(id, taken_key, lat, lon, rating, make, model) of photos with metadata, by id, in
        batches: the filter columns. All of them (deleted ones too: the caller keeps the rows
        it holds, and a join would cost a second at 1.28M), or the live ones written after
        change counter `since_seq`."""
        select = "SELECT m.image_id, m.taken_key, m.lat, m.lon, m.rating, m.make, m.model FROM photo_meta m"
        if since_seq is None:
            cursor = self.db.execute(select + " ORDER BY m.image_id")
        else:
            cursor = self.db.execute(select + f" {self.CHANGED_LIVE} ORDER BY m.image_id", (since_seq,))
        while rows := cursor.fetchmany(batch):
            yield rows

    def keyword_groups(self, since_seq: int | None = None) -> list[tuple[str, str]]:
        """(keyword, "id,id,...") per keyword (grouped in any ASCII case), as `meta_fields`:
        SQLite's grouping takes a third of the time of a Python tuple per (photo, keyword)."""
        select = "SELECT m.keyword, group_concat(m.image_id) FROM photo_keywords m"
        if since_seq is None:
            return self.query(select + " GROUP BY m.keyword")
        return self.query(select + f" {self.CHANGED_LIVE} GROUP BY m.keyword", (since_seq,))

    CHANGED_LIVE = "JOIN images i ON i.id = m.image_id WHERE i.deleted = 0 AND i.vector IS NOT NULL AND i.seq > ?"

    def metadata_of(self, row_ids: list[int]) -> dict[int, dict]:
        """Row id -> the metadata fields `query --json` prints."""
        out = {}
        if not self.has_metadata:
            return out
        for start in range(0, len(row_ids), 500):
            chunk = row_ids[start : start + 500]
            rows = self.query(f"SELECT image_id, taken_at, taken_key, make, model, lens, lat, lon, width, height, "
                              f"rating, keywords FROM photo_meta WHERE image_id IN ({','.join('?' * len(chunk))})", chunk)
            for row in rows:
                out[row[0]] = {"taken_at": row[1], "taken_key": row[2], "make": row[3], "model": row[4], "lens": row[5],
                               "lat": row[6], "lon": row[7], "width": row[8], "height": row[9], "rating": row[10],
                               "keywords": json.loads(row[11])}
        return out

    def meta_coverage(self) -> dict:
        if not self.has_metadata:
            return {"read": 0, "dated": 0, "located": 0, "with_keywords": 0}
        row = self.query("SELECT COUNT(m.image_id), COUNT(m.taken_key), COUNT(m.lat), "
                         "SUM(m.keywords != '[]') FROM images i LEFT JOIN photo_meta m ON m.image_id = i.id "
                         "WHERE i.deleted = 0 AND i.vector IS NOT NULL")[0]
        return {"read": row[0] or 0, "dated": row[1] or 0, "located": row[2] or 0, "with_keywords": row[3] or 0}

    # -- keywords written by `tag` -------------------------------------------------------

    def image_ids(self, paths: list[bytes]) -> dict[bytes, int]:
        marks = ",".join("?" * len(paths))
        rows = self.db.execute(f"SELECT filepath, id FROM images WHERE filepath IN ({marks}) AND deleted = 0", paths)
        return dict(rows.fetchall())

    def record_keywords(self, image_id: int, keyword: str, sidecar: bytes, values: list[tuple[str, str]]) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO keywords_added (image_id, keyword, sidecar, field, value, added_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", [(image_id, keyword, sidecar, f, v, time.time()) for f, v in values])

    def keywords_added(self, keyword: str, root: bytes | None) -> list[tuple[int, bytes, bytes, str, str]]:
        """(image id, photo path, sidecar, field, value) that `tag` added for `keyword`."""
        sql = ("SELECT k.image_id, i.filepath, k.sidecar, k.field, k.value FROM keywords_added k "
               "JOIN images i ON i.id = k.image_id WHERE k.keyword = ?")
        params: tuple = (keyword,)
        if root is not None:
            sql += " AND (i.filepath = ? OR (i.filepath > ? AND i.filepath < ?))"
            params += self.under_params(root)
        return self.db.execute(sql + " ORDER BY i.filepath, k.sidecar", params).fetchall()

    def forget_keywords(self, image_id: int, keyword: str, sidecar: bytes) -> None:
        self.db.execute("DELETE FROM keywords_added WHERE image_id = ? AND keyword = ? AND sidecar = ?",
                        (image_id, keyword, sidecar))
