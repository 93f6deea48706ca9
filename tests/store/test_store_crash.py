"""kill -9 during enrollment leaves the old template or the new one, never a torn one.

With PostgreSQL a client killed right after sending COMMIT still has that COMMIT carried
out by its server process, which may happen *after* the client is dead. The checks below
therefore first wait until the killed worker's server processes have ended (each worker
tags its connections with an ``application_name``); reading earlier could see the
template before and the user row after that late commit, in two statements.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from nacf_core.store import open_store

WORKER = Path(__file__).with_name("_store_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _store_worker import blob_for  # noqa: E402


def _tagged(url: str) -> tuple[str, str]:
    """``url`` with a fresh ``application_name`` for PostgreSQL (unchanged for SQLite)."""
    if not url.startswith("postgresql:"):
        return url, ""
    tag = f"nacf-crash-{uuid.uuid4().hex[:12]}"
    return f"{url}{'&' if '?' in url else '?'}application_name={tag}", tag


def _wait_backends_gone(url: str, tag: str, timeout_s: float = 20.0) -> None:
    """Wait until no PostgreSQL server process serves a connection tagged ``tag``."""
    if not tag:
        return
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(urlsplit(url)._replace(query="").geturl(), autocommit=True) as conn:
        while True:
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                             (tag,)).fetchone()[0]
            if n == 0:
                return
            assert time.monotonic() < deadline, \
                f"{n} server process(es) of the killed worker still alive after {timeout_s} s"
            time.sleep(0.02)


def _start(url: str, mode: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(WORKER), mode, url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def test_kill_9_during_enrollment_never_tears(store_url, key):
    rng = random.Random(1234)
    last_version = 0
    for round_ in range(4):
        url, tag = _tagged(store_url)
        proc = _start(url, "crash", base64.b64encode(key).decode(), "victim")
        try:
            # wait until the writer is in its loop, then kill it at a random moment
            first = proc.stdout.readline()
            assert first.strip(), f"worker did not start: {proc.stderr.read()}"
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            # every version the worker printed had committed before it was killed
            printed = [int(x) for x in (first + proc.stdout.read()).split()]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        _wait_backends_gone(store_url, tag)
        s = open_store(store_url, key=key)  # reopen (SQLite recovers its WAL)
        try:
            t = s.get_template("victim")  # decrypts: authenticated, so not torn
            assert t.blob == blob_for(t.version), f"round {round_}: torn template"
            assert t.meta == {"v": t.version}
            assert s.get_user("victim").template_version == t.version
            # nothing committed was lost (synchronous=NORMAL survives a process crash),
            # and at most the write in flight was applied on top
            assert printed[-1] <= t.version <= printed[-1] + 1, (printed[-3:], t.version)
            assert t.version > last_version
            last_version = t.version
        finally:
            s.close()


def test_kill_9_during_key_rotation_leaves_one_key(store_url, key):
    """Rotation is one transaction: killed at any moment, every row is under one key."""
    import os as _os

    from nacf_core.errors import FailedPrecondition
    from nacf_core.store.crypto import Cipher

    other = _os.urandom(32)
    with open_store(store_url, key=key) as s:
        for i in range(20):
            s.put_template(f"u{i}", blob_for(i), "m")
            s.register_device(f"u{i}", f"hs{i}", f"secret-{i:04d}-0123456789")
    rng = random.Random(99)
    for _ in range(3):
        url, tag = _tagged(store_url)
        proc = _start(url, "rotate", base64.b64encode(key).decode(),
                      base64.b64encode(other).decode())
        try:
            assert proc.stdout.readline().strip(), proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _wait_backends_gone(store_url, tag)
        try:
            s = open_store(store_url, key=key)
        except FailedPrecondition:
            s = open_store(store_url, key=other)
        try:
            ids = s._run(lambda tx: tx.query(
                "SELECT key_id FROM templates UNION SELECT key_id FROM devices"))
            assert ids == [(s.key_id,)]
            assert s.key_id in (Cipher(key).key_id, Cipher(other).key_id)
            for i in range(20):
                assert s.get_template(f"u{i}").blob == blob_for(i)
                assert s.get_device(f"hs{i}").secret == f"secret-{i:04d}-0123456789"
        finally:
            s.close()
        # the next worker rotates from whichever key is current
        if s.key_id == Cipher(other).key_id:
            key, other = other, key
