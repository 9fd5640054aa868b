"""Multilingual text towers at their real sizes (random weights of the real architectures, as
no trained weights can be fetched here): what `clipsearch models pull multilingual` and
`multilingual-large` download, how long quantizing takes and its peak RSS (the 4 GB NAS
question), and what a query costs with each against the CLIP text tower, on a cache indexed
once with the bench's ViT-B/32.

- multilingual: DistilBERT multilingual (6 layers, 768 wide, 119,547 WordPiece tokens) saved
  by sentence-transformers with mean pooling and a 768 -> 512 Dense, the transformer exported
  as `onnx/model.onnx`, served in that repo's layout.
- multilingual-large: XLM-RoBERTa Large (24 layers, 1024 wide, 250,002 pieces) with M-CLIP's
  masked mean and 1024 -> 512 projection, exported as Immich publishes it (int32 [1, 77],
  weights in external data files).
The towers are built once (PyTorch: the export extra) and cached; tokenizers get synthetic
vocabularies of the real sizes. Served by the tests' hub-shaped server on 127.0.0.1.

    python bench/multilingual.py [--skip-large]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench.common import CACHE, REPO, cpu_summary, full_model, median, phone_photo  # noqa: E402

TOWERS = CACHE / "multilingual"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
QUERIES = ["un chat qui dort sur un canapé", "кошка спит на диване", "沙发上睡觉的猫", "a kitten peeking from behind a corner",
           "Eine Katze schläft auf dem Sofa"]
# Runs a command, then prints the peak RSS (KiB) of its largest process on the last line.
PEAK = ("import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n")


def measured(args: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak RSS MB, stderr) of one CLI run in a fresh process."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "clipsearch", *args], cwd=REPO,
                            env=dict(os.environ, **env), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    err, _, peak = result.stderr.rstrip("\n").rpartition("\n")
    if result.returncode != 0:
        sys.exit(f"bench: clipsearch {' '.join(args)} failed: {err}")
    return seconds, int(peak) / 1024, err


def synthetic_wordpiece(size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for q in QUERIES for w in q.lower().split()} | {c for q in QUERIES for c in q if not c.isspace()})
    vocab = {t: i for i, t in enumerate(specials + words)}
    n = 0
    while len(vocab) < size:
        vocab.setdefault(f"##w{n:x}" if n % 2 else f"w{n:x}", len(vocab))
        n += 1
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=None, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                    ("[SEP]", 3)])
    return tokenizer


def synthetic_unigram(size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    known = sorted({"▁" + w for q in QUERIES for w in q.split()} | {c for q in QUERIES for c in q if not c.isspace()})
    pieces += [(p, -5.0) for p in known]
    n = 0
    while len(pieces) < size:
        pieces.append((f"▁p{n:x}", -12.0))
        n += 1
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0),
                                                                                                 ("</s>", 2)])
    return tokenizer


def build_sentence_transformers(out: Path) -> None:
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=119547, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                              max_position_embeddings=512)
    bert = DistilBertModel(config).eval()
    work = out.with_name(out.name + ".part")
    shutil.rmtree(work, ignore_errors=True)
    (work / "onnx").mkdir(parents=True)
    ids = torch.randint(5, 1000, (2, 9))
    batch, tokens = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("tokens", min=2, max=128)

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(Hidden().eval(), (ids, torch.ones_like(ids)), str(work / "onnx" / "model.onnx"),
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}},
                          opset_version=18, dynamo=True, external_data=False)
    synthetic_wordpiece(119547).save(str(work / "tokenizer.json"))
    from safetensors.numpy import save_file

    (work / "2_Dense").mkdir()
    (work / "1_Pooling").mkdir()
    weight = torch.nn.Linear(768, 512, bias=False).weight.detach().numpy()
    save_file({"linear.weight": weight}, str(work / "2_Dense" / "model.safetensors"))
    (work / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 768, "out_features": 512, "bias": False,
                                                              "activation_function": "torch.nn.modules.linear.Identity"}))
    (work / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 768, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (work / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (work / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    work.rename(out)


def build_immich_mclip(out: Path) -> None:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(1)
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2)

    class MClip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = XLMRobertaModel(config, add_pooling_layer=False)
            self.LinearTransformation = torch.nn.Linear(1024, 512)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.long()
            states = self.transformer(input_ids=input_ids.long(), attention_mask=mask).last_hidden_state
            embedding = self.LinearTransformation((states * mask.unsqueeze(2)).sum(dim=1) / mask.sum(dim=1)[:, None])
            return embedding / embedding.norm(dim=-1, keepdim=True)

    work = out.with_name(out.name + ".part")
    shutil.rmtree(work, ignore_errors=True)
    (work / "textual").mkdir(parents=True)
    ids = torch.ones((1, 77), dtype=torch.int32)
    ids[0, :4] = torch.tensor([0, 10, 11, 2], dtype=torch.int32)
    with torch.no_grad():
        torch.onnx.export(MClip().eval(), (ids, (ids != 1).to(torch.int32)), str(work / "textual" / "model.onnx"),
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"], opset_version=17,
                          dynamo=False)
    synthetic_unigram(250002).save(str(work / "textual" / "tokenizer.json"))
    (work / "textual" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    (work / "config.json").write_text(json.dumps({"embed_dim": 512, "text_cfg": {"context_length": 77}}))
    work.rename(out)


def built(name: str, builder) -> Path:
    folder = TOWERS / name
    if not folder.is_dir():
        print(f"bench: building the {name} tower with random weights (once; PyTorch)", file=sys.stderr)
        TOWERS.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        builder(folder)
        print(f"bench: built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folder


def repo_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-large", action="store_true", help="Leave out the 2.2 GB XLM-RoBERTa Large tower.")
    args = parser.parse_args()
    import hubserver

    model = full_model()
    print(cpu_summary())
    towers = {"multilingual": ("sentence-transformers/clip-ViT-B-32-multilingual-v1", "sentence-transformers",
                               built("sentence-transformers", build_sentence_transformers))}
    if not args.skip_large:
        towers["multilingual-large"] = ("immich-app/XLM-Roberta-Large-Vit-B-32", "immich-mclip",
                                        built("immich-mclip", build_immich_mclip))
    image_tower = json.loads((model / "manifest.json").read_text())["model_id"]
    with tempfile.TemporaryDirectory(prefix="clipsearch-bench-") as tmp:
        tmp = Path(tmp)
        hub = hubserver.Hub(tmp / "hub")
        try:
            catalogue = {"format_version": 1, "default": "bench", "models": {"bench": {"hub_id": "", "licence": "-"}}}
            for name, (repo, layout, folder) in towers.items():
                (hub.root / repo).mkdir(parents=True)
                (hub.root / repo / COMMIT).symlink_to(folder, target_is_directory=True)
                catalogue["models"][name] = {"kind": "text", "hub_id": repo, "licence": "-", "pairs_with": "bench",
                                             "image_tower": image_tower, "pull": {"repo": repo, "revision": COMMIT,
                                                                                 "layout": layout, "files": {}}}
            (tmp / "catalogue.json").write_text(json.dumps(catalogue))
            env = {"CLIPSEARCH_HOME": str(tmp / "home"), "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "",
                   "CLIPSEARCH_CATALOGUE": str(tmp / "catalogue.json"), "CLIPSEARCH_MODEL": str(model),
                   "CLIPSEARCH_DB": str(tmp / "index.db")}
            print("\npull (download from 127.0.0.1, fold, quantize, verify; one run each)")
            print(f"{'tower':20} {'download':>10} {'int8':>8} {'pull':>8} {'quantize':>9} {'peak RSS':>9} "
                  f"{'peak/fp32':>9} {'int8 vs fp32 min cos':>21}")
            for name, (repo, layout, folder) in towers.items():
                download = sum((folder / f).stat().st_size for f in repo_files(folder)) / 1e6
                seconds, peak, _ = measured(["models", "pull", name], env)
                manifest = json.loads((tmp / "home" / "models" / name / "manifest.json").read_text())
                fidelity = manifest["fidelity"]
                graph_mb = sum((folder / f).stat().st_size for f in repo_files(folder)
                               if f.startswith(("onnx/", "textual/")) and not f.endswith(".json")) / 1e6
                print(f"{name:20} {download:8.0f}MB {fidelity['sizes_mb']['text_int8']:6.0f}MB {seconds:7.1f}s "
                      f"{fidelity['quantize_seconds']:8.1f}s {peak:7.0f}MB {peak / graph_mb:8.2f}x "
                      f"{fidelity['text']['int8_vs_fp32_onnx']['min']:>21}")
            photos = tmp / "photos"
            photos.mkdir()
            for i in range(40):
                phone_photo(photos / f"p{i:03d}.jpg", (1024, 768), i)
            measured(["index", str(photos), "--workers", "1"], env)
            print(f"\nquery, whole process, cold (median of {len(QUERIES)} runs, one per query text in 4 languages; "
                  "peak RSS the largest)")
            print(f"{'text tower':20} {'median':>8} {'ratio':>7} {'peak RSS':>9}")
            baseline = None
            for name in ["(CLIP's own)", *towers]:
                extra = [] if name.startswith("(") else ["--text-model", name]
                runs = [measured(["query", text, "--top", "5", "--no-server", *extra], env) for text in QUERIES]
                seconds = median(r[0] for r in runs) * 1000
                baseline = baseline or seconds
                print(f"{name:20} {seconds:6.0f}ms {seconds / baseline:6.2f}x {max(r[1] for r in runs):7.0f}MB")
            print("\nencode one query, warm (in process, median of 20; the serve path)")
            from clipsearch.model.encoders import TextEncoder
            from clipsearch.model.manifest import load_manifest, load_text_model

            os.environ.update(env)
            baseline = None
            for name in ["(CLIP's own)", *towers]:
                manifest = load_manifest(model) if name.startswith("(") else load_text_model(tmp / "home" / "models" / name)
                encoder = TextEncoder(manifest)
                encoder.encode(["warm up"])
                times = []
                for i in range(20):
                    started = time.perf_counter()
                    encoder.encode([QUERIES[i % len(QUERIES)]])
                    times.append((time.perf_counter() - started) * 1000)
                value = median(times)
                baseline = baseline or value
                print(f"{name:20} {value:6.1f}ms {value / baseline:6.2f}x")
        finally:
            hub.close()


if __name__ == "__main__":
    main()
