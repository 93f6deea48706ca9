"""The versioned population model: what ``nacf train`` fits and the pipeline applies.

A model fixes the signal it expects (sampling rate, channels, window), the front end
(band, artifact limits, quality floor), the fitted feature chain
(:mod:`nacf_core.features`), the calibrated decision thresholds
(:mod:`nacf_core.calibration`) and the sequential-test parameters
(:mod:`nacf_core.sequential`).

File format
-----------
A NumPy ``.npz`` archive (read with ``allow_pickle=False``: loading a model never runs
code) holding:

- ``meta``: UTF-8 JSON (as a uint8 array) with ``format`` (``"nacf-model"``),
  ``format_version`` (:data:`FORMAT_VERSION`), the version string, every parameter and
  the training/calibration record;
- the fitted arrays (``tangent_reference``, ``projection_mean``,
  ``projection_components``, ``thresholds``);
- ``checksum``: SHA-256 over ``meta`` and every array's name, dtype, shape and bytes,
  written by :meth:`Model.save` and checked by :meth:`Model.load` (every model file nacf
  has written holds one; a file without it is refused, asking to refit it).

:meth:`Model.load` refuses, with :class:`~nacf_core.errors.InvalidArgument` and a message
that says what is wrong, a path that is not a regular file, a file larger than
:data:`MAX_MODEL_BYTES` (64 MiB; the shipped 16-channel model is about 160 kB) or whose
archive members hold more than that uncompressed, a file that is not such an archive, that
has another format version, whose checksum does not match (corrupt or edited), whose
parameters are of the wrong type or out of range (each named in the message: among them a
band-pass that does not compute to a stable filter, a ``window_s`` outside
[:data:`MIN_WINDOW_S`, :data:`MAX_WINDOW_S`] = [1, 20] s, a ``hop_s`` under ``window_s / 8``
or over ``window_s``, fewer than 2 channels, sequential-test parameters whose genuine mean
is not above the impostor mean),
or whose arrays do not fit its parameters, hold non-finite values or would break the
embedding (projection components not linearly independent, or out of scale).  The checksum is not a
signature (anyone can recompute it), so every field is validated regardless.
``model_version`` (``<name>-<first 8 hex digits of the checksum>``) is in every decision,
so two different models never share a version.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import butter, sosfilt_zi

from nacf_core._validation import MAX_CHANNELS, MAX_SFREQ, MIN_SFREQ, npy_data_bytes
from nacf_core.channels import canonical_name
from nacf_core.config import CompleteOrNothing, read_regular_file
from nacf_core.config import short_repr as _show
from nacf_core.errors import InvalidArgument
from nacf_core.features import Covariances, TangentSpace, WithinClassWhitening
from nacf_core.kernels import ArtifactLimits

__all__ = ["FORMAT_VERSION", "MAX_MODEL_BYTES", "MAX_NAME_CHARS", "MAX_WINDOW_S", "MIN_L_FREQ",
           "MIN_WINDOW_S", "Model", "check_windows", "default_model", "default_model_path"]

#: Version of the file layout; bumped when a field changes meaning.
FORMAT_VERSION = 1
#: Largest model file, and largest total of its archive members uncompressed (bytes).
MAX_MODEL_BYTES = 64 * 1024 * 1024
#: Longest model name (a printable string; the version appends 9 characters).
MAX_NAME_CHARS = 128
#: Lowest low band edge (Hz): below it the band-pass's poles are so near 1 that its
#: steady state cannot be computed (1e-7 Hz at order 4) and it removes nothing a window
#: of a few seconds holds.
MIN_L_FREQ = 0.01
#: Most windows a sample may be in: ``hop_s`` is at least ``window_s / MAX_OVERLAP``
#: (enrollment holds every window's epoch, that many times the signal).
MAX_OVERLAP = 8
#: Window lengths (s) a model may have; ``nacf train`` fits 4-s windows. A shorter window
#: holds less than a cycle of the 1 Hz band edge the shipped models keep; a longer one
#: than the server's default ``stream_max_seconds`` (20 s) cannot be decided by
#: ``AuthenticateStream`` (``nacf serve`` refuses to start), makes a wearer change take
#: that long to see, and up to the hour that once loaded is 460 MB per window.
MIN_WINDOW_S = 1.0
MAX_WINDOW_S = 20.0
_ARRAYS = ("tangent_reference", "projection_mean", "projection_components", "thresholds")
_MAX_MEMBERS = 64


@dataclass
class Model:
    """A fitted population model.

    Attributes
    ----------
    name : str
        Human name, e.g. ``"eegmmidb-16ch"``; :attr:`version` appends the checksum.
    sfreq : float
        Rate the model works at; input at another rate is resampled to it.
    ch_names : list of str
        Canonical channel names, in the order of the features.
    window_s, hop_s : float
        Window length and the hop between windows (enrollment and evaluation):
        :func:`check_windows` gives their bounds.
    band : tuple of float
        ``(l_freq, h_freq)`` of the Butterworth band-pass, ``filter_order`` its order.
    artifact_limits : dict
        Fields of :class:`nacf_core.kernels.ArtifactLimits`.
    min_quality : float
        Windows whose quality (the kernel's per-epoch score) is lower are rejected.
    min_enroll_epochs : int
        Good windows an enrollment needs.
    covariances, tangent, projection
        The fitted estimators of :mod:`nacf_core.features`.
    thresholds : ndarray, shape (max_windows,)
        ``thresholds[n - 1]``: the decision threshold on the cosine score of the fused
        embedding of ``n`` windows, calibrated to ``target_fmr``.
    target_fmr : float
    sequential : dict
        Parameters of :class:`nacf_core.sequential.SequentialTest`.
    info : dict
        Training data, calibration record (FNMR with its CI), attribution.
    """

    name: str
    sfreq: float
    ch_names: list[str]
    window_s: float
    hop_s: float
    band: tuple[float, float]
    filter_order: int
    artifact_limits: dict[str, float]
    min_quality: float
    min_enroll_epochs: int
    covariances: Covariances
    tangent: TangentSpace
    projection: WithinClassWhitening
    thresholds: np.ndarray
    target_fmr: float
    sequential: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""

    # ------------------------------------------------------------------ properties
    @property
    def version(self) -> str:
        """``<name>-<checksum prefix>``: unique per fitted content."""
        if not self.checksum:
            self.checksum = self._digest(*self._payload())
        return f"{self.name}-{self.checksum[:8]}"

    @property
    def n_channels(self) -> int:
        return len(self.ch_names)

    @property
    def embedding_dim(self) -> int:
        return int(self.projection.components_.shape[1])

    @property
    def max_windows(self) -> int:
        return len(self.thresholds)

    @property
    def threshold(self) -> float:
        """The single-window threshold."""
        return float(self.thresholds[0])

    def threshold_for(self, n_windows: int) -> float:
        """Threshold for the fused score of ``n_windows`` windows (capped at the table)."""
        n = int(min(max(n_windows, 1), len(self.thresholds)))
        return float(self.thresholds[n - 1])

    def n_window_samples(self) -> int:
        return int(round(self.window_s * self.sfreq))

    # ------------------------------------------------------------------ (de)serialise
    def _payload(self) -> tuple[bytes, dict[str, np.ndarray]]:
        meta = {
            "format": "nacf-model",
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "sfreq": float(self.sfreq),
            "ch_names": list(self.ch_names),
            "window_s": float(self.window_s),
            "hop_s": float(self.hop_s),
            "band": [float(b) for b in self.band],
            "filter_order": int(self.filter_order),
            "artifact_limits": {k: float(v) for k, v in self.artifact_limits.items()},
            "min_quality": float(self.min_quality),
            "min_enroll_epochs": int(self.min_enroll_epochs),
            "shrinkage": float(self.covariances.shrinkage),
            "tangent_eps": float(self.tangent.eps),
            "projection_reg": float(self.projection.reg),
            "target_fmr": float(self.target_fmr),
            "sequential": self.sequential,
            "info": self.info,
        }
        arrays = {
            "tangent_reference": np.ascontiguousarray(self.tangent.reference_, dtype=np.float64),
            "projection_mean": np.ascontiguousarray(self.projection.mean_, dtype=np.float64),
            "projection_components": np.ascontiguousarray(
                self.projection.components_, dtype=np.float64),
            "thresholds": np.ascontiguousarray(self.thresholds, dtype=np.float64),
        }
        return json.dumps(meta, sort_keys=True).encode("utf-8"), arrays

    @staticmethod
    def _digest(meta: bytes, arrays: dict[str, np.ndarray]) -> str:
        h = hashlib.sha256()
        h.update(meta)
        for name in sorted(arrays):
            a = arrays[name]
            h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        meta, arrays = self._payload()
        digest = self._digest(meta, arrays)
        self.checksum = digest
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(meta, dtype=np.uint8),
                 checksum=np.frombuffer(digest.encode(), dtype=np.uint8), **arrays)
        return buf.getvalue()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model atomically: a temporary file of its own in the same folder
        (so two saves to one path never write the same file), flushed to disk, then
        renamed over ``path``.  ``path`` holds the old model or the whole new one, never
        part of one; a save that fails (or is interrupted) removes its temporary file."""
        path = Path(path)
        data = self.to_bytes()
        try:  # never write a file that load() refuses (a name too long, a NaN threshold)
            self.from_bytes(data)
        except InvalidArgument as exc:
            raise InvalidArgument(f"refusing to write model {str(path)!r}, which could not "
                                  f"be loaded: {exc}") from None
        with CompleteOrNothing(path, binary=True, what="model file") as fh:
            fh.write(data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a model file; :class:`InvalidArgument` if it is corrupt or mismatched."""
        path = Path(path)
        data = read_regular_file(path, "model file", MAX_MODEL_BYTES)
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Model:
        """Parse :meth:`to_bytes` output; see :meth:`load`."""
        where = f"model file {source!r}"
        if len(data) > MAX_MODEL_BYTES:
            raise InvalidArgument(f"{where} is larger than the limit of {MAX_MODEL_BYTES} bytes.")
        entries = _read_npz(data, where)
        missing = [k for k in ("meta", "checksum", *_ARRAYS) if k not in entries]
        if missing == ["checksum"]:  # every model file nacf has written holds one
            raise InvalidArgument(
                f"{where} has no SHA-256 checksum, which every model file `nacf train` "
                "writes holds: it was not written by nacf, or was damaged, and cannot be "
                "checked for corruption. Refit it with `nacf train`.")
        if missing:
            raise InvalidArgument(f"{where} is not a nacf model: it lacks {', '.join(missing)}.")
        meta_bytes = entries["meta"].tobytes()
        try:
            meta = json.loads(meta_bytes.decode("utf-8"))
        except ValueError as exc:  # not UTF-8, not JSON, an integer of over 4300 digits
            raise InvalidArgument(f"{where} is corrupt: its metadata is not JSON ({exc}).") from exc
        except RecursionError:
            raise InvalidArgument(f"{where} is corrupt: its metadata JSON is nested too "
                                  "deeply.") from None
        if not isinstance(meta, dict):
            raise InvalidArgument(f"{where} is not a nacf model: its metadata is a JSON "
                                  f"{type(meta).__name__}, not an object.")
        if meta.get("format") != "nacf-model":
            raise InvalidArgument(
                f"{where} is not a nacf model (format {_show(meta.get('format'))}).")
        version = meta.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise InvalidArgument(
                f"{where} has format version {_show(version)}; this nacf reads "
                f"version {FORMAT_VERSION}. Refit it with `nacf train` or use a matching nacf."
            )
        arrays = {k: entries[k] for k in _ARRAYS}
        stored = entries["checksum"].tobytes().decode("ascii", "replace")
        actual = cls._digest(meta_bytes, arrays)
        if stored != actual:
            raise InvalidArgument(
                f"{where} is corrupt: SHA-256 checksum mismatch (stored {stored[:16]}..., "
                f"computed {actual[:16]}...)."
            )
        try:
            model = cls._from_parts(meta, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{where} is invalid or inconsistent: {exc}.") from exc
        model.checksum = actual
        return model

    @classmethod
    def _from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Model:
        """Build the model, validating every field and array it uses (``ValueError``)."""
        name = _text(meta, "name", MAX_NAME_CHARS)
        sfreq = _real(meta, "sfreq", MIN_SFREQ, MAX_SFREQ)  # the pipeline's range
        ch_names = _get(meta, "ch_names")
        if not isinstance(ch_names, list) or not 2 <= len(ch_names) <= MAX_CHANNELS:
            # nacf train fits 2 channels or more (training.model_channels)
            raise ValueError(f"field 'ch_names' must be a list of 2 to {MAX_CHANNELS} channel "
                             f"names, got {_show(ch_names)}")
        ch_names = [_text({"ch_names": c}, "ch_names", 64, shown=f"ch_names[{i}]")
                    for i, c in enumerate(ch_names)]
        for i, c in enumerate(ch_names):  # the pipeline picks input channels by these
            canonical = canonical_name(c)
            if canonical != c:
                raise ValueError(
                    f"field 'ch_names[{i}]' must be an EEG electrode name of the 10-05 system "
                    f"such as 'Fp1', 'Cz' or 'O2', got {_show(c)}"
                    + (f" (written {canonical!r})" if canonical else ""))
        if len(set(ch_names)) != len(ch_names):
            raise ValueError(f"field 'ch_names' must not repeat a name, got {ch_names}")
        window_s, hop_s = check_windows(_get(meta, "window_s"), _get(meta, "hop_s"))
        band = _get(meta, "band")
        if not isinstance(band, list) or len(band) != 2:
            raise ValueError(f"field 'band' must be a list [l_freq, h_freq], got {_show(band)}")
        l_freq = _real({"band": band[0]}, "band", MIN_L_FREQ, sfreq / 2, hi_open=True,
                       shown="band[0]")
        h_freq = _real({"band": band[1]}, "band", l_freq, sfreq / 2, lo_open=True,
                       hi_open=True, shown="band[1]")
        filter_order = _integer(meta, "filter_order", 1, 20)
        _check_band_pass(l_freq, h_freq, sfreq, filter_order)
        limits = _get(meta, "artifact_limits")
        known = [f.name for f in fields(ArtifactLimits)]
        if not isinstance(limits, dict) or not set(limits) <= set(known):
            raise ValueError(f"field 'artifact_limits' must be an object with keys among "
                             f"{', '.join(known)}, got {_show(limits)}")
        artifact_limits = {
            k: _real(limits, k, 0.0, 1.0 if k == "rail_fraction" else 1e9,
                     lo_open=k == "rail_uv", shown=f"artifact_limits.{k}")
            for k in limits}
        min_quality = _real(meta, "min_quality", 0.0, 1.0)
        min_enroll_epochs = _integer(meta, "min_enroll_epochs", 1, 100_000)
        shrinkage = _real(meta, "shrinkage", 0.0, 1.0, hi_open=True)
        tangent_eps = _real(meta, "tangent_eps", 0.0, 1.0, lo_open=True, hi_open=True)
        projection_reg = _real(meta, "projection_reg", 0.0, 1e9)
        target_fmr = _real(meta, "target_fmr", 0.0, 1.0, lo_open=True, hi_open=True)
        sequential = _check_sequential(meta.get("sequential", {}))
        info = meta.get("info", {})
        if not isinstance(info, dict):
            raise ValueError(f"field 'info' must be an object, got {_show(info)}")
        _check_training_record(info.get("training", {}))

        n = len(ch_names)
        ref = _float_array(arrays, "tangent_reference")
        if ref.shape != (n, n):
            raise ValueError(f"tangent_reference has shape {ref.shape}, expected ({n}, {n}) "
                             f"for {n} channels")
        if np.abs(ref - ref.T).max() > 1e-8 * np.abs(ref).max():
            raise ValueError("tangent_reference must be symmetric")
        n_feat = n * (n + 1) // 2
        mean = _float_array(arrays, "projection_mean")
        comp = _float_array(arrays, "projection_components")
        if mean.shape != (n_feat,) or comp.ndim != 2 or comp.shape[0] != n_feat \
                or not 1 <= comp.shape[1] <= n_feat:
            raise ValueError(f"projection arrays {mean.shape}, {comp.shape} do not fit "
                             f"{n_feat} tangent features")
        if np.abs(mean).max() > 1e4:  # a tangent vector's entries are logs: |x| < ~1100
            raise ValueError("projection_mean must hold values within ±10000 (a mean of "
                             f"tangent vectors), got {np.abs(mean).max():.3g}")
        sv = np.linalg.svd(comp, compute_uv=False)  # descending
        if not sv[-1] > sv[0] * 1e-12:  # zeros or a repeated column: an embedding of 0 / 0
            raise ValueError(
                "projection_components must have linearly independent columns (its singular "
                f"values go from {sv[0]:.3g} down to {sv[-1]:.3g})")
        if not 1e-100 <= sv[-1] <= sv[0] <= 1e100:  # the embedding under- or overflows
            raise ValueError(
                "projection_components must have singular values in [1e-100, 1e+100], got "
                f"{sv[-1]:.3g} to {sv[0]:.3g}")
        thresholds = _float_array(arrays, "thresholds")
        if thresholds.ndim != 1 or not 1 <= len(thresholds) <= 1000:
            raise ValueError(f"thresholds must be a 1-D array of 1 to 1000 values, got shape "
                             f"{thresholds.shape}")
        if np.any(np.abs(thresholds) > 1):
            raise ValueError("thresholds must be cosine scores in [-1, 1]")
        cov = Covariances(shrinkage=shrinkage)
        cov.n_channels_ = n
        ts = TangentSpace(eps=tangent_eps)
        ts.set_reference(ref)  # ValueError unless symmetric positive definite
        proj = WithinClassWhitening(n_components=comp.shape[1], reg=projection_reg)
        proj.mean_, proj.components_, proj.n_components_ = mean, comp, comp.shape[1]
        return cls(
            name=name, sfreq=sfreq, ch_names=ch_names, window_s=window_s, hop_s=hop_s,
            band=(l_freq, h_freq), filter_order=filter_order, artifact_limits=artifact_limits,
            min_quality=min_quality, min_enroll_epochs=min_enroll_epochs,
            covariances=cov, tangent=ts, projection=proj, thresholds=thresholds,
            target_fmr=target_fmr, sequential=sequential, info=dict(info),
        )


# ------------------------------------------------------------------ file validation
def _read_npz(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, with bounded memory.

    The members' declared sizes are checked against :data:`MAX_MODEL_BYTES` before any is
    decompressed (a small zip bomb would otherwise expand without limit), and each
    ``.npy`` header's shape against the bytes that follow it before the array is allocated.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if len(infos) > _MAX_MEMBERS or total > MAX_MODEL_BYTES:
                raise InvalidArgument(
                    f"{where} is not a nacf model: its archive holds {len(infos)} members of "
                    f"{total} bytes uncompressed (at most {_MAX_MEMBERS} members and "
                    f"{MAX_MODEL_BYTES} bytes).")
            entries = {}
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise InvalidArgument(f"{where} is not a nacf model: its archive member "
                                          f"{_show(info.filename)} is not an .npy array.")
                entries[info.filename[:-4]] = _read_npy(zf.read(info), info.filename)
    except InvalidArgument:
        raise
    except Exception as exc:  # zipfile/np.lib.format raise many types on garbage
        raise InvalidArgument(
            f"{where} is not a nacf model: not a readable .npz archive ({exc})."
        ) from exc
    return entries


def _read_npy(raw: bytes, member: str) -> np.ndarray:
    """One ``.npy`` member; ``ValueError`` unless its header matches its size."""
    fp = io.BytesIO(raw)
    declared = npy_data_bytes(fp, member)
    if declared != len(raw) - fp.tell():
        raise ValueError(f"{member}: its header declares {declared} bytes of data, it holds "
                         f"{len(raw) - fp.tell()}")
    fp.seek(0)
    return np.lib.format.read_array(fp, allow_pickle=False)


def check_windows(window_s: Any, hop_s: Any) -> tuple[float, float]:
    """``(window_s, hop_s)`` if a model may have them, else ``ValueError`` naming the field:
    ``window_s`` in [:data:`MIN_WINDOW_S`, :data:`MAX_WINDOW_S`], ``hop_s`` from
    ``window_s / MAX_OVERLAP`` to ``window_s``."""
    window_s = _real({"window_s": window_s}, "window_s", MIN_WINDOW_S, MAX_WINDOW_S)
    try:
        hop_s = _real({"hop_s": hop_s}, "hop_s", window_s / MAX_OVERLAP, window_s)
    except ValueError as exc:
        # a hop of one sample cut ~9000 windows (730 MB) from 60 s of 16 channels; one
        # beyond the window skips signal (a 3600-s hop gave an enrollment one window)
        raise ValueError(f"{exc}: at least window_s / {MAX_OVERLAP} ({window_s:g} s / "
                         f"{MAX_OVERLAP}), so that a sample is in at most {MAX_OVERLAP} "
                         "windows, and at most window_s, so that no signal falls between "
                         "two windows") from None
    return window_s, hop_s


def _get(obj: dict[str, Any], key: str, shown: str | None = None) -> Any:
    if key not in obj:
        raise ValueError(f"field {shown or key!r} is missing")
    return obj[key]


def _real(obj: dict[str, Any], key: str, lo: float, hi: float, *, lo_open: bool = False,
          hi_open: bool = False, shown: str | None = None) -> float:
    """``obj[key]``: a finite JSON number in the interval ``lo``..``hi`` (a bool is not)."""
    v = _get(obj, key, shown)
    try:
        f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    except OverflowError:  # an integer beyond the float range
        f = None
    if f is None or not math.isfinite(f) or (f <= lo if lo_open else f < lo) \
            or (f >= hi if hi_open else f > hi):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"field {shown or key!r} must be a finite number in {interval}, "
                         f"got {_show(v)}")
    return f


def _integer(obj: dict[str, Any], key: str, lo: int, hi: int) -> int:
    """``obj[key]``: a JSON integer in ``[lo, hi]`` (a bool is not)."""
    v = _get(obj, key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"field {key!r} must be an integer in [{lo}, {hi}], got {_show(v)}")
    return v


def is_text(v: Any, max_len: int = MAX_NAME_CHARS) -> bool:
    """True for a non-empty printable string of at most ``max_len`` characters: what a
    model file holds as its name (``nacf train`` checks ``--name`` with it)."""
    return isinstance(v, str) and 1 <= len(v) <= max_len and v.isprintable()


def _text(obj: dict[str, Any], key: str, max_len: int, shown: str | None = None) -> str:
    """``obj[key]``: a non-empty printable string of at most ``max_len`` characters."""
    v = _get(obj, key, shown)
    if not is_text(v, max_len):
        raise ValueError(f"field {shown or key!r} must be a printable string of 1 to "
                         f"{max_len} characters, got {_show(v)}")
    return v


def _float_array(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """``arrays[key]`` as float64; ``ValueError`` unless real floating point and finite."""
    a = arrays[key]
    if a.dtype.kind != "f":
        raise ValueError(f"{key} must hold floating-point numbers, got dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{key} holds non-finite values")
    return a


def _check_band_pass(l_freq: float, h_freq: float, sfreq: float, order: int) -> None:
    """``ValueError`` unless the Butterworth band-pass the pipeline builds from these
    fields, and its steady state, compute to finite values with every pole inside the
    unit circle (an edge very near 0 or Nyquist at a high order gives a singular or an
    unstable filter, which failed only when the pipeline was built or blew up on the
    signal)."""
    with np.errstate(all="ignore"):
        try:
            sos = butter(order, [l_freq, h_freq], btype="band", fs=sfreq, output="sos")
            zi = sosfilt_zi(sos)
            radius = max(float(np.abs(np.roots(s[3:])).max()) for s in sos)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            radius, zi = math.nan, None
    if not (radius < 1.0 - 1e-12 and np.all(np.isfinite(sos)) and np.all(np.isfinite(zi))):
        raise ValueError(
            f"field 'band' [{l_freq:g}, {h_freq:g}] with 'filter_order' {order} at 'sfreq' "
            f"{sfreq:g} Hz gives an unstable band-pass (a pole at radius {radius:.12g}, "
            "expected below 1): move the band's edges away from 0 and Nyquist "
            f"({sfreq / 2:g} Hz) or lower the order")


def _check_training_record(training: Any) -> None:
    """``info.training``: an object whose ``subjects`` (what ``nacf evaluate --model`` checks
    the evaluated subjects against) is, when present, a list of names."""
    if not isinstance(training, dict):
        raise ValueError(f"field 'info.training' must be an object, got {_show(training)}")
    subjects = training.get("subjects", [])
    if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
        raise ValueError("field 'info.training.subjects' must be a list of subject names, "
                         f"got {_show(subjects)}")


def _check_sequential(seq: Any) -> dict[str, Any]:
    """The ``sequential`` field: empty, or the parameters of ``SequentialTest``."""
    if not isinstance(seq, dict):
        raise ValueError(f"field 'sequential' must be an object, got {_show(seq)}")
    if not seq:
        return {}
    for k in ("alpha", "beta"):
        _real(seq, k, 0.0, 0.5, lo_open=True, hi_open=True, shown=f"sequential.{k}")
    max_windows = _get(seq, "max_windows", "sequential.max_windows")
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) \
            or not 1 <= max_windows <= 1000:
        raise ValueError("field 'sequential.max_windows' must be an integer in [1, 1000], got "
                         f"{_show(max_windows)}")
    for k in ("mu_g", "sd_g", "mu_i", "sd_i"):
        table = _get(seq, k, f"sequential.{k}")
        if not isinstance(table, list) or len(table) != max_windows:
            raise ValueError(f"field 'sequential.{k}' must be a list of max_windows "
                             f"({max_windows}) numbers, got {_show(table)}")
        for i, v in enumerate(table):  # of cosine scores, in [-1, 1]
            if k.startswith("sd"):  # fit_sequential floors them at 1e-3: 1 / sd**2 overflowed
                _real({k: v}, k, 1e-3, 1.0, shown=f"sequential.{k}[{i}]")
            else:
                _real({k: v}, k, -1.0, 1.0, shown=f"sequential.{k}[{i}]")
    for i, (g, imp) in enumerate(zip(seq["mu_g"], seq["mu_i"])):
        if not g > imp:  # the ratio would fall as the score rises: no early accept, ever
            raise ValueError(f"field 'sequential.mu_g[{i}]' ({g:g}) must be above "
                             f"'sequential.mu_i[{i}]' ({imp:g}): genuine scores above "
                             "impostor ones")
    return dict(seq)


def default_model_path(n_channels: int = 16) -> Path:
    """Path of the shipped model for the standard 8- or 16-channel montage."""
    if n_channels not in (8, 16):
        raise InvalidArgument(
            "Invalid value for the 'n_channels' parameter. Allowed values are 8, 16, "
            f"but got {n_channels!r} instead."
        )
    return Path(str(resources.files("nacf_core") / "data" / "models" /
                    f"eegmmidb-{n_channels}ch.npz"))


_DEFAULTS: dict[int, Model] = {}


def default_model(n_channels: int = 16) -> Model:
    """The shipped model for the 8-channel (Fp1 Fp2 C3 C4 P7 P8 O1 O2) or the 16-channel
    (Fp1 Fp2 F3 F4 F7 F8 C3 C4 T7 T8 P3 P4 P7 P8 O1 O2) montage, fitted on EEGMMIDB
    subjects S001–S020 (see ``nacf_core/data/models/README.md``).  Cached per process.
    """
    path = default_model_path(n_channels)
    if n_channels not in _DEFAULTS:
        _DEFAULTS[n_channels] = Model.load(path)
    return _DEFAULTS[n_channels]
