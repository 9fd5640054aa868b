"""Tokenizing query texts, started early in a forked child process.

A cold query spends ~80 ms loading tokenizer.json and ~80 ms creating the text session, and
both hold the GIL, so threads cannot overlap them; a child process can. The parent forks
before it imports numpy or onnxruntime, goes on with those and the session, then reads the
ids from a pipe. Anything unusual (no fork, a child error) falls back to tokenizing in
process, which also produces the proper error message. Imports nothing heavy itself."""
from __future__ import annotations

import json
import os
import sys


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
                from tokenizers import Tokenizer

                tokenizer = Tokenizer.from_file(str(manifest.path("tokenizer.json")))
                payload = json.dumps([enc.ids for enc in tokenizer.encode_batch(self.texts)]).encode()
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
