"""`python -m export`: command line of the export step (argparse: the export side has no
click dependency of its own)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clipsearch.config import models_dir

from .catalogue import catalogue_entry
from .errors import ExportError

NO_TORCH = ("export: needs PyTorch, transformers and onnx ({missing}); install them with "
            "`pip install torch==2.13.0 && pip install -e '.[export]'` in this project, or export on another "
            "machine and copy the model folder here (the runtime itself never needs PyTorch)")


def installed(module: str) -> bool:
    # Looked up, not imported: importing transformers now would fix the hub settings too early.
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # present in sys.modules as None: blocked
        return False


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the model hub cannot be reached, or None. Asked once, quickly: transformers would
    otherwise retry for ~30 s and print a dozen lines before giving up."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as exc:
        return f"{url.hostname}: {exc.strerror or exc}"
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--model", default=None, help="catalogue name (clipsearch/model/catalogue.json); default openai-vit-b-32")
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
    missing = [name for name in ("torch", "transformers", "onnx") if not installed(name)]
    if missing:
        print(NO_TORCH.format(missing=", ".join(missing) + " not installed"), file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        name, entry = catalogue_entry(args.model)
    except ExportError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
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
        unreachable = None if os.environ.get("HF_HUB_OFFLINE") else hub_unreachable()
        if unreachable:
            # Use the local cache if it has the checkpoint, without transformers' retries.
            os.environ["HF_HUB_OFFLINE"] = "1"
    out = args.out or models_dir() / name
    from .build import print_summary, run_export

    try:
        fid = run_export(name=name, source=source, source_info=source_info, out=out, preprocess=entry["preprocess"],
                         revision=revision, keep_fp32=args.keep_fp32, weight_type=args.weight_type,
                         per_channel=not args.no_per_channel, reduce_range=not args.no_reduce_range, random_seed=random_seed, tiny=args.tiny)
    except ExportError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if random_seed is None and not args.source:
            reason = f"cannot reach the model hub ({unreachable}) and {source} is not in the local cache" \
                if unreachable else f"cannot load {source} from the model hub ({str(exc).splitlines()[0].rstrip('.')})"
        else:
            reason = str(exc).splitlines()[0].rstrip(".")
        print(f"export: {reason}; use --source DIR with a downloaded checkpoint, or --random-weights to try "
              "the pipeline", file=sys.stderr)
        return 1
    print_summary(out, fid)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
