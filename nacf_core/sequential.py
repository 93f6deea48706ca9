"""Sequential decision over a stream of windows: decide as soon as the evidence suffices.

The test
--------
After each new non-overlapping window the stream's evidence is fused (the pipeline's
fusion rule: the normalised mean of the accepted windows' embeddings) and its cosine
with the template gives the fused score ``s_n`` after ``n`` windows.  ``nacf train``
measured, out of sample (see :mod:`nacf_core.calibration`), the distribution of ``s_n``
for genuine and for impostor comparisons at every ``n`` up to ``max_windows``; the test
models each as a normal distribution ``N(mu_g[n], sd_g[n])`` and ``N(mu_i[n], sd_i[n])``
and computes the log-likelihood ratio

    ``llr_n = log N(s_n; mu_g[n], sd_g[n]) - log N(s_n; mu_i[n], sd_i[n])``,

held non-decreasing in ``s_n``: with unequal spreads that ratio is a parabola, and where
the genuine scores are the tighter ones it falls again beyond its peak (just above
``mu_g[n]``), which would make a score better than any genuine one evidence against;
beyond the turning point the score counts as the turning point
(:meth:`SequentialTest.log_likelihood_ratio`).

Wald's bounds (Wald 1945, "Sequential tests of statistical hypotheses") for error targets
``alpha`` (false match: accepting an impostor) and ``beta`` (false non-match) are
``A = log((1 - beta) / alpha)`` and ``B = log(beta / (1 - alpha))``:

- accept as soon as ``llr_n >= A`` *and* ``s_n >= threshold_for(n)`` (the threshold
  calibrated to the target FMR for ``n`` windows, so an early accept is never looser
  than the fixed-length decision);
- reject as soon as ``llr_n <= B``;
- otherwise wait for the next window; after ``max_windows`` windows (the maximum
  duration) decide by ``s_n >= threshold_for(n)``.

Because ``s_n`` is the fused score rather than a sum of independent per-window
log-likelihood ratios (consecutive windows of one person are correlated, which makes a
naive sum overconfident), this is a repeated likelihood-ratio test with Wald's bounds,
not Wald's SPRT in the strict sense; its error rates are measured, not derived: ``nacf
evaluate`` reports its FMR, FNMR and mean seconds in the ``sequential`` object.  Windows
the quality gate rejects add no evidence but count towards the duration (``seconds``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["SequentialTest", "fit_sequential"]

ACCEPT = "accept"
REJECT = "reject"


def fit_sequential(genuine: dict[int, np.ndarray], impostor: dict[int, np.ndarray], *,
                   alpha: float, beta: float, max_windows: int) -> dict[str, Any]:
    """Parameters of :class:`SequentialTest` from out-of-sample fused scores.

    Parameters
    ----------
    genuine, impostor : dict of int to ndarray
        Fused scores per number of windows ``n`` (1..max_windows); gate rejections
        (``-inf``) are left out of the fit.
    alpha, beta : float
        Error targets (FMR, FNMR) of the bounds.
    max_windows : int
    """
    if not (0 < alpha < 0.5 and 0 < beta < 0.5):
        raise ValueError(f"'alpha' and 'beta' must be in (0, 0.5), got {alpha!r}, {beta!r}.")
    out: dict[str, Any] = {"alpha": float(alpha), "beta": float(beta),
                           "max_windows": int(max_windows),
                           "mu_g": [], "sd_g": [], "mu_i": [], "sd_i": []}
    for n in range(1, max_windows + 1):
        g = np.asarray(genuine[n], dtype=np.float64)
        i = np.asarray(impostor[n], dtype=np.float64)
        g, i = g[np.isfinite(g)], i[np.isfinite(i)]
        if len(g) < 2 or len(i) < 2:
            raise ValueError(f"too few finite scores to fit the sequential test at n={n}.")
        out["mu_g"].append(float(g.mean()))
        out["sd_g"].append(float(max(g.std(), 1e-3)))
        out["mu_i"].append(float(i.mean()))
        out["sd_i"].append(float(max(i.std(), 1e-3)))
    return out


def _bend(mu_g: float, sd_g: float, mu_i: float, sd_i: float) -> tuple[int, float]:
    """Where the log-likelihood ratio of ``N(mu_g, sd_g)`` against ``N(mu_i, sd_i)``
    turns: ``(1, peak)`` when it falls beyond ``peak`` (genuine tighter), ``(-1,
    trough)`` when it rises below ``trough`` (impostor tighter), ``(0, nan)`` when it is
    monotone (equal spreads) or the genuine mean is not above the impostor mean."""
    if sd_g == sd_i or not mu_g > mu_i:
        return 0, math.nan
    a, b = 1.0 / (sd_g * sd_g), 1.0 / (sd_i * sd_i)
    turn = (mu_g * a - mu_i * b) / (a - b)  # beyond mu_g (peak) or below mu_i (trough)
    return (1 if sd_g < sd_i else -1), turn


class SequentialTest:
    """One sequential decision (one stream against one template).

    Parameters
    ----------
    model : nacf_core.model.Model
        Supplies ``model.sequential`` (fitted by :func:`fit_sequential`),
        ``threshold_for(n)`` and ``window_s``.
    alpha, beta : float, optional
        Override the model's error targets.
    max_windows : int, optional
        Override the maximum duration, in windows (default: the model's table; past
        its end, the test and the thresholds use the table's last row).

    Attributes
    ----------
    n_windows : int
        Windows seen (accepted or not).
    n_used : int
        Windows that carried evidence (``update`` called with a finite score).
    decision : {"accept", "reject"} or None
    llr : float
        The current log-likelihood ratio.
    """

    def __init__(self, model, *, alpha: float | None = None, beta: float | None = None,
                 max_windows: int | None = None):
        p = model.sequential
        if not p:
            raise ValueError("the model has no sequential-test parameters (refit it with "
                             "`nacf train`).")
        self.model = model
        self.alpha = float(p["alpha"] if alpha is None else alpha)
        self.beta = float(p["beta"] if beta is None else beta)
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"'alpha' and 'beta' must be in (0, 0.5), got {self.alpha}, "
                             f"{self.beta}.")
        table = int(p["max_windows"])
        self.max_windows = table if max_windows is None else int(max_windows)
        if not 1 <= self.max_windows:
            raise ValueError(f"'max_windows' must be >= 1, got {self.max_windows}.")
        self._mu_g = np.asarray(p["mu_g"], dtype=np.float64)
        self._sd_g = np.asarray(p["sd_g"], dtype=np.float64)
        self._mu_i = np.asarray(p["mu_i"], dtype=np.float64)
        self._sd_i = np.asarray(p["sd_i"], dtype=np.float64)
        self._bend = [_bend(*row) for row in zip(self._mu_g, self._sd_g, self._mu_i,
                                                 self._sd_i)]
        self.upper = math.log((1 - self.beta) / self.alpha)
        self.lower = math.log(self.beta / (1 - self.alpha))
        self.n_windows = 0
        self.n_used = 0
        self.llr = 0.0
        self.score = float("nan")
        self.decision: str | None = None

    @property
    def seconds(self) -> float:
        """Signal consumed so far: windows seen × window length."""
        return self.n_windows * float(self.model.window_s)

    @property
    def done(self) -> bool:
        return self.decision is not None

    def log_likelihood_ratio(self, score: float, n_used: int) -> float:
        """``llr`` of a fused score of ``n_used`` windows (table capped at its end),
        made non-decreasing in the score.

        With unequal spreads the ratio of two normal densities is a parabola in the
        score: when the genuine scores are the tighter ones it peaks just above their
        mean and falls again beyond it, so a score better than every genuine one would
        count as evidence *against* (low enough, a reject).  The score is therefore
        held at the parabola's turning point beyond it: past the peak on the genuine
        side, below the trough on the impostor side (where the impostor scores are the
        tighter ones).
        """
        j = min(max(n_used, 1), len(self._mu_g)) - 1
        kind, turn = self._bend[j]
        if kind > 0 and score > turn or kind < 0 and score < turn:
            score = turn

        def logpdf(x, mu, sd):
            return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd)

        return logpdf(score, self._mu_g[j], self._sd_g[j]) - logpdf(score, self._mu_i[j],
                                                                     self._sd_i[j])

    def update(self, score: float | None) -> str | None:
        """Take the fused score after one more window; return the decision or ``None``.

        Parameters
        ----------
        score : float or None
            Fused score of all accepted windows so far, or ``None``/NaN when the new
            window was rejected by the quality gate (it counts towards the duration only).

        Returns
        -------
        "accept", "reject" or None (wait for another window)
        """
        if self.decision is not None:
            return self.decision
        self.n_windows += 1
        if score is not None and math.isfinite(float(score)):
            self.n_used += 1
            self.score = float(score)
            self.llr = self.log_likelihood_ratio(self.score, self.n_used)
            threshold = self.model.threshold_for(self.n_used)
            if self.llr >= self.upper and self.score >= threshold:
                self.decision = ACCEPT
            elif self.llr <= self.lower:
                self.decision = REJECT
        if self.decision is None and self.n_windows >= self.max_windows:
            ok = self.n_used > 0 and self.score >= self.model.threshold_for(self.n_used)
            self.decision = ACCEPT if ok else REJECT
        return self.decision
