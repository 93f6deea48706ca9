"""Epoching a live stream: nacf's Epocher against a straightforward SciPy implementation.

The case is what a Cyton delivers: 8 channels at 250 Hz in chunks of 10 samples (40 ms),
band-passed 1-40 Hz (order 4), cut into 4 s epochs every 0.5 s; 60 s of real signal
(OpenBCI GUI v6 recording). Both produce the same epochs (checked outside the timed
call). The per-item time is per chunk: at 250 Hz a chunk arrives every 40 ms, so the
budget is far above either; the comparison shows the ring buffer's overhead.

Run: ``python -m pytest benches/bench_epoching.py --benchmark-only``
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from conftest import tag
from nacf_core.hardware.epoching import Epocher
from nacf_core.hardware.files import read_recording

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NACF_SHARED_DATA", ROOT.parent / "shared" / "data"))
SFREQ, CHUNK, WINDOW, HOP = 250.0, 10, 1000, 125
GROUP = "epoching 60 s, 8 ch @ 250 Hz, 10-sample chunks, 4 s / 0.5 s, bandpass 1-40 Hz"


@pytest.fixture(scope="module")
def chunks():
    rec = read_recording(DATA / "openbci/gui/OpenBCI_GUI-v6-blinks-jawClench-alpha.txt",
                         start_s=0, stop_s=60)
    x = rec.data.astype(np.float32)
    return [x[i : i + CHUNK] for i in range(0, x.shape[0], CHUNK)]


@pytest.fixture(scope="module")
def sos():
    return signal.butter(4, [1.0, 40.0], btype="band", fs=SFREQ, output="sos")


def scipy_epochs(chunks, sos):
    """Baseline: filter each chunk with carried zi, keep a growing buffer, slice epochs."""
    zi = None
    buf = np.empty((0, chunks[0].shape[1]))
    next_end, out = WINDOW, []
    for c in chunks:
        c = c.astype(np.float64)
        if zi is None:
            zi = signal.sosfilt_zi(sos)[:, :, None] * c[:1]
        y, zi = signal.sosfilt(sos, c, axis=0, zi=zi)
        buf = np.concatenate([buf, y])
        while buf.shape[0] >= next_end:
            out.append(buf[next_end - WINDOW : next_end].T.copy())
            next_end += HOP
        # drop what no future epoch needs (keeps the buffer bounded)
        drop = max(0, next_end - WINDOW)
        if drop:
            buf, next_end = buf[drop:], next_end - drop
    return out


def nacf_epochs(chunks, sos):
    ep = Epocher(SFREQ, chunks[0].shape[1], WINDOW / SFREQ, HOP / SFREQ, sos=sos)
    out = []
    for c in chunks:
        out.extend(ep.push(c))
    return out


def _check(got, ref):
    assert len(got) == len(ref) == (60 * 250 - WINDOW) // HOP + 1
    for a, b in zip(got[::10], ref[::10]):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-6)


def test_scipy_baseline(benchmark, chunks, sos):
    tag(benchmark, GROUP, "scipy", baseline=True, n_items=len(chunks), item="chunk")
    got = benchmark(scipy_epochs, chunks, sos)
    _check(got, nacf_epochs(chunks, sos))


def test_nacf_epocher(benchmark, chunks, sos):
    tag(benchmark, GROUP, "nacf Epocher", n_items=len(chunks), item="chunk")
    got = benchmark(nacf_epochs, chunks, sos)
    _check(got, scipy_epochs(chunks, sos))
