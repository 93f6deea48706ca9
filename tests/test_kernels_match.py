"""Matching kernels: the compiled backends agree with the NumPy reference.

Integer-valued float32 inputs make every dot product exact in any summation order, so
indices and scores must equal the reference exactly, ties included (small value
ranges give many ties).  Random-normal inputs are checked within float32 rounding.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nacf_core.kernels import _ref_match as ref
from nacf_core.kernels._cpu import supported_variants

SMALL = os.environ.get("NACF_HYPOTHESIS_PROFILE") == "small"
MAX_PROBES = 3 if SMALL else 70
MAX_TEMPLATES = 40 if SMALL else 3000
MAX_D = 20 if SMALL else 150

IMPLS = [
    pytest.param("nacf_core.kernels._nb_match", id="numba", marks=pytest.mark.numba_kernels),
    pytest.param("nacf_core.kernels._cy_match", id="cython"),
]


@st.composite
def integer_problems(draw):
    n_probes = draw(st.integers(0, MAX_PROBES))
    n_templates = draw(st.integers(1, MAX_TEMPLATES))
    d = draw(st.one_of(st.integers(1, 20), st.integers(1, MAX_D)))
    k = draw(st.integers(1, n_templates))
    span = draw(st.sampled_from([1, 2, 4]))  # few distinct values: many ties
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    probes = rng.integers(-span, span + 1, (n_probes, d)).astype(np.float32)
    templates = rng.integers(-span, span + 1, (n_templates, d)).astype(np.float32)
    return probes, templates, k


def _block_kwargs(mod, draw_small: bool) -> dict:
    """Force tiny blocks sometimes so the running top-k crosses many block edges."""
    return {"_block_rows": 7} if draw_small and hasattr(mod, "BLOCK_ROWS") else {}


@pytest.mark.parametrize("impl", IMPLS)
@given(problem=integer_problems(), small_blocks=st.booleans())
def test_top_k_exact_on_integer_data(impl, problem, small_blocks):
    mod = importlib.import_module(impl)
    probes, templates, k = problem
    idx, sc = mod.top_k(probes, templates, k, **_block_kwargs(mod, small_blocks))
    want_idx, want_sc = ref.top_k(probes, templates, k)
    assert idx.dtype == np.int64 and sc.dtype == np.float32
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(sc, want_sc)
    np.testing.assert_array_equal(mod.cosine_scores(probes, templates),
                                  ref.cosine_scores(probes, templates))


@pytest.mark.parametrize("impl", IMPLS)
@given(n_probes=st.integers(1, MAX_PROBES), n_templates=st.integers(1, MAX_TEMPLATES),
       d=st.integers(1, MAX_D), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_top_k_on_random_unit_rows(impl, n_probes, n_templates, d, seed, data):
    mod = importlib.import_module(impl)
    rng = np.random.default_rng(seed)
    probes = rng.normal(size=(n_probes, d))
    templates = rng.normal(size=(n_templates, d))
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    templates = (templates / np.linalg.norm(templates, axis=1, keepdims=True)).astype(np.float32)
    k = data.draw(st.integers(1, n_templates))
    tol = 2e-6 * np.sqrt(d)
    scores = mod.cosine_scores(probes, templates)
    exact = ref.cosine_scores(probes, templates).astype(np.float64)
    np.testing.assert_allclose(scores, exact, atol=tol)
    idx, sc = mod.top_k(probes, templates, k)
    # Each returned score is the score of its index, in non-increasing order, and no
    # left-out template beats the k-th by more than rounding.
    np.testing.assert_allclose(sc, np.take_along_axis(exact, idx, axis=1), atol=tol)
    assert (np.diff(sc, axis=1) <= 0).all()
    assert all(len(set(row)) == k for row in idx.tolist())
    left_out = exact.copy()
    np.put_along_axis(left_out, idx, -np.inf, axis=1)
    if k < n_templates:
        assert (left_out.max(axis=1) <= sc[:, -1] + 2 * tol).all()


@pytest.mark.parametrize("impl", IMPLS + [pytest.param("nacf_core.kernels._ref_match",
                                                       id="reference")])
def test_edge_cases(impl):
    mod = importlib.import_module(impl)
    t = np.eye(4, dtype=np.float32)
    # No probes.
    idx, sc = mod.top_k(np.zeros((0, 4), np.float32), t, 2)
    assert idx.shape == sc.shape == (0, 2)
    assert mod.cosine_scores(np.zeros((0, 4), np.float32), t).shape == (0, 4)
    # k = n_templates, all scores equal: index order.
    p = np.zeros((1, 4), np.float32)
    idx, sc = mod.top_k(p, t, 4)
    assert idx.tolist() == [[0, 1, 2, 3]] and sc.tolist() == [[0.0] * 4]
    # Non-finite template rows give NaN scores: they rank last, reported as -inf.
    t2 = np.array([[np.nan, 0, 0, 0], [0.5, 0, 0, 0], [np.inf, 0, 0, 0], [-1, 0, 0, 0],
                   [1, 0, 0, 0]], np.float32)
    p2 = np.array([[1.0, 0, 0, 0]], np.float32)
    idx, sc = mod.top_k(p2, t2, 5)
    assert idx[0, :4].tolist() == [2, 4, 1, 3] and idx[0, 4] == 0
    assert sc[0].tolist() == [np.inf, 1.0, 0.5, -1.0, -np.inf]
    # One template, one dimension.
    idx, sc = mod.top_k(np.ones((3, 1), np.float32), np.full((1, 1), -1.0, np.float32), 1)
    assert idx.tolist() == [[0]] * 3 and sc.tolist() == [[-1.0]] * 3


def _cy_variants():
    return [pytest.param(v, id=v) for v in supported_variants()]


@pytest.mark.parametrize("variant", _cy_variants())
@given(problem=integer_problems(), small_blocks=st.booleans())
def test_every_isa_variant_agrees(variant, problem, small_blocks):
    mod = importlib.import_module("nacf_core.kernels._cy_match")
    kernel = importlib.import_module(f"nacf_core.kernels._cy_match_{variant}")
    probes, templates, k = problem
    kw = {"_block_rows": 7} if small_blocks else {}
    idx, sc = mod.top_k(probes, templates, k, _module=kernel, **kw)
    want_idx, want_sc = ref.top_k(probes, templates, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(sc, want_sc)
    np.testing.assert_array_equal(mod.cosine_scores(probes, templates, _module=kernel),
                                  ref.cosine_scores(probes, templates))
