"""Draft JPEG decoding by source size: error and cost of each draft factor against an exact
(full) decode, for sources whose short side runs from 300 to 4000 pixels.

libjpeg's DCT scaling (Pillow's `draft`) decodes at 1/2, 1/4 or 1/8 size; the bicubic resize
to the model's 224 does the rest. The factor is the short side kept by draft decoding, as a
multiple of 224 (1 = scale down until just above 224). Where the scaled size lands just above
224, libjpeg's scaling replaces most of the bicubic anti-aliasing, so the error depends on
the source size, not only on the factor: this measures it per size.

    python bench/draft.py [--per-size 2] [--repeats 3] [--factors 1 1.5 2 3] [--embeddings]

Columns per factor (and for the shipped rule, which picks the factor by source size): mean absolute pixel difference to the exact decode (normalised units,
as the vision graph sees them), min fp32 embedding cosine to the exact decode (with
--embeddings: exports the bench model once), and ms per image (decode + preprocess).
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

SHORT_SIDES = (300, 400, 500, 600, 700, 900, 1200, 1600, 2000, 2448, 3024, 4000)
SPEC = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def detailed_photo(path: Path, size: tuple[int, int], seed: int) -> None:
    """A phone-like photo with sharp detail at full resolution (thin lines, edges, fine
    stripes): what stresses a resize's anti-aliasing more than smooth areas and grain."""
    from PIL import Image, ImageDraw

    phone_photo(path, size, seed)
    img = Image.open(path).convert("RGB")
    rng = np.random.default_rng(seed)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(80):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(-w // 4, w // 4)), y0 + int(rng.integers(-h // 4, h // 4))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour, width=2)
        else:
            for k in range(0, abs(x1 - x0), 4):  # stripes 2 px apart: near the source's Nyquist limit
                draw.line((min(x0, x1) + k, y0, min(x0, x1) + k, y0 + 40), fill=colour, width=2)
    img.save(path, quality=90)


def samples(per_size: int) -> dict[int, list[Path]]:
    """{short side: files}, half smooth with grain, half with sharp detail."""
    folder = CACHE / "draft-samples"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for short in SHORT_SIDES:
        files[short] = []
        for i in range(per_size):
            kind, make = ("grain", phone_photo) if i % 2 == 0 else ("detail", detailed_photo)
            path = folder / f"{short * 4 // 3}x{short}-{kind}-{i}.jpg"
            if not path.exists():
                make(path, (short * 4 // 3, short), seed=500 + i)
            files[short].append(path)
    return files


def timed_pixels(path: Path, repeats: int, use_draft: bool) -> tuple[np.ndarray, float]:
    runs, pixels = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        pixels = preprocess.load_pixels(path, SPEC, use_draft=use_draft)
        runs.append(time.perf_counter() - start)
    return pixels, median(runs) * 1000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--factors", type=float, nargs="+", default=[0, 1, 1.5, 2, 3],
                        help="draft factors to compare; 0 = the shipped rule")
    parser.add_argument("--embeddings", action="store_true", help="also the fp32 embedding cosine to the exact decode")
    args = parser.parse_args(argv)
    formats.prepare_decoders(threads=1)
    files = samples(args.per_size)
    encoder = None
    if args.embeddings:
        from bench.common import full_model
        from clipsearch.model.encoders import ImageEncoder
        from clipsearch.model.manifest import load_manifest

        encoder = ImageEncoder(load_manifest(full_model(int8=False)), threads=1)

    print(f"# {cpu_summary()}; {args.per_size} photos per size (4:3, half grain, half sharp detail), median of "
          f"{args.repeats}; shipped rule: {preprocess.SMALL_SOURCE_FACTOR}x below {preprocess.SMALL_SOURCE} px, "
          f"{preprocess.DRAFT_FACTOR}x above")
    header = f"{'short side':>10} {'exact ms':>8}"
    for factor in args.factors:
        header += f" | {(f'{factor:g}x' if factor else 'shipped') + ' diff':>12} {'min cos':>8} {'ms':>5}"
    print(header)
    shipped, results = (preprocess.DRAFT_FACTOR, preprocess.SMALL_SOURCE_FACTOR), {}
    try:
        for short, paths in files.items():
            exact, exact_ms, exact_vec = {}, [], {}
            for path in paths:
                exact[path], ms = timed_pixels(path, args.repeats, use_draft=False)
                exact_ms.append(ms)
                if encoder:
                    exact_vec[path] = encoder.encode_pixels(exact[path][None])[0]
            row = {"exact_ms": round(float(np.mean(exact_ms)), 1)}
            line = f"{short:10d} {row['exact_ms']:8.1f}"
            for factor in args.factors:
                shipped_rule = factor == 0
                preprocess.DRAFT_FACTOR = shipped[0] if shipped_rule else factor
                preprocess.SMALL_SOURCE_FACTOR = shipped[1] if shipped_rule else factor
                diffs, cosines, times = [], [], []
                for path in paths:
                    pixels, ms = timed_pixels(path, args.repeats, use_draft=True)
                    times.append(ms)
                    diffs.append(float(np.abs(pixels - exact[path]).mean()))
                    if encoder:
                        cosines.append(float(encoder.encode_pixels(pixels[None])[0] @ exact_vec[path]))
                cell = {"diff": round(float(np.mean(diffs)), 4), "ms": round(float(np.mean(times)), 1)}
                if encoder:
                    cell["min_cos"] = round(min(cosines), 6)
                row[f"{factor:g}x" if factor else "shipped"] = cell
                line += f" | {cell['diff']:12.4f} {cell.get('min_cos', float('nan')):8.5f} {cell['ms']:5.1f}"
            results[short] = row
            print(line, flush=True)
    finally:
        preprocess.DRAFT_FACTOR, preprocess.SMALL_SOURCE_FACTOR = shipped
    return results


if __name__ == "__main__":
    main()
