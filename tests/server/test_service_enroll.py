"""Enroll against a store that is slow to take its write: what the call's client was
told must be what was written."""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import pytest
from _server_support import eeg, make_pipeline, signal_block, sqlite_service
from prometheus_client import CollectorRegistry

from nacf_core.config import Config
from nacf_core.errors import DeadlineExceeded, NotFound
from nacf_core.metrics import Metrics
from nacf_core.service import AuthService
from nacf_core.store import open_store

PG_DSN = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def svc(tmp_path, model_path):
    service = sqlite_service(tmp_path, model_path)
    yield service
    service.store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def svc_both(request, tmp_path, model_path):
    """An ``AuthService`` on each store backend (a fresh PostgreSQL schema, dropped
    after), without device proofs and locking a user at its first failure."""
    conf = {"require_device_proof": False, "lockout_threshold": 1}
    if request.param == "sqlite":
        service = sqlite_service(tmp_path, model_path, **conf)
        yield service
        service.store.close()
        return
    import psycopg

    schema = f"nacf_quality_{uuid.uuid4().hex[:12]}"
    store = open_store(f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}",
                       bytes(range(32)))
    cfg = Config(data_dir=str(tmp_path), rate_limit_per_s=1000, rate_limit_burst=1000,
                 **conf)
    try:
        yield AuthService(store, make_pipeline(model_path), cfg,
                          metrics=Metrics(CollectorRegistry()))
    finally:
        store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _writer_lock_held_until(store, deadline: float, monkeypatch) -> None:
    """Make ``store``'s write transactions wait until ``deadline`` (a
    ``time.monotonic()`` value) has passed, as when others hold the writer lock."""
    transaction = store._transaction

    @contextlib.contextmanager
    def busy(write):
        if write:
            while time.monotonic() <= deadline:
                time.sleep(0.02)
        with transaction(write) as tx:
            yield tx

    monkeypatch.setattr(store, "_transaction", busy)


def test_an_enroll_whose_deadline_passes_while_it_waits_for_the_store_writes_nothing(
        svc, monkeypatch):
    """Enroll checked its deadline once the template was computed, then wrote it however
    long the write waited for the store (SQLite's writer lock, held by a purge or other
    writers, up to busy_timeout_s, 30 s; a row lock on PostgreSQL): the client had
    DEADLINE_EXCEEDED, the user was enrolled behind its back and the client's retry got
    ALREADY_EXISTS. The store now refuses the write in its transaction once the deadline
    has passed: DEADLINE_EXCEEDED, nothing written, and the retry enrolls."""
    deadline = time.monotonic() + 3.0
    _writer_lock_held_until(svc.store, deadline, monkeypatch)
    blocks = [signal_block(eeg(1, 3, 0, 40))]
    with pytest.raises(DeadlineExceeded):
        svc.enroll("late", blocks, deadline=deadline)
    monkeypatch.undo()
    with pytest.raises(NotFound):
        svc.get_user("late")
    reg = svc.metrics.registry.get_sample_value
    labels = {"registration_method": "Enroll"}
    assert reg("nacfauth_user_registrations_total",
               {**labels, "status": "DEADLINE_EXCEEDED"}) == 1
    assert not reg("nacfauth_user_registrations_total", {**labels, "status": "OK"})
    assert svc.enroll("late", blocks).template_version == 1  # the client's retry


def test_a_register_device_whose_deadline_passes_while_it_waits_for_the_store_writes_nothing(
        svc, monkeypatch):
    """RegisterDevice checked its deadline before its write, then bound the headset
    however long the write waited for the store: the client never received the secret
    (DEADLINE_EXCEEDED), the headset was bound to a secret nobody holds, and its retry got
    ALREADY_EXISTS (a rotation, which needs the admin scope). The store now refuses the
    write in its transaction once the deadline has passed, and the retry binds it."""
    svc.enroll("hs-late", [signal_block(eeg(1, 3, 0, 40))])
    deadline = time.monotonic() + 1.0
    _writer_lock_held_until(svc.store, deadline, monkeypatch)
    with pytest.raises(DeadlineExceeded):
        svc.bind_device("hs-late", "headset-late", first_only=True, deadline=deadline)
    monkeypatch.undo()
    assert svc.get_user("hs-late").device_ids == []
    secret, rotated = svc.bind_device("hs-late", "headset-late", first_only=True)
    assert secret and not rotated


def test_a_reject_judged_against_a_replaced_template_does_not_count_against_the_new_one(
        svc_both, monkeypatch):
    """An Authenticate that read the user's template, then lost the race with an Enroll
    with update=true (re-enrollment) and was rejected, counted its failure against the
    user after the replacement: the new template's streak started at one failure (here,
    with lockout_threshold 1, the user was locked out right after being re-enrolled) for
    a decision about a template that no longer exists. A reject judged against a template
    that has since been replaced is now audited but not counted; an accept of one was
    already refused (FailedPrecondition)."""
    svc = svc_both
    svc.enroll("alice", [signal_block(eeg(1, 3, 0, 60))])
    decide = svc.rec.decide
    replaced = []

    def decide_while_re_enrolled(windows, template):
        if not replaced:  # the template read, the decision not yet written
            replaced.append(svc.enroll("alice", [signal_block(eeg(1, 4, 0, 60))],
                                       update=True).template_version)
        return decide(windows, template)

    monkeypatch.setattr(svc.rec, "decide", decide_while_re_enrolled)
    r = svc.authenticate("alice", signal_block(eeg(2, 7, 0, 4)))  # another person
    assert replaced == [2] and not r.accepted
    lock = svc.store.get_lockout("alice")
    assert (lock.failures, lock.locked_until) == (0, None)
    assert [(a.success, a.reason) for a in svc.store.recent_attempts("alice")
            if a.method == "Authenticate"] == [(False, "score_below_threshold")]
    # a reject judged against the template in place counts, as before
    monkeypatch.undo()
    r = svc.authenticate("alice", signal_block(eeg(2, 7, 4, 4)))
    assert not r.accepted
    assert svc.store.get_lockout("alice").failures == 1


def test_a_session_opened_on_the_new_template_is_not_ended_by_its_replacement(
        svc_both, monkeypatch):
    """Enroll with update=true wrote the new template, then ended every active session
    of the user in a second transaction: a session opened on the NEW template in between
    (the user authenticating at once, another replica) was ended too, reason
    'template_replaced', though it was verified against the template that replaced the
    old one. The sessions are now ended in the template's own transaction: those opened
    before it end, one opened after it stays valid."""
    svc = svc_both
    svc.enroll("bob", [signal_block(eeg(1, 3, 0, 60))])
    old = svc.authenticate("bob", signal_block(eeg(1, 7, 0, 4)))
    assert old.accepted
    store = svc.store
    opened = []

    def authenticate_right_after(method):
        def wrapped(*a, **k):
            out = method(*a, **k)
            if not opened:  # the new template written: the user authenticates at once
                r = svc.authenticate("bob", signal_block(eeg(1, 7, 0, 4)))
                assert r.accepted
                opened.append(r.session_token)
            return out
        return wrapped

    for name in ("put_template", "put_template_ending_sessions"):
        if hasattr(store, name):
            monkeypatch.setattr(store, name, authenticate_right_after(getattr(store, name)))
    r = svc.enroll("bob", [signal_block(eeg(1, 3, 60, 60))], update=True)
    assert r.template_version == 2 and opened
    monkeypatch.undo()
    assert svc.validate_session(old.session_token).reason == "template_replaced"
    assert svc.validate_session(opened[0]).valid
