"""The four kernel families behind one API, in three backends.

``backend(name)`` returns a module with the same functions for ``"cython"``
(ahead-of-time compiled, the default), ``"numba"`` (``@njit(cache=True)``, compiled
on first call) and ``"reference"`` (SciPy/NumPy: the test oracle and benchmark
baseline, never the hot path).  The default comes from ``NACF_KERNEL_BACKEND``.

Every backend module provides::

    sosfilt(sos, x, axis=-1, zi=None)        # scipy.signal.sosfilt conventions, 2-D x
    steady_state_zi(sos, x, axis=-1)         # filter state settled on x's first sample
    bandpass_sos(l_freq, h_freq, sfreq, order)
    notch_sos(freq, sfreq, quality)
    detect_artifacts(epochs, sfreq, limits)  # -> int8 (n_epochs, n_channels)
    quality(epochs, sfreq, reason)           # -> (per_channel, per_epoch)
    cosine_scores(probes, templates)         # float32 (n_probes, n_templates)
    top_k(probes, templates, k)              # -> (indices, scores)

Kernels do not validate: use the public layer in :mod:`nacf_core.dsp`.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ._types import ArtifactLimits, ArtifactReason

__all__ = ["BACKENDS", "backend", "default_backend_name", "ArtifactLimits", "ArtifactReason"]

BACKENDS = ("cython", "numba", "reference")
_MODULES = {
    "cython": "nacf_core.kernels._cython_backend",
    "numba": "nacf_core.kernels._numba_backend",
    "reference": "nacf_core.kernels.reference",
}


def default_backend_name() -> str:
    """``NACF_KERNEL_BACKEND`` if set, else ``"cython"``."""
    name = os.environ.get("NACF_KERNEL_BACKEND", "cython").strip().lower() or "cython"
    if name not in BACKENDS:
        raise ValueError(
            "Invalid value for the NACF_KERNEL_BACKEND environment variable. Allowed "
            f"values are {', '.join(BACKENDS)}, but got {name!r} instead."
        )
    return name


def backend(name: str | None = None) -> ModuleType:
    """Return the kernel module for ``name`` (default: :func:`default_backend_name`)."""
    if name is None:
        name = default_backend_name()
    if name not in _MODULES:
        raise ValueError(
            "Invalid value for the 'name' parameter. Allowed values are "
            f"{', '.join(repr(b) for b in BACKENDS)}, but got {name!r} instead."
        )
    return importlib.import_module(_MODULES[name])
