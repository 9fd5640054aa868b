"""Tokenizing query texts: the clean-up CLIP was trained with, and a forked child process
that does it early.

OpenAI's tokenizer (and open_clip's, which rclip follows) repairs and normalises text before
BPE: `ftfy.fix_text` (curly quotes, mojibake, full-width forms, ligatures, control
characters), HTML unescaping twice, whitespace collapsing, lower-casing. tokenizer.json alone
does none of it but the last two, so the same query got other ids than CLIP saw in training
(measured: 447 of the 810 texts of tests/data/tokenizer-reference.json). `clean_text` does it
the reference way, and skips ftfy for texts it cannot change (`_PLAIN`).

A cold query spends ~80 ms loading tokenizer.json and ~80 ms creating the text session, and
both hold the GIL, so threads cannot overlap them; a child process can. The parent forks
before it imports numpy or onnxruntime, goes on with those and the session, then reads the
ids from a pipe. Anything unusual (no fork, a child error) falls back to tokenizing in
process, which also produces the proper error message. Imports nothing heavy itself."""
from __future__ import annotations

import json
import os
import re
import sys

# Texts ftfy and HTML unescaping cannot change, so ftfy need not be imported (60-95 ms, more
# than the rest of the tokenizer child's work): printable ASCII without "&", kana, CJK and
# Hangul, emoji without joiners or variation selectors, and accented Latin-1 letters that
# cannot be taken for mojibake (never two in a row, and before a space none of the lead
# bytes ftfy's restore_byte_a0 looks for). Checked against ftfy itself on random texts of
# these characters (tests/test_tokens.py) and on the 810-text reference corpus.
_LATIN = "\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff"
_BEFORE_SPACE_RISKY = "\u00c2\u00c3\u00c5\u00ce\u00d0\u00d9\u00e0\u00e1\u00e2\u00e3\u00f0"
_PLAIN = re.compile(
    "(?:[\t\n\r -%'-~\u3041-\u3096\u309d-\u309f\u30a1-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3"
    "\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f900-\U0001f9ff]"
    f"|(?<![{_LATIN}])(?:[{_LATIN}](?![{_LATIN}\\s])|(?![{_BEFORE_SPACE_RISKY}])[{_LATIN}](?=\\s)))*")
# What phone keyboards type: ASCII with curly quotes. Next to ASCII they cannot be part of
# mojibake, so uncurling them (ftfy's uncurl_quotes) is all ftfy would do.
_CURLY = re.compile("[\t\n\r -%'-~\u2018-\u201f]*")
_UNCURL = str.maketrans({**dict.fromkeys("\u2018\u2019\u201a\u201b", "'"), **dict.fromkeys("\u201c\u201d\u201e\u201f", '"')})
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """The reference clean-up: ftfy, HTML unescaping twice, whitespace collapsed, lower case."""
    if _CURLY.fullmatch(text):
        text = text.translate(_UNCURL)
    elif not _PLAIN.fullmatch(text):
        import html

        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _SPACES.sub(" ", text).strip().lower()


def prepare_text(text: str, clean: str = "clip") -> str:
    """A query as the model's own tokenizer pipeline gets it: "clip" (CLIP's clean-up, above),
    "whitespace" (Immich's M-CLIP: runs of whitespace to one space, trimmed) or "none"
    (sentence-transformers: the tokenizer.json's own normaliser does all of it)."""
    if clean == "clip":
        return clean_text(text)
    if clean == "whitespace":
        return _SPACES.sub(" ", text).strip()
    return text


def load_tokenizer(path):
    """tokenizer.json, reading special-token spellings in a query ("<|endoftext|>", "[SEP]",
    "</s>") as plain text, as open_clip does: typed text must not end or restart the sequence."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode_texts(tokenizer, texts: list[str], clean: str = "clip") -> list[list[int]]:
    """Ids of each text, prepared as the model's training texts were (`tokenizers.Tokenizer`)."""
    return [enc.ids for enc in tokenizer.encode_batch([prepare_text(text, clean) for text in texts])]


class TokenPrefetch:
    def __init__(self, manifest, texts: list[str]):
        self.texts = list(texts)
        self.pid: int | None = None
        if not hasattr(os, "fork") or sys.platform == "darwin":  # macOS frameworks are not fork-safe
            return
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: tokenize, send, leave without running the parent's cleanup
            status = 1
            try:
                os.close(read_fd)
                tokenizer = load_tokenizer(manifest.path("tokenizer.json"))
                payload = json.dumps(encode_texts(tokenizer, self.texts, manifest.text.get("clean", "clip"))).encode()
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(payload)
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        self.pid, self.read_fd = pid, read_fd

    def ids(self, texts: list[str]) -> list[list[int]] | None:
        """The child's ids for `texts`, or None (then the caller tokenizes itself)."""
        if self.pid is None:
            return None
        with os.fdopen(self.read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if status != 0 or not data or list(texts) != self.texts:
            return None
        return json.loads(data)
