"""The cache's SQL about index runs (`runs`: when, which folders, how it ended, its counts) and
what `status` reports from the rows (counts, failed files). Part of the database layer:
`store.Store` inherits these, so every statement runs on its connection, in its
transactions."""
from __future__ import annotations

import json
import time


class RunQueries:
    """Mixed into `store.Store` (uses its `db`, `query`, `atomic`, `version`, `UNDER`, `under_params`)."""

    def run_roots(self) -> list[str]:
        """The folders of every finished or interrupted run (an interrupted first run's folder
        is already the library)."""
        return [root for (roots,) in self.query("SELECT roots FROM runs WHERE status IN ('ok', 'interrupted')")
                for root in json.loads(roots)]


    def start_run(self, roots: list[str]) -> int:
        with self.atomic():
            cursor = self.db.execute("INSERT INTO runs (started_at, roots, status) VALUES (?, ?, 'running')",
                                     (time.time(), json.dumps(roots)))
            return cursor.lastrowid

    def finish_run(self, run_id: int, status: str, summary: dict) -> None:
        with self.atomic():
            self.db.execute("UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
                            (time.time(), status, json.dumps(summary), run_id))

    def counts(self) -> dict:
        row = self.query("SELECT SUM(deleted = 0 AND vector IS NOT NULL), SUM(deleted = 0 AND error IS NOT NULL), "
                         "SUM(deleted = 1) FROM images")[0]
        return {"indexed": row[0] or 0, "failed": row[1] or 0, "deleted_kept": row[2] or 0}

    def rows_bound(self) -> int:
        """Rows of any kind: a bound on the indexed photos that SQLite counts from its smallest
        index (40 ms at 1.28M), where `counts` reads every row (0.6 s)."""
        return self.query("SELECT COUNT(*) FROM images")[0][0]

    def failed_rows(self, under: list[bytes] | None = None) -> list[tuple]:
        """(path, error, size, modified_at, indexed_at, failure) of the live failed files, by
        path; only those under the folders `under` when given."""
        failure = "failure" if self.version >= 4 else "NULL"
        where, params = "deleted = 0 AND error IS NOT NULL", []
        if under:
            where += " AND (" + " OR ".join([self.UNDER] * len(under)) + ")"
            params = [p for root in under for p in self.under_params(root)]
        return self.query(f"SELECT filepath, error, size, modified_at, indexed_at, {failure} FROM images "
                          f"WHERE {where} ORDER BY filepath", params)

    def last_run(self) -> dict | None:
        rows = self.query("SELECT started_at, finished_at, roots, status, summary FROM runs ORDER BY id DESC LIMIT 1")
        if not rows:
            return None
        started, finished, roots, status, summary = rows[0]
        return {"started_at": started, "finished_at": finished, "roots": json.loads(roots), "status": status,
                "summary": json.loads(summary) if summary else None}
