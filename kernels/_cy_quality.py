"""Artifact detection and quality scoring, Cython backend.

The loops live in ``kernels/_artifacts.pxi``, compiled for several instruction sets
(baseline x86-64, AVX2+FMA, AVX-512); the best one this CPU runs is imported here
(``NACF_KERNEL_ISA`` forces one, see :mod:`._cpu`).  :data:`ISA` names the variant.
Statistics accumulate in float64 for both input dtypes.  The formulas are those of
:mod:`nacf_core.artifacts`; :mod:`._ref_quality` is the oracle.
"""

from __future__ import annotations

import numpy as np

from ._cpu import load_variant
from ._shapes import check_epochs, check_reason
from ._quality_params import FLAT_RMS_UV, GOOD_P2P_UV, GOOD_RMS_UV, MAX_P2P_UV, line_tables

__all__ = ["detect_artifacts", "quality", "ISA", "kernel_module"]

_kernel = load_variant("_cy_quality")
ISA = _kernel.__name__.rsplit("_", 1)[1]


def kernel_module():
    """The compiled variant module in use (``nacf_core.kernels._cy_quality_<isa>``)."""
    return _kernel


def detect_artifacts(epochs, sfreq, limits, *, _module=None):
    """See :func:`nacf_core.artifacts.detect_artifacts` (no validation here).

    The limits' fields go to the compiled loop as plain floats.
    """
    del sfreq
    mod = _kernel if _module is None else _module
    check_epochs(epochs)
    out = np.empty(epochs.shape[:2], dtype=np.int8)
    mod.detect_into(epochs, out, float(limits.rail_uv), float(limits.rail_fraction),
                    float(limits.flat_uv), float(limits.peak_to_peak_uv),
                    float(limits.jump_uv))
    return out


def quality(epochs, sfreq, reason, *, _module=None):
    """See :func:`nacf_core.artifacts.quality` (no validation here)."""
    mod = _kernel if _module is None else _module
    check_reason(epochs, reason)
    n_epochs, n_channels, n_times = epochs.shape
    tables, norm = line_tables(n_times, float(sfreq))
    per_channel = np.empty((n_epochs, n_channels), dtype=np.float64)
    per_epoch = np.empty(n_epochs, dtype=np.float64)
    mod.quality_into(epochs, reason, tables, norm, FLAT_RMS_UV, GOOD_RMS_UV, GOOD_P2P_UV,
                     MAX_P2P_UV, per_channel, per_epoch)
    return per_channel, per_epoch
