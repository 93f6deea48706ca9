import numpy as np
import pytest

from nacf_core import calibration as cal


def _scores(seed=0, n_g=2000, n_i=20000, d=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(d, 1, n_g), rng.normal(0, 1, n_i)


def test_threshold_meets_target_fmr():
    g, i = _scores()
    for target in (0.1, 0.01, 0.001):
        t = cal.threshold_at_fmr(i, target)
        fmr, _ = cal.rates_at(g, i, t)
        assert fmr <= target
        # and it is the smallest such threshold: one ulp lower exceeds the target
        assert np.mean(i >= np.nextafter(t, -np.inf)) > target or t == -1.0


def test_threshold_with_rejected_probes():
    imp = np.array([-np.inf] * 999 + [0.5])
    assert cal.threshold_at_fmr(imp, 0.01) == -1.0
    with pytest.raises(ValueError, match="target_fmr"):
        cal.threshold_at_fmr(imp, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        cal.threshold_at_fmr([np.nan, 1.0], 0.1)


def test_eer_of_known_distributions():
    from scipy.stats import norm

    g, i = _scores(n_g=200000, n_i=200000, d=2.0)
    assert abs(cal.eer(g, i) - norm.cdf(-1.0)) < 0.004
    assert cal.eer([1, 2, 3], [-1, -2]) == 0.0
    assert cal.eer([-1, -2], [1, 2, 3]) == 1.0


def test_det_curve_monotone():
    g, i = _scores(n_g=300, n_i=500, d=1.0)
    t, fmr, fnmr = cal.det_curve(g, i)
    assert np.all(np.diff(t) > 0) and np.all(np.diff(fmr) <= 0) and np.all(np.diff(fnmr) >= 0)
    assert fmr[-1] == 0 and fnmr[-1] == 1


def test_bootstrap_over_subjects():
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(20), 50)
    # half the subjects are hard: their scores sit lower
    g = rng.normal(np.where(subjects < 10, 0.4, 0.9), 0.1)
    fnmr, lo, hi = cal.bootstrap_fnmr(g, subjects, 0.5, n_boot=500)
    assert lo <= fnmr <= hi
    assert hi - lo > 0.1  # correlated within subjects: a wide interval
    with pytest.raises(ValueError, match="subjects"):
        cal.bootstrap_fnmr(g, subjects[:-1], 0.5)


def test_calibrate_record():
    g, i = _scores(n_g=500, n_i=5000)
    c = cal.calibrate(g, i, np.repeat(np.arange(10), 50), 0.01, n_boot=200)
    assert c.fmr <= 0.01 and c.fnmr_ci[0] <= c.fnmr <= c.fnmr_ci[1]
    d = c.as_dict()
    assert d["n_genuine"] == 500 and d["n_impostor"] == 5000 and d["n_subjects"] == 10
