"""Artifact and quality kernels: the compiled backends agree with the NumPy reference.

Numba tests carry the ``numba_kernels`` marker: ``tests/test_numba_nojit.py`` reruns
them with ``NUMBA_DISABLE_JIT=1`` and ``NACF_HYPOTHESIS_PROFILE=small``, for which the
shapes below shrink (pure Python is slow).
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nacf_core.kernels import ArtifactLimits, ArtifactReason
from nacf_core.kernels import _ref_quality as ref
from nacf_core.kernels._cpu import supported_variants

SMALL = os.environ.get("NACF_HYPOTHESIS_PROFILE") == "small"
MAX_EPOCHS = 2 if SMALL else 4
MAX_CHANNELS = 3 if SMALL else 16
MAX_TIMES = 60 if SMALL else 2000
RAIL = 187_500.02  # what a Cyton writes for a railed channel

IMPLS = [
    pytest.param("nacf_core.kernels._nb_quality", id="numba", marks=pytest.mark.numba_kernels),
    pytest.param("nacf_core.kernels._cy_quality", id="cython"),
]


def _cy_variants():
    return [pytest.param(v, id=v) for v in supported_variants()]


@st.composite
def epoch_batches(draw):
    """(epochs, sfreq): random shapes, both dtypes, with the edge cases mixed in."""
    n_epochs = draw(st.integers(0, MAX_EPOCHS))
    n_channels = draw(st.integers(0, MAX_CHANNELS))
    n_times = draw(st.one_of(st.integers(0, 3), st.integers(0, MAX_TIMES)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    sfreq = draw(st.sampled_from([100.0, 125.0, 160.0, 250.0, 500.0, 1000.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 20.0, 150.0, 1000.0]))
    offset = draw(st.sampled_from([0.0, 60_000.0, -150_000.0]))
    x = offset + rng.normal(0.0, scale, (n_epochs, n_channels, n_times))
    t = np.arange(n_times) / sfreq
    x += draw(st.sampled_from([0.0, 10.0, 80.0])) * np.sin(2 * np.pi * 50.0 * t)
    x += draw(st.sampled_from([0.0, 10.0, 80.0])) * np.sin(2 * np.pi * 60.0 * t)
    rows = x.reshape(n_epochs * n_channels, n_times)
    if rows.shape[0] and n_times:
        for kind in draw(st.lists(st.sampled_from(
                ["nan", "inf", "rail", "rail_row", "zero", "const", "step", "spike", "held"]),
                max_size=6)):
            r = rng.integers(rows.shape[0])
            i = rng.integers(n_times)
            if kind == "nan":
                rows[r, i] = np.nan
            elif kind == "inf":
                rows[r, i] = rng.choice([np.inf, -np.inf])
            elif kind == "rail":
                rows[r, i:i + rng.integers(1, 20)] = rng.choice([RAIL, -RAIL, 187_500.0])
            elif kind == "rail_row":
                rows[r] = -RAIL
            elif kind == "zero":
                rows[r] = 0.0
            elif kind == "const":
                rows[r] = rng.normal(0, 1e4)
            elif kind == "step":
                rows[r, i:] += rng.choice([300.0, -1000.0])
            elif kind == "spike":
                rows[r, i] += rng.choice([250.0, -600.0])
            elif kind == "held":
                rows[r, i:i + rng.integers(1, 30)] = rows[r, i]
    return np.ascontiguousarray(x.astype(dtype)), sfreq


limits_st = st.builds(
    ArtifactLimits,
    rail_uv=st.sampled_from([187_000.0, 100_000.0, 187_500.02]),
    rail_fraction=st.sampled_from([0.0, 0.01, 0.5, 1.0]),
    flat_uv=st.sampled_from([0.0, 0.5, 5.0]),
    peak_to_peak_uv=st.sampled_from([100.0, 500.0, 1e9]),
    jump_uv=st.sampled_from([50.0, 200.0, 1e9]),
)


def _assert_reason_matches(got, epochs, limits):
    want = ref.detect_artifacts(epochs, 250.0, limits)
    assert got.dtype == np.int8 and got.shape == want.shape
    # The variance sums in a different order than NumPy: ignore rows whose standard
    # deviation sits on the FLAT threshold to within rounding.
    stats = ref.artifact_stats(epochs)
    var = stats["std"] ** 2
    fl = limits.flat_uv ** 2
    on_edge = ~stats["non_finite"] & (np.abs(var - fl) <= 1e-9 * np.maximum(var, fl))
    np.testing.assert_array_equal(got[~on_edge], want[~on_edge])


def _assert_quality_matches(got, epochs, sfreq, reason):
    want = ref.quality(epochs, sfreq, reason)
    for g, w in zip(got, want):
        assert g.dtype == np.float64 and g.shape == w.shape
        assert ((g >= 0) & (g <= 1)).all()
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
@given(batch=epoch_batches(), limits=limits_st)
def test_detect_matches_reference(impl, batch, limits):
    mod = importlib.import_module(impl)
    epochs, sfreq = batch
    _assert_reason_matches(mod.detect_artifacts(epochs, sfreq, limits), epochs, limits)


@pytest.mark.parametrize("impl", IMPLS)
@given(batch=epoch_batches())
def test_quality_matches_reference(impl, batch):
    mod = importlib.import_module(impl)
    epochs, sfreq = batch
    reason = ref.detect_artifacts(epochs, sfreq, ArtifactLimits())
    _assert_quality_matches(mod.quality(epochs, sfreq, reason), epochs, sfreq, reason)
    # And with every channel declared OK: the kernel must score what it sees.
    ok = np.zeros_like(reason)
    _assert_quality_matches(mod.quality(epochs, sfreq, ok), epochs, sfreq, ok)


@pytest.mark.parametrize("variant", _cy_variants())
@given(batch=epoch_batches(), limits=limits_st)
def test_every_isa_variant_agrees(variant, batch, limits):
    mod = importlib.import_module("nacf_core.kernels._cy_quality")
    kernel = importlib.import_module(f"nacf_core.kernels._cy_quality_{variant}")
    epochs, sfreq = batch
    reason = mod.detect_artifacts(epochs, sfreq, limits, _module=kernel)
    _assert_reason_matches(reason, epochs, limits)
    got = mod.quality(epochs, sfreq, reason, _module=kernel)
    _assert_quality_matches(got, epochs, sfreq, reason)


@pytest.mark.parametrize("impl", IMPLS + [pytest.param("nacf_core.kernels._ref_quality",
                                                       id="reference")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_cases(impl, dtype):
    mod = importlib.import_module(impl)
    lim = ArtifactLimits()
    R = ArtifactReason
    # Empty shapes.
    for shape in [(0, 3, 10), (2, 0, 10), (2, 3, 0)]:
        x = np.zeros(shape, dtype)
        reason = mod.detect_artifacts(x, 250.0, lim)
        assert reason.shape == shape[:2] and reason.dtype == np.int8
        assert (reason == R.FLAT).all()  # no samples: no signal
        pc, pe = mod.quality(x, 250.0, np.zeros(shape[:2], np.int8))
        assert pc.shape == shape[:2] and pe.shape == shape[:1]
        assert (pc == 0).all() and (pe == 0).all()
    # One sample: flat (standard deviation 0) unless non-finite or railed.
    x = np.array([[[5.0], [np.nan], [-RAIL], [np.inf]]], dtype)
    assert mod.detect_artifacts(x, 250.0, lim).tolist() == [[R.FLAT, R.NON_FINITE, R.RAILED,
                                                              R.NON_FINITE]]
    # Constant rows, at the rails and anywhere else; the exact rail edge.
    n = 500
    rows = [np.full(n, 187_500.0), np.full(n, -RAIL), np.full(n, 1234.5), np.zeros(n),
            np.r_[np.zeros(n - 1), 187_000.0], np.r_[np.zeros(n - 1), 186_999.9]]
    x = np.ascontiguousarray(np.stack(rows)[None].astype(dtype))
    got = mod.detect_artifacts(x, 250.0, lim)
    assert got.tolist() == [[R.RAILED, R.RAILED, R.FLAT, R.FLAT, R.RAILED, R.PEAK_TO_PEAK]]
    pc, pe = mod.quality(x, 250.0, np.zeros((1, 6), np.int8))
    assert (pc[0, :4] == 0).all()  # constant: flat
    # Constant rows at huge finite offsets (rails out of reach): standard deviation 0,
    # FLAT. Summed one sample at a time their mean came out off by thousands and more
    # (1e20 * 500 is not exact in float64), so the compiled kernels measured a variance
    # in the millions and said OK where the reference says FLAT.
    far = ArtifactLimits(rail_uv=1e308, peak_to_peak_uv=1e308, jump_uv=1e308)
    rows = [np.full(n, v) for v in (1e20, -1e30, 3e38, 123456789.123, 1.7e15 + 0.5)]
    x = np.ascontiguousarray(np.stack(rows)[None].astype(dtype))
    assert mod.detect_artifacts(x, 250.0, far).tolist() == [[R.FLAT] * 5]
    # Non-finite data scores 0 whatever the reason code says.
    x = np.random.default_rng(0).normal(0, 10, (1, 2, 300)).astype(dtype)
    x[0, 1, 3] = np.nan
    pc, _ = mod.quality(x, 250.0, np.zeros((1, 2), np.int8))
    assert pc[0, 0] > 0.5 and pc[0, 1] == 0.0
