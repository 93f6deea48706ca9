"""Per-call cost of the observability layer on the request path.

Each RPC calls ``Metrics.observe_rpc`` once and writes one audit line; a scrape renders
the registry. Baselines in the same run: the bare prometheus_client calls that
``observe_rpc`` makes (counter inc + histogram observe), and a stdlib ``logging``
record with the default text formatter.

    python -m pytest benches/bench_observability.py --benchmark-only
"""

from __future__ import annotations

import io
import logging

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from nacf_core import logs
from nacf_core.metrics import LATENCY_BUCKETS, Metrics


@pytest.fixture
def metrics():
    return Metrics(CollectorRegistry())


@pytest.fixture
def bare():
    reg = CollectorRegistry()
    c = Counter("bare_requests_total", "x", ["method", "status", "user_type"], registry=reg)
    h = Histogram("bare_duration_seconds", "x", ["method", "status"], buckets=LATENCY_BUCKETS,
                  registry=reg)
    return c, h


@pytest.fixture
def json_logger():
    log = logging.getLogger("nacf.bench.json")
    log.propagate = False
    h = logging.StreamHandler(io.StringIO())
    h.setFormatter(logs.JsonFormatter())
    log.addHandler(h)
    log.setLevel(logging.INFO)
    yield log
    log.removeHandler(h)


@pytest.fixture
def text_logger():
    log = logging.getLogger("nacf.bench.text")
    log.propagate = False
    h = logging.StreamHandler(io.StringIO())
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    yield log
    log.removeHandler(h)


@pytest.mark.benchmark(group="metrics per RPC")
def test_observe_rpc(benchmark, metrics):
    benchmark(metrics.observe_rpc, "Authenticate", "OK", 0.004, "api_key")
    n = metrics.auth_requests_total.labels("Authenticate", "OK", "api_key")._value.get()
    assert n >= 1


@pytest.mark.benchmark(group="metrics per RPC")
def test_bare_prometheus_client_baseline(benchmark, bare):
    c, h = bare

    def call():
        c.labels("Authenticate", "OK", "api_key").inc()
        h.labels("Authenticate", "OK").observe(0.004)

    benchmark(call)
    assert c.labels("Authenticate", "OK", "api_key")._value.get() >= 1


FIELDS = dict(user_id="alice", success=True, confidence=0.91, duration_ms=4.2,
              peer="ipv4:127.0.0.1:50122", method="Authenticate", reasons=[])


@pytest.mark.benchmark(group="audit line")
def test_audit_event_json(benchmark, json_logger):
    benchmark(logs.audit_event, json_logger, "auth_attempt", **FIELDS)
    assert '"event_type":"auth_attempt"' in json_logger.handlers[0].stream.getvalue()


@pytest.mark.benchmark(group="audit line")
def test_stdlib_text_logging_baseline(benchmark, text_logger):
    benchmark(text_logger.info, "auth attempt user=%s success=%s", "alice", True)
    assert "auth attempt" in text_logger.handlers[0].stream.getvalue()


@pytest.mark.benchmark(group="scrape")
def test_exposition(benchmark, metrics):
    for m in ("Enroll", "Authenticate", "Identify", "GetUser"):
        for st in ("OK", "NOT_FOUND", "INVALID_ARGUMENT"):
            metrics.observe_rpc(m, st, 0.003)
    metrics.observe_signal("authenticate", 0.002, 0.9)
    body = benchmark(metrics.exposition)
    assert b"nacfauth_auth_duration_seconds_bucket" in body
