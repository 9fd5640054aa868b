"""`clipsearch serve` over HTTP: the API, pictures, and every security rule, against a real
server on 127.0.0.1 (a thread in this process, ephemeral port) over a real cache of JPEGs
indexed with the colour model. The browser tests are in test_serve_browser.py."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from io import BytesIO

import pytest
from helpers import COLOURS, write_photo
from PIL import Image

from clipsearch.serve import server as server_module
from clipsearch.serve.server import make_server

TOKEN = "a-test-token-of-enough-length"


@pytest.fixture
def library(tmp_path, cli):
    root = tmp_path / "photos"
    write_photo(root / "red_1.jpg", COLOURS["red"], seed=1)
    write_photo(root / "red_2.jpg", (200, 30, 25), seed=2)
    write_photo(root / "blue.jpg", COLOURS["blue"], seed=3)
    write_photo(root / "yellow.jpg", COLOURS["yellow"], seed=4)
    turned = Image.new("RGB", (320, 240), COLOURS["green"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    turned.save(root / "green_turned.jpg", "JPEG", exif=exif.tobytes())
    cli("index", str(root), "--workers", "1")
    return root


class Served:
    def __init__(self, cli, token=None, host="127.0.0.1"):
        server_module.Handler.timeout = 1.0  # a stalled client is dropped quickly in tests
        self.server, self.token = make_server(cli.db, cli.model, host, 0, token, False)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def request(self, path, method="GET", headers=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def api(self, query, **headers):
        status, _, body = self.request("/api/search?" + query, headers=headers)
        return status, json.loads(body)

    def raw(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        server_module.Handler.timeout = server_module.TIMEOUT


@pytest.fixture
def served(library, cli):
    running = Served(cli)
    yield running
    running.stop()


def names(body) -> list[str]:
    return [result["name"] for result in body["results"]]


def test_search_ranks_like_the_command_line(served, cli):
    status, body = served.api("q=red&top=3")
    assert status == 200 and names(body)[:2] in (["red_1.jpg", "red_2.jpg"], ["red_2.jpg", "red_1.jpg"])
    expected = [line.rsplit("/", 1)[1] for line in cli("query", "red", "--top", "3", "--paths").stdout.splitlines()]
    assert names(body) == expected
    first = body["results"][0]
    assert set(first) >= {"id", "score", "path", "name", "taken_at", "make", "keywords"} and 0 < first["score"] <= 1
    # Pages: the second page continues the first.
    whole = names(served.api("q=red&top=5")[1])
    assert names(served.api("q=red&top=2")[1]) + names(served.api("q=red&top=2&offset=2")[1]) == whole[:4]
    # More like this: the photo itself first, with score 1.
    status, similar = served.api(f"like={first['id']}&top=2")
    assert status == 200 and similar["results"][0]["id"] == first["id"] and similar["results"][0]["score"] == 1.0
    assert names(served.api("q=red&not=blue&top=1")[1])  # the --not term is accepted


def test_pictures_thumbnails_previews_and_the_original(served, library, isolated_home):
    ids = {r["name"]: r["id"] for r in served.api("q=green&top=10")[1]["results"]}
    status, headers, data = served.request(f"/thumb/{ids['green_turned.jpg']}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    thumb = Image.open(BytesIO(data))
    assert thumb.size[0] < thumb.size[1] and max(thumb.size) <= 320  # upright
    assert list((isolated_home / "thumbnails").glob("*/*.jpg"))  # cached on disk
    assert served.request(f"/thumb/{ids['green_turned.jpg']}")[2] == data
    assert served.server.app.thumbnails.hits == 1
    status, headers, original = served.request(f"/photo/{ids['red_1.jpg']}")
    assert status == 200 and original == (library / "red_1.jpg").read_bytes() and headers["Content-Type"] == "image/jpeg"
    status, _, preview = served.request(f"/preview/{ids['red_1.jpg']}")
    assert status == 200 and Image.open(BytesIO(preview)).size == (320, 240)  # never enlarged


def test_a_changed_photo_gets_a_new_thumbnail_and_the_nas_thumbnail_is_used(served, library, cli):
    photo = library / "blue.jpg"
    row_id = served.api("q=blue&top=1")[1]["results"][0]["id"]
    before = served.request(f"/thumb/{row_id}")[2]
    write_photo(photo, COLOURS["yellow"], seed=9)  # edited in place
    assert served.request(f"/thumb/{row_id}")[2] == before  # the indexed version's, until the next index
    assert served.request(f"/photo/{row_id}")[0] == 404  # not the file that was indexed
    cli("index", str(library), "--workers", "1")
    row_id = served.api("q=yellow&top=2")[1]["results"]
    row_id = [r["id"] for r in row_id if r["name"] == "blue.jpg"][0]
    after = served.request(f"/thumb/{row_id}")[2]
    assert after != before and Image.open(BytesIO(after)).getpixel((5, 5))[2] < 120  # yellow now
    # A Synology thumbnail newer than the photo is served as it is: no decoding.
    synology = library / "@eaDir" / "blue.jpg" / "SYNOPHOTO_THUMB_M.jpg"
    synology.parent.mkdir(parents=True)
    Image.new("RGB", (32, 24), (1, 2, 3)).save(synology, "JPEG")
    made = served.server.app.thumbnails.made
    assert served.request(f"/thumb/{row_id}")[2] == synology.read_bytes()
    assert served.server.app.thumbnails.made == made and served.server.app.thumbnails.from_nas == 1


def test_new_rows_of_a_concurrent_index_run_are_seen_without_a_restart(served, library, cli):
    write_photo(library / "new" / "teal.jpg", COLOURS["teal"], seed=5)
    assert "teal.jpg" not in names(served.api("q=teal&top=1")[1])
    cli("index", str(library), "--workers", "1")
    assert names(served.api("q=teal&top=1")[1]) == ["teal.jpg"]


@pytest.mark.parametrize("path", [
    "/photo/../../etc/passwd", "/thumb/..%2f..%2fetc%2fpasswd", "/photo/%2e%2e/%2e%2e/etc/passwd",
    "/photo/%252e%252e%252fetc%252fpasswd", "/photo/1/../../../etc/passwd", "/app.js/../../etc/passwd",
    "/photo//etc/passwd", "/photo/1%00", "/thumb/-1", "/thumb/1e3", "/photo/999999", "/photo/99999999999999999999",
    "/web/index.html", "/../clipsearch/server.py", "/%2e%2e/%2e%2e/etc/passwd", "/static/../index.db",
])
def test_nothing_is_served_by_a_path_from_the_request(served, path):
    status, _, body = served.request(path)
    assert status in (400, 404) and b"root:" not in body and b"import" not in body
    raw = served.raw(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert raw.split(b" ", 2)[1] in (b"400", b"404")


def test_only_live_indexed_rows_are_served(served, library, cli, tmp_path):
    ids = {r["name"]: r["id"] for r in served.api("q=red&top=10")[1]["results"]}
    (library / "bad.jpg").write_bytes(b"not a picture")
    (library / "yellow.jpg").unlink()
    cli("index", str(library), "--workers", "1", "--allow-empty")
    import sqlite3

    with sqlite3.connect(cli.db) as conn:
        failed = conn.execute("SELECT id FROM images WHERE error IS NOT NULL").fetchone()[0]
    for row_id in (ids["yellow.jpg"], failed):  # deleted, failed
        assert served.request(f"/thumb/{row_id}")[0] == 404 and served.request(f"/photo/{row_id}")[0] == 404
    # An indexed photo swapped for a symlink to another file is not followed.
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((library / "red_1.jpg").read_bytes())
    os.unlink(library / "red_1.jpg")
    os.symlink(secret, library / "red_1.jpg")
    assert served.request(f"/photo/{ids['red_1.jpg']}")[0] == 404
    assert served.request(f"/thumb/{ids['red_1.jpg']}")[0] == 404


@pytest.mark.parametrize("query,status", [
    ("q=" + "x" * 501, 414), ("q=red&top=1000", 400), ("q=red&top=abc", 400), ("q=red&offset=-1", 400),
    ("q=red&min_rating=9", 400), ("q=red&after=2019-13", 400), ("like=123456789", 400), ("q=red&near=lisbon", 400),
])
def test_bad_requests_get_a_short_4xx(served, query, status):
    got, body = served.api(query)
    assert got == status and set(body) == {"error"} and len(body["error"]) < 200 and "Traceback" not in body["error"]


def test_methods_bodies_sizes_and_headers(served):
    assert served.request("/api/search?q=red", method="POST", body=b"x")[0] == 405
    assert served.request("/api/search?q=red", headers={"Content-Length": "5"}, method="GET", body=b"hello")[0] == 413
    assert served.request("/?" + "a" * 5000)[0] == 414
    status, headers, page = served.request("/")
    assert status == 200 and b'<script src="/app.js"' in page and b"<script>" not in page
    assert "script-src 'self'" in headers["Content-Security-Policy"] and "unsafe-inline" not in headers[
        "Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    # Without a token the page is this machine's only: another Host (DNS rebinding) is refused.
    assert served.request("/", headers={"Host": "evil.example:8750"})[0] == 421


def test_the_token_flow(library, cli):
    served = Served(cli, token=TOKEN)
    try:
        assert served.request("/")[0] == 401
        assert b"access link" in served.request("/")[2]
        assert served.api("q=red")[0] == 401
        assert served.request("/?token=wrong-token-of-some-length")[0] == 401
        assert served.api("q=red", Cookie="clipsearch_token=wrong")[0] == 401
        status, headers, _ = served.request(f"/?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"clipsearch_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert served.api("q=red", Cookie=cookie.split(";")[0])[0] == 200
        assert served.request("/", headers={"Cookie": cookie.split(";")[0], "Host": "nas.local"})[0] == 200
    finally:
        served.stop()


def test_a_network_address_always_gets_a_token(library, cli):
    server, token = make_server(cli.db, cli.model, "0.0.0.0", 0, None, False)
    server.server_close()
    assert token and len(token) >= 24
    server, token = make_server(cli.db, cli.model, "0.0.0.0", 0, None, True)  # --no-auth: the explicit opt-out
    server.server_close()
    assert token is None


def test_many_clients_and_a_stalled_one(served):
    stalled = socket.create_connection(("127.0.0.1", served.port))
    stalled.sendall(b"GET /api/search?q=red HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
    results, errors = [], []

    def client(i):
        try:
            results.append(served.api(f"q={'red' if i % 2 else 'blue'}&top=2")[0])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and results and set(results) <= {200, 503} and results.count(200) >= 12
    assert time.monotonic() - started < 30
    # The stalled client is dropped after the socket timeout (1 s here, 10 s by default).
    stalled.settimeout(5)
    assert stalled.recv(100) == b""
    stalled.close()
    # More idle connections than the cap: the extra ones are told 503 at once, not queued.
    server_module.Handler.timeout = 8.0  # the idle ones hold their slots while all connect
    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(server_module.MAX_CONNECTIONS + 4)]
    try:
        time.sleep(0.5)
        refused = 0
        for sock in idle:
            sock.settimeout(0.05)
            try:
                refused += sock.recv(100).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                pass  # holding a slot
        assert refused >= 4
    finally:
        for sock in idle:
            sock.close()
        server_module.Handler.timeout = 1.0
    time.sleep(1.5)  # the idle ones see their connections closed
    assert served.api("q=red&top=1")[0] == 200


def test_requests_change_nothing(served, library, cli):
    def digest():
        files = sorted(p for p in library.rglob("*") if p.is_file()) + [cli.db]
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = digest()
    row_id = served.api("q=red&top=1")[1]["results"][0]["id"]
    for path in ("/", "/app.js", "/app.css", f"/thumb/{row_id}", f"/preview/{row_id}", f"/photo/{row_id}",
                 "/api/search?q=red&camera=x", "/api/search?tag=none"):
        served.request(path)
    assert digest() == before
