"""Ranking a query vector over the packed int8 rows (`cache/packed.py`): onnxruntime's integer
GEMM per block (`rank.onnx` beside this module), each block's best candidates re-scored in
float32, only the rows a selection keeps, the overlay of rows changed since the file was
written, and the top k kept without a full sort.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clipsearch.cache.columns import drop_members, member
from clipsearch.cache.packed import (
    BLOCK_ROWS,
    ROW_ZERO,
    MappedMatrices,
    current_packed,
    iter_blocks,
    quantize_rows,
    read_scales,
    signed_rows,
)

CANDIDATES = 64  # per block: rows re-scored exactly after the integer pass


class IntegerScorer:
    """block . query for a block of stored rows (uint8, int8 + 128), with onnxruntime's
    integer GEMM (a MatMulInteger graph shipped as clipsearch/rank.onnx). The block is the
    left operand, which onnxruntime streams; the query, the right one, is all it packs.
    Measured on 2 cores (AVX-512 VNNI) per 65,536-row block: 2.7 ms; with the block as the
    right operand it packed 32 MB per block and query, 13 ms (bench/shards.py, 10M photos).

    The query is quantized to 7 bits (-64..64): u8 x s8 pairs then sum below 32767 (255 x 64
    x 2), so CPUs without VNNI, whose U8S8 kernel adds pairs in int16 with saturation, stay
    exact. The quantization error (~0.2% of a score) only picks candidates; each block's best
    CANDIDATES rows are re-scored in float32.

    `keep_mapped`: a scorer that lives across queries (`serve`) keeps each packed file mapped
    (`cache/packed.MappedMatrices`); a one-off query maps block by block and unmaps as it goes."""

    def __init__(self, keep_mapped: bool = False):
        from clipsearch.model.encoders import open_session

        self.session = open_session(Path(__file__).with_name("rank.onnx"), threads=None)
        self.zero = np.array(ROW_ZERO, dtype=np.uint8)
        self.matrices = MappedMatrices() if keep_mapped else None

    def rows(self, packed) -> tuple[np.ndarray, object]:
        """(scales [count], iterable of (first row, uint8 block [rows, dim])) of `packed`."""
        whole = self.matrices.get(packed) if self.matrices is not None else None
        if whole is None:
            return read_scales(packed), iter_blocks(packed)
        rows, scales = whole
        return scales, ((start, rows[start : start + BLOCK_ROWS]) for start in range(0, packed.count, BLOCK_ROWS))

    def prepare(self, query: np.ndarray) -> tuple[np.ndarray, float]:
        peak = float(np.abs(query).max()) or 1.0
        step = peak / 64.0
        return np.rint(query / step).astype(np.int8)[:, None], step

    def dots(self, prepared: np.ndarray, block: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"block": block, "query": prepared, "block_zero": self.zero})[0][:, 0]


# A block whose rows a filter keeps at most this share of has those rows gathered (np.take
# along the row axis: 2-5 ms per 65536-row block) and scored alone; a denser one is scored
# whole (5 ms) with the others masked (bench/filters.py).
GATHER = 0.15


def top_k(query: np.ndarray, store, dim: int, k: int, allowed_ids: np.ndarray | None = None,
          scorer: IntegerScorer | None = None, selection=None) -> list[tuple[int, float]]:
    """Best k (id, score) by cosine, optionally among `allowed_ids` (sorted int64) or the
    rows of a `search/select.Selection` (which then also fixes the packed file and delta used).
    Scores are exact float32 cosines of the stored int8 rows and `query` (`cosines`)."""
    query = np.asarray(query, dtype=np.float32)
    query_int8 = quantize_rows(query[None])[0][0]
    if selection is not None:
        packed, delta, keep = selection.packed, selection.delta, selection.keep
        live = [row for row in delta if not row[1] and row[2] is not None]
        live = [row for row, ok in zip(live, member(np.array([r[0] for r in live], dtype=np.int64),
                                                    selection.delta_ids)) if ok]
    else:
        packed, delta = current_packed(store, dim)
        changed = np.array(sorted(row[0] for row in delta), dtype=np.int64)
        if packed is not None and packed.count:
            keep = np.ones(packed.count, dtype=bool)
            drop_members(keep, packed.ids, changed)
            if allowed_ids is not None:
                keep &= member(packed.ids, allowed_ids)
        live = [row for row in delta if not row[1] and row[2] is not None
                and (allowed_ids is None or member(np.array([row[0]]), allowed_ids)[0])]
    best_ids, best_scores = [], []
    if packed is not None and packed.count:
        scorer = scorer or IntegerScorer()
        scales, blocks = scorer.rows(packed)
        prepared, _ = scorer.prepare(query)
        shortlist = max(CANDIDATES, 4 * k)
        for start, block in blocks:
            rows = block.shape[0]
            kept = keep[start : start + rows]
            whole = bool(kept.all())
            positions = None  # the block's rows start..start+rows, unless gathered
            if not whole:
                picked = np.flatnonzero(kept)
                if not len(picked):
                    continue
                if len(picked) <= GATHER * rows:
                    block, positions = np.take(block, picked, axis=0), start + picked
            # Candidates by dot x scale (the query's own step is one positive factor: no reorder),
            # negated in place: float32, no copies (a block's overhead beside its GEMM).
            approx = scorer.dots(prepared, block).astype(np.float32)
            approx *= scales[start : start + rows] if positions is None else scales[positions]
            np.negative(approx, out=approx)
            if positions is None and not whole:
                approx[~kept] = np.inf
            picked = np.argpartition(approx, shortlist - 1)[:shortlist] if len(approx) > shortlist \
                else np.arange(len(approx))
            picked = picked[np.isfinite(approx[picked])]
            ids = packed.ids[start + picked] if positions is None else packed.ids[positions[picked]]
            _collect(cosines(query, signed_rows(block[picked]), query_int8), ids, k, best_ids, best_scores)
    if live:
        matrix = np.frombuffer(b"".join(row[2] for row in live), dtype=np.int8).reshape(len(live), dim)
        _collect(cosines(query, matrix, query_int8), np.array([row[0] for row in live], dtype=np.int64), k, best_ids,
                 best_scores)
    if not best_ids:
        return []
    ids, scores = np.concatenate(best_ids), np.concatenate(best_scores)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in order if np.isfinite(scores[i])]


def cosines(query: np.ndarray, rows: np.ndarray, query_int8: np.ndarray) -> np.ndarray:
    """Exact cosines of a unit query and int8 rows [N, D] (their scales cancel out). A row
    that is the query itself, quantized (`--like` of an indexed photo), scores exactly 1:
    int8 rounding alone left it at 0.9999x, or above 1 without the norm, and a resized copy
    could outrank the very file. `query_int8`: the query quantized, computed once per ranking."""
    rows_f = rows.astype(np.float32)
    norms = np.linalg.norm(rows_f, axis=1)
    scores = (rows_f @ query) / np.where(norms > 0, norms, 1.0)
    same = np.all(rows == query_int8, axis=1)
    scores[same] = 1.0
    return np.minimum(scores, 1.0)


def _collect(scores: np.ndarray, ids: np.ndarray, k: int, best_ids: list, best_scores: list) -> None:
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[part], ids[part]
    best_ids.append(ids)
    best_scores.append(scores)
