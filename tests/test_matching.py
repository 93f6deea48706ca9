"""Public matching layer: validation, normalisation, ordering, aliases."""

from __future__ import annotations

import numpy as np
import pytest

from nacf_core import matching
from nacf_core.matching import cosine_scores, normalize_rows, top_k

BACKENDS = ["reference", "numba", "cython"]


def _unit(rng, n, d=16):
    return normalize_rows(rng.normal(size=(n, d)))


def test_normalize_rows():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    out = normalize_rows(x)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-7)
    strided = np.asfortranarray(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(normalize_rows(strided), axis=1), 1, rtol=1e-6)
    with pytest.raises(ValueError, match="'x' rows.*row 1 has a zero norm"):
        normalize_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="'templates' rows.*row 0 has NaN or inf"):
        normalize_rows(np.array([[np.nan, 1.0]]), name="templates")
    with pytest.raises(TypeError, match="'x'.*float32 or float64.*int64"):
        normalize_rows(np.ones((2, 2), dtype=np.int64))


@pytest.mark.parametrize(
    "probes, templates, exc, words",
    [
        (np.ones(4, np.float32), np.ones((3, 4), np.float32), ValueError,
         ["'probes'", "2-D", "1-D"]),
        (np.ones((1, 4), np.float32), np.ones((3, 4, 1), np.float32), ValueError,
         ["'templates'", "2-D", "3-D"]),
        (np.ones((1, 4), np.int32), np.ones((3, 4), np.float32), TypeError,
         ["'probes'", "float32", "int32"]),
        (np.ones((1, 4), np.float32), np.ones((3, 4)), TypeError,
         ["'templates'", "float32", "float64", "normalize=True"]),
        (np.ones((1, 4), np.float32), np.ones((4, 3), np.float32).T, ValueError,
         ["'templates'", "C-contiguous"]),
        (np.ones((1, 4), np.float32), np.ones((3, 5), np.float32), ValueError,
         ["'probes'", "'templates'", "dimension", "(1, 4)", "(3, 5)"]),
        (np.full((1, 4), np.nan, np.float32), np.ones((3, 4), np.float32), ValueError,
         ["'probes'", "finite"]),
        (np.ones((1, 0), np.float32), np.ones((3, 0), np.float32), ValueError, ["d >= 1"]),
    ],
)
def test_bad_inputs_name_the_parameter(probes, templates, exc, words):
    for call in (lambda: cosine_scores(probes, templates, backend="reference"),
                 lambda: top_k(probes, templates, 1, backend="reference")):
        with pytest.raises(exc) as info:
            call()
        for w in words:
            assert w in str(info.value)


def test_bad_k():
    rng = np.random.default_rng(1)
    p, t = _unit(rng, 2), _unit(rng, 5)
    with pytest.raises(ValueError, match="'k'.*n_templates \\(5\\).*k=6 \\(k > n_templates\\)"):
        top_k(p, t, 6, backend="reference")
    with pytest.raises(ValueError, match="'k' must be in \\[1, 5\\], got 0"):
        top_k(p, t, 0, backend="reference")
    with pytest.raises(TypeError, match="'k' must be an integer, got 2.0"):
        top_k(p, t, 2.0, backend="reference")
    with pytest.raises(TypeError, match="'normalize' must be a bool"):
        top_k(p, t, 2, normalize="yes", backend="reference")


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_and_top_k(backend):
    rng = np.random.default_rng(2)
    p, t = _unit(rng, 3, 32), _unit(rng, 200, 32)
    s = cosine_scores(p, t, backend=backend)
    assert s.dtype == np.float32 and s.shape == (3, 200)
    np.testing.assert_allclose(s, p.astype(np.float64) @ t.T.astype(np.float64), atol=1e-5)
    idx, sc = top_k(p, t, 7, backend=backend)
    assert idx.dtype == np.int64 and sc.dtype == np.float32 and idx.shape == sc.shape == (3, 7)
    ref = np.argsort(-s.astype(np.float64), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(sc, np.take_along_axis(s, ref, axis=1), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalize_option(backend):
    rng = np.random.default_rng(3)
    p = rng.normal(size=(2, 8)) * 10  # float64, not normalised
    t = np.asfortranarray(rng.normal(size=(30, 8)) * 3)
    s = cosine_scores(p, t, normalize=True, backend=backend)
    want = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (
        t / np.linalg.norm(t, axis=1, keepdims=True)).T
    np.testing.assert_allclose(s, want, atol=1e-6)
    idx, _ = matching.match(p, t, 3, normalize=True, backend=backend)
    np.testing.assert_array_equal(idx, np.argsort(-want, axis=1, kind="stable")[:, :3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_endian_input_gives_what_native_input_gives(backend):
    """float32 rows in big-endian order ('>f4') passed the dtype check (the number type
    only) and then failed in the compiled backends: Cython with 'Big-endian buffer not
    supported on little-endian compiler', Numba with a TypingError page."""
    rng = np.random.default_rng(4)
    p, t = _unit(rng, 2, 16), _unit(rng, 40, 16)
    bp, bt = p.astype(">f4"), t.astype(">f4")
    np.testing.assert_array_equal(cosine_scores(bp, bt, backend=backend),
                                  cosine_scores(p, t, backend=backend))
    for got, want in zip(top_k(bp, bt, 5, backend=backend), top_k(p, t, 5, backend=backend)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(top_k(p, bt, 3, backend=backend), top_k(p, t, 3, backend=backend)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lower_index(backend):
    t = np.zeros((10, 4), np.float32)
    t[:, 0] = 1.0
    t[[2, 5, 7], :] = [0.0, 1.0, 0.0, 0.0]
    p = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)
    idx, sc = top_k(p, t, 5, backend=backend)
    assert idx.tolist() == [[2, 5, 7, 0, 1]]
    assert sc.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]


def test_alias():
    assert matching.match is top_k
    assert set(matching.__all__) == {"normalize_rows", "cosine_scores", "top_k", "match"}
