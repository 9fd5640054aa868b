"""How far a photo's vector drifts when its file is degraded, and whether it still finds its
original: JPEG quality, resizing, crops, rotation, noise, blur and truncation (a file cut short,
indexed from what decodes: the damaged-photo path).

    python bench/robustness.py [--photos DIR]

The photos are the public ones `bench/duplicates.py` uses (scikit-image's sample pictures and
Pillow's test JPEGs from /work/.mirror, or --photos DIR). Each is embedded as it is, then each
degraded copy through the indexing code path (decode_image, to_pixels, the image encoder). Per
degradation: the median and lowest cosine to the original's vector, and top-1 (the original is
the nearest of all the originals to the copy's vector). With the bench model's random weights
the figures describe the pipeline (decoding, resizing, the int8 graph), not what CLIP makes of
the pictures; the script says which model it ran.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_summary, full_model  # noqa: E402
from bench.duplicates import flat_rgb, public_photos  # noqa: E402
from clipsearch.model.encoders import ImageEncoder  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402
from clipsearch.photos.preprocess import ImageDecodeError, decode_image, resize_side, to_pixels  # noqa: E402


def degradations(img, data: bytes) -> dict[str, bytes | None]:
    from PIL import Image, ImageFilter

    def jpeg(picture, quality=90):
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=quality)
        return out.getvalue()

    w, h = img.size
    rng = np.random.default_rng(0)
    noisy = lambda sigma: Image.fromarray(np.clip(np.asarray(img, dtype=np.float32)  # noqa: E731
                                                  + rng.normal(0, sigma, (h, w, 3)), 0, 255).astype(np.uint8))
    whole = jpeg(img, 92)
    out = {f"JPEG quality {q}": jpeg(img, q) for q in (75, 40, 15)}
    out |= {f"resized to {int(s * 100)}%": jpeg(img.resize((max(8, int(w * s)), max(8, int(h * s))))) for s in (0.5, 0.25, 0.1)}
    out |= {f"centre crop {int(c * 100)}%": jpeg(img.crop((int(w * (1 - c) / 2), int(h * (1 - c) / 2),
                                                         int(w * (1 + c) / 2), int(h * (1 + c) / 2)))) for c in (0.8, 0.5)}
    out |= {f"turned {a} degrees": jpeg(img.rotate(a, expand=True, fillcolor=(0, 0, 0))) for a in (10, 90)}
    out |= {f"noise sigma {s}": jpeg(noisy(s)) for s in (10, 30)}
    out |= {f"blur radius {r}": jpeg(img.filter(ImageFilter.GaussianBlur(r))) for r in (2, 6)}
    out |= {f"truncated to {int(k * 100)}% of its bytes": whole[: int(len(whole) * k)] for k in (0.9, 0.7, 0.55)}
    return out


def embed(encoder, spec, data: bytes) -> np.ndarray | None:
    try:
        decoded = decode_image(io.BytesIO(data), resize_side(spec), True)
    except ImageDecodeError:
        return None
    vector = encoder.encode_pixels(to_pixels(decoded.image, spec, decoded.full_size, decoded.box)[None])[0]
    return vector / np.linalg.norm(vector)


def main() -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=None)
    args = parser.parse_args()
    print(cpu_summary())
    model = full_model()
    manifest = load_manifest(model)
    encoder = ImageEncoder(manifest, threads=2)
    photos = public_photos(args.photos)
    print(f"model: {manifest.name}" + (f" -- {manifest.untrained}: the figures describe the pipeline, not the model"
                                       if manifest.untrained else ""))
    originals, copies = [], {}
    for data in photos.values():
        img = flat_rgb(Image.open(io.BytesIO(data)))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=92)
        originals.append(embed(encoder, manifest.image, out.getvalue()))
        for name, copy in degradations(img, out.getvalue()).items():
            copies.setdefault(name, []).append(embed(encoder, manifest.image, copy))
    table = np.stack(originals)
    print(f"\n{len(photos)} public photos; cosine of each degraded copy to its original, and top-1 among all originals")
    print(f"{'degradation':38} {'median cos':>10} {'lowest':>8} {'top-1':>7} {'decoded':>8}")
    for name, vectors in copies.items():
        pairs = [(i, v) for i, v in enumerate(vectors) if v is not None]
        cosines = np.array([float(table[i] @ v) for i, v in pairs])
        top1 = np.mean([int(np.argmax(table @ v) == i) for i, v in pairs]) if pairs else 0.0
        print(f"{name:38} {np.median(cosines) if pairs else float('nan'):10.4f} "
              f"{cosines.min() if pairs else float('nan'):8.4f} {top1:7.3f} {len(pairs):>4}/{len(vectors)}")


if __name__ == "__main__":
    main()
