"""One table of this machine's figures, for comparing boxes: indexing images/s and its
split, cold and warm query latency at 10k / 100k / 1.28M vectors, peak RSS, model sizes and
load times, with the CPU model and flags and the library versions.

    python bench/report.py [--cores N] [--quick]

`--cores N` pins this process and everything it starts to the first N cores (like
`taskset -c 0-(N-1)`), and clipsearch then defaults to N workers/threads: a way to
approximate a smaller box (a 4-core NAS, a 1-core VM) on a bigger one. CPU speed and cache
are not scaled, so expect a real Celeron J3455 to be 2-4x slower per core than this machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def versions() -> str:
    from importlib.metadata import version

    parts = [f"python {platform.python_version()}"]
    for name in ("onnxruntime", "numpy", "pillow", "tokenizers"):
        try:
            parts.append(f"{name} {version(name)}")
        except Exception:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cores", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer photos, runs and sizes (a few minutes)")
    args = parser.parse_args(argv)
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    from bench import index, models, query
    from bench.common import cpu_summary

    quick = args.quick
    m = models.main(["--repeats", "3" if quick else "5"])
    i = index.main(["--photos", "80" if quick else "240", "--repeats", "1" if quick else "3"])
    sizes = "10000,100000" if quick else "10000,100000,1281167"
    q = query.main(["--sizes", sizes, "--runs", "3" if quick else "7", "--reindex-files", "0" if quick else "100000"])
    rows = [
        ("machine", cpu_summary()),
        ("libraries", versions()),
        ("model", "ViT-B/32 random weights, real size; int8 graphs (QInt8, reduce_range, per-channel)"),
        ("model files", f"vision {m['int8']['vision']:.1f} MB, text {m['int8']['text']:.1f} MB (fp32 {m['fp32']['vision']:.1f} / {m['fp32']['text']:.1f} MB)"),
        ("vision tower", f"int8 {m['int8']['img_s']:.1f} images/s, fp32 {m['fp32']['img_s']:.1f} (x{m['int8']['img_s'] / m['fp32']['img_s']:.2f}), batch 16"),
        ("text tower", f"int8 {m['int8']['text_ms']:.1f} ms per query (fp32 {m['fp32']['text_ms']:.1f} ms)"),
        ("session load", f"vision {m['int8']['load_v']:.0f} ms, text {m['int8']['load_t']:.0f} ms"),
        ("indexing", f"defaults {i['defaults']:.1f} images/s, naive baseline {i['baseline']:.1f} (x{i['defaults'] / i['baseline']:.2f}), "
                     f"{i['defaults'] / i['bound']:.0%} of the {i['bound']:.1f} images/s bound"),
        ("indexing split", f"decode+preprocess {i['decode_ms']:.1f} ms/image (full decode {i['full_decode_ms']:.1f}), inference {i['infer_ms']:.1f} ms/image/core"),
    ]
    for size, f in ((k, v) for k, v in q.items() if isinstance(k, int)):
        rows.append((f"query, {size:,} vectors", f"cold {f['cold_s']:.3f} s, warm ranking {f['warm_rank_ms']:.0f} ms, "
                                                  f"peak RSS {f['rss_mb']:.0f} MB, {f['bytes_per_image']:.0f} bytes/image on disk"))
    if "reindex_s" in q:
        rows.append(("re-index, 100,000 unchanged files", f"{q['reindex_s']:.2f} s"))
    width = max(len(k) for k, _ in rows)
    print("\n| what | figure |\n|---|---|")
    for key, value in rows:
        print(f"| {key:{width}} | {value} |")


if __name__ == "__main__":
    main()
