"""A wall clock that steps back (an NTP correction, a VM restored from a snapshot): an
expired session never validates again, and a lockout never has more than
``lockout_seconds`` left, on each store backend."""

from __future__ import annotations

import pytest
import test_service_sessions

from nacf_core.errors import FailedPrecondition

svc_both = test_service_sessions.svc_both  # an AuthService on each store backend

T0 = 1_790_000_000.0


def _at(svc, t: float) -> None:
    svc.clock = lambda: t


@pytest.mark.parametrize("seen_by", ["ValidateSession", "EndSession",
                                     "ContinuousAuthenticate"])
def test_a_session_seen_expired_stays_expired_after_the_clock_steps_back(svc_both, seen_by):
    """A session past its expiry that no sweep had ended yet was answered expired, then
    valid again once the clock stepped back before its expiry (and could be renewed by
    ContinuousAuthenticate and ended by EndSession as if live): a session seen expired is
    now recorded ended (reason ``expired``, at its expiry), as the sweep records it."""
    svc = svc_both
    svc.store.put_template("u", b"not a template", "m")
    s = svc.store.create_session("u", 60, now=T0)
    _at(svc, T0 + 61)  # expired a second ago; no sweep yet
    if seen_by == "ValidateSession":
        assert (svc.validate_session(s.token).valid, svc.validate_session(s.token).reason) \
            == (False, "expired")
    elif seen_by == "EndSession":
        assert svc.end_session(s.token)[0] is False
    else:
        with pytest.raises(FailedPrecondition, match="expired"):
            next(iter(svc.continuous(s.token, [])))
    _at(svc, T0 - 3600 + 30)  # the clock steps back an hour
    v = svc.validate_session(s.token)
    assert (v.valid, v.reason) == (False, "expired"), v
    assert svc.end_session(s.token)[0] is False
    with pytest.raises(FailedPrecondition, match="expired"):
        next(iter(svc.continuous(s.token, [])))
    stored = svc.store.get_session(s.token)
    assert (stored.ended_at, stored.end_reason) == (T0 + 60, "expired")
    assert svc.store.count_active_sessions(now=svc.clock()) == 0


def test_a_lockout_does_not_stretch_by_the_clocks_step_back(svc_both):
    """A user locked for 60 s, then the clock stepped back an hour: the lock lasted an hour
    and a minute more (Authenticate refused "locked ... 3630 s from now", Identify left
    the user out). The maintenance that runs at once after a step back now shortens any
    lock with more than lockout_seconds left to lockout_seconds from now."""
    svc = svc_both
    svc.config.lockout_threshold, svc.config.lockout_seconds = 3, 60.0
    svc.store.put_template("u", b"not a template", "m")
    svc.store.put_template("w", b"not a template", "m")
    _at(svc, T0)
    svc.maintenance(force=True)
    for i in range(3):
        svc.store.register_failure("u", 3, 60, now=T0 + i)  # locked until T0 + 62
    svc.store.register_failure("w", 3, 60, now=T0)  # a streak, not a lock
    _at(svc, T0 + 30)
    svc.maintenance()
    assert svc.store.get_lockout("u").locked_until == T0 + 62  # nothing to shorten
    step = T0 - 3600
    _at(svc, step)
    svc.maintenance()  # due at once after a step back
    lock = svc.store.get_lockout("u")
    assert lock.failures == 3 and lock.locked_until == pytest.approx(step + 60), lock
    assert svc.store.get_lockout("w") == svc.store.get_lockout("w").__class__(1, None)
    assert svc.store.locked_user_ids(now=step + 59) == {"u"}
    assert svc.store.locked_user_ids(now=step + 61) == set()


def test_a_live_session_does_not_stretch_by_the_clocks_step_back(svc_both):
    """A session with 60 s left, then the clock stepped back a day (a VM restored from a
    snapshot): it stayed valid a day and a minute more, however seldom its wearer was
    verified. As for lockouts, the maintenance that runs at once after a step back now
    shortens any open session with more than session_ttl_s left to session_ttl_s from
    now; one renewed since (ContinuousAuthenticate) is as its renewal left it."""
    svc = svc_both
    svc.config.session_ttl_s = 900.0
    svc.store.put_template("u", b"not a template", "m")
    _at(svc, T0)
    svc.maintenance(force=True)
    s = svc.store.create_session("u", 900, now=T0 - 840)  # expires at T0 + 60
    ok = svc.store.create_session("u", 900, now=T0)
    _at(svc, T0 + 30)
    svc.maintenance()
    assert svc.store.get_session(s.token).expires_at == T0 + 60  # nothing to shorten
    step = T0 - 86400
    _at(svc, step)
    svc.maintenance()  # due at once after a step back
    assert svc.store.get_session(s.token).expires_at == pytest.approx(step + 900)
    assert svc.store.get_session(ok.token).expires_at == pytest.approx(step + 900)
    _at(svc, step + 901)
    assert svc.validate_session(s.token).valid is False
    assert svc.validate_session(ok.token).reason == "expired"
    fresh = svc.store.create_session("u", 900, now=step + 901)
    svc.maintenance(force=True)
    assert svc.store.get_session(fresh.token).expires_at == step + 901 + 900
