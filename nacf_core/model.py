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
- ``checksum``: SHA-256 over ``meta`` and every array's name, dtype, shape and bytes.

:meth:`Model.load` refuses, with :class:`~nacf_core.errors.InvalidArgument` and a message
that says what is wrong, a file that is not such an archive, that has another format
version, whose checksum does not match (corrupt or edited), or whose arrays do not fit its
parameters.  ``model_version`` (``<name>-<first 8 hex digits of the checksum>``) is in
every decision, so two different models never share a version.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from nacf_core.errors import InvalidArgument
from nacf_core.features import Covariances, TangentSpace, WithinClassWhitening

__all__ = ["FORMAT_VERSION", "Model", "default_model", "default_model_path"]

#: Version of the file layout; bumped when a field changes meaning.
FORMAT_VERSION = 1
_ARRAYS = ("tangent_reference", "projection_mean", "projection_components", "thresholds")


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
        Window length and the hop between windows (enrollment and evaluation).
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
        """Write the model atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a model file; :class:`InvalidArgument` if it is corrupt or mismatched."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read model file {str(path)!r}: {exc}") from exc
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Model:
        """Parse :meth:`to_bytes` output; see :meth:`load`."""
        where = f"model file {source!r}"
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                entries = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile/np.load raise many types on garbage
            raise InvalidArgument(
                f"{where} is not a nacf model: not a readable .npz archive ({exc})."
            ) from exc
        missing = [k for k in ("meta", "checksum", *_ARRAYS) if k not in entries]
        if missing:
            raise InvalidArgument(f"{where} is not a nacf model: it lacks {', '.join(missing)}.")
        meta_bytes = entries["meta"].tobytes()
        try:
            meta = json.loads(meta_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"{where} is corrupt: its metadata is not JSON ({exc}).") from exc
        if not isinstance(meta, dict) or meta.get("format") != "nacf-model":
            raise InvalidArgument(f"{where} is not a nacf model (format {meta.get('format')!r}).")
        if meta.get("format_version") != FORMAT_VERSION:
            raise InvalidArgument(
                f"{where} has format version {meta.get('format_version')!r}; this nacf reads "
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
            raise InvalidArgument(f"{where} is inconsistent: {exc}") from exc
        model.checksum = actual
        return model

    @classmethod
    def _from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Model:
        ch_names = [str(c) for c in meta["ch_names"]]
        n = len(ch_names)
        ref = np.asarray(arrays["tangent_reference"], dtype=np.float64)
        if ref.shape != (n, n):
            raise ValueError(f"tangent_reference has shape {ref.shape}, expected ({n}, {n}) "
                             f"for {n} channels")
        n_feat = n * (n + 1) // 2
        mean = np.asarray(arrays["projection_mean"], dtype=np.float64)
        comp = np.asarray(arrays["projection_components"], dtype=np.float64)
        if mean.shape != (n_feat,) or comp.ndim != 2 or comp.shape[0] != n_feat:
            raise ValueError(f"projection arrays {mean.shape}, {comp.shape} do not fit "
                             f"{n_feat} tangent features")
        thresholds = np.asarray(arrays["thresholds"], dtype=np.float64)
        if thresholds.ndim != 1 or len(thresholds) < 1 or not np.all(np.isfinite(thresholds)):
            raise ValueError("thresholds must be a non-empty 1-D finite array")
        cov = Covariances(shrinkage=float(meta["shrinkage"]))
        cov.n_channels_ = n
        ts = TangentSpace(eps=float(meta["tangent_eps"]))
        ts.set_reference(ref)
        proj = WithinClassWhitening(n_components=comp.shape[1], reg=float(meta["projection_reg"]))
        proj.mean_, proj.components_, proj.n_components_ = mean, comp, comp.shape[1]
        return cls(
            name=str(meta["name"]), sfreq=float(meta["sfreq"]), ch_names=ch_names,
            window_s=float(meta["window_s"]), hop_s=float(meta["hop_s"]),
            band=(float(meta["band"][0]), float(meta["band"][1])),
            filter_order=int(meta["filter_order"]),
            artifact_limits={k: float(v) for k, v in meta["artifact_limits"].items()},
            min_quality=float(meta["min_quality"]),
            min_enroll_epochs=int(meta["min_enroll_epochs"]),
            covariances=cov, tangent=ts, projection=proj, thresholds=thresholds,
            target_fmr=float(meta["target_fmr"]), sequential=dict(meta.get("sequential", {})),
            info=dict(meta.get("info", {})),
        )


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
