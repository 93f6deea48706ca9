"""Decision thresholds calibrated to a target false-match rate, with honest error bars.

Method
------
The threshold is set on *impostor* scores that the model did not see when it was
fitted: ``nacf train`` cross-fits (k-fold over the
training subjects: the feature model is refitted without a fold's subjects, then that
fold's subjects are enrolled and probed), so every calibration score is out-of-sample
even though the threshold ships with a model fitted on all subjects.  The threshold is
the empirical ``1 - target_fmr`` quantile of those scores: the smallest ``t`` such that
the fraction of impostor scores ``>= t`` is at most ``target_fmr``.  (A Gaussian tail
fit was tried and dropped: cosine scores are bounded, and on 8 channels it put the
threshold above 1.)  ``nacf evaluate`` measures the FMR that this threshold actually gives
on held-out subjects (the ``calibrated`` object of its report): with tens of
calibration subjects it can exceed the target several-fold.  The default target is
FMR = 1/1000, the operating point of NIST SP 800-63B (revision 3, 2017) §5.2.3.

The false non-match rate at that threshold is reported with a percentile bootstrap
confidence interval *over subjects* (resample subjects with replacement, pool their
genuine comparisons, recompute): windows of one person are strongly correlated, so
resampling windows would give intervals far too narrow.  With tens of subjects and a
target of 1/1000 the threshold itself rests on a handful of impostor scores; the
interval on FNMR and the count of impostor comparisons say how much to trust it.

What data the shipped models were calibrated on is recorded in the model's ``info``
(``nacf_core/data/models/README.md`` summarises it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "DEFAULT_TARGET_FMR",
    "Calibration",
    "bootstrap_fnmr",
    "calibrate",
    "det_curve",
    "eer",
    "fnmr_at_fmr",
    "rates_at",
    "threshold_at_fmr",
]

#: NIST SP 800-63B rev. 3 §5.2.3: FMR of 1 in 1000 or better.
DEFAULT_TARGET_FMR = 1e-3


def _scores(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name!r} must hold at least one score, got none.")
    if np.isnan(x).any():
        raise ValueError(f"{name!r} must not contain NaN (use -inf for a rejected probe).")
    return x


def threshold_at_fmr(impostor, target_fmr: float = DEFAULT_TARGET_FMR) -> float:
    """Smallest threshold whose empirical FMR (``mean(impostor >= t)``) is ``<= target_fmr``.

    Parameters
    ----------
    impostor : array_like, shape (n,)
        Impostor scores (``-inf`` for probes the gate rejected).
    target_fmr : float
        In (0, 1).

    Returns
    -------
    float
        A threshold just above the ``(k+1)``-th largest impostor score, where
        ``k = floor(target_fmr * n)`` scores may lie at or above it.
    """
    imp = np.sort(_scores("impostor", impostor))[::-1]
    if not 0.0 < float(target_fmr) < 1.0:
        raise ValueError(f"'target_fmr' must be in (0, 1), got {target_fmr!r} instead.")
    k = int(np.floor(target_fmr * len(imp)))  # impostor scores allowed at/above t
    s = imp[k]  # the (k+1)-th largest must fall below t
    if s == -np.inf:  # fewer than k + 1 impostor probes passed the gate: any score will do
        return -1.0
    return float(np.nextafter(s, np.inf))


def rates_at(genuine, impostor, threshold: float) -> tuple[float, float]:
    """``(fmr, fnmr)`` at a threshold (accept when ``score >= threshold``)."""
    g = _scores("genuine", genuine)
    i = _scores("impostor", impostor)
    return float(np.mean(i >= threshold)), float(np.mean(g < threshold))


def det_curve(genuine, impostor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FMR and FNMR at every distinct score used as threshold.

    Returns
    -------
    thresholds, fmr, fnmr : ndarray, shape (n_thresholds,)
        Thresholds increasing, FMR non-increasing, FNMR non-decreasing.
    """
    g = np.sort(_scores("genuine", genuine))
    i = np.sort(_scores("impostor", impostor))
    t = np.unique(np.concatenate([g, i, [np.inf]]))
    fnmr = np.searchsorted(g, t, side="left") / len(g)
    fmr = 1.0 - np.searchsorted(i, t, side="left") / len(i)
    return t, fmr, fnmr


def eer(genuine, impostor) -> float:
    """Equal error rate: where the FMR and FNMR curves cross (their mean at the closest
    threshold, interpolated between the two thresholds that bracket the crossing)."""
    _, fmr, fnmr = det_curve(genuine, impostor)
    d = fmr - fnmr  # non-increasing
    j = int(np.searchsorted(-d, 0.0))  # first index with fmr <= fnmr
    if j == 0:
        return float((fmr[0] + fnmr[0]) / 2)
    if j >= len(d):
        return float((fmr[-1] + fnmr[-1]) / 2)
    d0, d1 = d[j - 1], d[j]
    a = d0 / (d0 - d1) if d0 != d1 else 0.5
    e0 = (fmr[j - 1] + fnmr[j - 1]) / 2
    e1 = (fmr[j] + fnmr[j]) / 2
    return float(e0 + a * (e1 - e0))


def fnmr_at_fmr(genuine, impostor, target_fmr: float) -> float:
    """FNMR at the threshold :func:`threshold_at_fmr` gives on these impostor scores."""
    t = threshold_at_fmr(impostor, target_fmr)
    return rates_at(genuine, impostor, t)[1]


def bootstrap_fnmr(genuine, subjects, threshold: float, *, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """FNMR at ``threshold`` with a percentile bootstrap CI over subjects.

    Parameters
    ----------
    genuine : array_like, shape (n,)
    subjects : array_like, shape (n,)
        The subject of each genuine score.

    Returns
    -------
    fnmr, low, high : float
    """
    g = _scores("genuine", genuine)
    subjects = np.asarray(subjects)
    if subjects.shape != g.shape:
        raise ValueError(f"'subjects' must have shape {g.shape}, got {subjects.shape}.")
    ids, inv = np.unique(subjects, return_inverse=True)
    miss = np.bincount(inv, weights=(g < threshold).astype(float), minlength=len(ids))
    count = np.bincount(inv, minlength=len(ids)).astype(float)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    boot = miss[draw].sum(1) / count[draw].sum(1)
    a = (1 - level) / 2
    return (float(miss.sum() / count.sum()), float(np.quantile(boot, a)),
            float(np.quantile(boot, 1 - a)))


@dataclass
class Calibration:
    """A calibrated operating point (JSON-able via :meth:`as_dict`)."""

    threshold: float
    target_fmr: float
    fmr: float
    fnmr: float
    fnmr_ci: tuple[float, float]
    n_genuine: int
    n_impostor: int
    n_subjects: int
    method: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d["fnmr_ci"] = list(self.fnmr_ci)
        return d


def calibrate(genuine, impostor, genuine_subjects, target_fmr: float = DEFAULT_TARGET_FMR,
              *, n_boot: int = 2000, seed: int = 0) -> Calibration:
    """Threshold at ``target_fmr`` on out-of-sample impostor scores, FNMR with its CI.

    Parameters
    ----------
    genuine, impostor : array_like
        Out-of-sample scores (``-inf`` for gate rejections).
    genuine_subjects : array_like
        Subject of each genuine score (for the bootstrap).
    """
    t = threshold_at_fmr(impostor, target_fmr)
    fmr, _ = rates_at(genuine, impostor, t)
    fnmr, lo, hi = bootstrap_fnmr(genuine, genuine_subjects, t, n_boot=n_boot, seed=seed)
    return Calibration(
        threshold=t, target_fmr=float(target_fmr), fmr=fmr, fnmr=fnmr, fnmr_ci=(lo, hi),
        n_genuine=int(np.size(genuine)), n_impostor=int(np.size(impostor)),
        n_subjects=len(np.unique(genuine_subjects)),
        method=("empirical quantile of out-of-fold impostor scores; FNMR 95% percentile "
                f"bootstrap over subjects ({n_boot} resamples)"),
    )
