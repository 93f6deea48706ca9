"""kill -9 during enrollment leaves the old template or the new one, never a torn one."""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from nacf_core.store import open_store

WORKER = Path(__file__).with_name("_store_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _store_worker import blob_for  # noqa: E402


def _start(url: str, key: bytes) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(WORKER), "crash", url, base64.b64encode(key).decode(), "victim"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def test_kill_9_during_enrollment_never_tears(store_url, key):
    rng = random.Random(1234)
    last_version = 0
    for round_ in range(4):
        proc = _start(store_url, key)
        try:
            # wait until the writer is in its loop, then kill it at a random moment
            first = proc.stdout.readline()
            assert first.strip(), f"worker did not start: {proc.stderr.read()}"
            time.sleep(rng.uniform(0.0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        s = open_store(store_url, key=key)  # reopen (SQLite recovers its WAL)
        try:
            t = s.get_template("victim")  # decrypts: authenticated, so not torn
            assert t.blob == blob_for(t.version), f"round {round_}: torn template"
            assert t.meta == {"v": t.version}
            assert s.get_user("victim").template_version == t.version
            assert t.version > last_version  # progress was kept, nothing rolled back
            last_version = t.version
        finally:
            s.close()
