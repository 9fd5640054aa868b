"""What `clipsearch query` prints: tab-separated scores and paths, bare paths (newline or NUL
separated), or JSON lines with the photos' metadata (the fields and the JSON form of a name
are the answer's, `search/answer.py`, shared with the web page's API)."""
from __future__ import annotations

import json
import sys

from clipsearch.search.answer import META_FIELDS, json_path, raw_json


def write_results(results, as_json: bool, bare_paths: bool, null_sep: bool, meta: dict | None = None,
                  raw: dict | None = None, out=None) -> None:
    """`raw`: path -> the RAW of its pair: a third column, or `raw` in JSON (null for others).
    `out`: a binary file (default stdout; a server answering a forwarded query: a buffer)."""
    out = out or sys.stdout.buffer
    raw = raw or {}
    for path, score in results:
        if null_sep:
            out.write(path + b"\0")
        elif bare_paths:
            out.write(path + b"\n")
        elif as_json:
            fields = {key: (meta or {}).get(path, {}).get(key) for key in META_FIELDS}
            fields["keywords"] = fields["keywords"] or []
            record = json_path(path) | {"score": None if score is None else round(score, 6)} | raw_json(raw.get(path)) \
                | fields
            out.write(json.dumps(record).encode() + b"\n")
        else:
            pair = b"\t" + raw[path] if path in raw else b""
            out.write(("-\t" if score is None else f"{score:.4f}\t").encode() + path + pair + b"\n")
    out.flush()
