"""Input validation shared by every public entry point.

Messages name the parameter, what was expected and what came, e.g.
``Invalid value for the 'axis' parameter. Allowed values are -1, 0, but got 2 instead.``
Raise ``TypeError`` for a wrong type or dtype and ``ValueError`` for a wrong value or
shape.  Nothing here logs or touches metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE_HZ",
    "MAX_SFREQ",
    "MIN_SFREQ",
    "npy_data_bytes",
    "check_option",
    "check_array",
    "check_finite_positive",
    "check_finite_nonnegative",
    "check_int_range",
    "check_sfreq",
    "check_band",
    "listed",
]


#: Highest sampling rate any input may state (gRPC signals, recording files, LSL streams).
MAX_SAMPLE_RATE_HZ = 100_000.0
#: Most channels any input may carry.
MAX_CHANNELS = 256
#: Sampling rates the pipeline works with: an input's, and a model's working rate (which
#: every input is resampled to: ``nacf train --sfreq`` and ``Model.load`` keep to it).
MIN_SFREQ = 125.0
MAX_SFREQ = 1000.0


def listed(items: Iterable[Any], n: int = 8) -> str:
    """The first ``n`` of ``items`` (strings) joined with commas, and how many more there
    are: ``"a, b, c and 4 more"``; for messages naming the offending channels."""
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_option(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(
            f"Invalid value for the {name!r} parameter. Allowed values are {options}, "
            f"but got {value!r} instead."
        )
    return value


def check_array(
    name: str,
    x: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtypes: tuple[type, ...] | None = (np.float32, np.float64),
    c_contiguous: bool = False,
    shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Check an array parameter; never copies or converts.

    ``shape`` entries that are ``None`` are free.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name!r} must be a numpy.ndarray, got {type(x).__name__} instead.")
    if ndim is not None:
        ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in ndims:
            want = " or ".join(f"{d}-D" for d in ndims)
            raise ValueError(f"{name!r} must be {want}, got a {x.ndim}-D array of shape {x.shape}.")
    if dtypes is not None and x.dtype.type not in dtypes:
        want = " or ".join(np.dtype(d).name for d in dtypes)
        raise TypeError(f"{name!r} must have dtype {want}, got {x.dtype.name} instead.")
    if c_contiguous and not x.flags.c_contiguous:
        raise ValueError(
            f"{name!r} must be C-contiguous; got a strided view "
            f"(use numpy.ascontiguousarray({name}) first)."
        )
    if shape is not None:
        if len(shape) != x.ndim or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name!r} must have shape {want}, got {x.shape}.")
    return x


def _real(name: str, value: Any) -> float:
    """``float(value)``: ``TypeError`` for no number, ``ValueError`` for an integer too
    large for a float (its ``OverflowError`` named no parameter)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name!r} must be a real number, got {value!r} instead.") from None
    except OverflowError:
        raise ValueError(f"{name!r} must be a finite number, got a number too large "
                         "for a float.") from None


def check_finite_positive(name: str, value: Any) -> float:
    """A finite, strictly positive real number."""
    v = _real(name, value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name!r} must be a finite number > 0, got {value!r} instead.")
    return v


def check_finite_nonnegative(name: str, value: Any) -> float:
    """A finite real number >= 0."""
    v = _real(name, value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name!r} must be a finite number >= 0, got {value!r} instead.")
    return v


def check_int_range(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """An integer in ``[lo, hi]`` (``hi`` None: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name!r} must be an integer, got {value!r} instead.")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name!r} must be {rng}, got {v} instead.")
    return v


def check_sfreq(sfreq: Any, name: str = "sfreq") -> float:
    """A sampling rate in Hz: finite and > 0."""
    return check_finite_positive(name, sfreq)


def check_band(l_freq: Any, h_freq: Any, sfreq: Any) -> tuple[float, float, float]:
    """``0 < l_freq < h_freq < sfreq / 2``."""
    sfreq = check_sfreq(sfreq)
    l_freq = check_finite_positive("l_freq", l_freq)
    h_freq = check_finite_positive("h_freq", h_freq)
    if l_freq >= h_freq:
        raise ValueError(f"l_freq ({l_freq}) must be less than h_freq ({h_freq}).")
    nyq = sfreq / 2.0
    if h_freq >= nyq:
        raise ValueError(f"h_freq ({h_freq}) must be less than Nyquist ({nyq}).")
    return l_freq, h_freq, sfreq


def npy_data_bytes(fp: Any, what: str) -> int:
    """Read a ``.npy`` header from the binary file ``fp`` and return how many data bytes
    it declares (the file is left at the start of the data).

    ``ValueError`` naming ``what`` for a format version other than 1.0 / 2.0 (what numpy
    writes for numbers and strings), a negative dimension, or an object (pickled) dtype;
    the caller compares the result with the bytes really there before reading any, so
    nothing is allocated on the word of a damaged header.
    """
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"{what} is a version {version[0]}.{version[1]} .npy array; expected "
                         "version 1.0 or 2.0 (what numpy writes for numbers and strings).")
    if dtype.hasobject:
        raise ValueError(f"{what} holds Python objects (dtype {dtype}), which are never "
                         "unpickled; expected numbers or strings.")
    if min(shape, default=0) < 0:
        raise ValueError(f"{what} declares a negative dimension {shape}.")
    return math.prod(shape) * dtype.itemsize
