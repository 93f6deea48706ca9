"""The three backends agree through the public layer on hostile inputs.

Hypothesis draws signals that files and devices can deliver and that the other kernel
tests keep away from: big-endian or read-only arrays, float32 or float64, one or many
channels, signals shorter than the filter's state, NaN and infinities, denormals, huge
finite values (1e20 to 1e300, whose squares overflow), and constant rows far from zero.
The compiled backends must give what the reference gives: the filters bit for bit (no
build fuses multiply-adds), the artifact codes exactly (but for a standard deviation
on the FLAT threshold to within rounding), the quality within rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nacf_core import artifacts, dsp
from nacf_core.kernels import ArtifactLimits
from nacf_core.kernels import _ref_quality as ref_quality

COMPILED = [pytest.param("numba", marks=pytest.mark.numba_kernels), "cython"]
SPECIAL = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e20, 3e38, 1e300, -1e300, 5e-324,
           1e-310, 1e-40, 0.0, -0.0]


@st.composite
def hostile(draw, ndim):
    """(array, dtype): C-contiguous, maybe big-endian and/or read-only."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    if ndim == 2:
        shape = (draw(st.sampled_from([1, 2, 3, 8, 17, 256])),
                 draw(st.sampled_from([0, 1, 2, 3, 5, 40, 300])))
    else:
        shape = (draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 5, 64])),
                 draw(st.sampled_from([0, 1, 2, 3, 64, 250])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 1e3, 1.8e5, 1e10, 1e20, -1e30]))
    scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 50.0, 1e4]))
    x = offset + scale * rng.normal(size=shape)
    flat = x.reshape(int(np.prod(shape[:-1])), shape[-1])
    for _ in range(draw(st.integers(0, 4))):  # special values at random places
        if flat.size:
            flat.flat[rng.integers(flat.size)] = draw(st.sampled_from(SPECIAL))
    if draw(st.booleans()) and flat.shape[0]:  # a whole row constant, maybe far away
        flat[rng.integers(flat.shape[0])] = draw(st.sampled_from([0.0, 1234.5, 1e20, -1e30]))
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    if draw(st.booleans()):
        x = x.astype(x.dtype.newbyteorder(">"))
    if draw(st.booleans()):
        x.setflags(write=False)
    return x


@pytest.mark.parametrize("name", COMPILED)
@given(x=hostile(2), axis=st.sampled_from([-1, 0]), order=st.integers(1, 4),
       sos_dtype=st.sampled_from([np.float32, np.float64]), with_zi=st.booleans())
def test_filters_agree_bit_for_bit_on_hostile_signals(name, x, axis, order, sos_dtype,
                                                      with_zi):
    sos = dsp.bandpass_sos(1.0, 40.0, 250.0, order).astype(sos_dtype)
    if axis == 0:
        x = np.ascontiguousarray(x.T)
    zi = None
    if with_zi:
        shape = (order, 2, x.shape[1]) if axis == 0 else (order, x.shape[0], 2)
        zi = np.random.default_rng(0).normal(scale=100.0, size=shape).astype(x.dtype)
    with np.errstate(all="ignore"):
        want = dsp.sosfilt(sos, x, axis, zi, backend="reference")
        got = dsp.sosfilt(sos, x, axis, zi, backend=name)
    for g, w in zip(got if zi is not None else (got,), want if zi is not None else (want,)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


limits = st.builds(
    ArtifactLimits,
    rail_uv=st.sampled_from([187_000.0, 1e308]),
    rail_fraction=st.sampled_from([0.0, 0.5]),
    flat_uv=st.sampled_from([0.0, 0.5, 1e10]),
    peak_to_peak_uv=st.sampled_from([500.0, 1e308]),
    jump_uv=st.sampled_from([200.0, 1e308]),
)


@pytest.mark.parametrize("name", COMPILED)
@given(epochs=hostile(3), lim=limits)
def test_artifact_codes_and_quality_agree_on_hostile_epochs(name, epochs, lim):
    want = artifacts.detect_artifacts(epochs, 250.0, lim, backend="reference")
    got = artifacts.detect_artifacts(epochs, 250.0, lim, backend=name)
    # the variance sums in another order than NumPy's: a standard deviation on the FLAT
    # threshold to within rounding may go either way
    with np.errstate(all="ignore"):
        stats = ref_quality.artifact_stats(epochs.astype(np.float64))
        var = stats["std"] ** 2
        fl = lim.flat_uv ** 2
        on_edge = ~stats["non_finite"] & (np.abs(var - fl) <= 1e-9 * np.maximum(var, fl))
    np.testing.assert_array_equal(got[~on_edge], want[~on_edge])
    ok = np.zeros(epochs.shape[:2], np.int8)
    with np.errstate(all="ignore"):
        q_want = artifacts.quality(epochs, 250.0, ok, backend="reference")
    q_got = artifacts.quality(epochs, 250.0, ok, backend=name)
    for g, w in zip(q_got, q_want):
        assert ((g >= 0) & (g <= 1)).all()
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9)


@st.composite
def hostile_match(draw):
    """(probes, templates, k): unit-norm float32 rows; some template rows NaN, infinite,
    huge (1e30), denormal or zero; maybe big-endian and/or read-only."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_probes = draw(st.sampled_from([1, 2, 3, 4, 5, 9]))  # both sides of the sgemm switch
    n_templates = draw(st.sampled_from([1, 2, 7, 40, 1100]))
    d = draw(st.sampled_from([1, 3, 16, 33]))

    def unit(n):
        a = rng.normal(size=(n, d))
        return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

    probes, templates = unit(n_probes), unit(n_templates)
    for _ in range(draw(st.integers(0, 3))):
        row = rng.integers(n_templates)
        v = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 1e-40, 0.0]))
        if draw(st.booleans()):
            templates[row] = v
        else:
            templates[row, rng.integers(d)] = v
    arrays = []
    for a in (probes, templates):
        if draw(st.booleans()):
            a = a.astype(">f4")
        if draw(st.booleans()):
            a.setflags(write=False)
        arrays.append(a)
    return arrays[0], arrays[1], draw(st.integers(1, n_templates))


@pytest.mark.parametrize("name", COMPILED)
@given(case=hostile_match())
def test_matching_agrees_on_hostile_templates(name, case):
    from nacf_core import matching

    probes, templates, k = case
    with np.errstate(all="ignore"):
        want = matching.cosine_scores(probes, templates, backend="reference")
        got = matching.cosine_scores(probes, templates, backend=name)
        want_i, want_s = matching.top_k(probes, templates, k, backend="reference")
    got_i, got_s = matching.top_k(probes, templates, k, backend=name)
    # float32 accumulation (BLAS / SIMD) against the float64 reference
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-4, atol=1e-5)
    # the same templates wherever the reference's scores leave no near-tie
    for p in range(probes.shape[0]):
        s = np.sort(want[p][np.isfinite(want[p])])[::-1]
        gaps = np.diff(s)
        if s.size == want.shape[1] and (gaps.size == 0 or np.abs(gaps).min() > 1e-4):
            np.testing.assert_array_equal(got_i[p], want_i[p])
