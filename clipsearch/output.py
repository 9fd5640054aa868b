"""What `clipsearch query` prints: tab-separated scores and paths, bare paths (newline or NUL
separated), or JSON lines with the photos' metadata; and a file name as valid JSON (shared with
the web page's API, `server.py`)."""
from __future__ import annotations

import json
import sys


def json_path(path: bytes) -> dict:
    """A file name as valid JSON: UTF-8 names as they are; any other name as text with its
    undecodable bytes shown as U+FFFD, plus its exact bytes in base64 (`path_b64`): lone
    surrogates, what os.fsdecode gives, are rejected by strict JSON readers."""
    try:
        return {"path": path.decode("utf-8")}
    except UnicodeDecodeError:
        import base64

        return {"path": path.decode("utf-8", "replace"), "path_b64": base64.b64encode(path).decode("ascii")}


JSON_META = ("taken_at", "make", "model", "lens", "lat", "lon", "width", "height", "keywords", "rating")


def write_results(results, as_json: bool, bare_paths: bool, null_sep: bool, meta: dict | None = None) -> None:
    out = sys.stdout.buffer
    for path, score in results:
        if null_sep:
            out.write(path + b"\0")
        elif bare_paths:
            out.write(path + b"\n")
        elif as_json:
            fields = {key: (meta or {}).get(path, {}).get(key) for key in JSON_META}
            fields["keywords"] = fields["keywords"] or []
            record = json_path(path) | {"score": None if score is None else round(score, 6)} | fields
            out.write(json.dumps(record).encode() + b"\n")
        else:
            out.write(("-\t" if score is None else f"{score:.4f}\t").encode() + path + b"\n")
    out.flush()
