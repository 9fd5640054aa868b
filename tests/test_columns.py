"""The filter columns: the same rows pass a filter whether it is evaluated over the packed
file's columns or over the database rows changed since it was written, and both agree with a
plain Python reading of the filter's definition. A real SQLite cache of synthetic photos."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from clipsearch.cache.packed import current_packed, quantize_rows, write_packed
from clipsearch.cache.store import Store
from clipsearch.search.filters import distance_m, make_filters
from clipsearch.search.rank import top_k
from clipsearch.search.select import select

DIM = 8
COUNT = 3000
KEYWORDS = ["beach", "Family", "ÄPFEL", "snow", "dog"]
CAMERAS = [("Canon", "EOS 80D"), ("FUJIFILM", "X-T3"), (None, "Pixel 7"), ("Apple", None), (None, None)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """COUNT photos with varied, partly missing metadata; some deleted, some failed."""
    db = tmp_path_factory.mktemp("columns") / "index.db"
    rng = np.random.default_rng(7)
    store = Store(db)
    store.check_model("model-id", "model", claim=True)
    unit = rng.normal(size=(COUNT, DIM)).astype(np.float32)
    q, scales = quantize_rows(unit / np.linalg.norm(unit, axis=1, keepdims=True))
    with store.atomic():
        seq = store.next_seq()
        store.insert_rows((f"/p/{i % 7}/{i}.jpg".encode(), f"/p/{i % 7}".encode(), 1, 100 + i, bytes([i % 256]) * 32,
                           None if i % 97 == 0 else q[i].tobytes(), float(scales[i]), seq, time.time())
                          for i in range(COUNT))
        store.db.execute("UPDATE images SET deleted = 1 WHERE id % 89 = 0")
        ids = [row[0] for row in store.query("SELECT id FROM images ORDER BY id")]
        described = {}
        for row_id in ids:
            if rng.random() < 0.1:
                continue  # metadata never read
            make, model = CAMERAS[rng.integers(len(CAMERAS))]
            described[row_id] = (row_id, None if rng.random() < 0.2 else float(rng.uniform(1.4e9, 1.8e9)), make, model,
                                 None if rng.random() < 0.3 else float(rng.uniform(-89, 89)),
                                 None if rng.random() < 0.3 else float(rng.uniform(-179, 179)),
                                 None if rng.random() < 0.2 else int(rng.integers(-1, 6)),
                                 json.dumps(sorted({KEYWORDS[k] for k in rng.integers(0, len(KEYWORDS), rng.integers(0, 3))})))
        store.insert_meta_rows(described.values(), seq)
    write_packed(store, DIM)
    store.close()
    return db


FILTERS = [
    dict(after="2015"), dict(before="2018-03-04T05:06:07"), dict(after="2012", before="2020"),
    dict(camera="canon"), dict(camera="PIXEL"), dict(camera="e"), dict(camera="nikon"),
    dict(near="10,20", within="4000km"), dict(near="0,179", within="3000km"), dict(near="89.9,0", within="800km"),
    dict(tags=("family",)), dict(tags=("äpfel",)), dict(tags=("beach", "dog")), dict(tags=("unknown",)),
    dict(min_rating=-1), dict(min_rating=3),
    dict(after="2014", camera="fuji", min_rating=2, tags=("snow",)),
]


def reference(store, filters) -> set[int]:
    """The filter's definition, row by row, in Python."""
    kept = set()
    rows = store.query("SELECT i.id, m.taken_key, m.make, m.model, m.lat, m.lon, m.rating, m.keywords FROM images i "
                       "LEFT JOIN photo_meta m ON m.image_id = i.id WHERE i.deleted = 0 AND i.vector IS NOT NULL")
    for row_id, taken, make, model, lat, lon, rating, keywords in rows:
        if filters.after is not None and (taken is None or taken < filters.after):
            continue
        if filters.before is not None and (taken is None or taken >= filters.before):
            continue
        if filters.camera and (make is None and model is None
                               or filters.camera.lower() not in f"{make or ''} {model or ''}".lower()):
            continue
        if filters.near is not None and (lat is None or lon is None
                                         or distance_m(filters.near, (lat, lon)) > filters.within_m):
            continue
        if filters.min_rating is not None and (rating is None or rating < filters.min_rating):
            continue
        if not {t.lower() for t in filters.tags} <= {k.lower() for k in json.loads(keywords or "[]")}:
            continue
        kept.add(row_id)
    return kept


@pytest.mark.parametrize("options", FILTERS, ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()))
def test_packed_columns_and_changed_rows_agree_with_the_definition(cache, options):
    filters = make_filters(**options)
    store = Store(cache, readonly=True)
    try:
        expected = reference(store, filters)
        packed, delta = current_packed(store, DIM)
        assert packed is not None and not delta
        from_columns = select(store, packed, delta, filters)
        from_database = select(store, None, store.changed_since(-1), filters)  # as with no packed file at all
        assert set(from_columns.ids().tolist()) == expected
        assert set(from_database.ids().tolist()) == expected
        under = np.array(store.vector_ids_under(b"/p/3"), dtype=np.int64)
        assert set(select(store, packed, delta, filters, under).ids().tolist()) == expected & set(under.tolist())
        # The ranking sees exactly the selected rows, through either view.
        query = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
        for selection in (from_columns, from_database):
            assert {row_id for row_id, _ in top_k(query, store, DIM, COUNT, selection=selection)} == expected
    finally:
        store.close()


def test_listing_is_newest_first_with_undated_last(cache):
    store = Store(cache, readonly=True)
    try:
        packed, delta = current_packed(store, DIM)
        order = select(store, packed, delta, make_filters(camera="canon")).newest_first(None)
        taken = dict(store.query("SELECT image_id, taken_key FROM photo_meta"))
        keys = [(taken[row_id] is None, -(taken[row_id] or 0), row_id) for row_id in order]
        assert keys == sorted(keys) and len(order) == len(reference(store, make_filters(camera="canon")))
        assert select(store, packed, delta, make_filters(camera="canon")).newest_first(5) == order[:5]
    finally:
        store.close()
