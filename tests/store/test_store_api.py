"""Behaviour of the store interface, identical on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import re
import time
from contextlib import contextmanager

import pytest

from nacf_core.errors import (
    AlreadyExists,
    AnotherDeviceBound,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from nacf_core.store import open_store
from nacf_core.store.base import utc_day_start

T0 = 1_790_000_000.0  # a fixed "now" (2026-09-21 UTC)


def test_migrate_is_idempotent(store, store_url, key):
    assert store.schema_version() == 9
    assert store.migrate() == []
    again = open_store(store_url, key=key)  # a second replica / restart
    try:
        assert again.migrate() == [] and again.schema_version() == 9
    finally:
        again.close()


def test_put_get_template_versions(store):
    v1 = store.put_template("alice", b"tmpl-1", "m-1", {"epochs": 5}, create_only=True, now=T0)
    assert v1 == 1
    t = store.get_template("alice")
    assert (t.user_id, t.version, t.model_version, t.blob, t.meta) == (
        "alice", 1, "m-1", b"tmpl-1", {"epochs": 5})
    with pytest.raises(AlreadyExists, match="alice"):
        store.put_template("alice", b"x", "m-1", create_only=True)
    assert store.put_template("alice", b"tmpl-2", "m-2", now=T0 + 1) == 2
    assert store.get_template("alice").blob == b"tmpl-2"
    with pytest.raises(FailedPrecondition, match="version 2, expected 1"):
        store.put_template("alice", b"tmpl-3", "m-2", expected_version=1)
    assert store.put_template("alice", b"tmpl-3", "m-2", expected_version=2) == 3
    assert store.put_template("bob", b"b", "m-2", expected_version=0) == 1
    u = store.get_user("alice")
    assert (u.template_version, u.model_version, u.status) == (3, "m-2", "active")
    assert u.created_at == T0


def test_unknown_and_bad_input(store):
    with pytest.raises(NotFound, match="carol"):
        store.get_template("carol")
    with pytest.raises(NotFound, match="carol"):
        store.get_user("carol")
    with pytest.raises(NotFound):
        store.delete_user("carol")
    with pytest.raises(NotFound):
        store.unlock_user("carol")
    with pytest.raises(InvalidArgument, match="user_id"):
        store.put_template("", b"x", "m")
    with pytest.raises(TypeError, match="blob"):
        store.put_template("u", "not bytes", "m")
    with pytest.raises(InvalidArgument, match="blob"):
        store.put_template("u", b"", "m")
    with pytest.raises(InvalidArgument, match="meta"):
        store.put_template("u", b"x", "m", {"a": object()})
    with pytest.raises(ValueError, match="page_size"):
        store.list_users(page_size=0)
    with pytest.raises(InvalidArgument, match="page_token"):
        store.list_users(page_token="%%%")
    # decodes, but to no user id the store could have issued (a NUL: a PostgreSQL
    # DataError, answered UNAVAILABLE; over-long; a control character)
    for raw in (b"\x00", b"u" * 257, b"a\nb"):
        with pytest.raises(InvalidArgument, match="page_token"):
            store.list_users(page_token=base64.urlsafe_b64encode(raw).decode())
    # nothing was written by the failed calls
    assert store.list_users().users == []


def test_ids_postgresql_cannot_hold_are_invalid_argument_on_both_backends(store):
    """A model version or user id with a NUL (which PostgreSQL text cannot hold), or not
    a str, reached the server in iter_templates, recent_attempts and record_attempt: a
    DataError or UndefinedFunction answered UNAVAILABLE ("the store failed": an outage,
    for a caller's mistake) on PostgreSQL, while SQLite answered. Refused on both now,
    naming the parameter."""
    store.put_template("alice", b"x", "m")
    for bad in ("m\x00", 5):
        with pytest.raises((InvalidArgument, TypeError), match="model_version"):
            list(store.iter_templates(bad))
    for bad in ("u\x00", 5):
        with pytest.raises((InvalidArgument, TypeError), match="user_id"):
            store.recent_attempts(bad)
        with pytest.raises(InvalidArgument, match="user_id"):
            store.record_attempt(bad, True, None, "ok", "p", 0.0, "Authenticate")
    assert [t.user_id for t in store.iter_templates("m")] == ["alice"]
    assert store.recent_attempts() == []


def test_iter_templates_filters_model_version(store):
    for i in range(7):
        store.put_template(f"u{i}", f"blob{i}".encode(), "m-a" if i % 2 else "m-b")
    all_ = list(store.iter_templates())
    assert [t.user_id for t in all_] == [f"u{i}" for i in range(7)]
    a = list(store.iter_templates("m-a"))
    assert [t.blob for t in a] == [b"blob1", b"blob3", b"blob5"]
    store.iter_page_size = 2  # several pages, including a last full one
    assert [t.user_id for t in store.iter_templates()] == [f"u{i}" for i in range(7)]
    assert [t.blob for t in store.iter_templates("m-a")] == [b"blob1", b"blob3", b"blob5"]
    store.iter_page_size = 3
    assert len(list(store.iter_templates("m-b"))) == 4


def test_list_users_pagination(store):
    ids = [f"user-{i:03d}" for i in range(23)]
    for uid in reversed(ids):
        store.put_template(uid, b"x", "m")
    seen, token = [], ""
    while True:
        page = store.list_users(page_size=10, page_token=token)
        assert len(page.users) <= 10
        seen += [u.user_id for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids


def test_delete_user_returns_the_sessions_that_ended_with_it(store):
    """The sessions it ended (what the service observes in
    nacfauth_session_duration_seconds): those still active at ``now``, and one expired
    that no sweep had ended yet (at its expiry); not one ended before."""
    store.put_template("alice", b"secret-template", "m", now=T0)
    store.put_template("bob", b"other", "m", now=T0)
    a = store.create_session("alice", 900, now=T0)
    b = store.create_session("alice", 900, now=T0 + 100)
    store.end_session(store.create_session("alice", 900, now=T0).token, now=T0 + 10)
    c = store.create_session("alice", 60, now=T0)  # expired at T0 + 60, not swept
    store.create_session("bob", 900, now=T0)
    ended = store.delete_user("alice", now=T0 + 300)
    assert sorted((s.session_id, s.user_id, s.created_at, s.ended_at, s.end_reason)
                  for s in ended) == sorted(
        [(a.session_id, "alice", T0, T0 + 300, "user_deleted"),
         (b.session_id, "alice", T0 + 100, T0 + 300, "user_deleted"),
         (c.session_id, "alice", T0, T0 + 60, "expired")])
    assert store.count_active_sessions(now=T0 + 300) == 1


def test_delete_user_removes_everything(store):
    store.put_template("alice", b"secret-template", "m")
    store.put_template("bob", b"other", "m")
    store.register_device("alice", "hs-1", "s" * 32)
    tok = store.create_session("alice", 60).token
    store.add_fingerprints("alice", [b"fp"], "enroll")
    store.register_failure("alice", 5, 60)
    store.use_nonce("hs-1", "n1", 2e9, now=T0)
    store.delete_user("alice")
    with pytest.raises(NotFound):
        store.get_user("alice")
    with pytest.raises(NotFound):
        store.get_template("alice")
    with pytest.raises(NotFound):
        store.get_device("hs-1")
    with pytest.raises(NotFound):
        store.get_session(tok)
    assert store.get_fingerprints("alice") == []
    assert store.get_lockout("alice").failures == 0
    # no row of alice remains in any table (raw SQL, not through the API)
    rows = store._run(lambda tx: [
        tx.one(f"SELECT COUNT(*) FROM {t} WHERE user_id = ?", ("alice",))[0]
        for t in ("users", "templates", "devices", "sessions", "pad_fingerprints", "lockouts")])
    assert rows == [0] * 6
    assert store._run(lambda tx: tx.one("SELECT COUNT(*) FROM device_nonces"))[0] == 0
    assert store.get_template("bob").blob == b"other"


def test_devices(store):
    with pytest.raises(NotFound, match="enroll"):
        store.register_device("nobody", "hs-1", "s" * 32)
    store.put_template("alice", b"x", "m")
    store.put_template("bob", b"y", "m")
    d = store.register_device("alice", "hs-1", "secret-0123456789abcdef")
    assert "0123456789" not in repr(d)  # never printed or logged
    got = store.get_device("hs-1")
    assert (got.user_id, got.secret) == ("alice", "secret-0123456789abcdef")
    store.register_device("alice", "hs-1", "another-secret-0123456789")  # rebind: new secret
    assert store.get_device("hs-1").secret == "another-secret-0123456789"
    with pytest.raises(AlreadyExists, match="hs-1"):
        store.register_device("bob", "hs-1", "s" * 32)
    with pytest.raises(InvalidArgument, match="secret"):
        store.register_device("bob", "hs-2", "short")
    assert store.get_user("alice").n_devices == 1


def test_nonces_replay_and_expiry(store):
    assert store.use_nonce("hs", "123:abc", T0 + 120, now=T0) is True
    assert store.use_nonce("hs", "123:abc", T0 + 120, now=T0 + 5) is False  # replay
    assert store.use_nonce("other", "123:abc", T0 + 120, now=T0 + 5) is True  # per device
    # after expiry the row is purged (a proof that old is refused as stale anyway)
    assert store.use_nonce("hs", "999:x", T0 + 500, now=T0 + 200) is True
    assert store._run(lambda tx: tx.one(
        "SELECT COUNT(*) FROM device_nonces WHERE nonce = ?", ("123:abc",)))[0] == 0


class _AnswerLost(Exception):
    """Raised after a COMMIT that was applied: its answer lost on the way back."""


def test_a_nonce_whose_commit_answer_was_lost_is_not_a_replay_of_itself(store, monkeypatch):
    """A call recording a device-proof nonce whose COMMIT was applied but whose answer was
    lost (a connection cut then: ``OutcomeUnknown`` on PostgreSQL) failed, and its retry
    found the nonce used: a replay alert for a proof used once. The call's row says the
    call wrote it, so the call runs again and recognises its own nonce; another call with
    the same nonce is still a replay. (The fault is injected at commit, and the store told
    to take it for a lost answer; test_store_pg_outage.py loses a real one.)"""
    store.put_template("alice", b"t", "m", now=T0)
    orig = store._transaction
    lost: list[bool] = []

    @contextmanager
    def transaction(write):
        with orig(write) as tx:
            yield tx
        if write and not lost:  # committed: the answer is lost
            lost.append(True)
            raise _AnswerLost("the connection was lost during COMMIT")

    monkeypatch.setattr(store, "_transaction", transaction)
    monkeypatch.setattr(store, "_commit_lost", lambda exc: isinstance(exc, _AnswerLost),
                        raising=False)
    assert store.use_nonce("hs", "n-1", T0 + 120, now=T0) is True
    assert lost == [True]
    assert store.use_nonce("hs", "n-1", T0 + 120, now=T0 + 1) is False  # a replay
    assert store._run(lambda tx: tx.one(
        "SELECT COUNT(*) FROM device_nonces WHERE nonce = 'n-1'"))[0] == 1
    # a write that is not safe to run again is not: a failure counted once
    lost.clear()
    with pytest.raises(_AnswerLost):
        store.register_failure("alice", 5, 60, now=T0)
    assert store.get_lockout("alice").failures == 1



def test_session_writes_whose_commit_answer_was_lost_are_run_again(store, monkeypatch):
    """EndSession, a ContinuousAuthenticate window's renewal and a success's failure reset
    whose COMMIT was applied but whose answer was lost failed (``OutcomeUnknown``:
    UNAVAILABLE "may or may not have been saved" on PostgreSQL; a verified window ended
    its stream), though running them again changes nothing: an ended session keeps its
    first end, a renewal at the same ``now`` sets the same expiry. They run again now
    and answer as the first run would have."""
    orig = store._transaction
    lost: list[bool] = []

    @contextmanager
    def transaction(write):
        with orig(write) as tx:
            yield tx
        if write and not lost:  # committed: the answer is lost
            lost.append(True)
            raise _AnswerLost("the connection was lost during COMMIT")

    store.put_template("alice", b"x", "m")
    a = store.create_session("alice", 60, now=T0)
    b = store.create_session("alice", 60, now=T0)
    store.register_failure("alice", 5, 60, now=T0)
    monkeypatch.setattr(store, "_transaction", transaction)
    monkeypatch.setattr(store, "_commit_lost", lambda exc: isinstance(exc, _AnswerLost),
                        raising=False)
    r = store.renew_session(a.token, 100, max_age_s=1000, now=T0 + 30)
    assert lost == [True] and (r.expires_at, r.last_verified_at) == (T0 + 130, T0 + 30)
    lost.clear()
    e = store.end_session(b.token, "ended", now=T0 + 40)
    assert lost == [True] and (e.ended_at, e.end_reason) == (T0 + 40, "ended")
    lost.clear()
    store.reset_failures("alice")
    assert lost == [True]
    monkeypatch.undo()
    assert store.get_lockout("alice").failures == 0
    assert store.get_session(a.token).expires_at == T0 + 130
    assert store.get_session(b.token).ended_at == T0 + 40

def test_sessions(store):
    store.put_template("alice", b"x", "m")
    with pytest.raises(NotFound):
        store.create_session("nobody", 60)
    s = store.create_session("alice", 60, device_id="hs-1", now=T0)
    assert s.token and s.is_active(T0 + 1) and not s.is_active(T0 + 61)
    # only the hash is stored
    stored = store._run(lambda tx: tx.query("SELECT token_hash FROM sessions"))
    assert stored == [(s.session_id,)] and s.token not in s.session_id
    got = store.get_session(s.token)
    assert (got.user_id, got.device_id, got.token) == ("alice", "hs-1", None)
    s2 = store.create_session("alice", 10, now=T0)
    assert store.count_active_sessions(T0 + 1) == 2
    ended = store.end_session(s.token, "wearer_changed", now=T0 + 2)
    assert (ended.ended_at, ended.end_reason) == (T0 + 2, "wearer_changed")
    assert store.end_session(s.token, now=T0 + 9).ended_at == T0 + 2  # idempotent
    assert store.count_active_sessions(T0 + 3) == 1
    expired = store.expire_sessions(T0 + 11)
    assert [e.session_id for e in expired] == [s2.session_id]
    assert expired[0].end_reason == "expired" and expired[0].ended_at == T0 + 10
    assert store.count_active_sessions(T0 + 11) == 0
    assert store.expire_sessions(T0 + 20) == []
    with pytest.raises(NotFound):
        store.get_session("no-such-token")
    with pytest.raises(NotFound):
        store.end_session("no-such-token")


def test_lockout(store):
    store.put_template("alice", b"x", "m")
    assert store.register_failure("alice", 3, 300, now=T0) == (1, None)
    assert store.register_failure("alice", 3, 300, now=T0 + 1) == (2, None)
    store.reset_failures("alice")  # a success in between breaks the streak
    assert store.get_lockout("alice").failures == 0
    for i in range(2):
        store.register_failure("alice", 3, 300, now=T0 + 2 + i)
    assert store.register_failure("alice", 3, 300, now=T0 + 10) == (3, T0 + 310)
    st = store.get_lockout("alice")
    assert st.is_locked(T0 + 100) and not st.is_locked(T0 + 311)
    assert store.get_user("alice").locked_until == T0 + 310
    # a failure while locked counts but does not extend the lock
    assert store.register_failure("alice", 3, 300, now=T0 + 20) == (4, T0 + 310)
    # after the lock ends, a new streak starts
    assert store.register_failure("alice", 3, 300, now=T0 + 400) == (1, None)
    for i in range(2):
        store.register_failure("alice", 3, 300, now=T0 + 401 + i)
    store.unlock_user("alice")
    assert store.get_lockout("alice") == type(st)(0, None)
    with pytest.raises(ValueError, match="max_failures"):
        store.register_failure("alice", 0, 300)


def test_token_bucket(store):
    got = [store.take_token("client-a", 1.0, 3, now=T0) for _ in range(5)]
    assert got == [True, True, True, False, False]
    assert store.take_token("client-b", 1.0, 3, now=T0) is True  # per client
    assert store.take_token("client-a", 1.0, 3, now=T0 + 1.0) is True  # refilled one
    assert store.take_token("client-a", 1.0, 3, now=T0 + 1.5) is False
    assert [store.take_token("client-a", 1.0, 3, now=T0 + 100) for _ in range(4)] == [
        True, True, True, False]  # refill is capped at burst
    with pytest.raises(ValueError, match="burst"):
        store.take_token("c", 1.0, 0)


def test_token_bucket_several_at_a_time(store):
    # a lease takes what is there, up to what it wants
    assert store.take_tokens("c", 1.0, 10, 4, now=T0) == 4
    assert store.take_tokens("c", 1.0, 10, 4, now=T0) == 4
    assert store.take_tokens("c", 1.0, 10, 4, now=T0) == 2  # only 2 left
    assert store.take_tokens("c", 1.0, 10, 4, now=T0) == 0
    assert store.take_tokens("c", 1.0, 10, 4, now=T0 + 2.5) == 2  # 2.5 refilled: 2 whole
    # unused tokens come back (capped at the burst), with the same transaction's take
    assert store.take_tokens("c", 1.0, 10, 3, give_back=7, now=T0 + 2.5) == 3
    assert store.take_tokens("c", 1.0, 10, 10, now=T0 + 2.5) == 4  # 0.5 + 7 - 3 = 4.5
    assert store.take_tokens("c", 0.0, 10, 1, give_back=100, now=T0 + 3) == 1
    assert store.take_tokens("c", 0.0, 10, 100, now=T0 + 3) == 9  # burst 10 - 1
    assert store.take_token("c", 0.0, 10, now=T0 + 3) is False
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises((ValueError, TypeError), match="want"):
            store.take_tokens("c", 1.0, 10, bad)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="give_back"):
            store.take_tokens("c", 1.0, 10, 1, give_back=bad)


def test_token_bucket_rates_that_are_no_number_are_named(store):
    """A rate or a give-back that is no number was float()'s error, naming no parameter
    ("could not convert string to float: 'x'")."""
    for bad in ("x", None, [1.0]):
        with pytest.raises(TypeError, match="'rate_per_s' must be a real number"):
            store.take_tokens("c", bad, 10)
        with pytest.raises(TypeError, match="'give_back' must be a real number"):
            store.take_tokens("c", 1.0, 10, 1, give_back=bad)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="'rate_per_s' must be a finite number >= 0"):
            store.take_tokens("c", bad, 10)
    assert store.take_tokens("c", "2.5", 10, 1, give_back="0", now=T0) == 1  # as float()


def test_token_bucket_when_the_wall_clock_steps(store):
    """The wall clock stepping back (an NTP correction, a VM restored from a snapshot)
    neither grants tokens nor removes them, and the bucket refills from the new clock: it
    kept the bucket's time at the old clock's, so the client got nothing more until the
    clock caught up (an hour here). A step forward refills no more than the capacity."""
    assert store.take_tokens("c", 1.0, 10, 4, now=T0) == 4  # 6 left
    assert store.take_tokens("c", 1.0, 10, 100, now=T0 - 3600) == 6  # none granted, none lost
    assert store.take_tokens("c", 1.0, 10, 100, now=T0 - 3600) == 0
    assert store.take_tokens("c", 1.0, 10, 100, now=T0 - 3595) == 5  # 5 s on the new clock
    assert store.take_tokens("c", 1.0, 10, 100, now=T0 - 3595 + 86400) == 10  # capacity
    assert store.take_tokens("c", 1.0, 10, 100, now=T0 - 3595 + 86400) == 0
    # a call whose `now` was read before another's commit (a wait for the row lock, a
    # replica's clock a little behind) is no step: the time between is not refilled twice
    assert store.take_tokens("d", 10.0, 10, 10, now=T0) == 10
    assert store.take_tokens("d", 10.0, 10, 10, now=T0 + 0.5) == 5
    assert store.take_tokens("d", 10.0, 10, 10, now=T0 + 0.25) == 0
    assert store.take_tokens("d", 10.0, 10, 10, now=T0 + 0.75) == 2  # not 5 (from T0 + 0.2)


def test_attempts_stats_and_purge(store):
    day = utc_day_start(T0)
    store.put_template("alice", b"x", "m")
    store.put_template("bob", b"x", "m")
    store.put_template("carol", b"x", "m")
    assert store.stats(now=T0) == type(store.stats(now=T0))(3, 0, 0, None)
    store.record_attempt("alice", False, 0.1, "no_match", "ipv4:1.2.3.4:5", 0.01,
                         "Authenticate", now=day - 10)  # yesterday
    store.record_attempt("alice", True, 0.9, "ok", "p", 0.02, "Authenticate", now=day + 1)
    store.record_attempt("alice", False, 0.2, "no_match", "p", 0.02, "Authenticate",
                         now=day + 2)
    store.record_attempt("bob", True, 0.8, "ok", "p", 0.02, "AuthenticateStream", now=day + 3)
    store.record_attempt("mallory", False, None, "unknown_user", "p", 0.001, "Authenticate",
                         now=day + 4)
    # the audit rows of account changes are no authentication attempts
    store.record_attempt("carol", True, None, "enrolled", "p", 0.0, "Enroll", now=day + 5)
    store.record_attempt("carol", True, None, "rotated", "p", 0.0, "RegisterDevice",
                         now=day + 6)
    st = store.stats(now=T0)
    assert st.total_active_users == 3
    assert st.active_users_today == 3  # alice, bob, mallory (as the guide's query counts)
    assert st.attempts_today == 4
    assert st.success_rate_today == 50.0
    recent = store.recent_attempts("alice")
    assert [a.success for a in recent] == [False, True, False]
    assert recent[0].method == "Authenticate" and recent[2].peer == "ipv4:1.2.3.4:5"
    assert store.purge_attempts(day) == 1
    assert len(store.recent_attempts()) == 6


def test_success_rate_rounding(store):
    for ok in (True, False, False):
        store.record_attempt("u", ok, 0.5, "x", "p", 0.0, "Authenticate", now=T0)
    assert store.stats(now=T0).success_rate_today == 33.33


@pytest.mark.parametrize("ok, n, rate", [(1, 32, 3.13), (1, 160, 0.63), (3, 32, 9.38),
                                         (31, 32, 96.88)])
def test_success_rate_rounds_half_away_from_zero_as_the_guide(store, ok, n, rate):
    """The guide's query rounds the exact percentage with ROUND(numeric, 2): a half goes
    up (1 of 32 attempts, 3.125 %, is 3.13). Python's round() of the float rounded it to
    even (3.12): GetStats said 0.01 less than the guide's query on the same rows."""
    for i in range(n):
        store.record_attempt("u", i < ok, 0.5, "x", "p", 0.0, "Authenticate", now=T0)
    assert store.stats(now=T0).success_rate_today == rate


def test_fingerprints_bounded_history(store):
    store.put_template("alice", b"x", "m")
    store.pad_history = 4
    store.add_fingerprints("alice", [b"e1", b"e2"], "enroll")
    for i in range(7):
        store.add_fingerprints("alice", [f"p{i}".encode()])
    got = store.get_fingerprints("alice")
    assert got == [("enroll", b"e1"), ("enroll", b"e2")] + [
        ("probe", f"p{i}".encode()) for i in range(3, 7)]
    store.add_fingerprints("alice", [b"e3"], "enroll", replace=True)
    assert [f for k, f in store.get_fingerprints("alice") if k == "enroll"] == [b"e3"]
    with pytest.raises(InvalidArgument, match="kind"):
        store.add_fingerprints("alice", [b"x"], "other")


def test_fingerprints_are_a_list_of_bytes(store):
    """PAD fingerprints given as one bytes object instead of a list were stored one per
    byte, each that many zero bytes (``bytes(97)``), and an int as that many zero bytes:
    no fingerprints, in the history every authentication of the user reads. A str was a
    TypeError naming no parameter. Refused now, saying what was expected; nothing
    written."""
    store.put_template("alice", b"x", "m")
    for bad, exc, match in ((b"abc", TypeError, "'fingerprints' must be a list of bytes, "
                                                 "got bytes"),
                            ("abc", TypeError, "must be a list of bytes, got str"),
                            (7, TypeError, "must be a list of bytes, got int"),
                            ([5], TypeError, r"bytes, got int at index 0"),
                            ([b"fp", "fp"], TypeError, r"bytes, got str at index 1"),
                            ([b"fp", b""], InvalidArgument, r"index 1 is empty")):
        with pytest.raises(exc, match=match):
            store.add_fingerprints("alice", bad, "enroll")
        with pytest.raises(exc, match=match.replace("'fingerprints'",
                                                    "'enroll_fingerprints'")):
            store.put_template("alice", b"y", "m", enroll_fingerprints=bad)
    assert store.get_fingerprints("alice") == []
    assert store.get_template("alice").version == 1
    store.add_fingerprints("alice", (f for f in [bytearray(b"e1"), memoryview(b"e2")]),
                           "enroll")
    assert store.get_fingerprints("alice") == [("enroll", b"e1"), ("enroll", b"e2")]


def test_ping_and_closed(store):
    store.ping()
    store.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        store.get_user("alice")


def test_open_store_urls(tmp_path, key, monkeypatch):
    with pytest.raises(InvalidArgument, match="mysql"):
        open_store("mysql://x/y", key=key)
    with pytest.raises(InvalidArgument, match="url"):
        open_store("", key=key)
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///rel.db", key=key)
    s.put_template("a", b"x", "m")
    s.close()
    assert (tmp_path / "rel.db").exists()
    s = open_store(str(tmp_path / "plain.db"), key=base64.b64encode(key).decode())
    s.close()
    m = open_store("sqlite:///:memory:", key=key)
    m.put_template("a", b"x", "m")
    assert m.get_template("a").blob == b"x"
    m.close()


def test_unreachable_stores_raise_unavailable(tmp_path, key):
    from nacf_core.errors import Unavailable

    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1/test is unreachable") as info:
        open_store("postgresql://postgres:hunter2@127.0.0.1:1/test", key=key,
                   connect_timeout_s=2)
    assert "hunter2" not in str(info.value)
    with pytest.raises(Unavailable, match="does not exist"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", key=key)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Unavailable, match="junk.db"):
        open_store(f"sqlite:///{junk}", key=key)



@pytest.mark.postgres
def test_postgres_reconnects_after_connections_are_killed(pg_url, key):
    """A PostgreSQL restart or failover breaks pooled connections: the next call retries
    on a fresh connection instead of failing."""
    import uuid

    import psycopg

    url, dsn = pg_url
    app = f"nacf-test-{uuid.uuid4().hex[:12]}"  # only this store's connections are killed
    s = open_store(f"{url}&application_name={app}", key=key)
    try:
        s.put_template("alice", b"x", "m")
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = %s", (app,)).fetchall()
        assert killed and all(r[0] for r in killed)
        assert s.get_template("alice").blob == b"x"
        assert s.put_template("alice", b"y", "m") == 2
    finally:
        s.close()


def test_sqlite_writer_blocked_past_busy_timeout_is_unavailable(tmp_path, key):
    """Another process holding the write lock longer than busy_timeout: a clear
    Unavailable after about busy_timeout, not an endless retry."""
    import sqlite3
    import time

    from nacf_core.errors import Unavailable

    path = tmp_path / "busy.db"
    s = open_store(f"sqlite:///{path}", key=key, busy_timeout_s=0.3)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match="busy.db.*locked"):
            s.put_template("alice", b"x", "m")
        assert time.monotonic() - t0 < 3.0
        assert s.list_users().users == []  # readers are not blocked (WAL)
        other.execute("ROLLBACK")
        assert s.put_template("alice", b"x", "m") == 1
    finally:
        other.close()
        s.close()


def test_register_device_without_replace_is_decided_in_the_transaction(store):
    """``replace=False`` (RegisterDevice without rotate): a device already bound to the
    same user is ALREADY_EXISTS from the store itself, so of two first registrations
    racing past the service's own check only one hands out a secret."""
    store.put_template("alice", b"x", "m")
    store.register_device("alice", "hs-1", "secret-0123456789abcdef", replace=False)
    with pytest.raises(AlreadyExists, match="rotate"):
        store.register_device("alice", "hs-1", "secret-other-0123456789", replace=False)
    assert store.get_device("hs-1").secret == "secret-0123456789abcdef"


def test_template_and_enroll_fingerprints_in_one_transaction(store):
    store.put_template("alice", b"t1", "m", enroll_fingerprints=[b"e1", b"e2"], now=T0)
    store.add_fingerprints("alice", [b"p1"])
    assert sorted(store.get_fingerprints("alice")) == [
        ("enroll", b"e1"), ("enroll", b"e2"), ("probe", b"p1")]
    # an update replaces the enrollment's fingerprints, keeps the probes
    store.put_template("alice", b"t2", "m", enroll_fingerprints=[b"e3"], now=T0 + 1)
    assert sorted(store.get_fingerprints("alice")) == [("enroll", b"e3"), ("probe", b"p1")]
    # None leaves them as they are
    store.put_template("alice", b"t3", "m", now=T0 + 2)
    assert sorted(store.get_fingerprints("alice")) == [("enroll", b"e3"), ("probe", b"p1")]
    # create_only refused: nothing of it is written
    with pytest.raises(AlreadyExists):
        store.put_template("alice", b"t4", "m", create_only=True, enroll_fingerprints=[b"x"])
    assert store.get_template("alice").blob == b"t3"
    assert sorted(store.get_fingerprints("alice")) == [("enroll", b"e3"), ("probe", b"p1")]


def test_write_for_a_deleted_user_is_not_found(store):
    """A write that breaks a foreign key lost a race with DeleteUser: NOT_FOUND saying
    so, not UNAVAILABLE ("is it a nacf store file?")."""
    with pytest.raises(NotFound, match="deleted while this call ran"):
        store.add_fingerprints("ghost", [b"fp"], "enroll")


def test_locked_user_ids(store):
    store.put_template("alice", b"x", "m")
    store.put_template("bob", b"y", "m")
    assert store.locked_user_ids(now=T0) == set()
    store.register_failure("alice", 1, 60, now=T0)
    store.register_failure("bob", 5, 60, now=T0)  # a failure, not locked
    assert store.locked_user_ids(now=T0 + 1) == {"alice"}
    assert store.locked_user_ids(now=T0 + 61) == set()  # the lock is over


@pytest.mark.parametrize("query,match", [
    ("pool_size=abc", "'pool_size' in the store URL must be an integer, got 'abc'"),
    ("pool_size=0", r"'pool_size' must be an integer in \[1, 1000\]"),
    ("pool_size=100000", r"'pool_size' must be an integer in \[1, 1000\]"),
    ("bogus=1", "store URL is not valid: invalid URI query parameter"),
])
def test_postgres_url_mistakes_are_invalid_argument(pg_available, query, match):
    """A wrong store URL is the operator's mistake (INVALID_ARGUMENT), not an outage."""
    dsn = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    sep = "&" if "?" in dsn else "?"
    with pytest.raises(InvalidArgument, match=match):
        open_store(f"{dsn}{sep}{query}", key=bytes(32))


@pytest.mark.parametrize("url,match", [
    ("postgresql://postgres@127.0.0.1:notaport/test", 'invalid integer value "notaport"'),
    ("postgresql://postgres@127.0.0.1:99999/test", 'invalid port number: "99999"'),
    ("postgresql://postgres@127.0.0.1/test?port=0", 'invalid port number: "0"'),
    ("postgresql://postgres@127.0.0.1:5432/test?sslmode=bogus", 'invalid sslmode value'),
    ("postgresql://postgres@127.0.0.1:5432/test?keepalives=x",
     'invalid integer value "x" for connection option "keepalives"'),
    ("postgresql://postgres@127.0.0.1:5432/test?schema=nacf_url_t&sslmode=bogus",
     'invalid sslmode value'),
])
def test_postgres_url_values_libpq_refuses_are_invalid_argument(url, match):
    """A port that is not a number, or out of range, or a libpq option with a value it
    does not know (sslmode=bogus) was UNAVAILABLE, 'the store is unreachable': an outage
    to wait out, where the URL itself is wrong and no retry can help."""
    with pytest.raises(InvalidArgument, match=f"store URL is not valid: .*{match}"):
        open_store(url, key=bytes(32), connect_timeout_s=2)


def test_end_user_sessions_and_first_device_only(store):
    store.put_template("alice", b"x", "m")
    store.put_template("bob", b"x", "m")
    a1 = store.create_session("alice", 60, device_id="hs-1", now=T0)
    a2 = store.create_session("alice", 60, device_id="hs-2", now=T0)
    b1 = store.create_session("bob", 60, device_id="hs-3", now=T0)
    old = store.create_session("alice", 5, device_id="hs-1", now=T0 - 100)  # expired
    ended = store.end_user_sessions("alice", "device_rotated", device_id="hs-1", now=T0 + 1)
    assert [(s.user_id, s.device_id, s.end_reason, s.ended_at) for s in ended] == [
        ("alice", "hs-1", "device_rotated", T0 + 1)]
    assert store.get_session(a1.token).end_reason == "device_rotated"
    assert store.get_session(a2.token).is_active(T0 + 2)
    assert store.get_session(old.token).ended_at is None  # expired, left as it was
    assert [s.device_id for s in store.end_user_sessions("alice", "template_replaced",
                                                         now=T0 + 2)] == ["hs-2"]
    assert store.get_session(b1.token).is_active(T0 + 3)
    assert store.end_user_sessions("alice", "x", now=T0 + 3) == []
    store.register_device("alice", "hs-1", "s" * 16, first_only=True)
    store.register_device("alice", "hs-1", "t" * 16, first_only=True)  # the same one again
    # its own class, which the service maps to PERMISSION_DENIED (not by its message)
    with pytest.raises(AnotherDeviceBound, match="already has a registered device"):
        store.register_device("alice", "hs-2", "s" * 16, first_only=True)
    store.register_device("alice", "hs-2", "s" * 16)
    assert sorted(d.device_id for d in store.list_devices("alice")) == ["hs-1", "hs-2"]


def test_a_store_migrated_by_a_newer_nacf_is_refused(store_url, key, monkeypatch, capsys):
    """An older nacf (here: one that knows only migration 1) opened a store a newer one
    had migrated (here schema 9) without a word and wrote to tables it does not know, and
    `nacf store migrate` answered schema_version 2 as if it were done: it is refused,
    naming both versions."""
    from nacf_core.cli import main
    from nacf_core.store.postgres import PostgresStore
    from nacf_core.store.sqlite import SQLiteStore

    open_store(store_url, key=key).close()  # schema 9
    cls = SQLiteStore if store_url.startswith("sqlite") else PostgresStore
    monkeypatch.setattr(cls, "MIGRATIONS", cls.MIGRATIONS[:1])
    with pytest.raises(FailedPrecondition, match=r"schema version 9, .* this nacf knows "
                                                 r"version 1 at most"):
        open_store(store_url, key=key)
    monkeypatch.setenv("NACF_TEMPLATE_KEY", base64.b64encode(key).decode())
    assert main(["store", "migrate", "--store-url", store_url]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "schema version 9" in err
    monkeypatch.undo()
    with open_store(store_url, key=key) as s:  # the nacf that migrated it still opens it
        assert s.schema_version() == 9


def test_an_older_store_is_migrated_with_its_sessions_and_renewal_records_verification(
        store_url, key, monkeypatch):
    """A store created before ``sessions.last_verified_at`` (schema 1) opens at schema
    2 with its sessions intact; ``renew_session`` (a window ContinuousAuthenticate
    verified) records when, which ValidateSession reports."""
    from nacf_core.store.postgres import PostgresStore
    from nacf_core.store.sqlite import SQLiteStore

    cls = SQLiteStore if store_url.startswith("sqlite") else PostgresStore
    monkeypatch.setattr(cls, "MIGRATIONS", cls.MIGRATIONS[:1])
    old = open_store(store_url, key=key)
    old.put_template("alice", b"x", "m")
    tok = old.create_session("alice", 60, now=T0).token
    assert old.schema_version() == 1
    old.close()
    monkeypatch.undo()
    new = open_store(store_url, key=key)
    try:
        assert new.schema_version() == 9
        s = new.get_session(tok)
        assert s.user_id == "alice" and s.last_verified_at is None
        assert new.renew_session(tok, 60, now=T0 + 30).last_verified_at == T0 + 30
        assert new.get_session(tok).last_verified_at == T0 + 30
    finally:
        new.close()


def test_nonces_recorded_before_schema_4_are_replays_after_it(store_url, key, monkeypatch):
    """A nonce recorded by a store of before ``device_nonces.claim`` (no call's mark on it)
    is a replay after the migration, as before."""
    from nacf_core.store.postgres import PostgresStore
    from nacf_core.store.sqlite import SQLiteStore

    cls = SQLiteStore if store_url.startswith("sqlite") else PostgresStore
    monkeypatch.setattr(cls, "MIGRATIONS", cls.MIGRATIONS[:3])
    with open_store(store_url, key=key) as old:  # the row as a nacf before schema 4 wrote it
        old._run(lambda tx: tx.execute("INSERT INTO device_nonces (device_id, nonce, "
                                       "expires_at) VALUES ('hs', 'n-1', ?)", (T0 + 120,)))
    monkeypatch.undo()
    with open_store(store_url, key=key) as new:
        assert new.schema_version() == 9
        assert new.use_nonce("hs", "n-1", T0 + 120, now=T0 + 1) is False
        assert new.use_nonce("hs", "n-2", T0 + 120, now=T0 + 1) is True


def test_count_users_by_model_counts_active_users_per_enrolled_model(store):
    assert store.count_users_by_model() == {}
    store.put_template("alice", b"a", "m-1")
    store.put_template("bob", b"b", "m-1")
    store.put_template("carol", b"c", "m-2")
    store.put_template("dave", b"d", "m-2")
    store.put_template("carol", b"c2", "m-1")  # re-enrolled under the new model
    store.delete_user("dave")
    assert store.count_users_by_model() == {"m-1": 3}
    store.put_template("erin", b"e", "m-0")
    assert store.count_users_by_model() == {"m-1": 3, "m-0": 1}


def test_read_gallery_returns_only_templates_written_since_their_known_stamp(store, tmp_path):
    """read_gallery lists every active user's template of one model with a stamp, and
    decrypts only those whose stamp the caller does not know: a stamp changes with an
    update, a re-enrollment after deletion (its version starts again at 1) and a key
    rotation, never otherwise."""
    from nacf_core.store.crypto import create_key_file

    store.put_template("alice", b"a1", "m-1")
    store.put_template("bob", b"b1", "m-1")
    store.put_template("carol", b"c1", "m-2")  # another model
    listing, fresh = store.read_gallery("m-1")
    assert [u for u, _ in listing] == ["alice", "bob"]
    assert {u: r.blob for u, r in fresh.items()} == {"alice": b"a1", "bob": b"b1"}
    known = dict(listing)
    assert store.read_gallery("m-1", known) == (listing, {})

    store.put_template("alice", b"a2", "m-1")  # an update
    listing2, fresh = store.read_gallery("m-1", known)
    assert list(fresh) == ["alice"] and fresh["alice"].blob == b"a2"
    assert dict(listing2)["bob"] == known["bob"] != known["alice"] != dict(listing2)["alice"]

    known = dict(listing2)
    store.delete_user("bob")
    store.put_template("bob", b"b1", "m-1")  # the same bytes again, version 1 again
    assert store.get_template("bob").version == 1
    listing3, fresh = store.read_gallery("m-1", known)
    assert list(fresh) == ["bob"] and fresh["bob"].blob == b"b1"

    store.delete_user("alice")
    assert [u for u, _ in store.read_gallery("m-1", dict(listing3))[0]] == ["bob"]

    store.rotate_key(create_key_file(tmp_path / "new.key"))
    listing4, fresh = store.read_gallery("m-1", dict(listing3))
    assert list(fresh) == ["bob"] and fresh["bob"].blob == b"b1"
    assert store.read_gallery("m-1", dict(listing4)) == (listing4, {})


def test_read_gallery_fetches_changed_templates_in_chunks(store):
    store.gallery_chunk = 3
    for i in range(8):
        store.put_template(f"u{i}", bytes([i + 1]), "m-1")
    listing, fresh = store.read_gallery("m-1", {"u0": b"stale"})
    assert len(listing) == 8 and sorted(fresh) == [f"u{i}" for i in range(8)]
    assert [fresh[f"u{i}"].blob for i in range(8)] == [bytes([i + 1]) for i in range(8)]


def test_purge_sessions_deletes_only_sessions_ended_before_the_cutoff(store):
    store.put_template("alice", b"a", "m-1", now=T0)
    old = store.create_session("alice", 60.0, now=T0)
    store.end_session(old.token, now=T0 + 10)
    expired = store.create_session("alice", 60.0, now=T0)
    assert len(store.expire_sessions(now=T0 + 100)) == 1  # ended at its expiry, T0 + 60
    recent = store.create_session("alice", 60.0, now=T0 + 200)
    store.end_session(recent.token, now=T0 + 250)
    active = store.create_session("alice", 1e6, now=T0)
    assert store.purge_sessions(T0 + 61) == 2
    for gone in (old, expired):
        with pytest.raises(NotFound):
            store.get_session(gone.token)
    assert store.get_session(recent.token).ended_at == T0 + 250
    assert store.get_session(active.token).is_active(T0 + 300)
    assert store.purge_sessions(T0 + 61) == 0


@pytest.mark.parametrize("url,expected", [
    ("sqlite:nacf.db", "sqlite:///PATH.db"), ("sqlite:/nacf.db", "sqlite:///PATH.db"),
    ("SQLite:nacf.db", "sqlite:///PATH.db"), ("postgres:nacf", "postgresql://"),
    ("postgresql:/db", "postgresql://"), ("postgresql:user@host/db", "postgresql://")])
def test_a_scheme_without_its_slashes_is_refused_not_taken_for_a_file(tmp_path, monkeypatch,
                                                                       url, expected):
    """A store URL missing its '//' (sqlite:nacf.db, postgres:nacf) was taken for a SQLite
    file path: a new, empty store in a file named 'sqlite:nacf.db' or 'postgres:nacf'
    (a replica meant for the shared PostgreSQL kept users of its own), or 'directory
    postgresql: does not exist'. It is refused now, naming the form expected."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgument, match=re.escape(expected)):
        open_store(url, key=bytes(32))
    assert list(tmp_path.iterdir()) == []
    # a file of such a name is still reachable as a path
    with open_store("./sqlite:nacf.db", key=bytes(32)) as s:
        s.put_template("a", b"t", "m")


def test_ending_a_session_that_has_expired_records_its_expiry(store):
    """end_session on a session past its expiry that no sweep had ended yet recorded it
    as ended by the call ('logout', at the call's time, later than it could be used):
    the audit said it was open until then, its duration was too long, and the retention
    purge kept it longer. It is recorded as expire_sessions and delete_user record it:
    ended at its expiry, reason 'expired'."""
    store.put_template("alice", b"x", "m")
    s = store.create_session("alice", 10, now=T0)
    ended = store.end_session(s.token, "logout", now=T0 + 100)
    assert (ended.ended_at, ended.end_reason) == (T0 + 10, "expired")
    assert store.expire_sessions(T0 + 200) == []
    assert store.purge_sessions(T0 + 50) == 1
    # at its very expiry it is expired (is_active: now < expires_at)
    s = store.create_session("alice", 10, now=T0)
    assert store.end_session(s.token, "logout", now=T0 + 10).end_reason == "expired"
    s = store.create_session("alice", 10, now=T0)
    assert store.end_session(s.token, "logout", now=T0 + 9.5).end_reason == "logout"


@pytest.mark.postgres
def test_a_postgres_schema_name_with_capitals_is_used_as_given(pg_available, key):
    """?schema=Auth_T created the schema "Auth_T" (quoted) but put search_path=Auth_T
    (unquoted, folded to auth_t, which does not exist): every open failed UNAVAILABLE,
    'no schema has been selected to create in', a store that could never start."""
    import uuid

    import psycopg

    dsn = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"Nacf_T_{uuid.uuid4().hex[:8]}"
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    try:
        with open_store(url, key=key) as s:
            s.put_template("alice", b"t", "m")
        with open_store(url, key=key, create=False) as s:
            assert s.get_template("alice").blob == b"t"
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT COUNT(*) FROM information_schema.tables WHERE "
                                "table_schema = %s AND table_name = 'templates'",
                                (schema,)).fetchone() == (1,)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("now", [float("nan"), float("inf"), float("-inf")])
def test_a_clock_that_is_no_finite_number_is_refused(store, now):
    """The store's methods take ``now``; a NaN one compares unordered, so on PostgreSQL
    (NaN above every number) use_nonce's ``DELETE ... WHERE expires_at <= NaN`` dropped
    every nonce kept against replays, and a proof used before was accepted again; on
    SQLite it failed with a message about the file. It is InvalidArgument, and nothing is
    written or dropped."""
    from nacf_core.errors import InvalidArgument

    t = time.time()
    assert store.use_nonce("hs-nan", "n1", t + 600, now=t)
    with pytest.raises(InvalidArgument, match="'now' must be finite unix seconds"):
        store.use_nonce("hs-nan", "n2", t + 600, now=now)
    assert not store.use_nonce("hs-nan", "n1", t + 600, now=t)  # still kept: a replay


def test_audit_rows_name_the_actor(store):
    """An account change's audit row names who made it (the caller's client id), not only
    its address: an operator reading the audit trail after an incident can tell which key
    deleted or unlocked a user. A row written without one (an authentication attempt)
    has none; an actor is audit text like the reason and peer."""
    store.put_template("alice", b"x", "m")
    store.record_attempt("alice", True, None, "user_deleted", "ipv4:10.0.0.9:5", 0.0,
                         "DeleteUser", actor="ops-key", now=T0 + 2)
    store.record_attempt("alice", True, 0.9, "ok", "p", 0.02, "Authenticate", now=T0 + 1)
    store.record_attempt("alice", True, None, "unlocked", "p", 0.0, "UnlockUser",
                         actor="x" * 300, now=T0 + 3)
    rows = [(a.method, a.actor) for a in store.recent_attempts("alice")]
    assert rows == [("UnlockUser", "x" * 200), ("DeleteUser", "ops-key"),
                    ("Authenticate", None)], rows
    for bad in ("ops\x00key", "ops\ud800"):
        with pytest.raises(InvalidArgument, match="'actor'"):
            store.record_attempt("alice", True, None, "unlocked", "p", 0.0, "UnlockUser",
                                 actor=bad, now=T0 + 4)
    assert len(store.recent_attempts("alice")) == 3  # nothing written by the refusals


def test_a_schema_7_store_with_audit_rows_is_migrated_to_name_actors(store_url, key,
                                                                     monkeypatch):
    """A store of schema 7 (audit rows without an actor) opens at schema 8 with its audit
    rows intact (no actor: none was recorded), and new rows name theirs."""
    from nacf_core.store.postgres import PostgresStore
    from nacf_core.store.sqlite import SQLiteStore

    cls = SQLiteStore if store_url.startswith("sqlite") else PostgresStore
    monkeypatch.setattr(cls, "MIGRATIONS", [m for m in cls.MIGRATIONS if m[0] <= 7])
    with open_store(store_url, key=key) as old:  # the rows as a nacf of schema 7 wrote them
        assert old.schema_version() == 7
        old.put_template("alice", b"x", "m")
        old._run(lambda tx: tx.execute(
            "INSERT INTO auth_attempts (user_id, ts, success, score, reason, peer, "
            "duration_s, method) VALUES ('alice', ?, ?, NULL, 'user_deleted', 'p', 0, "
            "'DeleteUser')", (T0, True)))
    monkeypatch.undo()
    with open_store(store_url, key=key) as new:
        assert new.schema_version() == 9
        new.record_attempt("alice", True, None, "unlocked", "p", 0.0, "UnlockUser",
                           actor="ops-key", now=T0 + 1)
        rows = [(a.method, a.reason, a.actor) for a in new.recent_attempts("alice")]
        assert rows == [("UnlockUser", "unlocked", "ops-key"),
                        ("DeleteUser", "user_deleted", None)], rows


@pytest.mark.postgres
def test_a_role_without_create_on_the_database_opens_the_schema_made_for_it(pg_available,
                                                                          key):
    """A least-privilege deployment: the DBA creates the schema for the application's role
    (``CREATE SCHEMA nacf AUTHORIZATION app``) and the role, not the database's owner,
    has no CREATE on the database. Every open ran ``CREATE SCHEMA IF NOT EXISTS``, which
    PostgreSQL refuses for want of that privilege even when the schema exists: the store
    never started, with INVALID_ARGUMENT 'the PostgreSQL store URL is not valid:
    permission denied for database'. It opens; and a schema that does not exist, which
    the role may not create, is FAILED_PRECONDITION naming the schema and what to do."""
    import uuid
    from urllib.parse import urlsplit

    import psycopg

    dsn = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    tag = uuid.uuid4().hex[:10]
    role, schema, missing = f"nacf_role_{tag}", f"nacf_own_{tag}", f"nacf_none_{tag}"
    parts = urlsplit(dsn)
    netloc = f"{role}:pw-{tag}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    base = parts._replace(netloc=netloc).geturl()
    url = f"{base}{'&' if '?' in base else '?'}schema="
    with psycopg.connect(dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{tag}'")
        conn.execute(f"REVOKE CREATE ON DATABASE \"{dbname}\" FROM {role}")
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    try:
        with open_store(url + schema, key=key) as s:
            assert s.schema_version() == 9
            s.put_template("alice", b"t", "m")
        with open_store(url + schema, key=key) as s:  # and again, as every restart
            assert s.get_template("alice").blob == b"t"
        with pytest.raises(FailedPrecondition, match=rf"schema '{missing}' does not "
                                                     r"exist.*CREATE SCHEMA"):
            open_store(url + missing, key=key)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {missing} CASCADE")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_rotation_ends_the_old_secrets_sessions_in_its_transaction(store):
    """register_device_ending_sessions: a write that replaced a device's secret ends the
    active sessions opened with that device, in its transaction, and returns them; a
    first registration ends nothing; a rotation rolled back (its deadline passed) ends
    nothing either."""
    store.put_template("alice", b"x", "m", now=T0)
    rec, ended = store.register_device_ending_sessions(
        "alice", "hs-1", "s" * 32, reason="device_rotated", now=T0)
    assert (rec.replaced, ended) == (False, [])
    a = store.create_session("alice", 600, device_id="hs-1", now=T0)
    b = store.create_session("alice", 600, device_id="hs-2", now=T0)
    c = store.create_session("alice", 10, device_id="hs-1", now=T0)  # expired by T0 + 20
    with pytest.raises(DeadlineExceeded):
        store.register_device_ending_sessions("alice", "hs-1", "t" * 32,
                                              reason="device_rotated", now=T0 + 20,
                                              deadline=0.0)
    assert store.get_session(a.token).ended_at is None
    assert store.get_device("hs-1").secret == "s" * 32
    rec, ended = store.register_device_ending_sessions(
        "alice", "hs-1", "u" * 32, reason="device_rotated", now=T0 + 30)
    assert rec.replaced
    assert [(s.session_id, s.ended_at, s.end_reason) for s in ended] == [
        (a.session_id, T0 + 30, "device_rotated")]
    assert store.get_session(b.token).ended_at is None
    assert store.get_session(c.token).end_reason is None  # expired, left to the sweep
