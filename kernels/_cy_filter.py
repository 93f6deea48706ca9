"""IIR filtering (cascaded second-order sections), Cython backend.

The loop lives in ``kernels/_sosfilt.pxi``, compiled for several instruction sets
(baseline x86-64, AVX2+FMA, AVX-512); the best one this CPU runs is imported here
(``NACF_KERNEL_ISA`` forces one, see :mod:`._cpu`).  :data:`ISA` names the variant in
use.  Conventions are :func:`scipy.signal.sosfilt`'s (see :mod:`nacf_core.dsp`).

Accumulation precision: the working dtype ``result_type(sos, x[, zi])`` throughout
(float32 state and multiply-adds when both are float32, as SciPy).  No build fuses
multiply-adds, so every variant's results are bit-identical to SciPy's.
"""

from __future__ import annotations

import numpy as np

from . import _filter_common as _common
from ._cpu import load_variant
from ._ref_filter import bandpass_sos, notch_sos

__all__ = ["sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos", "ISA", "kernel_module"]

_kernel = load_variant("_cy_sosfilt")
ISA = _kernel.__name__.rsplit("_", 1)[1]


def kernel_module():
    """The compiled variant module in use (``nacf_core.kernels._cy_sosfilt_<isa>``)."""
    return _kernel


def sosfilt(sos, x, axis=-1, zi=None, *, _module=None):
    """Filter 2-D ``x`` along ``axis`` with cascaded second-order sections.

    Parameters
    ----------
    sos : ndarray, shape (n_sections, 6)
    x : ndarray, shape (n_channels, n_times) for ``axis=-1`` or (n_times, n_channels)
        for ``axis=0``
    axis : {-1, 0}
    zi : ndarray, shape (n_sections, n_channels, 2) for ``axis=-1`` or
        (n_sections, 2, n_channels) for ``axis=0``, optional

    Returns
    -------
    y : ndarray, same shape as ``x``, dtype ``numpy.result_type(sos, x[, zi])``
    zf : ndarray, shape of ``zi``
        Only when ``zi`` is given.
    """
    mod = _kernel if _module is None else _module
    dtype, sos, x, y, z, time_major = _common.prepare(sos, x, axis, zi)
    block = _common.channel_block(dtype, z.shape[2], time_major)
    n_state = sos.shape[0] * 2 * block
    n_tile = 1 if time_major else _common.TIME_TILE
    buf = _common.scratch(n_state + n_tile * block, dtype)
    zbuf = buf[:n_state].reshape(sos.shape[0], 2, block)
    tile = buf[n_state:n_state + n_tile * block].reshape(n_tile, block)
    if dtype == np.float32:
        mod.sosfilt_f32(sos, x, y, z, zbuf, tile, time_major)
    elif dtype == np.float64:
        mod.sosfilt_f64(sos, x, y, z, zbuf, tile, time_major)
    else:  # the public layer only lets float32/float64 through
        raise TypeError(f"sosfilt kernels support float32 and float64, got {dtype}.")
    return _common.finish(y, z, time_major, zi is not None)


def steady_state_zi(sos, x, axis=-1):
    """Filter state settled on each channel's first sample (see :mod:`nacf_core.dsp`).

    Returns
    -------
    zi : ndarray, shape (n_sections, n_channels, 2) for ``axis=-1`` or
        (n_sections, 2, n_channels) for ``axis=0``, dtype ``result_type(sos, x)``
    """
    return _common.broadcast_zi(sos, x, axis)
