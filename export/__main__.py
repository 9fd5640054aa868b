"""`python -m export`: command line of the export step (argparse: the export side has no
click dependency of its own)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipsearch.config import models_dir

from .build import ExportError, print_summary, run_export
from .catalogue import catalogue_entry


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--model", default=None, help="catalogue name (models/catalogue.json); default openai-vit-b-32")
    parser.add_argument("--source", default=None, help="a local checkpoint folder (transformers CLIPModel format) instead of the hub")
    parser.add_argument("--revision", default=None, help="hub revision (default: the catalogue's)")
    parser.add_argument("--random-weights", action="store_true", help="untrained model with the real architecture (tests, benchmarks)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    parser.add_argument("--tiny", action="store_true", help="with --random-weights: a tiny config for fast tests")
    parser.add_argument("--out", type=Path, default=None, help="model folder to write (default: <data dir>/models/<name>)")
    parser.add_argument("--keep-fp32", action="store_true", help="also write the fp32 graphs as a model folder <out>-fp32")
    parser.add_argument("--weight-type", choices=["QInt8", "QUInt8"], default="QInt8", help="weight type (default QInt8: onnxruntime's fast U8S8 path on VNNI and ARM64)")
    parser.add_argument("--no-reduce-range", action="store_true", help="full 8-bit weights (can saturate on AVX2 CPUs without VNNI)")
    parser.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales")
    return parser.parse_args(argv)


def quiet_libraries() -> None:
    # torch.onnx logs a warning per missing torchvision op; quantize_dynamic suggests a
    # pre-processing step that fails on the text tower. Neither is actionable for users.
    import logging
    import warnings

    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("torch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    name, entry = catalogue_entry(args.model)
    revision = args.revision or entry.get("revision")
    random_seed = None
    if args.random_weights:
        name = "random-vit-b-32" + ("-tiny" if args.tiny else "")
        source, source_info, random_seed = "", {"kind": "random", "seed": args.seed, "tiny": args.tiny}, args.seed
        revision = None
    elif args.source:
        path = Path(args.source).expanduser().resolve()
        if not (path / "config.json").is_file():
            print(f"export: {path}: not a checkpoint folder (no config.json); save one with CLIPModel.save_pretrained", file=sys.stderr)
            return 2
        source, source_info, revision = str(path), {"kind": "local", "path": str(path)}, None
        name = path.name if args.model is None else name
    else:
        source, source_info = entry["hub_id"], {"kind": "hub", "hub_id": entry["hub_id"], "revision": revision}
    out = args.out or models_dir() / name
    try:
        fid = run_export(name=name, source=source, source_info=source_info, out=out, preprocess=entry["preprocess"],
                         revision=revision, keep_fp32=args.keep_fp32, weight_type=args.weight_type,
                         per_channel=not args.no_per_channel, reduce_range=not args.no_reduce_range, random_seed=random_seed, tiny=args.tiny)
    except ExportError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"export: {exc}. For the hub source this machine must reach the model hub; "
              "use --source DIR with a downloaded checkpoint, or --random-weights to try the pipeline.", file=sys.stderr)
        return 1
    print_summary(out, fid)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
