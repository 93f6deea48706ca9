"""SQLite-only behaviour of the store."""

from __future__ import annotations

import os
import threading

from nacf_core.store import open_store

KEY = bytes(range(32))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connections_of_ended_threads_are_closed(tmp_path):
    """One connection per thread; a thread that ends leaves its connection to be closed
    when the next thread connects. (The sidecar's health checks each run in a new
    thread: 50 of them used to leak 110 file descriptors, and under a limit of 160 the
    readiness probe turned 503.)"""
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", KEY)
    try:
        store.ping()

        def ping():
            store.ping()

        fds0 = _fds()  # (other threads of the test process may open some meanwhile)
        for _ in range(50):
            t = threading.Thread(target=ping)
            t.start()
            t.join()
        assert store.open_connections <= 3
        assert _fds() - fds0 < 50  # was +2 per thread: +100
        # a live thread keeps its connection
        go, done = threading.Event(), threading.Event()

        def hold():
            store.ping()
            go.set()
            done.wait(10)
            store.ping()  # its own connection still works

        t = threading.Thread(target=hold)
        t.start()
        go.wait(10)
        for _ in range(5):
            th = threading.Thread(target=ping)
            th.start()
            th.join()
        done.set()
        t.join()
    finally:
        store.close()
    assert store.open_connections == 0


def test_in_memory_store_keeps_its_one_connection(tmp_path):
    store = open_store("sqlite:///:memory:", KEY)
    try:
        store.put_template("alice", b"x", "m")
        t = threading.Thread(target=store.ping)
        t.start()
        t.join()
        store.ping()
        assert store.get_template("alice").blob == b"x"
    finally:
        store.close()
