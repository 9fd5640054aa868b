"""The sharded cache at scale: a synthetic library (vectors and paths as `bench/query.py`
makes them, 1% of the photos rated 5 for a 1% filter) of --photos photos in --shards shards,
listed in a default library's `index.db`; every figure of issue 26 in one run:

- warm queries in process, as `serve` runs them:
  the shards one after the other in one thread (before: what one file amounts to), in threads
  (this code), and in a pool of forked processes holding the shards; unfiltered and a 1% filter;
- cold whole `clipsearch query` processes over the library: wall time and peak RSS, and the
  same on the one-file 1.28M cache of `bench/query.py`, with this checkout and --against;
- an index run adding 1,000 photos to one shard: packed data written (now: none, overlaid)
  and what a query pays for the overlay; the rewrite of one shard's file when it is due, and
  of a one-file cache of the same size;
- with --dask: the same query fanned out to a Dask LocalCluster on loopback whose workers hold
  the shards, against the in-process threads (docs/design.md "Shards beyond one machine").

    python bench/shards.py [--photos 10000000] [--shards 8] [--runs 5] [--against ../old] [--dask]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import CACHE, REPO, cpu_summary, full_model, median  # noqa: E402
from bench.query import WRAPPER, build_cache, insert_synthetic  # noqa: E402
from clipsearch.cache.packed import packed_path, quantize_rows, refresh_packed, write_packed  # noqa: E402
from clipsearch.cache.store import Store  # noqa: E402
from clipsearch.model.manifest import load_manifest  # noqa: E402

QUERY = "a kitten peeking from behind a corner"
CHUNK = 50_000


def build_library(home: Path, photos: int, shards: int, manifest) -> Path:
    """`home/index.db` listing `shards` shards of photos/shards rows each (made once)."""
    db = home / "index.db"
    if (home / "done").is_file() and (home / "done").read_text() == f"{photos} {shards} {manifest.model_id}":
        return db
    for old in home.rglob("*"):
        if old.is_file():
            old.unlink()
    library = Store(db)
    library.check_model(manifest.model_id, manifest.name, claim=True)
    per_shard = photos // shards
    for k in range(shards):
        root = home / "disks" / f"disk{k}"
        root.mkdir(parents=True, exist_ok=True)
        location = home / "index.db.shards" / f"disk{k}.db"
        location.parent.mkdir(parents=True, exist_ok=True)
        store = Store(location)
        store.check_model(manifest.model_id, manifest.name, claim=True)
        rng = np.random.default_rng(1000 + k)

        def rate(store, seq, n, rng=rng):  # 1% of the photos rated 5: the 1% filter
            rated = np.flatnonzero(rng.random(n) < 0.01)
            first = store.query("SELECT MIN(id) FROM images WHERE seq = ?", (seq,))[0][0]
            store.insert_meta_rows([(first + int(i), None, None, None, None, None, 5, "[]") for i in rated], seq)

        insert_synthetic(store, rng, per_shard, manifest.embedding_dim, os.fsencode(root), rate)
        with store.atomic():
            store.set_meta("shard_root", os.fsencode(root).hex())
        write_packed(store, manifest.embedding_dim)
        store.close()
        with library.atomic():
            library.add_shard(os.fsencode(root), str(location), False, uuid.uuid4().hex)
        print(f"  built shard {k + 1}/{shards}", file=sys.stderr, flush=True)
    library.close()
    (home / "done").write_text(f"{photos} {shards} {manifest.model_id}")
    return db


def warm(db: Path, model: Path, runs: int) -> dict:
    """Warm queries in process (serve's path) by fan-out: one thread, threads, processes."""
    from clipsearch.search import fanout
    from clipsearch.search.filters import Filters
    from clipsearch.search.query import WarmEngine, run_query

    engine = WarmEngine(model)
    engine.warm()
    figures = {}
    for name, threads in (("one thread", 1), ("threads", None)):
        fanout.MAX_THREADS = threads
        for label, filters in (("unfiltered", None), ("1% filter", Filters(min_rating=5))):
            run_query([QUERY], db, model, engine=engine, filters=filters)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                answer = run_query([QUERY], db, model, engine=engine, filters=filters)
                times.append(time.perf_counter() - start)
            assert len(answer.results) == 10
            figures[(name, label)] = median(times)
    fanout.MAX_THREADS = None
    figures[("processes", "unfiltered")] = processes(db, model, engine, runs)
    return figures


def nothing_matches(db: Path, model: Path, runs: int) -> float:
    """A warm query whose filter matches no photo: the answer says how many photos have no
    metadata read yet (from the packed files' columns)."""
    from clipsearch.search.filters import Filters
    from clipsearch.search.query import WarmEngine, run_query

    engine = WarmEngine(model)
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        answer = run_query([QUERY], db, model, engine=engine, filters=Filters(camera="no such camera"))
        times.append(time.perf_counter() - start)
    assert not answer.results and "no photo matches the filters" in answer.notes[0], answer.notes
    return median(times[1:])


def warm_elsewhere(checkout: Path, db: Path, model: Path, runs: int) -> dict:
    """`warm` as another checkout (`--against`: the version before) runs it, on the same library."""
    code = ("import json, sys; sys.path.insert(0, '.'); from bench.shards import warm; "
            f"print(json.dumps({{', '.join(k): v for k, v in warm({str(db)!r}, {str(model)!r}, {runs}).items()}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True, check=True)
    return {tuple(key.split(", ")): seconds for key, seconds in json.loads(out.stdout.splitlines()[-1]).items()}


_WORKER: dict = {}


def _open_worker(db: str, model: str, dask_worker=None) -> None:
    """Open the library in a worker process (a Dask worker keeps it on itself: cloudpickle
    sends this script's functions by value, with a fresh `_WORKER` each time)."""
    from clipsearch.cache.library import Library
    from clipsearch.model.manifest import load_manifest as load
    from clipsearch.search.rank import IntegerScorer

    state = dict(library=Library(Path(db)), manifest=load(Path(model)),
                 scorer=IntegerScorer(keep_mapped=True))
    if dask_worker is not None:
        dask_worker.clipsearch_state = state
    else:
        _WORKER.update(state)


def _rank_part(args) -> list:
    from clipsearch.search.query import ranked

    numbers, vector, k = args
    state = _WORKER
    if not state:
        from dask.distributed import get_worker

        state = get_worker().clipsearch_state
    return [(number, row, score) for number in numbers
            for row, _, score in ranked(state["library"].stores[number], state["manifest"], vector, k,
                                        scorer=state["scorer"])]


def processes(db: Path, model: Path, engine, runs: int) -> float:
    """The fan-out over a pool of forked processes that keep the shards open (IPC included)."""
    import multiprocessing

    from clipsearch.cache.library import Library
    from clipsearch.config import available_cores

    library = Library(db)
    numbers = [number for number, _ in library.each() if number]
    library.close()
    cores = available_cores()
    parts = [numbers[i::cores] for i in range(cores)]
    with multiprocessing.get_context("fork").Pool(cores, _open_worker, (str(db), str(model))) as pool:
        times = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            vector = engine.text.encode([QUERY])[0]
            found = [row for rows in pool.map(_rank_part, [(part, vector, 10) for part in parts]) for row in rows]
            sorted(found, key=lambda row: -row[2])[:10]
            times.append(time.perf_counter() - start)
    return median(times[1:])


def cold(model: Path, runs: int, env: dict, extra: list[str], checkout: Path = REPO) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "clipsearch", "query", QUERY, "--model", str(model), *extra]
    run = dict(check=True, capture_output=True, text=True, cwd=checkout, env=dict(os.environ, **env))
    subprocess.run([sys.executable, "-c", WRAPPER, *cmd], **run)  # the page cache warmed
    walls, rss = [], []
    for _ in range(runs):
        wall, peak, _ = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], **run).stdout.split()
        walls.append(float(wall))
        rss.append(float(peak))
    return median(walls), median(rss)


def adding(db: Path, model: Path, manifest, runs: int) -> dict:
    """1,000 photos added to one shard: what the index run's refresh writes, what a query
    pays for the overlay, and the rewrite of that shard when due; then removed again."""
    from clipsearch.cache.library import Library
    from clipsearch.search.query import WarmEngine, run_query

    library = Library(db)
    location = library.stores[min(n for n in library.stores if n)].path
    library.close()
    engine = WarmEngine(model)
    engine.warm()

    def query_ms() -> float:
        run_query([QUERY], db, model, engine=engine)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run_query([QUERY], db, model, engine=engine)
            times.append(time.perf_counter() - start)
        return median(times) * 1000

    before_ms = query_ms()
    store = Store(location)
    rng = np.random.default_rng(5)
    unit = rng.normal(size=(1000, manifest.embedding_dim)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    q, scales = quantize_rows(unit)
    with store.atomic():
        seq = store.next_seq()
        store.insert_rows((b"/added/IMG_%04d.jpg" % i, b"/added", 1, 1, os.urandom(32), q[i].tobytes(),
                           float(scales[i]), seq, time.time()) for i in range(1000))
    size_before = packed_path(location).stat().st_mtime_ns
    start = time.perf_counter()
    rewrote = refresh_packed(store, manifest.embedding_dim)
    refresh_s = time.perf_counter() - start
    assert packed_path(location).stat().st_mtime_ns == size_before and not rewrote
    with_overlay_ms = query_ms()
    start = time.perf_counter()
    write_packed(store, manifest.embedding_dim)
    rewrite_s = time.perf_counter() - start
    with store.atomic():
        store.db.execute("DELETE FROM images WHERE dir = ?", (b"/added",))
        store.next_seq()
    write_packed(store, manifest.embedding_dim)
    store.close()
    return {"refresh_s": refresh_s, "written_bytes": 0, "query_ms": before_ms, "overlay_query_ms": with_overlay_ms,
            "shard_rewrite_s": rewrite_s, "shard_bytes": packed_path(location).stat().st_size}


def dask_fanout(db: Path, model: Path, runs: int) -> dict:
    """A LocalCluster on loopback, a worker per core, each holding its share of the shards
    open; a query = one task per worker (its shards' best 10), merged here."""
    from dask.distributed import Client, LocalCluster

    from clipsearch.cache.library import Library
    from clipsearch.config import available_cores
    from clipsearch.search.query import WarmEngine

    library = Library(db)
    numbers = [number for number, _ in library.each() if number]
    library.close()
    engine = WarmEngine(model)
    engine.warm()
    cores = available_cores()
    with LocalCluster(n_workers=cores, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster, Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        parts = [numbers[i::len(workers)] for i in range(len(workers))]
        client.run(_open_worker, str(db), str(model))
        times, empty = [], []
        for attempt in range(runs + 1):
            start = time.perf_counter()
            vector = engine.text.encode([QUERY])[0]
            futures = [client.submit(_rank_part, (part, vector, 10), workers=[w], pure=False)
                       for w, part in zip(workers, parts)]
            found = [row for rows in client.gather(futures) for row in rows]
            sorted(found, key=lambda row: -row[2])[:10]
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.gather([client.submit(len, [], workers=[w], pure=False) for w in workers])
            empty.append(time.perf_counter() - start)
    return {"query_s": median(times[1:]), "round_trip_s": median(empty[1:]), "workers": len(workers)}


def reindex(files: int, model: Path, manifest, runs: int, against: Path | None = None) -> dict:
    """An unchanged re-index of `files` files (tiny ones; the walk and the cache's look-ups are
    what it costs) with one file (`--db`), by this checkout and by `against` (before and
    after; each after an untimed run of its own), and then the same cache at the default
    place: the first run moves it into a shard (timed), the next ones are unchanged re-indexes."""
    import shutil

    from bench.query import reindex_unchanged

    reindex_unchanged(files, model, manifest)  # makes the files and a one-file cache (and reads their headers)
    root = CACHE / f"tiny-files-{files}"
    checkouts = {"this": REPO, **({"other": against} if against else {})}
    one_file: dict = {name: [] for name in checkouts}
    line = ""
    for name, checkout in checkouts.items():  # one after the other: each rewrites the packed file in its format once
        for run in range(1 + runs):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(root), "--db",
                                  str(CACHE / f"reindex-{files}.db"), "--model", str(model)],
                                 capture_output=True, text=True, check=True, cwd=checkout)
            if run:
                one_file[name].append(time.perf_counter() - start)
            line = out.stderr.strip().splitlines()[-1] if name == "this" else line
    home = CACHE / f"reindex-home-{files}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy2(CACHE / f"reindex-{files}.db", home / "index.db")  # an old cache at the default place
    env = dict(os.environ, CLIPSEARCH_HOME=str(home))
    command = [sys.executable, "-m", "clipsearch", "index", str(root), "--model", str(model)]
    times, lines = [], []
    for _ in range(1 + runs):
        start = time.perf_counter()
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=REPO)
        times.append(time.perf_counter() - start)
        lines.append(out.stderr.strip().splitlines()[-1])
    return {"one_file_s": median(one_file["this"]), "one_file_line": line,
            "one_file_other_s": median(one_file["other"]) if against else None,
            "move_s": times[0], "shard_s": median(times[1:]), "shard_line": lines[-1]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--one-file", type=int, default=1_280_000, help="the one-file cache to compare (0: none)")
    parser.add_argument("--against", type=Path, default=None, help="another checkout: the figures before")
    parser.add_argument("--dask", action="store_true")
    parser.add_argument("--reindex-files", type=int, default=0, help="also time an unchanged re-index of this many files")
    args = parser.parse_args(argv)
    model = full_model(True)
    manifest = load_manifest(model)
    home = CACHE / f"shards-{args.photos}-{args.shards}"
    print(f"machine: {cpu_summary()}; {args.photos:,} photos in {args.shards} shards; medians of {args.runs}")
    db = build_library(home, args.photos, args.shards, manifest)
    figures: dict = {"warm": {}}
    before = warm_elsewhere(args.against, db, model, args.runs) if args.against else {}
    for (fan, label), seconds in warm(db, model, args.runs).items():
        other = f" (other checkout, just before: {before[(fan, label)] * 1000:.0f} ms)" \
            if (fan, label) in before else ""
        print(f"warm query in process, {label:10} {fan:10}: {seconds * 1000:7.0f} ms{other}")
        figures["warm"][f"{fan}, {label}"] = seconds
    figures["nothing_matches_s"] = nothing_matches(db, model, args.runs)
    print(f"warm query, a filter no photo matches (the answer counts photos without metadata): "
          f"{figures['nothing_matches_s'] * 1000:.0f} ms")
    for name, checkout in (("this", REPO), *((("other", args.against),) if args.against else ())):
        wall, rss = cold(model, args.runs, {"CLIPSEARCH_HOME": str(home)}, [], checkout)
        print(f"cold whole-process query over {args.shards} shards ({name} checkout): {wall:.3f} s, "
              f"peak RSS {rss:.0f} MB")
        figures[f"cold_{name}"] = {"s": wall, "rss_mb": rss}
    if args.one_file:
        one = CACHE / f"query-{args.one_file}.db"
        build_cache(one, args.one_file, manifest)
        for name, checkout in (("this", REPO), *((("other", args.against),) if args.against else ())):
            wall, rss = cold(model, args.runs, {}, ["--db", str(one)], checkout)
            print(f"cold whole-process query, one file of {args.one_file:,} ({name} checkout): {wall:.3f} s, "
                  f"peak RSS {rss:.0f} MB")
            figures[f"one_file_{name}"] = {"s": wall, "rss_mb": rss}
    added = adding(db, model, manifest, args.runs)
    print(f"index run adding 1,000 photos to one shard: packed data written {added['written_bytes']} bytes "
          f"(refresh decided in {added['refresh_s'] * 1000:.0f} ms); warm query {added['query_ms']:.0f} ms -> "
          f"{added['overlay_query_ms']:.0f} ms with the overlay; the shard's rewrite when due "
          f"{added['shard_rewrite_s']:.1f} s ({added['shard_bytes'] / 1e6:.0f} MB)")
    figures["adding"] = added
    if args.dask:
        found = dask_fanout(db, model, args.runs)
        print(f"Dask LocalCluster ({found['workers']} workers, loopback): query {found['query_s'] * 1000:.0f} ms, "
              f"an empty task round trip {found['round_trip_s'] * 1000:.1f} ms")
        figures["dask"] = found
    if args.reindex_files:
        found = reindex(args.reindex_files, model, manifest, min(args.runs, 3), args.against)
        before = (f" (other checkout {found['one_file_other_s']:.1f} s, "
                  f"{found['one_file_other_s'] / found['one_file_s']:.2f}x)" if args.against else "")
        print(f"unchanged re-index of {args.reindex_files:,} files, whole process: one file {found['one_file_s']:.1f} s"
              f"{before}, as a shard of the default library {found['shard_s']:.1f} s -> {found['shard_line']} (the "
              f"first run, moving the old cache into the shard: {found['move_s']:.1f} s)")
        figures["reindex"] = found
    print(json.dumps({k: v for k, v in figures.items() if k != "warm"}, default=str))
    return figures


if __name__ == "__main__":
    main()
