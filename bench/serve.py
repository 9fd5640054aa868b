"""`clipsearch serve`: warm query latency over HTTP (p50/p95) and the server's memory, at 100k
and 1.28M cached photos; the whole `clipsearch query` process answered through the running
server's socket against a cold one (--no-server), interleaved in the same run; a bounded load
test (concurrent keep-alive clients while stalled clients hold connections); and what a
thumbnail costs: made from the photo, from the disk cache, and taken from the NAS's own.

    python bench/serve.py [--sizes 100000 1280000] [--queries 60] [--clients 16] [--stalled 8] [--client PATH]
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
from clipsearch.model.manifest import load_manifest  # noqa: E402

TEXTS = ["a kitten peeking from behind a corner", "a sandy beach with the sea", "birthday cake with candles",
         "snow on the mountains", "a dog running in a park", "city lights at night"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> tuple[float, float, float]:
    """(RSS, peak RSS, the RSS that is the process's own memory: RssAnon). The rest is mapped
    files, mostly the packed vector files serve keeps mapped: page cache, shared and reclaimable."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM", "RssAnon"))


def start_server(db: Path, model: Path, home: Path) -> tuple[subprocess.Popen, int, dict]:
    port = free_port()
    env = dict(os.environ, CLIPSEARCH_HOME=str(home))
    server = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", "--db", str(db), "--model", str(model),
                               "--port", str(port)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    started = time.perf_counter()
    while "serving" not in server.stderr.readline():
        if server.poll() is not None or time.perf_counter() - started > 300:
            raise SystemExit("the server did not start")
    print(f"  server ready in {time.perf_counter() - started:.1f} s")
    return server, port, env


def load_test(port: int, clients: int, stalled: int, seconds: float = 10.0) -> None:
    """`clients` keep-alive clients searching as fast as they can for `seconds`, while
    `stalled` connections send half a request and wait."""
    import threading

    holds = []
    for _ in range(stalled):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/search?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        holds.append(sock)
    latencies, statuses, errors = [], [], []
    deadline = time.perf_counter() + seconds

    def client(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = 0
        while time.perf_counter() < deadline:
            try:
                t0 = time.perf_counter()
                conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": f"{TEXTS[(n + i) % 6]} {n} {i}"}))
                response = conn.getresponse()
                response.read()
                latencies.append(time.perf_counter() - t0)
                statuses.append(response.status)
                if response.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            except OSError as exc:
                errors.append(exc)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for sock in holds:
        sock.close()
    ok = statuses.count(200)
    print(f"  load: {clients} keep-alive clients for {elapsed:.0f} s with {stalled} stalled connections open: "
          f"{ok / elapsed:.1f} searches/s, {ok} answered 200, {len(statuses) - ok} other statuses, "
          f"{len(errors)} connection errors; latency p50 {np.percentile(latencies, 50) * 1000:.0f} ms, "
          f"p95 {np.percentile(latencies, 95) * 1000:.0f} ms")


def thumbnail_costs(model: Path) -> None:
    """Index a hard-linked copy of the bench photos (half 12 MP, half 2 MP), then time
    /thumb/ID made from the photo, again from the disk cache, and from a Synology thumbnail."""
    import shutil
    import tempfile

    from bench.index import photo_folder

    source = photo_folder(240)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        for path in sorted(source.glob("*.jpg"))[:60]:
            os.link(path, photos / path.name)
        db, home = tmp / "index.db", tmp / "home"
        subprocess.run([sys.executable, "-m", "clipsearch", "index", str(photos), "--db", str(db), "--model",
                        str(model)], cwd=REPO, env=dict(os.environ, CLIPSEARCH_HOME=str(home)), check=True,
                       capture_output=True)
        import sqlite3

        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT id, filepath FROM images ORDER BY id").fetchall()
        server, port, _ = start_server(db, model, home)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

            def fetch(row_id):
                t0 = time.perf_counter()
                conn.request("GET", f"/thumb/{row_id}")
                response = conn.getresponse()
                data = response.read()
                assert response.status == 200
                return time.perf_counter() - t0, data

            big = {row_id for row_id, path in rows if int(Path(os.fsdecode(path)).stem.split("_")[1]) % 2 == 0}
            made = {row_id: fetch(row_id) for row_id, _ in rows}
            cached = {row_id: fetch(row_id)[0] for row_id, _ in rows}
            for row_id, path in rows:  # what Synology Photos leaves beside each photo
                name = os.path.basename(os.fsdecode(path))
                target = photos / "@eaDir" / name / "SYNOPHOTO_THUMB_M.jpg"
                target.parent.mkdir(parents=True)
                target.write_bytes(made[row_id][1])
            shutil.rmtree(home / "thumbnails")  # not from our cache: from the NAS's
            nas = {row_id: fetch(row_id)[0] for row_id, _ in rows}
        finally:
            server.terminate()
            server.wait(10)
    for label, ids in (("12 MP", big), ("2 MP", {row_id for row_id, _ in rows} - big)):
        print(f"  thumbnail of a {label} JPEG over HTTP (median of {len(ids)}): made {median([made[i][0] for i in ids]) * 1000:.1f} ms, "
              f"from the disk cache {median([cached[i] for i in ids]) * 1000:.1f} ms, from the NAS's own thumbnail "
              f"{median([nas[i] for i in ids]) * 1000:.1f} ms; size {median([len(made[i][1]) for i in ids]) / 1024:.0f} KB")


def measure(db: Path, model: Path, queries: int, clients: int = 0, stalled: int = 0, client: str | None = None) -> None:
    server, port, env = start_server(db, model, CACHE / "serve-home")
    try:
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
        rss, peak, own = memory_mb(server.pid)
        p50, p95 = np.percentile(times, 50) * 1000, np.percentile(times, 95) * 1000
        print(f"  warm query over HTTP (top 40, JSON with metadata): p50 {p50:.0f} ms, p95 {p95:.0f} ms "
              f"({queries} queries); server RSS {rss:.0f} MB, peak {peak:.0f} MB, of which its own (RssAnon) "
              f"{own:.0f} MB")
        # The whole `clipsearch query` process, through this server's socket and cold (--no-server).
        runs = {"warm": [], "cold": [], "interpreter": []}
        for i in range(9):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            runs["interpreter"].append(time.perf_counter() - t0)
            for name, extra in (("warm", []), ("cold", ["--no-server"])):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "clipsearch", "query", TEXTS[i % len(TEXTS)], "--db",
                                      str(db), "--model", str(model), "--top", "10", *extra], cwd=REPO, env=env,
                                     check=True, capture_output=True)
                runs[name].append(time.perf_counter() - t0)
                assert out.stdout.count(b"\n") == 10
        warm, cold, bare = median(runs["warm"]), median(runs["cold"]), median(runs["interpreter"])
        print(f"  whole `clipsearch query` process (top 10, median of 9, interleaved): through the server "
              f"{warm * 1000:.0f} ms, cold {cold * 1000:.0f} ms ({cold / warm:.1f}x); the interpreter alone "
              f"(python -c pass) {bare * 1000:.0f} ms, so the warm query's own share {(warm - bare) * 1000:.0f} ms")
        if client:
            user_client(client, db, model, env)
        if clients:
            load_test(port, clients, stalled)
    finally:
        server.terminate()
        server.wait(10)


def user_client(client: str, db: Path, model: Path, env: dict) -> None:
    """The warm query as a user runs it: the `clipsearch` console script of a venv where the
    wheel is installed (no editable-install finder, no runpy), against that venv's bare
    interpreter."""
    python = Path(client).with_name("python")
    runs = {"client": [], "interpreter": []}
    for i in range(2):  # warm-up: the first runs read the venv's files from disk
        subprocess.run([client, "query", TEXTS[i], "--db", str(db), "--model", str(model)], env=env, check=True,
                       capture_output=True)
    for i in range(15):
        t0 = time.perf_counter()
        subprocess.run([str(python), "-c", "pass"], check=True)
        runs["interpreter"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = subprocess.run([client, "query", TEXTS[i % len(TEXTS)], "--db", str(db), "--model", str(model), "--top",
                              "10"], env=env, check=True, capture_output=True)
        runs["client"].append(time.perf_counter() - t0)
        assert out.stdout.count(b"\n") == 10
    warm, bare = median(runs["client"]), median(runs["interpreter"])
    print(f"  the same through {client} (the wheel's console script; median of 15, after 2 warm-ups, not "
          f"interleaved with cold runs): {warm * 1000:.0f} ms; its "
          f"interpreter alone {bare * 1000:.0f} ms, so the query's own share {(warm - bare) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_280_000])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--stalled", type=int, default=8)
    parser.add_argument("--client", metavar="PATH", help="Also time the warm query through this `clipsearch` "
                                                        "(a venv with the wheel installed, as a user has it).")
    args = parser.parse_args()
    model = full_model()
    manifest = load_manifest(model)
    print(cpu_summary())
    for size in args.sizes:
        db = CACHE / f"query-{size}.db"
        build_cache(db, size, manifest)
        print(f"{size} cached photos:")
        measure(db, model, args.queries, args.clients if size == args.sizes[0] else 0, args.stalled, args.client)
    print("thumbnails (60 photos):")
    thumbnail_costs(model)


if __name__ == "__main__":
    main()
