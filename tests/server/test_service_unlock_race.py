"""UnlockUser racing a failure that locks the user (another replica's rejected
authentication): what it answers (``was_locked``) and audits is what it did."""

from __future__ import annotations

import pytest
from _server_support import make_pipeline
from prometheus_client import CollectorRegistry

from nacf_core.config import Config
from nacf_core.metrics import Metrics
from nacf_core.service import AuthService
from nacf_core.store import open_store

T0 = 1_800_000_000.0


@pytest.fixture
def svc(tmp_path, model_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    yield AuthService(store, make_pipeline(model_path), Config(data_dir=str(tmp_path)),
                      metrics=Metrics(CollectorRegistry()), clock=lambda: T0)
    store.close()


def test_unlock_user_answers_and_audits_the_lock_it_lifted(svc, tmp_path):
    """UnlockUser read the lockout, then deleted it in another transaction: a lock that
    another replica's failure set in between was lifted, yet answered was_locked=false
    and audited 'not_locked' (an attacker's lockout lifted with no trace of it)."""
    store = svc.store
    store.put_template("eve", b"t" * 64, "m", now=T0)
    other = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))  # a replica
    real_run = store._run
    calls = []

    def run(fn, **kw):
        out = real_run(fn, **kw)
        if not calls:  # after the call's first transaction: the other replica locks eve
            calls.append(other.register_failure("eve", 1, 600, now=T0))
        return out

    store._run = run
    try:
        was = svc.unlock_user("eve", actor="admin")
    finally:
        store._run = real_run
        other.close()
    assert calls == [(1, T0 + 600)]
    locked_now = store.get_lockout("eve").is_locked(T0)
    # either the unlock came first (the lock stays, was_locked false) or the failure
    # did (the unlock lifted it and says so): never a lock lifted while saying none was
    assert was != locked_now, (was, locked_now)
    (row,) = [a for a in store.recent_attempts("eve") if a.method == "UnlockUser"]
    assert row.reason == ("unlocked" if was else "not_locked")
