"""The web UI's server: `serve SESSION.db ...` and `record --serve`.

The standard library's ThreadingHTTPServer: one local user, a handful of
requests per page, and one long-lived event stream per live page need no
framework, and the package keeps installing into minimal containers with
nothing beyond its own dependencies.

What it serves comes from an agent and a model, neither trusted: the page
renders it as text only, and every response carries a Content-Security-
Policy that allows scripts and styles from this server alone (no inline
script can run even if some text were ever taken for markup). Every
request needs the access token generated at start, which the printed
address carries: the page is turned into a cookie for this port and the
token dropped from the address bar. On loopback the Host header must be
this server's own, so a page elsewhere cannot reach it by renaming itself
(DNS rebinding). Only the session files named on the command line are
read, through connections that cannot write, and only the assets shipped
in the package are served.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import orjson

from ...errors import AgentsightError
from ...sinks.jsonl import safe_json
from .feed import WebFeed
from .store import NotFound, SessionStore

DEFAULT_PORT = 7396
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
KINDS = frozenset(("llm", "process", "file", "loss"))
PING_SECONDS = 15.0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(safe_json(value)[0])


class BadRequest(Exception):
    pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: WebServer


class WebServer:
    """Binds at once (so a busy port is an error before anything starts);
    `stores` are the sessions it shows, in the order given."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, stores: list[SessionStore] | None = None):
        self.host = host
        self.stores = list(stores or [])
        self.token = secrets.token_urlsafe(24)
        self.closing = False
        server_class: type[_HttpServer] = _HttpServer
        if ":" in host:
            server_class = type("_HttpServer6", (_HttpServer,), {"address_family": socket.AF_INET6})
        try:
            self.httpd = server_class((host, port), _Handler)
        except OSError as exc:
            hint = ": pass another --port, or --port 0 for any free one" if exc.errno == 98 else ""
            raise AgentsightError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}", exit_code=2) from None
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        self.cookie = f"agentsight_{self.port}"
        shown = f"[{host}]" if ":" in host else host
        self.origin = f"http://{shown}:{self.port}"
        # Reached by any name elsewhere (the token guards it); on loopback by its own names only.
        self.allowed_hosts = {f"{h}:{self.port}" for h in (shown, "127.0.0.1", "localhost", "[::1]")} \
            if _loopback(host) else None
        static = resources.files(__package__) / "static"
        self.assets = {name: ((static / name).read_bytes(), kind) for name, kind in ASSETS.items()}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.origin}/?token={self.token}"

    def start(self) -> None:
        """Serves on a thread of its own."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agentsight-web", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        self.closing = True
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()
        for store in self.stores:
            store.close()

    def check_token(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    server_version = "agentsight"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing -------------------------------------------------------------------

    def _headers(self, status: int, content_type: str, length: int | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self._headers(status, content_type, len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, _encode(value), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        if self.path.startswith("/api/"):
            self._json({"error": message}, status)
        else:
            self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except BadRequest as exc:
            self._error(400, str(exc))
        except NotFound as exc:
            self._error(404, exc.message)
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the server
            print(f"agentsight: web UI: {self.path[:200]}: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._error(500, f"{type(exc).__name__}: {exc}")

    do_HEAD = do_GET

    def _refuse_method(self) -> None:
        self._error(405, "this server only reads: GET and HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    # -- access ---------------------------------------------------------------------

    def _allowed(self, url: urllib.parse.SplitResult, query: dict[str, list[str]]) -> bool:
        app = self.server.app
        if app.allowed_hosts is not None and (self.headers.get("Host") or "") not in app.allowed_hosts:
            self._error(421, "wrong Host header: open the address agentsight printed")
            return False
        cookies = SimpleCookie()
        try:
            cookies.load(self.headers.get("Cookie") or "")
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            pass
        given = query.get("token", [None])[0]
        if given is not None and app.check_token(given):
            if url.path == "/" and self.command == "GET":
                # Into a cookie for this port; out of the address bar and history.
                self._send(303, b"", "text/plain", {
                    "Location": "/",
                    "Set-Cookie": f"{app.cookie}={app.token}; Path=/; HttpOnly; SameSite=Strict"})
                return False
            return True
        morsel = cookies.get(app.cookie)
        if morsel is not None and app.check_token(morsel.value):
            return True
        self._error(403, "no access token: open the address agentsight printed when it started (it carries one)")
        return False

    # -- routes -----------------------------------------------------------------------

    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if not self._allowed(url, query):
            return
        app = self.server.app
        path = url.path
        if path == "/":
            body, kind = app.assets["index.html"]
            return self._send(200, body, kind)
        if path.startswith("/static/"):
            asset = app.assets.get(path.removeprefix("/static/"))
            if asset is None:
                raise NotFound("no such file")
            return self._send(200, asset[0], asset[1])
        if path == "/favicon.ico":
            return self._send(204, b"", "image/x-icon")
        if path == "/api/sessions":
            return self._json({"sessions": [self._session_entry(i, s) for i, s in enumerate(app.stores)]})
        parts = path.split("/")
        if len(parts) == 5 and parts[:3] == ["", "api", "s"]:
            store = self._store(parts[3])
            return self._api(store, parts[4], query)
        raise NotFound("no such page")

    def _store(self, index: str) -> SessionStore:
        stores = self.server.app.stores
        if not index.isdigit() or int(index) >= len(stores):
            raise NotFound(f"no session {index[:20]!r}")
        return stores[int(index)]

    @staticmethod
    def _session_entry(i: int, store: SessionStore) -> dict[str, Any]:
        try:
            s = store.run("summary")
        except AgentsightError as exc:
            return {"index": i, "path": store.path, "error": exc.message}
        return {"index": i, "path": store.path, "status": s["status"], "live": s["live"], "command": s["command"],
                "started_ns": s["started_ns"], "bounds": s["bounds"], "totals": s["totals"]}

    def _api(self, store: SessionStore, what: str, query: dict[str, list[str]]) -> None:
        def text(name: str) -> str | None:
            v = query.get(name, [None])[0]
            return v if v else None

        def number(name: str) -> int | None:
            v = text(name)
            if v is None:
                return None
            try:
                return int(v)
            except ValueError:
                raise BadRequest(f"{name} is not a whole number: {v[:40]!r}") from None

        def required(name: str) -> str:
            v = text(name)
            if v is None:
                raise BadRequest(f"{name} is missing")
            return v

        if what == "summary":
            return self._json(store.run("summary"))
        if what == "timeline":
            kinds = frozenset((text("kinds") or ",".join(KINDS)).split(",")) & KINDS
            limit = number("limit")
            return self._json(store.run("timeline", start=number("from"), end=number("to"), since=number("since"),
                                        kinds=kinds, proc=text("proc"), q=text("q"),
                                        unexplained=text("unexplained") == "1",
                                        **({"limit": limit} if limit is not None else {})))
        if what == "children":
            return self._json(store.run("children", parent=text("parent"), offset=number("offset") or 0))
        if what == "process":
            return self._json(store.run("process", id=required("id")))
        if what == "call":
            return self._json(store.run("call", id=required("id")))
        if what == "text":
            return self._json(store.run("text", id=required("id"), part=required("part")))
        if what == "live":
            return self._live(store)
        raise NotFound("no such page")

    def _live(self, store: SessionStore) -> None:
        feed = store.feed
        if feed is None:
            raise NotFound("this session is not being recorded: nothing live to follow")
        page = feed.subscribe()
        try:
            self._headers(200, "text/event-stream; charset=utf-8", None, {"X-Accel-Buffering": "no"})
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            app = self.server.app
            while not app.closing:
                frames = page.take(PING_SECONDS)
                self.wfile.write(b"".join(frames) if frames else b": ping\n\n")
                self.wfile.flush()
        finally:
            feed.unsubscribe(page)


# -- the commands -----------------------------------------------------------------------


def _announce(server: WebServer, what: str, after: str, stream: Any) -> None:
    if not _loopback(server.host):
        print(f"agentsight: warning: listening on {server.host}: whoever can reach it and has this address (it "
              "carries the access token) can read the session", file=sys.stderr)
    print(f"agentsight: {what} at {server.url} {after}", file=stream, flush=True)


def _wait_for_interrupt() -> None:
    """Until Ctrl-C or SIGTERM."""
    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            # Short sleeps: the kernel may hand the signal to one of the
            # server's threads, which does not wake this one; its handler
            # runs here when the sleep ends.
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_sessions(paths: list[str], host: str, port: int) -> int:
    """`serve`: the sessions, until Ctrl-C."""
    stores = [SessionStore(p) for p in paths]
    try:
        server = WebServer(host, port, stores)
    except BaseException:
        for s in stores:
            s.close()
        raise
    server.start()
    what = f"serving {paths[0]}" if len(paths) == 1 else f"serving {len(paths)} sessions"
    try:
        _announce(server, what, "(Ctrl-C to stop)", sys.stdout)
        _wait_for_interrupt()
    except KeyboardInterrupt:  # a Ctrl-C even before the wait began
        pass
    finally:
        server.close()
    return 0


def record_and_serve(recording_factory: Any, output: str, host: str, port: int) -> int:
    """`record --serve`: the recording's session, live while it runs and,
    when the command ends by itself, as recorded after, until Ctrl-C."""
    server = WebServer(host, port)  # a busy port stops us before anything runs
    feed = WebFeed()
    try:
        recording = recording_factory([feed])
        feed.capture_losses = recording.capture_losses
        server.stores = [SessionStore(output, feed=feed)]
    except BaseException:
        feed.close()
        server.close()
        raise
    server.start()
    _announce(server, f"live view of {output}", "(it stays after the recording ends, until Ctrl-C)", sys.stderr)
    try:
        status = recording.run()
        if recording.pipeline.stop_reason is None:  # the command ended by itself; a Ctrl-C ends it all
            try:
                print(f"agentsight: the recording has ended; its view stays at {server.url} until Ctrl-C",
                      file=sys.stderr, flush=True)
                _wait_for_interrupt()
            except KeyboardInterrupt:
                pass
    finally:
        server.close()
    return status
