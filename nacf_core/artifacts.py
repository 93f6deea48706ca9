"""Artifact detection and signal quality: the validated public layer over the kernels.

Validate once, then call the kernel backend (``backend=`` or ``NACF_KERNEL_BACKEND``,
default ``"cython"``).  Errors name the parameter, what was expected and what came.

Which signal to pass
--------------------
The checks look at different things, so they want different versions of the signal:

=================  ==========================================  ============================
check              looks at                                    needs
=================  ==========================================  ============================
``NON_FINITE``     any NaN/inf sample                          any version
``RAILED``         ``abs(x) >= rail_uv`` (ADC full scale)      the **raw** signal in µV as
                                                               the device delivers it (DC
                                                               offset included; filtering
                                                               removes the rail level)
``FLAT``           standard deviation ``< flat_uv``            bandpassed (or raw)
``PEAK_TO_PEAK``   ``max - min > peak_to_peak_uv``             **bandpassed** (raw Cyton
                                                               data drifts by thousands
                                                               of µV within seconds)
``JUMP``           ``max |x[i+1] - x[i]| > jump_uv``           **bandpassed**
=================  ==========================================  ============================

So call ``detect_artifacts(filtered, sfreq, raw=raw)`` with both versions of the same
epochs: ``raw`` feeds NON_FINITE and RAILED, ``filtered`` every other check.  A railed
channel becomes a constant after the bandpass, so without ``raw`` it is still
rejected, as FLAT (or, while the filter rings at the rail edges, PEAK_TO_PEAK/JUMP).
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np

from ._validation import check_array, check_sfreq
from .kernels import ArtifactLimits, ArtifactReason, backend as _backend

__all__ = [
    "ArtifactLimits",
    "ArtifactReason",
    "detect_artifacts",
    "reject_artifacts",
    "quality",
    "score_quality",
]

_EPOCHS_SHAPE = "(n_epochs, n_channels, n_times)"


def _check_epochs(name: str, epochs) -> np.ndarray:
    if isinstance(epochs, np.ndarray) and epochs.ndim != 3:
        raise ValueError(
            f"{name!r} must be 3-D {_EPOCHS_SHAPE}, got a {epochs.ndim}-D array of shape "
            f"{epochs.shape} (use x[np.newaxis] for a single epoch)."
        )
    epochs = check_array(name, epochs, ndim=3, c_contiguous=True)
    if not epochs.dtype.isnative:  # big-endian: the compiled kernels read native order
        epochs = epochs.astype(epochs.dtype.newbyteorder("="))
    return epochs


def _check_limits(limits) -> ArtifactLimits:
    if limits is None:
        return ArtifactLimits()
    if not isinstance(limits, ArtifactLimits):
        raise TypeError(
            f"'limits' must be an ArtifactLimits instance, got {type(limits).__name__} instead."
        )
    for f in fields(limits):
        v = getattr(limits, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"'limits.{f.name}' must be a real number, got {v!r} instead.")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"'limits.{f.name}' must be a finite number >= 0, got {v!r} instead.")
    if limits.rail_uv == 0:
        raise ValueError("'limits.rail_uv' must be > 0 (every sample would be railed), got 0.")
    if limits.rail_fraction > 1:
        raise ValueError(
            f"'limits.rail_fraction' must be in [0, 1], got {limits.rail_fraction!r} instead."
        )
    return limits


def detect_artifacts(
    epochs: np.ndarray,
    sfreq: float,
    limits: ArtifactLimits | None = None,
    *,
    raw: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Flag bad (epoch, channel) pairs, with the reason.

    Each (epoch, channel) gets the first code, in this order, whose test holds:

    1. ``NON_FINITE``: a NaN or infinite sample.
    2. ``RAILED``: at least ``max(1, rail_fraction * n_times)`` samples with
       ``abs(x) >= rail_uv`` (the ADC's full scale: ±187 500 µV on a Cyton).
    3. ``FLAT``: standard deviation ``< flat_uv`` (zeroed or disconnected channel;
       empty and one-sample epochs have standard deviation 0).
    4. ``PEAK_TO_PEAK``: ``max - min > peak_to_peak_uv``.
    5. ``JUMP``: ``max |x[i+1] - x[i]| > jump_uv`` (a step, a pop, a lost packet).

    Statistics are computed in float64 whatever the input dtype.

    Parameters
    ----------
    epochs : ndarray, shape (n_epochs, n_channels, n_times), float32 or float64
        Bandpassed epochs in µV, C-contiguous (see the module docstring for what each
        check expects); big-endian input is read through a native-order copy.
    sfreq : float
        Sampling rate in Hz (finite, > 0).
    limits : ArtifactLimits, optional
        Thresholds in µV; default ``ArtifactLimits()``.
    raw : ndarray, shape (n_epochs, n_channels, n_times), float32 or float64, optional
        The same epochs before filtering, in µV as the device delivers them.  When given,
        RAILED is tested on ``raw`` only (a bandpass overshoots full-scale steps, so the
        filtered signal can cross the rail level where the device never clipped),
        NON_FINITE on both, the rest on ``epochs``; the first code in the order above
        wins.
    backend : {"cython", "numba", "reference"}, optional
        Kernel backend; default ``NACF_KERNEL_BACKEND`` or ``"cython"``.

    Returns
    -------
    reason : ndarray, shape (n_epochs, n_channels), int8
        :class:`ArtifactReason` codes; 0 (``OK``) means keep.
    """
    epochs = _check_epochs("epochs", epochs)
    sfreq = check_sfreq(sfreq)
    limits = _check_limits(limits)
    if raw is not None:
        raw = _check_epochs("raw", raw)
        if raw.shape != epochs.shape:
            raise ValueError(
                f"'raw' must have the shape of 'epochs' {epochs.shape}, got {raw.shape}."
            )
    kernels = _backend(backend)
    if raw is None:
        return kernels.detect_artifacts(epochs, sfreq, limits)
    # RAILED only on the raw signal: a bandpass overshoots a full-scale step, so the
    # filtered signal can cross the rail level where the device never clipped.
    reason = kernels.detect_artifacts(epochs, sfreq, replace(limits, rail_uv=math.inf))
    # Only the NON_FINITE and RAILED tests on the raw signal: the others can't fire.
    raw_only = replace(limits, flat_uv=0.0, peak_to_peak_uv=math.inf, jump_uv=math.inf)
    raw_reason = kernels.detect_artifacts(raw, sfreq, raw_only)
    take_raw = (raw_reason != 0) & ((reason == 0) | (raw_reason < reason))
    return np.where(take_raw, raw_reason, reason).astype(np.int8)


def _check_reason(reason, shape) -> np.ndarray:
    reason = check_array("reason", reason, ndim=2, dtypes=(np.int8,), shape=shape)
    if reason.size and (reason.min() < 0 or reason.max() > max(ArtifactReason)):
        bad = reason[(reason < 0) | (reason > max(ArtifactReason))][0]
        raise ValueError(
            f"'reason' must hold ArtifactReason codes 0..{int(max(ArtifactReason))}, "
            f"got {int(bad)}."
        )
    return np.ascontiguousarray(reason)


def quality(
    epochs: np.ndarray,
    sfreq: float,
    reason: np.ndarray | None = None,
    *,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Signal quality in [0, 1] per (epoch, channel) and per epoch.

    For each (epoch, channel), with ``x`` the epoch-channel, ``xc = x - mean(x)``,
    ``rms = sqrt(mean(xc**2))``, ``p2p = max(x) - min(x)``::

        q = q_line * q_flat * q_range           if reason == OK and x is finite
        q = 0                                   otherwise

        q_line  = 1 - min(1, (P50 + P60) / rms**2)
        q_flat  = clip((rms - 0.5) / (2.0 - 0.5), 0, 1) * (1 - repeat_frac)
        q_range = clip((500 - p2p) / (500 - 200), 0, 1)

        per_epoch = mean over channels of q     (artifact channels count as 0)

    ``P_f = 2 |X_f|**2 / sum(w)**2`` is the variance a sinusoid at the line frequency
    ``f`` (50 and 60 Hz; skipped when ``f >= sfreq / 2``) explains, from one windowed
    DFT bin ``X_f = sum_n w[n] xc[n] exp(-2 pi i f n / sfreq)`` with the
    half-sample-shifted Hann window ``w[n] = sin(pi (n + 1/2) / n_times)**2`` (two DFT
    bins, not an FFT).  ``repeat_frac`` is the fraction of consecutive samples that are
    exactly equal (stuck, zero-filled or held values; a live 24-bit ADC almost never
    repeats).  Amplitudes are in µV: an RMS under 0.5 µV is flat, over 2 µV is alive;
    a peak-to-peak range up to 200 µV is clean EEG, over 500 µV (the default
    ``ArtifactLimits.peak_to_peak_uv``) is an artifact.  So the score is 1 for a
    clean, live, line-noise-free channel and falls towards 0 as line noise, flatness or
    amplitude grow.  Pass **bandpassed** epochs: on raw Cyton data the DC drift alone
    drives ``q_range`` to 0, and with the bandpass the line term measures the line
    noise that reaches the features.

    Parameters
    ----------
    epochs : ndarray, shape (n_epochs, n_channels, n_times), float32 or float64
        Bandpassed epochs in µV, C-contiguous.
    sfreq : float
        Sampling rate in Hz (finite, > 0).
    reason : ndarray, shape (n_epochs, n_channels), int8, optional
        Artifact codes from :func:`detect_artifacts`; computed with the default limits
        when omitted.
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    per_channel : ndarray, shape (n_epochs, n_channels), float64
    per_epoch : ndarray, shape (n_epochs,), float64
    """
    epochs = _check_epochs("epochs", epochs)
    sfreq = check_sfreq(sfreq)
    if reason is None:
        reason = detect_artifacts(epochs, sfreq, backend=backend)
    else:
        reason = _check_reason(reason, epochs.shape[:2])
    return _backend(backend).quality(epochs, sfreq, reason)


reject_artifacts = detect_artifacts
score_quality = quality

