"""The validated public filter layer, nacf_core.dsp."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from _filter_data import load_cyton
from nacf_core import dsp

BACKENDS = ["reference", "numba", "cython"]
SOS = signal.butter(4, [1.0, 40.0], btype="band", fs=250.0, output="sos")


@pytest.fixture
def x():
    return np.random.default_rng(0).normal(scale=20.0, size=(4, 300)) + 60_000.0


def test_bandpass_sos_is_butter():
    np.testing.assert_array_equal(dsp.bandpass_sos(1.0, 40.0, 250.0, 4, backend="reference"),
                                  SOS)
    assert dsp.bandpass_sos(8, 30, 250, 2, backend="reference").shape == (2, 6)


def test_notch_sos_is_iirnotch():
    b, a = signal.iirnotch(50.0, 30.0, fs=250.0)
    sos = dsp.notch_sos(50.0, 250.0, 30.0, backend="reference")
    assert sos.shape == (1, 6)
    np.testing.assert_allclose(signal.sos2tf(sos)[0], b, rtol=1e-12)
    np.testing.assert_allclose(signal.sos2tf(sos)[1], a, rtol=1e-12)
    # It removes a 50 Hz tone and passes 10 Hz.
    t = np.arange(5000) / 250.0
    tone = np.sin(2 * np.pi * 50 * t)[None, :]
    alpha = np.sin(2 * np.pi * 10 * t)[None, :]
    assert np.abs(dsp.sosfilt(sos, tone, backend="reference")[:, 2500:]).max() < 1e-3
    assert np.abs(dsp.sosfilt(sos, alpha, backend="reference")[:, 2500:]).max() > 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_sosfilt_dispatches_to_backend(backend, x):
    y = dsp.sosfilt(SOS, x, backend=backend)
    np.testing.assert_allclose(y, signal.sosfilt(SOS, x), atol=1e-8)
    zi = dsp.steady_state_zi(SOS, x, backend=backend)
    y, zf = dsp.sosfilt(SOS, x, zi=zi, backend=backend)
    y_ref, zf_ref = signal.sosfilt(SOS, x, zi=zi)
    np.testing.assert_allclose(y, y_ref, atol=1e-8)
    np.testing.assert_allclose(zf, zf_ref, atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [0, -1, 1, -2])
def test_axis_aliases(backend, axis, x):
    xa = x if axis in (-1, 1) else np.ascontiguousarray(x.T)
    y = dsp.sosfilt(SOS, xa, axis=axis, backend=backend)
    np.testing.assert_allclose(y, signal.sosfilt(SOS, xa, axis=axis), atol=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bandpass_float32_work_and_steady_start(backend, x):
    x32 = x.astype(np.float32)
    y, zf = dsp.bandpass(x32, 250.0, 1.0, 40.0, zi="steady", backend=backend)
    assert y.dtype == zf.dtype == np.float32
    # Settled on the DC offset: no ringing at the start.
    assert np.abs(y[:, :50]).max() < 200.0
    y64 = dsp.bandpass(x, 250.0, 1.0, 40.0, backend=backend)
    assert y64.dtype == np.float64 and np.abs(y64[:, :250]).max() > 1_000


def test_default_backend_from_env(monkeypatch, x):
    monkeypatch.setenv("NACF_KERNEL_BACKEND", "reference")
    np.testing.assert_array_equal(dsp.sosfilt(SOS, x), signal.sosfilt(SOS, x))
    monkeypatch.setenv("NACF_KERNEL_BACKEND", "fortran")
    with pytest.raises(ValueError, match="NACF_KERNEL_BACKEND"):
        dsp.sosfilt(SOS, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bandpass_matches_scipy_on_a_real_recording(backend, shared_data):
    data, sfreq = load_cyton(shared_data, "openbci/cyton-eyes/OpenBCI-RAW-EyesOpen.txt")
    y, _ = dsp.bandpass(data, sfreq, 1.0, 40.0, axis=0, zi="steady", backend=backend)
    sos = signal.butter(4, [1.0, 40.0], btype="band", fs=sfreq, output="sos")
    zi = signal.sosfilt_zi(sos)[:, :, None] * data[:1]
    np.testing.assert_allclose(y, signal.sosfilt(sos, data, axis=0, zi=zi)[0], atol=1e-6)


# ----------------------------------------------------------------------------- bad input
BAD_SOSFILT = [
    # (kwargs overriding the good call, exception, text that must appear)
    (dict(x=np.zeros(10)), ValueError, "'x' must be 2-D"),
    (dict(x=np.zeros((2, 3, 4))), ValueError, "'x' must be 2-D"),
    (dict(x=np.zeros((2, 10), dtype=np.int64)), TypeError,
     "'x' must have dtype float32 or float64, got int64"),
    (dict(x=np.zeros((4, 20))[:, ::2]), ValueError, "'x' must be C-contiguous"),
    (dict(x=[[1.0, 2.0]]), TypeError, "'x' must be a numpy.ndarray, got list"),
    (dict(sos=SOS[:, :5].copy()), ValueError, "'sos' must have shape (any, 6)"),
    (dict(sos=SOS.astype(np.int32)), TypeError, "'sos' must have dtype"),
    (dict(sos=SOS * 2), ValueError, "'sos' must have sos[:, 3] == 1"),
    (dict(sos=np.zeros((0, 6))), ValueError, "'sos' must have at least one section"),
    (dict(sos=np.where(SOS == SOS[0, 0], np.nan, SOS)), ValueError,
     "'sos' must contain only finite"),
    (dict(axis=2), ValueError, "Invalid value for the 'axis' parameter"),
    (dict(axis=0.0), TypeError, "'axis' must be an integer"),
    (dict(zi=np.zeros((4, 2, 2, 1))), ValueError, "'zi' must be 3-D"),
    (dict(zi=np.zeros((4, 3, 2))), ValueError, "'zi' must have shape (4, 2, 2)"),
    (dict(zi=np.zeros((4, 2, 2), dtype=np.int64)), TypeError, "'zi' must have dtype"),
    (dict(backend="gpu"), ValueError, "Invalid value for the 'backend' parameter"),
]


@pytest.mark.parametrize("kwargs, exc, text", BAD_SOSFILT)
def test_sosfilt_bad_input_names_the_parameter(kwargs, exc, text):
    call = dict(sos=SOS, x=np.zeros((3, 10)), axis=-1, zi=None, backend="reference")
    if "zi" in kwargs:
        call["x"] = np.zeros((2, 10))  # zi must be (4, 2, 2)
    call.update(kwargs)
    with pytest.raises(exc) as info:
        dsp.sosfilt(call.pop("sos"), call.pop("x"), **call)
    assert text in str(info.value)


@pytest.mark.parametrize("args, exc, text", [
    ((40.0, 1.0, 250.0), ValueError, "l_freq (40.0) must be less than h_freq (1.0)"),
    ((10.0, 10.0, 250.0), ValueError, "must be less than h_freq"),
    ((1.0, 125.0, 250.0), ValueError, "h_freq (125.0) must be less than Nyquist (125.0)"),
    ((1.0, 200.0, 250.0), ValueError, "Nyquist"),
    ((1.0, 40.0, float("nan")), ValueError, "'sfreq' must be a finite number > 0, got nan"),
    ((1.0, 40.0, -250.0), ValueError, "'sfreq' must be a finite number > 0, got -250.0"),
    ((1.0, 40.0, 0.0), ValueError, "'sfreq'"),
    ((-1.0, 40.0, 250.0), ValueError, "'l_freq'"),
    ((1.0, float("inf"), 250.0), ValueError, "'h_freq'"),
    ((1.0, 40.0, "fast"), TypeError, "'sfreq' must be a real number"),
])
def test_bandpass_sos_bad_band(args, exc, text):
    with pytest.raises(exc) as info:
        dsp.bandpass_sos(*args)
    assert text in str(info.value)


@pytest.mark.parametrize("order, exc", [(0, ValueError), (21, ValueError), (2.5, TypeError),
                                        (True, TypeError)])
def test_bandpass_sos_bad_order(order, exc):
    with pytest.raises(exc, match="'order'"):
        dsp.bandpass_sos(1.0, 40.0, 250.0, order)


@pytest.mark.parametrize("args, exc, text", [
    ((130.0, 250.0, 30.0), ValueError, "freq (130.0) must be less than Nyquist (125.0)"),
    ((50.0, float("nan"), 30.0), ValueError, "'sfreq'"),
    ((50.0, 250.0, -1.0), ValueError, "'quality'"),
    ((0.0, 250.0, 30.0), ValueError, "'freq'"),
])
def test_notch_sos_bad_input(args, exc, text):
    with pytest.raises(exc) as info:
        dsp.notch_sos(*args)
    assert text in str(info.value)


def test_steady_state_zi_needs_a_sample():
    with pytest.raises(ValueError, match="'x' must have at least one sample"):
        dsp.steady_state_zi(SOS, np.zeros((3, 0)), backend="reference")


def test_bandpass_bad_zi_option(x):
    with pytest.raises(ValueError, match="Invalid value for the 'zi' parameter"):
        dsp.bandpass(x, 250.0, 1.0, 40.0, zi="settled", backend="reference")
