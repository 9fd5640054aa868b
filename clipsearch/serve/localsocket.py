"""The warm path of `clipsearch query`: a running `clipsearch serve` also listens on a Unix
socket in the data dir (`sockets/<hash of the cache path>.sock`, in a folder only its user
can enter, the socket itself 0600, and each caller's uid checked again with SO_PEERCRED).
`query` sends its request there and prints the answer exactly as a cold run would; with no
server for its cache and model, or any trouble on the way, it runs cold.

Both sides of the protocol live here: one JSON line each way. The client side imports
nothing heavy (no numpy, no onnxruntime): a warm query's process costs the interpreter, click
and a socket round trip.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import struct
from pathlib import Path

MAX_REQUEST = 1 << 16
CONNECT_TIMEOUT = 0.5
ANSWER_TIMEOUT = 120.0


def socket_path(db_path) -> Path:
    from clipsearch.config import home

    key = hashlib.sha256(os.fsencode(os.path.realpath(db_path))).hexdigest()[:16]
    return home() / "sockets" / f"{key}.sock"


def private_folder(folder: Path) -> bool:
    """The sockets folder exists, is ours and nobody else's (created 0700 if missing)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


# -- client: `clipsearch query` ---------------------------------------------------------------

def ask_server(db_path, model_dir, request: dict, text_model_dir=None):
    """The `search/answer.Answer` a running server gives for `request` (run_query's arguments), or
    None: no server for this cache, model and text model, or it could not answer (then run cold)."""
    path = socket_path(db_path)
    if not path.exists() or not private_folder(path.parent):
        return None
    request = dict(request, model=os.path.realpath(model_dir),
                   text_model=os.path.realpath(text_model_dir) if text_model_dir else None)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(path))
            sock.settimeout(ANSWER_TIMEOUT)
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while chunk := sock.recv(1 << 20):
                chunks.append(chunk)
        reply = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None
    if not reply.get("ok"):
        return None
    from clipsearch.search.answer import Answer

    paths = [base64.b64decode(item) for item in reply["paths"]]
    return Answer(list(zip(paths, reply["scores"])), reply["notes"],
                  {paths[i]: meta for i, meta in reply["meta"]}, reply["ids"],
                  {paths[i]: base64.b64decode(raw) for i, raw in reply.get("raw", [])})


# -- server: `clipsearch serve` ---------------------------------------------------------------

def serve_socket(db_path, model_dir, answer, text_model_dir=None) -> tuple[object, Path] | tuple[None, str]:
    """Listen on the cache's socket in a daemon thread; `answer(request) -> Answer` runs a
    query. (server, path), or (None, why not)."""
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
    model = os.path.realpath(model_dir)
    text_model = os.path.realpath(text_model_dir) if text_model_dir else None

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
            if request.pop("model", None) != model or request.pop("text_model", None) != text_model:
                return {"ok": False}
            found = answer(request)
            return {"ok": True, "paths": [base64.b64encode(path).decode("ascii") for path, _ in found.results],
                    "scores": [score for _, score in found.results], "notes": found.notes, "ids": found.ids,
                    "meta": [[i, found.meta[path]] for i, (path, _) in enumerate(found.results) if path in found.meta],
                    "raw": [[i, base64.b64encode(found.raw[path]).decode("ascii")]
                            for i, (path, _) in enumerate(found.results) if path in found.raw]}

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
