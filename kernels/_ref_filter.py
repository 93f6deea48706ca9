"""Reference IIR filtering: SciPy itself.

The oracle the compiled backends are tested against and the baseline of
``benches/bench_sosfilt.py``.  Never the hot path.  The filter *design* helpers
(:func:`bandpass_sos`, :func:`notch_sos`) are shared by every backend: designing a
filter is a one-off, not a loop worth compiling.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

__all__ = ["sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos"]


def sosfilt(sos, x, axis=-1, zi=None):
    """``scipy.signal.sosfilt`` (2-D ``x``; ``axis`` -1 or 0).

    Two additions: an empty ``x`` returns an empty ``y`` (and ``zf`` equal to ``zi``),
    where SciPy 1.17 fails to reshape a zero-length time axis; and ``sos`` may be any
    array the compiled backends take (read-only, Fortran-ordered, strided), where SciPy
    hands it as is to a writable C-contiguous buffer and fails ("buffer source array is
    read-only", "ndarray is not C-contiguous"): it is copied (n_sections x 6 values).
    """
    sos = np.array(sos, order="C", copy=True)
    if np.size(x) == 0:
        dtype = np.result_type(sos, x) if zi is None else np.result_type(sos, x, zi)
        y = np.empty(np.shape(x), dtype=dtype)
        return y if zi is None else (y, np.array(zi, dtype=dtype, copy=True))
    return signal.sosfilt(sos, x, axis=axis, zi=zi)


def steady_state_zi(sos, x, axis=-1):
    """Filter state settled on each channel's first sample.

    ``sosfilt_zi(sos)[:, None, :] * x[None, :, :1]`` for ``axis=-1`` (shape
    ``(n_sections, n_channels, 2)``) and ``sosfilt_zi(sos)[:, :, None] * x[:1]`` for
    ``axis=0`` (shape ``(n_sections, 2, n_channels)``), in ``numpy.result_type(sos, x)``.
    """
    dtype = np.result_type(sos, x)
    zi = signal.sosfilt_zi(np.asarray(sos, dtype=np.float64))
    if axis in (-1, 1):
        out = zi[:, None, :] * x[None, :, :1]
    else:
        out = zi[:, :, None] * x[:1]
    return np.ascontiguousarray(out, dtype=dtype)


def bandpass_sos(l_freq, h_freq, sfreq, order):
    """``scipy.signal.butter(order, [l_freq, h_freq], btype="band", fs=sfreq, output="sos")``.

    Returns
    -------
    sos : ndarray, shape (order, 6), float64
        A band-pass of order ``order`` has ``2 * order`` poles, hence ``order`` sections.
    """
    return signal.butter(order, [l_freq, h_freq], btype="band", fs=sfreq, output="sos")


def notch_sos(freq, sfreq, quality):
    """A second-order IIR notch at ``freq`` Hz (``scipy.signal.iirnotch``) as one section.

    Returns
    -------
    sos : ndarray, shape (1, 6), float64
        ``quality`` is ``freq`` over the -3 dB bandwidth.
    """
    b, a = signal.iirnotch(freq, quality, fs=sfreq)
    return signal.tf2sos(b, a)
