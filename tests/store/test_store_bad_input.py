"""Bad arguments found by the generated-argument tests (test_store_fuzz_args.py), kept as
plain examples: each is refused with ``TypeError``/``ValueError`` or a nacf error naming
what was expected, on SQLite and PostgreSQL, and writes nothing."""

from __future__ import annotations

import pytest

T0 = 1_790_000_000.0
HUGE = 2 ** 1100  # an int no float can hold


def test_an_integer_too_large_for_a_float_is_refused_as_a_bad_time_or_duration(store):
    store.put_template("u", b"tmpl", "m-1", now=T0)
    calls = [
        lambda: store.delete_user("u", now=HUGE),
        lambda: store.create_session("u", HUGE, now=T0),
        lambda: store.create_session("u", 60.0, now=-HUGE),
        lambda: store.register_failure("u", 3, HUGE, now=T0),
        lambda: store.take_tokens("c", HUGE, 5.0, now=T0),
        lambda: store.use_nonce("d", "n", HUGE, now=T0),
        lambda: store.purge_attempts(HUGE),
        lambda: store.purge_sessions(-HUGE),
        lambda: store.count_active_sessions(HUGE),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="must be"):
            call()
    assert store.get_user("u").template_version == 1
    assert store.count_active_sessions(T0) == 0
    assert store.get_lockout("u").failures == 0
