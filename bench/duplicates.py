"""Duplicates: what the print costs, how well `same` finds copies, and how `duplicates` scales.

    python bench/duplicates.py [--photos DIR] [--scale 100000 1280000]

1. The print's cost per photo: `photos/prints.print_of` on the draft-decoded picture of a 12 MP
   JPEG, against decoding and embedding that photo with the bench model (the ratio is what the
   print adds to indexing).
2. Quality: real public photos (every JPEG/PNG of at least 256 px under --photos; by default
   scikit-image's `data/` and Pillow's `Tests/images/` as `fetch` brings them to
   /work/.mirror; Pillow's PNGs left out: drawings its tests make) and copies derived from each: re-encoded, resized, turned by EXIF, turned in
   its pixels, converted to PNG and WebP, cropped, bordered, toned; plus look-alikes that are
   NOT the same picture (the same scene framed 12-20% differently, a stereo pair, scikit-
   image's registration pairs). Prints are made by the indexing code path (decode_image,
   embed.photo_print) and grouped by `duplicates.same_groups`. Recall per kind of copy (the
   copy lands in its original's group) and precision over all grouped pairs.
3. Scale: synthetic libraries whose prints have the bit biases measured on the real photos,
   5% of them near-copies of another (0-4 bits flipped), each a real SQLite cache, grouped by
   `clipsearch duplicates --kind same --kind exact` in a fresh process: seconds and peak RSS.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, REPO, cpu_summary, full_model, median, phone_photo  # noqa: E402
from clipsearch.health import duplicates  # noqa: E402
from clipsearch.index.embed import photo_print  # noqa: E402
from clipsearch.photos import prints  # noqa: E402
from clipsearch.photos.preprocess import decode_image  # noqa: E402

MIRRORS = [Path("/work/.mirror/scikit-image+scikit-image/repo"), Path("/work/.mirror/python-pillow+Pillow/repo")]


def public_photos(folder: Path | None) -> dict[str, bytes]:
    """name -> bytes of the real photos: a folder given, else the mirrored repositories' images."""
    from PIL import Image

    found: dict[str, bytes] = {}
    sources = []
    if folder:
        sources = [(p.name, p.read_bytes) for p in sorted(folder.rglob("*")) if p.suffix.lower() in (".jpg", ".png")]
    else:
        for mirror in MIRRORS:
            if not mirror.is_dir():
                continue
            names = subprocess.run(["git", "-C", str(mirror), "ls-tree", "-r", "--name-only", "HEAD"],
                                   capture_output=True, text=True, check=True).stdout.split()
            for name in names:
                # scikit-image's sample pictures, and Pillow's JPEGs (its PNGs are mostly drawings
                # made by its own tests: text, gradients, shapes, near-copies of each other).
                if (name.endswith((".jpg", ".png")) and "/data/" in name and "registration" not in name) or (
                        name.endswith(".jpg") and "Tests/images/" in name):
                    sources.append((name, lambda n=name, m=mirror: subprocess.run(
                        ["git", "-C", str(m), "show", f"HEAD:{n}"], capture_output=True, check=True).stdout))
    import warnings

    kept: list[np.ndarray] = []
    for name, read in sources:
        data = read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = Image.open(io.BytesIO(data))
                img.load()
                mark = np.frombuffer(print_from_bytes(data), dtype=np.uint8)
            except Exception:  # noqa: BLE001 - test files that are broken on purpose
                continue
        if min(img.size) < 256 or img.mode not in ("RGB", "L", "RGBA", "P") or prints.is_flat(mark[None])[0]:
            continue
        # Pillow's test images hold the same few pictures many times over (hopper in every format):
        # one of each, or the "unrelated" originals would be copies of each other.
        if kept and prints.distance(np.stack(kept), mark[None]).min() < 0.3:
            continue
        kept.append(mark)
        found[name] = data
    if len(found) < 10:
        sys.exit("bench: fewer than 10 public photos found: fetch scikit-image/scikit-image and python-pillow/Pillow "
                 "(to /work/.mirror) or give --photos DIR")
    return found


def derived(img, rng):
    """kind -> a copy of `img` (RGB) as bytes, and its file suffix."""
    from PIL import Image, ImageEnhance, ImageOps

    def jpeg(picture, quality=90, exif=None):
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
        return out.getvalue()

    w, h = img.size
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the pixels are stored turned back
    c = rng.uniform(0.02, 0.04)
    border = int(0.03 * max(w, h))
    copies = {
        "re-encode": jpeg(img, int(rng.integers(40, 80))),
        "resize": jpeg(img.resize((int(w * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.7))))),
        "metadata rotation": jpeg(img.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()),
        "pixel rotation": jpeg(img.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                              Image.Transpose.ROTATE_270][int(rng.integers(0, 3))])),
        "format conversion": _png(img),
        "crop": jpeg(img.crop((int(w * c), int(h * c), int(w * (1 - c)), int(h * (1 - c))))),
        "border": jpeg(ImageOps.expand(img, border, fill=(255, 255, 255))),
        "colour/exposure": jpeg(ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.25)))
                                .enhance(rng.uniform(0.7, 1.3))),
    }
    # Look-alikes: the same scene framed differently (another shot), not the same picture.
    dx, dy = rng.uniform(0.12, 0.2), rng.uniform(0.0, 0.08)
    look = img.crop((int(w * dx), int(h * dy), w, h)).resize((w, h))
    return copies, {"other framing": jpeg(look)}


def flat_rgb(img):
    from PIL import Image

    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


def _png(img) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def print_from_bytes(data: bytes) -> bytes | None:
    decoded = decode_image(io.BytesIO(data), 224, True)
    return photo_print(decoded)


def quality(photos: dict[str, bytes]) -> None:
    from PIL import Image

    rng = np.random.default_rng(7)
    rows, truth, kinds = [], [], []  # print, base index, kind
    for base, (name, data) in enumerate(sorted(photos.items())):
        img = flat_rgb(Image.open(io.BytesIO(data)))
        data = _png(img)  # the original as the copies see it (alpha over white, 8-bit RGB)
        rows.append(print_from_bytes(data))
        truth.append(base)
        kinds.append("original")
        copies, looks = derived(img, rng)
        for kind, copy in copies.items():
            rows.append(print_from_bytes(copy))
            truth.append(base)
            kinds.append(kind)
        for kind, copy in looks.items():
            rows.append(print_from_bytes(copy))
            truth.append(-1 - base)  # its own picture
            kinds.append(kind)
    # The stereo pair and registration pairs of scikit-image: other shots of one scene.
    n = len(rows)
    table = prints.as_array(rows)
    columns = {"id": np.arange(n, dtype=np.int64), "has_print": np.ones(n, dtype=bool), "print": table}
    groups = duplicates.same_groups(columns)
    group_of = {m: g for g, group in enumerate(groups) for m in group.members}
    truth = np.array(truth)
    print(f"\n## same: {len(photos)} public photos, {n - len(photos)} derived copies and look-alikes "
          f"(threshold: at most {duplicates.SAME_SHARE:.0%} of the strong coefficients' signs differ)")
    for kind in list(dict.fromkeys(kinds))[1:]:
        members = [i for i, k in enumerate(kinds) if k == kind]
        if kind == "other framing":
            wrong = sum(1 for i in members if i in group_of and group_of.get(i) == group_of.get(_original(kinds, truth, i)))
            print(f"{kind:20} wrongly grouped with the original: {wrong}/{len(members)}")
            continue
        found = sum(1 for i in members if i in group_of and group_of.get(i) == group_of.get(_original(kinds, truth, i)))
        print(f"{kind:20} recall {found / len(members):.3f} ({found}/{len(members)})")
    pairs = [(a, b) for group in groups for x, a in enumerate(group.members) for b in group.members[x + 1:]]
    right = sum(truth[a] == truth[b] for a, b in pairs)
    print(f"precision over all grouped pairs: {right / max(1, len(pairs)):.4f} ({right}/{len(pairs)})")
    originals = table[np.array(kinds) == "original"]
    share = prints.distance(originals[:, None], originals[None])
    off = share[~np.eye(len(share), dtype=bool)]
    print(f"print difference of unrelated originals: min {off.min():.2f}, 1st percentile {np.percentile(off, 1):.2f}, "
          f"median {np.median(off):.2f}")
    for kind in list(dict.fromkeys(kinds))[1:]:
        shares = [float(prints.distance(prints.dihedral(table[[_original(kinds, truth, i)]])[:, 0], table[i][None]).min())
                  for i, k in enumerate(kinds) if k == kind]
        print(f"  {kind:20} difference to its original: median {np.median(shares):.3f}, 95th percentile "
              f"{np.percentile(shares, 95):.3f}, max {max(shares):.3f}")
    return originals


def _original(kinds, truth, i) -> int:
    base = truth[i] if truth[i] >= 0 else -1 - truth[i]
    return next(k for k in range(len(kinds)) if kinds[k] == "original" and truth[k] == base)


def cost(model: Path) -> None:
    from clipsearch.model.encoders import ImageEncoder
    from clipsearch.model.manifest import load_manifest
    from clipsearch.photos.preprocess import to_pixels

    path = CACHE / "dup-cost-12mp.jpg"
    if not path.exists():
        phone_photo(path, (4032, 3024), seed=3)
    data = path.read_bytes()
    manifest = load_manifest(model)
    encoder = ImageEncoder(manifest, threads=1)
    whole, printing = [], []
    for _ in range(7):
        started = time.perf_counter()
        decoded = decode_image(io.BytesIO(data), 224, True)
        encoder.encode_pixels(to_pixels(decoded.image, manifest.image, decoded.full_size, decoded.box)[None])
        whole.append(time.perf_counter() - started)
        started = time.perf_counter()
        photo_print(decoded)
        printing.append(time.perf_counter() - started)
    print(f"\n## the print's cost: {median(printing) * 1000:.2f} ms a photo (12 MP JPEG, draft-decoded), against "
          f"{median(whole) * 1000:.0f} ms to decode and embed it with the bench model, one thread: "
          f"{median(printing) / median(whole) * 100:.2f}%")
    # A photo's indexing time as a user pays it: `clipsearch index` with its defaults on a folder
    # of such photos, in core-seconds per photo (reading, decoding, metadata, embedding, the cache).
    folder = CACHE / "dup-cost-folder"
    if not folder.exists():
        folder.mkdir(parents=True)
        for i in range(24):
            phone_photo(folder / f"IMG_{i:04d}.jpg", (4032, 3024), seed=50 + i)
    from clipsearch.config import available_cores

    runs = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "clipsearch", "index", str(folder), "--db", f"{work}/c.db", "--model",
                            str(model), "-q"], check=True, cwd=REPO, env=dict(os.environ, CLIPSEARCH_HOME=work))
            runs.append(time.perf_counter() - started)
    per_photo = median(runs) * available_cores() / 24
    print(f"`clipsearch index` of 24 such photos: {median(runs):.2f} s on {available_cores()} cores = "
          f"{per_photo * 1000:.0f} core-ms a photo (process start and model load included): the print is "
          f"{median(printing) / per_photo * 100:.2f}% of it")


def scale(counts: list[int], originals: np.ndarray, model: Path) -> None:
    from clipsearch.cache.packed import quantize_rows
    from clipsearch.cache.store import Store
    from clipsearch.model.manifest import load_manifest

    from statistics import NormalDist

    # Coefficients drawn per position: sign biases measured on the real photos, magnitudes
    # falling with frequency as in natural pictures; a near-copy is its original plus noise.
    bias = np.unpackbits(originals, axis=1)[:, :prints.BITS].mean(axis=0).clip(0.02, 0.98)
    offset = np.array([NormalDist().inv_cdf(float(p)) for p in bias])
    rows_, cols_ = np.divmod(np.arange(prints.BITS), prints.BLOCK)
    falloff = 1.0 / (1.0 + rows_ + cols_) ** 1.5
    manifest = load_manifest(model)
    print("\n## scale: `clipsearch duplicates --kind exact --kind same` in a fresh process, synthetic caches")
    for count in counts:
        db = CACHE / f"dups-{count}-{prints.VERSION}.db"
        if not db.exists():
            rng = np.random.default_rng(count)
            store = Store(db)
            store.check_model(manifest.model_id, manifest.name, claim=True)
            unit = rng.normal(size=(1, manifest.embedding_dim)).astype(np.float32)
            q, scales = quantize_rows(unit / np.linalg.norm(unit))
            for start in range(0, count, 100_000):
                n = min(100_000, count - start)
                coefficients = (rng.normal(size=(n, prints.BITS)) + offset) * falloff
                copies = np.flatnonzero(rng.random(n) < 0.05)  # near-copies of the row before
                copies = copies[copies > 0]
                coefficients[copies] = coefficients[copies - 1] + rng.normal(scale=0.05, size=(len(copies), prints.BITS)) * falloff
                magnitude = np.abs(coefficients[:, 1:])
                strong = np.c_[np.zeros(n, bool), magnitude >= np.median(magnitude, axis=1, keepdims=True)]
                signs = coefficients > 0
                signs[:, 0] = False
                table = np.packbits(np.c_[signs, strong], axis=1)
                with store.atomic():
                    seq = store.next_seq()
                    store.insert_rows(((f"/volume1/photo/{(start + i) // 1000:04d}/IMG_{start + i:07d}.jpg".encode(),
                                        f"/volume1/photo/{(start + i) // 1000:04d}".encode(), 1, 2_000_000 + start + i,
                                        os.urandom(32), q[0].tobytes(), float(scales[0]), seq, time.time())
                                       for i in range(n)))
                    store.put_prints_bulk((table[i].tobytes(), 2_000_000 + start + i) for i in range(n))
            store.close()
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "clipsearch", "duplicates",
                                  "--db", str(db), "--model", str(model), "--kind", "exact", "--kind", "same",
                                  "--json"], capture_output=True, text=True, cwd=REPO)
            runs.append((time.perf_counter() - started, float(out.stderr.strip().split()[-1]),
                         out.stdout.count("\n")))
        seconds, peak, groups = median([r[0] for r in runs]), max(r[1] for r in runs), runs[0][2]
        print(f"{count:>9,} photos: {seconds:6.1f} s, peak RSS {peak:.0f} MB, {groups:,} groups")


# A small wrapper process: the peak RSS of its child, the command (in MB, last line of stderr).
PEAK = ("import resource, subprocess, sys\nsubprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=None)
    parser.add_argument("--scale", type=int, nargs="*", default=[100_000, 1_280_000])
    args = parser.parse_args()
    print(cpu_summary())
    model = full_model()
    if args.scale:
        cost(model)
    originals = quality(public_photos(args.photos))
    scale(args.scale, originals, model)


if __name__ == "__main__":
    tempfile.tempdir = str(CACHE)
    main()
