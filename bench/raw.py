"""RAW photos: what a RAW costs to decode through its embedded preview, through LibRaw's
half-size decode (no preview big enough), and what a JPEG of the same size costs; ExifTool's
preview extraction for comparison; and indexing a folder of RAW+JPEG pairs against the same
JPEGs alone.

    python bench/raw.py [--megapixels 24] [--repeats 5] [--pairs 24]

The RAW files are DNGs made here (`tests/rawfiles.py`: a 16-bit CFA mosaic of a photo-like
picture, uncompressed, with a JPEG preview): a Canon-style 1620x1080 preview, a Nikon/Sony-
style full-size preview, and none. Per kind: ms per file (decode + preprocess to the model's
224 input, median of --repeats, in this process) and peak RSS (a fresh process decoding one
file). Indexing: the shipped defaults with the bench model, RAW+JPEG pairs vs the JPEGs
alone, median of --repeats runs each, interleaved.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench.common import CACHE, REPO, cpu_summary, full_model, median, phone_photo  # noqa: E402
from clipsearch.photos import formats  # noqa: E402

SPEC = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def size_for(megapixels: float) -> tuple[int, int]:
    width = int((megapixels * 1e6 * 1.5) ** 0.5) // 16 * 16
    return width, width * 2 // 3 // 16 * 16


def samples(megapixels: float) -> dict[str, Path]:
    import rawfiles
    from PIL import Image

    folder = CACHE / f"raw-samples-{megapixels:g}mp"
    made = {name: folder / name for name in ("preview_1620.dng", "preview_full.dng", "no_preview.dng",
                                             "same_size.jpg", "preview_size.jpg")}
    if all(path.exists() for path in made.values()):
        return made
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size_for(megapixels)
    phone_photo(made["same_size.jpg"], (width, height), seed=1)
    picture = Image.open(made["same_size.jpg"]).convert("RGB")
    small = picture.resize((1620, 1620 * height // width), Image.BICUBIC)
    small.save(made["preview_size.jpg"], quality=88)
    made["preview_1620.dng"].write_bytes(rawfiles.make_dng(picture, preview=small))
    made["preview_full.dng"].write_bytes(rawfiles.make_dng(picture, preview=rawfiles.jpeg_bytes(picture, 88)))
    made["no_preview.dng"].write_bytes(rawfiles.make_dng(picture, preview=None))
    return made


def decode_ms(path: Path, repeats: int) -> float:
    from clipsearch.photos.preprocess import decode_image, to_pixels

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        decoded = decode_image(io_of(path), 224, True, name=os.fsencode(path))
        to_pixels(decoded.image, SPEC, decoded.full_size, decoded.box)
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def io_of(path: Path):
    """As an index worker reads a file: whole into memory, once."""
    import io

    return io.BytesIO(path.read_bytes())


# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
HWM = "print([int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
ONE = ("import io, os, sys\nsys.path.insert(0, sys.argv[2])\n"
       "from clipsearch.photos.preprocess import decode_image\n"
       "data = open(sys.argv[1], 'rb').read()\n"
       "decode_image(io.BytesIO(data), 224, True, name=os.fsencode(sys.argv[1]))\n" + HWM)
BARE = "import sys\nsys.path.insert(0, sys.argv[2])\nimport clipsearch.photos.preprocess, rawpy\n" + HWM


def peak_rss(path: Path | None) -> float:
    """Peak RSS (MB) of a fresh process decoding one file (None: importing only)."""
    args = [sys.executable, "-c", ONE, str(path), str(REPO)] if path else [sys.executable, "-c", BARE, "-", str(REPO)]
    return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[-1])


def exiftool_ms(path: Path, repeats: int) -> float | None:
    if shutil.which("exiftool") is None:
        return None
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(["exiftool", "-b", "-PreviewImage", str(path)], capture_output=True, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def pair_folders(pairs: int) -> tuple[Path, Path]:
    """Two folders of the same JPEGs (12 MP): one with a RAW beside each, one without."""
    import rawfiles
    from PIL import Image

    both, alone = CACHE / f"raw-pairs-{pairs}", CACHE / f"raw-pairs-{pairs}-jpeg-only"
    if both.exists() and alone.exists() and len(list(alone.iterdir())) == pairs:
        return both, alone
    shutil.rmtree(both, ignore_errors=True)
    shutil.rmtree(alone, ignore_errors=True)
    both.mkdir(parents=True)
    alone.mkdir(parents=True)
    for i in range(pairs):
        jpeg = alone / f"IMG_{i:04d}.JPG"
        phone_photo(jpeg, size_for(12), seed=100 + i)
        shutil.copy2(jpeg, both / jpeg.name)
        picture = Image.open(jpeg).convert("RGB")
        (both / f"IMG_{i:04d}.CR2").write_bytes(rawfiles.make_dng(picture, preview=picture.resize((1620, 1080))))
    return both, alone


def index_seconds(folder: Path, model: Path, work: Path) -> float:
    db = work / "bench.db"
    for leftover in work.glob("bench.db*"):
        leftover.unlink()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipsearch", "index", str(folder), "--db", str(db), "--model", str(model),
                    "-q"], check=True, cwd=REPO, env=dict(os.environ, CLIPSEARCH_HOME=str(work / "home")))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=24)
    args = parser.parse_args()
    if formats.missing_decoder(b".dng"):
        sys.exit(f"bench: {formats.missing_decoder(b'.dng')}")
    print(cpu_summary())
    made = samples(args.megapixels)
    width, height = size_for(args.megapixels)
    print(f"\n## decode + preprocess to 224, one {width}x{height} picture ({args.megapixels:g} MP); "
          f"ms median of {args.repeats}; peak RSS of a fresh process")
    base_rss = peak_rss(None)
    rows = []
    for name, label in (("same_size.jpg", "JPEG, same size (draft decode)"),
                        ("preview_size.jpg", "JPEG, 1620 px (the preview's size)"),
                        ("preview_1620.dng", "RAW via its 1620 px preview"),
                        ("preview_full.dng", "RAW via its full-size preview"),
                        ("no_preview.dng", "RAW via LibRaw half-size decode")):
        ms = decode_ms(made[name], args.repeats)
        rss = peak_rss(made[name])
        rows.append((label, ms, rss, made[name].stat().st_size / 1e6))
    jpeg_ms = rows[0][1]
    print(f"{'':38} {'ms':>8} {'x JPEG':>7} {'peak MB':>8} {'file MB':>8}")
    for label, ms, rss, mb in rows:
        print(f"{label:38} {ms:8.1f} {ms / jpeg_ms:7.2f} {rss:8.0f} {mb:8.1f}")
    print(f"(a process that only imports the decoders: {base_rss:.0f} MB)")
    exif_ms = exiftool_ms(made["preview_1620.dng"], args.repeats)
    if exif_ms is not None:
        print(f"ExifTool -b -PreviewImage, one process per file (the preview's bytes only, nothing decoded): "
              f"{exif_ms:.0f} ms vs {rows[2][1]:.1f} ms for the whole RAW path here")
    model = full_model()
    both, alone = pair_folders(args.pairs)
    work = CACHE / "raw-index-work"
    work.mkdir(parents=True, exist_ok=True)
    times = {"pairs": [], "alone": []}
    for _ in range(args.repeats):
        times["alone"].append(index_seconds(alone, model, work))
        times["pairs"].append(index_seconds(both, model, work))
    a, b = median(times["alone"]), median(times["pairs"])
    print(f"\n## index {args.pairs} 12 MP photos with the bench model (defaults), median of {args.repeats}, interleaved")
    print(f"JPEGs alone:                 {a:6.2f} s ({args.pairs / a:.1f} photos/s)")
    print(f"the same JPEGs + their RAWs: {b:6.2f} s ({args.pairs / b:.1f} photos/s)  ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
