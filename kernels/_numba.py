"""The one Numba shim: every Numba kernel is decorated with :func:`jit` from here.

Defaults come from one place (``njit`` is nopython; ``nogil``, ``cache=True``; no
``fastmath``: the kernels must agree with the reference).  Numba itself is imported
on first use, so importing :mod:`nacf_core.kernels` does not pay for it, and kernels
compile on first call (then load from the on-disk cache).

A kernel may call another ``@jit`` function of its module by its global name: Numba
cannot call the lazy Python wrapper, so the caller is compiled against a copy of its
module's globals in which each such callee is its own compiled dispatcher.
"""

from __future__ import annotations

import functools
import types

__all__ = ["jit", "JIT_OPTIONS"]

JIT_OPTIONS = {"nogil": True, "cache": True}


def jit(func=None, **overrides):
    """``numba.njit`` with the project's defaults, compiled lazily on first call."""
    if func is None:
        return functools.partial(jit, **overrides)
    options = {**JIT_OPTIONS, **overrides}
    compiled = None

    def dispatcher():
        nonlocal compiled
        if compiled is None:
            import numba

            compiled = numba.njit(**options)(_with_compiled_callees(func))
        return compiled

    @functools.wraps(func)
    def wrapper(*args):
        return (compiled if compiled is not None else dispatcher())(*args)

    wrapper.py_func = func
    wrapper.dispatcher = dispatcher
    wrapper.options = options
    return wrapper


def _with_compiled_callees(func):
    """``func``, or a copy of it whose globals map the ``@jit`` functions it names to
    their compiled dispatchers (what Numba can call from compiled code)."""
    g = func.__globals__
    callees = {name: g[name].dispatcher() for name in func.__code__.co_names
               if callable(getattr(g.get(name), "dispatcher", None))
               and getattr(g[name], "py_func", None) is not func}
    if not callees:
        return func
    out = types.FunctionType(func.__code__, {**g, **callees}, func.__name__,
                             func.__defaults__, func.__closure__)
    out.__kwdefaults__ = func.__kwdefaults__
    out.__qualname__ = func.__qualname__
    out.__doc__ = func.__doc__
    return out
