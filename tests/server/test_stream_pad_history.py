"""A ContinuousAuthenticate stream compares its windows with the user's stored PAD
history as it is when each window comes, not as it was when the stream started: an
Authenticate probe stored during a long stream, replayed on that stream, was never
compared with its windows."""

import pytest
from _server_support import eeg, signal_block, sqlite_service

from nacf_core.pad import PresentationAttackDetector


@pytest.fixture
def svc(tmp_path, model_path):
    s = sqlite_service(tmp_path, model_path, require_device_proof=False,
                       lockout_threshold=100000)
    s.pad = PresentationAttackDetector(list(s.rec.model.ch_names))
    s.enroll("u", [signal_block(eeg(1, 3, 0, 40))])
    yield s
    s.store.close()


def test_a_probe_stored_during_a_stream_is_a_replay_on_it(svc):
    win = svc.rec.window_s
    first, probe = eeg(1, 3, 44, win), eeg(1, 4, 10, win)
    token = svc.store.create_session("u", 600).token
    stored = []

    def client():
        yield signal_block(first)
        # meanwhile, an Authenticate of the wearer is accepted (its probe stored) ...
        r = svc.authenticate("u", signal_block(probe))
        stored.append(r.accepted)
        # ... and its recording is then replayed on the stream
        yield signal_block(probe)

    updates = list(svc.continuous(token, client()))
    assert stored == [True]
    assert updates[0].state == "verified", updates
    assert [u.state for u in updates[1:]] == ["ended"], updates
    assert updates[-1].reason == "replay", updates
