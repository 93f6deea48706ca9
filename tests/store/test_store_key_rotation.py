"""Key rotation on a live store: bounded by nothing but its own work, and no row left
under the old key by a writer that still holds it."""

from __future__ import annotations

import os
import time

import pytest

from nacf_core.store import open_store
from nacf_core.store.crypto import Cipher


def test_rotate_key_is_not_cut_by_the_query_timeout(pg_url, key, monkeypatch):
    """Re-encrypting every row of a real store takes longer than one call's query timeout
    (default 30 s: minutes for a few thousand users with their PAD histories): the
    watchdog cut the rotation's connection, so a large PostgreSQL store could never be
    rotated with the default settings."""
    url, _ = pg_url
    s = open_store(url + "&query_timeout=0.3", key=key)
    try:
        for i in range(4):
            s.put_template(f"u{i}", f"t{i}".encode(), "m")
        real = Cipher.encrypt

        def slow(self, plaintext, aad):  # a big store, in miniature
            time.sleep(0.15)
            return real(self, plaintext, aad)

        monkeypatch.setattr(Cipher, "encrypt", slow)
        new = os.urandom(32)
        assert s.rotate_key(new).rows == 4
        monkeypatch.undo()
        assert s.key_id == Cipher(new).key_id
        assert s.get_template("u3").blob == b"t3"
    finally:
        s.close()
    with open_store(url, key=new) as s2:
        assert [t.blob for t in s2.iter_templates()] == [b"t0", b"t1", b"t2", b"t3"]


def _key_ids(store) -> set[str]:
    return {r[0] for r in store._run(lambda tx: tx.query(
        "SELECT key_id FROM templates UNION ALL SELECT key_id FROM devices "
        "UNION ALL SELECT key_id FROM pad_fingerprints"))}


def test_a_replica_still_holding_the_old_key_writes_nothing_after_a_rotation(store_url, key):
    """A replica (or `nacf serve` process) not yet restarted after `nacf store rotate-key`
    went on encrypting under the old key: its enrollments, device secrets and PAD
    fingerprints were stored under a key the store no longer has, unreadable once every
    process runs the new key, and no rotation could re-encrypt them (the old key no
    longer opens the store). Such a write is refused now, and nothing is written."""
    from nacf_core.errors import FailedPrecondition, NotFound

    a = open_store(store_url, key=key)
    b = open_store(store_url, key=key)  # another replica
    try:
        a.put_template("alice", b"ta", "m")
        a.register_device("alice", "hs-1", "secret-secret-secret")
        new = os.urandom(32)
        a.rotate_key(new)
        calls = {
            "enroll a new user": lambda: b.put_template("bob", b"tb", "m"),
            "update a template": lambda: b.put_template("alice", b"ta-2", "m"),
            "enroll with PAD": lambda: b.put_template("carol", b"tc", "m",
                                                      enroll_fingerprints=[b"fp"]),
            "register a device": lambda: b.register_device("alice", "hs-2",
                                                           "another-secret-123"),
            "rotate a device secret": lambda: b.register_device("alice", "hs-1",
                                                                "new-secret-secret"),
            "add fingerprints": lambda: b.add_fingerprints("alice", [b"fp"], "probe"),
            "finish with a probe": lambda: b.finish_authentication(
                "alice", False, score=0.1, reason="no_match", peer="p", duration_s=0.1,
                method="Authenticate", max_failures=5, lock_seconds=60.0,
                probe_fingerprint=b"fp"),
        }
        for what, call in calls.items():
            with pytest.raises(FailedPrecondition, match="rotated"):
                call()
            assert _key_ids(a) == {Cipher(new).key_id}, what
        for uid in ("bob", "carol"):
            with pytest.raises(NotFound):
                a.get_user(uid)
        assert a.get_template("alice").blob == b"ta"
        assert a.get_device("hs-1").secret == "secret-secret-secret"
        assert a.get_fingerprints("alice") == []
        assert a.get_lockout("alice").failures == 0
        assert a.recent_attempts("alice") == []
        # what needs no key still works on the stale replica
        assert b.finish_authentication(
            "alice", False, score=0.1, reason="no_match", peer="p", duration_s=0.1,
            method="Authenticate", max_failures=5, lock_seconds=60.0).failures == 1
    finally:
        a.close()
        b.close()
    with open_store(store_url, key=new) as s:
        assert s.get_template("alice").blob == b"ta"


def test_writes_racing_a_rotation_in_the_same_process_end_under_the_new_key(store_url, key,
                                                                          monkeypatch):
    """PAD fingerprints were encrypted before their transaction began: one queued behind
    a rotation of the same store object was written under the old key after the rotation
    committed, unreadable after a restart with the new key (the user's every
    authentication with PAD then failed)."""
    import threading

    from nacf_core.store import _sql

    s = open_store(store_url, key=key)
    try:
        s.put_template("alice", b"ta", "m")
        s.add_fingerprints("alice", [b"fp-0"], "probe")
        new = os.urandom(32)
        new_id = Cipher(new).key_id
        rotating, go = threading.Event(), threading.Event()
        real = Cipher.encrypt

        def encrypt(self, plaintext, aad):
            if self.key_id == new_id and aad == Cipher.aad("keycheck"):
                rotating.set()  # every row read and re-encrypted: hold the transaction
                assert go.wait(10)
            return real(self, plaintext, aad)

        monkeypatch.setattr(_sql.Cipher, "encrypt", encrypt)
        done = []
        t = threading.Thread(target=lambda: done.append(s.rotate_key(new).rows))
        t.start()
        assert rotating.wait(10)
        writers = [threading.Thread(target=s.add_fingerprints, args=("alice", [b"fp-1"])),
                   threading.Thread(target=lambda: s.finish_authentication(
                       "alice", False, score=0.1, reason="no_match", peer="p",
                       duration_s=0.1, method="Authenticate", max_failures=5,
                       lock_seconds=60.0, probe_fingerprint=b"fp-2"))]
        for w in writers:
            w.start()
        time.sleep(0.5)  # both encrypted and waiting for the rotation's locks
        go.set()
        t.join(10)
        for w in writers:
            w.join(10)
        assert done == [2]
        monkeypatch.undo()
        assert _key_ids(s) == {new_id}
    finally:
        s.close()
    with open_store(store_url, key=new) as s2:
        assert sorted(fp for _, fp in s2.get_fingerprints("alice")) == [
            b"fp-0", b"fp-1", b"fp-2"]


def _lose_commit_answers(store, monkeypatch, *, applied: bool) -> list[bool]:
    """The store's next write transaction fails as a COMMIT whose answer was lost does
    (``OutcomeUnknown``: a connection cut then, on PostgreSQL), after it was applied, or
    (``applied`` False) with the transaction rolled back. test_store_pg_outage.py loses a
    real one."""
    from contextlib import contextmanager

    from nacf_core.errors import OutcomeUnknown

    orig = store._transaction
    lost: list[bool] = []

    @contextmanager
    def transaction(write):
        with orig(write) as tx:
            yield tx
            if write and not lost and not applied:
                lost.append(True)
                raise OutcomeUnknown("the connection was lost while committing")
        if write and not lost:
            lost.append(True)
            raise OutcomeUnknown("the connection was lost while committing")

    monkeypatch.setattr(store, "_transaction", transaction)
    return lost


def test_a_rotation_whose_commit_answer_was_lost_leaves_the_process_on_the_stores_key(
        store_url, key, monkeypatch):
    """A key rotation whose COMMIT was applied but whose answer was lost failed, and the
    process went back to the old key: the store was under the new one, so every later
    write of that process (enrollments, device secrets, PAD fingerprints) failed
    FAILED_PRECONDITION "the store's template key was rotated" until a restart, and
    `nacf store rotate-key` said it failed when it had rotated. The process now reads the
    store's key id after such a failure: the rotation it applied is reported done, one
    it did not apply fails as before, and either way the process is on the store's key."""
    from nacf_core.errors import OutcomeUnknown

    s = open_store(store_url, key=key)
    try:
        s.put_template("alice", b"ta", "m")
        s.register_device("alice", "hs-1", "secret-secret-secret")
        new = os.urandom(32)
        lost = _lose_commit_answers(s, monkeypatch, applied=True)
        r = s.rotate_key(new)
        assert lost == [True]
        assert (r.rows, r.complete) == (2, True)
        monkeypatch.undo()
        assert s.key_id == Cipher(new).key_id
        s.put_template("bob", b"tb", "m")  # FAILED_PRECONDITION before
        s.add_fingerprints("alice", [b"fp"], "probe")
        assert _key_ids(s) == {Cipher(new).key_id}

        # not applied: the store and the process stay under the key they had
        newer = os.urandom(32)
        lost = _lose_commit_answers(s, monkeypatch, applied=False)
        with pytest.raises(OutcomeUnknown):
            s.rotate_key(newer)
        assert lost == [True]
        monkeypatch.undo()
        assert s.key_id == Cipher(new).key_id
        s.put_template("carol", b"tc", "m")
        assert _key_ids(s) == {Cipher(new).key_id}
    finally:
        s.close()
    with open_store(store_url, key=new) as s2:
        assert [t.blob for t in s2.iter_templates()] == [b"ta", b"tb", b"tc"]
        assert s2.get_fingerprints("alice") == [("probe", b"fp")]


def test_a_process_whose_rotation_outcome_it_could_not_read_follows_the_store(
        store_url, key, monkeypatch):
    """The rotation's answer lost and the store unreachable for the read that would tell
    the outcome: the process keeps both keys, and its next write runs under whichever of
    them the store is under (not FAILED_PRECONDITION for a key it has)."""
    from nacf_core.errors import OutcomeUnknown, Unavailable

    s = open_store(store_url, key=key)
    try:
        s.put_template("alice", b"ta", "m")
        new = os.urandom(32)
        _lose_commit_answers(s, monkeypatch, applied=True)
        real_run = s._run
        calls = []

        def run(fn, **k):
            calls.append(fn)
            if len(calls) > 1:  # the read after the failure: the store does not answer
                raise Unavailable("the store is unreachable")
            return real_run(fn, **k)

        monkeypatch.setattr(s, "_run", run)
        with pytest.raises(OutcomeUnknown):
            s.rotate_key(new)
        monkeypatch.undo()
        s.put_template("bob", b"tb", "m")
        s.register_device("bob", "hs-2", "secret-secret-secret")
        assert s.key_id == Cipher(new).key_id
        assert _key_ids(s) == {Cipher(new).key_id}
    finally:
        s.close()
    with open_store(store_url, key=new) as s2:
        assert s2.get_template("bob").blob == b"tb"
