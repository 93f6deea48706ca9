"""Shared helpers of the kernel benchmarks.

Convention (every ``benches/bench_*.py`` follows it, so ``nacf kernels bench`` can
print one comparison table from pytest-benchmark's ``--benchmark-json``):

- ``benchmark.group = "<case>"``: one group per compared case, named by what it
  measures, e.g. ``"sosfilt (16, 500) float64 axis=-1"`` or ``"top_k N=1e6 d=128 q=1"``.
- ``benchmark.extra_info["impl"]``: which implementation, one of ``"scipy"``,
  ``"cython"``, ``"numba"``, ``"numpy"``, ``"faiss"``, ... (free text, short).
- ``benchmark.extra_info["baseline"] = True`` on exactly one entry of each group: the
  one the others are compared against (speed-up = baseline median / impl median).
- ``benchmark.extra_info["target"]`` (optional), e.g. ``"≥3× scipy"``: a speed-up
  target, written ``≥<factor>×`` followed by anything; ``nacf kernels bench`` parses
  the factor and reports met / not met.  For targets that are not a speed-up (e.g. a
  time per item or a bandwidth fraction), also set ``extra_info["target_ratio"]``:
  the minimum speed-up vs the baseline that meets it, or
  ``extra_info["target_per_item_s"]``: the largest median time per item (seconds)
  that meets it.  ``extra_info["n_items"]`` with ``extra_info["per_item"]`` (a noun,
  e.g. ``"chunk"``) makes the table print the median time per item.

Use :func:`tag` to set all of that in one call.  Each benchmark checks its result
against the reference/baseline (outside the timed call).

Run: ``python -m pytest benches/bench_<name>.py --benchmark-only`` (pytest collects
``bench_*.py`` files only when they are named) or ``nacf kernels bench``.
"""

from __future__ import annotations

import re

import pytest

__all__ = ["tag", "target_factor"]


def tag(benchmark, group: str, impl: str, *, baseline: bool = False,
        target: str | None = None, n_items: int | None = None, item: str | None = None,
        target_ratio: float | None = None) -> None:
    """Set ``benchmark.group`` and the ``extra_info`` keys of the table convention."""
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    if baseline:
        benchmark.extra_info["baseline"] = True
    if target is not None:
        benchmark.extra_info["target"] = target
    if target_ratio is not None:
        benchmark.extra_info["target_ratio"] = float(target_ratio)
    if n_items is not None:
        benchmark.extra_info["n_items"] = int(n_items)
        benchmark.extra_info["per_item"] = item or "item"


def target_factor(target: str | None) -> float | None:
    """The ``<factor>`` of a ``"≥<factor>× ..."`` target, or None."""
    if not target:
        return None
    m = re.search(r"(?:≥|>=)\s*([0-9]*\.?[0-9]+)\s*[×x]", target)
    return float(m.group(1)) if m else None


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_process():
    """Kernels run single-threaded (the service scales with processes)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(limits=1):
        yield
