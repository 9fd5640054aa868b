"""Files that stall, bloat or kill a worker: the run finishes every other file, the culprit is
tried once more alone and then remembered as failed, so the next run does not repeat it.
Real worker processes on real files; the big flat PNG is a legitimate picture that simply
takes a worker ~1 s and ~300 MB (the colour model's worker holds ~70 MB), which the tests
make too slow or too big with small bounds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, colour_library, run_cli
from PIL import Image
from test_bad_input import failed_paths, indexed_paths
from test_reliability import embedding_workers

MB = 1 << 20


def big_flat_png(path: Path, size=(11000, 8000)) -> Path:
    """88 MP of one colour: 270 KB on disk, 264 MB decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 10)).save(path, compress_level=9)
    return path


def library_with(tmp_path, name="big.png"):
    root = tmp_path / "photos"
    photos = {p for paths in colour_library(root, per_colour=1).values() for p in paths}
    return root, photos, big_flat_png(root / "album1" / name)


def index(root, db, model, *extra, timeout=300):
    return run_cli("index", str(root), "--db", str(db), "--model", str(model), *extra, timeout=timeout)


def assert_refused(result, db, photos, big, why: str) -> None:
    """The run finished, said why `big` was refused, and indexed every other photo."""
    err = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    assert f"warning: {big}: refused: {why}, twice; remembered" in err, err
    assert indexed_paths(db) == {os.fsencode(p) for p in photos}
    assert failed_paths(db) == {os.fsencode(big)}


def test_a_file_over_the_time_bound_is_stopped_tried_again_and_remembered(tmp_path, colour_model):
    root, photos, big = library_with(tmp_path)
    db = tmp_path / "index.db"
    result = index(root, db, colour_model, "--workers", "2", "--file-timeout", "0.3")
    assert_refused(result, db, photos, big, "took longer than 0.3 s (--file-timeout)")
    again = index(root, db, colour_model, "--workers", "2", "--file-timeout", "0.3")
    assert again.returncode == 0 and b"warning" not in again.stderr and b"0 new" in again.stderr, again.stderr
    # Given the time it needs, the same file is indexed once it changes (or after `--file-timeout 60`).
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 1_000_000_000))
    fixed = index(root, db, colour_model, "--workers", "2", "--file-timeout", "60")
    assert fixed.returncode == 0 and b"1 updated" in fixed.stderr, fixed.stderr
    assert os.fsencode(big) in indexed_paths(db)


def test_a_file_over_the_memory_bound_is_refused_and_remembered(tmp_path, colour_model):
    root, photos, big = library_with(tmp_path)
    db = tmp_path / "index.db"
    result = index(root, db, colour_model, "--workers", "1", "--worker-memory", "200")
    assert_refused(result, db, photos, big, "needed more than 200 MB of memory (--worker-memory)")


def kill_when_busy(proc, times: int, over_mb: float = 150) -> int:
    """SIGKILL the worker of an index run whenever it grows past `over_mb` (decoding the big
    PNG), as the kernel's OOM killer or a crashing decoder would end it. Returns the kills."""
    kills, deadline = 0, time.time() + 120
    while kills < times and proc.poll() is None and time.time() < deadline:
        for pid in embedding_workers(proc.pid):
            try:
                rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                continue
            if rss > over_mb * MB:
                os.kill(pid, signal.SIGKILL)
                kills += 1
                while pid in embedding_workers(proc.pid):
                    time.sleep(0.01)
        time.sleep(0.005)
    return kills


def index_killing_workers(root, db, model, kills: int) -> subprocess.CompletedProcess:
    """A one-worker index run whose worker is SIGKILLed `kills` times while on the big PNG."""
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "index", str(root), "--db", str(db), "--model",
                             str(model), "--workers", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert kill_when_busy(proc, kills) == kills
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_file_that_kills_its_worker_twice_is_remembered_and_the_run_finishes(tmp_path, colour_model):
    root, photos, big = library_with(tmp_path)
    db = tmp_path / "index.db"
    result = index_killing_workers(root, db, colour_model, 2)
    assert_refused(result, db, photos, big, "its worker was killed (SIGKILL: out of memory?)")


def test_a_file_whose_worker_is_killed_once_is_not_blamed(tmp_path, colour_model):
    """The OOM killer may end a worker for another process's memory: one try more, and indexed."""
    root, photos, big = library_with(tmp_path)
    db = tmp_path / "index.db"
    result = index_killing_workers(root, db, colour_model, 1)
    assert result.returncode == 0 and b"warning" not in result.stderr, result.stderr
    assert indexed_paths(db) == {os.fsencode(p) for p in photos | {big}}


def test_a_slow_file_does_not_hold_up_the_others(tmp_path, colour_model):
    """Results come back as they finish: while one worker is on a slow file, the other does
    the rest (collected oldest-chunk-first, they all waited for the slow one). At most one
    file, handed to the slow file's worker so that it never idles, waits behind it."""
    from clipsearch.index.workers import WorkerPool

    root, photos, big = library_with(tmp_path)
    files = [(os.fsencode(p), p.stat().st_size, p.stat().st_mtime_ns) for p in [big, *sorted(photos)]]
    pool = WorkerPool(str(colour_model), workers=2, threads=1, use_draft=True)
    order = []
    try:
        order += [r.path for r in pool.submit(files)]
        order += [r.path for r in pool.drain()]
    finally:
        pool.close()
    assert sorted(order) == sorted(f[0] for f in files)
    assert os.fsencode(big) in order[-2:], order


def test_default_worker_count_and_memory_bound_follow_the_available_memory(monkeypatch):
    """One worker per core, unless 80% of the available memory does not hold 400 MB each."""
    from clipsearch.index import workers

    monkeypatch.setattr(workers, "available_cores", lambda: 4)
    for available, expected_workers, expected_bound in ((2500, 4, 1024), (1000, 2, 1024), (300, 1, 1024),
                                                        (24000, 4, 2048), (8000, 4, 1600)):
        monkeypatch.setattr(workers, "available_memory_mb", lambda: available)
        assert workers.default_workers() == expected_workers, available
        assert workers.default_worker_memory(expected_workers) == expected_bound, available
    monkeypatch.setattr(workers, "available_memory_mb", lambda: None)  # no /proc/meminfo
    assert workers.default_workers() == 4 and workers.default_worker_memory(4) == 1024


def test_the_memory_figure_is_this_machines():
    from clipsearch.index.workers import available_memory_mb, resident_mb

    with open("/proc/meminfo") as meminfo:
        total = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) // 1024
    assert 0 < available_memory_mb() <= total
    assert 10 < resident_mb(os.getpid()) < total


def test_with_two_workers_a_bloating_file_is_retried_in_a_fresh_worker_and_the_rest_indexed(tmp_path, colour_model):
    from clipsearch.index.workers import WorkerPool

    root, photos, big = library_with(tmp_path)
    files = [(os.fsencode(p), p.stat().st_size, p.stat().st_mtime_ns) for p in [big, *sorted(photos)]]
    pool = WorkerPool(str(colour_model), workers=2, threads=1, use_draft=True, memory_mb=200)
    results = []
    try:
        results += pool.submit(files)
        results += pool.drain()
    finally:
        pool.close()
    assert sorted(r.path for r in results) == sorted(f[0] for f in files)
    errors = {r.path: r.error for r in results if r.error}
    assert errors == {os.fsencode(big): "refused: needed more than 200 MB of memory (--worker-memory), twice"}


def test_workers_that_never_get_ready_end_the_run_with_one_error(tmp_path, colour_model, monkeypatch):
    """A worker stuck while loading the model is stopped; three in a row end the run clearly."""
    import pytest

    from clipsearch.errors import ClipsearchError
    from clipsearch.index import workers

    monkeypatch.setattr(workers, "START_SECONDS", 0.0)  # no worker can be ready in no time
    photo = colour_library(tmp_path / "photos", per_colour=1)["red"][0]
    pool = workers.WorkerPool(str(colour_model), workers=1, threads=1, use_draft=True)
    try:
        with pytest.raises(ClipsearchError, match="die while loading the model .*did not load the model within 0 s"):
            pool.submit([(os.fsencode(photo), photo.stat().st_size, photo.stat().st_mtime_ns)])
            pool.drain()
    finally:
        pool.close(cancel=True)
    assert pool.slots == []
