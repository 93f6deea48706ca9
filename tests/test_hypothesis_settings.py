"""The property tests try the same inputs on every run (README, "derandomized: every run,
CI's included"), and fresh ones only with ``NACF_FUZZ_EXAMPLES`` (tests/conftest.py)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

FUZZ_FACTOR = int(os.environ.get("NACF_FUZZ_EXAMPLES", "0") or 0)  # as in conftest.py


@given(st.integers())
def test_a_property_test_without_settings_of_its_own(x):
    assert isinstance(x, int)


def test_every_property_test_is_derandomized_unless_fuzzing(request):
    """The "nacf" and "small" profiles did not set ``derandomize``: a property test that
    takes the profile's settings (the kernel tests, framing, epoching, the Cyton decoder)
    drew new random inputs on every run, CI's included, so CI could fail on inputs that
    no later run would try again."""
    profile = os.environ.get("NACF_HYPOTHESIS_PROFILE", "nacf")
    assert settings.get_profile(profile).derandomize, profile
    checked = 0
    for item in request.session.items:
        fn = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
        if not getattr(fn, "is_hypothesis_test", False):
            continue
        s = fn._hypothesis_internal_use_settings
        assert s.derandomize == (FUZZ_FACTOR <= 0), item.nodeid
        checked += 1
    assert checked, "no property test collected, not even this file's"
