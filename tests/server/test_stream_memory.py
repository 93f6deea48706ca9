"""A stream's buffer keeps the channels its decision reads (the model's, and PAD's), not
every channel the client sends: at 256 channels × 1000 Hz × stream_max_seconds (600 s) a
stream held ~614 MB, and max_streams of them took the server down."""

import numpy as np
import pytest
from _server_support import CH16, SFREQ, eeg, sqlite_service

from nacf_core import service as service_mod
from nacf_core.pad import PresentationAttackDetector
from nacf_core.service import SignalBlock

#: channels a client may send besides the model's: other electrodes and auxiliaries
EXTRA = ["Cz", "Pz", "Fz", "Oz"] + [f"AUX{i}" for i in range(60)]


def _service(path, model_path, pad):
    path.mkdir()
    s = sqlite_service(path, model_path, require_device_proof=False,
                       lockout_threshold=100000, stream_max_seconds=600,
                       signal_loss_s=100000)
    s.pad = PresentationAttackDetector(list(s.rec.model.ch_names)) if pad else None
    s.enroll("u", [SignalBlock(eeg(1, 3, 0, 40), SFREQ, tuple(CH16))])
    return s


@pytest.fixture(params=["pad", "no-pad"])
def two(tmp_path, model_path, request):
    """Two services alike (a stream accepted on one is no replay on the other)."""
    a = _service(tmp_path / "a", model_path, request.param == "pad")
    b = _service(tmp_path / "b", model_path, request.param == "pad")
    yield a, b
    a.store.close()
    b.store.close()


def _wide(x, rng):
    """``x`` (n, 16) among len(EXTRA) more channels, all in a shuffled order."""
    names = list(CH16) + EXTRA
    extra = rng.normal(0, 20, (len(x), len(EXTRA))).astype(np.float32)
    data = np.concatenate([x, extra], axis=1)
    order = rng.permutation(len(names))
    return np.ascontiguousarray(data[:, order]), tuple(names[i] for i in order)


def _chunks(x, names, n=97):
    return [SignalBlock(np.ascontiguousarray(x[i:i + n]), SFREQ, names, "")
            for i in range(0, len(x), n)]


@pytest.fixture
def kept(monkeypatch):
    """The widest sample array a _Buffer held after any push."""
    widths = []
    push = service_mod._Buffer.push

    def recording(self, b):
        out = push(self, b)
        widths.extend(p.shape[1] for p in self._parts)
        return out
    monkeypatch.setattr(service_mod._Buffer, "push", recording)
    return widths


def _answer(r):
    return (r.accepted, r.score, r.threshold, r.quality, list(r.reasons), r.windows_used,
            r.seconds_used)


@pytest.mark.parametrize("probe", [(1, 4, 0), (2, 7, 0)], ids=["wearer", "impostor"])
def test_a_wide_stream_is_buffered_on_the_models_channels_and_answered_alike(
        two, kept, probe):
    """On a service with PAD (on the model's channels, as nacf serve builds it) and
    without: the same answer, bit for bit, as the stream of the model's channels alone."""
    svc, other = two
    x = eeg(*probe, 60)
    rng = np.random.default_rng(7)
    want = other.authenticate_stream("u", iter(_chunks(x, tuple(CH16))), max_seconds=40)
    assert kept and max(kept) == 16
    kept.clear()
    wx, names = _wide(x, rng)
    got = svc.authenticate_stream("u", iter(_chunks(wx, names)), max_seconds=40)
    assert max(kept) == len(svc.rec.model.ch_names) == 16, \
        f"the buffer held {max(kept)} channels of {len(names)} sent"
    assert _answer(got) == _answer(want)


def test_a_wide_streams_later_chunk_must_still_name_the_same_channels(two):
    """The chunks are compared with the first as sent, not as buffered."""
    svc = two[0]
    rng = np.random.default_rng(3)
    wx, names = _wide(eeg(1, 4, 0, 20), rng)
    chunks = _chunks(wx, names, 160)
    swapped = list(names)
    i, j = swapped.index("AUX1"), swapped.index("AUX2")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    chunks[3] = SignalBlock(chunks[3].samples, SFREQ, tuple(swapped), "")
    from nacf_core.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="same names in the same order"):
        svc.authenticate_stream("u", iter(chunks), max_seconds=20)


def test_a_wide_continuous_stream_is_buffered_on_the_models_channels_alike(two, kept):
    """ContinuousAuthenticate's buffer (bounded in time) keeps the model's channels
    too; its updates are those of the stream of the model's channels alone."""
    svc, other = two
    x = eeg(1, 3, 44, 5 * svc.rec.window_s)
    wx, names = _wide(x, np.random.default_rng(5))

    def updates(s, data, ch):
        token = s.store.create_session("u", 600).token
        return [(u.state, u.score, u.quality, u.reason, u.seconds_streamed)
                for u in s.continuous(token, _chunks(data, ch, 100))]
    want = updates(other, x, tuple(CH16))
    kept.clear()
    got = updates(svc, wx, names)
    assert max(kept) == 16
    assert got == want and len(want) == 5
