"""Sessions and continuous authentication in process: how a ContinuousAuthenticate
stream ends its session, and what it tells the client."""

from __future__ import annotations

import numpy as np
import pytest
from _server_support import SFREQ, eeg, signal_block, sqlite_service

from nacf_core.errors import Unavailable


@pytest.fixture
def svc(tmp_path, model_path):
    service = sqlite_service(tmp_path, model_path)
    yield service
    service.store.close()


def _blocks(x, seconds=0.5):
    n = int(seconds * SFREQ)
    return [signal_block(x[i:i + n]) for i in range(0, x.shape[0], n)]


def test_a_wearer_change_the_store_could_not_record_is_not_reported_ended(svc):
    """The wearer changes while the store fails (a PostgreSQL failover, a writer lock
    held too long): ending the session failed silently, and the stream still answered
    ENDED ``wearer_changed`` while the session stayed valid for ValidateSession, the
    new wearer's. The call now fails UNAVAILABLE (the session is not said ended), and
    the wearer change is still logged and counted."""
    svc.enroll("w1", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("w1", 600).token

    def failing_end(*a, **k):
        raise Unavailable("the store is unreachable (test)")

    svc.store.end_session = failing_end
    updates = []
    with pytest.raises(Unavailable):
        for u in svc.continuous(token, _blocks(eeg(1, 3, 44, 8)) + _blocks(eeg(5, 7, 0, 16))):
            updates.append(u)
    assert updates and updates[0].state == "verified"
    assert all(u.state != "ended" for u in updates), updates
    assert svc.validate_session(token).valid  # not ended: the client was not told it was
    reg = svc.metrics.registry
    assert reg.get_sample_value("nacfauth_suspicious_activities_total",
                                {"activity_type": "wearer_changed", "severity": "medium"}) == 1



@pytest.mark.parametrize("end", ["wearer_changed", "expired"])
def test_validate_session_says_when_an_ended_or_expired_session_was_last_verified(svc, end):
    """``last_verified_unix`` is when ContinuousAuthenticate last verified the wearer,
    else when the session opened (README): for a session no longer valid (ended,
    expired) ValidateSession answered the opening time even when the wearer had been
    verified since."""
    store = svc.store
    svc.enroll("v1", [signal_block(eeg(1, 3, 0, 40))])
    t0 = svc.clock()
    s = store.create_session("v1", 60, now=t0 - 100)
    store.renew_session(s.token, 30, now=t0 - 50)  # verified at t0 - 50, expires t0 - 20
    if end != "expired":
        store.end_session(s.token, end, now=t0 - 30)
    v = svc.validate_session(s.token)
    assert (v.valid, v.reason) == (False, end)
    assert v.last_verified == pytest.approx(t0 - 50, abs=1e-3), v


def test_every_window_of_a_large_chunk_is_verified(svc):
    """A client that sends its signal in chunks longer than a window (an app batching
    what the headset sent): only the last window of each chunk was scored, so most of
    the signal was never verified, a wearer change took ``continuous_mismatch_windows``
    chunks (not windows) to end the session, and a 12-s chunk gave one update, not
    one per window."""
    svc.enroll("L1", [signal_block(eeg(1, 3, 0, 40))])
    win = svc.rec.window_s
    token = svc.store.create_session("L1", 600).token
    genuine = eeg(1, 3, 44, 3 * win)
    updates = list(svc.continuous(token, [signal_block(genuine)]))
    assert [u.state for u in updates] == ["verified"] * 3, updates
    assert [u.seconds_streamed for u in updates] == [win, 2 * win, 3 * win]
    # the wearer changes within one chunk: ended after two windows of the other person
    token = svc.store.create_session("L1", 600).token
    both = np.concatenate([eeg(1, 3, 44, win), eeg(5, 7, 0, 3 * win)])
    updates = list(svc.continuous(token, [signal_block(both)]))
    assert [u.state for u in updates] == ["verified", "uncertain", "ended"], updates
    assert updates[-1].reason == "wearer_changed"
