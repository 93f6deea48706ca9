"""Helpers shared by the compiled matching backends."""

from __future__ import annotations

import numpy as np

__all__ = ["order_best_first"]


def order_best_first(indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of a running top-k: score descending, ties to the lower index.

    Parameters
    ----------
    indices : ndarray, shape (n_probes, k), int64
    scores : ndarray, shape (n_probes, k), float32 (no NaN)

    Returns
    -------
    indices, scores : ndarray, shape (n_probes, k)
    """
    by_index = np.argsort(indices, axis=1, kind="stable")
    indices = np.take_along_axis(indices, by_index, axis=1)
    scores = np.take_along_axis(scores, by_index, axis=1)
    by_score = np.argsort(-scores, axis=1, kind="stable")
    return (np.take_along_axis(indices, by_score, axis=1),
            np.take_along_axis(scores, by_score, axis=1))
