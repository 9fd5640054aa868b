"""Loading a CLIP checkpoint (hub id, local folder, or fresh random weights) and its tokenizer.

Random weights are saved to a folder and loaded back through the very same
`from_pretrained` call a user's checkpoint takes, so tests exercise the real path.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from clipsearch.model.layouts import image_spec_from_processor

from .catalogue import VOCAB_PATH

# A small config with CLIP's structure, for fast tests: same inputs and outputs as ViT-B/32
# (77-token context, the real 49,408-entry vocabulary) but narrow and shallow.
TINY_CONFIG = dict(
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=64, patch_size=16),
    projection_dim=32,
)


def save_random_checkpoint(folder: Path, seed: int, tiny: bool = False) -> Path:
    """Write an untrained CLIP with the real ViT-B/32 architecture (CLIPConfig() defaults)."""
    torch.manual_seed(seed)
    config = CLIPConfig(**TINY_CONFIG) if tiny else CLIPConfig()
    model = CLIPModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    build_openai_tokenizer().save_pretrained(folder)
    return folder


def load_model(source: str, revision: str | None = None) -> tuple[CLIPModel, str | None]:
    """Load from a hub id or a local folder. Eager attention: the SDPA path exports to a
    graph onnxruntime can't fuse, and eager is what the fidelity figures were measured on."""
    kwargs = {"attn_implementation": "eager"}
    if revision and not Path(source).exists():
        kwargs["revision"] = revision
    model = CLIPModel.from_pretrained(source, **kwargs).eval()
    commit = getattr(model.config, "_commit_hash", None)
    return model, commit


def build_openai_tokenizer() -> CLIPTokenizer:
    """OpenAI's CLIP BPE tokenizer built from the shipped vocabulary, the way OpenAI's
    SimpleTokenizer derives its vocab: 256 byte symbols, the same with `</w>`, one entry
    per merge, then the two special tokens (ids 49406, 49407)."""
    with gzip.open(VOCAB_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    vocab_list = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab_list += ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def load_tokenizer(source: str, revision: str | None = None) -> CLIPTokenizer:
    """The checkpoint's own tokenizer when it ships one; otherwise OpenAI's, which every
    catalogued ViT-B/32 checkpoint (OpenAI, LAION, DataComp) shares."""
    try:
        kwargs = {"revision": revision} if revision and not Path(source).exists() else {}
        return CLIPTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError):
        return build_openai_tokenizer()


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level mapping: printable bytes map to themselves, the rest to 256+.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def load_preprocess(source: str, revision: str | None, default: dict, image_size: int) -> dict:
    """The checkpoint's own image preprocessing (`preprocessor_config.json`), in the
    manifest's terms; `default` (the catalogue's) when the checkpoint has none. Refuses what
    clipsearch's runtime cannot reproduce (`clipsearch.model.layouts.UnsupportedSource`)."""
    config = _read_processor_config(source, revision)
    if config is None:
        return dict({k: v for k, v in default.items() if k != "image_size"}, size=image_size)
    return image_spec_from_processor(config, f"{source}: preprocessor_config.json", image_size, default)


def _read_processor_config(source: str, revision: str | None) -> dict | None:
    import json

    if not source:
        return None
    if Path(source).exists():
        path = Path(source) / "preprocessor_config.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(source, "preprocessor_config.json", revision=revision)
    except EntryNotFoundError:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))
