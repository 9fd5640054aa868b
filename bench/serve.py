"""`clipsearch serve`: warm query latency over HTTP (p50/p95) and the server's memory, at 100k
and 1.28M cached photos; and the whole `clipsearch query` process answered through the running
server's socket against a cold one (--no-server), interleaved in the same run.

    python bench/serve.py [--sizes 100000 1280000] [--queries 60]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, REPO, cpu_summary, full_model, median  # noqa: E402
from bench.query import build_cache  # noqa: E402
from clipsearch.manifest import load_manifest  # noqa: E402

TEXTS = ["a kitten peeking from behind a corner", "a sandy beach with the sea", "birthday cake with candles",
         "snow on the mountains", "a dog running in a park", "city lights at night"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(db: Path, model: Path, queries: int) -> None:
    port = free_port()
    env = dict(os.environ, CLIPSEARCH_HOME=str(CACHE / "serve-home"))
    server = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", "--db", str(db), "--model", str(model),
                               "--port", str(port)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        started = time.perf_counter()
        while "serving" not in server.stderr.readline():
            if server.poll() is not None or time.perf_counter() - started > 300:
                raise SystemExit("the server did not start")
        print(f"  server ready in {time.perf_counter() - started:.1f} s")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        times = []
        for i in range(queries + 3):
            text = f"{TEXTS[i % len(TEXTS)]} {i}"
            t0 = time.perf_counter()
            conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": text, "top": 40}))
            response = conn.getresponse()
            body = json.loads(response.read())
            elapsed = time.perf_counter() - t0
            assert response.status == 200 and len(body["results"]) == 40, body
            if i >= 3:  # the first ones fault the packed file's pages in
                times.append(elapsed)
        rss, peak = memory_mb(server.pid)
        p50, p95 = np.percentile(times, 50) * 1000, np.percentile(times, 95) * 1000
        print(f"  warm query over HTTP (top 40, JSON with metadata): p50 {p50:.0f} ms, p95 {p95:.0f} ms "
              f"({queries} queries); server RSS {rss:.0f} MB, peak {peak:.0f} MB")
        # The whole `clipsearch query` process, through this server's socket and cold (--no-server).
        runs = {"warm": [], "cold": []}
        for i in range(7):
            for name, extra in (("warm", []), ("cold", ["--no-server"])):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "clipsearch", "query", TEXTS[i % len(TEXTS)], "--db",
                                      str(db), "--model", str(model), "--top", "10", *extra], cwd=REPO, env=env,
                                     check=True, capture_output=True)
                runs[name].append(time.perf_counter() - t0)
                assert out.stdout.count(b"\n") == 10
        warm, cold = median(runs["warm"]), median(runs["cold"])
        print(f"  whole `clipsearch query` process (top 10, median of 7, interleaved): through the server "
              f"{warm * 1000:.0f} ms, cold {cold * 1000:.0f} ms ({cold / warm:.1f}x)")
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_280_000])
    parser.add_argument("--queries", type=int, default=60)
    args = parser.parse_args()
    model = full_model()
    manifest = load_manifest(model)
    print(cpu_summary())
    for size in args.sizes:
        db = CACHE / f"query-{size}.db"
        build_cache(db, size, manifest)
        print(f"{size} cached photos:")
        measure(db, model, args.queries)


if __name__ == "__main__":
    main()
