"""Epocher and EpochStream: filter state carry, window/hop counts, NaN, memory, overflow."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from nacf_core.hardware.base import Chunk, Counters
from nacf_core.hardware.epoching import Epoch, Epocher, EpochStream
from nacf_core.hardware.files import read_recording
from nacf_core.hardware.playback import FileSource

V6 = "openbci/gui/OpenBCI_GUI-v6-blinks-jawClench-alpha.txt"
SFREQ = 250.0
SOS = signal.butter(4, [1.0, 40.0], btype="band", fs=SFREQ, output="sos")


@pytest.fixture(scope="module")
def cyton(shared_data) -> np.ndarray:
    """20 s of a real Cyton recording (DC offsets of tens of thousands of µV)."""
    return read_recording(shared_data / V6, start_s=5, stop_s=25).data


def _oracle(x: np.ndarray) -> np.ndarray:
    """SciPy on the whole signal, state settled on the first sample; (n_times, n_channels)."""
    zi = signal.sosfilt_zi(SOS)[:, :, None] * x[:1]
    return signal.sosfilt(SOS, x, axis=0, zi=zi)[0]


def _chunks(x: np.ndarray, sizes, t0: float = 100.0):
    pos = 0
    rng = np.random.default_rng(1)
    while pos < x.shape[0]:
        n = int(sizes if np.isscalar(sizes) else rng.integers(*sizes))
        blk = x[pos : pos + n]
        yield Chunk(blk, t0 + (pos + np.arange(blk.shape[0])) / SFREQ, [], SFREQ)
        pos += n


def test_chunked_equals_whole_and_scipy(cyton):
    window, hop = 2.0, 0.5
    whole = Epocher(SFREQ, 8, window, hop, sos=SOS).push(cyton)
    ep = Epocher(SFREQ, 8, window, hop, sos=SOS)
    chunked = [e for c in _chunks(cyton, (1, 97)) for e in ep.push_epochs(c)]
    assert len(whole) == len(chunked) == (cyton.shape[0] - 500) // 125 + 1
    ref = _oracle(cyton)
    for k, (a, b) in enumerate(zip(whole, chunked)):
        assert isinstance(b, Epoch) and b.index == k and a.shape == (8, 500)
        np.testing.assert_allclose(b.data, a, rtol=1e-9, atol=1e-7)
        np.testing.assert_allclose(a, ref[k * 125 : k * 125 + 500].T, rtol=1e-7, atol=1e-6)
        assert b.t_start == pytest.approx(100.0 + k * 125 / SFREQ)


def test_steady_state_start_has_no_dc_transient(cyton):
    first = Epocher(SFREQ, 8, 1.0, sos=SOS).push(cyton[:250])[0]
    zero_state = signal.sosfilt(SOS, cyton[:250], axis=0).T
    assert np.abs(cyton).max() > 10_000  # the DC offset is there
    assert np.abs(first).max() < 2_000 < np.abs(zero_state).max()


@pytest.mark.parametrize(
    "n, window_s, hop_s, expected",
    [
        (1000, 1.0, 1.0, 4),  # 250-sample windows, no overlap
        (1000, 1.0, 0.5, 7),
        (1000, 1.0, 0.1, 31),
        (1000, 1.0, 2.0, 2),  # hop > window: ends at 250 and 750
        (249, 1.0, 0.5, 0),
        (250, 1.0, 0.5, 1),
    ],
)
def test_window_and_hop_counts(n, window_s, hop_s, expected):
    x = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    ep = Epocher(SFREQ, 2, window_s, hop_s)
    got = [e for c in _chunks(x, 33) for e in ep.push(c)]
    assert len(got) == expected == ep.n_epochs
    w, h = int(window_s * SFREQ), int(hop_s * SFREQ)
    for k, e in enumerate(got):  # unfiltered: exactly the samples of the window
        np.testing.assert_array_equal(e, x[k * h : k * h + w].T)


def test_memory_is_bounded_whatever_the_rate():
    sos = signal.butter(4, [1, 40], "band", fs=1000, output="sos")
    ep = Epocher(1000.0, 16, 4.0, 0.25, sos=sos)
    rng = np.random.default_rng(0)
    ep.push(rng.normal(size=(4010, 16)))  # the first epoch: the filter state exists
    size = ep.nbytes
    assert size < 2 * (4000 * 16 * 8 + 4000 * 8) + 4096  # ring + pending, timestamps
    n = 0
    for big in (50_000, 1, 7, 120_000):  # huge and tiny chunks
        out = ep.push(rng.normal(size=(big, 16)))
        n += len(out)
        assert ep.nbytes == size
    assert ep._ring.shape == (4000, 16)
    assert ep.samples_seen == 174_018 and ep.n_epochs == (174_018 - 4000) // 250 + 1


def test_nan_rows_stay_nan_and_do_not_poison_the_filter(cyton):
    x = cyton[:2500].copy()
    x[1000:1010] = np.nan  # 10 dropped samples
    ep = Epocher(SFREQ, 8, 1.0, 1.0, sos=SOS)
    epochs = [e for c in _chunks(x, 40) for e in ep.push(c)]
    assert len(epochs) == 10 and ep.n_nan_samples == 10
    for k, e in enumerate(epochs):
        has_gap = k == 4  # samples 1000..1249
        assert np.isnan(e).any() == has_gap
    assert np.isnan(epochs[4][:, :10]).all() and np.isfinite(epochs[4][:, 10:]).all()
    # elsewhere: exactly the filter of the sample-and-hold signal
    held = x.copy()
    held[1000:1010] = x[999]
    ref = _oracle(held)
    for k in (3, 5, 9):
        np.testing.assert_allclose(epochs[k], ref[k * 250 : (k + 1) * 250].T, rtol=1e-7, atol=1e-6)
    # a channel that starts with NaN is back-filled from its first finite sample
    y = cyton[:500].copy()
    y[:5, 2] = np.nan
    e = Epocher(SFREQ, 8, 2.0, sos=SOS).push(y)[0]
    assert np.isnan(e[2, :5]).all() and np.isfinite(e[2, 5:]).all()
    assert np.abs(e[2, 5:]).max() < 2_000


def test_float32_and_errors(cyton):
    e = Epocher(SFREQ, 8, 1.0, sos=SOS, dtype=np.float32).push(cyton[:250].astype(np.float32))[0]
    assert e.dtype == np.float32
    np.testing.assert_allclose(e, _oracle(cyton[:250]).T, atol=0.5)
    with pytest.raises(ValueError, match=r"shape \(n_times, 8\)"):
        Epocher(SFREQ, 8, 1.0).push(np.zeros((10, 4)))
    with pytest.raises(ValueError, match="built for 250 Hz"):
        Epocher(SFREQ, 2, 1.0).push(Chunk(np.zeros((3, 2)), np.zeros(3), ["a", "b"], 500.0))
    with pytest.raises(ValueError, match="'window_s' must be"):
        Epocher(SFREQ, 8, 0)
    with pytest.raises(ValueError, match="at least one sample"):
        Epocher(SFREQ, 8, 1.0, 0.001)
    with pytest.raises(ValueError, match="'sos' must have shape"):
        Epocher(SFREQ, 8, 1.0, sos=np.ones((2, 5)))


# ---------------------------------------------------------------------------------------
# EpochStream: reader thread, bounded queue, counted drops
# ---------------------------------------------------------------------------------------


def test_stream_delivers_every_epoch_to_a_fast_consumer(shared_data, cyton):
    src = FileSource(shared_data / V6, speed=0, chunk_s=0.1, start_s=5, stop_s=25)
    ep = Epocher(SFREQ, 8, 2.0, 1.0, sos=SOS)
    with EpochStream(src, ep, max_pending=1000) as stream:
        got = list(stream)
    assert len(got) == 19 and stream.dropped_epochs == 0
    ref = _oracle(cyton.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(got[7].data, ref[7 * 250 : 7 * 250 + 500].T, rtol=1e-7, atol=1e-6)


def test_slow_consumer_drops_oldest_and_counts_them(shared_data):
    src = FileSource(shared_data / V6, speed=0, chunk_s=0.1, start_s=0, stop_s=60)
    ep = Epocher(SFREQ, 8, 2.0, 0.5, sos=SOS)
    with EpochStream(src, ep, max_pending=5) as stream:
        t = time.monotonic()
        while not stream._done and time.monotonic() - t < 20:  # consumer asleep
            time.sleep(0.02)
            assert stream.pending <= 5  # bounded while it runs
        got = list(stream)
    total = (60 * 250 - 500) // 125 + 1
    assert stream.emitted_epochs == total == ep.n_epochs
    assert len(got) == 5 and stream.dropped_epochs == total - 5
    assert [e.index for e in got] == list(range(total - 5, total))  # the freshest survive
    assert src.counters.overflow == (total - 5) * 125
    assert src.counters.extra["epochs_overflowed"] == total - 5
    assert src.counters.ok == 60 * 250  # the reader never lost a sample


class _Failing:
    counters = Counters()

    def __init__(self):
        self.n = 0

    def read_chunk(self, timeout=None):
        self.n += 1
        if self.n > 3:
            raise ConnectionError("stream vanished")
        return Chunk(np.zeros((250, 2)), self.n - 1 + np.arange(250) / SFREQ, ["a", "b"],
                     SFREQ)


def test_stream_hands_the_reader_error_to_the_consumer():
    with EpochStream(_Failing(), Epocher(SFREQ, 2, 1.0), max_pending=10) as stream:
        assert [stream.get(5).index for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ConnectionError, match="vanished"):
            stream.get(5)


def test_stream_timeout():
    class Idle:
        counters = Counters()

        def read_chunk(self, timeout=None):
            time.sleep(timeout or 0)
            return Chunk(np.zeros((0, 2)), np.zeros(0), ["a", "b"], SFREQ)

    with EpochStream(Idle(), Epocher(SFREQ, 2, 1.0), poll_s=0.02) as stream:
        with pytest.raises(TimeoutError):
            stream.get(timeout=0.1)


# ---------------------------------------------------------------------------------------
# property: any chunking, window and hop give the same epochs as one push
# ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 600), max_size=12),
    window=st.integers(1, 120),
    hop=st.integers(1, 150),
    nan_at=st.lists(st.integers(0, 599), max_size=5),
)
def test_property_any_chunking_equals_one_push(cuts, window, hop, nan_at):
    rng = np.random.default_rng(len(cuts) + window * 7 + hop)
    x = rng.normal(0, 20, (600, 3)) + np.array([30_000.0, -50_000.0, 0.0])
    x[nan_at] = np.nan
    sfreq = 100.0
    sos = signal.butter(2, [1.0, 30.0], btype="band", fs=sfreq, output="sos")
    whole = Epocher(sfreq, 3, window / sfreq, hop / sfreq, sos=sos).push(x)
    ep = Epocher(sfreq, 3, window / sfreq, hop / sfreq, sos=sos)
    bounds = [0, *sorted(set(cuts)), 600]
    parts = [e for a, b in zip(bounds, bounds[1:]) for e in ep.push(x[a:b])]
    expected = 0 if window > 600 else (600 - window) // hop + 1
    assert len(whole) == len(parts) == expected
    for k, (a, b) in enumerate(zip(whole, parts)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-6)
        # NaN exactly where the input had NaN, nowhere else
        np.testing.assert_array_equal(np.isnan(b), np.isnan(x[k * hop : k * hop + window].T))


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_an_infinite_sample_does_not_poison_the_filter(cyton, bad):
    # a source can deliver inf (an LSL stream, a float64 value beyond float32); it went
    # into the filter state and every later epoch of that channel was NaN, for good
    x = cyton[:2500].copy()
    x[1000, 3] = bad
    ep = Epocher(SFREQ, 8, 1.0, 1.0, sos=SOS)
    epochs = [e for c in _chunks(x, 40) for e in ep.push(c)]
    assert len(epochs) == 10
    assert np.isnan(epochs[4][3, 0]) and np.isfinite(np.delete(epochs[4], 0, axis=1)).all()
    for k in (0, 1, 2, 3, 5, 6, 7, 8, 9):
        assert np.isfinite(epochs[k]).all(), k
    held = x.copy()
    held[1000, 3] = x[999, 3]
    np.testing.assert_allclose(epochs[9], _oracle(held)[2250:2500].T, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("nan_s", [1.0, 1.1, 2.5])
def test_a_channel_nan_for_whole_epochs_at_the_start_settles_on_its_first_value(cyton, nan_s):
    """A channel that is NaN for the whole first epoch(s) (an LSL amplifier's electrode
    not yet connected) starts settled on its first finite value, as every channel does,
    whatever the chunks: before, its state was settled on 0 and its DC offset of tens
    of thousands of µV rang through the next epoch (28 000 µV)."""
    x = cyton[:2500].copy()
    k = int(nan_s * SFREQ)
    x[:k, 3] = np.nan
    ref = _oracle(x[k:])  # the channel's filter started at its first finite sample
    for sizes in (2500, 40, (1, 97)):
        ep = Epocher(SFREQ, 8, 1.0, 0.5, sos=SOS)
        epochs = [e for c in _chunks(x, sizes) for e in ep.push_epochs(c)]
        for e in epochs:
            start = int(round(e.index * 0.5 * SFREQ))
            if start < k:
                continue
            np.testing.assert_allclose(e.data[3], ref[start - k : start - k + 250, 3],
                                       rtol=1e-7, atol=1e-6)


def test_a_gap_in_the_timestamps_is_not_spliced_into_an_epoch(cyton):
    """A source that does not fill an outage with NaN rows (a Cyton reconnect or a resync
    after a long loss, an LSL stream that came back) hands its next samples on with
    timestamps that jump: the epoch across the jump joined the signal before and after
    it as one (a splice no artifact check is sure to see), and every later epoch's
    t_start was wrong by the outage. The missing time is now NaN (the gate rejects the
    epochs that hold it, as for dropped samples); epochs after it are clean and on the
    timeline."""
    x = cyton[:2500]
    gap_s = 3.0
    a = Chunk(x[:1000], 100.0 + np.arange(1000) / SFREQ, [], SFREQ)
    b = Chunk(x[1000:], 100.0 + gap_s + np.arange(1000, 2500) / SFREQ, [], SFREQ)
    ep = Epocher(SFREQ, 8, 1.0, 0.5, sos=SOS)
    epochs = ep.push_epochs(a) + ep.push_epochs(b)
    last_before, first_after = 100.0 + 999 / SFREQ, 100.0 + gap_s + 1000 / SFREQ
    n_nan = 0
    for e in epochs:
        end = e.t_start + 1.0 - 1 / SFREQ  # the stamp of its last sample
        if np.isfinite(e.data).all():  # one side of the gap only
            assert end <= last_before + 1e-6 or e.t_start >= first_after - 1e-6, e.t_start
        else:  # the missing time is in it
            n_nan += 1
            assert e.t_start < first_after - 1e-6 and end > last_before + 1e-6
    assert n_nan >= 2 and ep.n_gaps == 1
    after = [e for e in epochs if e.t_start >= first_after - 1e-6]
    assert after and all(np.isfinite(e.data).all() for e in after)
    assert all(np.diff([e.t_start for e in epochs]) > 0)
    # plain samples (no timestamps) and small jitter are not gaps
    ep2 = Epocher(SFREQ, 8, 1.0, 0.5, sos=SOS)
    jit = 100.0 + np.arange(2500) / SFREQ + np.random.default_rng(0).uniform(0, 0.05, 2500)
    assert all(np.isfinite(e.data).all()
               for e in ep2.push_epochs(Chunk(x, np.sort(jit), [], SFREQ)))
