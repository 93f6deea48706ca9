"""Validated IIR filtering: the public face of the filter kernels.

Every function checks its inputs once (shapes, dtypes, contiguity, parameter
ranges; errors name the parameter, what was expected and what came) and then calls
the kernel backend chosen by ``backend=`` (``"cython"``, ``"numba"`` or
``"reference"``; default ``NACF_KERNEL_BACKEND``, else ``"cython"``).

Conventions are :func:`scipy.signal.sosfilt`'s, restricted to 2-D signals:

- ``axis=-1``: ``x`` is ``(n_channels, n_times)``, state ``(n_sections, n_channels, 2)``.
- ``axis=0``: ``x`` is time-major ``(n_times, n_channels)`` as devices and the wire
  deliver samples, state ``(n_sections, 2, n_channels)``.
- The output dtype is ``numpy.result_type(sos, x[, zi])``: pass float32 ``sos`` and
  ``x`` (and ``zi``) for float32 work.  Accumulation precision: the kernels keep state
  and do every multiply-add in that working dtype, like SciPy; float32 therefore
  carries about 7 significant digits, which on a 60 000 µV Cyton DC offset is a few
  hundredths of a µV of rounding per sample.  Use float64 when that matters, or
  remove the offset with :func:`steady_state_zi`.
- Filtering a signal chunk by chunk, passing each chunk's ``zf`` as the next ``zi``,
  equals filtering it whole.

Example
-------
>>> import numpy as np
>>> from nacf_core import dsp
>>> sos = dsp.bandpass_sos(1.0, 40.0, 250.0, 4)
>>> x = np.random.default_rng(0).normal(size=(8, 500))
>>> zi = dsp.steady_state_zi(sos, x)
>>> y, zf = dsp.sosfilt(sos, x, zi=zi)
"""

from __future__ import annotations

import numpy as np

from nacf_core import kernels
from nacf_core._validation import (
    check_array,
    check_band,
    check_finite_positive,
    check_int_range,
    check_option,
    check_sfreq,
)

__all__ = ["sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos", "bandpass"]

_AXES = (-1, 0, 1, -2)
_FLOATS = (np.float32, np.float64)


def _backend(name):
    if name is not None:
        check_option("backend", name, kernels.BACKENDS)
    return kernels.backend(name)


def _check_axis(axis) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"'axis' must be an integer (-1 or 0), got {axis!r} instead.")
    check_option("axis", int(axis), _AXES)
    return 0 if int(axis) in (0, -2) else -1


def _check_sos(sos) -> np.ndarray:
    check_array("sos", sos, ndim=2, dtypes=_FLOATS, shape=(None, 6))
    if sos.shape[0] < 1:
        raise ValueError("'sos' must have at least one section, got shape (0, 6).")
    if not np.all(np.isfinite(sos)):
        raise ValueError("'sos' must contain only finite coefficients, got NaN or inf.")
    if not np.all(sos[:, 3] == 1):
        raise ValueError(
            f"'sos' must have sos[:, 3] == 1 (normalised sections), got {sos[:, 3].tolist()}."
        )
    return sos


def _check_x(x) -> np.ndarray:
    return check_array("x", x, ndim=2, dtypes=_FLOATS, c_contiguous=True)


def _zi_shape(n_sections: int, x: np.ndarray, axis: int) -> tuple[int, int, int]:
    if axis == 0:
        return (n_sections, 2, x.shape[1])
    return (n_sections, x.shape[0], 2)


def sosfilt(sos, x, axis=-1, zi=None, *, backend=None):
    """Filter ``x`` with cascaded second-order sections (``scipy.signal.sosfilt``).

    Parameters
    ----------
    sos : ndarray, shape (n_sections, 6), float32 or float64
        Second-order sections with ``sos[:, 3] == 1`` (e.g. from :func:`bandpass_sos`).
    x : ndarray, shape (n_channels, n_times) or (n_times, n_channels), C-contiguous
        Signal in microvolts; the layout follows ``axis``.
    axis : {-1, 0}
        ``-1`` (or 1): time is the last axis; ``0`` (or -2): time-major.
    zi : ndarray, optional
        Initial state, shape (n_sections, n_channels, 2) for ``axis=-1`` or
        (n_sections, 2, n_channels) for ``axis=0``.  None means zero state.
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    y : ndarray, same shape as ``x``, dtype ``numpy.result_type(sos, x[, zi])``
    zf : ndarray, shape of ``zi``
        The final state, returned only when ``zi`` is given.
    """
    sos = _check_sos(sos)
    x = _check_x(x)
    axis = _check_axis(axis)
    if zi is not None:
        check_array("zi", zi, ndim=3, dtypes=_FLOATS, shape=_zi_shape(sos.shape[0], x, axis))
    return _backend(backend).sosfilt(sos, x, axis=axis, zi=zi)


def steady_state_zi(sos, x, axis=-1, *, backend=None):
    """Filter state settled on each channel's first sample.

    ``sosfilt_zi(sos)[:, None, :] * x[None, :, :1]`` for ``axis=-1`` and
    ``sosfilt_zi(sos)[:, :, None] * x[:1]`` for ``axis=0``.  Starting from it, the
    output equals what a zero-state filter gives on ``x`` prefixed with a long
    constant run of its first sample: no ringing from a Cyton's DC offset.

    Parameters
    ----------
    sos : ndarray, shape (n_sections, 6)
    x : ndarray, shape (n_channels, n_times) or (n_times, n_channels), n_times >= 1
    axis : {-1, 0}
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    zi : ndarray, shape (n_sections, n_channels, 2) for ``axis=-1`` or
        (n_sections, 2, n_channels) for ``axis=0``, dtype ``result_type(sos, x)``
    """
    sos = _check_sos(sos)
    x = _check_x(x)
    axis = _check_axis(axis)
    n_times = x.shape[0] if axis == 0 else x.shape[1]
    if n_times < 1:
        raise ValueError(f"'x' must have at least one sample along axis {axis}, got {x.shape}.")
    return _backend(backend).steady_state_zi(sos, x, axis=axis)


def bandpass_sos(l_freq, h_freq, sfreq, order=4, *, backend=None):
    """Butterworth band-pass as second-order sections.

    ``scipy.signal.butter(order, [l_freq, h_freq], btype="band", fs=sfreq, output="sos")``.

    Parameters
    ----------
    l_freq, h_freq : float
        Pass band edges in Hz, ``0 < l_freq < h_freq < sfreq / 2``.
    sfreq : float
        Sampling rate in Hz.
    order : int
        Butterworth order (1-20); the filter has ``order`` sections.
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    sos : ndarray, shape (order, 6), float64
    """
    l_freq, h_freq, sfreq = check_band(l_freq, h_freq, sfreq)
    order = check_int_range("order", order, 1, 20)
    return _backend(backend).bandpass_sos(l_freq, h_freq, sfreq, order)


def notch_sos(freq, sfreq, quality=30.0, *, backend=None):
    """Second-order IIR notch (``scipy.signal.iirnotch``) as one section.

    Parameters
    ----------
    freq : float
        Frequency to remove in Hz, ``0 < freq < sfreq / 2`` (50 or 60 Hz mains).
    sfreq : float
        Sampling rate in Hz.
    quality : float
        ``freq`` over the -3 dB bandwidth (> 0).
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    sos : ndarray, shape (1, 6), float64
    """
    sfreq = check_sfreq(sfreq)
    freq = check_finite_positive("freq", freq)
    quality = check_finite_positive("quality", quality)
    if freq >= sfreq / 2.0:
        raise ValueError(f"freq ({freq}) must be less than Nyquist ({sfreq / 2.0}).")
    return _backend(backend).notch_sos(freq, sfreq, quality)


def bandpass(x, sfreq, l_freq, h_freq, *, order=4, axis=-1, zi=None, backend=None):
    """Band-pass ``x`` with a Butterworth filter of ``order`` (design + :func:`sosfilt`).

    The design is cast to ``x``'s dtype, so float32 ``x`` gets float32 work.

    Parameters
    ----------
    x : ndarray, shape (n_channels, n_times) or (n_times, n_channels), C-contiguous
    sfreq, l_freq, h_freq : float
        Sampling rate and pass band in Hz.
    order : int
    axis : {-1, 0}
    zi : ndarray or "steady", optional
        Initial state (see :func:`sosfilt`); ``"steady"`` starts from
        :func:`steady_state_zi` of ``x``.  None: zero state.
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    y : ndarray like ``x``
    zf : ndarray
        Only when ``zi`` is given.
    """
    x = _check_x(x)
    sos = bandpass_sos(l_freq, h_freq, sfreq, order, backend=backend).astype(x.dtype)
    if isinstance(zi, str):
        check_option("zi", zi, ["steady"])
        zi = steady_state_zi(sos, x, axis, backend=backend)
    return sosfilt(sos, x, axis, zi, backend=backend)


