"""The one Numba shim: every Numba kernel is decorated with :func:`jit` from here.

Defaults come from one place (``njit`` is nopython; ``nogil``, ``cache=True``; no
``fastmath``: the kernels must agree with the reference).  Numba itself is imported
on first use, so importing :mod:`nacf_core.kernels` does not pay for it, and kernels
compile on first call (then load from the on-disk cache).
"""

from __future__ import annotations

import functools

__all__ = ["jit", "JIT_OPTIONS"]

JIT_OPTIONS = {"nogil": True, "cache": True}


def jit(func=None, **overrides):
    """``numba.njit`` with the project's defaults, compiled lazily on first call."""
    if func is None:
        return functools.partial(jit, **overrides)
    options = {**JIT_OPTIONS, **overrides}
    compiled = None

    @functools.wraps(func)
    def wrapper(*args):
        nonlocal compiled
        if compiled is None:
            import numba

            compiled = numba.njit(**options)(func)
        return compiled(*args)

    wrapper.py_func = func
    return wrapper
