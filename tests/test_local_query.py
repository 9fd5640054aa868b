"""`clipsearch query` through a running `clipsearch serve` (the local socket): identical output
to a cold run for every query form, a cold run whenever the server cannot answer, and a socket
only its user can open. Real server, real CLI, real cache."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from helpers import REPO
from test_serve import Served, library  # noqa: F401 - the fixture is shared

from clipsearch.cli.query import answer_forwarded
from clipsearch.serve.localsocket import serve_socket, socket_path, stop_socket


@pytest.fixture
def warm(library, cli):  # noqa: F811
    served = Served(cli)
    calls = []

    def counting(request):
        found = answer_forwarded(request, (cli.db, cli.model, None), served.server.app.local_query)
        if found is not None:
            calls.append(request)
        return found

    local, path = serve_socket(cli.db, counting)
    assert local is not None, path
    yield calls, path
    stop_socket(local, path)
    served.stop()


def query_forms(library):  # noqa: F811
    return [
        ["red"], ["red", "--json"], ["red", "--paths", "--top", "2"], ["red", "-0"], ["red", "--min-score", "0.5"],
        ["red", "--not", "blue"], ["red", "-w", "0.5", "yellow"], ["--like", str(library / "blue.jpg")],
        ["red", "--sort", "date", "--json"], ["red", "--in", str(library)], ["red", "--after", "2030"],
        ["green", "--top", "1", "--json"],
    ]


def test_a_running_server_answers_with_the_cold_output(warm, library, cli):  # noqa: F811
    calls, _ = warm
    for args in query_forms(library):
        before = len(calls)
        hot = cli("query", *args)
        assert len(calls) == before + 1, args  # answered by the server
        cold = cli("query", *args, "--no-server")
        assert len(calls) == before + 1
        assert (hot.stdout_bytes, hot.stderr) == (cold.stdout_bytes, cold.stderr), args


def test_what_the_server_cannot_answer_runs_cold(warm, library, cli, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    calls, _ = warm
    # An error is the cold run's own, word for word.
    hot = cli("query", "red", "--in", str(tmp_path / "nowhere"), expect=2)
    cold = cli("query", "red", "--in", str(tmp_path / "nowhere"), "--no-server", expect=2)
    assert hot.stderr == cold.stderr and "--in needs an existing folder" in hot.stderr
    # Another model folder than the server's: not answered there (the cold run says why).
    from click.testing import CliRunner

    from clipsearch.cli.main import main

    result = CliRunner().invoke(main, ["query", "red", "--db", str(cli.db), "--model", str(tiny_model)])
    assert result.exit_code == 5
    # A relative --in is named as given: run cold.
    count = len(calls)
    monkeypatch.chdir(library.parent)
    assert cli("query", "red", "--in", library.name).stdout == cli("query", "red", "--in", str(library)).stdout
    assert len(calls) == count + 1


def test_the_socket_is_only_its_users(warm, cli):
    _, path = warm
    assert path == socket_path(cli.db)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.parent.stat().st_uid == os.getuid()


def test_a_shared_sockets_folder_is_refused(library, cli):  # noqa: F811
    folder = socket_path(cli.db).parent
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    local, why = serve_socket(cli.db, lambda request: None)
    assert local is None and "only this user" in why


def wait_for_socket(server: subprocess.Popen) -> None:
    """Until a `clipsearch serve` process says its local socket answers queries."""
    deadline, lines = time.time() + 60, []
    while not any("Ctrl-C" in line for line in lines) and time.time() < deadline:
        lines.append(server.stderr.readline())
    assert any("uses this server" in line for line in lines), lines


def test_serve_and_query_as_processes_and_a_killed_server(library, cli):  # noqa: F811
    env = dict(os.environ)
    args = ["--db", str(cli.db), "--model", str(cli.model)]
    server = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", *args, "--port", "0"], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(server)

        def query(*extra):
            return subprocess.run([sys.executable, "-m", "clipsearch", "query", "red", "--json", *args, *extra],
                                  cwd=REPO, env=env, capture_output=True, timeout=60)

        hot, cold = query(), query("--no-server")
        assert hot.returncode == 0 and (hot.stdout, hot.stderr) == (cold.stdout, cold.stderr)
        # Answered before click is imported (the server parsed the raw arguments), in the client's
        # environment and working directory, not the server's: CLIPSEARCH_TOP, a relative --like
        # and a relative --db.
        near = dict(env, CLIPSEARCH_TOP="2")
        for words, where, environment in ((["red", "--json"], REPO, env), (["--like", "blue.jpg"], library, near),
                                          (["red"], library, near)):
            line = ["query", *words, "--db", os.path.relpath(cli.db, where), "--model", str(cli.model)]
            warm = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipsearch", *line], cwd=where,
                                  env=environment, capture_output=True, timeout=60)
            here = subprocess.run([sys.executable, "-m", "clipsearch", *line, "--no-server"], cwd=where,
                                  env=environment, capture_output=True, timeout=60)
            imports = [row for row in warm.stderr.decode().splitlines() if row.startswith("import time:")]
            modules = {row.split("|")[-1].strip().split(".")[0] for row in imports}
            assert "clipsearch" in modules and not modules & {"click", "numpy", "onnxruntime"}, words
            said = "".join(row + "\n" for row in warm.stderr.decode().splitlines() if not row.startswith("import time:"))
            assert warm.returncode == 0 and (warm.stdout, said) == (here.stdout, here.stderr.decode()), words
            assert environment is env or warm.stdout.count(b"\n") == 2
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert socket_path(cli.db).exists()  # left behind by the killed server
        after = query()
        assert after.returncode == 0 and after.stdout == cold.stdout  # cold, no hang, no error
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


@pytest.mark.parametrize("xdg", [None, "", "  ", "/srv/data"])
def test_the_data_dir_without_platformdirs_is_platformdirs_own(monkeypatch, tmp_path, xdg):
    """On Linux `config.home_dir` finds the data dir by platformdirs' rule without importing it
    (a warm query's client): both must agree, whatever XDG_DATA_HOME says."""
    import platformdirs

    from clipsearch.config import home_dir

    monkeypatch.delenv("CLIPSEARCH_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert home_dir() == platformdirs.user_data_dir("clipsearch", appauthor=False)


def test_the_clients_model_variable_not_the_servers(library, cli, tiny_model):  # noqa: F811
    """A server started with CLIPSEARCH_MODEL answers a client whose CLIPSEARCH_MODEL names
    another model as that client's cold run would (exit 5: the cache was built with another
    model), never with the server's model."""
    env = dict(os.environ, CLIPSEARCH_MODEL=str(cli.model), CLIPSEARCH_DB=str(cli.db))
    server = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", "--port", "0"], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(server)
        same = subprocess.run([sys.executable, "-m", "clipsearch", "query", "red", "--paths"], cwd=REPO, env=env,
                              capture_output=True, timeout=60)
        assert same.returncode == 0 and same.stdout.count(b"\n") == 5
        other = dict(env, CLIPSEARCH_MODEL=str(tiny_model))
        hot, cold = (subprocess.run([sys.executable, "-m", "clipsearch", "query", "red", *extra], cwd=REPO, env=other,
                                    capture_output=True, timeout=60) for extra in ([], ["--no-server"]))
        assert hot.returncode == cold.returncode == 5 and (hot.stdout, hot.stderr) == (cold.stdout, cold.stderr)
    finally:
        server.terminate()
        server.wait(10)


def test_a_deleted_working_directory_runs_cold(warm, cli, monkeypatch):
    """`os.getcwd()` fails in a deleted folder: the client runs cold (which then says what it
    says), never a traceback from the warm path."""
    from clipsearch.serve.localsocket import forward_query

    def gone():
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "getcwd", gone)
    assert forward_query(["red"], cli.db) is None
