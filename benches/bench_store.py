"""Template-store operations on SQLite (the embedded default), per call.

Run: ``python -m pytest benches/bench_store.py --benchmark-only``

Groups (baseline = a bare ``sqlite3`` statement on the same kind of WAL database, the
floor any store on SQLite pays):
- ``store write``: one audit row (``record_attempt``), a token-bucket take, a
  device-proof nonce, a failure count, a session — each its own ``BEGIN IMMEDIATE``
  transaction — vs a bare autocommit ``INSERT``.
- ``store read``: ``get_template`` of a 4 KiB template (SELECT + AES-GCM decrypt) and
  ``get_device`` vs a bare ``SELECT`` of the same row.
- ``rate limit ...``: admitting 400 requests of one API key through the per-client rate
  limit, from 8 threads of two "replicas" (two store objects, each its own connections),
  on SQLite and on PostgreSQL (``NACF_TEST_POSTGRES_DSN``, default the local test
  server): token leases (``nacf_core.ratelimit``, the server's default) vs a store
  transaction per request (``--rate-lease 1``, the baseline).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import uuid

import pytest
from conftest import tag

from nacf_core.ratelimit import TokenLeases
from nacf_core.store import open_store

BLOB = os.urandom(4096)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store")
    s = open_store(f"sqlite:///{d / 'bench.db'}", key=os.urandom(32))
    s.put_template("alice", BLOB, "m")
    s.register_device("alice", "hs-1", "s" * 32)
    yield s
    s.close()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    c = sqlite3.connect(d / "raw.db", isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = NORMAL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, user_id TEXT, v BLOB)")
    c.execute("INSERT INTO t (user_id, v) VALUES ('alice', ?)", (BLOB,))
    yield c
    c.close()


def test_write_baseline_raw_insert(benchmark, raw):
    tag(benchmark, "store write", "sqlite3 INSERT", baseline=True)
    benchmark(raw.execute, "INSERT INTO t (user_id, v) VALUES ('bob', x'00')")


def test_write_record_attempt(benchmark, store):
    tag(benchmark, "store write", "record_attempt")
    benchmark(store.record_attempt, "alice", True, 0.9, "ok", "ipv4:127.0.0.1:1", 0.01,
              "Authenticate")
    assert store.recent_attempts("alice", 1)[0].success


def test_write_take_token(benchmark, store):
    tag(benchmark, "store write", "take_token")
    assert benchmark(store.take_token, "client", 1e9, 1e9) is True


def test_write_use_nonce(benchmark, store):
    counter = itertools.count()
    tag(benchmark, "store write", "use_nonce")
    assert benchmark(lambda: store.use_nonce("hs-1", f"n{next(counter)}", 4e9)) is True


def test_write_register_failure(benchmark, store):
    tag(benchmark, "store write", "register_failure")
    failures, _ = benchmark(store.register_failure, "alice", 10**9, 60)
    assert failures >= 1


def test_write_create_session(benchmark, store):
    tag(benchmark, "store write", "create_session")
    assert benchmark(store.create_session, "alice", 60).token


def test_read_baseline_raw_select(benchmark, raw):
    tag(benchmark, "store read", "sqlite3 SELECT", baseline=True)
    row = benchmark(lambda: raw.execute("SELECT v FROM t WHERE id = 1").fetchone())
    assert row[0] == BLOB


def test_read_get_template(benchmark, store):
    tag(benchmark, "store read", "get_template (decrypt 4 KiB)")
    assert benchmark(store.get_template, "alice").blob == BLOB


def test_read_get_device(benchmark, store):
    tag(benchmark, "store read", "get_device (decrypt)")
    assert benchmark(store.get_device, "hs-1").secret == "s" * 32


# ------------------------------------------------------------------------ rate limit
PG_DSN = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
N_ADMIT, N_THREADS = 400, 8


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def replicas(request, tmp_path_factory):
    """Two store objects on one database (as two replicas would have)."""
    key = os.urandom(32)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('rl') / 'rl.db'}"
    else:
        psycopg = pytest.importorskip("psycopg")
        schema = f"nacf_b_{uuid.uuid4().hex[:10]}"
        url = f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}"
    stores = [open_store(url, key=key) for _ in range(2)]
    yield request.param, stores
    for s in stores:
        s.close()
    if request.param == "postgresql":
        with psycopg.connect(PG_DSN, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _admit_all(stores, max_lease: int) -> int:
    """N_ADMIT requests of one client from N_THREADS threads over two replicas."""
    client = f"app-{uuid.uuid4().hex[:8]}"
    limits = [TokenLeases(s.take_tokens, 1e9, 1e9, max_lease=max_lease) for s in stores]
    admitted = []

    def work(rl):
        admitted.append(sum(rl.take(client, 1.79e9) for _ in range(N_ADMIT // N_THREADS)))

    ts = [threading.Thread(target=work, args=(limits[i % 2],)) for i in range(N_THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(admitted)


@pytest.mark.parametrize("max_lease", [1, 32], ids=["per-request", "leases"])
def test_rate_limit(benchmark, replicas, max_lease):
    backend, stores = replicas
    tag(benchmark, f"rate limit, {N_THREADS} threads, 2 replicas, {backend}",
        "a transaction per request" if max_lease == 1 else f"leases of {max_lease}",
        baseline=max_lease == 1, n_items=N_ADMIT, item="request")
    assert benchmark.pedantic(_admit_all, args=(stores, max_lease), rounds=15,
                              warmup_rounds=1) == N_ADMIT
