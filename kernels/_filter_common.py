"""Python-side glue shared by the compiled filter backends (Cython and Numba).

Both backends run the same blocked algorithm; this module turns the
``scipy.signal.sosfilt`` calling convention into the kernels' plain arrays and back:

- the working dtype is ``numpy.result_type(sos, x[, zi])`` as in SciPy (float32 only
  when every input is float32);
- the state travels through the kernel as ``z`` of shape ``(n_sections, 2, n_channels)``
  (C-contiguous) for both layouts: ``axis=0`` uses that shape as is,
  ``axis=-1`` transposes its ``(n_sections, n_channels, 2)`` in and out (a few KB).

No validation happens here: the public layer (:mod:`nacf_core.dsp`) does it.
"""

from __future__ import annotations

import threading

import numpy as np

from ._aligned import _aligned_unchecked, empty_aligned
from ._shapes import check_sosfilt

__all__ = ["prepare", "finish", "sos_zi", "broadcast_zi", "channel_block", "scratch"]

_LOCAL = threading.local()


def scratch(n: int, dtype: np.dtype) -> np.ndarray:
    """A per-thread, 64-byte aligned 1-D scratch buffer of at least ``n`` elements.

    Reused between calls (kernels release the GIL, so each thread has its own);
    contents are undefined.
    """
    dtype = np.dtype(dtype)
    key = dtype.char
    buf = getattr(_LOCAL, key, None)
    if buf is None or buf.shape[0] < n:
        buf = _aligned_unchecked((max(n, 4096),), dtype)
        setattr(_LOCAL, key, buf)
    return buf


#: Samples per transposed tile for channel-major input: one cache line of float32.
TIME_TILE = 16


def channel_block(dtype: np.dtype, n_channels: int | None = None,
                  time_major: bool = False) -> int:
    """Channels filtered together: a multiple of 16 (the kernels' lane padding).

    1 KB of row per block for time-major input (256 float32: longer contiguous row
    reads, fewer passes; measured best on the 8 000-channel server batch), 512 B for
    channel-major input (its 16-sample tile must stay in L1 too); never larger than
    ``n_channels`` rounded up to 16.
    """
    block = (1024 if time_major else 512) // np.dtype(dtype).itemsize
    if n_channels is not None:
        block = min(block, max(16, (n_channels + 15) // 16 * 16))
    return block


def prepare(sos, x, axis, zi):
    """Return ``(dtype, sos, x, y, z, time_major)`` ready for a kernel call.

    ``sos`` : ``(n_sections, 6)`` C-contiguous in ``dtype``; ``x`` : C-contiguous in
    ``dtype``; ``y`` : output like ``x``; ``z`` : ``(n_sections, 2, n_channels)``
    state (zeros when ``zi`` is None), C-contiguous.  Shapes that do not fit together
    raise ``ValueError`` (:func:`._shapes.check_sosfilt`).
    """
    check_sosfilt(sos, x, axis, zi)
    if zi is None:
        dtype = np.result_type(sos, x)
    else:
        dtype = np.result_type(sos, x, zi)
    if sos.dtype != dtype or not sos.flags.c_contiguous:
        sos = np.ascontiguousarray(sos, dtype=dtype)
    if x.dtype != dtype or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=dtype)
    time_major = axis in (0, -2)
    n_channels = x.shape[1] if time_major else x.shape[0]
    n_sections = sos.shape[0]
    if zi is None:
        z = np.zeros((n_sections, 2, n_channels), dtype)
    else:
        zi = np.asarray(zi)
        z = np.array(zi if time_major else zi.transpose(0, 2, 1), dtype=dtype, order="C")
    # The output is written once per sample and needs no alignment; the kernels'
    # hot buffers (state, row, tile) are aligned scratch.
    y = np.empty(x.shape, dtype)
    return dtype, sos, x, y, z, time_major


def finish(y, z, time_major, return_zf):
    """``y`` or ``(y, zf)`` in SciPy's ``zi`` layout for the axis."""
    if not return_zf:
        return y
    zf = z if time_major else np.ascontiguousarray(z.transpose(0, 2, 1))
    return y, zf


def sos_zi(sos) -> np.ndarray:
    """``scipy.signal.sosfilt_zi`` in closed form, float64, shape ``(n_sections, 2)``.

    For one section ``b0, b1, b2, 1, a1, a2`` the step-response steady state of the
    transposed direct form II solves ``(I - A^T) z = b[1:] - a[1:] * b0``, i.e.
    ``z0 = (B0 + B1) / (1 + a1 + a2)`` and ``z1 = B1 - a2 * z0``; each section is then
    scaled by the DC gain of the sections before it, as SciPy does.
    """
    sos = np.asarray(sos, dtype=np.float64)
    out = np.empty((sos.shape[0], 2))
    scale = 1.0
    for s in range(sos.shape[0]):
        b0, b1, b2, a0, a1, a2 = sos[s]
        # lfilter_zi normalises by a0 (1 for valid SOS).
        b0, b1, b2, a1, a2 = b0 / a0, b1 / a0, b2 / a0, a1 / a0, a2 / a0
        B0 = b1 - a1 * b0
        B1 = b2 - a2 * b0
        z0 = (B0 + B1) / (1.0 + a1 + a2)
        out[s, 0] = scale * z0
        out[s, 1] = scale * (B1 - a2 * z0)
        scale *= (b0 + b1 + b2) / (1.0 + a1 + a2)
    return out


def broadcast_zi(sos, x: np.ndarray, axis) -> np.ndarray:
    """``sosfilt_zi(sos)[:, None, :] * x[None, :, :1]`` (axis -1) or
    ``sosfilt_zi(sos)[:, :, None] * x[:1]`` (axis 0), in ``result_type(sos, x)``.

    The product is formed in float64 and rounded once, as the reference does.
    """
    dtype = np.result_type(sos, x)
    zi = sos_zi(sos)
    if axis in (0, -2):
        first = x[0]
        out = empty_aligned((zi.shape[0], 2, first.shape[0]), dtype)
        np.multiply(zi[:, :, None], first[None, None, :], out=out, casting="unsafe")
    else:
        first = x[:, 0]
        out = empty_aligned((zi.shape[0], first.shape[0], 2), dtype)
        np.multiply(zi[:, None, :], first[None, :, None], out=out, casting="unsafe")
    return out
