"""The warm path of `clipsearch query`: a running `clipsearch serve` also listens on a Unix
socket in the data dir (`sockets/<hash of the cache path>.sock`, in a folder only its user
can enter, the socket itself 0600, and each caller's uid checked again with SO_PEERCRED).
`query` sends its raw command line there (before click is even imported: `cli/entry.py`), the
server parses it with the same command definition and runs it warm, and the client prints
the bytes it gets back, exactly what a cold run prints; with no server for its cache, model
and text model, or any trouble on the way, it runs cold. The syntax is owned once, by
`cli/query.py`.

Both sides of the protocol live here: one JSON line each way. The client side imports the
standard library only: a warm query's process costs the interpreter and a socket round trip
(measured in docs/serve.md "The local socket").
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct

MAX_REQUEST = 1 << 16
CONNECT_TIMEOUT = 0.5
ANSWER_TIMEOUT = 120.0
asked = False  # the entry point has offered this process's query to a server already


def socket_file(db_path) -> str:
    """The socket of the server for the cache at `db_path` (a string: the client side imports
    no pathlib)."""
    from clipsearch.config import home_dir

    key = hashlib.sha256(os.fsencode(os.path.realpath(db_path))).hexdigest()[:16]
    return os.path.join(home_dir(), "sockets", f"{key}.sock")


def socket_path(db_path) -> Path:
    from pathlib import Path

    return Path(socket_file(db_path))


def private_folder(folder) -> bool:
    """The sockets folder exists, is ours and nobody else's (created 0700 if missing)."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


# -- client: `clipsearch query` ---------------------------------------------------------------

def forward_query(args: list[str], db_path) -> int | None:
    """Send a `clipsearch query` command line (its raw arguments, the working directory and the
    CLIPSEARCH_* environment) to the server of `db_path`; write what it answers on stdout and
    stderr, exactly as a cold run would, and return the exit code. None: no server for this
    cache, or it would not or could not answer (then run cold). Imports nothing beyond the
    standard library: `cli/entry.py` calls it before click is loaded."""
    path = socket_file(db_path)
    if not os.path.exists(path) or not private_folder(os.path.dirname(path)):
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was deleted: the cold run says what that means
        return None
    request = {"args": list(args), "cwd": cwd,
               "env": {key: value for key, value in os.environ.items() if key.startswith("CLIPSEARCH_")}}
    # The C module itself: `socket` wraps it in enum and selectors machinery a one-shot client
    # never uses, measured 5 ms of a ~58 ms warm query process.
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
        sock.settimeout(ANSWER_TIMEOUT)
        sock.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
        reply = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    if not reply.get("ok"):
        return None
    import sys

    try:
        sys.stderr.write(reply["stderr"])
        sys.stderr.flush()
        sys.stdout.buffer.write(base64.b64decode(reply["stdout"]))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (e.g. `head`) has all it wanted
        pass
    return int(reply["code"])


def db_path_of(args: list[str]):
    """Which cache a query command line is for, to find its server's socket before click
    parses anything: `--db PATH` / `--db=PATH`, else CLIPSEARCH_DB, else the data dir's. Only
    routing: the server parses the line itself and declines one that is not for its cache."""
    from clipsearch.config import default_db_file

    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--db" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--db="):
            return arg[5:]
    return default_db_file()


# -- server: `clipsearch serve` ---------------------------------------------------------------

def serve_socket(db_path, answer) -> tuple[object, Path] | tuple[None, str]:
    """Listen on the cache's socket in a daemon thread; `answer(request)` parses and runs a
    forwarded command line: {"code", "stdout" (bytes), "stderr"}, or None to let the client
    run cold. (server, path), or (None, why not)."""
    import socket
    import socketserver
    import threading

    path = socket_path(db_path)
    if not private_folder(path.parent):
        return None, f"{path.parent} is not a folder only this user can open"
    if path.exists():
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(CONNECT_TIMEOUT)
                probe.connect(str(path))
            return None, "another clipsearch serve already answers queries on this cache"
        except OSError:
            path.unlink()  # left by a server that was killed

    class Handler(socketserver.StreamRequestHandler):
        timeout = 10.0

        def handle(self):
            try:
                reply = self.reply()
            except Exception:  # noqa: BLE001 - the client runs cold instead
                reply = {"ok": False}
            try:
                self.wfile.write(json.dumps(reply).encode())
            except OSError:
                pass

        def reply(self) -> dict:
            uid = struct.unpack("3i", self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                return {"ok": False}
            request = json.loads(self.rfile.readline(MAX_REQUEST))
            found = answer(request)
            if found is None:
                return {"ok": False}
            return {"ok": True, "code": found["code"], "stderr": found["stderr"],
                    "stdout": base64.b64encode(found["stdout"]).decode("ascii")}

    class Server(socketserver.ThreadingUnixStreamServer):
        daemon_threads = True

    old_umask = os.umask(0o177)  # the socket is created 0600
    try:
        server = Server(str(path), Handler)
    finally:
        os.umask(old_umask)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    return server, path


def stop_socket(server, path: Path) -> None:
    server.shutdown()
    server.server_close()
    try:
        path.unlink()
    except OSError:
        pass
