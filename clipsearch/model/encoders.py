"""The two encoders. Each opens only its own tower's ONNX graph, lazily, on first use
(`TextEncoder` never touches vision.onnx, so a text query never pays for it). Embeddings
come back L2-normalised float32 [N, D]."""
from __future__ import annotations

import numpy as np

from clipsearch.config import available_cores

from .manifest import Manifest


def session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or available_cores()
    options.log_severity_level = 3
    # Idle threads would busy-wait for the next run, stealing the cores from the decoding
    # workers (index) or from the other session of a query: the text graph's threads spun
    # while the ranking ran, and the ranking's while the next text was encoded. Measured for a
    # warm query at 100,000 photos: 45-53 ms with spinning, 25-28 ms without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path, threads: int | None, fast_start: bool = False):
    """An onnxruntime session. `fast_start` is for a graph run once per process (a text
    query): no graph optimisation and no weight prepacking. Measured on the int8 text graph:
    session creation 51 ms instead of 67 ms (and 85-130 ms with full optimisation), for a
    first run of 5 ms instead of 4 ms. A cached pre-optimised copy measured no better."""
    import onnxruntime as ort

    options = session_options(threads)
    if fast_start:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class TextEncoder:
    """Tokenizer + text graph, one graph run per text (as for images: the int8 graph's
    activation scale covers the whole input tensor, so texts must not share a run). Ids are
    cut right after the text's end token: in fp32 the causal mask makes that identical to
    CLIP's padding to 77 and ~3x faster; under int8 it is no further from fp32 than padding
    is (docs/design.md "Embeddings do not depend on the batch": measured on the probe texts)."""

    def __init__(self, manifest: Manifest, threads: int | None = None, prefetch=None, verify: bool = True,
                 fast_start: bool = True):
        self.manifest = manifest
        self.threads = threads
        self.verify = verify
        self.fast_start = fast_start  # False for a server: optimised once, 4.4-5.2 ms a text instead of 7.8-8.1
        self.prefetch = prefetch  # a tokens.TokenPrefetch already tokenizing in a child process
        self._tokenizer = None
        self._session = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokens import load_tokenizer

            self._tokenizer = load_tokenizer(self.manifest.path("tokenizer.json"))
        return self._tokenizer

    @property
    def session(self):
        if self._session is None:
            self._session = open_session(self.manifest.graph_path("text", self.verify), self.threads,
                                         fast_start=self.fast_start)
        return self._session

    def token_ids(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's ids up to and including its end token, as a [1, L] array."""
        end_id = int(self.manifest.text["end_token_id"])
        prefetched = self.prefetch.ids(texts) if self.prefetch is not None else None
        self.prefetch = None
        if prefetched is None:
            from .tokens import encode_texts

            prefetched = encode_texts(self.tokenizer, list(texts), self.manifest.text.get("clean", "clip"))
        rows = []
        for row in prefetched:
            ids = np.array(row, dtype=np.int64)
            end = int(np.argmax(ids == end_id)) if end_id in row else len(ids) - 1
            rows.append(np.ascontiguousarray(ids[None, : end + 1]))
        return rows

    def encode(self, texts: list[str]) -> np.ndarray:
        graph = self.manifest.graph("text")
        session = self.session  # first: the graph loads while a prefetching child tokenizes
        names = [graph["output"]]
        return l2_normalise(np.concatenate([session.run(names, self.feed(ids))[0] for ids in self.token_ids(texts)]))

    def feed(self, ids: np.ndarray) -> dict:
        """A text's ids as its graph takes them. Graphs pulled from other layouts may want
        int32 ids, a fixed token axis (Immich's: 77, padded; the causal mask, or the attention
        mask of a bidirectional tower, makes what follows the end token irrelevant), an
        attention mask (ones over the text) or inputs fed zeros (`zero_inputs`)."""
        graph = self.manifest.graph("text")
        fixed = graph.get("fixed_length")
        if graph.get("input_dtype") == "int32":
            ids = ids.astype(np.int32)
        mask = np.ones_like(ids)
        if fixed and ids.shape[1] < fixed:
            pad = np.full((1, fixed - ids.shape[1]), int(self.manifest.text["pad_token_id"]), dtype=ids.dtype)
            ids, mask = np.concatenate([ids, pad], axis=1), np.concatenate([mask, np.zeros_like(pad)], axis=1)
        feed = {graph["input"]: ids}
        if graph.get("mask_input"):
            feed[graph["mask_input"]] = mask
        for name in graph.get("zero_inputs", ()):
            feed[name] = np.zeros_like(ids)
        return feed


class ImageEncoder:
    """The vision graph: preprocessed pixels in, unit vectors out (decoding and preprocessing
    are `photos/preprocess.py`'s, the indexing worker's is `index/embed.EmbedWorker`)."""

    def __init__(self, manifest: Manifest, threads: int | None = None, verify: bool = True):
        self.manifest = manifest
        self.verify = verify
        self.threads = threads
        self._session = None

    @property
    def session(self):
        if self._session is None:
            path = self.manifest.graph_path("vision", verify=self.verify)
            self._session = open_session(path, self.threads)
        return self._session

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """One graph run per image: the int8 graph quantizes activations with one scale per
        input tensor, so an image run in a batch would get a vector that depends on its
        neighbours (cosine 0.99986 on random weights, far worse beside an extreme image).
        Run alone, a photo gets the same vector in the indexer, in `--like` and on a cluster.
        Measured cost (bench/index.py): see docs/design.md "Performance"."""
        graph = self.manifest.graph("vision")
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        session, names, source = self.session, [graph["output"]], graph["input"]
        return l2_normalise(np.concatenate([session.run(names, {source: batch[i : i + 1]})[0]
                                            for i in range(len(batch))]))


def check_reference(manifest: Manifest, tower: str, threads: int | None = None, tolerance: float = 1e-3) -> float:
    """Embed the manifest's reference input and compare with the values stored at export
    time. Returns the largest absolute difference; raises ModelError above `tolerance`."""
    from clipsearch.errors import ModelError

    reference = manifest.data["reference"][tower]
    if tower == "text":
        vector = TextEncoder(manifest, threads).encode([reference["text"]])[0]
    else:
        from clipsearch.photos.preprocess import reference_image, to_pixels

        pixels = to_pixels(reference_image(), manifest.image)[None]
        vector = ImageEncoder(manifest, threads).encode_pixels(pixels)[0]
    expected = np.asarray(reference["first_values"], dtype=np.float32)
    diff = float(np.abs(vector[: len(expected)] - expected).max())
    if diff > tolerance:
        raise ModelError(
            f"{manifest.folder}: the {tower} graph does not reproduce its export-time reference "
            f"(max diff {diff:.2g} > {tolerance}); the files or onnxruntime build differ: re-export the model"
        )
    return diff
