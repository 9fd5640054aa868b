"""The int8 vector cache and the derived packed file: exact ranking, staleness, damage."""
from __future__ import annotations

import numpy as np

from clipsearch.cache.packed import packed_path, quantize_rows, read_header, write_packed
from clipsearch.cache.store import Store
from clipsearch.search.rank import top_k

DIM = 16


def fill(store: Store, vectors: np.ndarray, start: int = 0) -> None:
    q, scales = quantize_rows(vectors)
    with store.atomic():
        seq = store.next_seq()
        for i, (row, scale) in enumerate(zip(q, scales)):
            path = f"/lib/{start + i:06d}.jpg".encode()
            store.put_vector(path, b"/lib", 1, 1, b"f", row.tobytes(), float(scale), seq)


def unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_int8_rows_keep_ranking_and_scores(tmp_path):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 5000)
    store = Store(tmp_path / "index.db")
    store.check_model("m", "m", claim=True)
    fill(store, vectors)
    query = unit(rng, 1)[0]
    exact = vectors @ query
    best = top_k(query, store, DIM, 10)
    assert [row_id - 1 for row_id, _ in best] == list(np.argsort(-exact)[:10])
    assert max(abs(score - exact[row_id - 1]) for row_id, score in best) < 0.01
    assert read_header(packed_path(store.path)).count == 5000


def test_changes_after_the_packed_file_are_overlaid_and_deletions_hidden(tmp_path):
    rng = np.random.default_rng(1)
    store = Store(tmp_path / "index.db")
    store.check_model("m", "m", claim=True)
    fill(store, unit(rng, 3000))
    write_packed(store, DIM)
    query = unit(rng, 1)[0]
    fill(store, query[None] * 1.0, start=5000)  # a new perfect match, only in the database
    with store.atomic():
        store.mark_deleted([1, 2, 3], store.next_seq())
    best = top_k(query, store, DIM, 5)
    assert best[0][0] == 3001 and best[0][1] > 0.99
    assert read_header(packed_path(store.path)).seq < int(store.meta("seq"))  # small delta: overlaid, not rebuilt
    assert not {1, 2, 3} & {row_id for row_id, _ in top_k(-query, store, DIM, 3000)}


def test_missing_damaged_or_foreign_packed_file_is_rebuilt(tmp_path):
    rng = np.random.default_rng(2)
    store = Store(tmp_path / "index.db")
    store.check_model("m", "m", claim=True)
    vectors = unit(rng, 500)
    fill(store, vectors)
    query = vectors[42]
    expected = top_k(query, store, DIM, 3)
    path = packed_path(store.path)
    for damage in (lambda: path.unlink(), lambda: path.write_bytes(path.read_bytes()[:-7]),
                   lambda: path.write_bytes(b"garbage" * 100)):
        damage()
        assert top_k(query, store, DIM, 3) == expected
        assert read_header(path) is not None
    with store.atomic():
        store.set_meta("model_id", "another-model")
    assert top_k(query, store, DIM, 3) == expected and read_header(path).model_id == "another-model"


def test_a_reader_keeps_the_version_it_opened_while_an_index_run_replaces_it(tmp_path):
    from clipsearch.cache.packed import iter_blocks, read_scales, signed_rows

    rng = np.random.default_rng(3)
    store = Store(tmp_path / "index.db")
    store.check_model("m", "m", claim=True)
    fill(store, unit(rng, 100))
    old = write_packed(store, DIM)
    old_rows = np.concatenate([signed_rows(block) for _, block in iter_blocks(old)])
    assert np.array_equal(old_rows, quantize_rows(unit(np.random.default_rng(3), 100))[0])  # the vectors as stored
    fill(store, unit(rng, 900), start=100)
    new = write_packed(store, DIM)  # os.replace under the open reader
    assert new.count == 1000 and old.count == 100
    again = np.concatenate([signed_rows(block) for _, block in iter_blocks(old)])
    assert np.array_equal(old_rows, again) and len(read_scales(old)) == 100


def test_integer_pass_over_several_blocks_finds_the_exact_top_k(tmp_path):
    from clipsearch.cache.packed import BLOCK_ROWS

    rng = np.random.default_rng(4)
    count = BLOCK_ROWS * 2 + 1234
    vectors = unit(rng, count)
    store = Store(tmp_path / "index.db")
    store.check_model("m", "m", claim=True)
    fill(store, vectors)
    q, scales = quantize_rows(vectors)
    stored = q.astype(np.float32)  # what the cache holds, as directions: scores are cosines
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    for _ in range(5):
        query = unit(rng, 1)[0]
        exact = stored @ query
        best = top_k(query, store, DIM, 10)
        assert [row_id - 1 for row_id, _ in best] == list(np.argsort(-exact, kind="stable")[:10])
        assert np.allclose([score for _, score in best], np.sort(exact)[::-1][:10], atol=1e-5)
