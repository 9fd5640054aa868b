"""A query's answer, as the CLI, the web page's API and the local socket give it: the results,
notes for the user, and per photo the metadata fields (`META_FIELDS`, one list for every
interface) and its name as valid JSON (`json_path`)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Answer:
    results: list[tuple[bytes, float | None]]  # score None: a listing by metadata alone
    notes: list[str] = field(default_factory=list)  # for stderr: why nothing was found, an untrained model
    meta: dict = field(default_factory=dict)  # path -> metadata fields, when asked for
    ids: list[int] = field(default_factory=list)  # the results' row ids, in order
    raw: dict = field(default_factory=dict)  # path -> the RAW of its RAW+JPEG pair, for those that have one


def json_path(path: bytes) -> dict:
    """A file name as valid JSON: UTF-8 names as they are; any other name as text with its
    undecodable bytes shown as U+FFFD, plus its exact bytes in base64 (`path_b64`): lone
    surrogates, what os.fsdecode gives, are rejected by strict JSON readers."""
    try:
        return {"path": path.decode("utf-8")}
    except UnicodeDecodeError:
        import base64

        return {"path": path.decode("utf-8", "replace"), "path_b64": base64.b64encode(path).decode("ascii")}


# What an answer says of each photo, in this order, in `query --json` and the web API.
META_FIELDS = ("taken_at", "make", "model", "lens", "lat", "lon", "width", "height", "keywords", "rating")


def raw_json(raw: bytes | None) -> dict:
    """The RAW of a pair as JSON (`raw`, and `raw_b64` for a name that is not UTF-8), or null."""
    if raw is None:
        return {"raw": None}
    return {("raw_b64" if key == "path_b64" else "raw"): value for key, value in json_path(raw).items()}


def photo_json(row_id: int, path: bytes, score: float | None, meta: dict, raw: bytes | None = None) -> dict:
    """One photo as the web API gives it, in a result list or alone (`/api/photo/ID`)."""
    return {"id": row_id, "score": None if score is None else round(score, 4), **json_path(path),
            "name": path.rsplit(b"/", 1)[-1].decode("utf-8", "replace"), **raw_json(raw),
            "raw_name": raw.rsplit(b"/", 1)[-1].decode("utf-8", "replace") if raw else None,
            **{key: meta.get(key) for key in META_FIELDS}}
