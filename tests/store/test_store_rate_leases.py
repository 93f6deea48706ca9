"""Token leases (nacf_core.ratelimit) over the store's shared buckets, both backends."""

from __future__ import annotations

import threading

import pytest

from nacf_core.config import Config
from nacf_core.errors import OutcomeUnknown
from nacf_core.ratelimit import TokenLeases, lease_size
from nacf_core.store import open_store

T0 = 1_790_000_000.0


class _Counting:
    """The store's take_tokens, counting the transactions."""

    def __init__(self, store):
        self.store, self.calls = store, 0
        self._lock = threading.Lock()

    def __call__(self, *args):
        with self._lock:
            self.calls += 1
        return self.store.take_tokens(*args)


def test_lease_size():
    assert lease_size(40.0, 32) == 4     # a tenth of the burst
    assert lease_size(1e6, 32) == 32     # capped by max_lease
    assert lease_size(19.9, 32) == 1     # a small bucket: one at a time
    assert lease_size(1e6, 1) == 1
    d = Config()
    assert lease_size(d.rate_limit_burst, d.rate_limit_lease) == 4
    with pytest.raises(ValueError, match="max_lease"):
        TokenLeases(lambda *a: 1, 1.0, 1.0, max_lease=0)
    with pytest.raises(ValueError, match="rate_limit_lease"):
        Config(rate_limit_lease=0)


def test_leases_admit_exactly_the_bucket_with_fewer_transactions(store):
    take = _Counting(store)
    rl = TokenLeases(take, 0.0, 100.0, max_lease=10)  # no refill: the bucket is all there is
    got = [rl.take("app", T0) for _ in range(130)]
    assert got == [True] * 100 + [False] * 30
    assert take.calls == 10 + 30  # one per lease, then one per refused request
    assert rl.take("other-app", T0) is True  # per client


def test_replicas_share_one_bucket(store_url, key):
    """Two processes' leases (two store connections) together admit the bucket, no more."""
    a, b = open_store(store_url, key=key), open_store(store_url, key=key)
    try:
        ra = TokenLeases(a.take_tokens, 0.0, 200.0, max_lease=8)
        rb = TokenLeases(b.take_tokens, 0.0, 200.0, max_lease=8)
        admitted = []
        lock = threading.Lock()

        def work(rl):
            n = 0
            for _ in range(150):
                n += rl.take("app", T0)
            with lock:
                admitted.append(n)

        ts = [threading.Thread(target=work, args=(rl,)) for rl in (ra, rb, ra, rb)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sum(admitted) == 200  # the whole bucket, nothing more, across both
        assert a.take_token("app", 0.0, 200.0, now=T0) is False
    finally:
        a.close()
        b.close()


def test_leftovers_go_back_when_a_lease_expires(store):
    take = _Counting(store)
    rl = TokenLeases(take, 0.0, 50.0, max_lease=5, hold_s=0.5)
    assert rl.take("app", T0) is True  # leases 5, hands out 1
    assert rl.held("app") == 4
    assert rl.take("app", T0 + 0.4) is True and take.calls == 1  # from the lease
    # the lease expired: its 3 leftovers go back with the next lease's transaction
    assert rl.take("app", T0 + 0.6) is True and take.calls == 2
    assert rl.held("app") == 4
    # the bucket: 50 - 5 + 3 - 5 = 43 left in it, 4 held here
    assert store.take_tokens("app", 0.0, 50.0, 100, now=T0 + 0.6) == 43


def test_a_lease_ends_when_the_wall_clock_steps_back(store):
    """A lease taken at a time the clock has stepped back from (an NTP correction, a VM
    restored from a snapshot) is over: its leftovers go back to the bucket. It was handed
    out until the clock caught up with its end (an hour here), its tokens spent that long
    after they were taken, on top of what the bucket refilled meanwhile."""
    take = _Counting(store)
    rl = TokenLeases(take, 0.0, 50.0, max_lease=5, hold_s=0.5)
    assert rl.take("app", T0) is True and rl.held("app") == 4
    assert rl.take("app", T0 - 3600) is True and take.calls == 2  # a new lease
    assert rl.held("app") == 4
    # the bucket: 50 - 5 + 4 - 5 = 44 left in it, 4 held here
    assert store.take_tokens("app", 0.0, 50.0, 100, now=T0 - 3600) == 44


def test_a_small_bucket_is_exact(store):
    """Lease size 1 (burst < 20): the same answers as taking from the store each time."""
    rl = TokenLeases(store.take_tokens, 1.0, 3.0)
    assert rl.size == 1
    assert [rl.take("a", T0) for _ in range(5)] == [True, True, True, False, False]
    assert rl.take("a", T0 + 1.0) is True and rl.take("a", T0 + 1.5) is False
    assert rl.held("a") == 0


def test_a_store_error_keeps_the_leftovers():
    calls = []

    def take(client, rate, burst, want, back, now):
        calls.append(back)
        if len(calls) == 2:
            raise OSError("store down")
        return want

    rl = TokenLeases(take, 100.0, 1000.0, max_lease=4)
    assert rl.take("app", T0) is True  # 3 held
    with pytest.raises(OSError):
        rl.take("app", T0 + 1)  # expired: tries to give 3 back, the store fails
    assert rl.held("app") == 3
    assert rl.take("app", T0 + 2) is True and calls == [0.0, 3.0, 3.0]


def test_leftovers_whose_give_back_may_have_been_applied_are_not_given_back_again():
    """A lost COMMIT answer (``OutcomeUnknown``): the leftovers may be in the bucket
    already, so the next lease gives none back."""
    calls = []

    def take(client, rate, burst, want, back, now):
        calls.append(back)
        if len(calls) == 2:
            raise OutcomeUnknown("the connection was lost while committing")
        return want

    rl = TokenLeases(take, 100.0, 1000.0, max_lease=4)
    assert rl.take("app", T0) is True  # 3 held
    with pytest.raises(OutcomeUnknown):
        rl.take("app", T0 + 1)
    assert rl.held("app") == 0
    assert rl.take("app", T0 + 2) is True and calls == [0.0, 3.0, 0.0]


def test_forgotten_clients_are_bounded():
    rl = TokenLeases(lambda c, r, b, want, back, now: want, 100.0, 1000.0, max_lease=4,
                     max_clients=3)
    for i in range(10):
        assert rl.take(f"c{i}", T0)
    assert len(rl._leases) == 3 and rl.held("c9") == 3 and rl.held("c0") == 0


def test_replicas_whose_clocks_differ_admit_no_more_than_the_bucket(store_url, key):
    """Two replicas on hosts whose wall clocks are 5 s apart, taking from one bucket in
    turn. The one behind was taken for a clock that stepped back and moved the bucket's
    time back to its own; the one ahead then refilled those 5 s again at each of its
    takes: 200 requests in 10 s admitted of a bucket of 10 refilled at 1/s (at most 20).
    A time behind set by another host's clock is a replica behind now: no refill, the
    bucket's time kept (schema 9: rate_buckets.clock); this host's own clock stepping
    back still refills from the new clock (test_token_bucket_when_the_wall_clock_steps)."""
    ahead, behind = open_store(store_url, key=key), open_store(store_url, key=key)
    ahead.clock_id, behind.clock_id = "host-a", "host-b"
    try:
        admitted = 0
        for i in range(200):  # over 10 s, one replica then the other
            t = T0 + i * 0.05
            s, now = (ahead, t + 5.0) if i % 2 else (behind, t)
            admitted += s.take_tokens("app", 1.0, 10.0, 1, now=now)
        assert admitted <= 10 + 1.0 * (10 + 5.0)  # the bucket, its refill, the skew
        # and the replica behind alone still refills, once its clock reaches the bucket's
        assert behind.take_tokens("app", 1.0, 10.0, 100, now=T0 + 15.0 + 3.0) == 3
    finally:
        ahead.close()
        behind.close()


def test_a_bucket_set_by_a_clock_hours_ahead_refills_again(store_url, key):
    """A replica whose clock ran an hour ahead took the bucket's last tokens and went
    away. A time set by another host's clock is kept while this host's is behind it, so
    the client's bucket did not refill for that hour; beyond clock_skew_max_s (300 s) the
    other clock is taken as wrong and this one's time as a step: it refills again."""
    wrong, right = open_store(store_url, key=key), open_store(store_url, key=key)
    wrong.clock_id, right.clock_id = "host-wrong", "host-right"
    try:
        assert wrong.take_tokens("app", 1.0, 10.0, 10, now=T0 + 3600.0) == 10
        assert right.take_tokens("app", 1.0, 10.0, 10, now=T0) == 0  # (the step itself)
        assert right.take_tokens("app", 1.0, 10.0, 10, now=T0 + 5.0) == 5
        # within the bound, a replica ahead keeps the bucket's time, as above
        assert wrong.take_tokens("app2", 1.0, 10.0, 10, now=T0 + 200.0) == 10
        assert right.take_tokens("app2", 1.0, 10.0, 10, now=T0 + 5.0) == 0
    finally:
        wrong.close()
        right.close()
