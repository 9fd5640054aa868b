"""The two encoders. Each opens only its own tower's ONNX graph, lazily, on first use
(`TextEncoder` never touches vision.onnx, so a text query never pays for it). Embeddings
come back L2-normalised float32 [N, D]."""
from __future__ import annotations

import numpy as np

from .config import available_cores
from .manifest import Manifest


def session_options(threads: int | None, background: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or available_cores()
    options.log_severity_level = 3
    if background:
        # Idle ORT threads otherwise busy-wait, stealing CPU from the decoding workers.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path, threads: int | None, background: bool = False, fast_start: bool = False):
    """An onnxruntime session. `fast_start` is for a graph run once per process (a text
    query): no graph optimisation and no weight prepacking. Measured on the int8 text graph:
    session creation 51 ms instead of 67 ms (and 85-130 ms with full optimisation), for a
    first run of 5 ms instead of 4 ms. A cached pre-optimised copy measured no better."""
    import onnxruntime as ort

    options = session_options(threads, background)
    if fast_start:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class TextEncoder:
    """Tokenizer + text graph. Ids are cut right after the longest end token in the batch:
    the causal mask makes the result identical and short queries run ~4x faster."""

    def __init__(self, manifest: Manifest, threads: int | None = None, prefetch=None):
        self.manifest = manifest
        self.threads = threads
        self.prefetch = prefetch  # a tokens.TokenPrefetch already tokenizing in a child process
        self._tokenizer = None
        self._session = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.manifest.path("tokenizer.json")))
        return self._tokenizer

    @property
    def session(self):
        if self._session is None:
            self._session = open_session(self.manifest.graph_path("text"), self.threads, fast_start=True)
        return self._session

    def token_ids(self, texts: list[str]) -> np.ndarray:
        end_id = int(self.manifest.text["end_token_id"])
        prefetched = self.prefetch.ids(texts) if self.prefetch is not None else None
        self.prefetch = None
        if prefetched is None:
            prefetched = [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]
        ids = np.array(prefetched, dtype=np.int64)
        ends = np.argmax(ids == end_id, axis=1)
        return np.ascontiguousarray(ids[:, : int(ends.max()) + 1])

    def encode(self, texts: list[str]) -> np.ndarray:
        graph = self.manifest.graph("text")
        session = self.session  # first: the graph loads while a prefetching child tokenizes
        ids = self.token_ids(texts)
        return l2_normalise(session.run([graph["output"]], {graph["input"]: ids})[0])


class ImageEncoder:
    """Preprocessing + vision graph."""

    def __init__(self, manifest: Manifest, threads: int | None = None, background: bool = False,
                 use_draft: bool = True, verify: bool = True):
        self.manifest = manifest
        self.verify = verify
        self.threads = threads
        self.background = background
        self.use_draft = use_draft
        self._session = None

    @property
    def session(self):
        if self._session is None:
            path = self.manifest.graph_path("vision", verify=self.verify)
            self._session = open_session(path, self.threads, self.background)
        return self._session

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        graph = self.manifest.graph("vision")
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        return l2_normalise(self.session.run([graph["output"]], {graph["input"]: batch})[0])

    def encode_files(self, paths) -> np.ndarray:
        from .preprocess import load_pixels

        pixels = np.stack([load_pixels(p, self.manifest.image, self.use_draft) for p in paths])
        return self.encode_pixels(pixels)


def check_reference(manifest: Manifest, tower: str, threads: int | None = None, tolerance: float = 1e-3) -> float:
    """Embed the manifest's reference input and compare with the values stored at export
    time. Returns the largest absolute difference; raises ModelError above `tolerance`."""
    from .errors import ModelError

    reference = manifest.data["reference"][tower]
    if tower == "text":
        vector = TextEncoder(manifest, threads).encode([reference["text"]])[0]
    else:
        from .preprocess import reference_image, to_pixels

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
