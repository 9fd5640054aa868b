"""Which HTTP server `clipsearch serve` stands on: the standard library's threading server
(as shipped, with its bounds) against waitress (a well-kept pure-Python WSGI server, the usual
choice for a small production app) carrying the same `server.App`, at 100k cached photos.
Each runs in its own process; measured: RSS, warm search latency over keep-alive, and
searches answered while many clients sit on half-sent requests (a slow or hostile client).

    python bench/serve_libraries.py [--stalled 8 40]    (needs: pip install waitress)
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, REPO, cpu_summary, full_model  # noqa: E402
from bench.query import build_cache  # noqa: E402
from bench.serve import TEXTS, free_port, memory_mb  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402


# One server process: `python bench/serve_libraries.py --run stdlib|waitress DB MODEL PORT`.
def run_server(kind: str, db: str, model: str, port: int) -> None:
    from clipsearch.serve.server import BadRequest, make_server

    server, _ = make_server(Path(db), Path(model), "127.0.0.1", port if kind == "stdlib" else 0, None, False)
    if kind == "stdlib":
        print("ready", flush=True)
        server.serve_forever()
        return
    app = server.app
    server.server_close()

    def wsgi(environ, start_response):
        params = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        try:
            body = json.dumps(app.search(params)).encode()
            status = "200 OK"
        except BadRequest as exc:
            body, status = json.dumps({"error": str(exc)}).encode(), f"{int(exc.status)} Error"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    import waitress

    print("ready", flush=True)
    waitress.serve(wsgi, host="127.0.0.1", port=port, threads=4, _quiet=True)


def start(kind: str, db: Path, model: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, CLIPSEARCH_HOME=str(CACHE / "serve-home"))
    process = subprocess.Popen([sys.executable, __file__, "--run", kind, str(db), str(model), str(port)], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    return process, port


def search(conn, i: int) -> float:
    t0 = time.perf_counter()
    conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": f"{TEXTS[i % 6]} {i}", "top": 40}))
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise OSError(f"HTTP {response.status}")
    return time.perf_counter() - t0


def under_stalled(port: int, stalled: int, seconds: float = 8.0, pid: int | None = None) -> tuple[int, int, float, float]:
    """Searches answered / failed by 4 clients in `seconds` while `stalled` connections each
    sent half a request; and the p50 latency of those answered."""
    holds = []
    for _ in range(stalled):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/search?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        holds.append(sock)
    time.sleep(0.5)
    rss = memory_mb(pid)[0] if pid else float("nan")
    ok, failed, latencies = [0], [0], []
    deadline = time.perf_counter() + seconds

    def client(n):
        i = 0
        while time.perf_counter() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                latencies.append(search(conn, 1000 * n + i))
                conn.close()
                ok[0] += 1
            except OSError:
                failed[0] += 1
                time.sleep(0.1)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sock in holds:
        sock.close()
    # The standard library's handler then runs each half-sent request as it stands (its headers
    # end at the EOF): let those finish, or they still hold connection slots in the next round.
    time.sleep(3)
    return ok[0], failed[0], float(np.median(latencies)) if latencies else float("nan"), rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stalled", type=int, nargs="+", default=[8, 120, 200])
    parser.add_argument("--run", nargs=4)
    args = parser.parse_args()
    if args.run:
        return run_server(args.run[0], args.run[1], args.run[2], int(args.run[3]))
    model = full_model()
    db = CACHE / "query-100000.db"
    build_cache(db, 100_000, load_manifest(model))
    print(f"{cpu_summary()}; 100000 cached photos; the same server.App behind each")
    for kind in ("stdlib", "waitress"):
        process, port = start(kind, db, model)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            times = [search(conn, i) for i in range(43)][3:]
            rss, peak, _ = memory_mb(process.pid)
            line = (f"  {kind:9} keep-alive search p50 {np.percentile(times, 50) * 1000:.0f} ms, p95 "
                    f"{np.percentile(times, 95) * 1000:.0f} ms; RSS {rss:.0f} MB (peak {peak:.0f})")
            for stalled in args.stalled:
                ok, failed, p50, rss = under_stalled(port, stalled, pid=process.pid)
                line += (f"\n    with {stalled} stalled clients: {ok} answered, {failed} refused, p50 {p50 * 1000:.0f} ms, "
                         f"RSS {rss:.0f} MB")
            print(line)
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
