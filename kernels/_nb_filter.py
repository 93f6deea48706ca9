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
from ._numba import jit
from ._ref_filter import bandpass_sos, notch_sos

__all__ = ["sosfilt", "steady_state_zi", "bandpass_sos", "notch_sos"]


@jit(inline="always")  # at Numba IR level: as fast as the loop written out
def sos_step(sos, row, z0, z1):  # pragma: no cover - compiled
    """One time step of every section over the lanes of ``row`` (1-D), in place, with
    state ``z0``, ``z1`` (n_sections, lanes); the loop over lanes is what LLVM
    vectorises."""
    for s in range(sos.shape[0]):
        b0 = sos[s, 0]
        b1 = sos[s, 1]
        b2 = sos[s, 2]
        a1 = sos[s, 4]
        a2 = sos[s, 5]
        for c in range(row.shape[0]):
            xc = row[c]
            yc = b0 * xc + z0[s, c]
            z0[s, c] = b1 * xc - a1 * yc + z1[s, c]
            z1[s, c] = b2 * xc - a2 * yc
            row[c] = yc


@jit
def _filter_time_major(sos, x, y, z0, z1, row):
    """``x`` (n_times, n_channels) into ``y``; state ``z0``, ``z1`` (n_blocks, S, block).

    Channels go in blocks of ``block`` (a multiple of 16).  A block's state and its
    current row (``row``, 64-byte aligned) stay in L1 while time advances, and the
    innermost loop over the row's channels is what LLVM vectorises.  Lanes past the
    last channel compute on whatever the previous block left in ``row`` (finite or
    not, they never touch a real channel) and are dropped.  Written so that LLVM does
    vectorise: state indexed directly, no views made and no stores to ``row``
    outside the time loop (either one made this loop scalar and 2.5x slower).
    """
    n_times, n_channels = x.shape
    block = row.shape[0]
    for ib in range(z0.shape[0]):
        c0 = ib * block
        g = min(block, n_channels - c0)
        zb0 = z0[ib]
        zb1 = z1[ib]
        for t in range(n_times):
            for c in range(g):
                row[c] = x[t, c0 + c]
            sos_step(sos, row, zb0, zb1)
            for c in range(g):
                y[t, c0 + c] = row[c]


@jit
def _filter_channel_major(sos, x, y, z0, z1, tile):
    """``x`` (n_channels, n_times): as :func:`_filter_time_major`, through ``tile``
    (n_tile, block), which receives ``n_tile`` samples of a block at a time (one
    cache line per channel), transposed; they are filtered there row by row and
    transposed back.
    """
    n_channels, n_times = x.shape
    n_tile, block = tile.shape
    for ib in range(z0.shape[0]):
        c0 = ib * block
        g = min(block, n_channels - c0)
        zb0 = z0[ib]
        zb1 = z1[ib]
        for t0 in range(0, n_times, n_tile):
            tt = min(n_tile, n_times - t0)
            if tt == 16:  # constant trip count: LLVM unrolls the transposes
                for c in range(g):
                    for j in range(16):
                        tile[j, c] = x[c0 + c, t0 + j]
            else:
                for c in range(g):
                    for j in range(tt):
                        tile[j, c] = x[c0 + c, t0 + j]
            for j in range(tt):
                sos_step(sos, tile[j], zb0, zb1)
            if tt == 16:
                for c in range(g):
                    for j in range(16):
                        y[c0 + c, t0 + j] = tile[j, c]
            else:
                for c in range(g):
                    for j in range(tt):
                        y[c0 + c, t0 + j] = tile[j, c]


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
    n_sections, _, n_channels = z.shape
    block = _common.channel_block(dtype, n_channels, time_major)
    n_blocks = (n_channels + block - 1) // block
    if not x.size:
        return _common.finish(y, z, time_major, zi is not None)
    # Aligned per-thread scratch: the state by block, (2, n_blocks, n_sections, block)
    # with zeros in the padded lanes, then the row / tile.
    n_state = 2 * n_blocks * n_sections * block
    n_tile = 1 if time_major else _common.TIME_TILE
    buf = _common.scratch(n_state + n_tile * block, dtype)
    state = buf[:n_state].reshape(2, n_blocks, n_sections, block)
    tile = buf[n_state:n_state + n_tile * block].reshape(n_tile, block)
    tile.fill(0)
    zt = z.transpose(1, 0, 2)  # (2, n_sections, n_channels)
    if n_blocks == 1:
        state[:, 0, :, :n_channels] = zt
        state[:, 0, :, n_channels:] = 0
    else:
        padded = np.zeros((2, n_sections, n_blocks * block), dtype)
        padded[:, :, :n_channels] = zt
        state[...] = padded.reshape(2, n_sections, n_blocks, block).transpose(0, 2, 1, 3)
    if time_major:
        _filter_time_major(sos, x, y, state[0], state[1], tile[0])
    else:
        _filter_channel_major(sos, x, y, state[0], state[1], tile)
    if n_blocks == 1:
        zt[...] = state[:, 0, :, :n_channels]
    else:
        zt[...] = state.transpose(0, 2, 1, 3).reshape(2, n_sections, -1)[:, :, :n_channels]
    return _common.finish(y, z, time_major, zi is not None)


def steady_state_zi(sos, x, axis=-1):
    """Filter state settled on each channel's first sample (see :mod:`nacf_core.dsp`).

    Returns
    -------
    zi : ndarray, shape (n_sections, n_channels, 2) for ``axis=-1`` or
        (n_sections, 2, n_channels) for ``axis=0``, dtype ``result_type(sos, x)``
    """
    return _common.broadcast_zi(sos, x, axis)
