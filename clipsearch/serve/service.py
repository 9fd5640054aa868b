"""`clipsearch serve --print-service systemd`: a unit that keeps the search page running
across reboots and crashes, as the user who prints it, with this installation's absolute
paths (a venv's `clipsearch` is not on a service manager's PATH), and no secret on its
command line (`ps` and `systemctl status` show command lines to every user): the access token
is the one kept in the data dir (`access.py`), which the unit points at.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def executable() -> list[str]:
    """How a service manager starts this installation's clipsearch: the venv's script beside
    the interpreter, else the interpreter with `-m clipsearch`."""
    script = Path(sys.executable).parent / "clipsearch"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "clipsearch"]


def systemd_unit(host: str, port: int, db_path: Path, model_dir: Path, data_dir: Path, user: str,
                 extra: list[str] = ()) -> str:
    """The unit file's text (`/etc/systemd/system/clipsearch-serve.service`)."""
    command = [*executable(), "serve", "--host", host, "--port", str(port), "--db", str(Path(db_path).resolve()),
               "--model", str(Path(model_dir).resolve()), *extra]
    quoted = " ".join(_systemd_quote(part) for part in command)
    return f"""# clipsearch serve as a service: save as /etc/systemd/system/clipsearch-serve.service, then
#   sudo systemctl daemon-reload && sudo systemctl enable --now clipsearch-serve
# The access token is the one kept in {data_dir}/serve-token (mode 0600): the link
# `clipsearch serve` printed stays valid across restarts; `journalctl -u clipsearch-serve`
# shows the link again. To use a token of your own, put CLIPSEARCH_TOKEN=... in a file only
# root can read and add `EnvironmentFile=/etc/clipsearch/serve.env` below. More: docs/serve.md
# in the clipsearch checkout.
[Unit]
Description=clipsearch: photo search page for the home network
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Environment={_systemd_quote("CLIPSEARCH_HOME=" + str(data_dir))}
ExecStart={quoted}
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full

[Install]
WantedBy=multi-user.target
"""


def _systemd_quote(word: str) -> str:
    """A word for a unit file: systemd splits like a shell, and `%` and `$` are its own."""
    word = word.replace("%", "%%").replace("$", "$$")
    return shlex.quote(word) if any(c in word for c in " \t'\"\\;") else word
