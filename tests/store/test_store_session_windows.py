"""ContinuousAuthenticate's replay history in the store (``session_windows``): shared by
the store objects of one database (replicas), bounded per session and per user,
encrypted, kept after its session ends (for the user's later sessions), dropped with the
user or the session's purged row."""

from __future__ import annotations

import os

import pytest

from nacf_core.errors import FailedPrecondition, InvalidArgument
from nacf_core.store import open_store

T0 = 1_790_000_000.0


def _fp(i: int) -> bytes:
    return b"FPv1" + i.to_bytes(4, "little") * 512  # 2 KB, distinct per i


def _rows(store):
    return store._run(lambda tx: tx.query(
        "SELECT session_id, user_id, ciphertext FROM session_windows ORDER BY id"),
        write=False)


def _session(store, user="u1", ttl=600.0):
    if not store._run(lambda tx: tx.query("SELECT 1 FROM users WHERE user_id = ?", (user,)),
                      write=False):
        store.put_template(user, b"t", "m", now=T0)
    return store.create_session(user, ttl, now=T0)


def test_windows_are_shared_bounded_and_encrypted(store, store_url, key):
    """Another store object on the same database (another replica) reads what this one
    wrote; only the newest ``keep`` windows of a session stay; the table holds no
    fingerprint in clear, and a row moved to another session does not decrypt."""
    s, other = _session(store), _session(store)
    ids = [store.add_session_window(s.session_id, "u1", _fp(i), keep=3, now=T0 + i)
           for i in range(5)]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
    store.add_session_window(other.session_id, "u1", _fp(99), keep=3, now=T0)
    replica = open_store(store_url, key=key)
    try:
        got = replica.get_session_windows(s.session_id, "u1")
        assert got == [(i, _fp(n)) for i, n in zip(ids[2:], (2, 3, 4))]
        # the ids the caller has are neither read nor decrypted again
        assert replica.get_session_windows(s.session_id, "u1", known=ids[2:4]) == [
            (ids[2], None), (ids[3], None), (ids[4], _fp(4))]
        assert [fp for _, fp in replica.get_session_windows(other.session_id, "u1")] == [
            _fp(99)]
    finally:
        replica.close()
    for _, _, ct in _rows(store):
        ct = bytes(ct)
        assert b"FPv1" not in ct and _fp(99)[4:68] not in ct
    # a ciphertext copied into another session's row fails, rather than being read
    store._run(lambda tx: tx.execute(
        "UPDATE session_windows SET ciphertext = (SELECT ciphertext FROM session_windows "
        "WHERE session_id = ? LIMIT 1) WHERE session_id = ?", (s.session_id,
                                                               other.session_id)))
    with pytest.raises(FailedPrecondition, match="stream window"):
        store.get_session_windows(other.session_id, "u1")


@pytest.mark.parametrize("how", ["end_session", "end_user_sessions", "expire_sessions",
                                 "expire_session", "delete_user"])
def test_a_sessions_windows_stay_when_it_ends_and_go_with_its_user(store, how):
    """An ended session's windows stay (a window of the user's later sessions is checked
    against them: a recording of its stream replayed on a new session was not a
    replay while they went with the end); they go with the user, and a window of a
    session no longer active is not written."""
    s = _session(store, ttl=60.0)
    keep = _session(store, user="u2", ttl=6000.0)
    for sess, user in ((s, "u1"), (keep, "u2")):
        assert store.add_session_window(sess.session_id, user, _fp(1), keep=64,
                                        now=T0 + 1) is not None
    if how == "end_session":
        store.end_session(s.token, "ended", now=T0 + 2)
    elif how == "end_user_sessions":
        store.end_user_sessions("u1", "ended_by_admin", now=T0 + 2)
    elif how == "expire_sessions":
        assert [x.session_id for x in store.expire_sessions(now=T0 + 61)] == [s.session_id]
    elif how == "expire_session":  # one seen expired (ValidateSession, EndSession)
        assert store.expire_session(s.token, now=T0 + 61).session_id == s.session_id
    else:
        store.delete_user("u1", now=T0 + 2)
    left = [] if how == "delete_user" else [s.session_id]
    assert [fp for _, fp in store.get_session_windows(s.session_id, "u1")] == (
        [_fp(1)] if left else [])
    assert sorted(r[0] for r in _rows(store)) == sorted(left + [keep.session_id])
    # a window arriving after the end (a stream that raced it) is not kept
    assert store.add_session_window(s.session_id, "u1", _fp(2), keep=64,
                                    now=T0 + 3) is None
    assert sorted(r[0] for r in _rows(store)) == sorted(left + [keep.session_id])


def test_windows_go_with_their_sessions_purge(store):
    """The retention purge of ended sessions takes their windows; also those of a
    session purged by a nacf of before schema 7 (its windows had gone with its end)."""
    s, old, live = _session(store, ttl=30.0), _session(store), _session(store)
    for sess in (s, old, live):
        store.add_session_window(sess.session_id, "u1", _fp(1), keep=64, now=T0 + 1)
    store.end_session(s.token, "ended", now=T0 + 2)
    store._run(lambda tx: tx.execute("DELETE FROM sessions WHERE token_hash = ?",
                                     (old.session_id,)))
    assert store.purge_sessions(T0 + 3) == 1
    assert [r[0] for r in _rows(store)] == [live.session_id]


def test_a_window_is_read_with_the_users_other_sessions_older_ones(store, store_url, key):
    """``others_before``: the session's windows and those of the user's other sessions
    (open or ended) written at or before it, not another user's; ``most`` bounds the
    user's windows across its sessions (the newest stay)."""
    a, b = _session(store), _session(store)
    c = _session(store, user="u2")
    ids = {}
    for i, (sess, user, t) in enumerate([(a, "u1", T0 + 1), (b, "u1", T0 + 2),
                                         (c, "u2", T0 + 3), (a, "u1", T0 + 4)]):
        ids[i] = store.add_session_window(sess.session_id, user, _fp(i), keep=2, most=3,
                                          now=t)
    store.end_session(a.token, "ended", now=T0 + 5)
    replica = open_store(store_url, key=key)
    try:
        got = replica.get_session_windows(b.session_id, "u1", others_before=T0 + 1)
        assert got == [(ids[0], _fp(0)), (ids[1], _fp(1))]
        got = replica.get_session_windows(b.session_id, "u1", known=[ids[0]],
                                          others_before=T0 + 10)
        assert got == [(ids[0], None), (ids[1], _fp(1)), (ids[3], _fp(3))]
        assert replica.get_session_windows(b.session_id, "u1") == [(ids[1], _fp(1))]
        # a 4th window of u1: its oldest goes
        replica.add_session_window(b.session_id, "u1", _fp(9), keep=2, most=3,
                                   now=T0 + 11)
        got = replica.get_session_windows(b.session_id, "u1", others_before=T0 + 10)
        assert [fp for _, fp in got] == [_fp(1), _fp(3), _fp(9)]
        assert [fp for _, fp in replica.get_session_windows(c.session_id, "u2")] == [_fp(2)]
    finally:
        replica.close()


def test_key_rotation_re_encrypts_the_windows(store, key):
    s = _session(store)
    store.add_session_window(s.session_id, "u1", _fp(7), keep=64, now=T0 + 1)
    out = store.rotate_key(os.urandom(32))
    assert out.complete and out.rows >= 1
    assert [fp for _, fp in store.get_session_windows(s.session_id, "u1")] == [_fp(7)]


@pytest.mark.parametrize("bad", [b"", "fp", None, [b"fp"]])
def test_a_window_that_is_no_fingerprint_is_refused(store, bad):
    s = _session(store)
    with pytest.raises(InvalidArgument, match="'fingerprint' must be a PAD fingerprint"):
        store.add_session_window(s.session_id, "u1", bad, keep=64, now=T0)
    with pytest.raises(ValueError, match="'keep'"):
        store.add_session_window(s.session_id, "u1", b"fp", keep=0, now=T0)
    assert _rows(store) == []


def test_one_window_in_every_so_many_stays_beyond_the_newest(store, store_url, key):
    """Beyond the newest ``keep`` windows of a session, one in every ``every`` (its
    ``every``-th, ``2 every``-th... window) stays, up to ``most`` of the user (the newest):
    ContinuousAuthenticate's history of a session then covers a loop longer than its
    newest windows. The numbering is the session's, whichever store object (replica)
    wrote each window, and another session's windows do not count in it."""
    s, other = _session(store), _session(store, user="u2")
    replica = open_store(store_url, key=key)
    try:
        for i in range(1, 13):
            w = (store, replica)[i % 2]
            assert w.add_session_window(s.session_id, "u1", _fp(i), keep=3, every=3, most=5,
                                        now=T0 + i) is not None
            store.add_session_window(other.session_id, "u2", _fp(100 + i), keep=3,
                                     most=5, now=T0 + i)
            kept = [fp for _, fp in store.get_session_windows(s.session_id, "u1")]
            want = [n for n in range(1, i + 1) if n > i - 3 or n % 3 == 0][-5:]
            assert kept == [_fp(n) for n in want], (i, want)
        assert [fp for _, fp in replica.get_session_windows(other.session_id, "u2")] == [
            _fp(110), _fp(111), _fp(112)]
    finally:
        replica.close()
    with pytest.raises(ValueError, match="'most'"):
        store.add_session_window(s.session_id, "u1", b"fp", keep=3, most=2, now=T0)
    with pytest.raises(ValueError, match="'every'"):
        store.add_session_window(s.session_id, "u1", b"fp", keep=3, every=-1, now=T0)


def test_windows_written_before_their_numbering_are_dropped_past_the_newest(store):
    """Windows a nacf of before schema 7 wrote (or one still running beside this one in
    a rolling upgrade) have no ordinal: they are never kept as one of the older windows,
    and the numbering goes on from the windows that have one."""
    s = _session(store)
    for i in range(1, 4):
        store.add_session_window(s.session_id, "u1", _fp(i), keep=2, every=2, most=10, now=T0 + i)
    store._run(lambda tx: tx.execute("UPDATE session_windows SET seq = NULL"))
    for i in range(4, 7):
        store.add_session_window(s.session_id, "u1", _fp(i), keep=2, every=2, most=10, now=T0 + i)
    # 4, 5, 6 are the session's 1st, 2nd, 3rd numbered windows: 5 (its 2nd) stays
    assert [fp for _, fp in store.get_session_windows(s.session_id, "u1")] == [
        _fp(5), _fp(6)]
    store.add_session_window(s.session_id, "u1", _fp(7), keep=2, every=2, most=10, now=T0 + 7)
    assert [fp for _, fp in store.get_session_windows(s.session_id, "u1")] == [
        _fp(5), _fp(6), _fp(7)]
