"""NumPy reference of artifact detection and quality scoring: the test oracle.

Written for clarity, not speed: every statistic is computed on its own, in float64,
exactly as the docstrings of :mod:`nacf_core.artifacts` define it.  The compiled
kernels (``_cy_quality``, ``_nb_quality``) must agree with it.
"""

from __future__ import annotations

import numpy as np

from ._quality_params import FLAT_RMS_UV, GOOD_P2P_UV, GOOD_RMS_UV, LINE_FREQS, MAX_P2P_UV
from ._quality_params import line_window
from ._types import ArtifactLimits, ArtifactReason

__all__ = ["artifact_stats", "detect_artifacts", "quality", "quality_terms"]


def artifact_stats(epochs: np.ndarray) -> dict[str, np.ndarray]:
    """The per-(epoch, channel) statistics the detector thresholds, float64.

    Returns a dict of arrays of shape ``(n_epochs, n_channels)``: ``non_finite``
    (bool), ``n_railed_at`` (a function ``rail_uv -> counts``), ``std``, ``p2p``
    (max - min) and ``max_jump`` (largest absolute difference of consecutive samples).
    Empty epochs have ``std = p2p = max_jump = 0``; one-sample epochs have
    ``max_jump = 0``.  The amplitude statistics are meaningful only where
    ``non_finite`` is False.
    """
    x = np.asarray(epochs, dtype=np.float64)
    n_times = x.shape[-1]
    out: dict = {"non_finite": ~np.isfinite(x).all(axis=-1)}
    out["n_railed_at"] = lambda rail_uv: (np.abs(x) >= rail_uv).sum(axis=-1)
    if n_times == 0:
        zeros = np.zeros(x.shape[:-1])
        out.update(std=zeros, p2p=zeros, max_jump=zeros)
        return out
    with np.errstate(invalid="ignore"):
        out["p2p"] = x.max(axis=-1) - x.min(axis=-1)
        # a constant row has standard deviation 0 exactly; NumPy's mean of one far from
        # zero (1e20 repeated) need not be its value, which left a spread of millions
        out["std"] = np.where(out["p2p"] == 0, 0.0, x.std(axis=-1))
        if n_times > 1:
            out["max_jump"] = np.abs(np.diff(x, axis=-1)).max(axis=-1)
        else:
            out["max_jump"] = np.zeros(x.shape[:-1])
    return out


def detect_artifacts(epochs: np.ndarray, sfreq: float, limits: ArtifactLimits) -> np.ndarray:
    """Reason code per (epoch, channel); see :func:`nacf_core.artifacts.detect_artifacts`.

    Parameters
    ----------
    epochs : ndarray, shape (n_epochs, n_channels, n_times), float32 or float64
    sfreq : float
        Unused by the checks (they are per sample); part of the kernel signature.
    limits : ArtifactLimits

    Returns
    -------
    reason : ndarray, shape (n_epochs, n_channels), int8
    """
    del sfreq
    n_times = epochs.shape[-1]
    s = artifact_stats(epochs)
    n_railed = s["n_railed_at"](limits.rail_uv)
    checks = [
        (s["non_finite"], ArtifactReason.NON_FINITE),
        ((n_railed > 0) & (n_railed >= limits.rail_fraction * n_times), ArtifactReason.RAILED),
        (s["std"] * s["std"] < limits.flat_uv * limits.flat_uv, ArtifactReason.FLAT),
        (s["p2p"] > limits.peak_to_peak_uv, ArtifactReason.PEAK_TO_PEAK),
        (s["max_jump"] > limits.jump_uv, ArtifactReason.JUMP),
    ]
    # np.select picks the first condition that holds: the order of ArtifactReason.
    return np.select([c for c, _ in checks], [int(r) for _, r in checks],
                     default=int(ArtifactReason.OK)).astype(np.int8)


def quality_terms(epochs: np.ndarray, sfreq: float) -> dict[str, np.ndarray]:
    """The terms of the quality score per (epoch, channel), float64.

    ``rms`` (of the de-meaned signal), ``p2p``, ``repeat_frac`` (fraction of
    consecutive sample pairs that are exactly equal), ``line`` (fraction of the
    variance in the 50/60 Hz bins, clipped to [0, 1]) and the three factors
    ``q_line``, ``q_flat``, ``q_range``.
    """
    x = np.asarray(epochs, dtype=np.float64)
    if x.shape[-1] == 0:
        zeros = np.zeros(x.shape[:-1])
        return _factors(rms=zeros, p2p=zeros, repeat=zeros, line=zeros)
    return _quality_terms_nonempty(x, sfreq)


@np.errstate(invalid="ignore", over="ignore")  # non-finite rows give NaN terms
def _quality_terms_nonempty(x: np.ndarray, sfreq: float) -> dict[str, np.ndarray]:
    n_times = x.shape[-1]
    shape = x.shape[:-1]
    xc = x - x.mean(axis=-1, keepdims=True)
    rms = np.sqrt(np.mean(xc * xc, axis=-1))
    p2p = x.max(axis=-1) - x.min(axis=-1)
    repeat = (np.diff(x, axis=-1) == 0).mean(axis=-1) if n_times > 1 else np.zeros(shape)
    # Windowed DFT of the de-meaned signal at each line frequency below Nyquist:
    # a sinusoid of amplitude A there gives |X|^2 = A^2 sum(w)^2 / 4, so
    # 2 |X|^2 / sum(w)^2 is the variance (A^2 / 2) it contributes.
    w = line_window(n_times)
    t = np.arange(n_times) / sfreq
    line_var = np.zeros(shape)
    for f in LINE_FREQS:
        if f >= sfreq / 2.0:
            continue
        spectrum = (xc * w) @ np.exp(-2j * np.pi * f * t)
        line_var += 2.0 * np.abs(spectrum) ** 2 / w.sum() ** 2
    var = rms * rms
    with np.errstate(divide="ignore"):
        line = np.where(var > 0, np.minimum(1.0, line_var / var), 0.0)
    return _factors(rms, p2p, repeat, line)


@np.errstate(invalid="ignore")
def _factors(rms, p2p, repeat, line) -> dict[str, np.ndarray]:
    q_line = 1.0 - line
    q_flat = np.clip((rms - FLAT_RMS_UV) / (GOOD_RMS_UV - FLAT_RMS_UV), 0.0, 1.0) * (1.0 - repeat)
    q_range = np.clip((MAX_P2P_UV - p2p) / (MAX_P2P_UV - GOOD_P2P_UV), 0.0, 1.0)
    return {"rms": rms, "p2p": p2p, "repeat_frac": repeat, "line": line,
            "q_line": q_line, "q_flat": q_flat, "q_range": q_range}


def quality(epochs: np.ndarray, sfreq: float, reason: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quality per channel and per epoch; see :func:`nacf_core.artifacts.quality`.

    Returns
    -------
    per_channel : ndarray, shape (n_epochs, n_channels), float64 in [0, 1]
    per_epoch : ndarray, shape (n_epochs,), float64 in [0, 1]
    """
    terms = quality_terms(epochs, sfreq)
    score = terms["q_line"] * terms["q_flat"] * terms["q_range"]
    # Artifacts score 0, and so does non-finite data whatever ``reason`` says.
    ok = (np.asarray(reason) == ArtifactReason.OK) & np.isfinite(score)
    per_channel = np.where(ok, score, 0.0)
    n_epochs, n_channels = per_channel.shape
    per_epoch = per_channel.mean(axis=1) if n_channels else np.zeros(n_epochs)
    return per_channel, per_epoch
