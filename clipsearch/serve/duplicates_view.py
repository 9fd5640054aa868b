"""The page's Duplicates view: `/api/duplicates`, the groups of `clipsearch duplicates` as JSON
(`health/report.py`, the one entry point), a page of groups at a time. Grouping a library takes
seconds (100,000 photos: 3.8 s), so the report is kept until the cache changes (its change
counters move) and pages are cut from it."""
from __future__ import annotations

import threading


class DuplicatesView:
    def __init__(self, db_path, model_dir):
        self.db_path, self.model_dir = db_path, model_dir
        self.lock = threading.Lock()
        self.kept: tuple | None = None  # (cache seq, kinds, report)

    def page(self, kind: str, offset: int, top: int) -> dict:
        """`kind`: "exact,same" and the like (empty: all kinds)."""
        from clipsearch.cache.library import Library
        from clipsearch.health.duplicates import KINDS
        from clipsearch.health.report import duplicate_report, group_json

        kinds = tuple(k for k in KINDS if k in kind.split(",")) or KINDS

        library = Library(self.db_path)
        try:
            seq = library.change_counters()
        finally:
            library.close()
        with self.lock:  # one grouping at a time; the next requests use its result
            if self.kept is None or self.kept[:2] != (seq, kinds):
                self.kept = (seq, kinds, duplicate_report(self.db_path, self.model_dir, kinds))
            report = self.kept[2]
        groups = report.groups[offset : offset + top]
        return {"groups": [group_json(report, group) for group in groups], "notes": report.notes,
                "total": len(report.groups), "more": offset + top < len(report.groups)}
