"""One query over every shard of a library (`cache/library.py`): each shard selects its rows
(filters, `--in`) and ranks them against its own packed file, on all cores at once, and the
best `k` of all are merged by score (or, listing with filters alone, by capture time). A
library of one database runs exactly the one-database path, in this thread.

Threads, not processes: onnxruntime's integer GEMM and numpy release the GIL, and a process
per shard would pay its start and its imports per query (measured in `bench/shards.py`).
"""
from __future__ import annotations

import numpy as np

from clipsearch.cache.library import Library, global_id

MAX_THREADS: int | None = None  # None: one per core (bench/shards.py sets 1 to time the shards one after the other)


def _in_parallel(library: Library, within: bytes | None, work) -> list:
    """`work(number, store)` for each present shard (those that can hold `within`), in
    parallel when there are several and several cores."""
    from clipsearch.config import available_cores

    shards = library.each(within)
    threads = min(len(shards), MAX_THREADS or available_cores())
    if threads == 1:
        return [work(number, store) for number, store in shards]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads,
                            thread_name_prefix="clipsearch-shard") as pool:
        return list(pool.map(lambda shard: work(*shard), shards))


def selections(library: Library, dim: int, filters, folder: bytes | None) -> dict:
    """Shard number -> its `search/select.Selection` (rows passing the filters, under `folder`)."""
    from .select import select_rows

    return dict(_in_parallel(library, folder, lambda number, store: (
        number, select_rows(store, dim, filters, folder))))


def rank(library: Library, manifest, vector, k: int, folder: bytes | None, chosen: dict | None,
         scorer=None) -> list[tuple[int, bytes, float]]:
    """The best `k` (global id, path, score) of all shards, best first; `chosen`: each
    shard's selection (filters), when there are filters."""
    from .query import ranked

    def one(number, store):
        selection = chosen.get(number) if chosen is not None else None
        if chosen is not None and (selection is None or not len(selection)):
            return []
        return [(global_id(number, row_id), path, score)
                for row_id, path, score in ranked(store, manifest, vector, k, folder, selection=selection,
                                                  scorer=scorer)]

    found = [row for rows in _in_parallel(library, folder, one) for row in rows]
    found.sort(key=lambda row: (-row[2], row[0]))
    return found[:k]


def newest(chosen: dict, limit: int | None) -> list[int]:
    """Global ids of the selected rows by capture time, newest first, undated last (as
    `Selection.newest_first`), across shards."""
    ids, taken = [], []
    for number, selection in chosen.items():
        order = selection.newest_first(limit)
        if not order:
            continue
        by_id = dict(zip(selection.ids().tolist(), selection.taken.tolist()))
        ids += [global_id(number, row_id) for row_id in order]
        taken += [by_id[row_id] for row_id in order]
    if not ids:
        return []
    ids_array, taken_array = np.array(ids, dtype=np.int64), np.array(taken, dtype=np.float64)
    order = np.lexsort((ids_array, -np.nan_to_num(taken_array, nan=0.0), np.isnan(taken_array)))
    return [int(gid) for gid in ids_array[order[:limit] if limit else order]]
