"""Full-size ViT-B/32 graphs on this machine: image-tower images/s int8 vs fp32 (same run,
same batch), text-tower latency per query (ids cut after the end token vs padded to 77) and
the int8 fidelity of each form, session load times, file sizes, peak RSS.

    python bench/models.py [--batch 16] [--threads N] [--repeats 5]
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_summary, full_model, median, peak_rss_mb  # noqa: E402
from clipsearch.config import available_cores  # noqa: E402
from clipsearch.model.encoders import ImageEncoder, TextEncoder, open_session  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return median(runs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    fp32 = full_model(False, required=False)
    folders = {"int8": load_manifest(full_model(True)), **({"fp32": load_manifest(fp32)} if fp32 else {})}
    print(f"machine: {cpu_summary()}; threads {args.threads}, batch {args.batch}, medians of {args.repeats}")
    if fp32 is None:
        print("# no -fp32 twin beside the model folder: fp32 comparisons left out")
    rng = np.random.default_rng(0)
    size = int(folders["int8"].image["size"])
    pixels = rng.normal(size=(args.batch, 3, size, size)).astype(np.float32)
    results = {}
    for precision, manifest in folders.items():
        sizes = {t: sum(p.stat().st_size for p in manifest.folder.glob(f"{t}.onnx*")) / 1e6 for t in ("vision", "text")}
        load_v = timed(lambda: open_session(manifest.folder / "vision.onnx", args.threads), 3)
        load_t = timed(lambda: open_session(manifest.folder / "text.onnx", args.threads), 3)
        image = ImageEncoder(manifest, threads=args.threads)
        per_batch = timed(lambda: image.encode_pixels(pixels), args.repeats)
        text = TextEncoder(manifest, threads=args.threads)
        short = timed(lambda: text.encode(["a kitten peeking from behind a corner"]), args.repeats * 4)
        graph = manifest.graph("text")
        padded_ids = np.array([text.tokenizer.encode("a kitten peeking from behind a corner").ids], dtype=np.int64)
        padded = timed(lambda: text.session.run(None, {graph["input"]: padded_ids}), args.repeats * 4)
        results[precision] = dict(img_s=args.batch / per_batch, text_ms=short * 1000, text77_ms=padded * 1000,
                                  load_v=load_v * 1000, load_t=load_t * 1000, **sizes)
        del image, text
        gc.collect()
    print(f"{'':6} {'images/s':>9} {'text ms':>8} {'text@77 ms':>10} {'load vision ms':>14} {'load text ms':>12} "
          f"{'vision MB':>9} {'text MB':>8}")
    for precision, r in results.items():
        print(f"{precision:6} {r['img_s']:9.1f} {r['text_ms']:8.1f} {r['text77_ms']:10.1f} {r['load_v']:14.0f} "
              f"{r['load_t']:12.0f} {r['vision']:9.1f} {r['text']:8.1f}")
    if "fp32" not in results:
        print(f"peak RSS of this process: {peak_rss_mb():.0f} MB")
        return dict(results, peak_rss_mb=peak_rss_mb())
    i8, f32 = results["int8"], results["fp32"]
    print(f"ratio int8/fp32: images/s x{i8['img_s'] / f32['img_s']:.2f}, text latency x{f32['text_ms'] / i8['text_ms']:.2f} "
          f"faster, vision load x{f32['load_v'] / i8['load_v']:.2f} faster, size x{f32['vision'] / i8['vision']:.2f} smaller")
    cut, padded = text_cut_vs_padded(folders["int8"], folders["fp32"], args.threads)
    print(f"int8 text vs fp32, cosine min / mean over {len(TEXTS)} texts: ids cut after the end token (shipped) "
          f"{cut.min():.5f} / {cut.mean():.5f}, padded to 77 {padded.min():.5f} / {padded.mean():.5f}")
    print(f"peak RSS of this process (both precisions loaded in turn): {peak_rss_mb():.0f} MB")
    return dict(results, peak_rss_mb=peak_rss_mb(), text_cut_cos=(float(cut.min()), float(cut.mean())),
                text_padded_cos=(float(padded.min()), float(padded.mean())))


TEXTS = [f"a photo of a {thing}." for thing in (
    "cat", "dog", "kitten peeking from behind a corner", "birthday cake", "beach at sunset", "snowy mountain",
    "red car", "bicycle", "wedding", "newborn baby", "plate of pasta", "city skyline at night", "forest path",
    "sailing boat", "horse in a field", "christmas tree", "waterfall", "family picnic", "concert crowd",
    "old church")] + ["sunset", "dog", "Tom & Jerry", "grandma's kitchen in 1995 with the whole family around the table",
                      "東京タワーの夜景", "a very long description " * 12, ""]


def text_cut_vs_padded(int8, fp32, threads: int):
    """Cosine to fp32 of int8 text embeddings, ids cut after the end token vs padded to 77.
    Identical in fp32 (causal mask); under int8 the padding enters the activation scales."""
    from clipsearch.model.encoders import l2_normalise

    reference = TextEncoder(fp32, threads=threads).encode(TEXTS)
    encoder = TextEncoder(int8, threads=threads)
    graph = int8.graph("text")
    cut = encoder.encode(TEXTS)
    pad_id, context = int(int8.text["pad_token_id"]), int(int8.text["context_length"])
    rows = []
    for ids in encoder.token_ids(TEXTS):
        full = np.full((1, context), pad_id, dtype=np.int64)
        full[0, : ids.shape[1]] = ids[0]
        rows.append(encoder.session.run(None, {graph["input"]: full})[0])
    padded = l2_normalise(np.concatenate(rows))
    return np.sum(cut * reference, axis=1), np.sum(padded * reference, axis=1)


if __name__ == "__main__":
    main()
