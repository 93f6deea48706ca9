"""Artifact detection and quality scoring compiled with Numba.

One pass per (epoch, channel) row for the detector (non-finite, rail count, sum,
min/max, largest step) plus a second pass over the row, still in L1, for the
variance around the mean.  Quality adds two windowed DFT bins (50 and 60 Hz) from
precomputed tables (:func:`._quality_params.line_tables`) instead of an FFT.  All
statistics accumulate in float64 whatever the input dtype.  The formulas are those
of :mod:`nacf_core.artifacts`; :mod:`._ref_quality` is the oracle.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit
from ._shapes import check_epochs, check_reason
from ._quality_params import FLAT_RMS_UV, GOOD_P2P_UV, GOOD_RMS_UV, MAX_P2P_UV, line_tables

__all__ = ["detect_artifacts", "quality"]


@jit
def _detect_kernel(x, rail_uv, rail_fraction, flat_uv, p2p_uv, jump_uv, out):
    n_epochs, n_channels, n_times = x.shape
    min_railed = rail_fraction * n_times
    flat_var = flat_uv * flat_uv
    for e in range(n_epochs):
        for c in range(n_channels):
            finite = True
            n_railed = 0
            total = 0.0
            lo = np.inf
            hi = -np.inf
            jump = 0.0
            prev = 0.0
            for i in range(n_times):
                v = np.float64(x[e, c, i])
                if not np.isfinite(v):
                    finite = False
                    break
                if abs(v) >= rail_uv:
                    n_railed += 1
                total += v
                lo = min(lo, v)
                hi = max(hi, v)
                if i > 0:
                    jump = max(jump, abs(v - prev))
                prev = v
            if not finite:
                out[e, c] = 1  # NON_FINITE
                continue
            if n_railed > 0 and n_railed >= min_railed:
                out[e, c] = 2  # RAILED
                continue
            var = 0.0
            if n_times > 0:
                mean = total / n_times
                for i in range(n_times):
                    dv = np.float64(x[e, c, i]) - mean
                    var += dv * dv
                var /= n_times
            if hi == lo:  # constant: variance 0 exactly, whatever the summed mean
                var = 0.0
            if var < flat_var:
                out[e, c] = 3  # FLAT
            elif n_times > 0 and hi - lo > p2p_uv:
                out[e, c] = 4  # PEAK_TO_PEAK
            elif jump > jump_uv:
                out[e, c] = 5  # JUMP
            else:
                out[e, c] = 0  # OK


def detect_artifacts(epochs, sfreq, limits):
    """See :func:`nacf_core.artifacts.detect_artifacts` (no validation here)."""
    del sfreq
    check_epochs(epochs)
    out = np.empty(epochs.shape[:2], dtype=np.int8)
    _detect_kernel(epochs, float(limits.rail_uv), float(limits.rail_fraction),
                   float(limits.flat_uv), float(limits.peak_to_peak_uv),
                   float(limits.jump_uv), out)
    return out


@jit
def _quality_kernel(x, reason, tables, norm, flat_rms, good_rms, good_p2p, max_p2p,
                    per_channel, per_epoch):
    n_epochs, n_channels, n_times = x.shape
    n_tables = tables.shape[0]
    for e in range(n_epochs):
        epoch_sum = 0.0
        for c in range(n_channels):
            per_channel[e, c] = 0.0
            if reason[e, c] != 0 or n_times == 0:
                continue
            finite = True
            total = 0.0
            lo = np.inf
            hi = -np.inf
            repeats = 0
            prev = 0.0
            for i in range(n_times):
                v = np.float64(x[e, c, i])
                if not np.isfinite(v):
                    finite = False
                    break
                total += v
                lo = min(lo, v)
                hi = max(hi, v)
                if i > 0 and v == prev:
                    repeats += 1
                prev = v
            if not finite:
                continue
            mean = total / n_times
            var = 0.0
            line_var = 0.0
            for f in range(0, n_tables, 2):
                re = 0.0
                im = 0.0
                for i in range(n_times):
                    dv = np.float64(x[e, c, i]) - mean
                    re += dv * tables[f, i]
                    im += dv * tables[f + 1, i]
                line_var += norm * (re * re + im * im)
            for i in range(n_times):
                dv = np.float64(x[e, c, i]) - mean
                var += dv * dv
            var /= n_times
            rms = np.sqrt(var)
            line = min(1.0, line_var / var) if var > 0 else 0.0
            repeat_frac = repeats / (n_times - 1) if n_times > 1 else 0.0
            q_flat = min(1.0, max(0.0, (rms - flat_rms) / (good_rms - flat_rms)))
            q_flat *= 1.0 - repeat_frac
            q_range = min(1.0, max(0.0, (max_p2p - (hi - lo)) / (max_p2p - good_p2p)))
            q = (1.0 - line) * q_flat * q_range
            per_channel[e, c] = q
            epoch_sum += q
        per_epoch[e] = epoch_sum / n_channels if n_channels > 0 else 0.0


def quality(epochs, sfreq, reason):
    """See :func:`nacf_core.artifacts.quality` (no validation here)."""
    check_reason(epochs, reason)
    n_epochs, n_channels, n_times = epochs.shape
    tables, norm = line_tables(n_times, float(sfreq))
    per_channel = np.empty((n_epochs, n_channels), dtype=np.float64)
    per_epoch = np.empty(n_epochs, dtype=np.float64)
    _quality_kernel(epochs, reason, tables, norm, FLAT_RMS_UV, GOOD_RMS_UV, GOOD_P2P_UV,
                    MAX_P2P_UV, per_channel, per_epoch)
    return per_channel, per_epoch
