"""Feature estimators of the recognition pipeline, shaped like scikit-learn's.

``__init__`` stores parameters, ``fit`` returns ``self``, ``transform`` is pure, and the
fitted state ends in ``_``.  Everything fitted is a plain NumPy array, so the hot path
(:meth:`transform` on one window) pays no per-call library overhead and a model
serialises without pickle (:mod:`nacf_core.model`).

The chain the default model uses, per band-passed window of shape
``(n_channels, n_times)``:

1. :class:`Covariances` — the spatial covariance, shrunk slightly towards a scaled
   identity so it is always positive definite;
2. :class:`TangentSpace` — whitened by the inverse square root of a reference point
   (the log-Euclidean mean of the training covariances), mapped by the matrix
   logarithm, and vectorised (upper triangle, off-diagonal terms times √2);
3. :class:`WithinClassWhitening` — centre, project on the leading principal axes of the
   training features, then whiten the *within-subject* covariance (WCCN: Hatch et al.,
   "Within-class covariance normalization for SVM-based speaker recognition",
   Interspeech 2006).  Cosine similarity in this space discounts the directions in which
   one person's windows vary (state, task, drift) and keeps the directions in which
   people differ.  Unlike LDA it does not cut the space to ``n_subjects - 1``
   dimensions, which matters when the population model is fitted on tens of people.
4. :func:`l2_normalize` — the embedding.
"""

from __future__ import annotations

import numpy as np

from nacf_core._validation import check_array

__all__ = [
    "Covariances",
    "TangentSpace",
    "WithinClassWhitening",
    "l2_normalize",
    "spd_expm",
    "spd_inv_sqrt",
    "spd_logm",
]


def spd_logm(c: np.ndarray) -> np.ndarray:
    """Matrix logarithm of symmetric positive-definite matrices, shape (..., n, n)."""
    w, v = np.linalg.eigh(c)
    return (v * np.log(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def spd_expm(c: np.ndarray) -> np.ndarray:
    """Matrix exponential of symmetric matrices, shape (..., n, n)."""
    w, v = np.linalg.eigh(c)
    return (v * np.exp(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def spd_inv_sqrt(c: np.ndarray) -> np.ndarray:
    """Inverse square root of symmetric positive-definite matrices, shape (..., n, n)."""
    w, v = np.linalg.eigh(c)
    return (v * (1.0 / np.sqrt(w))[..., None, :]) @ np.swapaxes(v, -1, -2)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (rows of zeros stay zero), float32.

    Parameters
    ----------
    x : ndarray, shape (n, d)

    Returns
    -------
    ndarray, shape (n, d), float32
    """
    x = np.asarray(x, dtype=np.float64)
    norm = np.sqrt(np.einsum("...i,...i->...", x, x))[..., None]
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0).astype(np.float32)


class Covariances:
    """Shrunk spatial covariance of each window.

    ``C = (1 - shrinkage) S + shrinkage * trace(S) / n_channels * I`` with ``S`` the
    sample covariance of the de-meaned window.

    Parameters
    ----------
    shrinkage : float
        In [0, 1).  A small value (default 0.01) keeps ``C`` well conditioned for the
        matrix logarithm when channels are nearly collinear (a common reference, a
        bridged electrode) without measurably changing the features otherwise.
    """

    def __init__(self, shrinkage: float = 0.01):
        self.shrinkage = shrinkage

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> Covariances:
        """Check the shape; nothing is learned.

        Parameters
        ----------
        X : ndarray, shape (n_windows, n_channels, n_times)
        """
        X = check_array("X", X, ndim=3)
        if not 0.0 <= float(self.shrinkage) < 1.0:
            raise ValueError(f"'shrinkage' must be in [0, 1), got {self.shrinkage!r} instead.")
        self.n_channels_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Covariances, shape (n_windows, n_channels, n_channels), float64."""
        X = np.asarray(X, dtype=np.float64)
        n_times = X.shape[-1]
        xc = X - X.mean(axis=-1, keepdims=True)
        s = xc @ np.swapaxes(xc, -1, -2) / n_times
        if self.shrinkage:
            n = s.shape[-1]
            mu = np.trace(s, axis1=-2, axis2=-1) / n
            s = (1.0 - self.shrinkage) * s
            idx = np.arange(n)
            s[..., idx, idx] += (self.shrinkage * mu)[..., None]
        return s


class TangentSpace:
    """Riemannian tangent-space map at the log-Euclidean mean of the training covariances.

    ``t = upper(logm(P^{-1/2} C P^{-1/2}))`` with off-diagonal terms weighted by √2, so
    that the Euclidean norm of ``t`` is the affine-invariant distance of ``C`` to ``P``.

    Parameters
    ----------
    eps : float
        Eigenvalues are floored at ``eps`` times the largest before the logarithm, so a
        rank-deficient window (a dead channel that passed the gate) gives a finite
        vector instead of ``-inf``.
    """

    def __init__(self, eps: float = 1e-10):
        self.eps = eps

    def fit(self, C: np.ndarray, y: np.ndarray | None = None) -> TangentSpace:
        """Reference points from training covariances.

        Parameters
        ----------
        C : ndarray, shape (n_windows, n_channels, n_channels)
        """
        C = check_array("C", C, ndim=3)
        if C.shape[0] < 1:
            raise ValueError("'C' must hold at least one window, got 0.")
        mean_log = self._logm(np.asarray(C, dtype=np.float64)).mean(axis=0)
        return self.set_reference(spd_expm(mean_log))

    def set_reference(self, reference: np.ndarray) -> TangentSpace:
        """Use a given reference point (a fitted model being loaded).

        Parameters
        ----------
        reference : ndarray, shape (n_channels, n_channels), symmetric positive definite
        """
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 2 or reference.shape[0] != reference.shape[1]:
            raise ValueError(f"'reference' must be a square matrix, got shape {reference.shape}.")
        w = np.linalg.eigvalsh(reference)
        if not np.all(np.isfinite(w)) or w[0] <= 0:
            raise ValueError("'reference' must be symmetric positive definite.")
        self.reference_ = reference
        self.reference_inv_sqrt_ = spd_inv_sqrt(reference)
        n = reference.shape[0]
        self.triu_ = np.triu_indices(n)
        self.weights_ = np.where(self.triu_[0] == self.triu_[1], 1.0, np.sqrt(2.0))
        return self

    def _logm(self, m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(m)
        floor = self.eps * np.maximum(w[..., -1:], np.finfo(np.float64).tiny)
        return (v * np.log(np.maximum(w, floor))[..., None, :]) @ np.swapaxes(v, -1, -2)

    def transform(self, C: np.ndarray) -> np.ndarray:
        """Tangent vectors, shape (n_windows, n_channels * (n_channels + 1) / 2), float64."""
        p = self.reference_inv_sqrt_
        logm = self._logm(p @ np.asarray(C, dtype=np.float64) @ p)
        return logm[..., self.triu_[0], self.triu_[1]] * self.weights_


class WithinClassWhitening:
    """PCA followed by whitening of the within-class (within-subject) covariance.

    Parameters
    ----------
    n_components : int or None
        Principal axes kept before whitening (default: all the data supports, at most
        the feature dimension and ``n_samples - n_classes``).
    reg : float
        Ridge added to the within-class covariance, as a fraction of its mean
        eigenvalue, before whitening.

    Attributes
    ----------
    mean_ : ndarray, shape (n_features,)
    components_ : ndarray, shape (n_features, n_components)
        ``embedding = (x - mean_) @ components_``.
    """

    def __init__(self, n_components: int | None = None, reg: float = 1e-3):
        self.n_components = n_components
        self.reg = reg

    def fit(self, X: np.ndarray, y: np.ndarray) -> WithinClassWhitening:
        """Fit on features ``X`` (n_samples, n_features) of subjects ``y`` (n_samples,)."""
        X = check_array("X", X, ndim=2)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"'y' must have shape ({X.shape[0]},), got {y.shape}.")
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"'y' must name at least 2 subjects, got {len(classes)}.")
        if not 0.0 <= float(self.reg):
            raise ValueError(f"'reg' must be >= 0, got {self.reg!r} instead.")
        X = X.astype(np.float64)
        self.mean_ = X.mean(axis=0)
        xc = X - self.mean_
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        k_max = int(min(X.shape[1], X.shape[0] - len(classes), np.sum(s > s[0] * 1e-9)))
        k = k_max if self.n_components is None else int(min(self.n_components, k_max))
        if k < 1:
            raise ValueError(
                f"WithinClassWhitening needs more samples than subjects; got {X.shape[0]} "
                f"samples of {len(classes)} subjects."
            )
        pca = vt[:k].T
        z = xc @ pca
        sw = np.zeros((k, k))
        for c in classes:
            zi = z[y == c]
            zi = zi - zi.mean(axis=0)
            sw += zi.T @ zi
        sw /= X.shape[0]
        sw += self.reg * np.trace(sw) / k * np.eye(k)
        self.components_ = pca @ spd_inv_sqrt(sw)
        self.n_components_ = k
        self.classes_ = classes
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Projected features, shape (n_samples, n_components_), float64."""
        return (np.asarray(X, dtype=np.float64) - self.mean_) @ self.components_
