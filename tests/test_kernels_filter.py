"""The filter kernels (Cython, every ISA variant, and Numba) against the SciPy reference."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import signal

from _filter_data import CYTON_FILES, load_cyton
from nacf_core.kernels import _cpu
from nacf_core.kernels import _ref_filter as ref

SMALL = os.environ.get("NACF_HYPOTHESIS_PROFILE") == "small"
MAX_CHANNELS = 6 if SMALL else 64
MAX_TIMES = 120 if SMALL else 20_000
MAX_SECTIONS = 3 if SMALL else 8
REAL_SECONDS = 1.0 if SMALL else 8.0  # of each real recording

MODULES = {"cython": "nacf_core.kernels._cy_filter", "numba": "nacf_core.kernels._nb_filter"}
COMPILED = [
    pytest.param("cython", id="cython"),
    pytest.param("numba", id="numba", marks=pytest.mark.numba_kernels),
]


def kernel(name):
    return importlib.import_module(MODULES[name])


def tolerance(dtype, scale):
    """Absolute tolerance: rounding in the working dtype on values of size ``scale``."""
    eps = 2e-5 if np.dtype(dtype) == np.float32 else 1e-10
    return eps * (1.0 + scale)


def assert_matches(actual, expected, dtype, scale):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance(dtype, scale))


def assert_as_accurate_as_scipy(actual, sos, x, axis, zi=None):
    """``actual`` (y or (y, zf)) against SciPy in the same dtype.

    float64: equal up to rounding.  float32: both are float32 recursions whose
    rounding a high-order filter amplifies, so the kernel's error against the float64
    result must be no larger than SciPy's own float32 error (x3, plus rounding).
    """
    dtype = np.result_type(sos, x) if zi is None else np.result_type(sos, x, zi)
    expected = ref.sosfilt(sos, x, axis, zi)
    truth = ref.sosfilt(sos.astype(np.float64), x.astype(np.float64), axis,
                        None if zi is None else zi.astype(np.float64))
    if zi is None:
        actual, expected, truth = (actual,), (expected,), (truth,)
    for a, e, t in zip(actual, expected, truth):
        assert a.dtype == e.dtype == dtype
        assert a.shape == e.shape
        scale = float(max(np.abs(x).max(initial=0.0), np.abs(t).max(initial=0.0)))
        if dtype == np.float64:
            np.testing.assert_allclose(a, e, rtol=0, atol=tolerance(dtype, scale))
        else:
            scipy_err = float(np.abs(e - t).max(initial=0.0))
            np.testing.assert_allclose(a, t, rtol=0,
                                       atol=3 * scipy_err + tolerance(dtype, scale))


@st.composite
def random_sos(draw, max_sections=MAX_SECTIONS):
    """Stable sections: a band-pass design or random poles inside the unit circle."""
    n = draw(st.integers(1, max_sections))
    if draw(st.booleans()):
        sfreq = 250.0
        lo = draw(st.floats(0.5, 20.0))
        hi = draw(st.floats(lo + 5.0, 100.0))
        return ref.bandpass_sos(lo, hi, sfreq, n)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    r = rng.uniform(0.1, 0.97, n)
    theta = rng.uniform(0.0, np.pi, n)
    sos = np.empty((n, 6))
    sos[:, :3] = rng.normal(size=(n, 3))
    sos[:, 3] = 1.0
    sos[:, 4] = -2.0 * r * np.cos(theta)
    sos[:, 5] = r * r
    return sos


def make_signal(seed, n_channels, n_times, axis, dtype, offset=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=50.0, size=(n_channels, n_times)) + offset
    if axis == 0:
        x = x.T
    return np.ascontiguousarray(x, dtype=dtype)


def zi_shape(n_sections, x, axis):
    return (n_sections, 2, x.shape[1]) if axis == 0 else (n_sections, x.shape[0], 2)


@pytest.mark.parametrize("name", COMPILED)
@given(
    sos=random_sos(),
    n_channels=st.integers(1, MAX_CHANNELS),
    n_times=st.integers(1, MAX_TIMES),
    axis=st.sampled_from([-1, 0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    with_zi=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_sosfilt_matches_reference(name, sos, n_channels, n_times, axis, dtype, with_zi, seed):
    sos = sos.astype(dtype)
    x = make_signal(seed, n_channels, n_times, axis, dtype, offset=1000.0)
    zi = None
    if with_zi:
        zi = np.random.default_rng(seed + 1).normal(scale=100.0, size=zi_shape(len(sos), x, axis))
        zi = zi.astype(dtype)
    assert_as_accurate_as_scipy(kernel(name).sosfilt(sos, x, axis, zi), sos, x, axis, zi)


@pytest.mark.parametrize("name", COMPILED)
@given(
    n_channels=st.integers(1, MAX_CHANNELS),
    n_times=st.integers(2, MAX_TIMES),
    axis=st.sampled_from([-1, 0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunked_equals_whole(name, n_channels, n_times, axis, dtype, cuts, seed):
    sos = ref.bandpass_sos(1.0, 40.0, 250.0, 4).astype(dtype)
    x = make_signal(seed, n_channels, n_times, axis, dtype, offset=60_000.0)
    k = kernel(name)
    zi = k.steady_state_zi(sos, x, axis)
    y_whole, zf_whole = k.sosfilt(sos, x, axis, zi)
    bounds = sorted({0, n_times, *(int(c * n_times) for c in cuts)})
    pieces, z = [], zi
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunk = x[a:b] if axis == 0 else np.ascontiguousarray(x[:, a:b])
        y, z = k.sosfilt(sos, chunk, axis, z)
        pieces.append(y)
    y_chunked = np.concatenate(pieces, axis=0 if axis == 0 else 1)
    # Same kernel, same arithmetic: chunking must not change a single bit.
    np.testing.assert_array_equal(y_chunked, y_whole)
    np.testing.assert_array_equal(z, zf_whole)


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
class TestEdgeCases:
    sos = ref.bandpass_sos(1.0, 40.0, 250.0, 4)

    def _both(self, name, x, axis, zi=None):
        sos = self.sos.astype(x.dtype)
        return ref.sosfilt(sos, x, axis, zi), kernel(name).sosfilt(sos, x, axis, zi)

    def test_zero_length(self, name, axis, dtype):
        x = np.zeros((0, 5) if axis == 0 else (5, 0), dtype=dtype)
        zi = np.arange(np.prod(zi_shape(4, x, axis)), dtype=dtype).reshape(zi_shape(4, x, axis))
        (y_ref, zf_ref), (y, zf) = self._both(name, x, axis, zi)
        assert y.shape == y_ref.shape == x.shape and y.dtype == dtype
        np.testing.assert_array_equal(zf, zi)
        np.testing.assert_array_equal(zf_ref, zi)
        y_ref, y = self._both(name, x, axis)
        assert y.shape == y_ref.shape == x.shape

    def test_zero_channels(self, name, axis, dtype):
        x = np.zeros((7, 0) if axis == 0 else (0, 7), dtype=dtype)
        y_ref, y = self._both(name, x, axis)
        assert y.shape == y_ref.shape == x.shape

    def test_one_sample(self, name, axis, dtype):
        x = make_signal(1, 3, 1, axis, dtype, offset=60_000.0)
        zi = kernel(name).steady_state_zi(self.sos.astype(dtype), x, axis)
        (y_ref, zf_ref), (y, zf) = self._both(name, x, axis, zi)
        assert_matches(y, y_ref, dtype, 60_000.0)
        assert_matches(zf, zf_ref, dtype, 60_000.0)

    def test_non_finite_propagates_like_scipy(self, name, axis, dtype):
        x = make_signal(2, 4, 300, axis, dtype)
        idx = (slice(100, 101), 1) if axis == 0 else (1, slice(100, 101))
        x[idx] = np.nan
        idx2 = (slice(50, 51), 2) if axis == 0 else (2, slice(50, 51))
        x[idx2] = np.inf
        y_ref, y = self._both(name, x, axis)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(y_ref))
        finite = np.isfinite(y_ref)
        np.testing.assert_allclose(y[finite], y_ref[finite], atol=tolerance(dtype, 200.0))
        # Untouched channels stay finite.
        assert np.isfinite(y[:, 0] if axis == 0 else y[0]).all()

    def test_constant_signal_is_removed(self, name, axis, dtype):
        x = np.full((500, 3) if axis == 0 else (3, 500), 61_379.36, dtype=dtype)
        k = kernel(name)
        sos = self.sos.astype(dtype)
        y, _ = k.sosfilt(sos, x, axis, k.steady_state_zi(sos, x, axis))
        # A band-pass has zero DC gain: a settled filter outputs ~0 for a constant.
        assert np.abs(y).max() < (0.5 if dtype == np.float32 else 1e-6)

    def test_values_at_the_rails(self, name, axis, dtype):
        rng = np.random.default_rng(3)
        x = rng.choice([-187_500.0, 187_500.0], size=(400, 6) if axis == 0 else (6, 400))
        x = np.ascontiguousarray(x, dtype=dtype)
        assert_as_accurate_as_scipy(kernel(name).sosfilt(self.sos.astype(dtype), x, axis),
                                    self.sos.astype(dtype), x, axis)


@pytest.mark.parametrize("name", COMPILED)
def test_mixed_dtypes_follow_result_type(name):
    sos = ref.bandpass_sos(1.0, 40.0, 250.0, 2)
    x32 = make_signal(4, 3, 100, -1, np.float32)
    y = kernel(name).sosfilt(sos, x32)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref.sosfilt(sos, x32), atol=1e-9)
    y, zf = kernel(name).sosfilt(sos.astype(np.float32), x32, -1, np.zeros((2, 3, 2)))
    assert y.dtype == zf.dtype == np.float64


@pytest.mark.parametrize("name", [*COMPILED, "reference"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_steady_state_zi_formula(name, axis):
    mod = ref if name == "reference" else kernel(name)
    sos = ref.bandpass_sos(0.5, 45.0, 250.0, 4)
    x = make_signal(5, 7, 20, axis, np.float64, offset=60_000.0)
    zi = mod.steady_state_zi(sos, x, axis)
    if axis == -1:
        expected = signal.sosfilt_zi(sos)[:, None, :] * x[None, :, :1]
    else:
        expected = signal.sosfilt_zi(sos)[:, :, None] * x[:1]
    np.testing.assert_allclose(zi, expected, rtol=1e-12, atol=1e-9)
    assert zi.shape == zi_shape(4, x, axis)
    zi32 = mod.steady_state_zi(sos.astype(np.float32), x.astype(np.float32), axis)
    assert zi32.dtype == np.float32


@pytest.mark.parametrize("name", [*COMPILED, "reference"])
@pytest.mark.parametrize("rel", CYTON_FILES)
def test_steady_state_equals_settled_filter_on_real_recordings(name, rel, shared_data):
    """Oracle: starting from steady_state_zi equals a zero-state filter that first saw
    30 s of the first sample, from the first sample on."""
    mod = ref if name == "reference" else kernel(name)
    data, sfreq = load_cyton(shared_data, rel, seconds=REAL_SECONDS)
    x = np.ascontiguousarray(data.T)  # (n_channels, n_times)
    sos = ref.bandpass_sos(1.0, 40.0, sfreq, 4)
    y, _ = mod.sosfilt(sos, x, -1, mod.steady_state_zi(sos, x, -1))
    n_pad = int(30 * sfreq)
    padded = np.concatenate([np.repeat(x[:, :1], n_pad, axis=1), x], axis=1)
    settled = signal.sosfilt(sos, padded, axis=-1)[:, n_pad:]
    np.testing.assert_allclose(y, settled, rtol=0, atol=1e-6)
    # Time-major layout gives the same.
    yt, _ = mod.sosfilt(sos, data, 0, mod.steady_state_zi(sos, data, 0))
    np.testing.assert_allclose(yt.T, settled, rtol=0, atol=1e-6)
    # Whereas a zero initial state rings at thousands of µV on these DC offsets.
    if np.abs(x[:, 0]).max() > 10_000:
        assert np.abs(mod.sosfilt(sos, x)[:, : int(sfreq)]).max() > 1_000
    # The oracle checks something: the settled output is EEG-sized, not ringing.
    assert np.abs(settled[:, : int(sfreq)]).max() < np.abs(x[:, 0]).max() / 10 + 1_000


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rel", CYTON_FILES)
def test_bandpass_matches_scipy_on_real_recordings(name, dtype, rel, shared_data):
    data, sfreq = load_cyton(shared_data, rel, seconds=REAL_SECONDS)
    sos = ref.bandpass_sos(1.0, 40.0, sfreq, 4).astype(dtype)
    for x, axis in ((np.ascontiguousarray(data.T, dtype=dtype), -1),
                    (np.ascontiguousarray(data, dtype=dtype), 0)):
        zi = ref.steady_state_zi(sos, x, axis)
        assert_as_accurate_as_scipy(kernel(name).sosfilt(sos, x, axis, zi), sos, x, axis, zi)


# ----------------------------------------------------------------------------- ISA variants
def _variant(isa):
    return importlib.import_module(f"nacf_core.kernels._cy_sosfilt_{isa}")


@pytest.mark.parametrize("isa", _cpu.supported_variants())
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_isa_variant_gives_the_same_results(isa, axis, dtype):
    from nacf_core.kernels import _cy_filter

    sos = ref.bandpass_sos(1.0, 40.0, 250.0, 4).astype(dtype)
    # 300 channels: several channel blocks plus a ragged tail.
    x = make_signal(6, 300, 700, axis, dtype, offset=30_000.0)
    zi = ref.steady_state_zi(sos, x, axis)
    y_base, zf_base = _cy_filter.sosfilt(sos, x, axis, zi, _module=_variant("baseline"))
    y, zf = _cy_filter.sosfilt(sos, x, axis, zi, _module=_variant(isa))
    y_ref, _ = ref.sosfilt(sos, x, axis, zi)
    # No multiply-add contraction in any build: every variant rounds exactly as
    # SciPy's loop does, so the results are bit-identical.
    np.testing.assert_array_equal(y, y_base)
    np.testing.assert_array_equal(zf, zf_base)
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("isa", _cpu.supported_variants())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_time_major_wavefront_is_bit_identical_to_scipy(isa, dtype):
    """The time-major path (the wavefront kernel: lane blocks of two vectors, four
    sections per pass) at every lane count around the vector widths of each variant,
    1 to 9 sections (several passes), signals shorter than the cascade, and state in
    and out: bit-identical to SciPy."""
    from nacf_core.kernels import _cy_filter

    rng = np.random.default_rng(7)
    mod = _variant(isa)
    for n_sections in (1, 2, 3, 4, 5, 8, 9):
        z, p, k = signal.butter(n_sections * 2, [0.05, 0.4], btype="bandpass", output="zpk")
        sos = signal.zpk2sos(z, p, k)[:n_sections].astype(dtype)
        for n_ch in (1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65):
            for n_t in (1, 2, 3, 5, 257):
                x = (rng.normal(size=(n_t, n_ch)) * 50 + 1000).astype(dtype)
                zi = rng.normal(size=(n_sections, 2, n_ch)).astype(dtype)
                y, zf = _cy_filter.sosfilt(sos, x, 0, zi, _module=mod)
                y_ref, zf_ref = signal.sosfilt(sos, x, axis=0, zi=zi)
                np.testing.assert_array_equal(y, y_ref, err_msg=f"{n_sections} {n_ch} {n_t}")
                np.testing.assert_array_equal(zf, zf_ref, err_msg=f"{n_sections} {n_ch} {n_t}")


@pytest.mark.parametrize("isa", _cpu.supported_variants())
def test_every_isa_variant_of_the_zero_phase_kernel_is_bit_identical_to_scipy(isa):
    """``sosfiltfilt_f64`` (PAD's zero-phase band-pass, called through kernel_module())
    of every variant this CPU runs: scipy.signal.sosfiltfilt's bits at lane counts
    around each variant's vector widths, signals just longer than the pad, one and
    several sections, values from 0 to far offsets."""
    mod = _variant(isa)
    rng = np.random.default_rng(11)
    for order in (1, 4):
        sos = signal.butter(order, [1.0, 40.0], btype="bandpass", fs=250.0, output="sos")
        zi = np.ascontiguousarray(signal.sosfilt_zi(sos))
        padlen = 3 * (2 * len(sos) + 1)
        for n_ch in (1, 3, 4, 5, 8, 9, 16, 17, 33):
            for n in (padlen + 1, padlen + 2, padlen + 9, 1000):
                x = rng.normal(scale=50.0, size=(n_ch, n)) + rng.choice([0.0, 3e4, 1e12])
                out = np.empty_like(x)
                if not mod.sosfiltfilt_f64(sos, zi, x, padlen, out):
                    pytest.skip(f"the {isa} build has no wavefront kernel")
                want = signal.sosfiltfilt(sos, x, axis=-1, padlen=padlen)
                np.testing.assert_array_equal(out, want, err_msg=f"{order} {n_ch} {n}")


def test_isa_choice_follows_cpu_and_env():
    from nacf_core.kernels import _cy_filter

    forced = os.environ.get("NACF_KERNEL_ISA", "").strip().lower()
    assert _cy_filter.ISA == (forced or _cpu.supported_variants()[-1])
    code = "from nacf_core.kernels import _cy_filter as f; print(f.ISA)"
    env = {**os.environ, "NACF_KERNEL_ISA": "baseline"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "baseline"


def test_kernels_do_not_keep_the_gil():
    """The Cython loop releases the GIL: two threads filter concurrently without error."""
    import threading

    from nacf_core.kernels import _cy_filter

    sos = ref.bandpass_sos(1.0, 40.0, 250.0, 4)
    x = make_signal(7, 16, 5000, -1, np.float64)
    expected = ref.sosfilt(sos, x)
    results = []
    threads = [threading.Thread(target=lambda: results.append(_cy_filter.sosfilt(sos, x)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for y in results:
        assert_matches(y, expected, np.float64, 200.0)
    src = (_cpu.__file__.rsplit("/", 1)[0]) + "/_sosfilt.pxi"
    with open(src) as fh:
        assert "with nogil:" in fh.read()


@pytest.mark.parametrize("layout", ["read-only", "fortran", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_takes_any_sos_layout_the_compiled_backends_take(layout, dtype):
    """A read-only (np.load(mmap_mode="r"), a shared design), Fortran-ordered or strided
    ``sos`` filters through the reference as through the compiled backends; SciPy's
    sosfilt refused the first two ("buffer source array is read-only", "ndarray is not
    C-contiguous")."""
    base = ref.bandpass_sos(1.0, 40.0, 250.0, 4).astype(dtype)
    if layout == "read-only":
        sos = base.copy()
        sos.setflags(write=False)
    elif layout == "fortran":
        sos = np.asfortranarray(base)
    else:
        sos = np.repeat(base, 2, axis=0)[::2]
    x = make_signal(6, 3, 200, -1, dtype)
    zi = np.ones((4, 3, 2), dtype)
    want = signal.sosfilt(base, x, zi=zi)
    for got in (ref.sosfilt(sos, x, -1, zi), kernel("cython").sosfilt(sos, x, -1, zi)):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(ref.sosfilt(sos, x), signal.sosfilt(base, x))
