"""Two replicas on one PostgreSQL ending the same user's sessions at once: every session
is returned as ended (what the service observes in nacfauth_session_duration_seconds) by
exactly the call that ended it. Each test lands the other replica's call between the
statements of one transaction (READ COMMITTED: each statement sees the commits made
before it started)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from nacf_core.errors import NotFound
from nacf_core.store import open_store

T0 = 1_800_000_000.0


def _after_first_sessions_statement(store, other_call):
    """Run ``other_call`` in another thread after the first statement of ``store``'s next
    transaction that touches ``sessions``, and wait for it (at most 2 s: it may wait
    for a lock this transaction holds)."""
    orig = store._transaction
    done = threading.Event()
    fired = []

    @contextmanager
    def transaction(write):
        with orig(write) as tx:
            for name in ("query", "execute"):
                method = getattr(tx, name)

                def hooked(sql, params=(), _m=method):
                    out = _m(sql, params)
                    if "sessions" in sql and not fired:
                        fired.append(sql)
                        t = threading.Thread(target=lambda: (other_call(), done.set()))
                        t.start()
                        done.wait(2.0)
                    return out

                setattr(tx, name, hooked)
            yield tx

    store._transaction = transaction
    return done


@pytest.mark.postgres
def test_delete_user_does_not_return_a_session_another_replica_ended_meanwhile(pg_url, key):
    """DeleteUser read the user's open sessions without locking them: an EndSession
    committed by another replica between that read and the delete ended the session
    there too, so both replicas observed it (counted twice)."""
    url, _ = pg_url
    a, b = open_store(url, key=key), open_store(url, key=key)
    try:
        a.put_template("alice", b"x", "m", now=T0)
        tok = a.create_session("alice", 900, now=T0).token
        out = {}

        def end_on_b():
            try:
                out["b"] = b.end_session(tok, "ended", now=T0 + 10)
            except NotFound:
                out["b"] = None

        done = _after_first_sessions_statement(a, end_on_b)
        ended = a.delete_user("alice", now=T0 + 20)
        assert done.wait(10)
        ended_by_b = out["b"] is not None and out["b"].ended_at == T0 + 10
        # exactly one of the two calls ended it
        assert len(ended) + ended_by_b == 1, (ended, out)
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_end_user_sessions_returns_every_session_it_ended(pg_url, key):
    """EndUserSessions (and an Enroll update, a device rotation) selected the user's
    open sessions, then ended them with a second statement: a session another replica
    opened in between was ended by the second statement but not returned, so it was
    never observed."""
    url, _ = pg_url
    a, b = open_store(url, key=key), open_store(url, key=key)
    try:
        a.put_template("alice", b"x", "m", now=T0)
        a.create_session("alice", 900, now=T0)
        opened = []
        done = _after_first_sessions_statement(
            a, lambda: opened.append(b.create_session("alice", 900, now=T0 + 1)))
        ended = a.end_user_sessions("alice", "ended_by_admin", now=T0 + 2)
        assert done.wait(10) and opened
        returned = {s.session_id for s in ended}
        with a._transaction(False) as tx:
            rows = tx.query("SELECT token_hash FROM sessions WHERE user_id = ? AND "
                            "end_reason = 'ended_by_admin'", ("alice",))
        assert returned == {r[0] for r in rows}
    finally:
        a.close()
        b.close()
