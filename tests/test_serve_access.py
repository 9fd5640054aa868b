"""`serve` on the network as a household lives with it: the printed link works whatever the
token holds, a generated token survives restarts (kept 0600 in the data dir) and rotates on
demand, a link keeps its search when the token is dropped from it, scripts use a Bearer
header, and an address this machine does not have is named. Real servers on 127.0.0.1 (the
CLI in a subprocess, or `make_server` in a thread), real HTTP."""
from __future__ import annotations

import http.client
import os
import sys
import urllib.parse

import pytest

from clipsearch.errors import UsageError
from clipsearch.serve.access import kept_token, token_path
from clipsearch.serve.server import make_server
from helpers import serving
from test_serve import TOKEN, Served, library  # noqa: F401 - the library fixture

OPENSSL_TOKEN = "ab+cd/efgh+ijkl/mnop+q="  # what `openssl rand -base64 18` gives a third of the time


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_the_printed_link_works_with_any_token_openssl_gives(library, cli):
    command = [sys.executable, "-m", "clipsearch", "serve", "--port", "0", "--db", str(cli.db), "--model", str(cli.model)]
    with serving(command, {"CLIPSEARCH_TOKEN": OPENSSL_TOKEN}) as link:
        url = urllib.parse.urlsplit(link)
        assert urllib.parse.parse_qs(url.query)["token"] == [OPENSSL_TOKEN], link
        status, headers, _ = get(url.port, f"{url.path}?{url.query}")
        assert status == 303 and headers["Location"] == "/", (status, headers)
        cookie = headers["Set-Cookie"].split(";")[0]
        status, _, body = get(url.port, "/api/search?q=red", {"Cookie": cookie})
        assert status == 200 and b"red_1.jpg" in body


def test_a_link_keeps_its_search_when_the_token_is_dropped(library, cli):
    served = Served(cli, token=TOKEN)
    try:
        status, headers, _ = served.request(f"/?q=beach&after=2019&token={TOKEN}")
        assert status == 303 and headers["Location"] == "/?q=beach&after=2019"
        status, headers, _ = served.request(f"/api/search?q=red&token={TOKEN}")
        assert status == 303 and headers["Location"] == "/api/search?q=red"
    finally:
        served.stop()


def test_scripts_use_a_bearer_token(library, cli):
    served = Served(cli, token=TOKEN)
    try:
        status, _, body = served.request("/api/search?q=red", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b"red_1.jpg" in body
        assert served.request("/api/search?q=red", headers={"Authorization": "Bearer wrong-token-123456"})[0] == 401
        assert served.request("/api/search?q=red", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    finally:
        served.stop()


def test_a_generated_token_is_kept_private_and_rotated_only_on_demand(isolated_home):
    first = kept_token()
    path = token_path()
    assert path.parent == isolated_home and oct(path.stat().st_mode & 0o777) == "0o600"
    assert kept_token() == first  # a restart (a NAS reboot) keeps every phone's cookie valid
    second = kept_token(new=True)
    assert second != first and kept_token() == second
    path.chmod(0o644)  # readable by others: no longer a secret, so not trusted
    third = kept_token()
    assert third != second and oct(path.stat().st_mode & 0o777) == "0o600"


def test_serve_on_the_network_reuses_the_kept_token(library, cli, monkeypatch):
    """What `--host 0.0.0.0` does, without opening the network: the kept token is used."""
    kept = kept_token()
    import clipsearch.serve.server as server_module

    monkeypatch.setattr(server_module, "is_loopback", lambda host: False)
    server, token = make_server(cli.db, cli.model, "127.0.0.1", 0, None, False)
    server.server_close()
    assert token == kept
    server, token = make_server(cli.db, cli.model, "127.0.0.1", 0, None, False, new_token=True)
    server.server_close()
    assert token != kept and kept_token() == token


def test_an_address_this_machine_does_not_have_is_named(library, cli):
    with pytest.raises(UsageError) as caught:
        make_server(cli.db, cli.model, "192.0.2.1", 0, TOKEN, False)  # TEST-NET-1: nobody's address
    assert "192.0.2.1: not an address of this machine" in str(caught.value)
    assert "choose another --port" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may listen on any port")
def test_a_low_port_says_it_needs_root(library, cli):
    with pytest.raises(UsageError) as caught:
        make_server(cli.db, cli.model, "127.0.0.1", 80, TOKEN, False)
    assert "ports below 1024 need root" in str(caught.value)


def test_the_service_unit_runs_this_installation_as_this_user_without_secrets(library, cli, isolated_home):
    import configparser
    import getpass
    import shutil
    import subprocess

    from helpers import run_cli

    result = run_cli("serve", "--host", "0.0.0.0", "--port", "8750", "--print-service", "systemd", "--db", str(cli.db),
                     "--model", str(cli.model), env={"CLIPSEARCH_TOKEN": OPENSSL_TOKEN}, check=True)
    unit_text = result.stdout.decode()
    assert OPENSSL_TOKEN not in unit_text and "--token" not in unit_text  # no secret on a command line
    assert b"does not carry --token" in result.stderr
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str
    unit.read_string(unit_text)
    service = unit["Service"]
    command = service["ExecStart"].split()
    assert os.path.isabs(command[0]) and os.access(command[0], os.X_OK)  # the venv's, not PATH's
    assert command[1:4] in (["serve", "--host", "0.0.0.0"], ["-m", "clipsearch", "serve"])
    assert f"--db {cli.db}" in service["ExecStart"] and f"--model {cli.model}" in service["ExecStart"]
    assert service["User"] == getpass.getuser() and service["Restart"] == "on-failure"
    assert service["Environment"] == f"CLIPSEARCH_HOME={isolated_home.resolve()}"  # where the kept token is
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    if shutil.which("systemd-analyze"):
        path = isolated_home / "clipsearch-serve.service"
        path.write_text(unit_text)
        verified = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
        problems = [line for line in verified.stderr.splitlines() if str(path) in line]
        assert verified.returncode == 0 and not problems, verified.stderr
