"""Integration: a real Prometheus server scrapes a running ``nacf serve``.

1. ``nacf serve`` (SQLite in a tmp dir, API key from the environment, device proof off)
   and ``prometheus`` (loopback, tmp storage, 1 s scrape interval, our alert rules
   loaded) start side by side.
2. Real EEG (the EEGMMIDB excerpts the package ships for the demo, subjects the model
   was not fitted on) is enrolled and authenticated over gRPC.
3. Through Prometheus's HTTP API:
   ``histogram_quantile(0.95, rate(nacfauth_auth_duration_seconds_bucket[1m]))`` is a
   number; the request count, the success rate and the decisions agree with what the
   client saw; the target is up; the alert rules loaded without error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from pathlib import Path

import grpc
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "nacf-alerts.yml"
API_KEY = "observability-test-key"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what: str, fn, timeout: float, procs=()) -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, p, log in procs:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode} while waiting for "
                                     f"{what}:\n{Path(log).read_text()[-4000:]}")
        try:
            last = fn()
        except (OSError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.2)
    details = "\n".join(f"--- {n}:\n{Path(log).read_text()[-3000:]}" for n, _, log in procs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})\n"
                         f"{details}")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def signal_msg(pb, rec, start_s: float, seconds: float):
    i0 = int(start_s * rec.sfreq)
    n = int(seconds * rec.sfreq)
    block = np.ascontiguousarray(rec.data[i0:i0 + n], dtype="<f4")
    assert block.shape[0] == n, "recording too short for the requested slice"
    return pb.Signal(sample_rate_hz=rec.sfreq, channel_names=list(rec.ch_names),
                     samples=block.tobytes())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not installed (apt-get install prometheus)"
    tmp = tmp_path_factory.mktemp("prom-integration")
    grpc_port, metrics_port, prom_port = free_port(), free_port(), free_port()
    env = {**os.environ, "NACF_API_KEYS": API_KEY, "PYTHONUNBUFFERED": "1"}
    env.pop("NACF_CONFIG", None)
    env.pop("NACF_KERNEL_BACKEND", None)  # the default, cython (the kernel series below)
    serve_log = tmp / "serve.stderr"  # the JSON-lines log
    serve = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "serve",
         "--grpc-address", f"127.0.0.1:{grpc_port}",
         "--metrics-address", f"127.0.0.1:{metrics_port}",
         "--data-dir", str(tmp / "data"), "--no-require-device-proof",
         "--rate-limit", "1000", "--rate-burst", "1000"],
        cwd=tmp, env=env, stdout=(tmp / "serve.stdout").open("wb"),
        stderr=serve_log.open("wb"))
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: nacfauth-api\n    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n")
    prom_log = tmp / "prometheus.log"
    prom = subprocess.Popen(
        [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
        cwd=tmp, stdout=prom_log.open("wb"), stderr=subprocess.STDOUT)
    procs = [("nacf serve", serve, serve_log), ("prometheus", prom, prom_log)]
    try:
        wait_until("nacf serve /health/ready",
                   lambda: http_get(f"http://127.0.0.1:{metrics_port}/health/ready")[0] == 200,
                   60, procs)
        wait_until("prometheus /-/ready",
                   lambda: http_get(f"http://127.0.0.1:{prom_port}/-/ready")[0] == 200,
                   30, procs)
        yield {"grpc": f"127.0.0.1:{grpc_port}", "metrics": f"http://127.0.0.1:{metrics_port}",
               "prom": f"http://127.0.0.1:{prom_port}", "procs": procs,
               "serve_log": serve_log}
    finally:
        stop(serve)
        stop(prom)


def query(prom: str, expr: str) -> list[dict]:
    status, body = http_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", doc
    return doc["data"]["result"]


def scalar_sum(prom: str, expr: str) -> float | None:
    res = query(prom, expr)
    return float(res[0]["value"][1]) if res else None


@pytest.fixture(scope="module")
def traffic(stack):
    """Enroll and authenticate real EEG over gRPC; wait until Prometheus saw it all."""
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
    from nacf_core.hardware.files import read_recording

    prom, procs = stack["prom"], stack["procs"]
    demo = resources.files("nacf_core") / "data" / "demo"
    enroll_rec = read_recording(str(demo / "S021R03.npz"))   # 60 s each
    genuine = read_recording(str(demo / "S021R07.npz"))
    impostor = read_recording(str(demo / "S022R07.npz"))
    md = (("x-api-key", API_KEY),)

    with grpc.insecure_channel(stack["grpc"]) as ch:
        stub = pbg.AuthServiceStub(ch)
        enr = stub.Enroll(pb.EnrollRequest(
            user_id="s021", signals=[signal_msg(pb, enroll_rec, 0, 60),
                                     signal_msg(pb, genuine, 0, 24)]),
            metadata=md, timeout=60)
        assert enr.epochs_used > 0

        seen = {"OK": 0, "other": 0}
        decisions = {"accept": 0, "reject": 0}

        def authenticate(user: str, rec, start: float) -> None:
            try:
                r = stub.Authenticate(pb.AuthenticateRequest(
                    user_id=user, signal=signal_msg(pb, rec, start, 4.0)),
                    metadata=md, timeout=30)
            except grpc.RpcError as e:
                assert e.code() != grpc.StatusCode.UNKNOWN, e.details()
                seen["other"] += 1
            else:
                seen["OK"] += 1
                decisions["accept" if r.accepted else "reject"] += 1

        # one call, then wait until Prometheus has scraped its series: rate() needs
        # a sample before the increase it measures
        authenticate("s021", genuine, 24.0)
        wait_until("the first Authenticate in Prometheus",
                   lambda: query(prom, 'nacfauth_auth_duration_seconds_count'
                                       '{method="Authenticate"}'), 20, procs)
        for i in range(4):
            authenticate("s021", genuine, 28.0 + 4.0 * i)  # genuine attempts
            authenticate("s021", impostor, 4.0 * i)        # S022 claims to be s021
        authenticate("nobody", genuine, 0.0)                # NOT_FOUND
        total = sum(seen.values())
        assert total == 10 and seen["other"] >= 1

    wait_until(f"Prometheus to see all {total} Authenticate calls",
               lambda: scalar_sum(prom, 'sum(nacfauth_auth_requests_total'
                                        '{method="Authenticate"})') == total, 20, procs)
    return {"seen": seen, "decisions": decisions, "total": total}


def test_prometheus_scrapes_nacf_serve_and_computes_the_latency_quantile(stack, traffic):
    prom = stack["prom"]
    seen, decisions, total = traffic["seen"], traffic["decisions"], traffic["total"]

    # the query the issue asks for: a number, per (method, status) series
    res = query(prom, "histogram_quantile(0.95, rate(nacfauth_auth_duration_seconds_bucket[1m]))")
    values = {(r["metric"]["method"], r["metric"]["status"]): float(r["value"][1]) for r in res}
    ok = values[("Authenticate", "OK")]
    assert math.isfinite(ok) and 0 < ok < 10, values
    # the same over all series of the method
    p95 = scalar_sum(prom, 'histogram_quantile(0.95, sum by (le) (rate('
                           'nacfauth_auth_duration_seconds_bucket{method="Authenticate"}[1m])))')
    assert p95 is not None and math.isfinite(p95) and 0 < p95 < 10

    # the success rate gauge: the share of Authenticate calls that returned OK
    rate = scalar_sum(prom, 'nacfauth_auth_success_rate{method="Authenticate"}')
    assert rate == pytest.approx(seen["OK"] / total)
    # decisions agree with what the client saw
    got = {r["metric"]["decision"]: float(r["value"][1])
           for r in query(prom, "nacfauth_auth_decisions_total")}
    assert got.get("accept", 0) == decisions["accept"]
    assert got.get("reject", 0) == decisions["reject"]
    # registration, build info and the store check are there too
    assert scalar_sum(prom, 'sum(nacfauth_user_registrations_total{status="OK"})') == 1
    assert query(prom, "nacfauth_build_info")
    assert scalar_sum(prom, 'nacfauth_component_up{component="store"}') == 1
    assert scalar_sum(prom, 'up{job="nacfauth-api"}') == 1
    # every kernel call of the pipeline is timed, by kernel and backend (the Overview
    # dashboard's "Kernel p95" panel): each enrollment and authentication calls them
    kern = {(r["metric"]["kernel"], r["metric"]["backend"]): float(r["value"][1])
            for r in query(prom, "nacfauth_kernel_duration_seconds_count")}
    for name in ("sosfilt", "detect_artifacts", "quality"):
        assert kern.get((name, "cython"), 0) >= decisions["accept"] + decisions["reject"], kern

    # our alert rules are loaded by a real Prometheus and evaluate without error
    status, body = http_get(f"{prom}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {g["name"] for g in groups} == {"nacfauth.critical", "nacfauth.warning",
                                          "nacfauth.security"}
    assert all(r.get("health") in ("ok", "unknown") for r in rules), rules


def test_serve_logs_are_json_lines_without_biometric_data(stack, traffic):
    from nacf_core.logs import is_array_like

    lines = [ln for ln in stack["serve_log"].read_text().splitlines() if ln.strip()]
    assert lines
    rows = [json.loads(ln) for ln in lines]  # every line of stderr is one JSON object
    for row in rows:
        assert {"timestamp", "level", "message", "event_type"} <= set(row), row
        assert "redacted_fields" not in row, row  # nothing even tried to log an array
        assert not any(is_array_like(v) for v in row.values()), row
    attempts = [r for r in rows if r["event_type"] == "auth_attempt"]
    assert len(attempts) >= 9
    for r in attempts:
        assert {"user_id", "success", "duration_ms"} <= set(r), r
        assert "ip_address" in r or "peer" in r, r


def test_health_endpoints_of_nacf_serve(stack):
    status, body = http_get(stack["metrics"] + "/health")
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "healthy" and doc["ready"] is True
    assert doc["checks"]["store"]["status"] == "healthy"
    assert doc["checks"]["store"]["response_time_ms"] > 0
    assert http_get(stack["metrics"] + "/health/live")[0] == 200
    status, body = http_get(stack["metrics"] + "/metrics")
    assert status == 200
    promtool = shutil.which("promtool")
    assert promtool
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                         timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
