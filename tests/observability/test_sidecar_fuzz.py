"""Generated hostile HTTP against a running sidecar, over a real socket, as a network peer
sees it: whatever arrives, every answer is a well-formed HTTP/1.x response (status line,
headers of visible ASCII only, so nothing raw from the request is echoed into one, and a
Content-Length its body matches), a 4xx/5xx for what is wrong and 200/503 for a correct
request to a real endpoint; the connection is closed only after an answer that says so
(``Connection: close``); and the sidecar keeps answering ``GET /health/live`` on a fresh
connection, and ``/metrics`` keeps passing ``promtool check metrics``.

Requests are assembled from parts that are each either correct or hostile (any method,
targets with NUL, %-escapes, '..', non-ASCII bytes or 70 000 characters, HTTP/0.9,
HTTP/2.0 and garbage versions, duplicate Host, obs-fold continuation lines, lines without
a colon, bare CR, Content-Length negative, huge, duplicated or beside Transfer-Encoding,
bodies on GET); a request is expected to succeed only when every part is correct. They
are sent alone, pipelined, half-closed after the last byte, or cut off mid-request.
``/metrics`` is also asked for with hostile ``Accept`` headers (q-values nan, -1, 2; long
lists): its Content-Type must name the format its body is in."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from nacf_core.metrics import Metrics
from nacf_core.sidecar import Sidecar

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
ENDPOINTS = [b"/metrics", b"/health", b"/health/live", b"/health/ready"]


@pytest.fixture(scope="module")
def sc():
    reg = CollectorRegistry()
    mt = Metrics(reg)
    mt.observe_rpc("Authenticate", "OK", 0.004)
    side = Sidecar("127.0.0.1:0", registry=reg, metrics=mt, request_timeout_s=2.0,
                   checks={"store": lambda: {"backend": "sqlite"}}).start()
    side.set_ready(True)
    yield side
    side.stop()


# ------------------------------------------------------------------ the client side

def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, half-close, and read until the sidecar closes (it must, within 10 s:
    the request timeout is 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it answered and closed before reading everything: read the answer
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                pytest.fail(f"the sidecar neither answered nor closed: {raw[:200]!r}")
            if not chunk:
                break
            data += chunk
    return data


TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) ([\t\x20-\x7e]*)\r\n")
HEADER_LINE = re.compile(rb"(" + TOKEN + rb"): ?([\t\x20-\x7e]*)\r\n")


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {self.headers}"
        return values[0] if values else None

    @property
    def closes(self) -> bool:
        return (self.header("Connection") or "").lower() == "close"


def parse_responses(data: bytes, heads: list[bool]) -> list[Response]:
    """The final responses in ``data`` (1xx interim ones checked and dropped), strictly:
    any byte that is not part of a well-formed response fails. ``heads[i]``: the i-th
    request was a HEAD (its answer has no body)."""
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        m = STATUS_LINE.match(data, pos)
        assert m, f"not a status line at byte {pos}: {data[pos:pos + 200]!r}"
        status = int(m.group(1))
        pos = m.end()
        headers = []
        while not data.startswith(b"\r\n", pos):
            h = HEADER_LINE.match(data, pos)
            assert h, f"not a header line (or raw bytes in one): {data[pos:pos + 200]!r}"
            headers.append((h.group(1).decode(), h.group(2).decode().strip()))
            pos = h.end()
        pos += 2
        r = Response(status, headers, b"")
        if status < 200:
            continue  # 100 Continue: no body, the final answer follows
        length = r.header("Content-Length")
        assert length is not None and length.isdigit(), f"no Content-Length: {headers}"
        # a HEAD's answer has no body; but an error found before the method was read
        # (a bad request line starting with "HEAD ") may have one
        head = (len(out) < len(heads) and heads[len(out)]
                and (pos == len(data) or data.startswith(b"HTTP/1.", pos)))
        if not head:
            r.body = data[pos:pos + int(length)]
            assert len(r.body) == int(length), (
                f"Content-Length {length}, body {len(r.body)} bytes: {r.body[:200]!r}")
            pos += int(length)
        out.append(r)
    return out


def live(port: int, caplog: pytest.LogCaptureFixture | None = None) -> None:
    """A fresh connection still gets ``200`` from /health/live; and nothing the sidecar
    logged (at WARNING: a request that failed inside it) came of the request."""
    if caplog is not None:
        failed = [r.getMessage() for r in caplog.records if r.name == "nacf.sidecar"]
        assert failed == [], failed
    rs = parse_responses(exchange(port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"),
                         [False])
    assert [r.status for r in rs] == [200]


# ------------------------------------------------------------------ requests

@dataclass
class Req:
    raw: bytes
    ok: bool  # every part correct: expect 200/503, else 4xx/5xx
    head: bool
    why: str  # the hostile parts, for the failure message

    def __repr__(self) -> str:
        raw = self.raw if len(self.raw) <= 300 else self.raw[:300] + b"...(%d bytes)" % len(
            self.raw)
        return f"Req({raw!r}, ok={self.ok}, why={self.why!r})"


def _part(good: list[bytes], bad: list[bytes]):
    """``(value, "")`` or, one time in four, ``(hostile value, its repr)``."""
    return st.integers(0, 3).flatmap(
        lambda i: st.sampled_from(bad).map(lambda v: (v, repr(v[:60]))) if i == 0
        else st.sampled_from(good).map(lambda v: (v, "")))


methods = _part([b"GET", b"GET", b"HEAD"],
                [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT", b"PATCH",
                 b"get", b"FOO", b"G\x00T", b"GE T", b"GET\x85", b"\xffGET", b""])
path_suffixes = [b"", b"/", b"?x=1", b"?", b"?a=%20&b=%C3%A9"]
hostile_suffixes = [b"\x00", b"%00", b"/..", b"/../metrics", b"%2e%2e", b"\xff\xfe",
                    b"\xc3\xa9", b"\x7f", b"\x1c", b"\x85", b"\xa0", b"\x01", b"\r",
                    b"?\x00", b"?\x1b[31m", b" x", b"\t", b"\x0b", b"\x0c", b"\n"]


@st.composite
def targets(draw):
    ep = draw(st.sampled_from(ENDPOINTS))
    form = draw(st.sampled_from([b"", b"", b"http://127.0.0.1:9464", b"HTTP://h"]))
    if draw(st.integers(0, 3)):
        return form + ep + draw(st.sampled_from(path_suffixes)), ""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        bad = ep + draw(st.sampled_from(hostile_suffixes))
    elif kind == 1:
        bad = ep + b"/x" + draw(st.binary(min_size=1, max_size=20))  # no such path
    elif kind == 2:
        bad = b"/" + b"a" * draw(st.sampled_from([300, 9000, 70000]))
    else:
        bad = draw(st.sampled_from([b"*", b"metrics", b"..", b"/../../etc/passwd",
                                    b"%2fmetrics", b"http://", b"//metrics/../x"]))
    return form + bad, repr(bad[:60])


versions = _part([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"],
                 [b"HTTP/0.9", b"HTTP/2.0", b"HTTP/2", b"HTTP/1", b"http/1.1", b"HTTP/1.1x",
                  b"HTTP/1.10", b"HTTP/01.1", b"HTTP/\x00", b"HTTP/9.9", b"HTTP/1.\xb2",
                  b"HTTP/1.1 x", b"\xef\xbc\xa8TTP/1.1", b"HTTP/3.0"])
good_headers = [b"Accept: */*", b"User-Agent: fuzz/1.0", b"Accept-Encoding: gzip",
                b"X-Pad: " + b"p" * 4000, b"Content-Length: 0", b"Connection: keep-alive",
                b"X-Utf8: \xc3\xa9t\xc3\xa9", b"X-Tab:\ta\tb", b"Expect: 100-continue",
                b"Accept: application/openmetrics-text; version=1.0.0, text/plain;q=0.5"]
bad_headers = [b"Host: second\r\nHost: third", b" folded continuation", b"\tfolded: too",
               b"NoColonHere", b"Bad Name: x", b"Content-Length : 5", b"X: a\rContent-Length: 5",
               b"X: a\rB", b"X: \x00", b"X: \x1b[2J", b"X\x00: y", b": empty-name",
               b"Content-Length: -1", b"Content-Length: 99999999999999999999",
               b"Content-Length: 5", b"Content-Length: 0x10", b"Content-Length: +0",
               b"Content-Length: 1_0", b"Content-Length: ", b"Content-Length: 0, 5",
               b"Transfer-Encoding: chunked", b"Transfer-Encoding:", b"Transfer-Encoding: x",
               b"X-Big: " + b"b" * 70000, b"Host: a b", b"Host: a\x7fb"]


@st.composite
def requests(draw, port: int = 9464) -> Req:
    method, bad_m = draw(methods)
    target, bad_t = draw(targets())
    version, bad_v = draw(versions)
    why = [w for w in (bad_m, bad_t, bad_v) if w]
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    lines = [b"Host: 127.0.0.1:%d" % port] if draw(st.integers(0, 9)) else []
    if not lines and version == b"HTTP/1.1":
        why.append("no Host")
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.integers(0, 3)):
            lines.append(draw(st.sampled_from(good_headers)))
        else:
            bad = draw(st.sampled_from(bad_headers))
            lines.append(bad)
            why.append(repr(bad[:40]))
    if draw(st.integers(0, 9)) == 0:  # 40 headers of 2 000 bytes: 80 kB in all
        lines += [b"X-Many-%d: %s" % (i, b"m" * 2000) for i in range(40)]
        why.append("80 kB of headers")
    if b"Content-Length: 0" in lines and lines.count(b"Content-Length: 0") > 1:
        lines.remove(b"Content-Length: 0")  # the same value twice is allowed: keep it simple
    lead = b"\r\n" if draw(st.integers(0, 7)) == 0 else b""  # RFC 9112 2.2: ignored
    raw = lead + method + b" " + target + b" " + version + eol
    raw += b"".join(h + eol for h in lines) + eol
    body_header = next((h for h in lines if h.startswith(b"Content-Length: ")
                        and h[16:].isdigit() and 0 < int(h[16:]) < 100), None)
    if body_header is not None:
        raw += b"x" * int(body_header[16:])  # the body it announced
    return Req(raw, not why, method == b"HEAD", ", ".join(why))


@pytest.fixture
def caplog(caplog):
    caplog.set_level(logging.WARNING, logger="nacf.sidecar")
    return caplog


def check_answer(req: Req, r: Response) -> None:
    if req.ok:
        assert r.status in (200, 503), (r.status, r.body[:300], req.raw[:300])
    else:
        assert 400 <= r.status < 600, (f"{r.status} for {req.why}", r.body[:300],
                                       req.raw[:300])


# ------------------------------------------------------------------ properties

@FUZZ
@given(data=st.data())
def test_any_request_gets_one_well_formed_answer(sc, caplog, data):
    req = data.draw(requests(sc.port))
    rs = parse_responses(exchange(sc.port, req.raw), [req.head])
    assert len(rs) == 1, (req.raw[:300], rs)
    check_answer(req, rs[0])
    live(sc.port, caplog)


@FUZZ
@given(data=st.data())
def test_pipelined_requests_are_answered_in_order(sc, caplog, data):
    reqs = data.draw(st.lists(requests(sc.port), min_size=2, max_size=4))
    raw = b"".join(r.raw for r in reqs)
    rs = parse_responses(exchange(sc.port, raw), [r.head for r in reqs])
    assert 1 <= len(rs) <= len(reqs), (raw[:400], rs)
    for req, r in zip(reqs, rs):
        check_answer(req, r)
    if len(rs) < len(reqs):
        assert rs[-1].closes, ("closed without saying so", rs[-1], raw[:400])
    live(sc.port, caplog)


GOOD = b"GET /health/live HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"


@FUZZ
@given(cut=st.integers(1, len(GOOD) - 1), how=st.sampled_from(["fin", "rst", "half"]))
def test_a_request_cut_off_midway_is_not_served_and_breaks_nothing(sc, caplog, cut, how):
    """Closed (FIN or RST) after part of a request: nothing to answer, nothing broken.
    Half-closed after part of it: no ``200`` for a request that never ended; a 400, or
    nothing."""
    if how == "half":
        rs = parse_responses(exchange(sc.port, GOOD[:cut]), [False])
        assert all(400 <= r.status < 500 for r in rs) and len(rs) <= 1, (GOOD[:cut], rs)
    else:
        s = socket.create_connection(("127.0.0.1", sc.port), timeout=10)
        s.sendall(GOOD[:cut])
        if how == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    live(sc.port, caplog)


qvalues = st.sampled_from([b"", b";q=1", b";q=0", b";q=0.0", b";q=0.5", b";q=nan",
                           b";q=-1", b";q=2", b";q=1.0001", b";q=", b";q=inf", b";Q=0.9",
                           b";q=0.123", b";q = 0.3", b";q=1e-3"])
media = st.sampled_from([b"application/openmetrics-text", b"text/plain", b"*/*",
                         b"text/*", b"application/json", b"application/*",
                         b"APPLICATION/OPENMETRICS-TEXT", b"", b"garbage",
                         b"application/openmetrics-text ", b"text/html"])
mparams = st.sampled_from([b"", b";version=1.0.0", b";version=0.0.1", b";version=2.0.0",
                           b";version=0.0.4", b"; version=1.0.0", b";version=99",
                           b";version=2.0.0\x01", b";version=1.0.0;escaping=allow-utf-8",
                           b";escaping=dots", b";escaping=\x01", b";version=",
                           b";version=1.x", b";charset=utf-8", b";version=\"1.0.0\""])


@st.composite
def accepts(draw) -> bytes:
    items = draw(st.lists(st.tuples(media, mparams, qvalues), min_size=1, max_size=6))
    value = b", ".join(m + p + q for m, p, q in items)
    if draw(st.integers(0, 9)) == 0:
        value = b", ".join([value] * (60000 // (len(value) + 2)))  # a huge list (60 kB)
    return value


def _format_of(r: Response) -> str:
    ctype = r.header("Content-Type") or ""
    if ctype == "text/plain; version=0.0.4; charset=utf-8":
        return "text"
    if re.fullmatch(r"text/plain; version=1\.0\.0; charset=utf-8"
                    r"(; escaping=(underscores|dots|values|allow-utf-8))?", ctype):
        return "text"
    if re.fullmatch(r"application/openmetrics-text; version=1\.0\.0; charset=utf-8"
                    r"(; escaping=(underscores|dots|values|allow-utf-8))?", ctype):
        return "openmetrics"
    pytest.fail(f"/metrics answered with Content-Type {ctype!r}")


@FUZZ
@given(accept=accepts())
@example(accept=b"application/openmetrics-text; version=2.0.0\x01")
@example(accept=b"application/openmetrics-text; version=99")
@example(accept=b"application/openmetrics-text;q=0, text/plain")
@example(accept=b"application/openmetrics-text;q=nan")
def test_metrics_content_type_names_the_format_of_its_body(sc, accept):
    raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: " + accept + b"\r\n\r\n"
    rs = parse_responses(exchange(sc.port, raw), [False])
    if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", accept):
        assert [r.status for r in rs] == [400], (accept[:200], rs)  # a control character
        return
    assert [r.status for r in rs] == [200], (accept[:200], rs)
    fmt = _format_of(rs[0])
    body = rs[0].body
    assert body.endswith(b"# EOF\n") == (fmt == "openmetrics"), (accept[:200], fmt)
    assert b"nacfauth_" in body
    ranges = [a.strip() for a in accept.split(b",")]
    om = [a for a in ranges if a.split(b";")[0].strip().lower()
          == b"application/openmetrics-text"]
    if om and all(re.search(rb";\s*q=0(\.0{0,3})?$", a) for a in om):
        assert fmt == "text", ("OpenMetrics was refused (q=0) and sent", accept[:200])


def test_metrics_still_passes_promtool_after_the_fuzzing(sc):
    assert sc._thread is not None and sc._thread.is_alive()
    raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    [r] = parse_responses(exchange(sc.port, raw), [False])
    assert r.status == 200
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed (apt-get install prometheus)"
    out = subprocess.run([promtool, "check", "metrics"], input=r.body, capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    live(sc.port)
