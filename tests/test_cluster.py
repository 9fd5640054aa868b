"""`clipsearch index --cluster`: a real Dask LocalCluster on 127.0.0.1 (worker processes),
the real CLI in subprocesses, real JPEGs and sidecars, real databases. Vectors and metadata
must be bit-identical to a local run's; a worker killed mid-run, a worker with another model,
a scheduler that goes away and a run killed with SIGKILL must lose nothing and duplicate
nothing."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from helpers import COLOURS, REPO, write_photo

distributed = pytest.importorskip("distributed")

from test_metadata import XMP, bag  # noqa: E402

from clipsearch.errors import UsageError  # noqa: E402
from clipsearch.index.cluster import check_address  # noqa: E402


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for i in range(120):
        colour = list(COLOURS.values())[i % len(COLOURS)]
        write_photo(root / f"{i % 4}" / f"p{i:03d}.jpg", tuple((c + 7 * i) % 250 for c in colour), seed=i)
    (root / "0" / "p000.jpg.xmp").write_text(XMP.format(attrs='xmp:Rating="4"', body=bag("dc:subject", ["snow"])),
                                              encoding="utf-8")
    return root


@pytest.fixture
def slow_photos(tmp_path):
    """Big flat PNGs (no draft decoding): a run long enough to interrupt on purpose."""
    from PIL import Image

    root = tmp_path / "slow"
    for i in range(150):
        (root / f"{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2000, 1500), ((37 * i) % 250, (11 * i) % 250, 90)).save(root / f"{i % 3}" / f"s{i:03d}.png",
                                                                                    compress_level=1)
    return root


@pytest.fixture
def cluster(colour_model, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_MODEL", str(colour_model))  # the workers' own model folder
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as running:
        yield running


def index(db, *args, wait=True, **popen):
    command = [sys.executable, "-m", "clipsearch", "index", *map(str, args), "--db", str(db)]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def rows(db):
    with sqlite3.connect(db) as conn:
        vectors = dict(conn.execute("SELECT filepath, vector FROM images WHERE vector IS NOT NULL"))
        meta = dict(conn.execute("SELECT i.filepath, m.keywords || m.rating FROM photo_meta m JOIN images i "
                                 "ON i.id = m.image_id"))
        count = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    return vectors, meta, count


def test_vectors_and_metadata_are_those_of_a_local_run(photos, cluster, tmp_path):
    local = index(tmp_path / "local.db", photos, "--workers", "2")
    remote = index(tmp_path / "cluster.db", photos, "--cluster", cluster.scheduler_address)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert "120 new" in remote.stderr and "2 Dask workers" in remote.stderr
    vectors, meta, count = rows(tmp_path / "cluster.db")
    assert (vectors, meta) == rows(tmp_path / "local.db")[:2] and len(vectors) == count == 120
    assert meta[os.fsencode(photos / "0" / "p000.jpg")] == '["snow"]4'  # the sidecar was shipped and read


def test_a_worker_with_another_model_is_refused_by_name(photos, cluster, tmp_path, tiny_model):
    env = dict(os.environ, CLIPSEARCH_MODEL=str(tiny_model))
    stranger = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                 "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = distributed.Client(cluster.scheduler_address)
        client.wait_for_workers(3, timeout=60)
        client.close()
        result = index(tmp_path / "cluster.db", photos, "--cluster", cluster.scheduler_address)
        assert result.returncode == 0, result.stderr
        refused = [line for line in result.stderr.splitlines() if "Dask worker refused" in line]
        assert len(refused) == 1 and "tcp://127.0.0.1:" in refused[0] and "model id" in refused[0]
        assert "2 Dask workers" in result.stderr
        index(tmp_path / "local.db", photos, "--workers", "2")
        assert rows(tmp_path / "cluster.db")[0] == rows(tmp_path / "local.db")[0]
    finally:
        stranger.kill()
        stranger.wait(10)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(slow_photos, cluster, tmp_path):
    photos = slow_photos
    client = distributed.Client(cluster.scheduler_address)
    pids = client.run(os.getpid)
    client.close()
    run = index(tmp_path / "cluster.db", photos, "--cluster", cluster.scheduler_address, "--commit-seconds", "0.05",
                wait=False)
    mid_run(run, tmp_path / "cluster.db", "a worker could be killed")
    os.kill(next(iter(pids.values())), signal.SIGKILL)  # a laptop closed mid-run
    assert run.wait(240) == 0, run.stderr.read()
    index(tmp_path / "local.db", photos, "--workers", "2")
    vectors, _, count = rows(tmp_path / "cluster.db")
    assert count == 150 and vectors == rows(tmp_path / "local.db")[0]


def mid_run(run, db, what: str) -> None:
    """Wait until the run has committed 10 rows; it must still be running then."""
    deadline = time.time() + 60
    while time.time() < deadline and rows_or_zero(db) < 10:
        time.sleep(0.01)
    assert run.poll() is None, f"the run ended before {what}: give it more photos"


def rows_or_zero(db) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "shut-down"])
def test_a_scheduler_that_goes_away_stops_the_run_with_its_work_kept(slow_photos, colour_model, tmp_path, how):
    """Killed (the machine went off) or shut down gracefully (SIGTERM: a desktop going to
    sleep, `systemctl stop`): the same one line, no traceback, the work kept."""
    import socket

    photos = slow_photos
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, CLIPSEARCH_MODEL=str(colour_model))
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard", "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        client = distributed.Client(address, timeout=60)
        client.wait_for_workers(1, timeout=60)
        client.close()
        # At most 1 MB in flight: most photos are still to be sent when the scheduler goes.
        run = index(tmp_path / "cluster.db", photos, "--cluster", address, "--commit-seconds", "0.05",
                    "--cluster-inflight", "1", wait=False, env=env)
        mid_run(run, tmp_path / "cluster.db", "the scheduler could be stopped")
        scheduler.send_signal(how)
        code = run.wait(240)
        stderr = run.stderr.read().decode()
        assert code != 0, stderr
        assert "went away" in stderr and "Traceback" not in stderr and "CommClosedError" not in stderr, stderr
        assert [line for line in stderr.splitlines() if line.strip()] == [
            line for line in stderr.splitlines() if line.startswith("Error: ")], stderr  # one line, nothing else
    finally:
        for process in (scheduler, worker):
            process.kill()
            process.wait(10)
    with sqlite3.connect(tmp_path / "cluster.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    kept = rows_or_zero(tmp_path / "cluster.db")
    assert 10 <= kept < 150
    finish = index(tmp_path / "cluster.db", photos, "--workers", "2", "--model", colour_model)  # the rest, locally
    assert finish.returncode == 0 and f"{150 - kept} new" in finish.stderr, finish.stderr


def test_a_run_killed_with_sigkill_resumes_without_duplicates(slow_photos, cluster, tmp_path):
    photos = slow_photos
    run = index(tmp_path / "cluster.db", photos, "--cluster", cluster.scheduler_address, "--commit-seconds", "0.05",
                wait=False)
    mid_run(run, tmp_path / "cluster.db", "it could be killed")
    run.send_signal(signal.SIGKILL)
    run.wait(30)
    kept = rows_or_zero(tmp_path / "cluster.db")
    again = index(tmp_path / "cluster.db", photos, "--cluster", cluster.scheduler_address)
    assert again.returncode == 0 and f"{150 - kept} new" in again.stderr, again.stderr
    index(tmp_path / "local.db", photos, "--workers", "2")
    vectors, _, count = rows(tmp_path / "cluster.db")
    assert count == 150 and vectors == rows(tmp_path / "local.db")[0]


def test_plain_tcp_only_to_a_private_address():
    assert check_address("tcp://127.0.0.1:8786", False) == "tcp://127.0.0.1:8786"
    assert check_address("192.168.1.10:8786", False) == "tcp://192.168.1.10:8786"
    assert check_address("tls://8.8.8.8:8786", False) == "tls://8.8.8.8:8786"
    with pytest.raises(UsageError, match="not a private network address"):
        check_address("tcp://8.8.8.8:8786", False)
    assert check_address("tcp://8.8.8.8:8786", True) == "tcp://8.8.8.8:8786"
    with pytest.raises(UsageError, match="tcp://HOST:PORT"):
        check_address("http://192.168.1.10", False)


def test_over_tls_with_a_generated_certificate(photos, colour_model, tmp_path):
    """The README's safe set-up: one certificate made with openssl, given to the scheduler and
    workers as options and to `clipsearch index` through Dask's own configuration."""
    import shutil
    import socket

    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    cert, key = tmp_path / "cluster-cert.pem", tmp_path / "cluster-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=clipsearch",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tls://127.0.0.1:{port}"
    tls = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
    env = dict(os.environ, CLIPSEARCH_MODEL=str(colour_model))
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--protocol", "tls", "--host",
                                  "127.0.0.1", "--port", str(port), "--no-dashboard", *tls], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard", "--host", "127.0.0.1", *tls], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    client_env = dict(env, DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True",
                      DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(cert), DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(cert),
                      DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(key))
    try:
        deadline = time.time() + 60
        result = None
        while time.time() < deadline:
            result = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(photos), "--db",
                                     str(tmp_path / "tls.db"), "--cluster", address], cwd=REPO, env=client_env,
                                    capture_output=True, text=True, timeout=300)
            if result.returncode == 0 or "Dask worker" in result.stderr:
                break
            time.sleep(1)  # the scheduler or the worker still starting
        assert result.returncode == 0 and "120 new" in result.stderr and "1 Dask worker)" in result.stderr, result.stderr
        # Without the certificate the scheduler is not reachable at all.
        plain = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(photos), "--db",
                                str(tmp_path / "plain.db"), "--cluster", address.replace("tls://", "tcp://")],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert plain.returncode != 0 and "cannot reach the Dask scheduler" in plain.stderr, plain.stderr
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait(10)


def test_dasks_own_warnings_are_one_line_and_silent_with_q(cluster, tmp_path):
    """A photo over Dask's 10 MB graph size makes it warn ("Sending large graph ..."): one line
    naming the scheduler, once, or nothing at all with -q (cron mails stderr)."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "big"
    root.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (2200, 2200, 3), dtype=np.uint8)
    for i in range(2):
        Image.fromarray(noise if i == 0 else noise[::-1]).save(root / f"noise{i}.png", compress_level=0)
    assert (root / "noise0.png").stat().st_size > 12 << 20
    address = cluster.scheduler_address
    loud = index(tmp_path / "loud.db", root, "--cluster", address)
    assert loud.returncode == 0, loud.stderr
    lines = [line for line in loud.stderr.splitlines() if "large graph" in line]
    assert lines and len(lines) == 1 and lines[0].startswith(f"warning: {address}: Dask: Sending large graph"), loud.stderr
    assert "warnings.warn" not in loud.stderr and "UserWarning" not in loud.stderr
    quiet = index(tmp_path / "quiet.db", root, "--cluster", address, "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_raw_files_and_pairs_through_the_cluster_as_locally(cluster, tmp_path):
    """RAW bytes and the pair's sidecars (the RAW's own included) shipped to the workers give the
    vectors and metadata a local run gives."""
    import rawfiles
    from PIL import Image

    from clipsearch.photos.formats import missing_decoder

    if missing_decoder(b".dng"):
        pytest.skip("rawpy (the raw extra) not installed")
    root = tmp_path / "raw"
    root.mkdir()
    red, blue = Image.new("RGB", (640, 480), COLOURS["red"]), Image.new("RGB", (640, 480), COLOURS["blue"])
    (root / "alone.NEF").write_bytes(rawfiles.make_dng(red, preview=red.resize((320, 240)), orientation=6))
    (root / "IMG_0001.CR2").write_bytes(rawfiles.make_dng(blue, preview=blue.resize((320, 240))))
    blue.save(root / "IMG_0001.JPG", quality=90)
    (root / "IMG_0001.CR2.xmp").write_text(rawfiles.xmp_packet(3, ["harbour"]).decode(), encoding="utf-8")
    local = index(tmp_path / "local.db", root, "--workers", "1")
    remote = index(tmp_path / "cluster.db", root, "--cluster", cluster.scheduler_address)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert "2 new" in remote.stderr and "0 failed" in remote.stderr, remote.stderr
    vectors, meta, count = rows(tmp_path / "cluster.db")
    assert (vectors, meta) == rows(tmp_path / "local.db")[:2] and count == 2
    assert '["harbour"]3' in meta[os.fsencode(root / "IMG_0001.JPG")]
