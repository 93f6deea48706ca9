"""The metrics and health sidecar: a small HTTP server beside the gRPC port.

Endpoints
---------
``GET /metrics``
    The registry in the Prometheus text format (OpenMetrics when the scraper asks
    for it). Runs the health checks first (at most once a second) so
    ``nacfauth_component_up`` and ``nacfauth_health_check_duration_seconds`` are fresh.
``GET /health/live``
    ``200 {"status": "alive"}`` while the process serves HTTP at all.
``GET /health/ready``
    ``200 {"status": "ready"}`` when the server said it is ready (:meth:`Sidecar.set_ready`)
    and every readiness check passes; otherwise ``503 {"status": "not_ready",
    "reasons": [...]}``. The default readiness check set is every check (the store).
``GET /health``
    The monitoring guide's shape, with measured response times::

        {"status": "healthy" | "degraded" | "unhealthy", "timestamp": "...Z",
         "version": "0.1.0", "ready": true,
         "checks": {"store": {"status": "healthy", "response_time_ms": 0.42,
                              "details": {...}}}}

    HTTP 200 unless a check is unhealthy (then 503), so it is usable as a probe too.
    ``ready`` is what ``/health/ready`` would answer (the server ready and no readiness
    check unhealthy), from the same check results.

Slow and many clients: a request's line and headers must arrive within
``request_timeout_s`` (default 10 s) of its first byte, however slowly they trickle in
(one byte every few seconds cannot hold a thread for ever); an idle keep-alive
connection is closed after 60 s; at most ``max_connections_per_client`` (32) connections
from one address and ``max_connections`` (512) in all are served at once, and a
connection beyond either gets ``503`` and is closed at once. So no client can take the
threads and file descriptors the gRPC server and the store also need, and one address
that opens connections without end does not keep the health probes out.

A check is a callable with no argument, run in a worker thread with a timeout
(``check_timeout_s``, default 2 s): returning ``None`` or ``True`` means healthy,
``False`` unhealthy, a ``dict`` is reported as ``details`` (its ``"status"`` key, if
present, may say ``"degraded"`` or ``"unhealthy"``); raising means unhealthy with the
error's text. A check that times out is unhealthy; it is not started again while it
still runs (a hung store gets one ping at a time, not one per probe and scrape).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from nacf_core import __version__
from nacf_core._validation import check_finite_positive, check_int_range

__all__ = ["Sidecar", "parse_address"]

log = logging.getLogger("nacf.sidecar")

_STATUSES = ("healthy", "degraded", "unhealthy")


def _request_path(target: str) -> str:
    """The path of a request target, without its query or a trailing ``/``: the origin
    form (``/metrics?x``) or the absolute form (``http://host:9464/metrics``), which RFC
    9112 section 3.2.2 says a server must accept (a client sends it through a proxy)."""
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        rest = rest.split("?", 1)[0].split("#", 1)[0]
        target = "/" + rest.partition("/")[2]  # the authority (host:port) dropped
    return target.split("?", 1)[0].rstrip("/") or "/"


_OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110 section 12.4.2


def _metrics_format(accept: list[str]) -> tuple[Callable[[Any], bytes], str]:
    """``(encoder, Content-Type)`` for ``/metrics`` by the ``Accept`` header (its field
    lines): OpenMetrics 1.0.0 if the client ranks it above the text format (no version,
    or ``version=1.0.0``), else the text format 0.0.4 (also when nothing offered is
    acceptable: a scraper reads it). A range whose q-value is not one (``nan``, ``-1``,
    ``2``) counts as not offered; ``q=0`` says "not acceptable". The Content-Type is one
    of the two constants, never copied from the request (prometheus_client's
    choose_encoder copied the requested version, ignored q-values, and wrote a 1.0.0
    body under whatever version was asked for)."""
    best_q, best = 0.0, "text"
    for item in ",".join(accept).split(","):
        mtype, *params = (part.strip() for part in item.split(";"))
        opts: dict[str, str] = {}
        for param in params:
            key, _, value = param.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            opts[key.strip().lower()] = value
        q = opts.pop("q", "1")
        if not _QVALUE.fullmatch(q) or float(q) <= best_q:
            continue  # not a q-value, "not acceptable", or not preferred to the best
        mtype, version = mtype.lower(), opts.get("version")
        if mtype == "application/openmetrics-text" and version in (None, "1.0.0"):
            best_q, best = float(q), "openmetrics"
        elif mtype in ("text/plain", "text/*", "*/*") and version in (None, "0.0.4",
                                                                      "1.0.0"):
            best_q, best = float(q), "text"
    if best == "openmetrics":
        return openmetrics_latest, _OPENMETRICS_TYPE
    return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


def parse_address(address: str, name: str = "address") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0 = any free port): the
    configuration's :func:`nacf_core.config.parse_address`.

    Raises
    ------
    ValueError
        Naming ``name``, what was expected and what came.
    """
    from nacf_core.config import parse_address as _parse

    if not isinstance(address, str):
        raise TypeError(f"{name!r} must be a str 'HOST:PORT', got {address!r} instead.")
    return _parse(name, address)


class _TimedCall:
    """Run ``fn()`` in a daemon thread, timing it; read the outcome after ``thread.join``."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name="nacf-health-check", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self.value = self.fn()
        except Exception as exc:  # reported as unhealthy with its text
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - t0


#: RFC 9112 section 3: method SP request-target SP HTTP-version CRLF (a bare LF ends it
#: too), the target in visible ASCII
_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e]+ HTTP/[0-9]\.[0-9]\r?\n")

#: RFC 9112 section 5: field-name ":" OWS field-value OWS CRLF; the value without
#: control characters but HTAB (a bare CR, NUL, ESC ...)
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\r?\n")
_MAX_HEADER_BYTES, _MAX_HEADERS = 65536, 100
#: RFC 9110 section 7.2: uri-host [ ":" port ] (an IP-literal, or a reg-name / IPv4)
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?")


class _Refused(Exception):
    """A request refused while it is read: the status and what was wrong."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


_BUSY_BODY = b'{"error": "too many connections to the sidecar; retry later"}\n'
#: the whole answer to a connection beyond the limits (sent without reading its request)
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Connection: close\r\nRetry-After: 1\r\n"
         b"Content-Length: %d\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # a burst of probes and scrapes must not wait for SYN retransmits (default 5)
    request_queue_size = 128

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, within the limits; beyond them ``503`` and close."""
        host = client_address[0]
        sc = self.sidecar
        with self._count_lock:
            n_host = self._per_client.get(host, 0)
            busy = (self._open >= sc.max_connections
                    or n_host >= sc.max_connections_per_client)
            if not busy:
                self._open += 1
                self._per_client[host] = n_host + 1
                self._sockets.add(request)
        if busy:
            log.warning("sidecar connection from %s refused: %d open from it, %d in all",
                        host, n_host, self._open, extra={"event_type": "http_busy"})
            try:
                request.settimeout(0)  # never block the accepting thread
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(host, request)  # no thread was started
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address[0], request)

    def _release(self, host: str, request: Any) -> None:
        with self._count_lock:
            self._sockets.discard(request)
            self._open -= 1
            self._count_lock.notify_all()
            left = self._per_client.get(host, 1) - 1
            if left > 0:
                self._per_client[host] = left
            else:
                self._per_client.pop(host, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is routine: one DEBUG line, not a
        plain-text traceback on stderr in the middle of the JSON log."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("sidecar client %s went away: %s", client_address[0],
                      type(exc).__name__, extra={"event_type": "http_access"})
        else:
            log.warning("sidecar request from %s failed", client_address[0],
                        exc_info=True, extra={"event_type": "http_error"})

    def __init__(self, addr, handler, sidecar: Sidecar):
        import socket

        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.sidecar = sidecar
        self._count_lock = threading.Condition()
        self._open = 0
        self._per_client: dict[str, int] = {}
        self._sockets: set[Any] = set()  # the connections being served
        super().__init__(addr, handler)

    def close_connections(self, timeout: float) -> None:
        """Close every connection still open (a keep-alive scrape connection, one
        waiting for its next request) and wait up to ``timeout`` seconds for their
        threads to end: the listening socket closed alone, they went on being served."""
        import socket

        with self._count_lock:
            open_now = list(self._sockets)
        for sock in open_now:
            try:  # wakes the thread waiting on it; its answer, if any, fails
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._count_lock:
            self._count_lock.wait_for(lambda: self._open == 0, timeout)


class _DeadlineReader(io.RawIOBase):
    """The connection's socket as the request reader sees it: with a ``deadline``
    (``time.monotonic()``), every receive waits only for what is left of it, so a
    request that trickles in byte by byte still ends at the deadline."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive within the request timeout")
            self.sock.settimeout(left)
        return self.sock.recv_into(b)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "nacf-sidecar"
    # an error found before the request's version is read is answered as HTTP/1.0 (the
    # default, HTTP/0.9, has no status line and no headers)
    default_request_version = "HTTP/1.0"
    timeout = 60  # seconds an idle keep-alive connection (a scraper's) may stay open

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # idle between requests: up to `timeout`; from a request's first byte, its line
        # and headers within the sidecar's request timeout, however slowly they come
        self._reader.deadline = None
        self.connection.settimeout(self.timeout)
        try:
            if not self.rfile.peek(1):
                self.close_connection = True  # the client closed the connection
                return
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + self.server.sidecar.request_timeout_s
        super().handle_one_request()

    def parse_request(self) -> bool:
        for _ in range(4):  # RFC 9112 section 2.2: empty lines before a request are skipped
            if self.raw_requestline not in (b"\r\n", b"\n"):
                break
            self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True  # only empty lines, then the client closed
            return False
        if not _REQUEST_LINE.fullmatch(self.raw_requestline):
            # http.server splits the line on whatever str.split() calls whitespace
            # (\x1c-\x1f, \x85, \xa0, a bare CR) and takes any target (NUL, ESC ...)
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            self.command = None
            self.request_version = self.default_request_version
            line = self.requestline if len(self.requestline) <= 100 else (
                self.requestline[:100] + "...")
            self.send_error(400, "the request line must be METHOD TARGET HTTP/1.1, one space "
                                 "apart, the target in visible ASCII (%-escape the rest); "
                                 f"got {line!r}")
            return False
        try:
            lines = self._read_header_lines()
        except _Refused as exc:
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            self.command, self.request_version = None, self.default_request_version
            self.send_error(exc.code, exc.message)
            return False
        # http.server parses what was checked (its email parser would end the block at a
        # line without a colon, split at a bare CR, join obs-fold lines)
        sock_file, self.rfile = self.rfile, io.BytesIO(b"".join(lines) + b"\r\n")
        try:
            ok = super().parse_request()  # the headers are read: the deadline is met
        finally:
            self.rfile = sock_file
        self._reader.deadline = None
        self.connection.settimeout(self.timeout)  # for writing the answer
        if ok and not self.request_version.startswith("HTTP/1."):
            # HTTP/0.9 (its answer would have no status line) or a major version beyond
            # 1 that http.server let through
            self.request_version = self.default_request_version
            self.send_error(505, f"the sidecar speaks HTTP/1.0 and HTTP/1.1, not "
                                 f"{self.requestline.rsplit(' ', 1)[-1]!r}")
            return False
        if ok:
            try:
                self._check_host()
                self._has_body = self._has_a_body()
            except _Refused as exc:
                self.send_error(exc.code, exc.message)
                return False
        return ok

    def _read_header_lines(self) -> list[bytes]:
        """The request's header lines, each checked to be ``Name: value`` (RFC 9112
        section 5). Raises :class:`_Refused` for one that is not, or more than 100 of
        them or 64 KiB in all (http.server allowed 100 lines of 64 KiB each: 6.5 MB held
        per connection)."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(_MAX_HEADER_BYTES - size + 1)
            size += len(line)
            if size > _MAX_HEADER_BYTES:
                raise _Refused(431, f"the request's headers are longer than "
                                    f"{_MAX_HEADER_BYTES} bytes in all")
            if line in (b"\r\n", b"\n"):
                return lines
            if not line.endswith(b"\n"):  # the client closed (half-closed) in mid-header
                raise _Refused(400, "the request ended before its headers did (no empty "
                                    "line after them)")
            if len(lines) >= _MAX_HEADERS:
                raise _Refused(431, f"more than {_MAX_HEADERS} header lines")
            if line[:1] in (b" ", b"\t"):
                raise _Refused(400, "a header line starting with a space or tab (obs-fold, "
                                    "continuing the line before) is not accepted; put each "
                                    "header on one line")
            if not _HEADER_LINE.fullmatch(line):
                text = str(line[:80], "iso-8859-1").rstrip("\r\n")
                raise _Refused(400, "a header line must be 'Name: value' (the name letters, "
                                    "digits and !#$%&'*+-.^_`|~ right before the colon, no "
                                    f"control characters in the value); got {text!r}")
            lines.append(line)

    def _check_host(self) -> None:
        """RFC 9112 section 3.2: one Host header in an HTTP/1.1 request, at most one in
        an HTTP/1.0 one, and a valid one (a proxy in front may route by one Host and the
        sidecar log another). Raises :class:`_Refused`."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            raise _Refused(400, f"a request with {len(hosts)} Host headers; one is expected")
        if not hosts and self.request_version != "HTTP/1.0":
            raise _Refused(400, "an HTTP/1.1 request needs a Host header (Host: HOST:PORT)")
        if hosts and not _HOST.fullmatch(hosts[0].strip()):
            raise _Refused(400, f"the Host header must be HOST or HOST:PORT, got "
                                f"{hosts[0].strip()[:80]!r}")

    def _has_a_body(self) -> bool:
        """Whether a body follows the headers (RFC 9112 section 6.3). Raises
        :class:`_Refused` where its length is in doubt: Transfer-Encoding beside
        Content-Length, differing or malformed Content-Length values (a proxy in front
        may read another length, and the body as a request of its own)."""
        te = self.headers.get_all("Transfer-Encoding") or []
        cl = self.headers.get_all("Content-Length") or []
        if te and cl:
            raise _Refused(400, "a request with both Transfer-Encoding and Content-Length")
        if te:
            return True  # any, even empty: the sidecar reads no body
        values = {v.strip() for line in cl for v in line.split(",")}
        for v in values:
            if not re.fullmatch(r"[0-9]+", v):
                raise _Refused(400, f"Content-Length must be a number of bytes, got {v!r}")
        if len({int(v) for v in values}) > 1:
            raise _Refused(400, f"differing Content-Length values {sorted(values)}")
        return bool(values) and int(values.pop()) > 0

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """An error http.server finds (a bad request line or version, headers too long)
        as the sidecar's other errors: JSON ``{"error": ...}`` under the standard reason
        phrase, and the connection closed. (http.server put its message, which quotes
        the request, into the status line, and sent an HTML page.)"""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self._reader.deadline = None
        self.connection.settimeout(self.timeout)  # for writing the answer
        if not getattr(self, "request_version", "").startswith("HTTP/1."):
            self.request_version = self.default_request_version  # a status line, always
        text = message or self.responses.get(code, ("error",))[0]
        if explain:
            text = f"{text}: {explain}"
        data = (json.dumps({"error": text}) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt: str, *args: Any) -> None:  # access log at DEBUG, as JSON
        log.debug("sidecar %s", fmt % args, extra={"event_type": "http_access",
                                                  "peer": self.client_address[0]})

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        sc = self.server.sidecar
        path = _request_path(self.path)
        if self._has_body:
            # its body would be read as the next request on this connection
            self.close_connection = True
            self._json(400, {"error": f"a {self.command} request has no body"})
            return
        try:
            if path == "/metrics":
                sc._refresh_component_metrics()
                encoder, ctype = _metrics_format(self.headers.get_all("Accept") or [])
                self._send(200, encoder(sc.registry), ctype)
            elif path == "/health/live":
                self._json(200, {"status": "alive"})
            elif path == "/health/ready":
                ready, detail = sc.readiness()
                self._json(200 if ready else 503, detail)
            elif path == "/health":
                body = sc.health()
                self._json(503 if body["status"] == "unhealthy" else 200, body)
            else:
                self._json(404, {"error": f"no such endpoint {path!r}; try /metrics, "
                                          "/health, /health/live, /health/ready"})
        except (ConnectionError, TimeoutError):
            # the client went away while it was answered: no one to answer, nothing broke
            # here; the server's handle_error says so at DEBUG and closes the connection
            raise
        except Exception as exc:  # never kill the sidecar thread; say what broke
            log.exception("sidecar request %s failed", path)
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body may follow, unread
        data = (json.dumps({"error": f"{self.command} is not allowed; the sidecar "
                                     "serves GET and HEAD"}) + "\n").encode()
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def __getattr__(self, name: str) -> Any:
        # every method but GET and HEAD (POST, TRACE, CONNECT, PROPFIND, ...): 405 with
        # Allow; http.server answers 501 to a method without a do_ handler
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _json(self, code: int, body: Mapping[str, Any]) -> None:
        self._send(code, (json.dumps(body) + "\n").encode(), "application/json")

    def _send(self, code: int, data: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:  # the client must not send a next request on it
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class Sidecar:
    """HTTP server for ``/metrics`` and the health endpoints, in a daemon thread.

    Parameters
    ----------
    address : str
        ``HOST:PORT`` to listen on (port 0: a free port, see :attr:`port`).
    registry : prometheus_client.CollectorRegistry
        What ``/metrics`` exposes (default: the process-wide ``REGISTRY``).
    checks : mapping of str to callable, optional
        Component health checks, e.g. ``{"store": store.ping, "model": model_ok}``.
    ready_checks : iterable of str, optional
        Names of the checks that gate readiness (default: all of them).
    version : str
        The ``version`` field of ``/health``.
    metrics : nacf_core.metrics.Metrics, optional
        Where check outcomes go (``nacfauth_component_up`` and
        ``nacfauth_health_check_duration_seconds``); default: ``METRICS`` when
        ``registry`` is the default registry, else none.
    check_timeout_s : float
        A check running longer than this is reported unhealthy.
    request_timeout_s : float
        A request's line and headers must arrive within this many seconds of its first
        byte.
    max_connections, max_connections_per_client : int
        Connections served at once, in all and from one address; one more gets ``503``.

    Examples
    --------
    >>> sc = Sidecar("127.0.0.1:0", checks={"store": store.ping})  # doctest: +SKIP
    >>> sc.start(); sc.set_ready(True); print(sc.url)               # doctest: +SKIP
    """

    def __init__(
        self,
        address: str = "127.0.0.1:9464",
        *,
        registry: CollectorRegistry = REGISTRY,
        checks: Mapping[str, Callable[[], Any]] | None = None,
        ready_checks: Iterable[str] | None = None,
        version: str = __version__,
        metrics: Any = None,
        check_timeout_s: float = 2.0,
        request_timeout_s: float = 10.0,
        max_connections: int = 512,
        max_connections_per_client: int = 32,
    ) -> None:
        self._host, self._req_port = parse_address(address)
        self.registry = registry
        self.checks: dict[str, Callable[[], Any]] = dict(checks or {})
        for name, fn in self.checks.items():
            if not callable(fn):
                raise TypeError(f"check {name!r} must be callable, got {fn!r} instead.")
        self.ready_checks = list(self.checks) if ready_checks is None else list(ready_checks)
        unknown = [n for n in self.ready_checks if n not in self.checks]
        if unknown:
            raise ValueError(f"'ready_checks' names unknown checks {unknown}; "
                             f"the checks are {sorted(self.checks)}.")
        self.version = version
        if metrics is None and registry is REGISTRY:
            from nacf_core.metrics import METRICS

            metrics = METRICS
        self.metrics = metrics
        self.check_timeout_s = check_finite_positive("check_timeout_s", check_timeout_s)
        self.request_timeout_s = check_finite_positive("request_timeout_s", request_timeout_s)
        self.max_connections = check_int_range("max_connections", max_connections, 1)
        self.max_connections_per_client = check_int_range(
            "max_connections_per_client", max_connections_per_client, 1)
        self._ready = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._last_refresh = 0.0
        self._refresh_lock = threading.Lock()
        self._inflight: dict[str, _TimedCall] = {}  # each check's latest run
        self._inflight_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Sidecar:
        """Bind and serve in a daemon thread. Raises ``OSError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("the sidecar is already started")
        self._server = _Server((self._host, self._req_port), _Handler, self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="nacf-sidecar", daemon=True)
        self._thread.start()
        log.info("metrics sidecar listening on %s", self.url,
                 extra={"event_type": "sidecar_started", "port": self.port})
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent); the connections still open
        are closed, and their threads waited for (up to ``check_timeout_s`` + 1 s: one
        running a check ends with it)."""
        srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
            srv.close_connections(self.check_timeout_s + 1.0)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when started on port 0)."""
        if self._server is None:
            raise RuntimeError("the sidecar is not started; call start() first")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self._host if ":" not in self._host else f"[{self._host}]"
        if host in ("0.0.0.0", "", "::", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    # -- health --------------------------------------------------------------------

    def set_ready(self, ready: bool) -> None:
        """Say whether the server accepts traffic (False while starting and draining)."""
        (self._ready.set if ready else self._ready.clear)()

    def run_check(self, name: str) -> dict[str, Any]:
        """Run one check; ``{"status", "response_time_ms", "details" | "error"}``."""
        return self.run_checks([name])[name]

    def run_checks(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Run the named checks (default: all) concurrently, each in a daemon thread
        bounded by ``check_timeout_s`` (a hung check cannot hang a probe or the exit).
        A check still running from an earlier round is not started again: this round
        waits for that run (unhealthy, timed out, if it does not end in time), so a
        store that hangs gets one ping at a time, not one more per probe and scrape."""
        names = list(self.checks if names is None else names)
        with self._inflight_lock:
            calls = {}
            for n in names:
                call = self._inflight.get(n)
                if call is None or not call.thread.is_alive():
                    call = self._inflight[n] = _TimedCall(self.checks[n])
                calls[n] = call
        deadline = time.perf_counter() + self.check_timeout_s
        results = {}
        for name, call in calls.items():
            call.thread.join(max(0.0, deadline - time.perf_counter()))
            results[name] = self._result(name, call)
        return results

    def _result(self, name: str, call: _TimedCall) -> dict[str, Any]:
        result: dict[str, Any]
        if call.thread.is_alive():
            seconds = time.perf_counter() - call.t0
            result = {"status": "unhealthy",
                      "error": f"check timed out after {self.check_timeout_s:g} s "
                               f"(running for {seconds:.1f} s)"}
        else:
            seconds = call.seconds
            out = call.value
            if call.error is not None:
                exc = call.error
                result = {"status": "unhealthy", "error": f"{type(exc).__name__}: {exc}"}
            elif out is None or out is True:
                result = {"status": "healthy"}
            elif out is False:
                result = {"status": "unhealthy", "error": "check returned False"}
            elif isinstance(out, Mapping):
                details = dict(out)
                status = details.pop("status", "healthy")
                if status not in _STATUSES:
                    details["bad_status"] = str(status)
                    status = "unhealthy"
                result = {"status": status, "details": details}
            else:
                result = {"status": "healthy", "details": {"result": str(out)}}
        # measured, never a made-up 0: rounded to µs, and at least 1 µs
        result["response_time_ms"] = max(round(seconds * 1000.0, 3), 0.001)
        if self.metrics is not None:
            self.metrics.set_component_health(name, result["status"] != "unhealthy", seconds)
        return result

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body of /health/ready)``; also what the gRPC health service reports."""
        reasons = []
        if not self._ready.is_set():
            reasons.append("server not ready (starting or draining)")
        results = self.run_checks(self.ready_checks) if self.ready_checks else {}
        for name, r in results.items():
            if r["status"] == "unhealthy":
                reasons.append(f"{name}: {r.get('error', 'unhealthy')}")
        if reasons:
            return False, {"status": "not_ready", "reasons": reasons, "checks": results}
        return True, {"status": "ready", "checks": results}

    def health(self) -> dict[str, Any]:
        """The body of ``/health``: overall status and every component's."""
        results = self.run_checks()
        statuses = {r["status"] for r in results.values()}
        overall = ("unhealthy" if "unhealthy" in statuses else
                   "degraded" if "degraded" in statuses else "healthy")
        now = _dt.datetime.now(_dt.timezone.utc)
        # what /health/ready would answer, from these same check results
        ready = self._ready.is_set() and all(
            results[n]["status"] != "unhealthy" for n in self.ready_checks if n in results)
        return {
            "status": overall,
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "version": self.version,
            "ready": ready,
            "checks": results,
        }

    def _refresh_component_metrics(self) -> None:
        if self.metrics is None or not self.checks:
            return
        with self._refresh_lock:
            if time.monotonic() - self._last_refresh < 1.0:
                return
            self._last_refresh = time.monotonic()
        self.run_checks()
