"""Presentation-attack detection cost per probe (4 s, 16 channels, 160 Hz).

Run: ``python -m pytest benches/bench_pad.py --benchmark-only``

Groups:
- ``PAD replay score``: the FFT normalised cross-correlation of a probe against 2 min
  of enrollment + 64 earlier probes, vs the direct vectorised NumPy computation
  (sliding windows + einsum), the baseline; results must agree.
- ``PAD replay score, rolling history``: as a server sees it, every call against the
  enrollment + the latest ``Store.pad_history`` (64) probes, one newer than at the
  previous call: the plain path (the prepared fingerprints concatenated per call), the
  baseline, vs the history kept in a slab between calls (``history_key``); same scores.
- ``PAD check``: the whole detector (filters, spectrum, periodicity, fingerprint,
  replay score) with its compiled (Numba) kernels, vs the baseline of the same detector
  on its NumPy/SciPy reference path (the implementation before the kernels; same
  verdict, same fingerprint), and the floor of just a zero-phase 1-40 Hz filter and a
  Welch spectrum of the same window (the least any spectral check costs in NumPy/SciPy).
  With the history (2 min of enrollment + 64 probes) and without (a first probe).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tag
from scipy import signal

from nacf_core import pad
from nacf_core.store.base import Store

CH16 = ["Fp1", "Fp2", "F3", "F4", "F7", "F8", "C3", "C4", "T7", "T8", "P3", "P4", "P7", "P8",
        "O1", "O2"]
SF = 160.0
HISTORY = Store.pad_history  # probes a server keeps per user


def _pink(rng, n, n_ch):
    """1/f noise, so the detector sees an EEG-like spectrum and runs every stage."""
    spec = np.fft.rfft(rng.normal(size=(n_ch, n)), axis=1)
    f = np.fft.rfftfreq(n, 1 / SF)
    spec[:, 1:] /= np.sqrt(f[1:])
    return (np.fft.irfft(spec, n, axis=1) * 20).T


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    enroll = _pink(rng, int(120 * SF), 16)
    hist = [("enroll", pad.fingerprint(enroll, SF, CH16))]
    hist += [("probe", pad.fingerprint(_pink(rng, 640, 16), SF, CH16)) for _ in range(64)]
    probe = _pink(rng, 640, 16)
    return probe, hist


def _naive_scores(segs, seqs):
    best = -1.0
    for s in seqs:
        L = segs.shape[1]
        if s.shape[0] < L:
            continue
        win = np.lib.stride_tricks.sliding_window_view(s, L, axis=0)  # (n, F, L)
        win = win - win.mean(axis=2, keepdims=True)
        num = np.einsum("nfl,klf->kn", win, segs)
        den = np.sqrt((win ** 2).sum(axis=(1, 2)))
        best = max(best, float((num / den).max()))
    return best


def test_replay_score_fft(benchmark, case):
    probe, hist = case
    fp = pad.fingerprint(probe, SF, CH16)
    tag(benchmark, "PAD replay score (2 min + 64 probes)", "nacf fft")
    score, _ = benchmark(pad.replay_score, fp, hist)
    segs = pad._segments(pad._parse(fp)[1])
    assert score == pytest.approx(max(0.0, _naive_scores(segs, [pad._parse(f)[1]
                                                                for _, f in hist])), abs=1e-5)


def test_replay_score_numpy_direct(benchmark, case):
    probe, hist = case
    fp = pad.fingerprint(probe, SF, CH16)
    segs = pad._segments(pad._parse(fp)[1])
    tag(benchmark, "PAD replay score (2 min + 64 probes)", "numpy direct", baseline=True)
    benchmark(lambda: _naive_scores(segs, [pad._parse(f)[1] for _, f in hist]))


@pytest.fixture(scope="module")
def rolling(case):
    rng = np.random.default_rng(1)
    _, hist = case
    pool = [("probe", pad.fingerprint(_pink(rng, 640, 16), SF, CH16)) for _ in range(400)]
    fp = pad.fingerprint(_pink(rng, 640, 16), SF, CH16)
    return hist[0], pool, fp


def _rolling_bench(benchmark, rolling, key):
    enroll, pool, fp = rolling
    k = [0]

    def one():
        i = k[0] % (len(pool) - HISTORY)
        k[0] += 1
        return pad._replay_score(fp, [enroll] + pool[i:i + HISTORY], False, key)

    return benchmark(one)


def test_replay_score_rolling_plain(benchmark, rolling):
    tag(benchmark, "PAD replay score, rolling history (enrollment + 64 probes)",
        "concatenated per call", baseline=True)
    _rolling_bench(benchmark, rolling, None)


def test_replay_score_rolling_slab(benchmark, rolling):
    tag(benchmark, "PAD replay score, rolling history (enrollment + 64 probes)",
        "slab kept between calls")
    _rolling_bench(benchmark, rolling, "bench-user")
    enroll, pool, fp = rolling
    for i in (0, 7, 100):
        hist = [enroll] + pool[i:i + HISTORY]
        assert pad._replay_score(fp, hist, False, "bench-user") == pytest.approx(
            pad._replay_score(fp, hist, False), abs=1e-6)


def test_check_detector(benchmark, case):
    probe, hist = case
    det = pad.PresentationAttackDetector(CH16)
    tag(benchmark, "PAD check 4 s x 16 ch", "nacf pad (numba)")
    v = benchmark(det.analyse, probe, SF, CH16, hist)
    assert not v.attack, v.scores
    ref = det._analyse(probe, SF, CH16, hist, reference=True)
    assert v.fingerprint == ref.fingerprint
    assert v.scores == pytest.approx(ref.scores, rel=1e-9, abs=1e-6)


def test_check_detector_reference(benchmark, case):
    probe, hist = case
    det = pad.PresentationAttackDetector(CH16)
    tag(benchmark, "PAD check 4 s x 16 ch", "numpy/scipy reference path", baseline=True)
    v = benchmark(det._analyse, probe, SF, CH16, hist, True)
    assert not v.attack, v.scores


def test_check_detector_no_history(benchmark, case):
    probe, _ = case
    det = pad.PresentationAttackDetector(CH16)
    tag(benchmark, "PAD check 4 s x 16 ch, no history", "nacf pad (numba)")
    v = benchmark(det.analyse, probe, SF, CH16, ())
    assert not v.attack, v.scores
    assert v.fingerprint == det._analyse(probe, SF, CH16, (), True).fingerprint


def test_check_detector_no_history_reference(benchmark, case):
    probe, _ = case
    det = pad.PresentationAttackDetector(CH16)
    tag(benchmark, "PAD check 4 s x 16 ch, no history", "numpy/scipy reference path",
        baseline=True)
    v = benchmark(det._analyse, probe, SF, CH16, (), True)
    assert not v.attack, v.scores


def test_check_filter_and_welch_floor(benchmark, case):
    probe, _ = case
    sos = signal.butter(4, [1, 40], btype="bandpass", fs=SF, output="sos")
    tag(benchmark, "PAD check 4 s x 16 ch", "sosfiltfilt+welch floor")
    benchmark(lambda: signal.welch(signal.sosfiltfilt(sos, probe.T, axis=-1), fs=SF,
                                   nperseg=80, axis=-1))
