"""`clipsearch query`: turn query terms into one vector and rank the cache with it.

A query is a weighted sum of terms, each a text or an image; the sum is L2-normalised.
Texts are always taken literally ("16:9 panorama", "3:30 pm", "-1 degrees"); a weight is
only ever given explicitly, `--weighted W TEXT` (W may be negative); `--not TEXT` subtracts;
images come from `--like IMAGE` (+1) / `--unlike IMAGE` (-1). Only the towers a query needs
are opened.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from clipsearch.errors import UsageError

from .answer import Answer

# numpy is imported inside the functions: `query` forks its tokenizer child before numpy loads.


# numpy is imported inside the functions: `query` forks its tokenizer child before numpy loads.

@dataclass(frozen=True)
class Term:
    kind: str  # "text", "image" (a file) or "row" (a cached photo's stored vector, by row id)
    value: str
    weight: float = 1.0


def parse_terms(texts: list[str], like: list[str], unlike: list[str], negated: list[str] = (),
                weighted: list[tuple[float, str]] = ()) -> list[Term]:
    terms = []
    for weight, text in [(1.0, t) for t in texts] + [(-1.0, t) for t in negated] + list(weighted):
        if not text.strip():
            raise UsageError(f"query term {text!r} is empty; give some words to search for")
        if weight == 0:
            raise UsageError(f"--weighted 0 {text!r} does nothing; give a weight other than 0")
        terms.append(Term("text", text, float(weight)))
    terms += [Term("image", path, 1.0) for path in like] + [Term("image", path, -1.0) for path in unlike]
    if not terms:
        raise UsageError("nothing to search for: give TEXT, or --like IMAGE")
    return terms


def query_vector(terms: list[Term], manifest, threads: int | None = None, prefetch=None, pipeline: str | None = None,
                 encoder=None, stored: dict | None = None, text_manifest=None):
    """The unit query vector. `pipeline` is the cache's (`store.meta("pipeline")`): query
    images are decoded as its photos were, draft or exact. `encoder`: a warm TextEncoder to
    use; `stored`: row id -> unit vector of the "row" terms; `text_manifest`: the text tower
    reading the texts (`--text-model`; default the model's own)."""
    import numpy as np

    from clipsearch.model.encoders import TextEncoder, l2_normalise

    total = np.zeros(manifest.embedding_dim, dtype=np.float32)
    texts = [t for t in terms if t.kind == "text"]
    if texts:
        vectors = (encoder or TextEncoder(text_manifest or manifest, threads, prefetch)).encode([t.value for t in texts])
        total += np.asarray([t.weight for t in texts], dtype=np.float32) @ vectors
    for term in (t for t in terms if t.kind == "row"):
        total += term.weight * stored[int(term.value)]
    images = [t for t in terms if t.kind == "image"]
    if images:
        from clipsearch.photos.preprocess import draft_pipeline

        total += image_terms(images, manifest, threads, draft_pipeline(pipeline))
    if not np.any(total):
        raise UsageError("the query terms cancel out; change their weights")
    if len(terms) == 1 and terms[0].weight > 0:
        # Already a unit vector: normalising again would move its last bits, and `--like
        # photo.jpg` must be exactly that photo's vector in the cache.
        return total / np.float32(terms[0].weight)
    return l2_normalise(total[None])[0]


def image_terms(images: list[Term], manifest, threads: int | None, use_draft: bool = True):
    import numpy as np

    from clipsearch.model.encoders import ImageEncoder
    from clipsearch.photos.preprocess import ImageDecodeError, load_pixels

    pixels = []
    for term in images:
        if os.path.isdir(term.value):
            raise UsageError(f"{term.value}: is a folder; --like/--unlike take one image file each")
        if not os.path.isfile(term.value):
            raise UsageError(f"{term.value}: no such image file for --like/--unlike")
        try:
            pixels.append(load_pixels(term.value, manifest.image, use_draft))
        except (ImageDecodeError, OSError) as exc:
            raise UsageError(f"{term.value}: cannot use as a query image ({exc})") from None
    vectors = ImageEncoder(manifest, threads).encode_pixels(np.stack(pixels))
    return np.asarray([t.weight for t in images], dtype=np.float32) @ vectors


def search(store, manifest, vector, top: int, within: bytes | None = None, allowed=None) -> list[tuple[bytes, float]]:
    return [(path, score) for _, path, score in ranked(store, manifest, vector, top, within, allowed)]


def ranked(store, manifest, vector, top: int, within: bytes | None = None, allowed=None,
           selection=None, scorer=None) -> list[tuple[int, bytes, float]]:
    """Best `top` (id, path, score) among the live rows (under `within`; among `allowed`, a
    sorted id array, or the rows of a `search/select.Selection`, when given)."""
    import numpy as np

    from .rank import top_k

    if allowed is None and selection is None and within is not None:
        allowed = np.array(store.vector_ids_under(within), dtype=np.int64)
    best = top_k(vector, store, manifest.embedding_dim, top, allowed, scorer, selection)
    if not best:
        return []
    paths = store.paths_of([row_id for row_id, _ in best])
    return [(row_id, paths[row_id], score) for row_id, score in best if row_id in paths]


DEFAULT_TOP = 10


class WarmEngine:
    """What a long-running process (`serve`) keeps loaded between queries: the manifest, the
    text encoder (tokenizer and session) and the ranking's integer scorer. All are safe to
    share between threads once loaded; `warm` loads them."""

    def __init__(self, model_dir, threads: int | None = None, text_model_dir=None):
        from clipsearch.model.encoders import TextEncoder
        from clipsearch.model.manifest import load_manifest, load_text_model

        from .rank import IntegerScorer

        self.manifest = load_manifest(model_dir)
        self.text_manifest = load_text_model(text_model_dir) if text_model_dir else self.manifest
        self.text = TextEncoder(self.text_manifest, threads, fast_start=False)
        self.scorer = IntegerScorer(keep_mapped=True)

    def warm(self) -> None:
        self.text.encode(["a photo"])

    def check(self, library) -> None:
        """The library (`cache/library.Library`) was indexed with this model, and the text
        tower searches its photos."""
        library.check_model(self.manifest.model_id, self.manifest.name)
        check_text_model(library, self.manifest, self.text_manifest)


def run_query(texts: list[str], db_path, model_dir, top: int | None = DEFAULT_TOP, *, weighted=(), negated=(), like=(),
              unlike=(), within: str | None = None, threads: int | None = None, min_score: float | None = None,
              filters=None, sort: str = "score", with_meta: bool = False, like_rows=(), offset: int = 0,
              engine=None, text_model_dir=None) -> Answer:
    """A whole query, as `clipsearch query` (and a server, and `tag`) runs it: terms, model,
    cache, scope and metadata filters, vector, ranking. `min_score` keeps the results whose
    cosine reaches it; with it and no `top`, every such result. Filters select rows first and
    the ranking runs over those only; with filters and no terms, the matching photos are
    listed newest first. `sort="date"` orders the chosen results newest first. `like_rows`:
    cached photos (row ids) whose stored vectors are query terms ("more like this");
    `offset`: skip that many of the best (pages); `engine`: a `WarmEngine` whose model stays
    loaded between queries (the server); `text_model_dir`: another text tower for the texts
    (`check_text_model`). Cold, the tokenizer is forked off first, before numpy
    and onnxruntime load (`model/tokens.py`): keep heavy imports below that line."""
    from clipsearch.model.manifest import load_manifest, load_text_model
    from clipsearch.model.tokens import TokenPrefetch

    from .filters import Filters

    filters = filters or Filters()
    listing = filters.active and not (texts or like or unlike or negated or weighted or like_rows)
    terms = [] if listing else [Term("row", str(int(row_id))) for row_id in like_rows] + (
        parse_terms(list(texts), list(like), list(unlike), list(negated), list(weighted))
        if (texts or like or unlike or negated or weighted or not like_rows) else [])
    manifest = engine.manifest if engine is not None else load_manifest(model_dir)
    text_manifest = engine.text_manifest if engine is not None else (
        load_text_model(text_model_dir) if text_model_dir else manifest)
    prefetch_texts = [term.value for term in terms if term.kind == "text"]
    prefetch = TokenPrefetch(text_manifest, prefetch_texts) if prefetch_texts and engine is None else None

    from clipsearch.cache.library import Library
    from clipsearch.photos.walk import normalise_root

    from . import fanout

    library = Library(db_path)
    absent = library.absent_notes()
    try:
        library.check_model(manifest.model_id, manifest.name)
        check_text_model(library, manifest, text_manifest)
        folder = None
        if within is not None:
            if not os.path.isdir(within):
                raise UsageError(f"{within}: --in needs an existing folder")
            folder = normalise_root(within)
        chosen = fanout.selections(library, manifest.embedding_dim, filters, folder) if filters.active else None
        if listing:
            order = fanout.newest(chosen, top + offset if top else None)[offset:]
            paths = library.paths_of(order)
            found = [(row_id, paths[row_id], None) for row_id in order if row_id in paths]
        elif chosen is not None and not sum(len(selection) for selection in chosen.values()):
            found = []
        else:
            stored = library.unit_vectors([int(t.value) for t in terms if t.kind == "row"])
            missing = [t.value for t in terms if t.kind == "row" and int(t.value) not in stored]
            if missing:
                raise UsageError(f"photo #{missing[0]} is not in the cache (any more): search again")
            vector = query_vector(terms, manifest, threads, prefetch, library.meta("pipeline"),
                                  engine.text if engine is not None else None, stored, text_manifest)
            if top is None:
                top = max(1, library.rows_bound()) if min_score is not None else DEFAULT_TOP
            found = fanout.rank(library, manifest, vector, top + offset, folder, chosen,
                                engine.scorer if engine is not None else None)[offset:]
            if min_score is not None and found and found[0][2] < min_score:
                return Answer([], [f"clipsearch: no photo reaches --min-score {min_score} (the best scores "
                                   f"{found[0][2]:.4f})"] + absent)
            if min_score is not None:
                found = [row for row in found if row[2] >= min_score]
        meta = library.metadata_of([row[0] for row in found]) if (with_meta or sort == "date") and found else {}
        companions = library.companions_of([row[0] for row in found])
        tried = [selection.photos_unread() for selection in chosen.values()] if chosen is not None and not found else []
        indexed, unread = (sum(counts) for counts in zip(*tried)) if tried else (0, 0)
    finally:
        library.close()
    if sort == "date":
        found.sort(key=lambda row: (meta.get(row[0], {}).get("taken_key") is None,
                                    -(meta.get(row[0], {}).get("taken_key") or 0)))
    if not found and not offset:
        if indexed:
            hint = f"; the metadata of {unread} photos is not read yet: run `clipsearch index`" if unread else ""
            return Answer([], [f"clipsearch: no photo matches the filters{hint}"] + absent)
        return Answer([], [no_results_reason(within, library.path)] + absent)
    results = [(path, score) for _, path, score in found]
    by_path = {path: meta[row_id] for row_id, path, _ in found if row_id in meta} if with_meta else {}
    return Answer(results, ([f"note: {manifest.untrained}"] if manifest.untrained else []) + absent, by_path,
                  [row_id for row_id, _, _ in found], {path: companions[row_id] for row_id, path, _ in found
                                                       if row_id in companions})


def check_text_model(store, manifest, text_manifest) -> None:
    """A text tower other than the model's own searches a cache only when it was trained to
    match the image tower that embedded its photos (recorded by `index`; caches from before
    that: the model's, which `check_model` has just matched to the cache)."""
    if text_manifest is manifest:
        return
    from clipsearch.errors import ModelMismatchError

    made_with = store.meta("image_tower") or manifest.image_tower
    if text_manifest.image_tower != made_with or text_manifest.embedding_dim != manifest.embedding_dim:
        raise ModelMismatchError(
            f"text model {text_manifest.name} reads queries for photos embedded by the image tower "
            f"{text_manifest.image_tower}; those in {store.path} were embedded by {made_with} (model {manifest.name}): "
            "use a text model made for that one, or leave out --text-model / CLIPSEARCH_TEXT_MODEL")


def no_results_reason(within: str | None, db_path) -> str:
    if within is not None:
        from pathlib import Path

        from clipsearch.photos.walk import DEFAULT_EXCLUDES, Walker

        skipped = [part for part in Path(os.path.abspath(within)).parts
                   if Walker(DEFAULT_EXCLUDES).excluded(os.fsencode(part))]
        if skipped:
            return (f"clipsearch: no indexed images under {within}: {skipped[0]} folders are never indexed "
                    f"(see `clipsearch index --list-excludes`); search its parent folder instead")
        return f"clipsearch: no indexed images under {within} in {db_path}; run `clipsearch index {within}` first"
    return f"clipsearch: no indexed images in {db_path}; run `clipsearch index PATH` first"
