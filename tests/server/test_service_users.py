"""GetUser and ListUsers: what they say of each user, and what a page costs."""

from __future__ import annotations

import pytest
from _server_support import eeg, signal_block, sqlite_service


@pytest.fixture
def svc(tmp_path, model_path):
    service = sqlite_service(tmp_path, model_path, lockout_threshold=3, lockout_seconds=60)
    now = [1_800_000_000.0]
    service.clock = lambda: now[0]
    service.now = now
    yield service
    service.store.close()


def test_a_lockout_that_ran_out_leaves_no_consecutive_failures(svc):
    """Once a lockout has run out the user starts a new streak (the next rejection is the
    first of it, not the fourth), so GetUser and ListUsers say 0 consecutive failures, not
    the count that locked the user: they said 3 (locked: false) until the next attempt."""
    svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))])
    t = svc.now[0]
    for i in range(3):  # three rejections: locked for 60 s
        svc.store.register_failure("a", 3, 60, now=t + i)
    u = svc.get_user("a")
    assert (u.locked, u.consecutive_failures) == (True, 3)
    svc.now[0] = t + 2 + 60.5  # the lockout is over
    u = svc.get_user("a")
    assert (u.locked, u.locked_until, u.consecutive_failures) == (False, 0.0, 0)
    assert [(u.user_id, u.consecutive_failures) for u in svc.list_users()[0]] == [("a", 0)]
    # and the store agrees: the next rejection is the first of a new streak
    assert svc.store.register_failure("a", 3, 60, now=svc.now[0])[0] == 1
    u = svc.get_user("a")
    assert (u.locked, u.consecutive_failures) == (False, 1)
