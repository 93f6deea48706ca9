"""Parallel enrollments, verifications, failures, tokens and nonces lose no update."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nacf_core.store import open_store

WORKER = Path(__file__).with_name("_store_worker.py")
N_THREADS = 8
N_OPS = 15


def _run_threads(fn, n=N_THREADS):
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait(timeout=30)
            fn(i)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]


def test_parallel_enroll_and_verify_same_and_different_users(store):
    store.put_template("shared", b"v0", "m")
    reads = []

    def work(i):
        for k in range(N_OPS):
            store.put_template("shared", f"{i}-{k}".encode(), "m")  # same user
            store.put_template(f"own-{i}", f"{k}".encode(), "m")  # a different user
            t = store.get_template("shared")  # a verification reads it meanwhile
            reads.append(t.blob.decode().count("-") == 1 or t.blob == b"v0")

    _run_threads(work)
    assert store.get_template("shared").version == 1 + N_THREADS * N_OPS
    for i in range(N_THREADS):
        assert store.get_template(f"own-{i}").version == N_OPS
    assert all(reads) and len(reads) == N_THREADS * N_OPS


def test_parallel_optimistic_updates(store):
    """Read-modify-write with expected_version: conflicts are detected, none is lost."""
    from nacf_core.errors import FailedPrecondition

    store.put_template("u", b"0", "m")
    conflicts = []

    def work(i):
        done = 0
        while done < 5:
            t = store.get_template("u")
            try:
                store.put_template("u", str(int(t.blob) + 1).encode(), "m",
                                   expected_version=t.version)
                done += 1
            except FailedPrecondition:
                conflicts.append(1)

    _run_threads(work, n=4)
    t = store.get_template("u")
    assert int(t.blob) == 20 and t.version == 21


def test_parallel_failures_tokens_nonces(store):
    store.put_template("victim", b"x", "m")
    granted = []
    nonce_ok = []

    def work(i):
        for _ in range(N_OPS):
            store.register_failure("victim", 10**6, 60)
            granted.append(store.take_token("client", 0.0, 40))
        nonce_ok.append(store.use_nonce("hs", "same-nonce", 4e9))

    _run_threads(work)
    assert store.get_lockout("victim").failures == N_THREADS * N_OPS
    assert sum(granted) == 40 and len(granted) == N_THREADS * N_OPS
    assert sum(nonce_ok) == 1


def test_lockout_reached_exactly_once_under_contention(store):
    store.put_template("victim", b"x", "m")
    results = []
    _run_threads(lambda i: results.append(store.register_failure("victim", 5, 300, now=1e9)))
    assert sorted(r[0] for r in results) == list(range(1, N_THREADS + 1))
    assert {r[1] for r in results if r[0] >= 5} == {1e9 + 300}
    assert all(r[1] is None for r in results if r[0] < 5)


def test_two_store_objects_share_state(store_url, key, store):
    """Two replicas (two store objects) on one database add up to one lockout."""
    other = open_store(store_url, key=key)
    try:
        store.put_template("u", b"x", "m")
        a = store.register_failure("u", 4, 60, now=1e9)
        b = other.register_failure("u", 4, 60, now=1e9)
        c = store.register_failure("u", 4, 60, now=1e9)
        d = other.register_failure("u", 4, 60, now=1e9)
        assert [a[0], b[0], c[0], d[0]] == [1, 2, 3, 4] and d[1] == 1e9 + 60
        assert other.get_template("u").blob == b"x"
    finally:
        other.close()


@pytest.mark.parametrize("n_procs", [3])
def test_parallel_processes(store_url, key, store, n_procs):
    store.put_template("shared", b"x", "m")
    n = 12
    procs = [subprocess.Popen([sys.executable, str(WORKER), "bump", store_url,
                               base64.b64encode(key).decode(), "shared", str(n)],
                              stderr=subprocess.PIPE, text=True) for _ in range(n_procs)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert store.get_template("shared").version == 1 + n_procs * n
    assert store.get_lockout("shared").failures == n_procs * n


def _hold_writer_lock(path: str, seconds: float) -> subprocess.Popen:
    """Another process holding the SQLite store's writer lock for ``seconds``."""
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({path + '-wlock'!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            f"time.sleep({seconds})\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _sqlite_with_one_template(tmp_path, key, busy_timeout_s):
    from nacf_core.store.sqlite import SQLiteStore

    path = str(tmp_path / "s.sqlite")
    s = SQLiteStore(path, key, busy_timeout_s=busy_timeout_s)
    s.put_template("u", b"v1", "m")
    return s, path


def test_sqlite_writers_of_two_processes_queue_on_the_file_lock(tmp_path, key):
    """A writer waits for another process's writer and goes on as soon as it finishes,
    instead of sleeping in SQLite's busy handler; reads never wait."""
    import time

    s, path = _sqlite_with_one_template(tmp_path, key, busy_timeout_s=5.0)
    try:
        p = _hold_writer_lock(path, 0.4)
        t0 = time.monotonic()
        assert s.get_template("u").blob == b"v1"  # a reader does not wait
        assert time.monotonic() - t0 < 0.3
        s.put_template("u", b"v2", "m")  # waits for the other process
        waited = time.monotonic() - t0
        p.wait(10)
        assert 0.3 <= waited < 1.5, waited
        assert s.get_template("u").version == 2
    finally:
        s.close()


def test_sqlite_writer_gives_up_after_the_busy_timeout(tmp_path, key):
    import time

    from nacf_core.errors import Unavailable

    s, path = _sqlite_with_one_template(tmp_path, key, busy_timeout_s=0.3)
    try:
        p = _hold_writer_lock(path, 3.0)
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="locked"):
            s.put_template("u", b"v2", "m")
        assert time.monotonic() - t0 < 2.5
        p.kill()
        p.wait(10)
        s.put_template("u", b"v2", "m")  # the dead holder's lock is gone
        assert s.get_template("u").blob == b"v2"
    finally:
        s.close()
