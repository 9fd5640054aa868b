"""Building a model folder from fp32 ONNX towers, without PyTorch: int8 quantization with the
project's settings, the int8-vs-fp32 fidelity check on a fixed probe set, reference values,
the manifest, and putting the folder in place atomically. One implementation for
`clipsearch models pull` and `python -m export` (which adds its PyTorch-vs-ONNX check).

Needs the `onnx` package to quantize (the `models` extra); imported only where used, so the
runtime never pays for it.

Quantization choices (measured; see docs/design.md "Quantization: what and why"):
- dynamic quantization of the weight-constant MatMul/Gemm nodes only (`MatMulConstBOnly`), so
  attention's activation x activation products stay fp32; the token-embedding table (Gather)
  is stored as int8 too: it is 40% of the text graph and costs no speed (one row per token);
- int8 weights with `reduce_range` (7-bit weight values) by default. U8S8 is onnxruntime's
  fast path on VNNI x86 (measured: 61-63 img/s vs 34 for uint8 weights) and on ARM64; on AVX2
  CPUs without VNNI its VPMADDUBSW kernel adds two u8 x s8 products in int16, which saturates
  with full 8-bit weights (255*127*2 > 32767) but cannot with 7-bit ones (255*63*2 = 32130).
  reduce_range cost no speed and moved the probe cosine from 0.99985 to 0.99971;
- per-channel weight scales (no speed cost measured, better fidelity);
- the patch-embedding Conv, LayerNorm and the embeddings stay fp32;
- no onnxruntime transformer fusion before quantizing: measured slower for int8 here.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.photos.preprocess import load_pixels, reference_image, to_pixels

from .encoders import ImageEncoder, TextEncoder, l2_normalise
from .manifest import Manifest, describe_files

QUANT_DEFAULTS = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "op_types": ["MatMul", "Gemm", "Gather"],
    "weight_type": "QInt8",
    "activation_type": "QUInt8 (dynamic, per tensor)",
    "per_channel": True,
    "reduce_range": True,
    "matmul_const_b_only": True,
    "kept_fp32": "patch-embedding Conv, LayerNorm, class/position embeddings' arithmetic, attention activation products",
    "transformer_optimizer": False,
}

# A model folder is refused below this int8-vs-fp32 cosine on the probe set: published ViT-B/32
# weights-only int8 keeps zero-shot accuracy within 0.1 point, which corresponds to cosines well
# above 0.99; 0.97 leaves room for random weights (no outlier structure) while still catching a
# broken quantization (those land far below 0.9).
MIN_COSINE_INT8_VS_FP32 = 0.97

PROBE_TEXTS = [
    "a photo of a cat",
    "a kitten peeking from behind a corner",
    "A red car parked in front of a blue house at sunset.",
    "crème brûlée on a café table",
    "東京の夜景",
    "a birthday party 🎂🎉 with balloons",
    "dog",
    "two people hiking on a snowy mountain ridge under a clear sky, " * 6,  # > 77 tokens
    "",
    "screenshot of a spreadsheet with numbers",
]

REFERENCE_TEXT = "a photo of a cat"
REFERENCE_VALUES = 8

# The text graph keeps its weights in a side file: onnxruntime maps external initializers
# instead of copying them out of the protobuf, which measured 13 ms instead of 61 ms to open
# the int8 text session, a sixth of a cold query. The vision session opens once per worker.
EXTERNAL_DATA_TOWERS = ("text",)


def quantize(fp32_path: Path, int8_path: Path, weight_type: str = "QInt8", per_channel: bool = True,
             reduce_range: bool = True, external_data: bool = False) -> dict:
    """fp32 graph -> int8 graph with the settings above; returns them for the manifest.
    `external_data`: the graph is over protobuf's 2 GB (Immich's XLM-Roberta-Large tower)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It advises "pre-processing before quantization" through the root logger, which would land
    # on the user's terminal as a warning about nothing they can act on.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(fp32_path), str(int8_path),
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            weight_type=getattr(QuantType, weight_type),
            per_channel=per_channel,
            reduce_range=reduce_range,
            use_external_data_format=external_data,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)
    return dict(QUANT_DEFAULTS, weight_type=weight_type, per_channel=per_channel, reduce_range=reduce_range)


# -- fidelity ---------------------------------------------------------------------------------

def probe_images(folder: Path, count: int = 12) -> list[Path]:
    """Gradients, discs, stripes and grain at several sizes and aspect ratios, half JPEG, half PNG."""
    rng = np.random.default_rng(1234)
    paths = []
    for i in range(count):
        width, height = [(640, 480), (300, 500), (1024, 768), (224, 224), (800, 200), (97, 131)][i % 6]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        freq = rng.uniform(0.005, 0.05)
        arr = np.empty((height, width, 3), np.float32)
        arr[..., 0] = base[0] * (xs / width)
        arr[..., 1] = 127 + 120 * np.sin(freq * (xs + ys) + i)
        arr[..., 2] = base[2] * (ys / height)
        cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, rng.uniform(0.1, 0.3) * min(width, height)
        arr[((xs - cx) ** 2 + (ys - cy) ** 2) < r * r] = rng.uniform(0, 255, 3)
        arr += rng.normal(0, 12, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        path = folder / (f"probe{i:02d}.jpg" if i % 2 == 0 else f"probe{i:02d}.png")
        img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)
        paths.append(path)
    return paths


def probe_pixels(manifest: Manifest) -> np.ndarray:
    """The probe images as the runtime preprocesses them for this model."""
    with tempfile.TemporaryDirectory() as tmp:
        return np.stack([load_pixels(p, manifest.image) for p in probe_images(Path(tmp))])


def summary(a: np.ndarray, b: np.ndarray) -> dict:
    """min/mean cosine, and the largest absolute difference between the unit embeddings."""
    cosines = np.sum(l2_normalise(a) * l2_normalise(b), axis=1)
    return {"min": round(float(cosines.min()), 7), "mean": round(float(cosines.mean()), 7),
            "max_abs_diff": float(f"{np.abs(l2_normalise(a) - l2_normalise(b)).max():.3g}")}


def with_graphs(manifest: Manifest, files: dict[str, str]) -> Manifest:
    """The same model with other graph files of the same folder (e.g. the fp32 ones)."""
    graphs = {tower: dict(graph, file=files[tower], external_data=None) for tower, graph in manifest.data["graphs"].items()}
    return Manifest(folder=manifest.folder, data=dict(manifest.data, graphs=graphs))


def int8_fidelity(manifest: Manifest, fp32_files: dict[str, str], pixels: np.ndarray | None = None) -> dict:
    """Cosines int8 vs fp32 ONNX per tower on the probe set, through the runtime's own
    preprocessing and tokenizer. `manifest` points at the int8 graphs; `fp32_files` names the
    fp32 ones in the same folder (listed in manifest.data['files'])."""
    fp32_manifest = with_graphs(manifest, fp32_files)
    pixels = probe_pixels(manifest) if pixels is None else pixels
    fp32_image = ImageEncoder(fp32_manifest, threads=None).encode_pixels(pixels)
    int8_image = ImageEncoder(manifest, threads=None).encode_pixels(pixels)
    fp32_text = TextEncoder(fp32_manifest).encode(PROBE_TEXTS)
    int8_text = TextEncoder(manifest).encode(PROBE_TEXTS)
    return {
        "probe": f"{len(pixels)} generated JPEG/PNG images, {len(PROBE_TEXTS)} texts",
        "vision": {"int8_vs_fp32_onnx": summary(int8_image, fp32_image)},
        "text": {"int8_vs_fp32_onnx": summary(int8_text, fp32_text)},
        "thresholds": {"int8_vs_fp32_onnx": MIN_COSINE_INT8_VS_FP32},
    }


def text_fidelity(manifest: Manifest, fp32_path: Path) -> dict:
    """Cosines int8 vs fp32 ONNX of a text-only model on the probe texts."""
    fp32_text = TextEncoder(with_graphs(manifest, {"text": fp32_path.name}), verify=False).encode(PROBE_TEXTS)
    int8_text = TextEncoder(manifest).encode(PROBE_TEXTS)
    return {"probe": f"{len(PROBE_TEXTS)} texts", "text": {"int8_vs_fp32_onnx": summary(int8_text, fp32_text)},
            "thresholds": {"int8_vs_fp32_onnx": MIN_COSINE_INT8_VS_FP32}}


def failures(fidelity: dict) -> list[str]:
    problems = []
    for tower in [t for t in ("vision", "text") if t in fidelity]:
        for key, limit in fidelity["thresholds"].items():
            low = fidelity[tower][key]["min"]
            if low < limit:
                problems.append(f"{tower} {key.replace('_', ' ')}: min cosine {low} < {limit}")
    return problems


# -- the folder -------------------------------------------------------------------------------

def reference_values(manifest: Manifest) -> dict:
    rounded = lambda v: [round(float(x), 6) for x in v[:REFERENCE_VALUES]]  # noqa: E731
    text = TextEncoder(manifest).encode([REFERENCE_TEXT])[0]
    reference = {"text": {"text": REFERENCE_TEXT, "first_values": rounded(text)}}
    if "vision" in manifest.data["graphs"]:
        image = ImageEncoder(manifest).encode_pixels(to_pixels(reference_image(), manifest.image)[None])[0]
        reference["vision"] = {"probe": "clipsearch.photos.preprocess.reference_image(256)", "first_values": rounded(image)}
    return reference


def place_graph(source: Path, target: Path, external: bool) -> None:
    data_file = target.with_name(target.name + ".data")
    data_file.unlink(missing_ok=True)  # onnx appends to an existing data file
    if not external:
        shutil.copyfile(source, target)
        return
    import onnx

    onnx.save(onnx.load(str(source)), str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data_file.name, size_threshold=1024)
    if data_file.exists():  # none when every tensor is under the threshold (a tiny test graph)
        data_file.chmod(0o644)


def finish_folder(work: Path, data: dict, graph_files: dict[str, Path]) -> Manifest:
    """Put `graph_files` in `work` as vision.onnx/text.onnx (+ text.onnx.data), hash
    everything, write manifest.json."""
    data = dict(data, graphs={tower: dict(graph) for tower, graph in data["graphs"].items()})
    for tower, source in graph_files.items():
        target = work / f"{tower}.onnx"
        if source != target:
            place_graph(source, target, tower in EXTERNAL_DATA_TOWERS)
    names = [f"{tower}.onnx" for tower in data["graphs"]] + ["tokenizer.json"]
    for tower, graph in data["graphs"].items():
        graph.pop("external_data", None)
        if (work / f"{tower}.onnx.data").exists():
            graph["external_data"] = f"{tower}.onnx.data"
            names.append(graph["external_data"])
    files, model_id = describe_files(work, names)
    data = dict(data, files=files, model_id=model_id)
    manifest = Manifest(folder=work, data=data)
    data["reference"] = reference_values(manifest)
    (work / "manifest.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


@contextlib.contextmanager
def installing(work: Path):
    """Building a model folder in `work`: on any failure the folder goes, and a source the
    runtime cannot reproduce is said in one line (`models pull`, both kinds of model)."""
    from clipsearch.errors import ModelError

    from .layouts import UnsupportedSource

    try:
        yield
    except UnsupportedSource as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise ModelError(f"{exc}; nothing was installed") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def work_dir(out: Path) -> Path:
    """An empty hidden sibling of `out` to build in (same filesystem: the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)  # mkdtemp's 0700 would hide the model from the NAS's service user
    return work


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`; an existing one is replaced only now."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
