"""``list_devices`` and ``renew_session`` on both backends."""

from __future__ import annotations

import pytest

from nacf_core.errors import FailedPrecondition, NotFound

T0 = 1_800_000_000.0


def test_list_devices_without_secrets(store):
    with pytest.raises(NotFound, match="nobody"):
        store.list_devices("nobody")
    store.put_template("alice", b"x", "m")
    store.put_template("bob", b"y", "m")
    assert store.list_devices("alice") == []
    store.register_device("alice", "hs-2", "secret-0123456789abcdef")
    store.register_device("alice", "hs-1", "secret-abcdef0123456789")
    store.register_device("bob", "hs-3", "secret-bbbbbbbbbbbbbbbb")
    devs = store.list_devices("alice")
    assert [d.device_id for d in devs] == ["hs-1", "hs-2"]
    assert all(d.user_id == "alice" and d.secret is None for d in devs)
    store.delete_user("alice")
    assert [d.device_id for d in store.list_devices("bob")] == ["hs-3"]


def test_renew_session_extends_only_active_sessions(store):
    store.put_template("alice", b"x", "m")
    s = store.create_session("alice", 60, now=T0)
    r = store.renew_session(s.token, 60, now=T0 + 50)
    assert r.expires_at == T0 + 110 and r.is_active(T0 + 100)
    # never shortened
    assert store.renew_session(s.token, 1, now=T0 + 51).expires_at == T0 + 110
    assert store.get_session(s.token).expires_at == T0 + 110
    # expired: cannot be revived
    with pytest.raises(FailedPrecondition, match="no longer active"):
        store.renew_session(s.token, 60, now=T0 + 200)
    s2 = store.create_session("alice", 60, now=T0)
    store.end_session(s2.token, "ended", now=T0 + 1)
    with pytest.raises(FailedPrecondition, match="ended"):
        store.renew_session(s2.token, 60, now=T0 + 2)
    with pytest.raises(NotFound):
        store.renew_session("no-such-token", 60, now=T0)


def test_renew_session_never_past_the_sessions_maximum_age(store):
    """``max_age_s``: a renewal extends a session to ``created_at + max_age_s`` at most
    (NIST SP 800-63B rev. 3 §4.2.3: reauthenticate at least every 12 hours, whatever the
    activity), and never shortens it."""
    store.put_template("alice", b"x", "m")
    s = store.create_session("alice", 60, now=T0)
    assert store.renew_session(s.token, 60, max_age_s=100, now=T0 + 30).expires_at == T0 + 90
    assert store.renew_session(s.token, 60, max_age_s=100, now=T0 + 80).expires_at == T0 + 100
    assert store.get_session(s.token).expires_at == T0 + 100
    with pytest.raises(FailedPrecondition, match="no longer active"):
        store.renew_session(s.token, 60, max_age_s=100, now=T0 + 100)
    # a session opened for longer than the maximum age is not shortened by a renewal
    s2 = store.create_session("alice", 500, now=T0)
    assert store.renew_session(s2.token, 60, max_age_s=100, now=T0 + 50).expires_at == T0 + 500
    with pytest.raises(ValueError, match="max_age_s"):
        store.renew_session(s2.token, 60, max_age_s=-1.0, now=T0 + 50)


def test_device_ids_of_many_users_in_one_read(store):
    """ListUsers' headsets of a page: each stored user's device ids, sorted ([] for one
    without), unknown ids left out; more users than one statement's chunk."""
    store.gallery_chunk = 3
    for u in ("alice", "bob", "carol", "dave"):
        store.put_template(u, b"x", "m")
    store.register_device("alice", "hs-2", "secret-0123456789abcdef")
    store.register_device("alice", "hs-1", "secret-abcdef0123456789")
    store.register_device("dave", "hs-4", "secret-dddddddddddddddd")
    assert store.device_ids_of([]) == {}
    assert store.device_ids_of(["alice", "bob", "ghost", "dave", "carol", "alice"]) == {
        "alice": ["hs-1", "hs-2"], "bob": [], "carol": [], "dave": ["hs-4"]}
    store.delete_user("alice")
    assert store.device_ids_of(["alice", "dave"]) == {"dave": ["hs-4"]}


def test_shorten_sessions_cuts_open_sessions_at_their_maximum_age(store):
    """``shorten_sessions(ttl_s, max_age_s=)``: an open session expiring after
    ``created_at + max_age_s`` (a maximum age lowered since) expires then, even if that
    has passed (the sweep ends it at that time); one within both bounds, and an ended
    one, are left alone."""
    store.put_template("alice", b"x", "m")
    a = store.create_session("alice", 500, now=T0)           # ends T0 + 500
    b = store.create_session("alice", 50, now=T0 + 150)      # ends T0 + 200
    c = store.create_session("alice", 500, now=T0)
    store.end_session(c.token, now=T0 + 1)
    assert store.shorten_sessions(100, now=T0 + 150, max_age_s=120) == 1
    assert store.get_session(a.token).expires_at == T0 + 120
    assert store.get_session(b.token).expires_at == T0 + 200
    assert store.get_session(c.token).expires_at == T0 + 500
    [e] = store.expire_sessions(now=T0 + 150)
    assert (e.session_id, e.ended_at, e.end_reason) == (a.session_id, T0 + 120, "expired")
    with pytest.raises(ValueError, match="max_age_s"):
        store.shorten_sessions(100, now=T0, max_age_s=0)
