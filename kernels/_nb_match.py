"""Embedding matching compiled with Numba.

``top_k`` never builds the full score matrix: templates go in blocks of
:data:`BLOCK_ROWS` rows, each block's scores come from one BLAS call (``np.dot``,
float32) and are scanned while hot into a running top-k per probe, a binary heap
whose root is the current worst kept entry.  Templates arrive in index order, so a
later equal score never beats a kept one: once a heap is full only ``score > root``
enters, and ties go to the lower index.  NaN scores count as ``-inf``.  A heap sort
at the end orders each probe's entries best first.
"""

from __future__ import annotations

import numpy as np

from ._numba import jit
from ._shapes import check_match

__all__ = ["cosine_scores", "top_k", "BLOCK_ROWS"]

#: Template rows per block: 4096 x 128 float32 = 2 MiB of templates and 16 KiB of
#: scores per probe.
BLOCK_ROWS = 4096


@jit
def _cosine_kernel(probes, templates):
    return np.dot(probes, templates.T)


def cosine_scores(probes, templates):
    """See :func:`nacf_core.matching.cosine_scores` (no validation here)."""
    check_match(probes, templates)
    if probes.shape[0] == 0 or templates.shape[0] == 0:
        return np.zeros((probes.shape[0], templates.shape[0]), dtype=np.float32)
    return _cosine_kernel(probes, templates)


@jit
def _sift_down(hs, hi, n, s, idx):
    """Put ``(s, idx)`` at the root of the heap ``hs[:n]``, ``hi[:n]`` (root = the
    worst kept entry) and sift it down towards the worse child: a lower score, or on
    equal scores the higher index."""
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        right = child + 1
        if right < n and (hs[right] < hs[child] or (
                hs[right] == hs[child] and hi[right] > hi[child])):
            child = right
        if hs[child] < s or (hs[child] == s and hi[child] > idx):
            hs[pos] = hs[child]
            hi[pos] = hi[child]
            pos = child
        else:
            break
    hs[pos] = s
    hi[pos] = idx


@jit
def _top_k_kernel(probes, templates, block_rows, heap_s, heap_i):
    n_probes = probes.shape[0]
    n_templates = templates.shape[0]
    k = heap_s.shape[1]
    size = np.zeros(n_probes, dtype=np.int64)
    for start in range(0, n_templates, block_rows):
        stop = min(start + block_rows, n_templates)
        block = np.dot(probes, templates[start:stop].T)
        for p in range(n_probes):
            hs = heap_s[p]
            hi = heap_i[p]
            n = size[p]
            for j in range(stop - start):
                s = block[p, j]
                if n == k and not s > hs[0]:
                    continue  # the common case: not better than the worst kept
                if s != s:
                    s = -np.inf
                idx = start + j
                if n < k:
                    # Sift up: the new entry's index is the largest so far, so it is
                    # worse than an equal-scored parent.
                    pos = n
                    n += 1
                    while pos > 0:
                        parent = (pos - 1) // 2
                        if s <= hs[parent]:
                            hs[pos] = hs[parent]
                            hi[pos] = hi[parent]
                            pos = parent
                        else:
                            break
                    hs[pos] = s
                    hi[pos] = idx
                else:
                    _sift_down(hs, hi, k, s, idx)  # replaces the root
            size[p] = n
    # Heap sort each probe's heap, best first: pop the worst (the root) to the end.
    for p in range(n_probes):
        hs = heap_s[p]
        hi = heap_i[p]
        n = size[p]
        while n > 1:
            top_s = hs[0]
            top_i = hi[0]
            n -= 1
            _sift_down(hs, hi, n, hs[n], hi[n])  # the last entry replaces the root
            hs[n] = top_s
            hi[n] = top_i


def top_k(probes, templates, k, *, _block_rows=BLOCK_ROWS):
    """See :func:`nacf_core.matching.top_k` (no validation here).

    ``_block_rows`` is for the tests (tiny blocks cross many block edges).
    """
    check_match(probes, templates, k)
    n_probes = probes.shape[0]
    heap_s = np.empty((n_probes, k), dtype=np.float32)
    heap_i = np.empty((n_probes, k), dtype=np.int64)
    if n_probes and k:
        _top_k_kernel(probes, templates, _block_rows, heap_s, heap_i)
    return heap_i, heap_s
