"""Regenerate the tiny multilingual text towers committed under tests/data/text-towers (needs
the export extra: torch, transformers, sentence-transformers).

    python tests/make_text_towers.py

Each folder is a hub repo in one published layout, with random weights of the real
architecture made narrow and shallow, and `reference.json` holds what the original pipeline
answers for texts in several scripts:
- sentence-transformers/: a DistilBERT (WordPiece, [CLS] ... [SEP]) saved by
  sentence-transformers itself with mean Pooling and a bias-free Dense to 32 values, the
  transformer exported to `onnx/model.onnx` (inputs input_ids, attention_mask; output
  last_hidden_state, as optimum exports it). Reference: `SentenceTransformer(folder).encode`.
- immich-mclip/: an XLM-Roberta (SentencePiece unigram, <s> ... </s>, <pad> = 1) with M-CLIP's
  masked mean and linear projection, normalised, exported as Immich publishes it (TorchScript
  exporter: the dynamo one names a node `embedding` too, an invalid graph): int32
  input_ids and attention_mask of [1, 77], output `embedding`, weights in an external data
  file. Reference: the same torch modules, fed the tokenizer's padded ids.
Both embed into 32 values: they pair with tests/data/tiny-model's image tower.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "text-towers"
REPO = DATA.parent.parent.parent
sys.path.insert(0, str(REPO))

DIM = 32
WIDTH = 32
CONTEXT = 77
# Texts in several scripts; the reference is computed for these (tests/test_multilingual.py).
TEXTS = [
    "a photo of a cat", "un chat qui dort sur un canapé", "Eine Katze schläft auf dem Sofa",
    "una playa con palmeras", "кошка спит на диване", "沙发上睡觉的猫", "ソファで寝ている猫",
    "소파에서 자는 고양이", "قطة نائمة على الأريكة", "Ελληνικά: μια γάτα", "crème brûlée 🎂",
    "two people hiking on a snowy mountain ridge under a clear sky " * 8,
]
CORPUS = TEXTS + ["the quick brown fox jumps over the lazy dog", "le chien court dans le parc",
                  "der Hund läuft im Park", "собака бежит в парке", "狗在公园里跑", "公園で犬が走る"]


def wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                      lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                                    ("[SEP]", sep)])
    return tokenizer


def unigram_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokenizer.train_from_iterator(CORPUS * 3, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials,
                                                                      unk_token="<unk>"))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tokenizer


def make_sentence_transformers(out: Path) -> list[list[float]]:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import DistilBertConfig, DistilBertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    work = out.parent / "st-work"
    shutil.rmtree(work, ignore_errors=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece_tokenizer(), unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    config = DistilBertConfig(vocab_size=len(tokenizer), dim=WIDTH, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128)
    DistilBertModel(config).save_pretrained(work / "bert")
    tokenizer.save_pretrained(work / "bert")
    transformer = models.Transformer(str(work / "bert"), max_seq_length=128)
    pooling = models.Pooling(WIDTH, pooling_mode="mean")
    dense = models.Dense(WIDTH, DIM, bias=False, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[transformer, pooling, dense], device="cpu")
    shutil.rmtree(out, ignore_errors=True)
    model.save(str(out))
    (out / "onnx").mkdir()
    bert = transformer.auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(5, config.vocab_size, (2, 9))
    batch, tokens = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("tokens", min=2, max=128)
    torch.onnx.export(Hidden().eval(), (ids, torch.ones_like(ids)), str(out / "onnx" / "model.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}},
                      opset_version=18, dynamo=True, external_data=False)
    shutil.rmtree(work)
    for name in ("README.md",):
        (out / name).unlink(missing_ok=True)
    # The module configs as the published repo (2021) has them; sentence-transformers reads both forms.
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}], indent=2) + "\n")
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": WIDTH, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2) + "\n")
    (out / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": WIDTH, "out_features": DIM, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"}, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False},
                                                              indent=2) + "\n")
    reloaded = SentenceTransformer(str(out), device="cpu")  # the original pipeline, as a user loads it
    return reloaded.encode(TEXTS, convert_to_numpy=True).tolist()


def make_immich_mclip(out: Path) -> list[list[float]]:
    import onnx
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(1)
    tokenizer = unigram_tokenizer()
    config = XLMRobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=WIDTH, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=CONTEXT + 3,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)

    class MClip(torch.nn.Module):
        """M-CLIP's text model as Immich exports it: masked mean, linear, normalised."""

        def __init__(self):
            super().__init__()
            self.transformer = XLMRobertaModel(config, add_pooling_layer=False)
            self.LinearTransformation = torch.nn.Linear(WIDTH, DIM)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.long()
            states = self.transformer(input_ids=input_ids.long(), attention_mask=mask).last_hidden_state
            pooled = (states * mask.unsqueeze(2)).sum(dim=1) / mask.sum(dim=1)[:, None]
            embedding = self.LinearTransformation(pooled)
            return embedding / embedding.norm(dim=-1, keepdim=True)

    model = MClip().eval()
    shutil.rmtree(out, ignore_errors=True)
    (out / "textual").mkdir(parents=True)
    ids = torch.ones((1, CONTEXT), dtype=torch.int32)
    ids[0, :5] = torch.tensor([0, 10, 11, 12, 2], dtype=torch.int32)
    mask = (ids != 1).to(torch.int32)
    graph = out / "textual" / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask), str(graph), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=17, dynamo=False)
    # As Immich publishes its 2.2 GB tower: the weights beside the graph, in a file it names.
    proto = onnx.load(str(graph))
    onnx.save(proto, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    padded = tokenizer.__class__.from_str(tokenizer.to_str())
    padded.enable_padding(length=CONTEXT, pad_id=1, pad_token="<pad>")
    padded.enable_truncation(max_length=CONTEXT)
    tokenizer.save(str(out / "textual" / "tokenizer.json"))
    (out / "textual" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "bos_token": "<s>",
                                                                       "eos_token": "</s>"}) + "\n")
    (out / "config.json").write_text(json.dumps({"embed_dim": DIM, "text_cfg": {
        "hf_model_name": "M-CLIP/XLM-Roberta-Large-Vit-B-32", "context_length": CONTEXT}}, indent=2) + "\n")
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            encoding = padded.encode(" ".join(text.split()))
            rows.append(model(torch.tensor([encoding.ids]), torch.tensor([encoding.attention_mask]))[0].tolist())
    return rows


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    reference = {"texts": TEXTS,
                 "sentence-transformers": make_sentence_transformers(DATA / "sentence-transformers"),
                 "immich-mclip": make_immich_mclip(DATA / "immich-mclip")}
    (DATA / "reference.json").write_text(json.dumps(reference, ensure_ascii=False) + "\n", encoding="utf-8")
    for path in sorted(DATA.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(DATA)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
