"""NumPy reference of embedding matching: the test oracle and the benchmark baseline.

Scores are computed in float64 and rounded to float32; ``top_k`` sorts the full score
matrix (fine for an oracle, never for millions of templates: the compiled kernels
keep a running top-k instead).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_scores", "top_k"]


def cosine_scores(probes: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Dot products of L2-normalised rows, i.e. cosine similarities.

    Parameters
    ----------
    probes : ndarray, shape (n_probes, d), float32
    templates : ndarray, shape (n_templates, d), float32

    Returns
    -------
    scores : ndarray, shape (n_probes, n_templates), float32
    """
    p = np.asarray(probes, dtype=np.float64)
    t = np.asarray(templates, dtype=np.float64)
    return (p @ t.T).astype(np.float32)


def top_k(probes: np.ndarray, templates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best templates per probe, best first, ties to the lower index.

    NaN scores (from non-finite inputs) rank below every number, as ``-inf``, and are
    reported as ``-inf``.

    Returns
    -------
    indices : ndarray, shape (n_probes, k), int64
    scores : ndarray, shape (n_probes, k), float32
    """
    scores = cosine_scores(probes, templates)
    scores = np.where(np.isnan(scores), np.float32(-np.inf), scores)
    n_probes, n_templates = scores.shape
    indices = np.empty((n_probes, k), dtype=np.int64)
    best = np.empty((n_probes, k), dtype=np.float32)
    index = np.arange(n_templates)
    for p in range(n_probes):
        # lexsort sorts by the last key first: score descending, then index ascending.
        order = np.lexsort((index, -scores[p].astype(np.float64)))[:k]
        indices[p] = order
        best[p] = scores[p, order]
    return indices, best
