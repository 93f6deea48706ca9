"""The recognition pipeline: raw samples → windows → embeddings → decisions.

One :class:`Pipeline` wraps one fitted :class:`~nacf_core.model.Model` and one kernel
backend.  The service (enroll, authenticate, identify, streams) and ``nacf evaluate``
both go through it, so the evaluation measures the code path that makes decisions.

For a signal ``samples`` of shape ``(n_times, n_channels)`` in µV (time-major, as the
wire and the devices deliver it), :meth:`Pipeline.windows`:

1. validates it (rate in 125–1000 Hz, the model's channels present, at least one
   window long, not all NaN, not all railed) — :class:`~nacf_core.errors.InvalidArgument`
   with a specific message otherwise;
2. selects the model's channels by canonical name (:func:`nacf_core.channels.pick`);
3. bridges dropped samples (NaN) by holding the last value and, when the rates differ,
   removes each channel's median (a Cyton's 60 000 µV offsets would ring at the edges of
   the anti-aliasing filter) and resamples to the model's rate with a polyphase filter
   (:func:`scipy.signal.resample_poly`);
4. band-passes (Butterworth, second-order sections) from the steady state of the first
   sample, so residual offsets do not ring;
5. cuts windows (``model.window_s`` long, every ``hop_s``), and gates each: a window is
   rejected when any channel has an artifact code (non-finite or railed on the raw
   signal; flat, peak-to-peak or jump on the filtered one) or when its quality score is
   under ``model.min_quality``; rejected windows carry a reason;
6. computes features (:mod:`nacf_core.features`) and L2-normalised embeddings.

Fusion rule (the product's): the probe embedding of several windows is the normalised
mean of the accepted windows' embeddings, and its cosine with the template is compared
with ``model.threshold_for(n_windows)``, calibrated for that many windows.

Template adaptation (off by default, :meth:`Pipeline.adapt`): after an accept whose score
clears the threshold by ``margin``, the template moves towards the probe by at most
``rate``, and never further than ``max_drift`` (cosine distance) from the enrollment
embedding it started from.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np
from scipy.linalg.lapack import dsyevd as _dsyevd
from scipy.signal import resample_poly, sosfilt_zi

from nacf_core import kernels
from nacf_core._validation import MAX_SFREQ, MIN_SFREQ
from nacf_core.channels import pick
from nacf_core.errors import FailedPrecondition, InvalidArgument, SignalUnusable
from nacf_core.features import l2_normalize
from nacf_core.kernels import ArtifactLimits, ArtifactReason
from nacf_core.kernels._numba import jit
from nacf_core.model import Model

__all__ = [
    "MAX_SFREQ",
    "MIN_SFREQ",
    "REASON_CODES",
    "Candidate",
    "Decision",
    "Identification",
    "Pipeline",
    "Template",
    "RunningScore",
    "WindowStream",
    "Windows",
    "reason_codes",
    "samples_for",
]

logger = logging.getLogger("nacf.pipeline")


def samples_for(seconds: float, sfreq: float) -> int:
    """The fewest samples at ``sfreq`` that hold ``seconds`` of signal (a window of 4 s at
    250.1 Hz is 1001 samples), allowing for rounding in ``seconds * sfreq``."""
    return math.ceil(seconds * sfreq - 1e-9)


def check_supported_sfreq(sfreq: Any) -> float:
    """``sfreq`` as a float within [``MIN_SFREQ``, ``MAX_SFREQ``], else
    ``InvalidArgument`` saying so."""
    try:
        sfreq = float(sfreq)
    except (TypeError, ValueError):
        raise InvalidArgument(f"'sfreq' must be a number, got {sfreq!r} instead.") from None
    if not (math.isfinite(sfreq) and MIN_SFREQ <= sfreq <= MAX_SFREQ):
        raise InvalidArgument(
            f"sampling rate {sfreq:g} Hz is outside the supported range "
            f"{MIN_SFREQ:g}–{MAX_SFREQ:g} Hz.")
    return sfreq


_REASON_NAMES = {int(r): r.name.lower().replace("_", "-") for r in ArtifactReason}
_LOW_QUALITY = "low_quality"
_OTHER = "other"
#: The codes :func:`reason_codes` returns: one per artifact kind, ``low_quality``, and
#: ``other`` for a reason it does not know (none the pipeline writes).
REASON_CODES: tuple[str, ...] = (*(r.name.lower() for r in ArtifactReason if r),
                                 _LOW_QUALITY, _OTHER)
_CODE_OF_NAME = {n: n.replace("-", "_") for n in _REASON_NAMES.values()}


def reason_codes(reason: str) -> list[str]:
    """The codes of a rejected window's reason (an entry of :attr:`Windows.reasons`,
    e.g. ``"flat on Fp1, Fp2; jump on O1"`` → ``["flat", "jump"]``): one per artifact
    kind it names (``non_finite``, ``railed``, ``flat``, ``peak_to_peak``, ``jump``), or
    ``["low_quality"]`` for a window under the quality gate, ``["other"]`` for a reason
    it does not know; ``[]`` for an accepted one. A bounded set (:data:`REASON_CODES`),
    for metric labels; the reason itself names the channels."""
    if not reason:
        return []
    if reason.startswith("quality "):
        return [_LOW_QUALITY]
    return [_CODE_OF_NAME.get(part.split(" on ", 1)[0], _OTHER)
            for part in reason.split("; ")]


@dataclass
class Windows:
    """The windows of one signal block.

    Attributes
    ----------
    embeddings : ndarray, shape (n_windows, d), float32
        L2-normalised; rows of rejected windows are zeros.
    quality : ndarray, shape (n_windows,), float64 in [0, 1]
    accepted : ndarray, shape (n_windows,), bool
    reasons : list of str, length n_windows
        Empty for an accepted window, else why it was rejected.
    seconds : float
        Duration of the signal block (at its own rate).
    starts_s : ndarray, shape (n_windows,)
        Start time of each window in the block, in seconds.
    window_s : float
        Length of each window, in seconds (0 when not known).
    """

    embeddings: np.ndarray
    quality: np.ndarray
    accepted: np.ndarray
    reasons: list[str]
    seconds: float
    starts_s: np.ndarray
    window_s: float = 0.0

    @property
    def n_windows(self) -> int:
        return len(self.accepted)

    @property
    def n_accepted(self) -> int:
        return int(self.accepted.sum())

    def select(self, index) -> Windows:
        """A subset of the windows (``index``: slice, mask or indices)."""
        idx = np.arange(self.n_windows)[index]
        return Windows(self.embeddings[idx], self.quality[idx], self.accepted[idx],
                       [self.reasons[i] for i in idx], self.seconds, self.starts_s[idx],
                       self.window_s)


_TEMPLATE_MAGIC = b"NACFTPL1"


@dataclass
class Template:
    """An enrolled person's template (biometric data: store it encrypted).

    Attributes
    ----------
    embedding : ndarray, shape (d,), float32, unit norm
        Normalised mean of the accepted enrollment windows' embeddings.
    model_version : str
    n_epochs : int
        Accepted enrollment windows.
    quality : float
        Their mean quality.
    n_rejected : int
    rejected : dict of str to int
        Rejected windows per reason.
    anchor : ndarray, shape (d,), float32
        The enrollment embedding before any adaptation (bounds the drift).
    n_updates : int
        Adaptations applied.
    """

    embedding: np.ndarray
    model_version: str
    n_epochs: int
    quality: float
    n_rejected: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    anchor: np.ndarray | None = None
    n_updates: int = 0

    def __post_init__(self):
        self.embedding = np.ascontiguousarray(self.embedding, dtype=np.float32)
        if self.anchor is None:
            self.anchor = self.embedding.copy()
        self.anchor = np.ascontiguousarray(self.anchor, dtype=np.float32)

    def to_bytes(self) -> bytes:
        """``NACFTPL1`` + header length (uint32 LE) + JSON header + float32 arrays."""
        header = json.dumps({
            "model_version": self.model_version, "dim": int(self.embedding.shape[0]),
            "n_epochs": int(self.n_epochs), "quality": float(self.quality),
            "n_rejected": int(self.n_rejected), "rejected": self.rejected,
            "n_updates": int(self.n_updates),
        }, sort_keys=True).encode()
        return (_TEMPLATE_MAGIC + struct.pack("<I", len(header)) + header
                + self.embedding.astype("<f4").tobytes() + self.anchor.astype("<f4").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Template:
        """Parse :meth:`to_bytes`; :class:`InvalidArgument` if the bytes are not a template."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"template data must be bytes, got {type(data).__name__} instead.")
        data = bytes(data)
        if len(data) < 12 or data[:8] != _TEMPLATE_MAGIC:
            raise InvalidArgument("template data is not a nacf template (bad magic bytes).")
        (n,) = struct.unpack("<I", data[8:12])
        try:
            h = json.loads(data[12:12 + n].decode())
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
            raise InvalidArgument(f"template data has a corrupt header ({exc}).") from None
        try:
            if not isinstance(h, dict):
                raise ValueError(f"not a JSON object but a {type(h).__name__}")
            dim = _header_int(h, "dim", 1)
            version = _header_field(h, "model_version")
            if not (isinstance(version, str) and 1 <= len(version) <= 256
                    and version.isprintable()):
                raise ValueError(f"field 'model_version' must be a printable string of 1 to "
                                 f"256 characters, got {_short(version)}")
            n_epochs = _header_int(h, "n_epochs", 1)
            quality = _header_field(h, "quality")
            if isinstance(quality, bool) or not isinstance(quality, (int, float)) \
                    or not 0.0 <= quality <= 1.0:
                raise ValueError(f"field 'quality' must be a number in [0, 1], got "
                                 f"{_short(quality)}")
            n_rejected = _header_int(h, "n_rejected", 0, 0)
            n_updates = _header_int(h, "n_updates", 0, 0)
            rejected = h.get("rejected", {})
            if not isinstance(rejected, dict) or not all(
                    type(c) is int and c >= 0 for c in rejected.values()):
                raise ValueError(f"field 'rejected' must be an object of reason: count "
                                 f"(an integer >= 0), got {_short(rejected)}")
        except ValueError as exc:
            raise InvalidArgument(f"template data has a corrupt header: {exc}.") from None
        body = data[12 + n:]
        if len(body) != 8 * dim:
            raise InvalidArgument(
                f"template data is truncated or corrupt: expected {8 * dim} bytes of "
                f"embeddings for dimension {dim}, got {len(body)}.")
        emb = np.frombuffer(body[:4 * dim], dtype="<f4").astype(np.float32)
        anchor = np.frombuffer(body[4 * dim:], dtype="<f4").astype(np.float32)
        if not (np.all(np.isfinite(emb)) and np.all(np.isfinite(anchor))):
            raise InvalidArgument("template data is corrupt: non-finite embedding values.")
        for what, v in (("embedding", emb), ("anchor", anchor)):
            # unit norm as enrollment and adaptation write it: a zero embedding scored 0
            # against every probe
            norm = float(np.linalg.norm(v.astype(np.float64)))
            if abs(norm - 1.0) > 1e-3:
                raise InvalidArgument(f"template data is corrupt: its {what} has norm "
                                      f"{norm:.6g}, expected 1.")
        return cls(embedding=emb, model_version=version, n_epochs=n_epochs,
                   quality=float(quality), n_rejected=n_rejected, rejected=dict(rejected),
                   anchor=anchor, n_updates=n_updates)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _header_field(h: dict, key: str, default: Any = None) -> Any:
    if key not in h:
        if default is None:
            raise ValueError(f"field {key!r} is missing")
        return default
    return h[key]


def _header_int(h: dict, key: str, lo: int, default: int | None = None) -> int:
    """``h[key]``: a JSON integer >= ``lo`` (a bool is not; ``default`` when absent)."""
    v = _header_field(h, key, default)
    if type(v) is not int or v < lo or v > 2**31 - 1:
        raise ValueError(f"field {key!r} must be an integer >= {lo}, got {_short(v)}")
    return v


@dataclass
class Decision:
    """A 1:1 verification decision.

    ``score`` is the cosine of the fused probe embedding with the template (0.0 and
    ``windows_used == 0`` when no window passed the gate); ``threshold`` is the one
    calibrated for ``windows_used`` windows.  ``embedding`` is the fused probe
    embedding (float32, shape (d,)), for template adaptation.
    """

    accepted: bool
    score: float
    threshold: float
    quality: float
    reasons: list[str]
    model_version: str
    windows_used: int
    seconds: float
    n_windows: int = 0
    embedding: np.ndarray | None = None


@dataclass
class Candidate:
    user_id: str
    score: float
    accepted: bool


@dataclass
class Identification:
    """1:N result: the ``k`` best candidates, best first."""

    candidates: list[Candidate]
    threshold: float
    quality: float
    reasons: list[str]
    model_version: str
    windows_used: int
    seconds: float


def _summarise(reasons: Sequence[str]) -> list[str]:
    """Distinct rejection reasons with their counts, most frequent first."""
    counts: dict[str, int] = {}
    for r in reasons:
        if r:
            counts[r] = counts.get(r, 0) + 1
    return [f"{n} window(s): {r}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1])]


@jit
def _embed_one_kernel(x, p, shrink, eps, iu0, iu1, comp_w, offset, out):  # pragma: no cover
    """Embedding of one gated, filtered window ``x`` (c, W) float64 into ``out`` (d,)
    float32: shrunk covariance, whitened by ``p``, matrix logarithm (eigenvalues floored
    at ``eps`` times the largest), its upper triangle ``iu0, iu1`` projected by
    ``comp_w`` (weights folded in) less ``offset``, unit norm. The operations of
    :meth:`Pipeline._embed_one_numpy` (LAPACK ``syevd`` for the eigendecomposition);
    only the order of a few sums differs (NumPy's pairwise mean, BLAS's product), so
    the float32 result agrees to rounding (bit for bit on real windows, tests)."""
    c, W = x.shape
    mu = np.empty(c)
    for i in range(c):
        acc = 0.0
        for t in range(W):
            acc += x[i, t]
        mu[i] = acc / W
    s = np.dot(x, x.T)
    scale = (1.0 - shrink) / W
    for i in range(c):
        for j in range(c):
            s[i, j] = (s[i, j] - W * (mu[i] * mu[j])) * scale
    if shrink:
        tr = 0.0
        for i in range(c):
            tr += s[i, i]
        add = tr * (shrink / ((1.0 - shrink) * c))
        for i in range(c):
            s[i, i] += add
    w, v = np.linalg.eigh(np.dot(np.dot(p, s), p))
    floor = eps * max(w[c - 1], 1e-300)
    for k in range(c):
        w[k] = np.log(max(w[k], floor))
    lg = np.dot(v * w, v.T)
    d = comp_w.shape[1]
    z = np.zeros(d)
    for n in range(iu0.shape[0]):
        val = lg[iu0[n], iu1[n]]
        for j in range(d):
            z[j] += val * comp_w[n, j]
    nn = 0.0
    for j in range(d):
        z[j] -= offset[j]
        nn += z[j] * z[j]
    inv = 1.0 / np.sqrt(nn)
    for j in range(d):
        out[j] = np.float32(z[j] * inv)


class Pipeline:
    """Apply a fitted model to raw signal blocks.

    Parameters
    ----------
    model : Model
    backend : {"cython", "numba", "reference"}, optional
        Kernel backend; default ``NACF_KERNEL_BACKEND`` or ``"cython"``.
    instrument : callable, optional
        ``instrument(module, backend_name)`` returns what the pipeline calls instead of
        the backend module (the same functions): the server passes
        ``metrics.InstrumentedKernels`` so that every kernel call is timed in
        ``nacfauth_kernel_duration_seconds``; the pipeline itself knows no metrics.
    """

    def __init__(self, model: Model, backend: str | None = None, *,
                 instrument: Callable[[Any, str], Any] | None = None):
        if not isinstance(model, Model):
            raise TypeError(f"'model' must be a nacf_core.model.Model, got {type(model).__name__}.")
        if backend is not None and backend not in kernels.BACKENDS:
            raise ValueError(
                "Invalid value for the 'backend' parameter. Allowed values are "
                f"{', '.join(repr(b) for b in kernels.BACKENDS)}, but got {backend!r} instead.")
        self.model = model
        self.backend = backend or kernels.default_backend_name()
        self._k = kernels.backend(self.backend)
        if instrument is not None:
            self._k = instrument(self._k, self.backend)
        self._limits = ArtifactLimits(**model.artifact_limits)
        # the filtered windows' checks: RAILED is the raw signal's (_raw_reasons), since
        # the band-pass overshoots a large step past the rail level the ADC never reached
        self._filtered_limits = replace(self._limits, rail_uv=math.inf)
        self._sos = np.ascontiguousarray(self._k.bandpass_sos(
            model.band[0], model.band[1], model.sfreq, model.filter_order), dtype=np.float64)
        self._zi_unit = sosfilt_zi(self._sos)[:, :, None]  # (n_sections, 2, 1)
        self._n_win = model.n_window_samples()
        self._picks: dict[tuple, list[int]] = {}
        self._shrink = float(model.covariances.shrinkage)
        self._eps = float(model.tangent.eps)
        self._fitted = hasattr(model.projection, "components_")
        if self._fitted:  # plain arrays for the hot path
            self._p = np.ascontiguousarray(model.tangent.reference_inv_sqrt_)
            self._iu = model.tangent.triu_
            self._w = model.tangent.weights_
            # fold the √2 weights and the centring into the projection:
            # z = (t * w - mean) @ comp = u @ (w[:, None] * comp) - mean @ comp
            comp = model.projection.components_
            self._comp_w = np.ascontiguousarray(self._w[:, None] * comp)
            self._offset = model.projection.mean_ @ comp
            self._dim = int(comp.shape[1])
            self._iu0, self._iu1 = (np.ascontiguousarray(a, dtype=np.int64) for a in self._iu)
            # compile (or load from Numba's disk cache) the embedding kernel now, so no
            # request pays for it
            c = len(model.ch_names)
            self._embed_one(np.random.default_rng(0).normal(size=(c, max(c + 1, 8))))

    @property
    def model_version(self) -> str:
        return self.model.version

    # ------------------------------------------------------------------ windows
    def windows(self, samples: np.ndarray, sfreq: float, ch_names: Sequence[str],
                hop_s: float | None = None) -> Windows:
        """Cut, gate and embed a signal block.

        Parameters
        ----------
        samples : ndarray, shape (n_times, n_channels), float32 or float64, µV
        sfreq : float
            Its sampling rate, 125–1000 Hz.
        ch_names : sequence of str, length n_channels
            Channel labels as the file or device writes them.
        hop_s : float, optional
            Hop between windows (default ``model.hop_s``).

        Returns
        -------
        Windows
        """
        epochs, q, accepted, reasons, seconds, starts = self.epochs(samples, sfreq, ch_names, hop_s)
        emb = np.zeros((len(accepted), self._dim), dtype=np.float32)
        if accepted.any():
            emb[accepted] = self._embed(epochs[accepted])
        return Windows(emb, q, accepted, reasons, seconds, starts, float(self.model.window_s))

    def epochs(self, samples: np.ndarray, sfreq: float, ch_names: Sequence[str],
               hop_s: float | None = None):
        """The front end of :meth:`windows` (steps 1–5), without features.

        Returns
        -------
        epochs : ndarray, shape (n_windows, n_channels, n_times), float64
            Band-passed windows at the model's rate.
        quality : ndarray, shape (n_windows,)
        accepted : ndarray, shape (n_windows,), bool
        reasons : list of str
        seconds : float
        starts_s : ndarray, shape (n_windows,)
        """
        m = self.model
        x, sfreq, idx = self._check_signal(samples, sfreq, ch_names)
        hop_s = m.hop_s if hop_s is None else float(hop_s)
        if not (math.isfinite(hop_s) and hop_s > 0):
            raise InvalidArgument(f"'hop_s' must be a finite number > 0, got {hop_s!r} instead.")
        n_in = x.shape[0]
        seconds = n_in / sfreq
        if n_in < samples_for(m.window_s, sfreq):
            raise InvalidArgument(
                f"the signal is too short: {seconds:.3f} s, but one window needs "
                f"{m.window_s:g} s.")
        x = np.array(x[:, idx], dtype=np.float64)  # a float64 copy we may modify
        rail = self._limits.rail_uv
        hi, lo = float(x.max()), float(x.min())  # NaN propagates into both
        if -rail < lo and hi < rail:  # the common case: all finite, none railed
            finite = railed = None
        else:
            finite, railed = self._finite_railed(x)
            if not finite.all():
                x = self._bridge(x, finite)
        if sfreq != m.sfreq:
            # remove the offsets first: the polyphase filter's edges would ring on them
            x -= np.median(x, axis=0)
            frac = Fraction(m.sfreq / sfreq).limit_denominator(1000)
            x = np.ascontiguousarray(
                resample_poly(x, frac.numerator, frac.denominator, axis=0, padtype="line"))
        zi = self._zi_unit * x[:1][None]
        y, _ = self._k.sosfilt(self._sos, x, axis=0, zi=zi)
        n = y.shape[0]
        hop = max(1, int(round(hop_s * m.sfreq)))
        W = self._n_win
        if n < W:
            raise InvalidArgument(
                f"the signal is too short: {seconds:.3f} s, but one window needs "
                f"{m.window_s:g} s.")
        n_w = (n - W) // hop + 1
        starts = np.arange(n_w) * hop
        if n_w == 1:
            epochs = np.ascontiguousarray(y[None, :W].transpose(0, 2, 1))  # (1, c, W)
        else:
            epochs = np.ascontiguousarray(
                np.lib.stride_tricks.sliding_window_view(y, W, axis=0)[starts])  # (n_w, c, W)
        reason = self._k.detect_artifacts(epochs, m.sfreq, self._filtered_limits)
        if finite is not None:
            raw_reason = self._raw_reasons(finite, railed, starts * (sfreq / m.sfreq),
                                           W * sfreq / m.sfreq)
            take = (raw_reason != 0) & ((reason == 0) | (raw_reason < reason))
            reason = np.where(take, raw_reason, reason).astype(np.int8)
        _, q = self._k.quality(epochs, m.sfreq, reason)
        bad_ch = reason != 0
        accepted = ~bad_ch.any(axis=1) & (q >= m.min_quality)
        reasons = self._reasons(reason, q, accepted)
        return (epochs, np.asarray(q, dtype=np.float64), accepted, reasons, seconds,
                starts / m.sfreq)

    def _finite_railed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(finite, railed)`` masks of ``x`` (model channels, float64), or
        ``SignalUnusable`` (an ``InvalidArgument``) when nothing of it is usable: all
        NaN/inf, or railed or non-finite everywhere."""
        finite = np.isfinite(x)
        if not finite.any():
            raise self._unusable(False)
        railed = np.abs(np.where(finite, x, 0.0)) >= self._limits.rail_uv
        if (railed | ~finite).all():
            raise self._unusable(True)
        return finite, railed

    def _unusable(self, any_finite: bool) -> SignalUnusable:
        """The error of a signal with no usable sample: all NaN/inf (``any_finite``
        false), else railed or non-finite everywhere."""
        if not any_finite:
            return SignalUnusable("the signal is all NaN/inf on the model's channels "
                                  f"({', '.join(self.model.ch_names)}).", "non_finite")
        return SignalUnusable(
            f"the signal is railed (|x| >= {self._limits.rail_uv:g} µV) on every model channel "
            "for its whole length: check the electrodes and the amplifier gain.", "railed")

    def window_stream(self, sfreq: float, ch_names: Sequence[str],
                      hop_s: float | None = None) -> WindowStream:
        """A :class:`WindowStream`: the windows of a signal at the model's rate that
        arrives piece by piece, each computed once."""
        return WindowStream(self, sfreq, ch_names, hop_s)

    def running_score(self, template: Template) -> RunningScore:
        """A :class:`RunningScore` against ``template``."""
        return RunningScore(self, template)

    def _check_signal(self, samples, sfreq, ch_names):
        if not isinstance(samples, np.ndarray):
            raise InvalidArgument(
                f"'samples' must be a numpy.ndarray, got {type(samples).__name__} instead.")
        if samples.ndim != 2:
            raise InvalidArgument(
                f"'samples' must be 2-D (n_times, n_channels), got shape {samples.shape}.")
        if samples.dtype.type not in (np.float32, np.float64):
            raise InvalidArgument(
                f"'samples' must have dtype float32 or float64, got {samples.dtype.name}.")
        sfreq = check_supported_sfreq(sfreq)
        ch_names = list(ch_names)
        if len(ch_names) != samples.shape[1]:
            raise InvalidArgument(
                f"'ch_names' has {len(ch_names)} names but 'samples' has "
                f"{samples.shape[1]} channels (shape {samples.shape}; expected time-major "
                "(n_times, n_channels)).")
        key = tuple(ch_names)
        idx = self._picks.get(key)
        if idx is None:
            idx = pick(ch_names, self.model.ch_names)
            if len(self._picks) < 64:
                self._picks[key] = idx
        return samples, sfreq, idx

    @staticmethod
    def _bridge(x: np.ndarray, finite: np.ndarray) -> np.ndarray:
        """Non-finite samples replaced (in place) by the channel's last finite one."""
        n = x.shape[0]
        for c in range(x.shape[1]):
            ok = finite[:, c]
            if not ok.any():
                x[:, c] = 0.0
                continue
            last = np.where(ok, np.arange(n), 0)
            np.maximum.accumulate(last, out=last)
            first = int(np.argmax(ok))
            last[:first] = first
            x[:, c] = x[last, c]
        return x

    def _raw_reasons(self, finite, railed, starts_in, width_in) -> np.ndarray:
        """NON_FINITE / RAILED per (window, channel) on the raw input signal."""
        n = finite.shape[0]
        lo = np.clip(np.floor(starts_in).astype(np.int64), 0, n)
        hi = np.clip(np.ceil(starts_in + width_in).astype(np.int64), 0, n)
        out = np.zeros((len(starts_in), finite.shape[1]), dtype=np.int8)
        if finite.all() and not railed.any():
            return out
        cnf = np.vstack([np.zeros((1, finite.shape[1]), np.int64), np.cumsum(~finite, axis=0)])
        crl = np.vstack([np.zeros((1, finite.shape[1]), np.int64), np.cumsum(railed, axis=0)])
        n_nf = cnf[hi] - cnf[lo]
        n_rl = crl[hi] - crl[lo]
        need = np.maximum(1, self._limits.rail_fraction * (hi - lo))[:, None]
        out[n_rl >= need] = ArtifactReason.RAILED
        out[n_nf > 0] = ArtifactReason.NON_FINITE
        return out

    def _reasons(self, reason, q, accepted) -> list[str]:
        names = self.model.ch_names
        out = []
        for i in range(len(accepted)):
            if accepted[i]:
                out.append("")
                continue
            bad = np.flatnonzero(reason[i])
            if bad.size:
                by: dict[str, list[str]] = {}
                for c in bad:
                    by.setdefault(_REASON_NAMES[int(reason[i, c])], []).append(names[c])
                out.append("; ".join(f"{r} on {', '.join(chs)}" for r, chs in by.items()))
            else:
                out.append(f"quality {q[i]:.2f} below {self.model.min_quality:.2f}")
        return out

    def _embed(self, epochs: np.ndarray) -> np.ndarray:
        """Embeddings of gated, filtered windows (n, c, W) → (n, d) float32, unit norm."""
        if epochs.shape[0] == 1:
            return self._embed_one(epochs[0])[None, :]
        W = epochs.shape[-1]
        xc = epochs - epochs.mean(axis=-1, keepdims=True)
        s = xc @ np.swapaxes(xc, -1, -2)
        s *= (1.0 - self._shrink) / W
        c = s.shape[-1]
        if self._shrink:
            mu = np.trace(s, axis1=-2, axis2=-1) * (self._shrink / ((1.0 - self._shrink) * c))
            d = np.arange(c)
            s[:, d, d] += mu[:, None]
        mat = self._p @ s @ self._p
        w, v = np.linalg.eigh(mat)
        w = np.log(np.maximum(w, self._eps * np.maximum(w[:, -1:], 1e-300)))
        logm = (v * w[:, None, :]) @ np.swapaxes(v, -1, -2)
        z = logm[:, self._iu[0], self._iu[1]] @ self._comp_w
        z -= self._offset
        z /= np.sqrt(np.einsum("ij,ij->i", z, z))[:, None]
        return z.astype(np.float32)

    def _embed_one(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_embed` of one window (c, W) in one compiled call
        (:func:`_embed_one_kernel`, equal to :meth:`_embed_one_numpy` to float32
        rounding): in the server each of the ~15 small NumPy/LAPACK calls it replaces
        cost 2-5x its in-process time."""
        out = np.empty(self._dim, dtype=np.float32)
        _embed_one_kernel(np.ascontiguousarray(x, dtype=np.float64), self._p, self._shrink,
                          self._eps, self._iu0, self._iu1, self._comp_w, self._offset, out)
        return out

    def _embed_one_numpy(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_embed` of one window (c, W): the same maths in 2-D (the reference of
        :meth:`_embed_one`)."""
        W = x.shape[1]
        mu = x.mean(axis=1)
        s = x @ x.T  # centred without a centred copy: x x' - W mu mu'
        s -= W * np.outer(mu, mu)
        a = self._shrink
        s *= (1.0 - a) / W
        if a:
            s.flat[:: s.shape[0] + 1] += np.trace(s) * (a / ((1.0 - a) * s.shape[0]))
        w, v, info = _dsyevd(self._p @ s @ self._p)
        if info != 0:  # pragma: no cover - LAPACK failure on a finite symmetric matrix
            w, v = np.linalg.eigh(self._p @ s @ self._p)
        w = np.log(np.maximum(w, self._eps * max(w[-1], 1e-300)))
        z = ((v * w) @ v.T)[self._iu] @ self._comp_w
        z -= self._offset
        z *= 1.0 / math.sqrt(z @ z)
        return z.astype(np.float32)

    # ------------------------------------------------------------------ enroll
    def enroll(self, blocks: Sequence[tuple[np.ndarray, float, Sequence[str]]]) -> Template:
        """Build a template from one or more signal blocks.

        Parameters
        ----------
        blocks : list of (samples, sfreq, ch_names)
            Each as for :meth:`windows`; windows are cut every ``model.hop_s``.

        Returns
        -------
        Template
            With the counts of accepted and rejected windows (and why).

        Raises
        ------
        InvalidArgument
            A block is invalid (see :meth:`windows`).
        FailedPrecondition
            Fewer than ``model.min_enroll_epochs`` windows passed the quality gate.
        """
        if isinstance(blocks, tuple) and len(blocks) == 3 and isinstance(blocks[0], np.ndarray):
            blocks = [blocks]
        blocks = list(blocks)
        if not blocks:
            raise InvalidArgument("'blocks' is empty: enrollment needs at least one signal block.")
        windows = []
        for i, block in enumerate(blocks):
            if not (isinstance(block, (tuple, list)) and len(block) == 3):
                raise InvalidArgument(
                    f"blocks[{i}] must be a (samples, sfreq, ch_names) tuple, got "
                    f"{type(block).__name__}.")
            windows.append(self.windows(*block))
        return self.template_from_windows(windows)

    def template_from_windows(self, windows: Sequence[Windows]) -> Template:
        """The template :meth:`enroll` builds, from the enrollment blocks' windows already
        computed (:meth:`windows` with the model's hop, one :class:`Windows` per block):
        a caller that needs them too (the service reports every rejected window) does not
        compute them twice.

        Raises
        ------
        InvalidArgument
            No windows.
        FailedPrecondition
            Fewer than ``model.min_enroll_epochs`` windows passed the quality gate.
        """
        windows = list(windows)
        if not windows:
            raise InvalidArgument("'windows' is empty: enrollment needs at least one signal "
                                  "block.")
        embs, quals, reasons = [], [], []
        for w in windows:
            embs.append(w.embeddings[w.accepted])
            quals.append(w.quality[w.accepted])
            reasons.extend(w.reasons)
        emb = np.concatenate(embs)
        need = self.model.min_enroll_epochs
        rejected = _summarise(reasons)
        n_rej = sum(1 for r in reasons if r)
        if len(emb) < need:
            detail = f" Rejected: {'; '.join(rejected)}." if rejected else ""
            raise FailedPrecondition(
                f"enrollment needs at least {need} good {self.model.window_s:g}-s windows "
                f"(about {(need - 1) * self.model.hop_s + self.model.window_s:g} s of clean "
                f"signal); got {len(emb)} of {len(reasons)}.{detail}")
        counts: dict[str, int] = {}
        for r in reasons:
            if r:
                counts[r] = counts.get(r, 0) + 1
        template = Template(
            embedding=l2_normalize(emb.astype(np.float64).mean(axis=0)),
            model_version=self.model_version, n_epochs=len(emb),
            quality=float(np.concatenate(quals).mean()), n_rejected=n_rej, rejected=counts)
        logger.debug("enrollment template from %d windows (%d rejected)", len(emb), n_rej)
        return template

    # ------------------------------------------------------------------ matching
    def _check_template(self, template: Template) -> Template:
        if not isinstance(template, Template):
            raise TypeError(f"'template' must be a Template, got {type(template).__name__}.")
        if template.model_version != self.model_version:
            raise InvalidArgument(
                f"the template was enrolled with model {template.model_version!r} but this "
                f"pipeline runs {self.model_version!r}: re-enroll the user.")
        return template

    def score(self, windows: Windows, template: Template) -> np.ndarray:
        """Cosine score of every window with the template, shape (n_windows,), float32
        (0 for rejected windows)."""
        self._check_template(template)
        return (windows.embeddings @ template.embedding).astype(np.float32)

    @staticmethod
    def fuse(embeddings: np.ndarray) -> np.ndarray:
        """The fusion rule: normalised mean of window embeddings (n, d) → (d,) float32."""
        return l2_normalize(np.asarray(embeddings, dtype=np.float64).mean(axis=0))

    def verify(self, samples: np.ndarray, sfreq: float, ch_names: Sequence[str],
               template: Template, hop_s: float | None = None) -> Decision:
        """1:1 verification of a signal block against a template.

        Windows are non-overlapping by default (``hop_s = model.window_s``); the accepted
        ones are fused (:meth:`fuse`) and compared with ``threshold_for(windows_used)``.
        """
        self._check_template(template)
        w = self.windows(samples, sfreq, ch_names,
                         hop_s=self.model.window_s if hop_s is None else hop_s)
        return self.decide(w, template)

    def decide(self, windows: Windows, template: Template) -> Decision:
        """The decision for already computed windows (see :meth:`verify`)."""
        self._check_template(template)
        n_used = windows.n_accepted
        threshold = self.model.threshold_for(max(n_used, 1))
        reasons = _summarise(windows.reasons)
        quality = float(windows.quality.mean()) if windows.n_windows else 0.0
        if n_used == 0:
            return Decision(False, 0.0, threshold, quality,
                            ["no window passed the quality gate", *reasons], self.model_version,
                            0, windows.seconds, windows.n_windows, None)
        probe = self.fuse(windows.embeddings[windows.accepted])
        score = float(probe @ template.embedding)
        accepted = score >= threshold
        if not accepted:
            reasons = [f"score {score:.3f} below threshold {threshold:.3f}", *reasons]
        return Decision(bool(accepted), score, threshold, quality, reasons, self.model_version,
                        n_used, windows.seconds, windows.n_windows, probe)

    def identify(self, samples: np.ndarray, sfreq: float, ch_names: Sequence[str],
                 templates_matrix: np.ndarray, user_ids: Sequence[str], k: int = 1,
                 hop_s: float | None = None) -> Identification:
        """1:N identification: the ``k`` best-matching users, best first.

        Parameters
        ----------
        templates_matrix : ndarray, shape (n_users, d), float32, rows unit norm
        user_ids : sequence of str, length n_users
        k : int
            ``1 <= k <= n_users``.
        """
        from nacf_core.matching import top_k

        t = np.ascontiguousarray(templates_matrix, dtype=np.float32)
        if t.ndim != 2 or t.shape[1] != self.model.embedding_dim:
            raise InvalidArgument(
                f"'templates_matrix' must have shape (n_users, {self.model.embedding_dim}), "
                f"got {np.shape(templates_matrix)}.")
        user_ids = list(user_ids)
        if len(user_ids) != t.shape[0]:
            raise InvalidArgument(
                f"'user_ids' has {len(user_ids)} entries for {t.shape[0]} templates.")
        if t.shape[0] == 0:
            raise InvalidArgument("'templates_matrix' is empty: no enrolled users to identify.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= t.shape[0]:
            raise InvalidArgument(f"'k' must be an integer in [1, {t.shape[0]}], got {k!r}.")
        w = self.windows(samples, sfreq, ch_names,
                         hop_s=self.model.window_s if hop_s is None else hop_s)
        n_used = w.n_accepted
        threshold = self.model.threshold_for(max(n_used, 1))
        reasons = _summarise(w.reasons)
        quality = float(w.quality.mean())
        if n_used == 0:
            return Identification([], threshold, quality,
                                  ["no window passed the quality gate", *reasons],
                                  self.model_version, 0, w.seconds)
        probe = self.fuse(w.embeddings[w.accepted])[None, :]
        idx, scores = top_k(probe, t, int(k), backend=self.backend)
        cands = [Candidate(user_ids[int(i)], float(s), bool(s >= threshold))
                 for i, s in zip(idx[0], scores[0])]
        return Identification(cands, threshold, quality, reasons, self.model_version,
                              n_used, w.seconds)

    # ------------------------------------------------------------------ adaptation
    def adapt(self, template: Template, decision: Decision, *, margin: float = 0.05,
              rate: float = 0.1, max_drift: float = 0.05) -> Template:
        """Bounded template update after a confident accept (opt-in; see module docstring).

        Returns the same template when the decision is not an accept clearing the
        threshold by ``margin``; otherwise a new template
        ``normalise((1 - rate) * t + rate * probe)``, pulled back towards the anchor (the
        enrollment embedding) if its cosine with it would drop below ``1 - max_drift``.
        """
        self._check_template(template)
        if not (0 < rate <= 0.5 and 0 <= max_drift < 1 and margin >= 0):
            raise InvalidArgument(
                f"adaptation needs 0 < rate <= 0.5, 0 <= max_drift < 1, margin >= 0; got "
                f"rate={rate}, max_drift={max_drift}, margin={margin}.")
        if (not decision.accepted or decision.embedding is None
                or decision.score < decision.threshold + margin):
            return template
        anchor = template.anchor.astype(np.float64)
        new = (1 - rate) * template.embedding.astype(np.float64) + rate * decision.embedding
        new = new / np.linalg.norm(new)
        lo, hi = 0.0, 1.0
        if new @ anchor < 1 - max_drift:  # bisect the pull-back towards the anchor
            for _ in range(30):
                mid = (lo + hi) / 2
                cand = (1 - mid) * new + mid * anchor
                cand /= np.linalg.norm(cand)
                if cand @ anchor >= 1 - max_drift:
                    hi = mid
                else:
                    lo = mid
            new = (1 - hi) * new + hi * anchor
            new /= np.linalg.norm(new)
        return Template(embedding=new.astype(np.float32), model_version=template.model_version,
                        n_epochs=template.n_epochs, quality=template.quality,
                        n_rejected=template.n_rejected, rejected=dict(template.rejected),
                        anchor=template.anchor, n_updates=template.n_updates + 1)


class WindowStream:
    """The windows :meth:`Pipeline.windows` cuts from a signal at the model's rate that
    arrives piece by piece (``push``), each window computed once, when its last sample
    arrives: the cost of a stream grows with its length, not with its square.

    At the model's rate a window depends on the signal up to its end only (no
    resampling; the band-pass is causal, from the steady state of the first sample; a
    dropped sample takes the last value before it), so the windows of the pieces so far
    are those :meth:`Pipeline.windows` gives their concatenation, bit for bit: the
    band-pass state is carried from piece to piece. One exception is put off: a channel
    that starts with dropped samples takes its first received value there, which may
    come later; until every model channel has had one, the windows (all rejected: a
    channel without a sample in them) are reported as such and computed when it comes,
    or by :meth:`windows` on what arrived.

    :meth:`Pipeline.windows`' checks of the whole signal are made where they can be
    decided: its length on the first piece, and whether it has a usable sample at all
    (not all NaN/inf, not railed everywhere) by :meth:`windows`. A first piece without
    one is not refused (a headset put on after the stream started): its windows are
    rejected, as :meth:`Pipeline.windows` rejects them in the whole signal.
    """

    def __init__(self, pipeline: Pipeline, sfreq: float, ch_names: Sequence[str],
                 hop_s: float | None = None) -> None:
        m = pipeline.model
        self._p = pipeline
        self.sfreq = check_supported_sfreq(sfreq)
        if self.sfreq != m.sfreq:
            raise ValueError(f"a WindowStream takes the model's rate ({m.sfreq:g} Hz), got "
                             f"{self.sfreq:g} Hz: at another rate the resampling reads the "
                             "whole signal (use Pipeline.windows).")
        self._ch = list(ch_names)
        self._hop_s = m.hop_s if hop_s is None else float(hop_s)
        if not (math.isfinite(self._hop_s) and self._hop_s > 0):
            raise InvalidArgument(
                f"'hop_s' must be a finite number > 0, got {hop_s!r} instead.")
        self._hop = max(1, int(round(self._hop_s * m.sfreq)))
        self._W = pipeline._n_win
        self._n = 0               # samples pushed
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._zi: np.ndarray | None = None   # band-pass state after the filtered samples
        self._prev: np.ndarray | None = None  # the last filtered input sample, (1, c)
        c = len(m.ch_names)
        self._y = np.empty((0, c))                  # filtered samples from _y0 on
        self._fin = np.empty((0, c), dtype=bool)    # their raw finite / railed masks
        self._rl = np.empty((0, c), dtype=bool)
        self._y0 = 0
        self._done: list[Windows] = []  # the windows computed, in order
        self._n_done = 0
        self._n_told = 0                # windows push reported (computed or put off)
        self._any_finite = False        # a finite sample pushed, and a usable one
        self._any_usable = False        # (finite, not railed): see windows()

    @property
    def n_windows(self) -> int:
        """Whole windows in the signal pushed so far."""
        return self._n_told

    def push(self, samples: np.ndarray) -> Windows:
        """Add the next piece of signal (``(n_times, n_channels)``, the channels and rate
        of the stream); returns the windows it completed (none: zero windows). A
        window put off (see the class) is returned rejected, with a provisional reason
        and quality; :meth:`windows` has its own."""
        x, _, idx = self._p._check_signal(samples, self.sfreq, self._ch)
        m = self._p.model
        x = np.array(x[:, idx], dtype=np.float64)
        finite = np.isfinite(x)
        railed = np.abs(np.where(finite, x, 0.0)) >= self._p._limits.rail_uv
        if self._n == 0 and x.shape[0] < samples_for(m.window_s, self.sfreq):
            raise InvalidArgument(
                f"the signal is too short: {x.shape[0] / self.sfreq:.3f} s, but one "
                f"window needs {m.window_s:g} s.")
        if not self._any_usable:
            self._any_finite = self._any_finite or bool(finite.any())
            self._any_usable = bool((finite & ~railed).any())
        self._n += x.shape[0]
        if self._zi is None:
            self._pending.append((x, finite, railed))
            if not np.all(np.any([f.any(axis=0) for _, f, _ in self._pending], axis=0)):
                return self._put_off()
            x, finite, railed = (np.concatenate(a) for a in zip(*self._pending))
            self._pending = []
            if not finite.all():
                x = self._p._bridge(x, finite)
            self._zi = self._p._zi_unit * x[:1][None]
        elif not finite.all():  # a dropped sample takes the last value before it
            ok = np.concatenate([np.ones((1, x.shape[1]), dtype=bool), finite])
            x = self._p._bridge(np.concatenate([self._prev, x]), ok)[1:]
        self._filter(x, finite, railed)
        return self._cut()

    def windows(self) -> Windows:
        """Every window of the signal pushed so far (:meth:`Pipeline.windows` of it;
        ``SignalUnusable`` as it, when no sample of it is usable)."""
        if self._n and not self._any_usable:
            raise self._p._unusable(self._any_finite)
        if self._zi is None and self._pending:  # a channel never had a sample
            x = np.concatenate([p[0] for p in self._pending])
            return self._p.windows(x, self.sfreq, list(self._p.model.ch_names),
                                   hop_s=self._hop_s)
        return _concat_windows(self._done, self._n / self.sfreq,
                               float(self._p.model.window_s), self._p._dim)

    # ------------------------------------------------------------------------------
    def _n_whole(self, n: int) -> int:
        return (n - self._W) // self._hop + 1 if n >= self._W else 0

    def _put_off(self) -> Windows:
        k = self._n_whole(self._n) - self._n_told
        starts = (self._n_told + np.arange(k)) * self._hop / self._p.model.sfreq
        self._n_told += k
        return Windows(np.zeros((k, self._p._dim), dtype=np.float32), np.zeros(k),
                       np.zeros(k, dtype=bool), ["non-finite (provisional)"] * k,
                       self._n / self.sfreq, starts, float(self._p.model.window_s))

    def _filter(self, x: np.ndarray, finite: np.ndarray, railed: np.ndarray) -> None:
        p = self._p
        y, self._zi = p._k.sosfilt(p._sos, x, axis=0, zi=self._zi)
        self._prev = x[-1:].copy()
        self._y = np.concatenate([self._y, y]) if len(self._y) else y
        self._fin = np.concatenate([self._fin, finite]) if len(self._fin) else finite
        self._rl = np.concatenate([self._rl, railed]) if len(self._rl) else railed

    def _cut(self) -> Windows:
        """The windows whole in the filtered samples and not computed yet (those put off
        are computed too, returned only by :meth:`windows`)."""
        p, m, W, hop = self._p, self._p.model, self._W, self._hop
        n_w = self._n_whole(self._y0 + len(self._y))
        k0 = self._n_done
        if n_w <= k0:
            return _concat_windows([], self._n / self.sfreq, float(m.window_s), p._dim)
        starts = np.arange(k0, n_w) * hop
        rel = starts - self._y0
        epochs = np.ascontiguousarray(
            np.lib.stride_tricks.sliding_window_view(self._y, W, axis=0)[rel])
        reason = p._k.detect_artifacts(epochs, m.sfreq, p._filtered_limits)
        if len(rel):
            span = slice(int(rel[0]), int(rel[-1]) + W)
            if not self._fin[span].all() or self._rl[span].any():
                raw_reason = p._raw_reasons(self._fin, self._rl, rel * 1.0, W * 1.0)
                take = (raw_reason != 0) & ((reason == 0) | (raw_reason < reason))
                reason = np.where(take, raw_reason, reason).astype(np.int8)
        _, q = p._k.quality(epochs, m.sfreq, reason)
        accepted = ~(reason != 0).any(axis=1) & (q >= m.min_quality)
        reasons = p._reasons(reason, q, accepted)
        emb = np.zeros((len(accepted), p._dim), dtype=np.float32)
        if accepted.any():
            emb[accepted] = p._embed(epochs[accepted])
        new = Windows(emb, np.asarray(q, dtype=np.float64), accepted, reasons,
                      self._n / self.sfreq, starts / m.sfreq, float(m.window_s))
        self._done.append(new)
        self._n_done = n_w
        # keep the samples from the next window's start on
        drop = min(max(0, n_w * hop - self._y0), len(self._y))
        if drop:
            self._y, self._fin, self._rl = (a[drop:] for a in (self._y, self._fin, self._rl))
            self._y0 += drop
        told, self._n_told = self._n_told, max(self._n_told, n_w)
        return new.select(slice(told - k0, None)) if told > k0 else new


def _concat_windows(parts: list[Windows], seconds: float, window_s: float,
                    dim: int) -> Windows:
    parts = [w for w in parts if w.n_windows]
    if not parts:
        return Windows(np.zeros((0, dim), dtype=np.float32), np.zeros(0),
                       np.zeros(0, dtype=bool), [], seconds, np.zeros(0), window_s)
    return Windows(np.concatenate([w.embeddings for w in parts]),
                   np.concatenate([w.quality for w in parts]),
                   np.concatenate([w.accepted for w in parts]),
                   [r for w in parts for r in w.reasons], seconds,
                   np.concatenate([w.starts_s for w in parts]), window_s)


class RunningScore:
    """The score :meth:`Pipeline.decide` gives the accepted windows so far, kept as they
    come (``add`` one window's embedding): the same sums in the same order (the
    fusion's mean adds its rows one after the other), so the same float."""

    def __init__(self, pipeline: Pipeline, template: Template) -> None:
        self._t = pipeline._check_template(template).embedding
        self._sum: np.ndarray | None = None
        self.n = 0

    def add(self, embedding: np.ndarray) -> float:
        e = np.asarray(embedding, dtype=np.float64)
        self._sum = e.copy() if self._sum is None else self._sum + e
        self.n += 1
        probe = l2_normalize(self._sum / self.n)
        return float(probe @ self._t)
