"""`clipsearch serve`: the web page over the cache. One process holds the warm query engine
(text session, tokenizer, integer scorer); each request opens the cache read-only, so rows a
concurrent `index` run commits are seen at once. The page is three static files in `web/` (no
build step, no CDN); the JSON API, thumbnails and photos are served by row id only.

The standard library's threading HTTP server is used, bounded here: a cap on connections
handled at once (the rest get 503 at once), a socket timeout so a stalled client frees its
thread, a cap on concurrent queries and on concurrent thumbnail decodes, GET/HEAD only and no
request bodies. docs/serve.md "Serve: search from a phone's browser" gives the measurements behind the choice.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import socket
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from clipsearch.errors import UsageError

from .duplicates_view import DuplicatesView

WEB = Path(__file__).with_name("web")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
COOKIE = "clipsearch_token"
MAX_CONNECTIONS = 128  # handled at once (a thread each); a stalled client holds one for at most TIMEOUT
TIMEOUT = 10.0  # s a client may take to send a request or read a response chunk
MAX_QUERIES = 2  # concurrent rankings (CPU-bound: more only queue inside onnxruntime)
MAX_RENDERS = 2  # concurrent thumbnail decodes
MAX_URL = 4096
MAX_TEXT = 500  # characters of query text
MAX_TOP = 200
ANSWER_WAIT = 5.0  # s a local `query` waits for a ranking slot before running cold itself
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
FILTER_FIELDS = ("after", "before", "camera", "near", "within", "tag", "min_rating")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class App:
    """What every request shares: the engine, where the cache is, the thumbnail cache, the
    access token (None: no token needed) and the limits."""

    def __init__(self, db_path: Path, model_dir: Path, engine, thumbnails, token: str | None, local_only: bool):
        self.db_path, self.model_dir, self.engine, self.thumbnails = db_path, model_dir, engine, thumbnails
        self.token, self.local_only = token, local_only
        self.queries = threading.BoundedSemaphore(MAX_QUERIES)
        self.renders = threading.BoundedSemaphore(MAX_RENDERS)
        self.duplicates = DuplicatesView(db_path, model_dir)

    def search(self, params: dict) -> dict:
        from clipsearch.search.answer import photo_json
        from clipsearch.search.filters import make_filters
        from clipsearch.search.query import run_query

        text = params.get("q", "").strip()
        without = params.get("not", "").strip()
        if len(text) > MAX_TEXT or len(without) > MAX_TEXT:
            raise BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG, f"query text over {MAX_TEXT} characters")
        like = int_param(params, "like", None, 1, 2**62)
        top = int_param(params, "top", 40, 1, MAX_TOP)
        offset = int_param(params, "offset", 0, 0, 10_000)
        rating = int_param(params, "min_rating", None, -1, 5)
        try:
            filters = make_filters(params.get("after") or None, params.get("before") or None,
                                   params.get("camera") or None, params.get("near") or None,
                                   params.get("within") or None, [params["tag"]] if params.get("tag") else [], rating)
        except UsageError as exc:
            raise BadRequest(HTTPStatus.BAD_REQUEST, str(exc).replace("--", "").replace("_", " ")) from None
        if not (text or like or filters.active):
            return {"results": [], "notes": [], "more": False}
        if not self.queries.acquire(timeout=TIMEOUT):
            raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, "busy: try again in a moment")
        try:
            answer = run_query([text] if text else [], self.db_path, self.model_dir, top + 1,
                               negated=[without] if without else [], filters=filters, with_meta=True,
                               like_rows=[like] if like else [], offset=offset, engine=self.engine)
        except UsageError as exc:
            raise BadRequest(HTTPStatus.BAD_REQUEST, str(exc)) from None
        finally:
            self.queries.release()
        results = [photo_json(row_id, path, score, answer.meta.get(path, {}), answer.raw.get(path))
                   for row_id, (path, score) in zip(answer.ids[:top], answer.results[:top])]
        notes = [note.removeprefix("clipsearch: ") for note in answer.notes]
        return {"results": results, "notes": notes, "more": len(answer.ids) > top}

    def facts(self, row_id: int) -> dict:
        """One photo's facts (`/api/photo/ID`): a `#view=ID` link opened on its own."""
        from clipsearch.cache.library import Library
        from clipsearch.search.answer import photo_json

        path = self.photo_row(row_id)[0]
        library = Library(self.db_path)
        try:
            meta, raw = library.metadata_of([row_id]).get(row_id, {}), library.companions_of([row_id]).get(row_id)
        finally:
            library.close()
        return photo_json(row_id, path, None, meta, raw)

    def local_query(self, kwargs: dict):
        """A `clipsearch query` forwarded over the local socket, as `run_query`'s arguments
        (parsed by `cli/query.answer_forwarded`), run warm."""
        from clipsearch.search.query import run_query

        if not self.queries.acquire(timeout=ANSWER_WAIT):
            raise TimeoutError("busy")
        try:
            return run_query(**kwargs, engine=self.engine)
        finally:
            self.queries.release()

    def photo_row(self, row_id: int) -> tuple:
        from clipsearch.cache.library import Library

        library = Library(self.db_path)
        try:
            row = library.photo_row(row_id)
        finally:
            library.close()
        if row is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"no photo #{row_id} in the cache")
        return row

    def picture(self, row_id: int, side: int) -> bytes:
        from clipsearch.photos.preprocess import ImageDecodeError

        from .thumbnails import PhotoChanged

        row = self.photo_row(row_id)
        if not self.renders.acquire(timeout=TIMEOUT):
            raise BadRequest(HTTPStatus.SERVICE_UNAVAILABLE, "busy: try again in a moment")
        try:
            return self.thumbnails.get(row, side)
        except PhotoChanged as exc:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"photo #{row_id} {exc}; run `clipsearch index`") from None
        except (ImageDecodeError, OSError, ValueError) as exc:
            raise BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY, f"photo #{row_id} cannot be shown ({exc})") from None
        finally:
            self.renders.release()

    def original(self, row_id: int, raw: bool = False) -> tuple[bytes, str, str | None]:
        """The photo's bytes, type and download name (a RAW's); `raw`: its RAW+JPEG pair's RAW."""
        from clipsearch.cache.library import Library

        from .thumbnails import PhotoChanged, original_file

        row = self.photo_row(row_id)
        if raw:
            library = Library(self.db_path)
            try:
                row = (library.companions_of([row_id]).get(row_id), None, None, None)
            finally:
                library.close()
            if row[0] is None:
                raise BadRequest(HTTPStatus.NOT_FOUND, f"photo #{row_id} has no RAW file beside it")
        try:
            found = original_file(*row[:3])
        except PhotoChanged as exc:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"photo #{row_id} {exc}; run `clipsearch index`") from None
        # HEIC, TIFF, ...: browsers cannot show them; the preview stands in.
        return found or (self.picture(row_id, 4096), "image/jpeg", None)


def int_param(params: dict, name: str, default, low: int, high: int):
    value = params.get(name, "")
    if value == "":
        return default
    if not value.isdigit() and not (value.startswith("-") and value[1:].isdigit()) or len(value) > 19:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{name} must be a whole number")
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{name} must be within {low}..{high}")
    return number


class Handler(BaseHTTPRequestHandler):
    server_version = "clipsearch"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT

    @property
    def app(self) -> App:
        return self.server.app

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: with Nagle's algorithm the body waited for
        # the client's delayed ACK, 40 ms a request on a kept-alive connection (measured).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # a household's searches are nobody's log

    def do_HEAD(self):  # noqa: N802
        self.do_GET(head=True)

    def do_POST(self):  # noqa: N802
        self.fail(HTTPStatus.METHOD_NOT_ALLOWED, "only GET")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def do_GET(self, head: bool = False):  # noqa: N802
        try:
            self.route(head)
        except BadRequest as exc:
            self.fail(exc.status, str(exc), head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - one request's failure never stops the server
            self.fail(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__})", head)

    def route(self, head: bool) -> None:
        if len(self.path) > MAX_URL:
            raise BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG, "request too long")
        if self.headers.get("Content-Length", "0") not in ("", "0") or self.headers.get("Transfer-Encoding"):
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "no request bodies")
        if self.app.local_only and not self.local_host():
            raise BadRequest(HTTPStatus.MISDIRECTED_REQUEST, "this server answers to 127.0.0.1 and localhost only")
        url = urllib.parse.urlsplit(self.path)
        try:
            params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True, strict_parsing=False,
                                                 max_num_fields=20, errors="strict"))
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed query string") from None
        if self.app.token is not None and not self.authorised(url, params):
            return
        if url.path in STATIC:
            name, kind = STATIC[url.path]
            return self.send(HTTPStatus.OK, (WEB / name).read_bytes(), kind, head)
        if url.path == "/api/search":
            return self.send(HTTPStatus.OK, json.dumps(self.app.search(params)).encode(),
                             "application/json; charset=utf-8", head)
        if url.path == "/api/duplicates":  # ?kind=exact,same,burst&offset=&top=
            page = self.app.duplicates.page(params.get("kind", ""), int_param(params, "offset", 0, 0, 10**6),
                                            int_param(params, "top", 20, 1, 50))
            return self.send(HTTPStatus.OK, json.dumps(page).encode(), "application/json; charset=utf-8", head)
        if url.path.startswith("/api/photo/") and url.path[11:].isdigit() and len(url.path) <= 29:
            return self.send(HTTPStatus.OK, json.dumps(self.app.facts(int(url.path[11:]))).encode(),
                             "application/json; charset=utf-8", head)
        kind, _, number = url.path.strip("/").partition("/")
        if kind in ("thumb", "preview", "photo", "raw") and number.isdigit() and len(number) <= 18:
            from .thumbnails import PREVIEW_SIDE, THUMB_SIDE

            row_id = int(number)
            if kind in ("photo", "raw"):
                data, content_type, name = self.app.original(row_id, raw=kind == "raw")
                return self.send(HTTPStatus.OK, data, content_type, head, private_cache=True, download=name)
            data = self.app.picture(row_id, THUMB_SIDE if kind == "thumb" else PREVIEW_SIDE)
            return self.send(HTTPStatus.OK, data, "image/jpeg", head, private_cache=True)
        raise BadRequest(HTTPStatus.NOT_FOUND, "not found")

    def local_host(self) -> bool:
        """Without a token the page is this machine's only: a Host header naming another
        name (DNS rebinding from a web page) is refused."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in ("127.0.0.1", "localhost", "::1")

    def authorised(self, url, params: dict) -> bool:
        """A valid cookie, an `Authorization: Bearer` header, or the token in the link printed
        at start-up (then set as a cookie and dropped from the address bar, the rest of the
        link kept). Compared in constant time."""
        from .access import bearer, without_token

        expected = self.app.token.encode()
        header = bearer(self.headers.get("Authorization"))
        if header is not None and hmac.compare_digest(header.encode(), expected):
            return True
        given = params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), expected):
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", without_token(url.path, url.query))
            self.send_header("Set-Cookie", f"{COOKIE}={self.app.token}; Path=/; HttpOnly; SameSite=Strict; "
                                           f"Max-Age={30 * 86400}")
            self.send_header("Content-Length", "0")
            self.common_headers()
            self.end_headers()
            return False
        cookies = self.headers.get("Cookie", "")
        for part in cookies.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.app.token.encode()):
                return True
        raise BadRequest(HTTPStatus.UNAUTHORIZED, "this page needs its access link: open the URL with ?token= "
                                                  "that `clipsearch serve` printed")

    def common_headers(self, cache: str = "no-store") -> None:
        for name, value in HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", cache)

    def send(self, status: int, body: bytes, content_type: str, head: bool = False, private_cache: bool = False,
             download: str | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if download:  # a RAW: saved under its own name (RFC 6266), never shown inline
            self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{urllib.parse.quote(download)}")
        self.send_header("Content-Length", str(len(body)))
        # A picture by row id changes only with its row: the browser may keep it a while.
        self.common_headers("private, max-age=300" if private_cache else "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def fail(self, status: int, message: str, head: bool = False) -> None:
        """A short message: JSON for the API, plain text for a person's browser."""
        self.close_connection = True
        try:
            api = self.path.startswith("/api/")
            body = json.dumps({"error": message}).encode() if api else f"clipsearch: {message}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8" if api else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.common_headers()
            self.end_headers()
            if not head:
                self.wfile.write(body)
        except OSError:
            pass


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once; one over that is answered
    503 and closed without a thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, app: App):
        self.app = app
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(db_path: Path, model_dir: Path, host: str, port: int, token: str | None, no_auth: bool,
                threads: int | None = None, cache_mb: int | None = None,
                new_token: bool = False, text_model_dir: Path | None = None) -> tuple[BoundedServer, str | None]:
    """The server, bound and warm, and the token it wants (None: none). Not started."""
    from clipsearch.cache.library import Library
    from clipsearch.config import home
    from clipsearch.search.query import WarmEngine

    from .thumbnails import DEFAULT_CACHE_MB, ThumbnailCache

    if not Path(db_path).exists():
        raise UsageError(f"{db_path}: no cache yet; run `clipsearch index PATH` first")
    engine = WarmEngine(model_dir, threads, text_model_dir)
    library = Library(db_path)
    try:
        engine.check(library)
    finally:
        library.close()
    engine.warm()
    local = is_loopback(host)
    if no_auth:
        token = None
    elif token is None and not local:
        from .access import kept_token

        token = kept_token(new_token)
    thumbnails = ThumbnailCache(home() / "thumbnails", (cache_mb or DEFAULT_CACHE_MB) << 20)
    app = App(Path(db_path), Path(model_dir), engine, thumbnails, token, local_only=local and token is None)
    try:
        server = BoundedServer((host, port), app)
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"cannot listen on {host}: not an address of this machine; use one it has "
                             "(`ip -brief address`), or 0.0.0.0 for all of them") from None
        if exc.errno == errno.EACCES:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); ports below 1024 need root: "
                             "choose another --port") from None
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    return server, token
