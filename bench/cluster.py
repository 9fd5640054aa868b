"""`clipsearch index --cluster`: the local worker pool against a Dask cluster with the same
number of worker processes on this machine (scheduler and workers started as `dask scheduler`
/ `dask worker` processes on 127.0.0.1), interleaved runs on the bench photos (half 12 MP,
half 2 MP). Prints images/s, the overhead of shipping bytes and results, bytes sent per
photo, and the CPU the indexing process itself spends per photo (what a NAS still does when
another machine embeds).

    python bench/cluster.py [--photos 240] [--workers 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REPO, cpu_summary, full_model, median  # noqa: E402
from bench.index import photo_folder  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_index(args: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the index process (and its own children), stderr."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "clipsearch", "index", *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(stderr)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder, model = photo_folder(args.photos), full_model(True)
    env = dict(os.environ, CLIPSEARCH_MODEL=str(model), CLIPSEARCH_HOME=tempfile.mkdtemp())
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    cluster = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                                 str(port), "--no-dashboard"], env=env, stderr=subprocess.DEVNULL)]
    cluster.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers",
                                     str(args.workers), "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                    env=env, stderr=subprocess.DEVNULL))
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(args.workers, timeout=120)
        print(f"machine: {cpu_summary()}; {args.photos} photos (half 12 MP, half 2 MP); {args.workers} worker "
              f"processes either way; medians of {args.repeats} interleaved runs")
        runs = {"local": [], "cluster": []}
        for _ in range(args.repeats):
            for name, extra in (("local", ["--workers", str(args.workers)]), ("cluster", ["--cluster", address])):
                with tempfile.TemporaryDirectory() as tmp:
                    runs[name].append(timed_index([str(folder), "--db", str(Path(tmp) / "index.db"), *extra], env))
        local_wall, cluster_wall = (median(r[0] for r in runs[n]) for n in ("local", "cluster"))
        nas_cpu = median(r[1] for r in runs["cluster"]) / args.photos
        local_cpu = median(r[1] for r in runs["local"]) / args.photos
        size = sum(p.stat().st_size for p in folder.glob("*.jpg")) / args.photos
        print(f"local pool:   {args.photos / local_wall:5.1f} images/s ({local_wall:.1f} s; CPU of the run and its "
              f"workers {local_cpu * 1000:.0f} ms per photo)")
        print(f"Dask cluster: {args.photos / cluster_wall:5.1f} images/s ({cluster_wall:.1f} s): "
              f"{cluster_wall / local_wall - 1:+.0%} time for shipping bytes and results")
        print(f"sent per photo: {size / 1024:.0f} KB (the file itself; results back: 512 bytes + metadata); "
              f"CPU of the indexing process itself with --cluster: {nas_cpu * 1000:.1f} ms per photo "
              f"({nas_cpu / local_cpu:.1%} of what embedding locally costs)")
    finally:
        for process in reversed(cluster):
            process.terminate()
            process.wait(20)


if __name__ == "__main__":
    main()
