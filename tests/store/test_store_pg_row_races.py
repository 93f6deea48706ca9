"""Two replicas on one PostgreSQL: a row that one transaction's ``INSERT ... ON CONFLICT
DO NOTHING`` found (so it inserted nothing and locked nothing) is deleted by another
replica before the transaction's ``SELECT ... FOR UPDATE`` locks it (READ COMMITTED: that
SELECT sees the delete). Each test lands the other replica's call exactly there."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from nacf_core.store import open_store

pytestmark = pytest.mark.postgres

T0 = 1_800_000_000.0


def _after_statement(store, prefix, other_call):
    """Run ``other_call`` (in another thread, waited for: at most 10 s) right after the
    first statement of ``store`` that starts with ``prefix``; return a list that gets
    its result or error."""
    orig = store._transaction
    box: list = []

    @contextmanager
    def transaction(write):
        with orig(write) as tx:
            method = tx.execute

            def hooked(sql, params=()):
                out = method(sql, params)
                if sql.startswith(prefix) and not box:
                    def run():
                        try:
                            box.append(other_call())
                        except BaseException as exc:  # noqa: BLE001 - handed to the test
                            box.append(exc)
                    t = threading.Thread(target=run, daemon=True)
                    t.start()
                    t.join(10.0)
                    assert box, "the other replica's call waited for this transaction"
                return out

            tx.execute = hooked
            yield tx

    store._transaction = transaction
    return box


@pytest.fixture
def replicas(pg_url, key):
    url, _ = pg_url
    a, b = open_store(url, key=key), open_store(url, key=key)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_failure_racing_unlock_user_counts_as_the_first_of_a_new_streak(replicas):
    a, b = replicas
    a.put_template("alice", b"t" * 64, "m", now=T0)
    for _ in range(2):
        a.register_failure("alice", 5, 60, now=T0)
    box = _after_statement(a, "INSERT INTO lockouts", lambda: b.unlock_user("alice"))
    out = a.finish_authentication("alice", False, score=0.1, reason="no_match", peer="p",
                                  duration_s=0.1, method="Authenticate", max_failures=5,
                                  lock_seconds=60, now=T0 + 1)
    assert [x.failures for x in box] == [2]  # the unlock committed in between
    assert (out.failures, out.locked_until) == (1, None)
    assert b.get_lockout("alice").failures == 1
    assert [x.reason for x in b.recent_attempts("alice")] == ["no_match"]

    box = _after_statement(a, "INSERT INTO lockouts", lambda: b.unlock_user("alice"))
    assert a.register_failure("alice", 5, 60, now=T0 + 2) == (1, None)
    assert [x.failures for x in box] == [1]


def test_an_enrollment_racing_delete_user_enrolls_the_user_anew(replicas):
    a, b = replicas
    a.put_template("bob", b"old" * 30, "m", now=T0)
    box = _after_statement(a, "INSERT INTO users", lambda: b.delete_user("bob", now=T0))
    assert a.put_template("bob", b"new" * 30, "m", now=T0 + 1) == 1
    assert box == [[]]  # the delete committed in between
    rec = b.get_template("bob")
    assert (rec.version, rec.blob) == (1, b"new" * 30)
    assert b.get_user("bob").created_at == T0 + 1


def test_a_device_registration_racing_the_delete_of_its_owner_binds_it(replicas):
    a, b = replicas
    a.put_template("carol", b"t" * 64, "m", now=T0)
    a.put_template("dan", b"t" * 64, "m", now=T0)
    a.register_device("dan", "hs-1", "s" * 32, now=T0)
    box = _after_statement(a, "INSERT INTO devices", lambda: b.delete_user("dan", now=T0))
    dev = a.register_device("carol", "hs-1", "c" * 32, now=T0 + 1)
    assert box == [[]]
    assert (dev.user_id, dev.secret) == ("carol", "c" * 32)
    assert b.get_device("hs-1").user_id == "carol"
