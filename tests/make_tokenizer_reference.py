"""Write tests/data/tokenizer-reference.json: query texts and the ids OpenAI's reference
tokenizer gives them (open_clip's SimpleTokenizer, the one rclip follows: ftfy.fix_text, HTML
unescaping twice, whitespace collapsing, lower-casing, then BPE; 77 ids with truncation).

Needs open_clip_torch and ftfy in the export/test environment (`pip install --no-deps
open_clip_torch ftfy regex`); only open_clip's tokenizer module is loaded, so torchvision is
not needed. Run from the repository root: python tests/make_tokenizer_reference.py
"""
from __future__ import annotations

import html
import importlib.util
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "tokenizer-reference.json"

PHRASES = [
    "a kitten peeking from behind a corner", "sunset over the sea", "a dog playing in the snow",
    "birthday cake with candles", "mountains and a lake", "two people on a beach", "a red car",
    "the Eiffel Tower at night", "New York City skyline", "a photo of a cat.", "kids at the playground",
    "grandma's kitchen", "don't look back", "it's a bird, it's a plane", "we're going home",
    "they've arrived", "I'm here", "you'll see", "he'd know", "Tom & Jerry", "rock 'n' roll",
    "3:30 pm sunset", "16:9 panorama", "-1 degrees outside", "--verbose", "a 1990s photo",
    "covid-19 lockdown", "C++ code on a screen", "e-mail @ 5 o'clock", "100% cotton",
    "café on the corner", "naïve art", "Zürich in winter", "São Paulo traffic", "crème brûlée",
    "Ångström", "smörgåsbord", "fiancée", "Piñata party", "Œuvre complète",
    "東京タワーの夜景", "猫が角から覗いている", "北京的长城", "서울의 밤", "ビール", "ｶﾀｶﾅ",
    "القطط الصغيرة", "שלום עולם", "Москва зимой", "Привет, мир", "ΟΔΥΣΣΕΥΣ", "Σίσυφος ΚΑΙ ΑΣ",
    "γάτος στο σπίτι", "हिंदी पाठ", "ไทย", "İstanbul'da akşam", "straße", "ǅungla",
    "👍", "a cat 🐱 on a mat", "family 👨‍👩‍👧‍👦 picnic", "🏳️‍🌈 parade", "👋🏽 hello", "❤️❤️❤️",
    "🇯🇵 flag", "keycap 1️⃣", "🤷‍♀️", "emoji🎉party",
]


def variants(text: str) -> list[str]:
    """Forms a query takes when typed on phones, pasted from web pages or mangled by old tools."""
    curly = text.replace("'", "\u2019").replace('"', "\u201d")
    return [
        text,
        text.upper(),
        text.title(),
        curly,
        "\u201c" + text + "\u201d",
        html.escape(text, quote=True),
        html.escape(html.escape(text)),
        text.replace(" ", "&nbsp;"),
        "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text),
        text.replace("fi", "\ufb01").replace("fl", "\ufb02").replace("ff", "\ufb00"),
        "\ufeff" + text,
        text.replace(" ", "\u00a0"),
        "  " + text.replace(" ", " \t\n ") + "\r\n",
        text + "\x00\x07",
        text.replace(" ", "\u200b "),
        text.encode("utf-8").decode("cp1252", errors="replace"),
        text.encode("utf-8").decode("latin-1"),
    ]


EXTRA = [
    "", " ", "\t\n", "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;quoted&#39;", "&#x1F431;", "a &amp;amp; b",
    "<b>bold</b> text", "<|startoftext|>", "<|endoftext|>", "<start_of_text>", "word " * 200,
    "supercalifragilisticexpialidocious " * 30, "🐱" * 100, "日本" * 80, "a" * 500,
    "A\u0301ccented by combining", "e\u0308", "\u2126 ohm", "\u212b", "x\u00b2 + y\u00b2", "\u2460 \u2461 \u2462",
    "\u00bd cup sugar", "\u2122 \u00ae \u00a9", "\u2014 em dash \u2013 en dash", "\u2026 ellipsis",
    "\u00ab guillemets \u00bb", "\u2018single\u2019", "\u201edeutsch\u201c", "\u0130i\u0131I", "ﬃ ﬄ ﬅ",
    "ＣＬＩＰ ｓｅａｒｃｈ", "\u00c3\u00a9t\u00c3\u00a9", "Ã¼ber", "â€œsmartâ€\x9d", "caf\u00e9 caf\u00c3\u00a9",
    "\u0000", "\u001b[31mred\u001b[0m", "line1\u2028line2", "para\u2029graph", "soft\u00adhyphen",
    "ΣΑΣ ΣΑΣ.", "ὈΔΥΣΣΕΎΣ", "Ǆ ǅ ǆ", "ẞ capital sharp s",
]


def corpus() -> list[str]:
    seen, texts = set(), []
    for text in [v for p in PHRASES for v in variants(p)] + EXTRA:
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def reference_tokenizer():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs open_clip_torch: pip install --no-deps open_clip_torch ftfy regex")
    folder = Path(list(spec.submodule_search_locations)[0])
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def main() -> None:
    module = reference_tokenizer()
    texts = corpus()
    ids = module.tokenize(texts, context_length=77).tolist()
    end = module.SimpleTokenizer().eot_token_id
    rows = [row[: row.index(end) + 1] for row in ids]
    import ftfy

    OUT.write_text(json.dumps({"reference": "open_clip.tokenizer.tokenize (OpenAI SimpleTokenizer)",
                               "ftfy": ftfy.__version__, "texts": texts, "ids": rows}, ensure_ascii=True,
                              separators=(",", ":")) + "\n")
    print(f"wrote {OUT}: {len(texts)} texts")


if __name__ == "__main__":
    main()
