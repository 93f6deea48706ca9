import numpy as np
import pytest

from nacf_core.features import (
    Covariances,
    TangentSpace,
    WithinClassWhitening,
    l2_normalize,
    spd_expm,
    spd_inv_sqrt,
    spd_logm,
)


def _windows(n=40, c=6, t=200, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c, c))
    return np.einsum("ij,njt->nit", mix, rng.normal(size=(n, c, t)))


def test_estimators_follow_sklearn_conventions():
    X = _windows()
    cov = Covariances(shrinkage=0.1)
    assert cov.fit(X) is cov and cov.n_channels_ == 6
    C = cov.transform(X)
    ts = TangentSpace()
    assert not hasattr(ts, "reference_")
    assert ts.fit(C) is ts and hasattr(ts, "reference_")
    T = ts.transform(C)
    y = np.repeat(np.arange(4), 10)
    w = WithinClassWhitening(n_components=10)
    assert w.fit(T, y) is w and w.components_.shape == (21, 10)


def test_covariances_shrinkage_and_spd():
    X = _windows(n=5)
    raw = Covariances(shrinkage=0.0).transform(X)
    xc = X[0] - X[0].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(raw[0], xc @ xc.T / X.shape[-1])
    s = 0.2
    shr = Covariances(shrinkage=s).transform(X)
    mu = np.trace(raw[0]) / 6
    np.testing.assert_allclose(shr[0], (1 - s) * raw[0] + s * mu * np.eye(6))
    assert np.all(np.linalg.eigvalsh(shr) > 0)
    with pytest.raises(ValueError, match="shrinkage"):
        Covariances(shrinkage=1.0).fit(X)
    with pytest.raises(ValueError, match="3-D"):
        Covariances().fit(X[0])


def test_spd_functions_invert_each_other():
    C = Covariances().transform(_windows(n=3))
    np.testing.assert_allclose(spd_expm(spd_logm(C)), C, rtol=1e-9, atol=1e-9)
    p = spd_inv_sqrt(C)
    np.testing.assert_allclose(p @ C @ p, np.broadcast_to(np.eye(6), C.shape), atol=1e-9)


def test_tangent_space_is_riemannian_distance_to_reference():
    C = Covariances().transform(_windows())
    ts = TangentSpace().fit(C)
    np.testing.assert_allclose(ts.transform(ts.reference_[None]), 0.0, atol=1e-9)
    t = ts.transform(C[:3])
    # |t| equals the affine-invariant distance between C and the reference
    p = ts.reference_inv_sqrt_
    for k in range(3):
        w = np.linalg.eigvalsh(p @ C[k] @ p)
        assert np.linalg.norm(t[k]) == pytest.approx(np.sqrt(np.sum(np.log(w) ** 2)))
    # invariant to a common congruence of data and reference (affine invariance)
    a = np.random.default_rng(3).normal(size=(6, 6))
    ts2 = TangentSpace().set_reference(a @ ts.reference_ @ a.T)
    t2 = ts2.transform(a @ C[:3] @ a.T)
    np.testing.assert_allclose(np.linalg.norm(t2, axis=1), np.linalg.norm(t, axis=1), rtol=1e-6)


def test_tangent_space_rank_deficient_window_is_finite():
    C = Covariances(shrinkage=0.0).transform(_windows())
    ts = TangentSpace().fit(C)
    bad = C[:1].copy()
    bad[0, 0, :] = bad[0, :, 0] = 0.0  # a dead channel
    assert np.all(np.isfinite(ts.transform(bad)))
    with pytest.raises(ValueError, match="positive definite"):
        TangentSpace().set_reference(-np.eye(3))


def test_within_class_whitening_whitens_within_subject_scatter():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(8, 5))
    y = np.repeat(np.arange(8), 60)
    noise = rng.normal(size=(480, 5)) @ np.diag([5, 1, 1, 0.2, 0.2])
    X = centres[y] + noise
    w = WithinClassWhitening(reg=0.0).fit(X, y)
    Z = w.transform(X)
    within = sum(((Z[y == c] - Z[y == c].mean(0)).T @ (Z[y == c] - Z[y == c].mean(0)))
                 for c in range(8)) / len(Z)
    np.testing.assert_allclose(within, np.eye(5), atol=1e-8)
    with pytest.raises(ValueError, match="2 subjects"):
        WithinClassWhitening().fit(X, np.zeros(480))
    with pytest.raises(ValueError, match="shape"):
        WithinClassWhitening().fit(X, y[:-1])


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
