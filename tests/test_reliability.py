"""Kills, overlapping runs, damaged state and a full disk, with the real CLI in subprocesses."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, run_cli, write_photo

PHOTOS = 600


@pytest.fixture(scope="module")
def big_library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lib")
    for i in range(PHOTOS):
        write_photo(root / f"d{i % 7}" / f"p{i:04d}.jpg", (i % 255, 255 - i % 255, (i * 7) % 255), size=(640, 480),
                    grain=20, seed=i)
    return root


def start_index(root, db, model, *extra):
    return subprocess.Popen([sys.executable, "-m", "clipsearch", "index", str(root), "--db", str(db), "--model",
                             str(model), *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_until_closed(stream, seconds: float) -> bytes:
    """What a pipe still delivers until every process holding its write end has exited."""
    import selectors

    data, deadline = b"", time.time() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while time.time() < deadline and selector.select(max(0.0, deadline - time.time())):
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return data
            data += chunk
    raise AssertionError(f"the stream stayed open {seconds} s after the run was killed: {data!r}")


def check_db(db: Path, dim: int) -> int:
    """Integrity, no duplicate paths, no half-written vector. Returns the count of vectors."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        if conn.execute("PRAGMA user_version").fetchone() == (0,):
            return 0  # killed before the schema's own transaction committed: an empty, valid file
        assert conn.execute("SELECT COUNT(*) - COUNT(DISTINCT filepath) FROM images").fetchone() == (0,)
        bad = conn.execute("SELECT COUNT(*) FROM images WHERE vector IS NOT NULL AND length(vector) != ?", (dim,))
        assert bad.fetchone() == (0,)
        return conn.execute("SELECT COUNT(*) FROM images WHERE vector IS NOT NULL AND deleted = 0").fetchone()[0]


def summary_line(stderr: bytes) -> str:
    return [line for line in stderr.decode().splitlines() if line.startswith("indexed:")][-1]


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def embedding_workers(pid: int) -> list[int]:
    """The pool's worker processes (not multiprocessing's resource tracker, also a child)."""
    workers = []
    for child in children_of(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            pass
    return workers


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_sigkill_at_random_moments_loses_nothing_committed(big_library, tiny_model, tmp_path):
    db = tmp_path / "index.db"
    rng = random.Random(20261130)
    committed_before, kills = 0, 0
    for attempt in range(6):
        proc = start_index(big_library, db, tiny_model, "--workers", str(1 + attempt % 2), "--batch-size", "4",
                           "--commit-seconds", "0.05")
        time.sleep(rng.uniform(0.3, 0.9))
        workers = children_of(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        deadline = time.time() + 10  # orphaned workers notice and leave
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "worker processes outlived a killed index run"
        # Whatever outlives the run (multiprocessing's resource tracker) must not write to
        # the run's stderr: cron would mail its two-line "leaked semaphore" warning.
        stray = read_until_closed(proc.stderr, 15)
        assert b"Warning" not in stray and b"resource_tracker" not in stray and b"Traceback" not in stray, stray
        if not db.exists():
            continue
        committed = check_db(db, 32)
        assert committed >= committed_before  # nothing committed is ever lost
        committed_before = committed
    assert kills >= 3
    final = start_index(big_library, db, tiny_model, "--workers", "2")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    line = summary_line(err)
    assert f"{PHOTOS - committed_before} new, 0 updated" in line and f"{committed_before} unchanged" in line, line
    assert check_db(db, 32) == PHOTOS


def test_sigkill_during_the_first_run(big_library, tiny_model, tmp_path):
    for delay in (0.05, 0.15, 0.3, 0.5):
        db = tmp_path / f"first{delay}.db"
        proc = start_index(big_library, db, tiny_model, "--workers", "1", "--commit-seconds", "0.05")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if db.exists():
            check_db(db, 32)
        run_cli("index", str(big_library), "--db", str(db), "--model", str(tiny_model), check=True, timeout=300)
        assert check_db(db, 32) == PHOTOS


def test_sigkill_during_a_schema_upgrade_keeps_the_old_version(tmp_path, colour_model):
    write_photo(tmp_path / "p" / "a.jpg", (200, 10, 10))
    db = tmp_path / "index.db"
    run_cli("index", str(tmp_path / "p"), "--db", str(db), "--model", str(colour_model), check=True)
    from clipsearch.cache.store import SCHEMA_VERSION

    # A slow upgrade step (a future one, after the current version) killed halfway through.
    script = (
        "import time, clipsearch.cache.store as s\n"
        "def slow(db):\n"
        "    db.execute('ALTER TABLE images ADD COLUMN extra TEXT')\n"
        "    db.execute(\"UPDATE images SET extra = 'x'\")\n"
        "    print('upgrading', flush=True); time.sleep(60)\n"
        "s.MIGRATIONS[s.SCHEMA_VERSION] = slow; s.SCHEMA_VERSION += 1\n"
        f"s.Store(__import__('pathlib').Path({str(db)!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"upgrading"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert "extra" not in [row[1] for row in conn.execute("PRAGMA table_info(images)")]
    assert check_db(db, 3) == 1
    result = run_cli("query", "red", "--db", str(db), "--model", str(colour_model), "--paths", check=True)
    assert result.stdout.strip().endswith(b"a.jpg")


def test_overlapping_runs_never_both_work(big_library, tiny_model, tmp_path):
    db = tmp_path / "index.db"
    first = start_index(big_library, db, tiny_model, "--workers", "1")
    lock = db.with_name("index.db.lock")
    deadline = time.time() + 30
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.02)
    second = run_cli("index", str(big_library), "--db", str(db), "--model", str(tiny_model))
    assert second.returncode == 75 and b"another clipsearch index" in second.stderr
    # a third one waits for the first, then finds nothing left to do
    third = run_cli("index", str(big_library), "--db", str(db), "--model", str(tiny_model), "--wait", "300", timeout=400)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0 and f"{PHOTOS} new" in summary_line(err)
    assert third.returncode == 0 and f"{PHOTOS} unchanged" in summary_line(third.stderr)


def test_queries_during_an_index_run_see_committed_state(big_library, tiny_model, tmp_path):
    db = tmp_path / "index.db"
    run_cli("index", str(big_library / "d0"), "--db", str(db), "--model", str(tiny_model), check=True)
    writer = start_index(big_library, db, tiny_model, "--workers", "1", "--commit-seconds", "0.05")
    answers = []
    while writer.poll() is None and len(answers) < 8:
        result = run_cli("query", "a photo", "--db", str(db), "--model", str(tiny_model), "--top", "5")
        assert result.returncode == 0, result.stderr
        answers.append(len(result.stdout.splitlines()))
    writer.communicate(timeout=300)
    assert writer.returncode == 0 and answers and all(n == 5 for n in answers)


def test_two_libraries_with_two_databases_do_not_interfere(big_library, tiny_model, tmp_path):
    procs = [start_index(big_library / f"d{i}", tmp_path / f"db{i}.db", tiny_model, "--workers", "1") for i in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for i in (1, 2):
        assert check_db(tmp_path / f"db{i}.db", 32) == len(list((big_library / f"d{i}").iterdir()))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("damage, words", [
    ("truncate", "not a clipsearch database or damaged"),
    ("garbage", "not a clipsearch database or damaged"),
    ("newer", "written by a newer clipsearch"),
])
def test_damaged_or_foreign_database_is_never_overwritten(tmp_path, colour_model, damage, words):
    write_photo(tmp_path / "p" / "a.jpg", (200, 10, 10))
    db = tmp_path / "index.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(8192))
    else:
        run_cli("index", str(tmp_path / "p"), "--db", str(db), "--model", str(colour_model), check=True)
        for extra in tmp_path.glob("index.db-*"):
            extra.unlink()
        if damage == "truncate":
            db.write_bytes(db.read_bytes()[:1500])
        else:
            conn = sqlite3.connect(db)
            conn.execute("PRAGMA user_version = 99")
            conn.commit()
            conn.close()  # checkpoints the WAL into the file, so the digest covers it
    before = digest(db)
    for args in (["index", str(tmp_path / "p")], ["query", "red"], ["status"]):
        result = run_cli(*args, "--db", str(db), "--model", str(colour_model))
        message = result.stderr.decode()
        assert result.returncode == 4 and words in message and "Traceback" not in message, message
    assert digest(db) == before


def test_full_disk_stops_cleanly_and_keeps_the_database(big_library, tiny_model, tmp_path):
    db = tmp_path / "index.db"
    run_cli("index", str(big_library / "d0"), "--db", str(db), "--model", str(tiny_model), check=True)
    indexed = check_db(db, 32)
    # ulimit -f caps file growth: writes fail with EFBIG, as on a full disk.
    limit_blocks = (db.stat().st_size + 60_000) // 512
    cmd = (f"ulimit -f {limit_blocks}; exec {sys.executable} -m clipsearch index {big_library} --db {db} "
           f"--model {tiny_model} --workers 1 --commit-seconds 0.05")
    result = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, timeout=300)
    message = result.stderr.decode()
    assert result.returncode == 4 and "full" in message and "Traceback" not in message, message
    assert check_db(db, 32) >= indexed
    run_cli("index", str(big_library), "--db", str(db), "--model", str(tiny_model), check=True, timeout=300)
    assert check_db(db, 32) == PHOTOS


def test_read_only_database_is_reported_and_untouched(tmp_path, colour_model):
    """A database file the user cannot write (chattr +i stands in for permissions, which
    root ignores): index says so and changes nothing; query still answers."""
    if os.geteuid() != 0:
        pytest.skip("uses chattr, which needs root")
    write_photo(tmp_path / "p" / "a.jpg", (200, 10, 10))
    db = tmp_path / "index.db"
    run_cli("index", str(tmp_path / "p"), "--db", str(db), "--model", str(colour_model), check=True)
    write_photo(tmp_path / "p" / "b.jpg", (10, 200, 10))
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support chattr +i")
    try:
        before = digest(db)
        result = run_cli("index", str(tmp_path / "p"), "--db", str(db), "--model", str(colour_model))
        message = result.stderr.decode()
        assert result.returncode == 4 and "read-only" in message and "Traceback" not in message, message
        answer = run_cli("query", "red", "--db", str(db), "--model", str(colour_model), "--paths")
        assert answer.returncode == 0 and answer.stdout.strip().endswith(b"a.jpg"), answer.stderr
        assert digest(db) == before
    finally:
        subprocess.run(["chattr", "-i", str(db)])


def test_a_worker_killed_mid_run_is_replaced_and_its_file_tried_again(big_library, tiny_model, tmp_path):
    """The OOM killer may pick any worker: its file is tried once more in a fresh worker (and
    indexed, being innocent), the run finishes everything, and stderr says nothing extra."""
    db = tmp_path / "index.db"
    proc = start_index(big_library, db, tiny_model, "--workers", "2", "--commit-seconds", "0.05")
    workers: list[int] = []
    deadline = time.time() + 60
    while len(workers) < 2 and time.time() < deadline:
        workers = embedding_workers(proc.pid)
        time.sleep(0.05)
    time.sleep(0.8)  # let the workers get going
    assert proc.poll() is None, "the run ended before a worker could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and b"warning" not in err and b"Traceback" not in err, err
    assert f"{PHOTOS} new".encode() in err, err
    assert check_db(db, 32) == PHOTOS


def test_a_dead_worker_loses_no_file_wherever_it_dies(tiny_model, tmp_path):
    """Workers killed at each kind of moment (loading the model, busy on a file, idle between
    files): every file still comes back exactly once, indexed. Each kill waits for its moment
    (it used to be a random moment, which a loaded machine could miss: all files done after
    one kill)."""
    from clipsearch.index.workers import WorkerPool

    photos = [write_photo(tmp_path / f"p{i}.jpg", (10 * i, 200, 10), size=(640, 480), seed=i) for i in range(24)]
    files = [(os.fsencode(p), p.stat().st_size, p.stat().st_mtime_ns) for p in photos]
    pool = WorkerPool(str(tiny_model), workers=2, threads=1, use_draft=True)
    results, kills = [], []

    def kill_when(moment: str, found) -> None:
        """Pump the pool until `found(slot)` holds for one of its workers, then SIGKILL it."""
        nonlocal results
        deadline = time.time() + 120
        while time.time() < deadline:
            results += pool.submit([])
            victims = [slot for slot in pool.slots if slot.process.is_alive() and found(slot)]
            if victims:
                os.kill(victims[0].process.pid, signal.SIGKILL)
                kills.append(moment)
                return
            time.sleep(0.002)
        raise AssertionError(f"no worker was ever {moment}")

    try:
        results += pool.submit(files[:8])
        kill_when("loading", lambda slot: not slot.ready or slot.loading)
        kill_when("busy", lambda slot: slot.ready and not slot.loading and slot.files)
        results += pool.drain()  # everything handed out is answered: both workers idle
        kill_when("idle", lambda slot: slot.ready and not slot.files)
        results += pool.submit(files[8:])
        results += pool.drain()
    finally:
        pool.close(cancel=True)
    assert kills == ["loading", "busy", "idle"]
    assert sorted(r.path for r in results) == sorted(f[0] for f in files)
    assert all(r.vector and r.error is None for r in results), [r.error for r in results]


def processes_with_marker(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_workers_still_starting_when_the_main_process_dies_exit_too(tiny_model, tmp_path):
    """The main process killed while its workers are still booting: they initialise with an
    orphan's parent id, and must still notice that the run they belong to is gone."""
    marker = f"CLIPSEARCH_TEST_ORPHAN_{os.getpid()}_{time.time_ns()}"
    script = (
        "import os, sys\n"
        "from clipsearch.index.workers import WorkerPool\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(sys.argv[1], workers=2, threads=1, use_draft=True)\n"
        "    pool.submit([(b'/nonexistent.jpg', 1, 1)] * 2)  # the pool starts its workers\n"
        "    os._exit(0)  # and the main process is gone before they are up\n"
    )
    (tmp_path / "die_early.py").write_text(script)
    subprocess.run([sys.executable, str(tmp_path / "die_early.py"), str(tiny_model)], cwd=REPO, check=True,
                   env=dict(os.environ, **{marker: "1"}), timeout=60)
    time.sleep(1)  # the workers boot (imports, model) and initialise as orphans
    deadline = time.time() + 60  # generous for a slow CI machine; a healthy run ends in ~2 s
    while processes_with_marker(marker) and time.time() < deadline:
        time.sleep(0.1)
    left = processes_with_marker(marker)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "worker processes outlived a main process that died while they were starting"


def test_quiet_run_finding_another_run_in_progress_is_silent(colour_model, tmp_path):
    """Cron ticks during a long first index: exit 75 each time, but nothing for cron to mail."""
    from click.testing import CliRunner

    from clipsearch.cli.main import main
    from clipsearch.index.lock import IndexLock

    write_photo(tmp_path / "p" / "a.jpg", (200, 10, 10))
    db = tmp_path / "index.db"
    args = ["index", str(tmp_path / "p"), "--db", str(db), "--model", str(colour_model)]
    with IndexLock(db):
        quiet = CliRunner().invoke(main, [*args, "-q"])
        loud = CliRunner().invoke(main, args)
    assert quiet.exit_code == 75 and quiet.output == ""
    assert loud.exit_code == 75 and "another clipsearch index" in loud.output


def test_a_worker_whose_run_died_while_it_was_starting_leaves_without_a_traceback():
    """What a worker spawned just before its run was killed meets: the pipe its start-up data
    comes through is closed. Python's own spawn prints an EOFError traceback there (cron mails
    it); clipsearch's wrapped command line leaves quietly. Deterministic: the write end is
    closed before the child starts."""
    from multiprocessing import spawn

    from clipsearch.index.workers import quiet_if_orphaned

    outcomes = {}
    for name, command_line in (("python's", spawn.get_command_line), ("clipsearch's", quiet_if_orphaned(spawn.get_command_line))):
        read, write = os.pipe()
        os.close(write)
        try:
            child = subprocess.run(command_line(pipe_handle=read), pass_fds=(read,), capture_output=True, timeout=60)
        finally:
            os.close(read)
        outcomes[name] = (child.returncode, child.stderr.decode())
    assert "EOFError" in outcomes["python's"][1]  # the case is real: the check can fail
    assert outcomes["clipsearch's"] == (1, ""), outcomes["clipsearch's"]
