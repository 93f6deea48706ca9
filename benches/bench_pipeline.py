"""Latency of the recognition hot path: one 4-s, 16-channel window, raw samples → score.

What is timed (``one_window``): :meth:`Pipeline.windows` on a raw float32 block of
exactly one window (channel selection by name, validation, steady-state band-pass,
artifact gate, quality score, covariance, tangent space, projection, L2) and the cosine
with one enrolled template — what an ``Authenticate`` call does per window, minus the
store and the RPC.  The same pipeline runs on each kernel backend; the ``reference``
backend (SciPy/NumPy kernels) is the baseline of the same run.

Target (issue 4): p50 ≤ 300 µs with the default (Cython) backend on this machine.

    python -m pytest benches/bench_pipeline.py --benchmark-only \
        --benchmark-columns=median,mean,min,rounds --benchmark-group-by=group
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tag

from nacf_core.model import default_model
from nacf_core.pipeline import Pipeline

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eegmmidb"
BACKENDS = ["cython", "numba", "reference"]


@pytest.fixture(scope="module")
def signal():
    from nacf_core.hardware.files import read_recording

    enroll = read_recording(DATA / "S021" / "S021R03.edf")
    probe = read_recording(DATA / "S021" / "S021R07.edf", start_s=10.0, stop_s=14.0)
    # as from the wire: float32, time-major, with Cyton-like DC offsets per channel
    offsets = np.random.default_rng(0).uniform(-60000, 60000, probe.data.shape[1])
    window = np.ascontiguousarray((probe.data + offsets).astype(np.float32))
    return enroll, window, probe.sfreq, list(probe.ch_names)


@pytest.fixture(scope="module")
def reference_score(signal):
    enroll, window, sfreq, ch = signal
    pipe = Pipeline(default_model(16), backend="reference")
    tpl = pipe.enroll([(enroll.data, enroll.sfreq, enroll.ch_names)])
    w = pipe.windows(window, sfreq, ch)
    return tpl, float(w.embeddings[0] @ tpl.embedding)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_window_to_score(benchmark, backend, signal, reference_score):
    _, window, sfreq, ch = signal
    template, expected = reference_score
    pipe = Pipeline(default_model(16), backend=backend)

    def one_window():
        w = pipe.windows(window, sfreq, ch)
        return float(w.embeddings[0] @ template.embedding), bool(w.accepted[0])

    for _ in range(20):  # warm-up (Numba compiles on first call)
        one_window()
    # the 300 µs target is absolute; with the reference typically near 1.5 ms here it
    # means about 5x the reference: recorded as a ratio only for the table.
    tag(benchmark, "pipeline: one 4-s 16-ch window, raw samples -> score", backend,
        baseline=(backend == "reference"),
        target=("p50 <= 300 us" if backend == "cython" else None))
    benchmark.extra_info["target_p50_us"] = 300
    score, accepted = benchmark(one_window)
    assert accepted
    assert score == pytest.approx(expected, abs=1e-4)
    if benchmark.stats is not None:  # None with --benchmark-disable (a smoke run)
        benchmark.extra_info["median_us"] = round(benchmark.stats.stats.median * 1e6, 1)
