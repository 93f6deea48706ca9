"""IIR filtering (cascaded second-order sections) compiled with Numba.

Same algorithm as the Cython backend (``kernels/_sosfilt.pxi``): channels are
independent and the recursion is serial only in time, so the kernel walks time
sample by sample and, for each section, runs a loop over a block of channels that
LLVM vectorises (Numba compiles for the host CPU).  State and row buffers are
64-byte aligned (:mod:`._aligned`).  Each section is SciPy's transposed direct form
II::

    y      = b0 * x + z0
    z0     = b1 * x - a1 * y + z1
    z1     = b2 * x - a2 * y

Accumulation precision: the working dtype throughout, i.e. float32 state and
arithmetic when ``sos`` and ``x`` are both float32 (as SciPy does), else float64.
Without ``fastmath`` LLVM does not contract to FMA, so results equal SciPy's bit for bit.
"""

from __future__ import annotations

import numpy as np

from . import _filter_common as _common
from ._aligned import empty_aligned
from ._numba import jit
from ._ref_filter import bandpass_sos, notch_sos

__all__ = ["sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos"]


@jit
def _sosfilt_kernel(sos, x, y, z, zbuf, row, time_major):
    """Filter every channel over all samples, carrying the state in ``z``.

    Channels go in blocks of ``row.shape[0]``; one block's state (``zbuf``) and
    current row (``row``) stay in L1 while time advances.  (One function: the shim
    compiles lazily, so jitted functions cannot call each other.)
    """
    n_sections = sos.shape[0]
    n_channels = z.shape[2]
    n_times = x.shape[0] if time_major else x.shape[1]
    block = row.shape[0]
    for c0 in range(0, n_channels, block):
        g = min(block, n_channels - c0)
        for s in range(n_sections):
            for k in range(2):
                for c in range(g):
                    zbuf[s, k, c] = z[s, k, c0 + c]
        for t in range(n_times):
            if time_major:
                for c in range(g):
                    row[c] = x[t, c0 + c]
            else:
                for c in range(g):
                    row[c] = x[c0 + c, t]
            for s in range(n_sections):
                b0 = sos[s, 0]
                b1 = sos[s, 1]
                b2 = sos[s, 2]
                a1 = sos[s, 4]
                a2 = sos[s, 5]
                z0 = zbuf[s, 0]
                z1 = zbuf[s, 1]
                for c in range(g):
                    xc = row[c]
                    yc = b0 * xc + z0[c]
                    z0[c] = b1 * xc - a1 * yc + z1[c]
                    z1[c] = b2 * xc - a2 * yc
                    row[c] = yc
            if time_major:
                for c in range(g):
                    y[t, c0 + c] = row[c]
            else:
                for c in range(g):
                    y[c0 + c, t] = row[c]
        for s in range(n_sections):
            for k in range(2):
                for c in range(g):
                    z[s, k, c0 + c] = zbuf[s, k, c]


def sosfilt(sos, x, axis=-1, zi=None):
    """Filter 2-D ``x`` along ``axis`` with cascaded second-order sections.

    Same conventions as :func:`scipy.signal.sosfilt`.

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
    dtype, sos, x, y, z, time_major = _common.prepare(sos, x, axis, zi)
    block = _common.channel_block(dtype)
    zbuf = empty_aligned((sos.shape[0], 2, block), dtype)
    row = empty_aligned((block,), dtype)
    if x.size:
        _sosfilt_kernel(sos, x, y, z, zbuf, row, time_major)
    return _common.finish(y, z, time_major, zi is not None)


def steady_state_zi(sos, x, axis=-1):
    """Filter state settled on each channel's first sample (see :mod:`nacf_core.dsp`).

    Returns
    -------
    zi : ndarray, shape (n_sections, n_channels, 2) for ``axis=-1`` or
        (n_sections, 2, n_channels) for ``axis=0``, dtype ``result_type(sos, x)``
    """
    return _common.broadcast_zi(sos, x, axis)
