"""Presentation-attack detection (PAD): replayed and non-physiological probes.

Two families of attack, each a reason code the service counts as a suspicious activity
(``nacfauth_suspicious_activities_total{activity_type=..., severity=...}``):

``replay`` (``activity_type="replay"``, severity ``high``)
    The probe repeats, sample for sample or nearly so, an earlier probe or the
    enrollment recording, possibly rescaled (any gain per channel, and a gain common to
    the channels that varies slowly in time), shifted by a DC offset, resampled in time
    alignment, or with a little noise added.

``non_physiological`` (``activity_type="non_physiological"``, severity ``high``)
    ``flat_spectrum``: no 1/f shape, the power spectrum is as flat as white noise;
    ``periodic``: perfect periodicity, a looped segment or a pure sinusoid;
    ``no_signal``: nothing left after the band-pass (a constant signal).

How
---
Every signal is band-passed 1–40 Hz (4th-order Butterworth, zero phase; the upper edge is
lowered to 0.45·sfreq for slow devices), which removes DC offsets.

Replay fingerprint (:func:`fingerprint`): per channel and per band (4–13 Hz, 13–30 Hz),
the log power in 250 ms frames every 62.5 ms, in dB relative to the channel's median,
quantised to 0.5 dB (int8). Gain becomes a constant dB shift, which the comparison
removes, as it removes each frame's mean over the features (a gain common to the
channels that varies in time); the phase is discarded, so the waveform cannot be
reconstructed from a fingerprint (it keeps only a coarse, quantised power envelope). A
probe is compared by normalised cross-correlation (per-feature centred) of each 2-s piece
(1-s hop) against every time shift of each stored fingerprint; a score ≥
``replay_threshold`` is a replay.

Physiology (:func:`physiology`): Welch spectrum per channel (0.5-s segments). A flat
spectrum is the 25th percentile over channels of the spectral flatness between 2 and
30 Hz at or above ``max_flatness`` (white noise ≥ 0.937, EEG ≤ 0.889 on the dev data, 8
or 16 channels) together with a median log-log slope at or above ``max_slope`` (EEG
falls as 1/f^α, α ≈ 1–2; white noise ≈ 0). Periodicity is the channel-mean Pearson
correlation of the signal with itself shifted by 0.25 s … (duration − 2 s); a looped
segment or a sinusoid gives ≈ 1.

Thresholds were set on the EEGMMIDB development data (see the README section
"Presentation-attack detection" for the measured rates).

Compiled path: the zero-phase band-passes run in the Cython build's wavefront filter
kernel (``sosfiltfilt_f64``; the Numba kernel ``_filtfilt_kernel`` where it
is not built), the other inner loops in Numba kernels (``kernels/_numba.py``; compiled or
loaded from Numba's on-disk cache when the first detector is built, so no request pays
for it). Each has a NumPy/SciPy reference kept here (``_bp_reference``,
``_physiology_numpy``, ``_fingerprint_filtered_numpy``, ``_max_ncc_stored_reference``;
``PresentationAttackDetector._analyse(..., reference=True)`` runs them all): filters and
fingerprints are bit-equal to it, scores equal to ~1e-6 (``tests/test_pad.py``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import fft as _fft
from scipy import signal as _sig

from ._validation import check_array, check_finite_positive
from .errors import InvalidArgument
from .kernels._nb_filter import sos_step
from .kernels._numba import jit

__all__ = [
    "MIN_SECONDS",
    "PadVerdict",
    "PresentationAttackDetector",
    "bandpass_1_40",
    "fingerprint",
    "replay_score",
    "physiology",
    "REPLAY",
    "NON_PHYSIOLOGICAL",
]

log = logging.getLogger("nacf.pad")

REPLAY = "replay"
NON_PHYSIOLOGICAL = "non_physiological"

_MAGIC = b"NPF1"
_HEADER = struct.Struct("<4sBBHIf8s")  # magic, version, n_bands, n_channels, n_frames, hop, chash
_BANDS = ((4.0, 13.0), (13.0, 30.0))
_FRAME_S = 0.25
_HOP_S = 1.0 / 16.0
_DB_STEP = 0.5
_SEG_FRAMES = 32  # 2 s pieces of the probe
_SEG_HOP = 16  # every 1 s
_MIN_SECONDS = 2.0
#: the shortest signal the detector judges, in seconds
MIN_SECONDS = _MIN_SECONDS


@dataclass(frozen=True)
class PadVerdict:
    """Result of :meth:`PresentationAttackDetector.check`.

    Attributes
    ----------
    attack : bool
        True when the probe is rejected.
    kind : str
        ``"replay"``, ``"non_physiological"`` or ``""``: the service's ``activity_type``.
    reason : str
        Specific reason code: ``replay_of_enrollment``, ``replay_of_probe``,
        ``flat_spectrum``, ``periodic``, ``no_signal`` or ``""``.
    severity : str
        ``"high"`` for an attack, ``""`` otherwise.
    scores : dict
        The measured values (``replay``, ``slope``, ``flatness``, ``periodicity``).
    fingerprint : bytes or None
        The probe's fingerprint, to append to the user's history (``None`` on attack).
    """

    attack: bool
    kind: str = ""
    reason: str = ""
    severity: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    fingerprint: bytes | None = field(default=None, repr=False)


# ------------------------------------------------------------------------ helpers
def _as_channels_first(samples: Any, sfreq: float, name: str = "samples") -> np.ndarray:
    x = check_array(name, np.asarray(samples) if not isinstance(samples, np.ndarray)
                    else samples, ndim=2, dtypes=(np.float32, np.float64))
    if x.shape[0] < x.shape[1]:
        raise InvalidArgument(f"{name!r} must be (n_times, n_channels) with more samples than "
                              f"channels, got shape {x.shape}.")
    if x.shape[0] < _MIN_SECONDS * sfreq:
        raise InvalidArgument(f"{name!r} is too short for presentation-attack detection: "
                              f"{x.shape[0] / sfreq:.2f} s, need at least {_MIN_SECONDS:g} s.")
    x = np.array(x.T, dtype=np.float64)  # (n_channels, n_times), a copy
    bad = ~np.isfinite(x)
    if bad.any():
        if bad.all():
            raise InvalidArgument(f"{name!r} has no finite sample.")
        med = np.nanmedian(np.where(bad, np.nan, x), axis=1, keepdims=True)
        x = np.where(bad, np.nan_to_num(med), x)
    return x


#: samples beyond this many µV (far beyond any EEG, and above every artifact limit a model
#: takes) are scaled down by a power of two before the analysis (see :func:`_tame`)
_MAX_UV = 2.0 ** 32


def _tame(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``(x * 2**-k, k)``: ``x`` (n_channels, n_times) scaled by a power of two (exact)
    so that no value exceeds :data:`_MAX_UV`, ``k = 0`` (``x`` itself) when none does.
    Sums of squares of values near the float64 limit (and the float32 transforms of the
    periodicity above ~1e18) overflowed: every score became NaN or -inf, which no
    threshold refuses, so a looped segment or white noise at such a scale passed."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if not m > _MAX_UV:
        return x, 0
    k = math.frexp(m)[1] - math.frexp(_MAX_UV)[1]
    return np.ldexp(x, -k), k


@functools.lru_cache(maxsize=64)
def _sos(l_freq: float, h_freq: float, sfreq: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Butterworth band-pass (order 4) as SOS, its step-response initial state, pad length."""
    h = min(h_freq, 0.45 * sfreq)
    sos = _sig.butter(4, [l_freq, h], btype="bandpass", fs=sfreq, output="sos")
    zi = _sig.sosfilt_zi(sos)
    padlen = 3 * (2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()),
                                         int((sos[:, 5] == 0).sum())))
    return np.ascontiguousarray(sos), np.ascontiguousarray(zi), padlen


@jit
def _filtfilt_kernel(sos, zi, x, padlen, out, buf, z0, z1, row):  # pragma: no cover
    """Zero-phase ``sos`` filter of ``x`` (n_ch, n) into ``out``: odd extension by
    ``padlen``, forward pass from the step-response state ``zi`` x first sample, backward
    pass likewise (``scipy.signal.sosfiltfilt``). Time-major scratch ``buf`` (n + 2 padlen,
    blk), state ``z0``, ``z1`` (n_sections, blk) and ``row`` (blk,), ``blk`` >= n_ch a
    multiple of 8 (zeros past the last channel). Each time step is the sosfilt kernels'
    ``sos_step`` (SciPy's transposed direct form II, the same operations in the same
    order, no ``fastmath`` so no FMA), hence bit-equal results."""
    n_ch, n = x.shape
    N = n + 2 * padlen
    blk = row.shape[0]
    # odd extension, time-major, into buf
    for c in range(n_ch):
        x0 = x[c, 0]
        xl = x[c, n - 1]
        for j in range(padlen):
            buf[j, c] = 2 * x0 - x[c, padlen - j]
            buf[padlen + n + j, c] = 2 * xl - x[c, n - 2 - j]
        for j in range(n):
            buf[padlen + j, c] = x[c, j]
    # forward, back into buf
    _sos_start(zi, buf, 0, z0, z1)
    for t in range(N):
        for c in range(blk):
            row[c] = buf[t, c]
        sos_step(sos, row, z0, z1)
        for c in range(blk):
            buf[t, c] = row[c]
    # backward, the original span into out
    _sos_start(zi, buf, N - 1, z0, z1)
    for t in range(N - 1, -1, -1):
        for c in range(blk):
            row[c] = buf[t, c]
        sos_step(sos, row, z0, z1)
        if padlen <= t < padlen + n:
            for c in range(n_ch):
                out[c, t - padlen] = row[c]


@jit
def _sos_start(zi, buf, t, z0, z1):  # pragma: no cover - compiled
    """Filter state ``z0``, ``z1`` (n_sections, blk): the step-response state ``zi``
    times each lane's sample ``buf[t]`` (as ``scipy.signal.sosfiltfilt`` starts)."""
    for s in range(z0.shape[0]):
        for c in range(z0.shape[1]):
            z0[s, c] = zi[s, 0] * buf[t, c]
            z1[s, c] = zi[s, 1] * buf[t, c]


def _bp(x: np.ndarray, sfreq: float, l_freq: float, h_freq: float) -> np.ndarray:
    """Zero-phase band-pass along the last axis of ``x`` (n_channels, n_times), float64:
    bit-equal to ``scipy.signal.sosfiltfilt`` (odd extension; :func:`_bp_reference`),
    with the filter design cached: one call of the Cython build's zero-phase kernel
    (``sosfiltfilt_f64``: the extension laid time-major a lane block at a time, both
    passes in the wavefront kernel with the state in vector registers; for 4 s, 40 µs
    instead of the Numba kernel's 81 µs at 16 channels, 16 vs 38 µs at 8), else the
    Numba kernel (:func:`_bp_numba`)."""
    sos, zi, padlen = _sos(l_freq, h_freq, sfreq)
    n_ch, n = x.shape
    if n <= padlen:
        return _sig.sosfiltfilt(sos, x, axis=-1)
    cy = _cy_filter()
    if cy is not None:
        out = np.empty((n_ch, n))
        if cy.kernel_module().sosfiltfilt_f64(
                sos, zi, np.ascontiguousarray(x, dtype=np.float64), padlen, out):
            return out
    return _bp_numba(x, sfreq, l_freq, h_freq)


def _bp_numba(x: np.ndarray, sfreq: float, l_freq: float, h_freq: float) -> np.ndarray:
    """:func:`_bp` by the Numba kernel (:func:`_filtfilt_kernel`), bit-equal."""
    sos, zi, padlen = _sos(l_freq, h_freq, sfreq)
    n_ch, n = x.shape
    if n <= padlen:
        return _sig.sosfiltfilt(sos, x, axis=-1)
    blk = -(-n_ch // 8) * 8
    out = np.empty((n_ch, n))
    buf = np.zeros((n + 2 * padlen, blk))
    z0 = np.empty((sos.shape[0], blk))
    _filtfilt_kernel(sos, zi, np.ascontiguousarray(x, dtype=np.float64), padlen, out, buf,
                     z0, np.empty_like(z0), np.empty(blk))
    return out


def _bp_reference(x: np.ndarray, sfreq: float, l_freq: float, h_freq: float) -> np.ndarray:
    """Zero-phase band-pass along the last axis; the same result as
    ``scipy.signal.sosfiltfilt`` (odd extension) with the filter design cached."""
    sos, zi, padlen = _sos(l_freq, h_freq, sfreq)
    n = x.shape[-1]
    if n <= padlen:
        return _sig.sosfiltfilt(sos, x, axis=-1)
    ext = np.empty((x.shape[0], n + 2 * padlen))
    np.subtract(2 * x[:, :1], x[:, padlen:0:-1], out=ext[:, :padlen])
    ext[:, padlen:padlen + n] = x
    np.subtract(2 * x[:, -1:], x[:, -2:-padlen - 2:-1], out=ext[:, padlen + n:])
    y, _ = _sosfilt(sos, ext, zi[:, None, :] * ext[None, :, :1])
    y = np.ascontiguousarray(y[:, ::-1])
    y, _ = _sosfilt(sos, y, zi[:, None, :] * y[None, :, :1])
    return np.ascontiguousarray(y[:, ::-1][:, padlen:padlen + n])


def _sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt`` along the last axis of a C-contiguous float64 array, with
    the project's compiled kernel when it is built (same recursion, ~4x less overhead)."""
    cy = _cy_filter()
    if cy is None:
        return _sig.sosfilt(sos, x, axis=-1, zi=zi)
    return cy.sosfilt(sos, x, -1, np.ascontiguousarray(zi))


@functools.lru_cache(maxsize=1)
def _cy_filter():
    """The Cython filter backend (``nacf_core.kernels._cy_filter``: its ``sosfilt`` and
    the zero-phase ``kernel_module().sosfiltfilt_f64``), or ``None`` where the extension
    is not built (SciPy and the Numba kernel then do the same computations)."""
    try:
        from .kernels import _cy_filter as cy

        return cy
    except Exception:  # noqa: BLE001 - not built
        log.debug("Cython filter kernels unavailable; PAD uses SciPy and Numba")
        return None


def bandpass_1_40(samples: Any, sfreq: float) -> np.ndarray:
    """Demean and band-pass 1–40 Hz (4th-order Butterworth, zero phase).

    Parameters
    ----------
    samples : ndarray, shape (n_times, n_channels)
        Microvolts.
    sfreq : float

    Returns
    -------
    ndarray, shape (n_channels, n_times), float64
    """
    sfreq = check_finite_positive("sfreq", sfreq)
    x, k = _tame(_as_channels_first(samples, sfreq))
    x -= x.mean(axis=1, keepdims=True)
    y = _bp(x, sfreq, 1.0, 40.0)
    return np.ldexp(y, k) if k else y


def _channel_hash(n_channels: int, ch_names: Sequence[str] | None) -> bytes:
    return _channel_hash_t(n_channels, None if ch_names is None else tuple(ch_names))


@functools.lru_cache(maxsize=256)
def _channel_hash_t(n_channels: int, ch_names: tuple[str, ...] | None) -> bytes:
    if ch_names is None:
        text = f"n={n_channels}"
    else:
        from .channels import canonical_name

        text = ",".join((canonical_name(c) or str(c)) for c in ch_names)
    return hashlib.sha256(text.encode()).digest()[:8]


# ------------------------------------------------------------------- fingerprint
def fingerprint(samples: Any, sfreq: float, ch_names: Sequence[str] | None = None) -> bytes:
    """Replay fingerprint of a signal (not invertible; see the module docstring).

    Parameters
    ----------
    samples : ndarray, shape (n_times, n_channels)
        Microvolts, at least 2 s.
    sfreq : float
        Sampling rate in Hz (any; frames are in seconds).
    ch_names : sequence of str, optional
        Channel labels; fingerprints are only compared between the same channel set.

    Returns
    -------
    bytes
        Header + int8 array of shape (n_frames, n_channels * 2).
    """
    sfreq = check_finite_positive("sfreq", sfreq)
    x = _tame(_as_channels_first(samples, sfreq))[0]
    if ch_names is not None and len(ch_names) != x.shape[0]:
        raise InvalidArgument(f"'ch_names' has {len(ch_names)} names but 'samples' has "
                              f"{x.shape[0]} channels.")
    x -= x.mean(axis=1, keepdims=True)
    return _fingerprint_filtered(_bp(x, sfreq, 1.0, 40.0), sfreq,
                                 _channel_hash(x.shape[0], ch_names))


@jit
def _frame_power_kernel(y, starts, frame, out, row):  # pragma: no cover - compiled
    """Frame powers of band-passed ``y`` (n_ch, n_t) plus their floor, into ``out[c]``
    (n_ch, n_frames): the cumulative energy, each frame's mean power ``p``, and
    ``p + 1e-6 * median(p) + 1e-12`` (the same operations, in the same order, as the
    NumPy expression in :func:`_envelope_db_numpy`, so the results are bit-equal)."""
    n_ch, n_t = y.shape
    n_frames = starts.shape[0]
    c = np.empty(n_t + 1)
    for ch in range(n_ch):
        c[0] = 0.0
        acc = 0.0
        for t in range(n_t):
            v = y[ch, t]
            acc = acc + v * v
            c[t + 1] = acc
        for k in range(n_frames):
            row[k] = (c[starts[k] + frame] - c[starts[k]]) / frame
            out[ch, k] = row[k]
        srt = np.sort(row)
        med = (srt[(n_frames - 1) // 2] + srt[n_frames // 2]) / 2
        floor = 1e-6 * med + 1e-12
        for k in range(n_frames):
            out[ch, k] = out[ch, k] + floor


@jit
def _quantise_kernel(lg, step, q):  # pragma: no cover - compiled
    """``lg`` (n_feat, n_frames) = log10 of the floored powers; ``q`` (n_frames, n_feat)
    int8 = clip(round((10 lg - median over frames) / step), -127, 127), half to even
    (bit-equal to the NumPy path)."""
    n_feat, n_frames = lg.shape
    col = np.empty(n_frames)
    for f in range(n_feat):
        for k in range(n_frames):
            col[k] = 10.0 * lg[f, k]
        srt = np.sort(col)
        med = (srt[(n_frames - 1) // 2] + srt[n_frames // 2]) / 2
        for k in range(n_frames):
            v = np.rint((col[k] - med) / step)
            if v > 127.0:
                v = 127.0
            elif v < -127.0:
                v = -127.0
            q[k, f] = np.int8(v)


def _frame_starts(n_t: int, sfreq: float) -> tuple[int, np.ndarray]:
    frame = max(2, int(round(_FRAME_S * sfreq)))
    n_frames = int(np.floor((n_t - frame) / (_HOP_S * sfreq))) + 1
    return frame, np.round(np.arange(n_frames) * _HOP_S * sfreq).astype(np.int64)


def _envelope_db_numpy(x: np.ndarray, sfreq: float) -> np.ndarray:
    """(n_frames, n_channels * n_bands) log band power in dB (the NumPy reference of
    the compiled path, kept for the equality test and the benchmark's baseline)."""
    n_ch, n_t = x.shape
    frame, starts = _frame_starts(n_t, sfreq)
    feats = []
    for lo, hi in _BANDS:
        y = _bp_reference(x, sfreq, lo, hi)
        c = np.concatenate([np.zeros((n_ch, 1)), np.cumsum(y * y, axis=1)], axis=1)
        p = (c[:, starts + frame] - c[:, starts]) / frame  # (n_ch, n_frames)
        floor = 1e-6 * np.median(p, axis=1, keepdims=True) + 1e-12
        feats.append(10.0 * np.log10(p + floor))
    return np.concatenate(feats, axis=0).T  # (n_frames, n_ch * n_bands)


def _fingerprint_filtered_numpy(x: np.ndarray, sfreq: float, chash: bytes) -> bytes:
    """:func:`_fingerprint_filtered` in NumPy only (the reference)."""
    env = _envelope_db_numpy(x, sfreq)
    env -= np.median(env, axis=0, keepdims=True)
    q = np.clip(np.round(env / _DB_STEP), -127, 127).astype(np.int8)
    head = _HEADER.pack(_MAGIC, 1, len(_BANDS), x.shape[0], q.shape[0], _HOP_S, chash)
    return head + q.tobytes()


def _fingerprint_filtered(x: np.ndarray, sfreq: float, chash: bytes) -> bytes:
    """Fingerprint of a 1–40 Hz band-passed ``x`` (n_channels, n_times): two band-pass
    filters, then two compiled kernels around one NumPy ``log10`` (NumPy's, so the
    bytes equal :func:`_fingerprint_filtered_numpy`'s)."""
    n_ch, n_t = x.shape
    frame, starts = _frame_starts(n_t, sfreq)
    n_frames = starts.shape[0]
    pw = np.empty((len(_BANDS) * n_ch, n_frames))
    row = np.empty(n_frames)
    for b, (lo, hi) in enumerate(_BANDS):
        _frame_power_kernel(_bp(x, sfreq, lo, hi), starts, frame,
                            pw[b * n_ch:(b + 1) * n_ch], row)
    q = np.empty((n_frames, pw.shape[0]), dtype=np.int8)
    _quantise_kernel(np.log10(pw, out=pw), _DB_STEP, q)
    head = _HEADER.pack(_MAGIC, 1, len(_BANDS), n_ch, n_frames, _HOP_S, chash)
    return head + q.tobytes()


def _parse(fp: bytes) -> tuple[bytes, np.ndarray]:
    fp = bytes(fp)
    if len(fp) < _HEADER.size or fp[:4] != _MAGIC:
        raise InvalidArgument("Not a nacf PAD fingerprint (bad header).")
    _, ver, n_bands, n_ch, n_frames, _, chash = _HEADER.unpack_from(fp)
    n_feat = n_bands * n_ch
    body = np.frombuffer(fp, dtype=np.int8, offset=_HEADER.size)
    if ver != 1 or body.size != n_frames * n_feat:
        raise InvalidArgument(f"Corrupt PAD fingerprint: version {ver}, {body.size} values "
                              f"for {n_frames} frames x {n_feat} features.")
    key = struct.pack("<BH", n_bands, n_ch) + chash
    q = body.reshape(n_frames, n_feat).astype(np.float64) * _DB_STEP
    # each frame's mean over the features taken off: a gain varying in time, the same on
    # every channel (a playback chain's volume or AGC), is a dB shift common to the
    # frame's features; left in, 6 dB at 1 Hz took a replay from 0.99 to 0.62-0.74
    q -= q.mean(axis=1, keepdims=True)
    return key, q


def _piece_starts(n: int) -> tuple[int, list[int]]:
    """Length ``L`` (frames) and first frames of the probe's pieces (of ``n`` frames)."""
    L = min(_SEG_FRAMES, n)
    starts = list(range(0, n - L + 1, _SEG_HOP))
    if starts[-1] != n - L:
        starts.append(n - L)
    return L, starts


def _pieces_clear_of(n: int, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """Which pieces of a probe of ``n`` frames touch none of ``spans`` ((start_s,
    stop_s) from the probe's start): a piece's frames cover the signal from its first
    frame's start to its last frame's end."""
    L, starts = _piece_starts(n)
    t0 = np.asarray(starts, dtype=np.float64) * _HOP_S
    t1 = t0 + (L - 1) * _HOP_S + _FRAME_S
    keep = np.ones(len(starts), dtype=bool)
    for a, b in spans:
        keep &= ~((t0 < b) & (a < t1))
    return keep


def _segments(p: np.ndarray) -> np.ndarray:
    """(n_seg, L, F) pieces of the probe, each centred per feature and unit-norm."""
    L, starts = _piece_starts(p.shape[0])
    segs = np.stack([p[s:s + L] for s in starts])
    segs = segs - segs.mean(axis=1, keepdims=True)
    norms = np.sqrt((segs ** 2).sum(axis=(1, 2)))
    return segs / np.maximum(norms, 1e-9)[:, None, None]


def _max_ncc(segs: np.ndarray, seqs: list[np.ndarray]) -> tuple[float, int]:
    """Max over pieces, sequences and shifts of the centred normalised
    cross-correlation; returns ``(score, index of the best sequence)``.

    Sequences of similar length are zero-padded to one FFT size and correlated with every
    piece at once (windows reaching into the padding are ignored); the few distinct sizes
    (the enrollment, the probes) keep the FFTs short.
    """
    _, L, F = segs.shape
    if not seqs:
        return 0.0, -1
    fk_cache: dict[int, np.ndarray] = {}
    buckets: dict[int, list[int]] = {}
    for i, q in enumerate(seqs):
        if q.shape[0] < L:
            continue
        buckets.setdefault(_fft.next_fast_len(q.shape[0] + L, real=True), []).append(i)
    best, best_i = -np.inf, -1
    # float32 FFTs: half the work, and ~1e-6 relative error is far below any threshold
    rev = np.ascontiguousarray(segs[:, ::-1, :], dtype=np.float32)  # (n_seg, L, F)
    for nfft, idx in buckets.items():
        lens = np.array([seqs[i].shape[0] for i in idx])
        n_max = int(lens.max())
        s = np.zeros((len(idx), n_max, F))  # (G, n, F): time on axis 1
        for g, i in enumerate(idx):
            s[g, :lens[g]] = seqs[i]
        if nfft not in fk_cache:
            fk = _fft.rfft(rev, nfft, axis=1)  # (n_seg, nf, F)
            fk_cache[nfft] = np.ascontiguousarray(fk.transpose(1, 2, 0))  # (nf, F, n_seg)
        fs = _fft.rfft(s.astype(np.float32), nfft, axis=1).transpose(1, 0, 2)  # (nf, G, F)
        prod = np.matmul(fs, fk_cache[nfft])  # (nf, G, n_seg): summed over features
        full = _fft.irfft(prod, nfft, axis=0)  # (nfft, G, n_seg)
        num = full[L - 1:n_max]  # (shifts 0 .. n_max-L, G, n_seg)
        # the piece is centred, so the window's own mean drops out of the numerator
        c1 = np.zeros((len(idx), n_max + 1, F))
        np.cumsum(s, axis=1, out=c1[:, 1:])
        c2 = np.zeros((len(idx), n_max + 1))
        np.cumsum(np.einsum("gtf,gtf->gt", s, s), axis=1, out=c2[:, 1:])
        win_sum = c1[:, L:] - c1[:, :-L]
        var = c2[:, L:] - c2[:, :-L] - np.einsum("gtf,gtf->gt", win_sum, win_sum) / L
        ncc = num / np.sqrt(np.maximum(var, 1e-12)).T[:, :, None]
        valid = np.arange(n_max - L + 1)[:, None] <= (lens - L)[None, :]  # (shifts, G)
        ncc = np.where(valid[:, :, None], ncc, -1.0)
        flat = int(np.argmax(ncc))
        if ncc.flat[flat] > best:
            g = (flat // ncc.shape[2]) % ncc.shape[1]
            best, best_i = float(ncc.flat[flat]), idx[g]
    if best_i < 0:
        return 0.0, -1
    return best, best_i


class _Stored:
    """A stored fingerprint made ready for :func:`_max_ncc_stored`, for one piece length
    ``L``: its channel key, its length, and for each part the FFT of its frames and the
    inverse norm of every centred window of length ``L`` (what :func:`_max_ncc`
    recomputes on every call).

    A long sequence (the enrollment) is cut into parts of ``2L - 1`` frames every ``L``
    frames, so every window of it lies whole in one part and every part uses the same
    short FFT as a 4-s probe: one batched product covers them all. ``wp`` (L, P, 2) is
    ``inv`` padded to ``L`` shifts (weight 0) with a penalty (0, or -4 past the part's own
    last shift), so parts of different lengths share one product.
    """

    __slots__ = ("inv", "key", "m", "n", "nbytes", "nfft", "owner", "spec", "wp")

    def __init__(self, fp: bytes, L: int) -> None:
        self.owner: Any = None  # the history (user) that last compared with it
        self.key, q = _parse(fp)
        self.n = n = q.shape[0]
        self.m = self.nfft = 0
        self.spec = self.inv = self.wp = None
        self.nbytes = len(fp) + 200
        if n < L:
            return
        c1 = np.zeros((n + 1, q.shape[1]))
        np.cumsum(q, axis=0, out=c1[1:])
        c2 = np.zeros(n + 1)
        np.cumsum(np.einsum("tf,tf->t", q, q), out=c2[1:])
        win_sum = c1[L:] - c1[:-L]
        var = c2[L:] - c2[:-L] - np.einsum("tf,tf->t", win_sum, win_sum) / L
        inv = 1.0 / np.sqrt(np.maximum(var, 1e-12))  # (n - L + 1,) one per shift
        self.m = m = min(n, 2 * L - 1)
        starts = list(range(0, n - m + 1, L))
        if starts[-1] != n - m:
            starts.append(n - m)
        self.nfft = _fft.next_fast_len(m + L, real=True)
        parts = np.stack([q[s0:s0 + m] for s0 in starts]).astype(np.float32)  # (P, m, F)
        spec = _fft.rfft(parts, self.nfft, axis=1)  # (P, nf, F)
        self.spec = np.ascontiguousarray(spec.transpose(1, 0, 2))  # (nf, P, F)
        self.inv = np.stack([inv[s0:s0 + m - L + 1] for s0 in starts], axis=1)  # (S, P)
        self.wp = np.zeros((L, len(starts), 2))
        self.wp[:m - L + 1, :, 0] = self.inv
        self.wp[m - L + 1:, :, 1] = -4.0
        self.nbytes += self.spec.nbytes + self.inv.nbytes + self.wp.nbytes


class _StoredCache:
    """Thread-safe cache of :class:`_Stored`, keyed by the fingerprint's bytes and the
    piece length, bounded in bytes (oldest entries evicted first; a hit takes no lock).

    The value is a pure function of the key, so sharing it between users, detectors and
    threads is safe, and a history that changed in the store (another replica appended
    a probe) simply brings new keys: nothing can go stale."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = int(max_bytes)
        self._d: dict[tuple[bytes, int], _Stored] = {}
        self._size = 0
        self._lock = threading.Lock()

    def get(self, fp: bytes, L: int) -> _Stored:
        k = (fp if type(fp) is bytes else bytes(fp), L)
        e = self._d.get(k)  # atomic under the GIL
        if e is not None:
            return e
        e = _Stored(k[0], L)  # outside the lock: parsing + one FFT
        with self._lock:
            if k not in self._d:
                self._d[k] = e
                self._size += e.nbytes
                while self._size > self.max_bytes and len(self._d) > 1:
                    old = self._d.pop(next(iter(self._d)))  # the oldest insertion
                    self._size -= old.nbytes
        return e

    def owners(self) -> set:
        """The owners (user ids) of the entries kept (``None`` left out)."""
        with self._lock:
            return {e.owner for e in self._d.values() if e.owner is not None}

    def forget(self, owner: Any) -> None:
        """Drop the entries ``owner`` (a deleted user's history key) compared with last:
        the keys are the fingerprints' plaintexts."""
        with self._lock:
            for k in [k for k, e in self._d.items() if e.owner == owner]:
                self._size -= self._d.pop(k).nbytes

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._size = 0


_STORED = _StoredCache()


@functools.lru_cache(maxsize=32)
def _idft_rows(nfft: int, L: int, m: int) -> np.ndarray:
    """(2 S, nf) float32: the rows of the inverse real DFT of length ``nfft`` (``irfft``)
    giving only the outputs ``L - 1 .. m - 1`` (S = m - L + 1 shifts) from the real
    (first S rows) and the imaginary parts (last S rows) of a half spectrum."""
    nf = nfft // 2 + 1
    t = np.arange(L - 1, m)[:, None].astype(np.float64)
    k = np.arange(nf)[None, :]
    w = np.full(nf, 2.0)
    w[0] = 1.0
    if nfft % 2 == 0:
        w[-1] = 1.0
    ang = 2.0 * np.pi * ((k * t) % nfft) / nfft
    cr = w * np.cos(ang) / nfft
    ci = -w * np.sin(ang) / nfft
    ci[:, 0] = 0.0  # irfft ignores the imaginary part at DC and Nyquist
    if nfft % 2 == 0:
        ci[:, -1] = 0.0
    return np.ascontiguousarray(np.concatenate([cr, ci]), dtype=np.float32)


@jit
def _pair_matrix_kernel(fk, bm):  # pragma: no cover - compiled
    """``bm`` (nf, 2F, 2K) float32 from the pieces' spectra ``fk`` (K, F, nf) complex64:
    rows 2c / 2c+1 take Re / Im of a stored spectrum's feature c, columns :K give the
    real part of the product summed over features, K: its imaginary part."""
    n_seg, n_feat, nf = fk.shape
    for f in range(nf):
        for c in range(n_feat):
            for k in range(n_seg):
                z = fk[k, c, f]
                bm[f, 2 * c, k] = z.real
                bm[f, 2 * c + 1, k] = -z.imag
                bm[f, 2 * c, n_seg + k] = z.imag
                bm[f, 2 * c + 1, n_seg + k] = z.real


@jit
def _ncc_argmax_kernel(y, wp, n_shift, res):  # pragma: no cover - compiled
    """Max and first C-order arg-max over (shift, part, piece) of ``(Re-row part +
    Im-row part) * weight + penalty``; ``y`` (2 S, P, 2K) float32 (the correlation's
    real-DFT halves), ``wp`` (>= S, P, 2). ``res[0]`` = max; returns the flat index."""
    _, n_parts, kk = y.shape
    n_seg = kk // 2
    best = -np.inf
    arg = -1
    for s in range(n_shift):
        for p in range(n_parts):
            w = wp[s, p, 0]
            pe = wp[s, p, 1]
            for k in range(n_seg):
                num = y[s, p, k] + y[n_shift + s, p, n_seg + k]  # float32, as NumPy
                v = np.float64(num) * w + pe
                if v > best:
                    best = v
                    arg = (s * n_parts + p) * n_seg + k
    res[0] = best
    return arg


def _max_ncc_stored(segs: np.ndarray, stored: list[_Stored]) -> tuple[float, int]:
    """:func:`_max_ncc` against prepared fingerprints (the same value, ~1e-6): only the
    probe's pieces are transformed per call; the stored side comes from the cache, and
    the parts of one FFT size (every 4-s probe, every part of the enrollment) go through
    two real matrix products: the complex product over features as one batched real
    product (the complex64 spectra viewed as interleaved float32 pairs against a real
    (2F, 2K) matrix per frequency), then the inverse DFT at the needed shifts only (a
    (2S, nf) real matrix), instead of a complex matmul and a full inverse FFT per part
    length (:func:`_max_ncc_stored_reference`); a compiled kernel takes the max."""
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(stored):
        groups.setdefault(e.nfft, []).append(i)
    best, best_i = -np.inf, -1
    rev = _reversed_pieces(segs)
    res = np.empty(1)
    for nfft, idx in groups.items():
        es = [stored[i] for i in idx]
        if len(es) == 1:
            fs, wp = es[0].spec, es[0].wp
        else:
            fs = np.concatenate([e.spec for e in es], axis=1)  # (nf, parts, F)
            wp = np.concatenate([e.wp for e in es], axis=1)  # (L, parts, 2)
        score, part = _ncc_parts(rev, segs.shape[1], nfft, fs, wp, max(e.m for e in es), res)
        if part >= 0 and score > best:
            for j, e in enumerate(es):  # the entry that owns the winning part
                part -= e.spec.shape[1]
                if part < 0:
                    best, best_i = score, idx[j]
                    break
    if best_i < 0:
        return 0.0, -1
    return best, best_i


def _reversed_pieces(segs: np.ndarray) -> np.ndarray:
    """The probe's pieces reversed in time, time last and contiguous for the FFT:
    (n_seg, F, L) float32."""
    return np.ascontiguousarray(segs.transpose(0, 2, 1)[:, :, ::-1], dtype=np.float32)


def _ncc_parts(rev: np.ndarray, L: int, nfft: int, fs: np.ndarray, wp: np.ndarray, m: int,
               res: np.ndarray) -> tuple[float, int]:
    """Best normalised cross-correlation of the pieces ``rev`` (:func:`_reversed_pieces`)
    with the stored parts of one FFT size: spectra ``fs`` (nf, P, F) complex64 (the last
    axis contiguous), weights and penalties ``wp`` (>= m - L + 1, P, 2) contiguous, ``m``
    the longest part. Returns ``(score, index of the winning part)`` or ``(-inf, -1)``."""
    n_seg, F, _ = rev.shape
    fk = _fft.rfft(rev, nfft, axis=-1)  # (K, F, nf)
    bm = np.empty((fk.shape[2], 2 * F, 2 * n_seg), dtype=np.float32)
    _pair_matrix_kernel(fk, bm)
    S = m - L + 1
    n_parts = fs.shape[1]
    prod = np.matmul(fs.view(np.float32), bm)  # (nf, parts, 2K): Re | Im
    y = _idft_rows(nfft, L, m) @ prod.reshape(prod.shape[0], -1)  # (2S, parts * 2K)
    flat = _ncc_argmax_kernel(y.reshape(2 * S, n_parts, 2 * n_seg), wp, S, res)
    if flat < 0:
        return -np.inf, -1
    return float(res[0]), int((flat // n_seg) % n_parts)


class _Slab:
    """One history's prepared fingerprints laid side by side, kept between calls.

    :func:`_max_ncc_stored` concatenates the spectra and weights of every stored
    fingerprint on every call (~1 MB, ~50 arrays of a few hundred bytes per frequency:
    about 0.1 ms at a full history). A slab keeps them in place: between two
    authentications of a user one probe is usually added and the oldest trimmed, so
    :meth:`sync` marks the parts of fingerprints gone from the history dead (weight 0,
    penalty -4: they can never win) and writes new ones into freed slots of the same size
    or at the end; it is rebuilt when dead parts outnumber live ones. Parts are owned by
    ``_Stored`` objects (held, so their ids stay unique). One FFT size per slab. Not
    thread-safe by itself: :func:`_max_ncc_slab` holds ``lock``.
    """

    __slots__ = ("cap", "dead", "free", "lock", "owner", "pos", "spec", "used", "wp")

    def __init__(self, nf: int, n_feat: int, L: int, cap: int) -> None:
        self.cap = cap
        self.spec = np.zeros((nf, cap, n_feat), dtype=np.complex64)
        self.wp = np.zeros((L, cap, 2))
        self.owner: list[Any] = [None] * cap  # the _Stored owning each part
        self.pos: dict[int, tuple[int, int, Any]] = {}  # id(entry) -> (start, n, entry)
        self.free: dict[int, list[int]] = {}  # part count -> starts of dead runs
        self.used = 0
        self.dead = 0
        self.lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self.spec.nbytes + self.wp.nbytes

    def _kill(self, start: int, n: int) -> None:
        self.wp[:, start:start + n, 0] = 0.0
        self.wp[:, start:start + n, 1] = -4.0
        for p in range(start, start + n):
            self.owner[p] = None
        self.free.setdefault(n, []).append(start)
        self.dead += n

    def _put(self, e: Any) -> None:
        n = e.spec.shape[1]
        runs = self.free.get(n)
        if runs:
            start = runs.pop()
            self.dead -= n
        else:
            if self.used + n > self.cap:
                self._grow(self.used + n)
            start = self.used
            self.used += n
        self.spec[:, start:start + n] = e.spec
        self.wp[:, start:start + n] = e.wp
        for p in range(start, start + n):
            self.owner[p] = e
        self.pos[id(e)] = (start, n, e)

    def _grow(self, need: int) -> None:
        cap = max(need, self.cap + self.cap // 2)
        spec = np.zeros((self.spec.shape[0], cap, self.spec.shape[2]), dtype=np.complex64)
        spec[:, :self.used] = self.spec[:, :self.used]
        wp = np.zeros((self.wp.shape[0], cap, 2))
        wp[:, :self.used] = self.wp[:, :self.used]
        self.spec, self.wp, self.cap = spec, wp, cap
        self.owner.extend([None] * (cap - len(self.owner)))

    def sync(self, stored: list[Any]) -> None:
        """Make the live parts exactly those of ``stored`` (one FFT size, ``nfft``)."""
        cur = {id(e): e for e in stored}
        for k in [k for k in self.pos if k not in cur]:
            start, n, _ = self.pos.pop(k)
            self._kill(start, n)
        if self.dead > max(8, self.used - self.dead):  # mostly dead: rebuild compactly
            self.pos.clear()
            self.free.clear()
            self.used = self.dead = 0
            for p in range(len(self.owner)):
                self.owner[p] = None
        for k, e in cur.items():
            if k not in self.pos:
                self._put(e)


class _SlabCache:
    """Slabs by history key (the service passes the user id) and FFT size, bounded in
    bytes (least recently used evicted first).

    The bytes counted for each slab are kept with it, so that an eviction or a
    replacement takes off the total what was added for that slab, even while another
    thread grows it; :meth:`resized` counts only the growth of a slab still cached."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = int(max_bytes)
        self._d: dict[tuple[Any, int], _Slab] = {}
        self._counted: dict[tuple[Any, int], int] = {}  # bytes in _size for each slab
        self._size = 0
        self._lock = threading.Lock()

    def _drop(self, k: tuple[Any, int]) -> None:
        del self._d[k]
        self._size -= self._counted.pop(k)

    def get(self, key: Any, nfft: int, e: Any, L: int, n_parts: int) -> _Slab:
        k = (key, nfft)
        with self._lock:
            slab = self._d.get(k)
            if slab is not None:
                self._d[k] = self._d.pop(k)  # most recent last
                if (slab.spec.shape[0] != e.spec.shape[0] or slab.spec.shape[2] != e.spec.shape[2]
                        or slab.wp.shape[0] != L):
                    self._drop(k)  # another channel set or piece length
                    slab = None
            if slab is None:
                slab = _Slab(e.spec.shape[0], e.spec.shape[2], L,
                             max(16, n_parts + n_parts // 4))
                self._d[k] = slab  # most recent last
                self._counted[k] = slab.nbytes
                self._size += slab.nbytes
            while self._size > self.max_bytes and len(self._d) > 1:
                self._drop(next(iter(self._d)))
        return slab

    def resized(self, key: Any, nfft: int, slab: _Slab) -> None:
        """Count the growth of ``slab`` (of ``(key, nfft)``) if it is still cached; one
        evicted or replaced meanwhile left the total with the bytes counted for it."""
        k = (key, nfft)
        with self._lock:
            if self._d.get(k) is slab:
                self._size += slab.nbytes - self._counted[k]
                self._counted[k] = slab.nbytes

    def keys(self) -> set:
        """The history keys with a slab."""
        with self._lock:
            return {k[0] for k in self._d}

    def forget(self, key: Any) -> None:
        """Drop the slabs of one history key (a deleted user's)."""
        with self._lock:
            for k in [k for k in self._d if k[0] == key]:
                self._drop(k)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._counted.clear()
            self._size = 0


_SLABS = _SlabCache()


def _max_ncc_slab(segs: np.ndarray, stored: list[_Stored], key: Any) -> tuple[float, int]:
    """:func:`_max_ncc_stored` with the stored parts kept in the history's slab (the
    same score; only ties may pick another owner). Histories spanning several FFT
    sizes (probes much longer than 4 s) take the plain path."""
    nfft = stored[0].nfft
    if any(e.nfft != nfft for e in stored):
        return _max_ncc_stored(segs, stored)
    L = segs.shape[1]
    n_parts = sum(e.spec.shape[1] for e in stored)
    slab = _SLABS.get(key, nfft, stored[0], L, n_parts)
    res = np.empty(1)
    with slab.lock:
        before = slab.nbytes
        slab.sync(stored)
        if slab.nbytes != before:
            _SLABS.resized(key, nfft, slab)
        used = slab.used
        score, part = _ncc_parts(_reversed_pieces(segs), L, nfft, slab.spec[:, :used],
                                 np.ascontiguousarray(slab.wp[:, :used]),
                                 max(e.m for e in stored), res)
        owner = slab.owner[part] if part >= 0 else None
    if owner is None:
        return 0.0, -1
    for i, e in enumerate(stored):
        if e is owner:
            return score, i
    return 0.0, -1  # pragma: no cover - the owner is always in the history


def _max_ncc_stored_reference(segs: np.ndarray, stored: list[_Stored]) -> tuple[float, int]:
    """:func:`_max_ncc_stored` with a complex matrix product and a full inverse FFT (the
    reference of the faster path; the implementation before it).

    :func:`_max_ncc` against prepared fingerprints (the same value, ~1e-6): only the
    probe's pieces are transformed per call; the stored side comes from the cache, and
    the parts of one length (every 4-s probe, every part of the enrollment) go through
    one batched product."""
    L = segs.shape[1]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(stored):
        groups.setdefault((e.nfft, e.m), []).append(i)
    best, best_i = -np.inf, -1
    # reversed pieces, time last and contiguous for the FFT: (n_seg, F, L)
    rev = np.ascontiguousarray(segs.transpose(0, 2, 1)[:, :, ::-1], dtype=np.float32)
    fks: dict[int, np.ndarray] = {}
    for (nfft, m), idx in groups.items():
        fk = fks.get(nfft)
        if fk is None:
            fk = fks[nfft] = np.ascontiguousarray(
                _fft.rfft(rev, nfft, axis=-1).transpose(2, 1, 0))  # (nf, F, n_seg)
        es = [stored[i] for i in idx]
        if len(es) == 1:
            fs, inv = es[0].spec, es[0].inv
        else:
            fs = np.concatenate([e.spec for e in es], axis=1)  # (nf, parts, F)
            inv = np.concatenate([e.inv for e in es], axis=1)  # (shifts, parts)
        full = _fft.irfft(np.matmul(fs, fk), nfft, axis=0)  # (nfft, parts, n_seg)
        ncc = full[L - 1:m] * inv[:, :, None]  # (shifts, parts, n_seg)
        flat = int(np.argmax(ncc))
        if ncc.flat[flat] > best:
            part = (flat // ncc.shape[2]) % ncc.shape[1]
            owner = np.repeat(np.arange(len(es)), [e.spec.shape[1] for e in es])[part]
            best, best_i = float(ncc.flat[flat]), idx[int(owner)]
    if best_i < 0:
        return 0.0, -1
    return best, best_i


def replay_score(probe_fp: bytes, history: Iterable[bytes | tuple[str, bytes]]
                 ) -> tuple[float, str]:
    """Highest similarity of the probe to any stored fingerprint.

    Parameters
    ----------
    probe_fp : bytes
        :func:`fingerprint` of the probe.
    history : iterable of bytes or (kind, bytes)
        Stored fingerprints (``Store.get_fingerprints`` rows); fingerprints of another
        channel set are skipped.

    Returns
    -------
    score : float
        In [-1, 1]; ~1 for a replay.
    kind : str
        ``"enroll"``/``"probe"`` of the best match (``""`` when nothing was compared).
    """
    return _replay_score(probe_fp, history, reference=False)


def _replay_score(probe_fp: bytes, history: Iterable[bytes | tuple[str, bytes]],
                  reference: bool, history_key: Any = None,
                  exclude: Sequence[tuple[float, float]] = (),
                  owner: Any = None, prepare: Any = None) -> tuple[float, str]:
    """:func:`replay_score`; ``reference=True`` uses :func:`_max_ncc_stored_reference`;
    a ``history_key`` (the same for every call on one user's history) keeps the
    prepared history in a slab between calls (:func:`_max_ncc_slab`); the probe's
    pieces touching a span of ``exclude`` are left out. The prepared fingerprints are
    tagged with ``owner`` (default ``history_key``), whose ``forget`` drops them.
    ``prepare(fp, L)`` makes a stored fingerprint ready (default: the process-wide
    cache's ``get``)."""
    owner = history_key if owner is None else owner
    prepare = _STORED.get if prepare is None else prepare
    key, p = _parse(probe_fp)
    if p.shape[0] < 8:
        return 0.0, ""
    segs = _segments(p)
    if exclude:
        keep = _pieces_clear_of(p.shape[0], exclude)
        if not keep.any():
            return 0.0, ""
        segs = np.ascontiguousarray(segs[keep])
    # and its middle piece reversed in time: a recording played backwards keeps its
    # spectrum and channel covariance (the recogniser accepts it as it would the
    # original) and its power envelope, reversed; one piece catches it (dev data, 16
    # channels: reversed replays score 0.932 and more, genuine probes at most 0.742 as
    # without it; README "Presentation-attack detection")
    mid = segs.shape[0] // 2
    segs = np.concatenate([segs, segs[mid:mid + 1, ::-1, :]])
    L = segs.shape[1]
    kinds, stored = [], []
    for item in history:
        kind, fp = item if isinstance(item, tuple) else ("probe", item)
        e = prepare(fp, L)
        if owner is not None:
            e.owner = owner
        if e.key == key and e.n >= L:
            kinds.append(kind)
            stored.append(e)
    if not stored:
        return 0.0, ""
    if reference:
        score, idx = _max_ncc_stored_reference(segs, stored)
    elif history_key is not None:
        score, idx = _max_ncc_slab(segs, stored, history_key)
    else:
        score, idx = _max_ncc_stored(segs, stored)
    if idx < 0:
        return 0.0, ""
    return max(score, 0.0), kinds[idx]


# -------------------------------------------------------------------- physiology
def _median(v: np.ndarray) -> float:
    """``np.median`` of a short 1-D array, without its generic set-up."""
    s = np.sort(v)
    n = s.shape[0]
    return float((s[(n - 1) // 2] + s[n // 2]) / 2)


def _percentile(v: np.ndarray, q: float) -> float:
    """``np.percentile(v, q)`` (linear interpolation) of a short 1-D array."""
    s = np.sort(v)
    pos = q / 100.0 * (s.shape[0] - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, s.shape[0] - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


@functools.lru_cache(maxsize=16)
def _hann(nper: int) -> tuple[np.ndarray, float]:
    w = _sig.get_window("hann", nper)
    return w, float((w * w).sum())


def _welch(x: np.ndarray, sfreq: float, nper: int) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.welch(x, fs=sfreq, nperseg=nper, axis=-1)`` (Hann window, half
    overlap, constant detrend, density, one-sided, mean), without its per-call set-up:
    one strided view and one batched real FFT."""
    win, ss = _hann(nper)
    step = nper - nper // 2
    segs = np.lib.stride_tricks.sliding_window_view(x, nper, axis=-1)[:, ::step]
    segs = (segs - segs.mean(axis=-1, keepdims=True)) * win
    spec = _fft.rfft(segs, axis=-1)
    pxx = (spec.real ** 2 + spec.imag ** 2).mean(axis=1) / (sfreq * ss)
    if nper % 2:
        pxx[:, 1:] *= 2
    else:
        pxx[:, 1:-1] *= 2
    return _fft.rfftfreq(nper, 1.0 / sfreq), pxx


@jit
def _welch_prep_kernel(x, nper, step, win, segs, rmsv):  # pragma: no cover - compiled
    """Channel RMS into ``rmsv`` (n_ch,), and the Welch segments of ``x`` (n_ch, n_t),
    each demeaned and windowed, into ``segs`` (n_ch, n_seg, nper)."""
    n_ch, n_t = x.shape
    n_seg = segs.shape[1]
    for c in range(n_ch):
        e = 0.0
        for t in range(n_t):
            e += x[c, t] * x[c, t]
        rmsv[c] = np.sqrt(e / n_t)
        for k in range(n_seg):
            s0 = k * step
            m = 0.0
            for j in range(nper):
                m += x[c, s0 + j]
            m /= nper
            for j in range(nper):
                segs[c, k, j] = (x[c, s0 + j] - m) * win[j]


@jit
def _spectrum_stats_kernel(spec, bins, mult, lf, scale, out):  # pragma: no cover - compiled
    """From the segments' spectra ``spec`` (n_ch, n_seg, n_freq) complex: the Welch
    PSD at ``bins`` (x ``mult``, / ``scale``), each channel's log-log slope against
    ``lf`` (log10 of the bins' frequencies) and spectral flatness; ``out`` = (median
    slope, 25th percentile of flatness)."""
    n_ch, n_seg, _ = spec.shape
    nb = bins.shape[0]
    lfm = 0.0
    for i in range(nb):
        lfm += lf[i]
    lfm /= nb
    lfc = np.empty(nb)
    den = 0.0
    for i in range(nb):
        lfc[i] = lf[i] - lfm
        den += lfc[i] * lfc[i]
    slopes = np.empty(n_ch)
    flats = np.empty(n_ch)
    lp = np.empty(nb)
    for c in range(n_ch):
        lpm = 0.0
        lnm = 0.0
        pm = 0.0
        for i in range(nb):
            acc = 0.0
            for k in range(n_seg):
                z = spec[c, k, bins[i]]
                acc += z.real * z.real + z.imag * z.imag
            pxx = acc / n_seg / scale * mult[i]
            lp[i] = np.log10(pxx + 1e-20)
            lpm += lp[i]
            lnm += np.log(pxx + 1e-20)
            pm += pxx
        lpm /= nb
        num = 0.0
        for i in range(nb):
            num += (lp[i] - lpm) * lfc[i]
        slopes[c] = num / den
        flats[c] = np.exp(lnm / nb) / (pm / nb + 1e-20)
    s = np.sort(slopes)
    out[0] = (s[(n_ch - 1) // 2] + s[n_ch // 2]) / 2
    f = np.sort(flats)
    pos = 0.25 * (n_ch - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n_ch - 1)
    out[1] = f[lo] + (f[hi] - f[lo]) * (pos - lo)


@jit
def _power_kernel(spec, out):  # pragma: no cover - compiled
    """``out`` = |spec|^2 (float32, as NumPy computes it for a complex64 spectrum)."""
    n_ch, n_f = spec.shape
    for c in range(n_ch):
        for i in range(n_f):
            z = spec[c, i]
            out[c, i] = z.real * z.real + z.imag * z.imag


@jit
def _periodicity_kernel(x, trim, ac, lo, hi):  # pragma: no cover - compiled
    """Max over lags ``lo..hi`` of the channel-mean Pearson correlation of
    ``x[:, trim:n_t - trim]`` with itself shifted, ``ac`` (n_ch, >= hi + 1) being its
    (float32) autocorrelation."""
    n_ch, n_t0 = x.shape
    n_t = n_t0 - 2 * trim
    c2 = np.empty((n_ch, n_t + 1))
    for c in range(n_ch):
        c2[c, 0] = 0.0
        acc = 0.0
        for t in range(n_t):
            v = x[c, trim + t]
            acc += v * v
            c2[c, t + 1] = acc
    best = -np.inf
    for lag in range(lo, hi + 1):
        tot = 0.0
        for c in range(n_ch):
            head = c2[c, n_t - lag]
            tail = c2[c, n_t] - c2[c, lag]
            tot += ac[c, lag] / np.sqrt(max(head * tail, 1e-30))
        best = max(best, tot / n_ch)
    return best


@functools.lru_cache(maxsize=16)
def _welch_band(nper: int, sfreq: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins of the 2–30 Hz band for ``nper``-sample segments, their one-sided
    factor (2, or 1 at DC and Nyquist) and log10 frequency."""
    f = _fft.rfftfreq(nper, 1.0 / sfreq)
    bins = np.flatnonzero((f >= 2.0) & (f <= 30.0))
    mult = np.full(bins.shape[0], 2.0)
    mult[(bins == 0) | ((nper % 2 == 0) & (bins == nper // 2))] = 1.0
    return bins.astype(np.int64), mult, np.log10(f[bins])


def physiology(x: np.ndarray, sfreq: float) -> dict[str, float]:
    """Spectral slope, flatness, periodicity and RMS of a band-passed signal.

    Parameters
    ----------
    x : ndarray, shape (n_channels, n_times)
        Output of :func:`bandpass_1_40`.
    sfreq : float

    Returns
    -------
    dict
        ``slope`` (median over channels of the log-log PSD slope, 2–30 Hz),
        ``flatness`` (25th percentile over channels of the spectral flatness in that
        band, Welch 0.5-s segments; 1 = white),
        ``periodicity`` (max over lags from 0.25 s to duration − 2 s of the
        channel-mean Pearson correlation of the signal with its shifted self, the
        first and last 0.25 s left out; 0 for probes shorter than 2.5 s),
        ``rms`` (median channel RMS, µV).
    """
    n_ch, n_t = x.shape
    x = np.ascontiguousarray(x, dtype=np.float64)
    nper = int(min(n_t, round(sfreq / 2)))  # 0.5-s segments: many averages, 2 Hz bins
    step = nper - nper // 2
    win, ss = _hann(nper)
    segs = np.empty((n_ch, (n_t - nper) // step + 1, nper))
    rmsv = np.empty(n_ch)
    _welch_prep_kernel(x, nper, step, win, segs, rmsv)
    rms = _median(rmsv)
    out = {"rms": rms, "slope": 0.0, "flatness": 1.0, "periodicity": 0.0}
    if rms < 1e-3:
        return out
    bins, mult, lf = _welch_band(nper, float(sfreq))
    st = np.empty(2)
    _spectrum_stats_kernel(_fft.rfft(segs, axis=-1), bins, mult, lf, sfreq * ss, st)
    out["slope"] = float(st[0])
    # the 25th percentile: three quarters of the channels must look white (a few
    # EMG-laden channels of real EEG are nearly flat; the median alone was too close)
    out["flatness"] = float(st[1])
    # Pearson correlation of each channel with itself shifted by a lag, over the
    # overlap (>= 1.5 s), averaged over channels; max over lags >= 0.25 s. The first
    # and last 0.25 s are left out: the band-pass transients there are not periodic.
    trim = int(round(0.25 * sfreq))
    n_tt = n_t - 2 * trim
    lo = int(round(0.25 * sfreq))
    hi = n_tt - int(round(1.5 * sfreq))
    if hi > lo:
        nfft = _fft.next_fast_len(2 * n_tt, real=True)  # >= 2 n_t - 1: no wrap-around
        # float32 transforms: ~1e-6 relative error, far below any threshold
        spec = _fft.rfft(x[:, trim:n_t - trim].astype(np.float32), nfft, axis=1)
        pw = np.empty(spec.shape, dtype=np.float32)
        _power_kernel(spec, pw)
        ac = _fft.irfft(pw, nfft, axis=1)
        out["periodicity"] = float(_periodicity_kernel(x, trim, ac, lo, hi))
    return out


def _physiology_numpy(x: np.ndarray, sfreq: float) -> dict[str, float]:
    """:func:`physiology` in NumPy only (the reference of the compiled path)."""
    n_ch, n_t = x.shape
    rms = _median(np.sqrt(np.einsum("ct,ct->c", x, x) / n_t))
    out = {"rms": rms, "slope": 0.0, "flatness": 1.0, "periodicity": 0.0}
    if rms < 1e-3:
        return out
    nper = int(min(n_t, round(sfreq / 2)))  # 0.5-s segments: many averages, 2 Hz bins
    f, pxx = _welch(x, sfreq, nper)
    band = (f >= 2.0) & (f <= 30.0)  # inside the pass band at every rate >= 125 Hz
    lf = np.log10(f[band])
    lp = np.log10(pxx[:, band] + 1e-20)
    lfc = lf - lf.mean()
    slopes = ((lp - lp.mean(axis=1, keepdims=True)) @ lfc) / (lfc @ lfc)
    flat = np.exp(np.mean(np.log(pxx[:, band] + 1e-20), axis=1)) / (
        np.mean(pxx[:, band], axis=1) + 1e-20)
    out["slope"] = _median(slopes)
    # the 25th percentile: three quarters of the channels must look white (a few
    # EMG-laden channels of real EEG are nearly flat; the median alone was too close)
    out["flatness"] = _percentile(flat, 25.0)
    # Pearson correlation of each channel with itself shifted by a lag, over the
    # overlap (>= 1.5 s), averaged over channels; max over lags >= 0.25 s. The first
    # and last 0.25 s are left out: the band-pass transients there are not periodic.
    trim = int(round(0.25 * sfreq))
    x = x[:, trim:n_t - trim]
    n_t = x.shape[1]
    lo = int(round(0.25 * sfreq))
    hi = n_t - int(round(1.5 * sfreq))
    if hi > lo:
        nfft = _fft.next_fast_len(2 * n_t, real=True)  # >= 2 n_t - 1: no wrap-around
        # float32 transforms: ~1e-6 relative error, far below any threshold
        spec = _fft.rfft(x.astype(np.float32), nfft, axis=1)
        ac = _fft.irfft(spec.real ** 2 + spec.imag ** 2, nfft, axis=1)[:, lo:hi + 1]
        c2 = np.zeros((n_ch, n_t + 1))
        np.cumsum(x * x, axis=1, out=c2[:, 1:])
        lags = np.arange(lo, hi + 1)
        head = c2[:, n_t - lags]  # energy of x[:n_t - lag]
        tail = c2[:, n_t:n_t + 1] - c2[:, lags]  # energy of x[lag:]
        r = ac / np.sqrt(np.maximum(head * tail, 1e-30))
        out["periodicity"] = float(np.max(np.mean(r, axis=0)))
    return out


def _accepted_runs(starts_s: Sequence[float], accepted: Sequence[bool], window_s: float,
                   sfreq: float, n: int) -> list[tuple[int, int]]:
    """Sample spans ``[a, b)`` of a block of ``n`` samples at ``sfreq`` covered by its
    accepted windows (``window_s`` long, starting at ``starts_s``), overlapping or
    touching ones merged, those shorter than PAD's 2 s left out."""
    spans = sorted((max(0, int(round(float(s) * sfreq))),
                    min(n, math.ceil((float(s) + window_s) * sfreq - 1e-9)))
                   for s, ok in zip(starts_s, accepted) if ok)
    runs: list[tuple[int, int]] = []
    for a, b in spans:
        if runs and a <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], b))
        else:
            runs.append((a, b))
    return [(a, b) for a, b in runs if b - a >= _MIN_SECONDS * sfreq]


def _join_fingerprints(fps: Sequence[bytes]) -> bytes:
    """Fingerprints of one channel set laid end to end, as one (their frames in order)."""
    _, ver, n_bands, n_ch, _, hop, chash = _HEADER.unpack_from(fps[0])
    n_frames = sum(_HEADER.unpack_from(fp)[4] for fp in fps)
    return (_HEADER.pack(_MAGIC, ver, n_bands, n_ch, n_frames, hop, chash)
            + b"".join(fp[_HEADER.size:] for fp in fps))


# ---------------------------------------------------------------------- detector
@functools.lru_cache(maxsize=256)
def _pick_index(ch_names: tuple[str, ...], wanted: tuple[str, ...]) -> list[int]:
    """``channels.pick`` (raises ``InvalidArgument`` for missing channels), memoised:
    a server sees the same few montages on every call."""
    from .channels import pick

    return pick(list(ch_names), list(wanted))


@functools.lru_cache(maxsize=1)
def _warm_kernels() -> None:
    """Compile (or load from Numba's on-disk cache) every PAD kernel once per process,
    with the argument types of a real check, so that no request pays for it."""
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(640, 4)), axis=0)  # a 1/f^2 signal: every stage runs
    det_x = bandpass_1_40(x, 160.0)
    physiology(det_x, 160.0)
    fp = _fingerprint_filtered(det_x, 160.0, _channel_hash(4, None))
    replay_score(fp, [fp])


class PresentationAttackDetector:
    """Replay and non-physiological signal detector used by the service.

    Parameters
    ----------
    ch_names : sequence of str, optional
        Channels to analyse, picked by name from each signal (e.g. the model's). ``None``:
        every channel of the signal, in order.
    replay_threshold : float
        Similarity at or above which a probe is a replay.
    max_slope : float
        The median log-log spectral slope must be below this (EEG ≈ −1 … −2.5).
    max_flatness : float
        Spectral flatness (25th percentile over channels) must be below this (white
        noise ≈ 0.95).
    max_periodicity : float
        Channel-mean autocorrelation at lags ≥ 0.25 s must be below this.
    """

    def __init__(self, ch_names: Sequence[str] | None = None, *,
                 replay_threshold: float = 0.85, max_slope: float = -0.4,
                 max_flatness: float = 0.915, max_periodicity: float = 0.85) -> None:
        self.ch_names = None if ch_names is None else list(ch_names)
        self.replay_threshold = float(replay_threshold)
        self.max_slope = float(max_slope)
        self.max_flatness = float(max_flatness)
        self.max_periodicity = float(max_periodicity)
        _warm_kernels()

    def _pick(self, samples: np.ndarray, ch_names: Sequence[str] | None) -> tuple[np.ndarray,
                                                                                list | None]:
        if self.ch_names is None or ch_names is None:
            return samples, None if ch_names is None else list(ch_names)
        return samples[:, _pick_index(tuple(ch_names), tuple(self.ch_names))], self.ch_names

    def analyse(self, samples: Any, sfreq: float, ch_names: Sequence[str] | None = None,
                history: Iterable[Any] = (), history_key: Any = None,
                exclude: Iterable[tuple[float, float]] = (), owner: Any = None
                ) -> PadVerdict:
        """Check one probe.

        Parameters
        ----------
        samples : ndarray, shape (n_times, n_channels)
            Microvolts, at least 2 s.
        sfreq : float
        ch_names : sequence of str, optional
        history : iterable of bytes or (kind, bytes)
            The user's stored fingerprints (enrollment and earlier probes).
        history_key : hashable, optional
            Names the history (the service passes the user id): its prepared form is
            then kept between calls and only updated (the same decision, less work).
        exclude : iterable of (start_s, stop_s), optional
            Spans of the probe (seconds from its start) its replay search leaves out:
            the windows the quality gate rejected. An artifact (an electrode pop, a
            movement) rules the band-power envelope of every channel, so one in the
            enrollment and one in a genuine probe made the two look like one recording
            replayed.
        owner : hashable, optional
            Whose fingerprints ``history`` holds (default ``history_key``): what is
            kept of them goes with :meth:`forget` of it.
        """
        return self._analyse(samples, sfreq, ch_names, history, reference=False,
                             history_key=history_key, exclude=exclude, owner=owner)

    def _analyse(self, samples: Any, sfreq: float, ch_names: Sequence[str] | None,
                 history: Iterable[Any], reference: bool,
                 history_key: Any = None,
                 exclude: Iterable[tuple[float, float]] = (), owner: Any = None
                 ) -> PadVerdict:
        """:meth:`analyse`; ``reference=True`` runs the NumPy/SciPy reference of every
        compiled step instead (the same decisions: for the tests and the benchmark)."""
        sfreq = check_finite_positive("sfreq", sfreq)
        samples, names = self._pick(np.asarray(samples), ch_names)
        def measured(x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
            x -= x.mean(axis=1, keepdims=True)
            x = (_bp_reference if reference else _bp)(x, sfreq, 1.0, 40.0)
            return x, (_physiology_numpy if reference else physiology)(x, sfreq)

        x, ph = measured(_as_channels_first(samples, sfreq))
        if not (ph["rms"] <= _MAX_UV and all(map(math.isfinite, ph.values()))):
            # overflowed (see _tame): measured again on the signal scaled down
            x, k = _tame(_as_channels_first(samples, sfreq))
            x, ph = measured(x)
            ph["rms"] = math.ldexp(ph["rms"], k)  # in µV (the rest does not scale)
        scores = dict(ph)
        reason = ""
        if ph["rms"] < 1e-3:
            reason = "no_signal"
        elif ph["periodicity"] >= self.max_periodicity:
            reason = "periodic"
        elif ph["slope"] >= self.max_slope and ph["flatness"] >= self.max_flatness:
            reason = "flat_spectrum"
        if reason:
            return PadVerdict(True, NON_PHYSIOLOGICAL, reason, "high", scores, None)
        fp = (_fingerprint_filtered_numpy if reference else _fingerprint_filtered)(
            x, sfreq, _channel_hash(x.shape[0], names))
        score, kind = _replay_score(fp, history, reference, history_key,
                                    [(float(a), float(b)) for a, b in exclude], owner)
        scores["replay"] = score
        if score >= self.replay_threshold:
            what = "replay_of_enrollment" if kind == "enroll" else "replay_of_probe"
            return PadVerdict(True, REPLAY, what, "high", scores, None)
        return PadVerdict(False, "", "", "", scores, fp)

    # -- the service's interface -------------------------------------------------
    def check(self, windows: Any, block: Any, fingerprints: Iterable[Any],
              history_key: Any = None, *, owner: Any = None) -> PadVerdict:
        """Service hook: ``block`` has ``samples`` (n_times, n_channels), ``sfreq``,
        ``ch_names``; ``windows`` (the pipeline's, or ``None``: the whole block) says
        which windows of it the quality gate accepted, the signal the decision used:
        only their samples are judged, a rejected window and a tail past the last window
        are left out (a value there far beyond any EEG, which the gate rejects or never
        sees, swamped the envelope and the spectrum of the whole probe). Consecutive
        accepted windows are judged as one probe, separate runs of them each on its own
        (an attack in any is one), and the fingerprint kept is theirs laid end to end.
        When no run is 2 s long, the whole block is judged with the rejected windows'
        pieces left out of the replay search. ``history_key`` names the history and
        ``owner`` whose it is (see :meth:`analyse`)."""
        samples, sfreq = block.samples, block.sfreq
        names = getattr(block, "ch_names", None)
        win = float(getattr(windows, "window_s", 0.0) or 0.0)
        if win <= 0:
            return self.analyse(samples, sfreq, names, fingerprints, history_key, (), owner)
        n = len(samples)
        starts, accepted = windows.starts_s, windows.accepted
        if (len(accepted) == 1 and accepted[0] and not starts[0]
                and n <= math.ceil(win * sfreq - 1e-9)):
            # the common case (a one-window probe): the decision used the whole block
            return self.analyse(samples, sfreq, names, fingerprints, history_key, (), owner)
        runs = _accepted_runs(starts, accepted, win, float(sfreq), n)
        if not runs:
            exclude = [(float(s), float(s) + win)
                       for s, ok in zip(windows.starts_s, windows.accepted) if not ok]
            return self.analyse(samples, sfreq, names, fingerprints, history_key, exclude,
                                owner)
        if len(runs) == 1:  # all of the block, or one piece of it
            a, b = runs[0]
            return self.analyse(samples[a:b], sfreq, names, fingerprints, history_key, (),
                                owner)
        history = list(fingerprints)
        verdicts = []
        for a, b in runs:
            v = self.analyse(samples[a:b], sfreq, names, history, history_key, (), owner)
            if v.attack:
                return v
            verdicts.append(v)
        scores = {k: max(v.scores[k] for v in verdicts) for k in verdicts[0].scores}
        return PadVerdict(False, "", "", "", scores,
                          _join_fingerprints([v.fingerprint for v in verdicts]))

    def history_keys(self) -> set:
        """The history keys (user ids) whose prepared history is kept, and the owners of
        the prepared fingerprints kept (a ContinuousAuthenticate stream's user: it keeps
        no slab), whom :meth:`forget` drops."""
        return _SLABS.keys() | _STORED.owners()

    def forget(self, history_key: Any) -> None:
        """Drop the prepared history kept for ``history_key`` and the prepared
        fingerprints it (as ``owner``) compared with last (the service calls this when
        it deletes the user)."""
        _SLABS.forget(history_key)
        _STORED.forget(history_key)

    def enroll_fingerprints(self, windows: Any, blocks: Iterable[Any]) -> list[bytes]:
        """Service hook: one fingerprint per enrollment block (blocks shorter than 2 s
        are skipped)."""
        return [fp for _, fp in self.block_fingerprints(blocks)]

    def block_fingerprints(self, blocks: Iterable[Any]) -> list[tuple[int, bytes]]:
        """``(index, fingerprint)`` of each block of at least 2 s (the enrollment's
        fingerprints, see :meth:`enroll_fingerprints`, with the index of their block)."""
        out = []
        for i, b in enumerate(blocks):
            if b.samples.shape[0] < _MIN_SECONDS * b.sfreq:
                continue
            samples, names = self._pick(np.asarray(b.samples), getattr(b, "ch_names", None))
            x = _tame(_as_channels_first(samples, float(b.sfreq)))[0]
            x -= x.mean(axis=1, keepdims=True)
            out.append((i, _fingerprint_filtered(_bp(x, float(b.sfreq), 1.0, 40.0),
                                                 float(b.sfreq),
                                                 _channel_hash(x.shape[0], names))))
        return out

    def first_repeat(self, indexed: Sequence[tuple[int, bytes]]
                     ) -> tuple[int, int, float] | None:
        """``(j, i, similarity)`` for the first block ``j`` of :meth:`block_fingerprints`
        whose signal an earlier block ``i`` repeats as a replay would (rescaled, offset,
        noisy, shifted, a piece of it, or the other way round: either one's middle
        piece found in the other at ``replay_threshold`` or above); ``None`` when no
        two blocks look like one recording. Genuine consecutive pieces of one recording
        are far below it (0.70 at most over 100 pairs of 20-s pieces of EEGMMIDB).
        The fingerprints are prepared for this call only, not in the process-wide cache:
        they are tagged with no user there, so deleting the user did not drop them."""
        prepared: dict[tuple[bytes, int], _Stored] = {}

        def prepare(fp: bytes, L: int) -> _Stored:
            k = (bytes(fp), L)
            if k not in prepared:
                prepared[k] = _Stored(k[0], L)
            return prepared[k]

        def score(probe: bytes, stored: bytes) -> float:
            return _replay_score(probe, [stored], False, prepare=prepare)[0]

        for pos, (j, fp) in enumerate(indexed):
            for i, earlier in indexed[:pos]:
                s = max(score(fp, earlier), score(earlier, fp))
                if s >= self.replay_threshold:
                    return j, i, s
        return None
