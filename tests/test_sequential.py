import math
from types import SimpleNamespace

import numpy as np
import pytest

from nacf_core.sequential import SequentialTest, fit_sequential


def _model(max_windows=5, thr=0.5):
    rng = np.random.default_rng(0)
    gen = {n: rng.normal(0.8, 0.15 / math.sqrt(n), 500) for n in range(1, max_windows + 1)}
    imp = {n: rng.normal(0.1, 0.15, 5000) for n in range(1, max_windows + 1)}
    seq = fit_sequential(gen, imp, alpha=0.001, beta=0.02, max_windows=max_windows)
    return SimpleNamespace(sequential=seq, window_s=4.0,
                           threshold_for=lambda n: thr - 0.02 * (min(n, max_windows) - 1))


def test_bounds_are_walds():
    t = SequentialTest(_model())
    assert t.upper == pytest.approx(math.log(0.98 / 0.001))
    assert t.lower == pytest.approx(math.log(0.02 / 0.999))


def test_clear_genuine_accepts_at_once_and_impostor_rejects():
    t = SequentialTest(_model())
    assert t.update(0.95) == "accept"
    assert t.seconds == 4.0 and t.n_used == 1
    assert t.update(-1.0) == "accept"  # decided: further input changes nothing
    t = SequentialTest(_model())
    assert t.update(0.05) == "reject"


def test_ambiguous_waits_then_decides_at_max_duration():
    t = SequentialTest(_model(max_windows=3))
    assert t.update(0.45) is None
    assert t.update(0.46) is None
    assert t.update(0.47) in ("accept", "reject")
    assert t.done and t.seconds == 12.0


def test_accept_never_below_calibrated_threshold():
    # a score the likelihood ratio likes but under the threshold must not accept early
    t = SequentialTest(_model(thr=0.9))
    assert t.update(0.85) is None


def test_rejected_windows_count_time_only():
    t = SequentialTest(_model(max_windows=2))
    assert t.update(None) is None
    assert t.n_used == 0 and t.seconds == 4.0
    assert t.update(float("nan")) == "reject"  # no evidence at all by the deadline


def test_errors():
    with pytest.raises(ValueError, match="alpha"):
        SequentialTest(_model(), alpha=0.7)
    with pytest.raises(ValueError, match="sequential"):
        SequentialTest(SimpleNamespace(sequential={}, window_s=4.0))
    with pytest.raises(ValueError, match="alpha"):
        fit_sequential({1: [0.1, 0.2]}, {1: [0.0, 0.1]}, alpha=0, beta=0.1, max_windows=1)


def _tight_genuine_model():
    """Fused genuine scores much tighter than impostor ones (sd 0.018 against 0.2): the
    Gaussian log-likelihood ratio is then a downward parabola whose peak (about 0.905
    here) lies just above the genuine mean."""
    rng = np.random.default_rng(1)
    gen = {n: rng.normal(0.9, 0.018, 2000) for n in range(1, 4)}
    imp = {n: rng.normal(0.3, 0.2, 2000) for n in range(1, 4)}
    seq = fit_sequential(gen, imp, alpha=0.001, beta=0.02, max_windows=3)
    return SimpleNamespace(sequential=seq, window_s=4.0, threshold_for=lambda n: 0.75)


def test_a_higher_score_is_never_weaker_evidence():
    """Past the parabola's peak the raw ratio fell again: 0.9 accepted at once, 0.95 to
    0.99 had to wait (0.99 just above Wald's lower bound), and 1.0, above every genuine
    score of the calibration, was rejected at once as 'clearly an impostor'."""
    t = SequentialTest(_tight_genuine_model())
    grid = np.linspace(-1.0, 1.0, 2001)
    for n in (1, 2, 3):
        llr = np.array([t.log_likelihood_ratio(s, n) for s in grid])
        assert np.all(np.diff(llr) >= -1e-12), n
    for score in (0.9, 0.95, 0.97, 0.99, 1.0):
        t = SequentialTest(_tight_genuine_model())
        assert t.update(score) == "accept", score
    t = SequentialTest(_tight_genuine_model())
    assert t.update(0.5) == "reject"  # the impostor side is untouched
