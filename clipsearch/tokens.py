"""Tokenizing query texts: the clean-up CLIP was trained with, and a forked child process
that does it early.

OpenAI's tokenizer (and open_clip's, which rclip follows) repairs and normalises text before
BPE: `ftfy.fix_text` (curly quotes, mojibake, full-width forms, ligatures, control
characters), HTML unescaping twice, whitespace collapsing, lower-casing. tokenizer.json alone
does none of it but the last two, so the same query got other ids than CLIP saw in training
(measured: 447 of the 810 texts of tests/data/tokenizer-reference.json). `clean_text` does it
the reference way; plain ASCII without `&` cannot change, so it skips ftfy (import ~30 ms).

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

# Printable ASCII and ordinary whitespace, no "&": ftfy and HTML unescaping leave it as it is.
_PLAIN = re.compile(r"[ -%'-~\t\n\r]*")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """The reference clean-up: ftfy, HTML unescaping twice, whitespace collapsed, lower case."""
    if not _PLAIN.fullmatch(text):
        import html

        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _SPACES.sub(" ", text).strip().lower()


def load_tokenizer(path):
    """tokenizer.json, reading special-token spellings in a query ("<|endoftext|>") as plain
    text, as open_clip does: typed text must not end or restart the sequence."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.encode_special_tokens = True
    return tokenizer


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids of each text, cleaned as CLIP's training texts were (`tokenizers.Tokenizer`)."""
    return [enc.ids for enc in tokenizer.encode_batch([clean_text(text) for text in texts])]


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
                payload = json.dumps(encode_texts(tokenizer, self.texts)).encode()
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
