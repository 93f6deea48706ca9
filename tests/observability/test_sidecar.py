"""nacf_core.sidecar: /metrics, /health/live, /health/ready, /health over a real port."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from nacf_core.metrics import Metrics
from nacf_core.sidecar import Sidecar, parse_address


def get(url: str, accept: str | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


class Store:
    """A stand-in for the store's ping with a switch and a real (small) delay."""

    def __init__(self) -> None:
        self.up = True

    def ping(self) -> dict:
        time.sleep(0.005)
        if not self.up:
            raise ConnectionError("could not connect to server: Connection refused")
        return {"backend": "sqlite"}


@pytest.fixture
def env():
    reg = CollectorRegistry()
    mt = Metrics(reg)
    store = Store()
    sc = Sidecar("127.0.0.1:0", registry=reg, metrics=mt,
                 checks={"store": store.ping, "model": lambda: {"version": "demo-1"}},
                 ready_checks=["store"], version="9.9.9")
    sc.start()
    yield sc, mt, store
    sc.stop()


def test_metrics_endpoint_serves_the_registry_and_passes_promtool(env):
    sc, mt, _ = env
    mt.observe_rpc("Authenticate", "OK", 0.004)
    code, ctype, body = get(sc.url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert ('nacfauth_auth_requests_total{method="Authenticate",status="OK",'
            'user_type="api_key"} 1.0') in text
    assert 'nacfauth_component_up{component="store"} 1.0' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed (apt-get install prometheus)"
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    code, ctype, body = get(sc.url + "/metrics", accept="application/openmetrics-text")
    assert code == 200 and ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_live_and_ready(env):
    sc, _, store = env
    assert get(sc.url + "/health/live")[0] == 200
    code, ctype, body = get(sc.url + "/health/ready")
    assert code == 503 and ctype == "application/json"
    assert "server not ready" in json.loads(body)["reasons"][0]
    sc.set_ready(True)
    code, _, body = get(sc.url + "/health/ready")
    assert code == 200 and json.loads(body)["status"] == "ready"
    store.up = False
    code, _, body = get(sc.url + "/health/ready")
    doc = json.loads(body)
    assert code == 503 and doc["status"] == "not_ready"
    assert any("Connection refused" in r for r in doc["reasons"])
    assert get(sc.url + "/health/live")[0] == 200  # alive, just not ready
    ok, detail = sc.readiness()
    assert not ok and detail["status"] == "not_ready"
    store.up = True
    sc.set_ready(False)  # draining
    assert get(sc.url + "/health/ready")[0] == 503


def test_health_reports_components_with_measured_times(env):
    sc, mt, store = env
    sc.set_ready(True)
    code, _, body = get(sc.url + "/health")
    doc = json.loads(body)
    assert code == 200 and doc["status"] == "healthy" and doc["version"] == "9.9.9"
    assert doc["ready"] is True and doc["timestamp"].endswith("Z")
    st = doc["checks"]["store"]
    assert st["status"] == "healthy" and st["details"] == {"backend": "sqlite"}
    assert st["response_time_ms"] >= 5.0  # the ping sleeps 5 ms: a real measurement
    assert doc["checks"]["model"]["response_time_ms"] > 0
    store.up = False
    code, _, body = get(sc.url + "/health")
    doc = json.loads(body)
    assert code == 503 and doc["status"] == "unhealthy"
    assert doc["ready"] is False  # what /health/ready answers now, not just the server flag
    assert doc["checks"]["store"]["status"] == "unhealthy"
    assert "Connection refused" in doc["checks"]["store"]["error"]
    assert doc["checks"]["store"]["response_time_ms"] >= 5.0
    up = {s.labels["component"]: s.value for f in mt.registry.collect()
          if f.name == "nacfauth_component_up" for s in f.samples}
    assert up == {"store": 0.0, "model": 1.0}


def test_degraded_and_timeout():
    reg = CollectorRegistry()
    sc = Sidecar("127.0.0.1:0", registry=reg, metrics=Metrics(reg), check_timeout_s=0.2,
                 checks={"cache": lambda: {"status": "degraded", "hit_rate": 0.1},
                         "slow": lambda: time.sleep(3)}, ready_checks=["cache"])
    with sc:
        sc.set_ready(True)
        t0 = time.perf_counter()
        code, _, body = get(sc.url + "/health")
        assert time.perf_counter() - t0 < 2.0
        doc = json.loads(body)
        assert doc["checks"]["cache"]["status"] == "degraded"
        assert doc["checks"]["slow"]["status"] == "unhealthy"
        assert "timed out" in doc["checks"]["slow"]["error"]
        assert doc["checks"]["slow"]["response_time_ms"] >= 200
        assert doc["status"] == "unhealthy" and code == 503
        assert get(sc.url + "/health/ready")[0] == 200  # degraded still serves


def test_unknown_path_is_404(env):
    sc, _, _ = env
    code, _, body = get(sc.url + "/nope")
    assert code == 404 and "/metrics" in json.loads(body)["error"]


@pytest.mark.parametrize("target, status, body", [
    ("http://{host}/metrics", 200, b"nacfauth_"),
    ("HTTP://{host}/health/live/?x=1", 200, b"alive"),
    ("https://{host}/health", 200, b"healthy"),
    ("http://{host}", 404, b"no such endpoint '/'"),
    ("http://{host}/nope", 404, b"no such endpoint '/nope'"),
])
def test_a_request_target_in_absolute_form_is_served_by_its_path(env, target, status, body):
    """RFC 9112 section 3.2.2: a server must accept the absolute form (``GET
    http://host:port/metrics HTTP/1.1``, what a client sends through a proxy); it was 404
    for every URL."""
    import socket

    sc, _, _ = env
    host = f"127.0.0.1:{sc.port}"
    with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as s:
        s.sendall(f"GET {target.format(host=host)} HTTP/1.1\r\nHost: {host}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert body in data


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                    # any other method too (they were 501, no Allow)
                                    "TRACE", "CONNECT", "PROPFIND", "FOO"])
def test_other_methods_are_405_with_allow(env, method):
    import http.client

    sc, _, _ = env
    c = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=10)
    c.request(method, "/metrics", body=b"x=1")
    r = c.getresponse()
    assert r.status == 405 and r.getheader("Allow") == "GET, HEAD"
    assert method in json.loads(r.read())["error"]
    c.close()


def test_a_get_with_a_body_is_refused_not_read_as_the_next_request(env):
    """A GET's body would otherwise be parsed as a second request on a keep-alive
    connection (request smuggling past whatever sits in front)."""
    import socket

    sc, _, _ = env
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400") and b"no body" in data
    assert b"smuggled" not in data  # the connection was closed, the body never parsed


@pytest.mark.parametrize("accept", ["text/plain; version=x.y",
                                    "application/openmetrics-text; version=abc"])
def test_malformed_accept_gets_the_text_format(env, accept):
    sc, _, _ = env
    code, ctype, body = get(sc.url + "/metrics", accept=accept)
    assert code == 200 and ctype.startswith("text/plain") and b"# TYPE" in body


def test_a_client_that_resets_is_not_a_traceback_on_stderr(env, capfd, caplog):
    """A client resetting its connection while /metrics is written is no error of the
    sidecar's: it was logged as one, with a traceback (on stderr, or wherever the log
    goes, depending on the logging set up before), and a 500 tried on the dead socket."""
    import logging
    import socket
    import struct

    sc, _, _ = env
    caplog.set_level(logging.ERROR, logger="nacf.sidecar")
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", sc.port), timeout=10)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST while the sidecar writes the answer
    time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.name == "nacf.sidecar"] == []
    assert get(sc.url + "/health/live")[0] == 200


def _answer(sock) -> bytes:
    """What the sidecar sent on ``sock`` until it closed it (b"" for a reset)."""
    import socket

    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionError, socket.timeout):
        pass
    return data


def test_a_request_that_trickles_in_is_cut_at_the_request_timeout():
    """Slowloris: a byte every 0.1 s keeps each receive short, but the request's line and
    headers must all arrive within request_timeout_s of its first byte; meanwhile other
    clients are served."""
    import socket

    sc = Sidecar("127.0.0.1:0", registry=CollectorRegistry(), request_timeout_s=1.0).start()
    try:
        request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 80 + b"\r\n\r\n"
        s = socket.create_connection(("127.0.0.1", sc.port), timeout=10)
        sent = 0
        try:
            for i in range(len(request)):  # ~10 s if nothing cuts it
                s.sendall(request[i:i + 1])
                sent += 1
                time.sleep(0.1)
                if i == 5:
                    assert get(sc.url + "/health/live")[0] == 200  # others are served
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(s)
        s.close()
        assert sent < len(request), "the whole request trickled in: nothing cut it"
        assert b"200 OK" not in answer
        assert get(sc.url + "/health/live")[0] == 200
    finally:
        sc.stop()


def test_connections_beyond_the_limits_get_503_and_other_addresses_are_served():
    import socket

    sc = Sidecar("127.0.0.1:0", registry=CollectorRegistry(), max_connections=4,
                 max_connections_per_client=2).start()
    held = []
    try:
        def connect(source="127.0.0.1"):
            s = socket.create_connection(("127.0.0.1", sc.port), timeout=10,
                                         source_address=(source, 0))
            held.append(s)
            return s

        def live(s) -> bytes:
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return _answer(s)

        for _ in range(2):  # two idle connections from one address: its share
            connect()
        over = connect()
        assert b"503 Service Unavailable" in _answer(over)  # closed without a request
        assert b"200 OK" in live(connect("127.0.0.2"))  # another address: served
        # the per-address limit applies to connections open at once
        held[0].close()
        deadline = time.monotonic() + 10
        while True:
            answer = live(connect())
            if b"200 OK" in answer or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert b"200 OK" in answer
        # and the total: 4 at once, whatever their addresses
        for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
            connect(source)
        assert b"503" in _answer(connect("127.0.0.6"))
    finally:
        for s in held:
            s.close()
        sc.stop()


@pytest.mark.parametrize("kw", [{"request_timeout_s": 0}, {"max_connections": 0},
                                {"max_connections_per_client": 1.5}])
def test_bad_limits_are_refused(kw):
    with pytest.raises((ValueError, TypeError)):
        Sidecar("127.0.0.1:0", registry=CollectorRegistry(), **kw)


def test_port_is_released_on_stop():
    reg = CollectorRegistry()
    sc = Sidecar("127.0.0.1:0", registry=reg).start()
    port = sc.port
    sc.stop()
    sc2 = Sidecar(f"127.0.0.1:{port}", registry=reg).start()
    try:
        assert sc2.port == port
    finally:
        sc2.stop()


@pytest.mark.parametrize("bad", ["9100", "localhost", "h:x", "h:70000", ":9100"])
def test_bad_addresses_are_refused(bad):
    with pytest.raises(ValueError, match="'address'"):
        parse_address(bad)
    assert parse_address("[::1]:9100") == ("::1", 9100)


def test_bad_checks_are_refused():
    with pytest.raises(TypeError, match="'store' must be callable"):
        Sidecar("127.0.0.1:0", registry=CollectorRegistry(), checks={"store": 3})
    with pytest.raises(ValueError, match="ready_checks"):
        Sidecar("127.0.0.1:0", registry=CollectorRegistry(), checks={}, ready_checks=["db"])


def test_a_check_still_running_is_not_started_again():
    """A store that hangs (a lock held, a server that stopped answering): every probe,
    scrape and health-loop round started one more ping beside the ones still waiting,
    each holding a thread and, on PostgreSQL, a pooled connection for up to the query
    timeout, so the health checks themselves took the pool the RPCs need. A check still
    running is waited on again instead: unhealthy (timed out) until it returns."""
    import threading

    started = []
    release = threading.Event()

    def ping():
        started.append(threading.current_thread())
        if len(started) == 1:
            release.wait(30)

    reg = CollectorRegistry()
    mt = Metrics(reg)
    sc = Sidecar("127.0.0.1:0", registry=reg, metrics=mt, check_timeout_s=0.05,
                 checks={"store": ping})
    sc.set_ready(True)
    for _ in range(3):
        ok, detail = sc.readiness()
        assert not ok and "timed out" in detail["checks"]["store"]["error"]
        assert sc.health()["checks"]["store"]["status"] == "unhealthy"
    assert len(started) == 1
    assert reg.get_sample_value("nacfauth_component_up", {"component": "store"}) == 0
    release.set()
    started[0].join(10)
    ok, detail = sc.readiness()  # it returned: the next round runs the check afresh
    assert ok and detail["checks"]["store"]["status"] == "healthy"
    assert len(started) == 2
    assert reg.get_sample_value("nacfauth_component_up", {"component": "store"}) == 1


def _exchange(sc, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection, half-close it, return all that comes back."""
    import socket

    with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before reading all of it
        return _answer(s)


def _status_and_json(answer: bytes) -> tuple[int, dict[str, str], dict]:
    """The status, headers and JSON body of the one response in ``answer``, checking
    that it is a whole HTTP/1.1 response and nothing else."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 "), answer[:300]
    status_line, *lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["Content-Length"]) == len(body), answer[:300]
    assert headers["Content-Type"] == "application/json"
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize("request_line, status, reason", [
    (b"GARBAGE", 400, "Bad Request"),
    (b"GET /health/live HTTP/x", 400, "Bad Request"),
    (b"GET /health/live http/1.1", 400, "Bad Request"),
    (b"GET /health/live HTTP/2.0", 505, "HTTP Version Not Supported"),
    (b"GET /health/live HTTP/0.9", 505, "HTTP Version Not Supported"),
    (b"GET /a b HTTP/1.1", 400, "Bad Request"),
])
def test_a_bad_request_line_gets_a_whole_http_answer(env, request_line, status, reason):
    """An error found before the request's version was read (a garbage line, a bad or
    unsupported version) was answered as to an HTTP/0.9 client: an HTML page with no
    status line and no headers, which no HTTP client, probe or proxy can read; HTTP/0.9
    itself was served so too. Each is a whole HTTP/1.1 answer now, under the standard
    reason phrase (http.server put its message, quoting the request, into the status
    line), with a JSON error like the sidecar's others, and the connection closed."""
    sc, _, _ = env
    answer = _exchange(sc, request_line + b"\r\nHost: x\r\n\r\n")
    code, headers, doc = _status_and_json(answer)
    assert answer.startswith(f"HTTP/1.1 {status} {reason}\r\n".encode()), answer[:200]
    assert code == status and headers["Connection"] == "close" and doc["error"]
    assert get(sc.url + "/health/live")[0] == 200


@pytest.mark.parametrize("request_line", [
    b"GET /health/live",  # no version: HTTP/0.9
    b"GET /health/live\x1c HTTP/1.1",  # whitespace to str.split(), not to HTTP
    b"GET\x85/health/live HTTP/1.1",
    b"GET /health/live\xa0 HTTP/1.1",
    b"GET /health/live\r HTTP/1.1",  # a bare CR
    b"GET /health/live\x0b HTTP/1.1",
    b"GET /health/live?\x00 HTTP/1.1",  # NUL and ESC in the target
    b"GET /health/live?\x1b[2J HTTP/1.1",
    b"GET /health/\xc3\xa9 HTTP/1.1",
    b"GET /health/live HTTP/1.10",
    b"GET /health/live HTTP/01.1",
])
def test_a_request_line_that_is_not_method_target_version_is_400(env, request_line):
    """The request line was split on whatever Python's str.split() calls whitespace
    (\\x1c-\\x1f, \\x85, \\xa0, a bare CR, VT) and its target taken as it came (NUL,
    escape sequences): such lines, which a proxy in front reads differently or refuses,
    were served (200). The line must be METHOD SP TARGET SP HTTP/d.d, the target
    visible ASCII."""
    sc, _, _ = env
    code, headers, doc = _status_and_json(
        _exchange(sc, request_line + b"\r\nHost: x\r\n\r\n"))
    assert code == 400 and "request line" in doc["error"], doc
    assert headers["Connection"] == "close"


@pytest.mark.parametrize("lead", [b"\r\n", b"\n", b"\r\n\r\n"])
def test_empty_lines_before_a_request_are_skipped(env, lead):
    """RFC 9112 section 2.2: a server should ignore at least one empty line before a
    request line (some clients send a CRLF after a previous request's body). The
    connection was closed with no answer at all."""
    sc, _, _ = env
    code, _, doc = _status_and_json(_exchange(
        sc, lead + b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert code == 200 and doc == {"status": "alive"}


OM_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize("accept, ctype", [
    # what Prometheus 2 and 3 send
    ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", OM_TYPE),
    ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
     "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;"
     "escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1", OM_TYPE),
    ("text/plain;q=0.1, application/openmetrics-text;q=0.9", OM_TYPE),
    ('application/openmetrics-text; version="1.0.0"', OM_TYPE),
    # a version it does not write: was echoed as the Content-Type of a 1.0.0 body
    ("application/openmetrics-text; version=99", TEXT_TYPE),
    ("application/openmetrics-text; version=2.0.0", TEXT_TYPE),
    ("application/openmetrics-text; version=2.0.0 junk\xe9", TEXT_TYPE),
    # q-values: 0 is "not acceptable"; nan, -1, 2 are no q-values
    ("application/openmetrics-text;q=0, text/plain", TEXT_TYPE),
    ("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.1", TEXT_TYPE),
    ("application/openmetrics-text;q=nan", TEXT_TYPE),
    ("application/openmetrics-text;q=-1", TEXT_TYPE),
    ("application/openmetrics-text;q=2", TEXT_TYPE),
    (", ".join(["application/json;q=0.5"] * 2000), TEXT_TYPE),
])
def test_metrics_content_type_is_what_its_body_is_in(env, accept, ctype):
    """The Accept header was handed to prometheus_client's choose_encoder, which ignores
    q-values (OpenMetrics sent to a scraper that said q=0 to it, or preferred the text
    format) and copies the requested version into the Content-Type of a body it writes
    as OpenMetrics 1.0.0 ("version=99", raw bytes of the request in a response header).
    The sidecar negotiates itself now: OpenMetrics 1.0.0 or the text format 0.0.4, by
    q-value, a Content-Type of its own."""
    import socket

    sc, _, _ = env
    with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: "
                  + accept.encode("latin-1") + b"\r\n\r\n")
        answer = _answer(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert f"\r\nContent-Type: {ctype}\r\n".encode() in head, head
    assert body.endswith(b"# EOF\n") == (ctype == OM_TYPE) and b"nacfauth_" in body


def test_an_accept_header_cannot_add_a_response_header(env):
    """A folded (obs-fold) Accept value was copied, CRLF and all, into the Content-Type:
    the client wrote a header of its own into the response (response splitting)."""
    sc, _, _ = env
    answer = _exchange(sc, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/"
                           b"openmetrics-text; version=2.\r\n X-Injected: 1\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0]
    assert b"\r\nX-Injected" not in head and b"\r\n X-Injected" not in head, head


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("lines", [
    # the lines after one without a colon were dropped, Content-Length with them, so the
    # body was read as the next request
    b"X: a\r\nno colon here\r\nContent-Length: %d" % len(SMUGGLED),
    b"Content-Length : %d" % len(SMUGGLED),  # space before the colon: the same
    b"X: a\r\n folded continuation",  # obs-fold
    b"X: a\r\n\tfolded: too",
    b"X: a\rContent-Length: %d" % len(SMUGGLED),  # a bare CR: a line break to email
    b"X: a\rb",
    b"X: \x00",
    b"X: \x1b[2J",
    b"X\x00: y",
    b": empty name",
    b"Bad Name: x",
])
def test_a_header_line_that_is_not_name_colon_value_is_400(env, lines):
    """Headers were parsed by the email package, which ends the header block at the
    first line without a colon (or with a space before it), dropping every header after
    it, splits at a bare CR, and joins obs-fold continuation lines: a Content-Length
    behind such a line went unseen and the body was served as a second request
    (smuggled past whatever sits in front). Each line must be Name: value."""
    sc, _, _ = env
    answer = _exchange(sc, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + lines
                       + b"\r\n\r\n" + SMUGGLED)
    code, headers, doc = _status_and_json(answer)
    assert code == 400 and "header" in doc["error"], doc
    assert headers["Connection"] == "close" and b"smuggled" not in answer


@pytest.mark.parametrize("lines, status", [
    # the first Content-Length was used, a proxy in front may use the last
    (b"Content-Length: 0\r\nContent-Length: %d" % len(SMUGGLED), 400),
    (b"Transfer-Encoding:", 400),  # empty, so taken as none
    (b"Content-Length: ", 400),
    (b"Content-Length: 0, %d" % len(SMUGGLED), 400),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 0", 400),
    (b"Content-Length: 0\r\nContent-Length: 0", 200),
    (b"Content-Length: 00", 200),  # a zero all the same
])
def test_content_length_and_transfer_encoding_are_checked(env, lines, status):
    """A GET's body was detected from the first Content-Length alone, and an empty
    Transfer-Encoding as none: a request with two differing Content-Lengths (or an empty
    Transfer-Encoding or Content-Length) was served and its body read as the next
    request; "00" was refused as a body. Differing or malformed values, or both
    headers, are 400 (RFC 9112 section 6.3)."""
    sc, _, _ = env
    answer = _exchange(sc, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + lines
                       + b"\r\nConnection: close\r\n\r\n" + SMUGGLED)
    code, _, doc = _status_and_json(answer)
    assert code == status, doc
    assert b"smuggled" not in answer


@pytest.mark.parametrize("cut", [b"GET /health/live HTTP/1.1\r\n",
                                 b"GET /health/live HTTP/1.1\r\nHost: x\r\n",
                                 b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r"])
def test_a_request_whose_headers_never_end_is_not_served(env, cut):
    """A client that half-closed its connection in the middle of the headers (no empty
    line after them) was served as if the request were whole: 200 for a request that
    never ended. It is 400 now."""
    sc, _, _ = env
    code, _, doc = _status_and_json(_exchange(sc, cut))
    assert code == 400 and "ended" in doc["error"], doc


@pytest.mark.parametrize("version, lines, status", [
    (b"HTTP/1.1", b"Host: x\r\nHost: y\r\n", 400),  # which one?
    (b"HTTP/1.0", b"Host: x\r\nHost: x\r\n", 400),
    (b"HTTP/1.1", b"", 400),  # HTTP/1.1 requires one
    (b"HTTP/1.1", b"Host: a b\r\n", 400),
    (b"HTTP/1.1", b"Host: a/b\r\n", 400),
    (b"HTTP/1.0", b"", 200),  # HTTP/1.0 has none
    (b"HTTP/1.1", b"Host: [::1]:9464\r\n", 200),
    (b"HTTP/1.1", b"Host: metrics.example:9464\r\n", 200),
    (b"HTTP/1.1", b"Host: \r\n", 200),  # empty: allowed (a URI without authority)
    (b"HTTP/0.9", b"", 505),  # the version is what is wrong
])
def test_host_header_is_one_valid_host(env, version, lines, status):
    """RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without a
    Host header, and to any request with more than one or an invalid one (a proxy in
    front may route by one Host and log another). They were all served."""
    sc, _, _ = env
    code, _, doc = _status_and_json(_exchange(
        sc, b"GET /health/live " + version + b"\r\n" + lines + b"\r\n"))
    assert code == status, doc
    if status == 400:
        assert "Host" in doc["error"]


def test_headers_beyond_64_kib_in_all_are_431(env):
    """Headers were limited only per line (64 KiB) and in number (100): one request
    could make a connection's thread hold 6.5 MB of header text (and its parsed copy),
    so 32 connections from one address over 200 MB. 64 KiB in all now."""
    sc, _, _ = env
    lines = b"".join(b"X-Many-%d: %s\r\n" % (i, b"m" * 2000) for i in range(40))
    code, headers, doc = _status_and_json(_exchange(
        sc, b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"))
    assert code == 431 and "65536" in doc["error"] and headers["Connection"] == "close"
    assert get(sc.url + "/health/live")[0] == 200


@pytest.mark.parametrize("request_head, status", [
    (b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 405),
])
def test_an_answer_after_which_the_connection_is_closed_says_so(env, request_head, status):
    """A GET with a body (400) and another method (405) had their connection closed
    without ``Connection: close`` in the answer: a keep-alive client or proxy sent its
    next request into a closed connection. RFC 9112 section 9.6."""
    sc, _, _ = env
    code, headers, _ = _status_and_json(_exchange(sc, request_head))
    assert code == status and headers.get("Connection") == "close", headers


def _sidecar_connection_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_stop_closes_the_connections_still_open_and_ends_their_threads():
    """stop() closed the listening socket only: a connection still open (Prometheus keeps
    its scrape connection alive) went on being answered by the stopped sidecar, /metrics
    and /health/ready 200 included, and its thread lived on for as long as the client
    kept using it (a scrape every 5 s never let it idle out). stop() now closes every
    open connection and returns once their threads have ended."""
    import socket

    before = len(_sidecar_connection_threads())
    sc = Sidecar("127.0.0.1:0", registry=CollectorRegistry(), checks={})
    sc.start()
    sc.set_ready(True)
    conns = [socket.create_connection(("127.0.0.1", sc.port), timeout=10) for _ in range(3)]
    for c in conns:
        c.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += c.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length:")))
        while len(body) < length:  # the whole answer read: what comes next is new
            body += c.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head
    idle = socket.create_connection(("127.0.0.1", sc.port), timeout=10)  # no request yet
    try:
        sc.stop()
        assert len(_sidecar_connection_threads()) == before
        for c in (*conns, idle):
            try:
                c.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = c.recv(65536)
            except OSError:  # reset
                answer = b""
            assert answer == b"", answer[:40]
    finally:
        for c in (*conns, idle):
            c.close()
