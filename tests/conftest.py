"""Shared fixtures.

``NACF_STRICT_SKIPS=1`` (set by ``.ci/run``) turns any skipped test into a failed
session: in CI a skip means something that should be installed is missing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NACF_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Hypothesis profiles, chosen with NACF_HYPOTHESIS_PROFILE (default "nacf"): "nacf" keeps
# example counts moderate so the suite stays fast; "small" is for the NUMBA_DISABLE_JIT=1
# run (pure Python kernels): property tests also read the variable to shrink their shapes.
# Both are derandomized, like the files' own settings: a property test that takes the
# profile's settings (the kernel tests, framing, epoching) tries the same inputs on every
# run, so that CI cannot fail on inputs no later run tries; NACF_FUZZ_EXAMPLES (below)
# is the way to draw new ones.
from hypothesis import HealthCheck, settings

settings.register_profile(
    "nacf", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "small", max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("NACF_HYPOTHESIS_PROFILE", "nacf"))

#: Opt-in fuzzing beyond CI (CI never sets it): NACF_FUZZ_EXAMPLES=<factor> runs every
#: property test with random inputs (derandomize off, no example database) and <factor>
#: times its example count; pick the seed with pytest's --hypothesis-seed=N to reproduce.
FUZZ_FACTOR = int(os.environ.get("NACF_FUZZ_EXAMPLES", "0") or 0)


def fuzzed(s: settings) -> settings:
    """``s`` itself, or with NACF_FUZZ_EXAMPLES set: random, unstored, more examples."""
    if FUZZ_FACTOR <= 0:
        return s
    return settings(s, derandomize=False, database=None,
                    max_examples=s.max_examples * FUZZ_FACTOR)


def pytest_collection_modifyitems(config, items):
    if FUZZ_FACTOR <= 0:
        return
    for item in items:
        fn = getattr(item, "obj", None)
        fn = getattr(fn, "__func__", fn)
        current = getattr(fn, "_hypothesis_internal_use_settings", None)
        if getattr(fn, "is_hypothesis_test", False) and current is not None:
            fn._hypothesis_internal_use_settings = fuzzed(current)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (override with ``NACF_SHARED_DATA``). Read in place, never copied."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (set NACF_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(params=["fifo", "dev_zero", "directory"])
def special_path(request, tmp_path):
    """A path that is not a regular file (a FIFO without a writer, ``/dev/zero``, a
    directory): a loader must refuse it at once, never block or read it forever."""
    if request.param == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        return path
    return "/dev/zero" if request.param == "dev_zero" else tmp_path


@pytest.fixture
def raised_without_blocking():
    """``call(fn, seconds=10)``: run ``fn()`` in a thread and return the exception it
    raised (``None`` if none); fails the test if it is still running after ``seconds``."""
    def call(fn, seconds=10.0):
        out = []

        def run():
            try:
                fn()
                out.append(None)
            except BaseException as exc:
                out.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(seconds)
        assert not t.is_alive(), "blocked reading the file"
        return out[0]
    return call


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("NACF_STRICT_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(
            f"NACF_STRICT_SKIPS=1: {len(skipped)} test(s) skipped; in CI a skip means a "
            "missing dependency, so the run fails.",
            red=True,
        )
        session.exitstatus = 1
