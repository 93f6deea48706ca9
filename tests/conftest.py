"""Shared fixtures.

``NACF_STRICT_SKIPS=1`` (set by ``.ci/run``) turns any skipped test into a failed
session: in CI a skip means something that should be installed is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NACF_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Hypothesis profiles, chosen with NACF_HYPOTHESIS_PROFILE (default "nacf"): "nacf" keeps
# example counts moderate so the suite stays fast; "small" is for the NUMBA_DISABLE_JIT=1
# run (pure Python kernels): property tests also read the variable to shrink their shapes.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "nacf", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "small", max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("NACF_HYPOTHESIS_PROFILE", "nacf"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (override with ``NACF_SHARED_DATA``). Read in place, never copied."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (set NACF_SHARED_DATA)")
    return SHARED_DATA


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
