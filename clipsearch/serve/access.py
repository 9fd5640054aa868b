"""Who may use a `serve` on the network: the access token, and how a request shows it.

A generated token is kept in the data dir (`serve-token`, mode 0600, checked to be this
user's and private before it is trusted) and reused, so a NAS reboot does not kill every
phone's cookie; `serve --new-token` rotates it (every browser then needs the new link).
`CLIPSEARCH_TOKEN` / `--token` set one instead (a service manager's secret store, several
servers sharing one). Any token the `--token` message suggests works: it goes into the
printed link percent-encoded (`openssl rand -base64 18` gives `+`, `/` and `=`, and a raw `+`
in a query string arrives as a space).
"""
from __future__ import annotations

import os
import secrets
import stat
import urllib.parse
from pathlib import Path

from clipsearch.errors import UsageError

TOKEN_FILE = "serve-token"
MIN_TOKEN = 16


def token_path() -> Path:
    from clipsearch.config import home

    return home() / TOKEN_FILE


def kept_token(new: bool = False) -> str:
    """The generated token of this data dir: reused, or made (and kept) when there is none or
    `new` asks for another."""
    path = token_path()
    if not new:
        try:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                token = path.read_text(encoding="ascii").strip()
                if len(token) >= MIN_TOKEN:
                    return token
        except (OSError, UnicodeDecodeError):
            pass
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot keep the access token ({exc.strerror}); fix the data dir's permissions "
                         "or give one with --token / CLIPSEARCH_TOKEN") from None
    return token


def link_with_token(url: str, token: str | None) -> str:
    return url + (f"?token={urllib.parse.quote(token, safe='')}" if token else "")


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer T` header (scripts need no cookie)."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def without_token(path: str, query: str) -> str:
    """Where a link with ?token= sends the browser once the cookie is set: the same page and
    search, without the token."""
    kept = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k != "token"]
    return (path or "/") + (f"?{urllib.parse.urlencode(kept)}" if kept else "")
