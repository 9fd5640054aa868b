"""`clipsearch models pull` on a full-size model, torch-free: download size, time and peak RSS
of quantizing the ViT-B/32 vision tower, of the whole pull, and a side-by-side check against
`python -m export` of the same weights.

The export's fp32 twin (`python -m export --random-weights --keep-fp32`) is served in the
transformers.js layout by the tests' hub-shaped server on 127.0.0.1 (its graphs have that
layout's names), pulled like any repo, and the pulled int8 files are compared with the
export's int8 files, byte for byte, then embedding by embedding.

    python bench/pull.py
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench.common import REPO, cpu_summary, full_model  # noqa: E402

QUANTIZE = ("import resource, sys, time\n"
            "from clipsearch.model.build import quantize\n"
            "t = time.perf_counter(); quantize(sys.argv[1], sys.argv[2])\n"
            "print(round(time.perf_counter() - t, 1), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def as_transformers_js(fp32: Path, repo: Path) -> None:
    """The export's fp32 folder in the transformers.js layout: one file per graph."""
    import onnx

    manifest = json.loads((fp32 / "manifest.json").read_text())
    (repo / "onnx").mkdir(parents=True)
    os.link(fp32 / "vision.onnx", repo / "onnx" / "vision_model.onnx")
    onnx.save(onnx.load(str(fp32 / "text.onnx")), str(repo / "onnx" / "text_model.onnx"))
    os.link(fp32 / "tokenizer.json", repo / "tokenizer.json")
    image = manifest["image"]
    (repo / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": image["size"], "width": image["size"]}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": image["mean"], "image_std": image["std"], "resample": 3,
        "size": {"shortest_edge": image.get("shortest_side", image["size"])}}))
    (repo / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": manifest["embedding_dim"]}))


def main() -> None:
    import hubserver

    exported = full_model()
    fp32 = exported.with_name(exported.name + "-fp32")
    print(cpu_summary())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hub = hubserver.Hub(tmp / "hub")
        try:
            repo = hub.repo("bench/random-vit-b-32")
            as_transformers_js(fp32, repo)
            download = {p: (repo / p).stat().st_size for p in ("onnx/vision_model.onnx", "onnx/text_model.onnx")}
            print(f"download: vision {download['onnx/vision_model.onnx'] / 1e6:.1f} MB, "
                  f"text {download['onnx/text_model.onnx'] / 1e6:.1f} MB (+ tokenizer and configs)")

            out = subprocess.run([sys.executable, "-c", QUANTIZE, str(repo / "onnx" / "vision_model.onnx"),
                                  str(tmp / "vision.int8.onnx")], capture_output=True, text=True, cwd=REPO, check=True)
            seconds, peak = out.stdout.split()
            print(f"quantize the vision tower alone: {seconds} s, peak RSS {peak} MB (target < 1500 MB)")

            env = dict(os.environ, CLIPSEARCH_HOME=str(tmp / "home"), HF_ENDPOINT=hub.endpoint)
            started = time.perf_counter()
            pulled = subprocess.run([sys.executable, "-m", "clipsearch", "models", "pull", "--repo",
                                     "bench/random-vit-b-32", "--layout", "transformers.js"],
                                    capture_output=True, text=True, cwd=REPO, env=env)
            wall = time.perf_counter() - started
            peak_pull = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
            if pulled.returncode != 0:
                sys.exit(pulled.stderr)
            print(f"whole pull (download over loopback, quantize both towers, fidelity, folder): {wall:.1f} s, "
                  f"peak RSS {peak_pull} MB")
        finally:
            hub.close()
        model = tmp / "home" / "models" / "random-vit-b-32"
        manifest = json.loads((model / "manifest.json").read_text())
        fid = manifest["fidelity"]
        print(f"int8 vs fp32 (probe set): vision min {fid['vision']['int8_vs_fp32_onnx']['min']}, "
              f"text min {fid['text']['int8_vs_fp32_onnx']['min']}; int8 sizes {fid['sizes_mb']}")
        for name in ("vision.onnx", "text.onnx", "text.onnx.data", "tokenizer.json"):
            same = sha256(model / name) == sha256(exported / name)
            print(f"pulled vs exported {name}: {'identical bytes' if same else 'DIFFERENT'}")
        compare_embeddings(model, exported)


def compare_embeddings(pulled: Path, exported: Path) -> None:
    import numpy as np

    from clipsearch.model.build import PROBE_TEXTS, probe_pixels
    from clipsearch.model.encoders import ImageEncoder, TextEncoder
    from clipsearch.model.manifest import load_manifest

    a, b = load_manifest(pulled), load_manifest(exported)
    pixels = probe_pixels(a)
    image = np.sum(ImageEncoder(a).encode_pixels(pixels) * ImageEncoder(b).encode_pixels(pixels), axis=1)
    text = np.sum(TextEncoder(a).encode(PROBE_TEXTS) * TextEncoder(b).encode(PROBE_TEXTS), axis=1)
    print(f"pulled vs exported embeddings on the probe set: image cosine min {image.min():.7f}, "
          f"text cosine min {text.min():.7f}")


if __name__ == "__main__":
    main()
