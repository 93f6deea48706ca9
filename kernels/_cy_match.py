"""Embedding matching, Cython backend.

The loops live in ``kernels/_match.pxi``, compiled for several instruction sets
(baseline x86-64 with SSE2, AVX2+FMA, AVX-512); the best one this CPU runs is imported
here (``NACF_KERNEL_ISA`` forces one, see :mod:`._cpu`).  :data:`ISA` names it.

``top_k`` never builds the full score matrix: templates are read once, in blocks, and
each block's scores are scanned at once into a running top-k per probe.  Fewer than
:data:`GEMM_MIN_PROBES` probes use a SIMD dot-product loop that streams the templates
at memory bandwidth; a batch uses BLAS ``sgemm`` (SciPy's OpenBLAS) per block of
:data:`GEMM_BLOCK_ROWS` rows, small enough that the block's scores stay in L2.
Accumulation is float32 (BLAS / SIMD FMA), so scores differ from the float64
reference by float32 rounding.  BLAS runs on its own thread pool: the service runs
one BLAS thread per process (``OPENBLAS_NUM_THREADS=1`` or ``threadpoolctl``).
"""

from __future__ import annotations

import numpy as np

from ._aligned import empty_aligned
from ._cpu import load_variant
from ._shapes import check_match

__all__ = ["cosine_scores", "top_k", "ISA", "kernel_module", "GEMM_MIN_PROBES",
           "GEMM_BLOCK_ROWS", "DOT_BLOCK_ROWS"]

_kernel = load_variant("_cy_match")
ISA = _kernel.__name__.rsplit("_", 1)[1]

#: From this many probes on, scores come from BLAS sgemm instead of the dot loop.
GEMM_MIN_PROBES = 4
#: Template rows per sgemm block: 1024 rows x 64 probes = 256 KiB of scores (L2).
GEMM_BLOCK_ROWS = 1024
#: Template rows per block of the dot-product path (scores stay in L1).
DOT_BLOCK_ROWS = 2048
#: Alias so tests can tell this backend blocks its rows.
BLOCK_ROWS = GEMM_BLOCK_ROWS


def kernel_module():
    """The compiled variant module in use (``nacf_core.kernels._cy_match_<isa>``)."""
    return _kernel


def cosine_scores(probes, templates, *, _module=None):
    """See :func:`nacf_core.matching.cosine_scores` (no validation here)."""
    mod = _kernel if _module is None else _module
    check_match(probes, templates)
    out = np.empty((probes.shape[0], templates.shape[0]), dtype=np.float32)
    mod.cosine_scores_into(probes, templates, out, GEMM_MIN_PROBES)
    return out


def top_k(probes, templates, k, *, _block_rows=None, _module=None):
    """See :func:`nacf_core.matching.top_k` (no validation here).

    ``_block_rows`` overrides the block size (the tests use tiny blocks to cross many
    block edges); ``_module`` picks an ISA variant.
    """
    mod = _kernel if _module is None else _module
    check_match(probes, templates, k)
    n_probes = probes.shape[0]
    gemm = n_probes >= GEMM_MIN_PROBES
    block = _block_rows or (GEMM_BLOCK_ROWS if gemm else DOT_BLOCK_ROWS)
    heap_s = np.empty((n_probes, k), dtype=np.float32)
    heap_i = np.empty((n_probes, k), dtype=np.int64)
    scratch = empty_aligned(max(1, block * (n_probes if gemm else 1)), np.float32)
    mod.top_k_into(probes, templates, heap_s, heap_i, scratch, block, GEMM_MIN_PROBES)
    return heap_i, heap_s
