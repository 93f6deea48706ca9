"""Embedding matching: the validated public layer over the matching kernels.

Cosine similarity of probe embeddings against enrolled templates, 1:1 (a score
matrix) and 1:N (the ``k`` best templates per probe).  Everything is float32 with
L2-normalised rows: normalise templates once when they are stored
(:func:`normalize_rows`) and pass ``normalize=True`` only for ad-hoc inputs, since it
copies (and for millions of templates that copy costs more than the search).

Big-endian float32 input (``'>f4'``) is accepted and read through a native-order copy.

Threads: the Cython backend calls single-threaded SIMD loops (one probe) or BLAS
``sgemm`` on small blocks (batches).  BLAS uses its own thread pool; the service runs
one BLAS thread per process and scales with processes (nested thread pools on 2 cores
were up to 6x slower), so set ``OPENBLAS_NUM_THREADS=1`` (or use ``threadpoolctl``) in
the serving process.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_array, check_int_range
from .kernels import backend as _backend

__all__ = ["normalize_rows", "cosine_scores", "top_k", "match"]


def _check_matrix(name: str, x, *, normalize: bool) -> np.ndarray:
    if normalize:
        return normalize_rows(x, name=name)
    if isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == np.float64:
        raise TypeError(
            f"{name!r} must have dtype float32, got float64 instead "
            "(pass normalize=True to convert and normalise, or x.astype(numpy.float32))."
        )
    x = check_array(name, x, ndim=2, dtypes=(np.float32,), c_contiguous=True)
    if not x.dtype.isnative:  # big-endian ('>f4'): the compiled kernels read native order
        x = x.astype(np.float32)
    return x


def _check_pair(probes, templates, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"'normalize' must be a bool, got {normalize!r} instead.")
    probes = _check_matrix("probes", probes, normalize=bool(normalize))
    templates = _check_matrix("templates", templates, normalize=bool(normalize))
    if probes.shape[1] != templates.shape[1]:
        raise ValueError(
            f"'probes' and 'templates' must have the same embedding dimension d, got "
            f"probes of shape {probes.shape} and templates of shape {templates.shape}."
        )
    if probes.shape[1] == 0:
        raise ValueError("'probes' and 'templates' must have an embedding dimension d >= 1, got 0.")
    if not np.isfinite(probes).all():
        raise ValueError("'probes' must be finite, got NaN or inf values.")
    return probes, templates


def normalize_rows(x: np.ndarray, *, name: str = "x") -> np.ndarray:
    """A float32, C-contiguous copy of ``x`` with every row scaled to unit L2 norm.

    Norms are computed in float64.

    Parameters
    ----------
    x : ndarray, shape (n_rows, d), float32 or float64
        Finite values; every row must have a norm > 0.
    name : str
        The parameter name used in error messages.

    Returns
    -------
    out : ndarray, shape (n_rows, d), float32
    """
    x = check_array(name, x, ndim=2)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "a zero norm" if norms[row] == 0 else "NaN or inf values"
        raise ValueError(
            f"{name!r} rows must be finite with a norm > 0 to be L2-normalised; row {row} "
            f"has {what} ({int(bad.sum())} such row(s) in all)."
        )
    return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)


def cosine_scores(
    probes: np.ndarray,
    templates: np.ndarray,
    *,
    normalize: bool = False,
    backend: str | None = None,
) -> np.ndarray:
    """Cosine similarity of every probe with every template.

    Parameters
    ----------
    probes : ndarray, shape (n_probes, d), float32, C-contiguous, finite
    templates : ndarray, shape (n_templates, d), float32, C-contiguous
        Rows L2-normalised (the scores are plain dot products) unless ``normalize``.
    normalize : bool
        L2-normalise copies of both first (then float64 and strided input is accepted).
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    scores : ndarray, shape (n_probes, n_templates), float32
        Accumulated in float32 by the compiled backends (BLAS / SIMD).
    """
    probes, templates = _check_pair(probes, templates, normalize)
    return _backend(backend).cosine_scores(probes, templates)


def top_k(
    probes: np.ndarray,
    templates: np.ndarray,
    k: int,
    *,
    normalize: bool = False,
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar templates for each probe (1:N identification).

    Never materialises the ``(n_probes, n_templates)`` score matrix in the compiled
    backends: templates are scanned in blocks with a running top-k, so ``templates``
    may hold millions of rows.

    Parameters
    ----------
    probes : ndarray, shape (n_probes, d), float32, C-contiguous, finite
    templates : ndarray, shape (n_templates, d), float32, C-contiguous
        Rows L2-normalised unless ``normalize``.  Non-finite template rows give NaN
        scores, which rank last (as ``-inf``) and are reported as ``-inf``.
    k : int
        How many templates per probe, ``1 <= k <= n_templates``.
    normalize : bool
        L2-normalise copies of both first.
    backend : {"cython", "numba", "reference"}, optional

    Returns
    -------
    indices : ndarray, shape (n_probes, k), int64
        Template rows, best first; equal scores go to the lower index.
    scores : ndarray, shape (n_probes, k), float32
        Their cosine similarities, non-increasing along each row.
    """
    probes, templates = _check_pair(probes, templates, normalize)
    n_templates = templates.shape[0]
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > n_templates:
        raise ValueError(
            f"'k' must be <= n_templates ({n_templates}), got k={int(k)} (k > n_templates)."
        )
    k = check_int_range("k", k, 1, n_templates)
    return _backend(backend).top_k(probes, templates, k)


match = top_k
