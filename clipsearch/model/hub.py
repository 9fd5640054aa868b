"""Downloading files from a Hugging Face-style model hub, with the standard library only:
`{endpoint}/{repo}/resolve/{revision}/{path}` (`HF_ENDPOINT` for a mirror, `HF_TOKEN` for
gated repos), resumed with `Range` + `If-Range` after an interruption, each file checked
against its pinned size and sha256 before anyone uses it.

A file is written as `<name>.part` (beside it `<name>.part.etag`, the validator it was fetched
with) and renamed to `<name>` only once complete and verified: a later pull resumes a part
only if the hub still serves the same bytes (same ETag), and never trusts it unchecked.
huggingface_hub does all this too, but brings eight dependencies for four requests.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit

from clipsearch.config import hub_endpoint, hub_token
from clipsearch.errors import DownloadError

BLOCK = 1 << 20
TIMEOUT = 30  # s without a byte before a download counts as interrupted


@dataclass
class Fetched:
    path: Path
    size: int
    sha256: str
    commit: str | None  # the revision's commit hash, as the hub reports it


def file_url(repo: str, revision: str, path: str) -> str:
    return f"{hub_endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


class _SameHostAuth(urllib.request.HTTPRedirectHandler):
    """The hub redirects big files to a CDN: the token must not follow to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_opener = urllib.request.build_opener(_SameHostAuth)


def _request(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=dict(headers or {}, **{"User-Agent": "clipsearch"}))
    token = hub_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return _opener.open(request, timeout=TIMEOUT)


class DownloadInterrupted(DownloadError):
    """The transfer broke off: what arrived is kept, and the same command resumes it."""


def unreachable(reason) -> DownloadError:
    from clipsearch.config import models_dir

    return DownloadError(
        f"cannot reach the model hub at {hub_endpoint()} ({reason}); on a machine without internet, copy a model "
        f"folder made elsewhere (`clipsearch models pull` or `python -m export`) into {models_dir()}, "
        "or set HF_ENDPOINT to a mirror")


def fetch(repo: str, revision: str, path: str, dest: Path, expected: dict | None = None,
          progress: Callable[[int, int | None], None] | None = None) -> Fetched:
    """Download one file of a repo to `dest`, resuming a part left by an interrupted pull.
    `expected` ({"size", "sha256"}) is checked before the file is renamed into place."""
    url = file_url(repo, revision, path)
    part, validator = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.etag")
    if dest.exists() and expected and _matches(expected, dest.stat().st_size, None) and _matches(
            expected, dest.stat().st_size, _sha256(dest)):
        return Fetched(dest, dest.stat().st_size, expected["sha256"], None)
    dest.unlink(missing_ok=True)
    have = part.stat().st_size if part.exists() and validator.exists() else 0
    headers = {}
    if have:
        headers = {"Range": f"bytes={have}-", "If-Range": validator.read_text().strip()}
    try:
        response = _request(url, headers)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is already whole (or longer): start afresh
            part.unlink()
            validator.unlink(missing_ok=True)
            return fetch(repo, revision, path, dest, expected, progress)
        if exc.code in (401, 403):
            raise DownloadError(f"{url}: access denied ({exc.code}); a gated or private repo needs HF_TOKEN") from None
        if exc.code == 404:
            raise DownloadError(f"{url}: not found (404): the repo, revision or file does not exist there") from None
        raise DownloadError(f"{url}: the hub answered {exc.code} {exc.reason}; try again later") from None
    except (urllib.error.URLError, OSError) as exc:
        raise unreachable(getattr(exc, "reason", exc)) from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        etag = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
        commit = response.headers.get("X-Repo-Commit")
        if etag:
            validator.write_text(etag)
        digest = hashlib.sha256()
        if resumed:
            _hash_into(digest, part)
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while True:
                    block = response.read(BLOCK)
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    have += len(block)
                    if progress:
                        progress(have, total)
        except (OSError, http.client.HTTPException) as exc:  # the connection dropped or stalled
            raise _interrupted(url, have, total, exc) from None
    if total is not None and have != total:
        raise _interrupted(url, have, total, "the connection closed early")
    sha256 = digest.hexdigest()
    if expected and not _matches(expected, have, sha256):
        part.unlink()
        validator.unlink(missing_ok=True)
        pinned = f"{expected['size']} bytes with sha256 " if expected.get("size") is not None else "sha256 "
        raise DownloadError(
            f"{url}: got {have} bytes with sha256 {sha256}, the catalogue pins {pinned}{expected['sha256']}: "
            "altered on the hub or in transit; nothing was installed")
    os.replace(part, dest)
    validator.unlink(missing_ok=True)
    return Fetched(dest, have, sha256, commit)


def _matches(expected: dict, size: int, sha256: str | None) -> bool:
    """The pinned size (when one was published) and sha256 (unless not computed yet)."""
    return (expected.get("size") is None or size == expected["size"]) and (sha256 is None or sha256 == expected["sha256"])


def _interrupted(url: str, have: int, total: int | None, why) -> DownloadError:
    of = f" of {total / 1e6:.1f}" if total else ""
    return DownloadInterrupted(f"{url}: download interrupted after {have / 1e6:.1f}{of} MB ({why}); "
                         "run the same command again to resume")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _hash_into(digest, path)
    return digest.hexdigest()


def _hash_into(digest, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
