"""64-byte aligned array allocation.

The filter kernels keep their state and row buffers on cache-line (and AVX-512
vector) boundaries: in the prototypes a misaligned buffer cost 1.5-3.5x.  NumPy only
guarantees 16-byte alignment, so :func:`empty_aligned` over-allocates a byte buffer
and returns the view that starts on the requested boundary (the view keeps the
buffer alive through ``.base``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ALIGNMENT", "empty_aligned", "zeros_aligned", "is_aligned", "aligned_copy"]

ALIGNMENT = 64


def _check_alignment(alignment: int) -> int:
    if isinstance(alignment, bool) or not isinstance(alignment, (int, np.integer)):
        raise TypeError(f"'alignment' must be an integer, got {alignment!r} instead.")
    alignment = int(alignment)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"'alignment' must be a power of two > 0, got {alignment} instead.")
    return alignment


def empty_aligned(shape, dtype=np.float64, alignment: int = ALIGNMENT) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment`` boundary.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the array.
    dtype : dtype-like
        Element type.
    alignment : int
        Byte boundary, a power of two (default 64: one cache line, one AVX-512 vector).

    Returns
    -------
    out : ndarray, shape ``shape``
        ``out.ctypes.data % alignment == 0`` (unless it is empty: nothing to align).
    """
    if alignment != ALIGNMENT:
        alignment = _check_alignment(alignment)
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(f"'dtype' must hold no object references (they cannot live in a "
                        f"byte buffer), got {dtype}.")
    shape = _shape(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"'shape' must not have negative entries, got {shape}.")
    return _aligned_unchecked(shape, dtype, alignment)


def _shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of ints; an entry that is no integer (a float, a string, a
    bool) is a ``TypeError``, as for ``numpy.empty``, not truncated by ``int()``."""
    entries = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        entries = tuple(entries)
    except TypeError:
        raise TypeError(f"'shape' must be an integer or a tuple of integers, got "
                        f"{shape!r}.") from None
    if isinstance(shape, str) or any(isinstance(s, (bool, np.bool_))
                                     or not isinstance(s, (int, np.integer))
                                     for s in entries):
        raise TypeError(f"'shape' must be an integer or a tuple of integers, got {shape!r}.")
    return tuple(int(s) for s in entries)


def _aligned_unchecked(shape: tuple[int, ...], dtype: np.dtype,
                       alignment: int = ALIGNMENT) -> np.ndarray:
    """:func:`empty_aligned` without argument checks (kernel hot path, ~1 µs)."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    offset = -raw.__array_interface__["data"][0] % alignment
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def zeros_aligned(shape, dtype=np.float64, alignment: int = ALIGNMENT) -> np.ndarray:
    """Like :func:`empty_aligned`, filled with zeros."""
    out = empty_aligned(shape, dtype, alignment)
    out.fill(0)
    return out


def aligned_copy(a: np.ndarray, dtype=None, alignment: int = ALIGNMENT) -> np.ndarray:
    """A C-contiguous, aligned copy of ``a`` (converted to ``dtype`` if given)."""
    a = np.asarray(a)
    out = empty_aligned(a.shape, a.dtype if dtype is None else dtype, alignment)
    out[...] = a
    return out


def is_aligned(a: np.ndarray, alignment: int = ALIGNMENT) -> bool:
    """True when ``a``'s data pointer is a multiple of ``alignment`` bytes."""
    alignment = _check_alignment(alignment)
    return a.__array_interface__["data"][0] % alignment == 0
