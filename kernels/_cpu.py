"""CPU features and the choice of instruction-set variant for multi-ISA Cython modules.

Modules built with ``multi_isa=True`` in ``setup.py`` exist as
``<base>_baseline``, ``<base>_avx2`` (AVX2+FMA) and ``<base>_avx512`` (AVX-512
F/BW/VL/DQ).  :func:`load_variant` imports the best one this CPU runs, as NumPy does
for its own dispatch.  ``NACF_KERNEL_ISA=baseline|avx2|avx512`` forces a variant
(the tests use it to check that every variant gives the same results); a variant this
CPU cannot run is a ``ValueError`` naming the features it lacks, never a SIGILL.  Import
a variant module only through :func:`load_variant`: importing one built for features
the CPU lacks (``_cy_sosfilt_avx512`` on an AVX2 machine) kills the process.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from types import ModuleType

__all__ = ["cpu_features", "supported_variants", "load_variant", "VARIANTS"]

VARIANTS = ("baseline", "avx2", "avx512")
_REQUIRES = {
    "baseline": (),
    "avx2": ("AVX2", "FMA3"),
    "avx512": ("AVX512F", "AVX512BW", "AVX512VL", "AVX512DQ", "AVX2", "FMA3"),
}


@lru_cache(maxsize=1)
def cpu_features() -> dict[str, bool]:
    """The SIMD features NumPy detected at import (``AVX2``, ``FMA3``, ``AVX512F``, ...)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    return dict(feats)


def supported_variants() -> list[str]:
    """Variants this CPU can run, best last."""
    feats = cpu_features()
    return [v for v in VARIANTS if all(feats.get(f, False) for f in _REQUIRES[v])]


def load_variant(base: str) -> ModuleType:
    """Import ``nacf_core.kernels.<base>_<variant>`` for the best supported, built variant."""
    forced = os.environ.get("NACF_KERNEL_ISA", "").strip().lower()
    supported = supported_variants()
    if forced:
        if forced not in VARIANTS:
            raise ValueError(
                "Invalid value for the NACF_KERNEL_ISA environment variable. Allowed values "
                f"are {', '.join(VARIANTS)}, but got {forced!r} instead."
            )
        if forced not in supported:
            # a ValueError as for a misspelt variant: a wrong value of the variable for
            # this machine (nacf serve reports it as a reason not to start)
            feats = cpu_features()
            lacks = [f for f in _REQUIRES[forced] if not feats.get(f, False)]
            raise ValueError(
                f"NACF_KERNEL_ISA={forced}: this CPU lacks {', '.join(lacks)}; it runs "
                f"{', '.join(supported)} (unset the variable to take the best of them)."
            )
        candidates = [forced]
    else:
        candidates = list(reversed(supported))
    errors = []
    for variant in candidates:
        try:
            return importlib.import_module(f"nacf_core.kernels.{base}_{variant}")
        except ImportError as exc:  # variant not built on this platform
            errors.append(f"{variant}: {exc}")
    raise ImportError(
        f"no built variant of nacf_core.kernels.{base} "
        f"(tried {', '.join(candidates)}): {'; '.join(errors)}. "
        "Rebuild with `pip install -e .`, or use another kernel backend "
        "(NACF_KERNEL_BACKEND=numba, or kernel_backend in the configuration)."
    )
