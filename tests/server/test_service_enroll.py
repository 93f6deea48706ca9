"""Enroll against a store that is slow to take its write: what the call's client was
told must be what was written."""

from __future__ import annotations

import contextlib
import time

import pytest
from _server_support import eeg, signal_block, sqlite_service

from nacf_core.errors import DeadlineExceeded, NotFound


@pytest.fixture
def svc(tmp_path, model_path):
    service = sqlite_service(tmp_path, model_path)
    yield service
    service.store.close()


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
