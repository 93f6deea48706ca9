"""``get_auth_state`` and ``finish_authentication`` (one read and one write per
authentication) on both backends, against the single-purpose methods they replace."""

from __future__ import annotations

import threading

import pytest

from nacf_core.errors import FailedPrecondition, InvalidArgument, NotFound
from nacf_core.store import AuthState, open_store
from nacf_core.store.base import Store

T0 = 1_800_000_000.0


def test_get_auth_state_reads_template_lockout_device_and_history(store):
    with pytest.raises(NotFound, match="nobody"):
        store.get_auth_state("nobody")
    store.put_template("alice", b"tpl-1", "m1", {"k": 1})
    st = store.get_auth_state("alice")
    assert isinstance(st, AuthState)
    assert st.template == store.get_template("alice")
    assert (st.lockout.failures, st.lockout.locked_until) == (0, None)
    assert st.device is None and st.fingerprints is None
    store.register_device("alice", "hs-1", "secret-0123456789abcdef")
    store.add_fingerprints("alice", [b"e1", b"e2"], "enroll")
    store.add_fingerprints("alice", [b"p1"], "probe")
    store.register_failure("alice", 2, 60, now=T0)
    store.register_failure("alice", 2, 60, now=T0)
    st = store.get_auth_state("alice", device_id="hs-1", fingerprints=True)
    assert st.device == store.get_device("hs-1") and st.device.secret.startswith("secret-")
    assert st.fingerprints == store.get_fingerprints("alice")
    assert st.lockout == store.get_lockout("alice") and st.lockout.is_locked(T0 + 1)
    # an unknown device is None, not an error (the caller answers UNAUTHENTICATED)
    assert store.get_auth_state("alice", device_id="hs-x").device is None
    with pytest.raises(InvalidArgument):
        store.get_auth_state("")


def test_finish_authentication_accept_and_reject(store):
    store.put_template("alice", b"tpl", "m1")
    store.register_device("alice", "hs-1", "secret-0123456789abcdef")
    store.add_fingerprints("alice", [b"enr"], "enroll")
    # two rejects count failures and lock at the second
    out = store.finish_authentication("alice", False, score=0.1, reason="score_below_threshold",
                                      peer="p", duration_s=0.01, method="Authenticate",
                                      max_failures=2, lock_seconds=30, now=T0)
    assert out.session is None and (out.failures, out.locked_until) == (1, None)
    out = store.finish_authentication("alice", False, score=None, reason="poor_quality",
                                      peer="p", duration_s=0.01, method="Authenticate",
                                      max_failures=2, lock_seconds=30, now=T0 + 1)
    assert (out.failures, out.locked_until) == (2, T0 + 31)
    # an accept while locked (the caller checked the lock before it was set): no session,
    # nothing reset, no fingerprint, audited as refused
    out = store.finish_authentication("alice", True, score=0.9, reason="accepted",
                                      peer="ipv4:1.2.3.4", duration_s=0.02,
                                      method="AuthenticateStream", session_ttl_s=60,
                                      device_id="hs-1", probe_fingerprint=b"probe-0",
                                      now=T0 + 2)
    assert out.locked and out.session is None and out.locked_until == T0 + 31
    assert store.get_lockout("alice").failures == 2
    assert store.count_active_sessions(now=T0 + 2) == 0
    # an accept once the lock is over: failures reset, a session, a probe fingerprint,
    # an audit row
    out = store.finish_authentication("alice", True, score=0.9, reason="accepted",
                                      peer="ipv4:1.2.3.4", duration_s=0.02,
                                      method="Authenticate", session_ttl_s=60,
                                      device_id="hs-1", probe_fingerprint=b"probe-1",
                                      now=T0 + 32)
    s = out.session
    assert not out.locked and s is not None and s.token and s.device_id == "hs-1"
    assert store.get_session(s.token).is_active(T0 + 33)
    assert store.get_session(s.token).expires_at == T0 + 92
    assert store.get_lockout("alice").failures == 0
    assert store.get_fingerprints("alice") == [("enroll", b"enr"), ("probe", b"probe-1")]
    rows = store.recent_attempts("alice", 10)
    assert [(r.success, r.reason) for r in rows] == [
        (True, "accepted"), (False, "locked"), (False, "poor_quality"),
        (False, "score_below_threshold")]
    assert rows[0].score == pytest.approx(0.9) and rows[0].peer == "ipv4:1.2.3.4"
    assert rows[2].score is None
    # the probe history stays bounded
    store.pad_history = 3
    for i in range(5):
        store.finish_authentication("alice", True, score=0.9, reason="accepted", peer="",
                                    duration_s=0.0, method="Authenticate", session_ttl_s=60,
                                    probe_fingerprint=f"pr-{i}".encode(), now=T0 + 40 + i)
    assert [f for k, f in store.get_fingerprints("alice") if k == "probe"] == [
        b"pr-2", b"pr-3", b"pr-4"]


def test_finish_authentication_is_all_or_nothing(store):
    # unknown user on accept: NotFound, and nothing written (no audit row, no fingerprint)
    with pytest.raises(NotFound):
        store.finish_authentication("ghost", True, score=0.9, reason="accepted", peer="",
                                    duration_s=0.0, method="Authenticate", session_ttl_s=60,
                                    probe_fingerprint=b"x", now=T0)
    assert store.recent_attempts("ghost", 10) == []
    assert store.get_fingerprints("ghost") == []
    with pytest.raises(ValueError, match="session_ttl_s"):
        store.finish_authentication("ghost", True, score=0.9, reason="accepted", peer="",
                                    duration_s=0.0, method="Authenticate", session_ttl_s=0)


def test_reject_of_a_user_deleted_meanwhile_leaves_no_lockout(store):
    """An attempt read the user, then a DeleteUser landed before the attempt's writes: a
    reject counted a failure for a user that no longer existed (a lockouts row for no
    user, seen after a soak test), which the user enrolled again under that id
    inherited, locked out before any attempt of theirs. Like an accept, it gets
    NotFound and writes nothing."""
    store.put_template("frank", b"tpl", "m1")
    store.delete_user("frank")  # after the attempt's read, before its write
    with pytest.raises(NotFound):
        store.finish_authentication("frank", False, score=0.1,
                                    reason="score_below_threshold", peer="",
                                    duration_s=0.0, method="Authenticate", max_failures=1,
                                    lock_seconds=600, now=T0)
    store.put_template("frank", b"tpl-2", "m1")  # a new account under the same id
    assert store.get_lockout("frank") == type(store.get_lockout("frank"))(0, None)
    assert store.locked_user_ids(now=T0 + 1) == set()
    assert store.recent_attempts("frank", 10) == []


def test_default_implementation_matches(store_url, key, tmp_path):
    """The base-class default (composed of the single-purpose methods) gives the same
    answers as the one-transaction override."""
    s = open_store(store_url, key=key)
    try:
        s.put_template("bob", b"tpl", "m1")
        s.register_device("bob", "hs-b", "secret-bbbbbbbbbbbbbbbb")
        a = s.get_auth_state("bob", device_id="hs-b", fingerprints=True)
        b = Store.get_auth_state(s, "bob", device_id="hs-b", fingerprints=True)
        assert a == b
        out = Store.finish_authentication(s, "bob", True, score=0.8, reason="accepted",
                                          peer="", duration_s=0.0, method="Authenticate",
                                          session_ttl_s=60, probe_fingerprint=b"fp", now=T0)
        assert out.session is not None and s.get_session(out.session.token).user_id == "bob"
        assert s.get_fingerprints("bob") == [("probe", b"fp")]
    finally:
        s.close()


def test_concurrent_rejects_add_up_to_one_lockout(store):
    store.put_template("carol", b"tpl", "m1")
    errors = []

    def worker():
        try:
            for _ in range(5):
                store.finish_authentication("carol", False, score=0.1, reason="x", peer="",
                                            duration_s=0.0, method="Authenticate",
                                            max_failures=20, lock_seconds=60, now=T0)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    lock = store.get_lockout("carol")
    assert lock.failures == 20 and lock.locked_until == T0 + 60
    assert len(store.recent_attempts("carol", 100)) == 20


def test_fingerprint_plaintext_cache_is_exact_and_bounded(store):
    """Decrypted fingerprints are reused only for the very same authenticated input."""
    store.put_template("dave", b"tpl", "m1")
    store.put_template("erin", b"tpl", "m1")
    store.add_fingerprints("dave", [b"d-enr"], "enroll")
    assert store.get_fingerprints("dave") == [("enroll", b"d-enr")]
    assert store.get_fingerprints("dave") == [("enroll", b"d-enr")]  # from the cache
    # the same ciphertext moved to another user's row still fails authentication
    if store.backend == "sqlite":
        with store._transaction(True) as tx:
            row = tx.one("SELECT key_id, ciphertext FROM pad_fingerprints WHERE user_id = ?",
                         ("dave",))
            tx.execute("INSERT INTO pad_fingerprints (user_id, kind, created_at, key_id, "
                       "ciphertext) VALUES (?, 'enroll', 0, ?, ?)", ("erin", row[0], row[1]))
        from nacf_core.errors import FailedPrecondition

        with pytest.raises(FailedPrecondition):
            store.get_fingerprints("erin")
        # the cached row itself (same id) moved to another user: decrypted afresh, fails
        with store._transaction(True) as tx:
            tx.execute("DELETE FROM pad_fingerprints WHERE user_id = 'erin'")
            tx.execute("UPDATE pad_fingerprints SET user_id = 'erin' WHERE user_id = 'dave'")
        with pytest.raises(FailedPrecondition):
            store.get_fingerprints("erin")
        with store._transaction(True) as tx:
            tx.execute("UPDATE pad_fingerprints SET user_id = 'dave' WHERE user_id = 'erin'")
        assert store.get_fingerprints("dave") == [("enroll", b"d-enr")]
    store.fingerprint_cache_bytes = 5000
    store.add_fingerprints("dave", [bytes([i]) * 900 for i in range(10)], "probe")
    got = store.get_fingerprints("dave")
    assert [f for _, f in got][1:] == [bytes([i]) * 900 for i in range(10)]
    assert store._fp_size <= 5000


def test_fingerprints_read_from_the_cache_survive_a_concurrent_eviction(store):
    """What the read took from the plaintext cache is kept with the read: another
    thread evicting those entries before they are used changes nothing."""
    store.put_template("fred", b"tpl", "m1")
    store.add_fingerprints("fred", [b"f-enr"], "enroll")
    store.add_fingerprints("fred", [b"f-p1", b"f-p2"], "probe")
    want = [("enroll", b"f-enr"), ("probe", b"f-p1"), ("probe", b"f-p2")]
    assert store.get_fingerprints("fred") == want  # now cached
    got = store._run(lambda tx: store._tx_get_fingerprints(tx, "fred"), write=False)
    with store._fp_lock:  # what a burst of other users' reads would do
        store._fp_plain.clear()
        store._fp_size = 0
    assert store._dec_fingerprints("fred", got) == want
    assert store.get_fingerprints("fred") == want


def test_fingerprints_trimmed_between_the_two_reads_of_the_history(store, monkeypatch):
    """The history is read in two statements (the row ids, then the ciphertexts not in
    the plaintext cache). Under PostgreSQL's READ COMMITTED each statement sees what was
    committed before it ran: a concurrent accept that trimmed the oldest probe in
    between made the read fail with a KeyError (an Authenticate answered UNAVAILABLE
    with a store-error traceback, seen under a soak test)."""
    import nacf_core.store._sql as sql

    store.pad_history = 2
    store.put_template("gina", b"tpl", "m1")
    store.add_fingerprints("gina", [b"g-p1", b"g-p2"], "probe")  # not in the cache yet
    orig = sql.Tx.query
    fired = []

    def query(tx, q, params=()):
        if q.startswith("SELECT id, ciphertext FROM pad_fingerprints") and not fired:
            fired.append(1)  # another authentication commits its probe (trims g-p1)
            t = threading.Thread(target=store.add_fingerprints,
                                 args=("gina", [b"g-p3"], "probe"))
            t.start()
            t.join()
        return orig(tx, q, params)

    monkeypatch.setattr(sql.Tx, "query", query)
    st = store.get_auth_state("gina", fingerprints=True)
    assert fired
    # as of the first statement (SQLite's snapshot), or without the row trimmed since
    assert st.fingerprints in ([("probe", b"g-p1"), ("probe", b"g-p2")], [("probe", b"g-p2")])
    monkeypatch.undo()
    assert store.get_fingerprints("gina") == [("probe", b"g-p2"), ("probe", b"g-p3")]


def test_finish_authentication_refuses_a_session_on_a_template_that_changed(store):
    """The decision used one template; an update, or a delete and a new enrollment under
    the same id (version 1 again, another created_at), since then opens no session and
    writes nothing. A reject is audited but not counted: the failure streak is the
    template's in place, which the decision did not use."""
    kw = {"score": 0.9, "reason": "accepted", "peer": "p", "duration_s": 0.01,
          "method": "Authenticate", "session_ttl_s": 60.0}
    store.put_template("alice", b"tpl-1", "m1", now=T0)
    st = store.get_auth_state("alice")
    tid = (st.template.version, st.template.created_at)
    out = store.finish_authentication("alice", True, template_id=tid, **kw)
    assert out.session is not None
    store.put_template("alice", b"tpl-2", "m1", now=T0 + 5)  # an update
    n_rows = len(store.recent_attempts("alice"))
    with pytest.raises(FailedPrecondition, match="template changed"):
        store.finish_authentication("alice", True, template_id=tid, **kw)
    assert len(store.recent_attempts("alice")) == n_rows and store.count_active_sessions() == 1
    store.delete_user("alice")
    store.put_template("alice", b"tpl-3", "m1", now=T0 + 9)  # version 1 again
    assert store.get_template("alice").version == tid[0]
    with pytest.raises(FailedPrecondition, match="template changed"):
        store.finish_authentication("alice", True, template_id=tid, **kw)
    rej = {**kw, "reason": "score_below_threshold", "max_failures": 1, "lock_seconds": 60.0}
    n_rows = len(store.recent_attempts("alice"))
    out = store.finish_authentication("alice", False, template_id=tid, **rej)
    assert out.session is None and (out.failures, out.locked_until) == (0, None)
    assert store.get_lockout("alice").failures == 0
    assert len(store.recent_attempts("alice")) == n_rows + 1  # audited all the same
    st = store.get_auth_state("alice")  # judged against the template in place: counted
    out = store.finish_authentication(
        "alice", False, template_id=(st.template.version, st.template.created_at), **rej)
    assert out.session is None and out.failures == 1 and out.locked_until is not None


def test_a_reject_on_the_template_in_place_counts_after_a_clock_step_back(store):
    """Whether a reject's template is still the user's must not rest on the clock: a
    template written after the clock stepped back (created before the account, by the
    clock) is the one in place, and its rejects count towards the lockout."""
    kw = {"score": 0.1, "reason": "score_below_threshold", "peer": "p",
          "duration_s": 0.01, "method": "Authenticate", "max_failures": 2,
          "lock_seconds": 60.0}
    store.put_template("carl", b"tpl-1", "m1", now=T0 + 100)
    store.put_template("carl", b"tpl-2", "m1", now=T0)  # the clock stepped back
    st = store.get_auth_state("carl")
    tid = (st.template.version, st.template.created_at)
    assert store.finish_authentication("carl", False, template_id=tid, now=T0 + 1,
                                       **kw).failures == 1
    out = store.finish_authentication("carl", False, template_id=tid, now=T0 + 2, **kw)
    assert out.failures == 2 and out.locked_until == T0 + 2 + 60.0


def test_finish_authentication_refuses_a_session_on_a_rotated_device_secret(store):
    kw = {"score": 0.9, "reason": "accepted", "peer": "p", "duration_s": 0.01,
          "method": "Authenticate", "session_ttl_s": 60.0, "device_id": "hs-1"}
    store.put_template("alice", b"tpl-1", "m1", now=T0)
    dev = store.register_device("alice", "hs-1", "secret-0123456789", now=T0)
    key = ("hs-1", dev.created_at)
    assert store.finish_authentication("alice", True, device_key=key, **kw).session
    store.register_device("alice", "hs-1", "secret-9876543210", now=T0 + 5)  # rotated
    with pytest.raises(FailedPrecondition, match="rotated"):
        store.finish_authentication("alice", True, device_key=key, **kw)
    fresh = ("hs-1", store.get_device("hs-1").created_at)
    assert store.finish_authentication("alice", True, device_key=fresh, **kw).session
    store.put_template("bob", b"tpl-1", "m1", now=T0)
    with pytest.raises(FailedPrecondition, match="rotated"):  # another user's device
        store.finish_authentication("bob", True, device_key=fresh, **kw)


@pytest.mark.postgres
def test_get_auth_state_reads_one_snapshot_on_postgresql(pg_url, key):
    """The authentication's read takes the template, the headset and the PAD history in
    one transaction, and they must be of one moment. Under PostgreSQL's READ COMMITTED
    each statement saw the commits made before it: a DeleteUser committing between the
    template's read and the headset's gave a template with no headset (the call then
    answered a genuine proof UNAUTHENTICATED, a false attack) and no history. (SQLite's
    read transaction is one snapshot already; there the other store's delete would wait
    for it, in its WAL checkpoint, for the busy timeout.)"""
    url, _ = pg_url
    store = open_store(url, key=key)
    other = open_store(url, key=key)  # another replica's connection
    try:
        store.put_template("alice", b"tpl", "m1")
        store.register_device("alice", "hs-1", "secret-0123456789abcdef")
        store.add_fingerprints("alice", [b"e1"], "enroll")
        orig = store._tx_get_device

        def delete_in_between(tx, device_id):
            other.delete_user("alice")  # commits after the template was read
            return orig(tx, device_id)

        store._tx_get_device = delete_in_between
        st = store.get_auth_state("alice", device_id="hs-1", fingerprints=True)
        assert st.device is not None and st.device.device_id == "hs-1"
        assert [fp for _, fp in st.fingerprints] == [b"e1"]
        store._tx_get_device = orig
        with pytest.raises(NotFound):
            store.get_auth_state("alice")
    finally:
        other.close()
        store.close()


def test_finish_authentication_refuses_a_probe_fingerprint_that_is_no_bytes(store):
    """``probe_fingerprint`` went through ``bytes()``: an int was stored as that many zero
    bytes, a list of ints as its bytes, an empty one as an empty fingerprint, in the PAD
    history every later authentication of the user reads. Refused now, as
    ``add_fingerprints`` refuses them, saying what was expected; nothing written."""
    store.put_template("alice", b"x", "m")
    for bad, exc, match in ((97, TypeError, "'probe_fingerprint' must be bytes, got int"),
                            ([1, 2], TypeError, "'probe_fingerprint' must be bytes, got list"),
                            ("fp", TypeError, "'probe_fingerprint' must be bytes, got str"),
                            (b"", InvalidArgument, "'probe_fingerprint' is empty")):
        for accepted in (True, False):
            with pytest.raises(exc, match=match):
                store.finish_authentication(
                    "alice", accepted, score=0.5, reason="r", peer="p", duration_s=0.1,
                    method="Authenticate", session_ttl_s=60, max_failures=5,
                    lock_seconds=60, probe_fingerprint=bad, now=T0)
    assert store.get_fingerprints("alice") == []
    assert store.get_lockout("alice").failures == 0
    assert store.recent_attempts("alice") == [] and store.count_active_sessions(T0) == 0
    # bytes-like objects are bytes
    store.finish_authentication("alice", False, score=0.5, reason="r", peer="p",
                                duration_s=0.1, method="Authenticate", max_failures=5,
                                lock_seconds=60, probe_fingerprint=memoryview(b"fp"), now=T0)
    assert store.get_fingerprints("alice") == [("probe", b"fp")]


def test_an_audit_row_whose_score_or_duration_is_no_finite_number_is_refused(store):
    """An audit row's duration of NaN failed on SQLite as a store outage ("UNAVAILABLE
    ... failed: NOT NULL constraint failed ... is it a nacf store file?") and was stored
    on PostgreSQL; a score of NaN was stored as no score on SQLite, as NaN on PostgreSQL;
    a score that is no number was float()'s error, naming nothing. Each is refused now on
    both backends, naming the parameter; nothing written."""
    store.put_template("alice", b"x", "m")
    cases = ((dict(score=float("nan")), ValueError, "'score' must be a finite number"),
             (dict(score=float("inf")), ValueError, "'score' must be a finite number"),
             (dict(score="abc"), TypeError, "'score' must be a real number"),
             (dict(duration_s=float("nan")), ValueError, "'duration_s' must be a finite"),
             (dict(duration_s=-1.0), ValueError, "'duration_s' must be a finite number >= 0"),
             (dict(duration_s=None), TypeError, "'duration_s' must be a real number"))
    for kw, exc, match in cases:
        args = {"score": 0.5, "duration_s": 0.1, **kw}
        with pytest.raises(exc, match=match):
            store.record_attempt("alice", True, args["score"], "r", "p", args["duration_s"],
                                 "Authenticate", now=T0)
        for accepted in (True, False):
            with pytest.raises(exc, match=match):
                store.finish_authentication(
                    "alice", accepted, score=args["score"], reason="r", peer="p",
                    duration_s=args["duration_s"], method="Authenticate", session_ttl_s=60,
                    max_failures=5, lock_seconds=60, now=T0)
    assert store.recent_attempts("alice") == [] and store.get_lockout("alice").failures == 0
    store.record_attempt("alice", False, None, "no_signal", "p", 0, "Authenticate", now=T0)
    store.record_attempt("alice", False, -0.25, "no_match", "p", "0.5", "Authenticate", now=T0)
    assert [(a.score, a.duration_s) for a in store.recent_attempts("alice")] == [
        (-0.25, 0.5), (None, 0.0)]
