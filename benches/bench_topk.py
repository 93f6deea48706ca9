"""1:N matching: ``top_k`` against NumPy and faiss, and against memory bandwidth.

Run: ``python -m pytest benches/bench_topk.py --benchmark-only`` (or ``nacf kernels
bench``).  Single thread everywhere (``benches/conftest.py`` limits BLAS/OpenMP
pools to one thread; faiss gets ``omp_set_num_threads(1)``).

Groups (``benchmark.group``), each with one baseline:

- ``top_k N=<N> d=128 q=<1|64> k=10``: cython, numba, faiss ``IndexFlatIP`` against
  NumPy ``probes @ templates.T`` + ``argpartition`` (baseline).
- ``top_k bandwidth N=1e6 d=128 q=1``: cython ``top_k`` against ``numpy.sum`` over the
  same 512 MB array (baseline).  Target: read the templates at >= 90 % of sum's
  bandwidth, i.e. a "speed-up" >= 0.9.
- ``top_k N=1e6 d=128 q=64 vs blocked argmax``: cython (and numba) ``top_k`` with k=1
  against NumPy matmul + argmax over blocks of 16 384 rows (baseline).  Target
  >= 1.25x.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tag
from nacf_core.kernels import _cy_match, _nb_match, _ref_match

D = 128
K = 10
SIZES = {"1e4": 10_000, "1e5": 100_000, "1e6": 1_000_000}
ROUNDS = {"1e4": 30, "1e5": 8, "1e6": 4}
BLOCK = 16_384


@pytest.fixture(scope="module")
def templates_1e6() -> np.ndarray:
    """1e6 x 128 unit rows, float32 (512 MB); smaller N are its leading rows."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((SIZES["1e6"], D), dtype=np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return t


@pytest.fixture(scope="module")
def probes() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((64, D), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return {1: np.ascontiguousarray(q[:1]), 64: q}


@pytest.fixture(scope="module")
def faiss_indexes(templates_1e6):
    faiss = pytest.importorskip("faiss")
    faiss.omp_set_num_threads(1)
    built = {}

    def get(n):
        if n not in built:
            index = faiss.IndexFlatIP(D)
            index.add(templates_1e6[:n])
            built[n] = index
        return built[n]

    yield get
    built.clear()


def numpy_top_k(probes, templates, k):
    """The plain NumPy way: full score matrix, argpartition, sort the k."""
    scores = probes @ templates.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(best, order, axis=1)


def numpy_blocked_argmax(probes, templates):
    """Matmul + argmax over blocks of 16 384 template rows (the batch baseline)."""
    n_probes = probes.shape[0]
    best = np.full(n_probes, -np.inf, dtype=np.float32)
    best_i = np.zeros(n_probes, dtype=np.int64)
    rows = np.arange(n_probes)
    for start in range(0, templates.shape[0], BLOCK):
        scores = probes @ templates[start:start + BLOCK].T
        arg = scores.argmax(axis=1)
        val = scores[rows, arg]
        better = val > best
        best[better] = val[better]
        best_i[better] = arg[better] + start
    return best_i, best


def _check(idx, sc, want_idx, want_sc):
    """Same scores within float32 rounding, and the same templates where scores differ."""
    np.testing.assert_allclose(sc, want_sc, atol=1e-5)
    distinct = np.abs(np.diff(want_sc, axis=1, prepend=np.inf)) > 1e-5
    assert (idx[distinct] == want_idx[distinct]).mean() > 0.99


IMPLS = {
    "cython": lambda p, t, k, _idx: _cy_match.top_k(p, t, k),
    "numba": lambda p, t, k, _idx: _nb_match.top_k(p, t, k),
    "numpy": lambda p, t, k, _idx: numpy_top_k(p, t, k),
    "faiss": lambda p, t, k, idx: idx.search(p, k)[::-1],
}


# impl varies fastest, so a group's implementations run back to back (the machine is
# shared: load drifts over minutes).
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("n_probes", [1, 64])
def test_top_k(benchmark, templates_1e6, probes, faiss_indexes, size, n_probes, impl):
    n = SIZES[size]
    t = templates_1e6[:n]
    p = probes[n_probes]
    index = faiss_indexes(n) if impl == "faiss" else None
    fn = IMPLS[impl]
    fn(p, t, K, index)  # warm-up (Numba compiles on first call)
    tag(benchmark, f"top_k N={size} d={D} q={n_probes} k={K}", impl,
        baseline=(impl == "numpy"))
    idx, sc = benchmark.pedantic(fn, args=(p, t, K, index), rounds=ROUNDS[size],
                                 iterations=1)
    want_idx, want_sc = numpy_top_k(p, t, K)
    _check(np.asarray(idx, dtype=np.int64), np.asarray(sc, dtype=np.float32),
           want_idx, want_sc)


@pytest.mark.parametrize("impl", ["numpy.sum", "cython", "faiss"])
def test_bandwidth_one_query(benchmark, templates_1e6, probes, faiss_indexes, impl):
    t = templates_1e6
    p = probes[1]
    tag(benchmark, "top_k bandwidth N=1e6 d=128 q=1", impl, baseline=(impl == "numpy.sum"),
        target=None if impl == "numpy.sum" else "≥0.9× numpy.sum bandwidth",
        target_ratio=None if impl == "numpy.sum" else 0.9)
    benchmark.extra_info["bytes"] = t.nbytes
    if impl == "numpy.sum":
        total = benchmark.pedantic(np.sum, args=(t,), rounds=15, iterations=1)
        assert np.isfinite(total)
        return
    if impl == "faiss":
        index = faiss_indexes(t.shape[0])
        sc, idx = benchmark.pedantic(index.search, args=(p, K), rounds=15, iterations=1)
    else:
        idx, sc = benchmark.pedantic(_cy_match.top_k, args=(p, t, K), rounds=15, iterations=1)
    _check(idx, sc, *numpy_top_k(p, t, K))


@pytest.mark.parametrize("impl", ["numpy", "cython", "numba"])
def test_batch_vs_blocked_argmax(benchmark, templates_1e6, probes, impl):
    t = templates_1e6
    p = probes[64]
    if impl == "numpy":
        fn = numpy_blocked_argmax
        args = (p, t)
    else:
        mod = _cy_match if impl == "cython" else _nb_match
        fn = mod.top_k
        args = (p, t, 1)
        mod.top_k(p, t[:1000], 1)  # warm-up
    tag(benchmark, "top_k N=1e6 d=128 q=64 k=1 vs blocked argmax", impl,
        baseline=(impl == "numpy"), target=None if impl == "numpy" else "≥1.25× numpy",
        n_items=p.shape[0], item="query")
    out = benchmark.pedantic(fn, args=args, rounds=4, iterations=1)
    idx, sc = (out[0].reshape(-1), out[1].reshape(-1))
    want_idx, want_sc = numpy_blocked_argmax(p, t)
    np.testing.assert_allclose(sc, want_sc, atol=1e-5)
    assert (idx == want_idx).mean() > 0.95


def test_reference_agrees_on_a_slice(templates_1e6, probes):
    """The benchmark's NumPy baseline is the reference's answer (smoke check)."""
    t = templates_1e6[:5000]
    idx, sc = _ref_match.top_k(probes[64], t, K)
    _check(idx, sc, *numpy_top_k(probes[64], t, K))
