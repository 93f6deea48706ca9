"""Artifact detection + quality scoring against the plain NumPy version.

Run: ``python -m pytest benches/bench_artifacts.py --benchmark-only`` (or ``nacf
kernels bench``).  One group per dtype, shape (64 epochs, 16 channels, 1 000 samples):
cython and numba against the NumPy reference (``kernels/_ref_quality.py``, baseline),
each timing ``detect_artifacts`` followed by ``quality`` as the pipeline calls them.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tag
from nacf_core.kernels import ArtifactLimits, _cy_quality, _nb_quality, _ref_quality

SHAPE = (64, 16, 1000)
SFREQ = 250.0
MODULES = {"cython": _cy_quality, "numba": _nb_quality, "numpy": _ref_quality}


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def epochs(request) -> np.ndarray:
    """Bandpass-like EEG (20 µV, 50 Hz line noise) with a few artifacts mixed in."""
    rng = np.random.default_rng(0)
    t = np.arange(SHAPE[2]) / SFREQ
    x = rng.normal(0.0, 20.0, SHAPE) + 5.0 * np.sin(2 * np.pi * 50.0 * t)
    x[3, 2] = 0.0
    x[5, 7, 400:] += 800.0
    x[9, 1, 10] = np.nan
    x[11, 4, 100:120] = -187_500.02
    return np.ascontiguousarray(x.astype(request.param))


def _run(mod, epochs, limits):
    reason = mod.detect_artifacts(epochs, SFREQ, limits)
    per_channel, per_epoch = mod.quality(epochs, SFREQ, reason)
    return reason, per_channel, per_epoch


@pytest.mark.parametrize("impl", list(MODULES))
def test_detect_and_quality(benchmark, epochs, impl):
    limits = ArtifactLimits()
    mod = MODULES[impl]
    _run(mod, epochs, limits)  # warm-up (Numba compiles on first call)
    tag(benchmark, f"detect_artifacts+quality {SHAPE} {epochs.dtype.name}", impl,
        baseline=(impl == "numpy"), n_items=SHAPE[0], item="epoch")
    reason, per_channel, per_epoch = benchmark(_run, mod, epochs, limits)
    want = _run(_ref_quality, epochs, limits)
    np.testing.assert_array_equal(reason, want[0])
    np.testing.assert_allclose(per_channel, want[1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(per_epoch, want[2], rtol=1e-7, atol=1e-9)
