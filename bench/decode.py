"""Decode + preprocess cost per photo, by format and decoding strategy, on phone-size photos
(the pixels of `bench.common.phone_photo`, 4032x3024 and 1600x1200, saved once per format).

- JPEG with draft decoding at 1x (shipped), 2x and 4x the model input size, and a full decode;
- the same pixels as WebP, AVIF (Pillow with libavif) and HEIC (pillow-heif, the `heic`
  extra), which have no draft decoding: the whole picture is always decoded;
- mean absolute difference of the preprocessed tensor to the full-decode JPEG's (normalised
  units), and with `--embeddings` the fp32 embedding cosine to it (exports the bench model
  once if needed).

    python bench/decode.py [--per-size 3] [--repeats 3] [--embeddings]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, cpu_summary, median, phone_photo  # noqa: E402
from clipsearch.photos import formats, preprocess  # noqa: E402

SIZES = ((4032, 3024), (1600, 1200))
# CLIP ViT-B/32's preprocessing, as in every exported manifest.
SPEC = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def samples(per_size: int) -> dict[str, list[Path]]:
    """{format: files}, the same pictures in every format."""
    from PIL import Image

    formats.prepare_decoders(threads=1)
    folder = CACHE / "decode-samples"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {"jpeg": ".jpg", "webp": ".webp"}
    if formats.avif_available():
        wanted["avif"] = ".avif"
    if formats.heif_available():
        wanted["heic"] = ".heic"
    files: dict[str, list[Path]] = {name: [] for name in wanted}
    for size in SIZES:
        for i in range(per_size):
            jpeg = folder / f"{size[0]}x{size[1]}-{i}.jpg"
            if not jpeg.exists():
                phone_photo(jpeg, size, seed=100 + i)
            for name, ext in wanted.items():
                path = jpeg.with_suffix(ext)
                if not path.exists():
                    print(f"bench: writing {path.name}", file=sys.stderr)
                    # Camera-like settings: phones save HEIC around quality 80-90.
                    Image.open(jpeg).save(path, quality=85)
                files[name].append(path)
    return files


def decode_ms(path: Path, repeats: int, use_draft: bool) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        preprocess.load_pixels(path, SPEC, use_draft=use_draft)
        runs.append(time.perf_counter() - start)
    return median(runs) * 1000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-size", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embeddings", action="store_true", help="also the fp32 embedding cosine to a full decode")
    args = parser.parse_args(argv)
    files = samples(args.per_size)
    reference = {p.stem: preprocess.load_pixels(p, SPEC, use_draft=False) for p in files["jpeg"]}
    encoder = None
    if args.embeddings:
        from bench.common import full_model
        from clipsearch.model.encoders import ImageEncoder
        from clipsearch.model.manifest import load_manifest

        encoder = ImageEncoder(load_manifest(full_model(int8=False)), threads=1)
        reference_vectors = {k: encoder.encode_pixels(v[None])[0] for k, v in reference.items()}

    configs = [("jpeg", "draft 1x (shipped)", True, 1), ("jpeg", "draft 2x", True, 2), ("jpeg", "draft 4x", True, 4),
               ("jpeg", "full decode", False, 1)]
    configs += [(name, "full decode", False, 1) for name in files if name != "jpeg"]
    print(f"# {cpu_summary()}; {args.per_size} photos per size, median of {args.repeats}")
    print(f"{'format':6} {'decoding':20} {'12 MP ms':>9} {'2 MP ms':>8} {'pixel diff':>11}"
          + (f" {'min cos':>9}" if encoder else ""))
    results = {}
    default_factor = preprocess.DRAFT_FACTOR
    for name, label, use_draft, factor in configs:
        preprocess.DRAFT_FACTOR = factor
        try:
            by_size = {size: [] for size in SIZES}
            diffs, cosines = [], []
            for path in files[name]:
                size = next(s for s in SIZES if path.name.startswith(f"{s[0]}x{s[1]}"))
                by_size[size].append(decode_ms(path, args.repeats, use_draft))
                pixels = preprocess.load_pixels(path, SPEC, use_draft=use_draft)
                diffs.append(float(np.abs(pixels - reference[path.stem]).mean()))
                if encoder:
                    vector = encoder.encode_pixels(pixels[None])[0]
                    cosines.append(float(vector @ reference_vectors[path.stem]))
        finally:
            preprocess.DRAFT_FACTOR = default_factor
        big, small = (float(np.mean(by_size[s])) for s in SIZES)
        results[f"{name} {label}"] = {"12mp_ms": round(big, 1), "2mp_ms": round(small, 1),
                                      "pixel_diff": round(float(np.mean(diffs)), 4),
                                      **({"min_cosine": round(min(cosines), 6)} if encoder else {})}
        print(f"{name:6} {label:20} {big:9.1f} {small:8.1f} {np.mean(diffs):11.4f}"
              + (f" {min(cosines):9.6f}" if encoder else ""))
    missing = [hint for hint in (formats.missing_decoder(b".heic"), formats.missing_decoder(b".avif")) if hint]
    for hint in missing:
        print(f"# not measured: {hint}")
    return results


if __name__ == "__main__":
    main()
