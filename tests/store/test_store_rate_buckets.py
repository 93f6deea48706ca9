"""Token buckets are purged once idle long enough to be full again, on both backends: one
row per client id (per client address in open mode) stayed for ever, so the table grew
with every client the server had ever seen."""

from __future__ import annotations

import threading

import pytest

from nacf_core.ratelimit import TokenLeases
from nacf_core.store import open_store

T0 = 1_790_000_000.0


def _buckets(store) -> dict[str, float]:
    return dict(store._run(lambda tx: tx.query("SELECT client_id, tokens FROM rate_buckets"),
                           write=False))


def test_idle_buckets_full_again_are_purged_and_none_in_use(store):
    idle = store.rate_bucket_idle_s
    assert store.take_tokens("emptied", 1.0, 10, 10, now=T0) == 10   # full at T0 + 10
    assert store.take_tokens("half", 1.0, 10, 5, now=T0) == 5        # full at T0 + 5
    assert store.take_tokens("slow", 0.01, 10, 10, now=T0) == 10     # full at T0 + 1000
    assert store.take_tokens("frozen", 0.0, 10, 3, now=T0) == 3      # never refills
    assert store.take_tokens("fresh", 1.0, 10, 10, now=T0 + 20) == 10  # in use
    # the purge's own rate and capacity (the server's configuration) are no part of it:
    # each bucket is judged by the rate and capacity it was last taken with
    assert store.purge_rate_buckets(1000.0, 1.0, now=T0 + 10 + idle - 1) == 1  # "half"
    assert set(_buckets(store)) == {"emptied", "slow", "frozen", "fresh"}
    assert store.purge_rate_buckets(1000.0, 1.0, now=T0 + 10 + idle + 1) == 1  # "emptied"
    assert set(_buckets(store)) == {"slow", "frozen", "fresh"}
    # "fresh" is full 10 s after its take: purged only `idle` seconds after that
    assert store.purge_rate_buckets(1.0, 10, now=T0 + 30 + idle - 1) == 0
    assert store.purge_rate_buckets(1.0, 10, now=T0 + 30 + idle + 1) == 1
    assert store.purge_rate_buckets(1.0, 10, now=T0 + 1000 + idle + 1) == 1  # "slow"
    # a bucket that never refills is never full again: kept, with its 7 tokens
    assert store.purge_rate_buckets(1.0, 10, now=T0 + 10 ** 6) == 0
    assert _buckets(store) == {"frozen": 7.0}
    assert store.take_tokens("frozen", 0.0, 10, 100, now=T0 + 10 ** 6) == 7
    # a purged bucket comes back full, as it was: the same tokens as keeping it
    assert store.take_tokens("emptied", 1.0, 10, 100, now=T0 + 10 ** 6) == 10
    assert store.take_tokens("emptied", 1.0, 10, 100, now=T0 + 10 ** 6) == 0


def test_a_bucket_is_not_purged_while_its_clock_is_ahead_of_the_purge(store):
    """A replica whose clock runs a little ahead took tokens "in the future" of the
    replica that purges: the purge keeps every bucket taken less than
    rate_bucket_idle_s before its own now (whatever the rate), so it never refills one
    in use."""
    assert store.take_tokens("c", 100.0, 10, 10, now=T0 + 5) == 10
    assert store.purge_rate_buckets(100.0, 10, now=T0) == 0
    assert store.purge_rate_buckets(100.0, 10, now=T0 + 5 + store.rate_bucket_idle_s / 2) == 0
    assert store.take_tokens("c", 100.0, 10, 100, now=T0 + 5) == 0


def test_buckets_of_before_schema_5_are_purged_by_the_rate_given(store_url, key, monkeypatch):
    """A bucket written by a nacf of before schema 5 has no rate or capacity of its own:
    the purge judges it by the server's (the arguments)."""
    from nacf_core.store.postgres import PostgresStore
    from nacf_core.store.sqlite import SQLiteStore

    cls = SQLiteStore if store_url.startswith("sqlite") else PostgresStore
    monkeypatch.setattr(cls, "MIGRATIONS", cls.MIGRATIONS[:4])
    with open_store(store_url, key=key) as old:  # an emptied bucket, as such a nacf left it
        old._run(lambda tx: tx.execute("INSERT INTO rate_buckets (client_id, tokens, "
                                       "updated_at) VALUES ('old', 0, ?)", (T0,)))
    monkeypatch.undo()
    with open_store(store_url, key=key) as store:
        assert store.schema_version() == 9
        at = T0 + store.rate_bucket_idle_s + 50
        assert store.purge_rate_buckets(0.1, 10, now=at) == 0  # 100 s to refill by that rate
        assert store.purge_rate_buckets(1.0, 10, now=at) == 1
        assert _buckets(store) == {}


def test_purge_arguments_are_checked(store):
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate_per_s"):
            store.purge_rate_buckets(bad, 10, now=T0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="burst"):
            store.purge_rate_buckets(1.0, bad, now=T0)
    with pytest.raises(ValueError, match="now"):
        store.purge_rate_buckets(1.0, 10, now=float("nan"))


def test_a_backlog_is_purged_in_batches(store, monkeypatch):
    monkeypatch.setattr(store, "purge_batch", 7)
    for i in range(30):
        store.take_tokens(f"c{i:02d}", 1.0, 2, 2, now=T0)
    store.take_tokens("live", 1.0, 2, 2, now=T0 + 10 ** 5)
    writes = []
    run = store._run

    def counted(fn, **k):
        writes.append(k.get("write", True))
        return run(fn, **k)

    monkeypatch.setattr(store, "_run", counted)
    assert store.purge_rate_buckets(1.0, 2, now=T0 + 10 ** 5) == 30
    assert writes.count(True) == 5  # 7 + 7 + 7 + 7 + 2
    monkeypatch.undo()
    assert set(_buckets(store)) == {"live"}


def test_leases_go_on_across_a_purge(store):
    """A process holds a lease's leftovers while the bucket is purged: they go back to
    the bucket recreated full, which stays at its capacity, as the kept one would."""
    rl = TokenLeases(store.take_tokens, 1.0, 50.0, max_lease=5, hold_s=0.5)
    assert rl.take("app", T0) is True and rl.held("app") == 4
    assert store.purge_rate_buckets(1.0, 50.0, now=T0 + 5 + store.rate_bucket_idle_s) == 1
    assert rl.take("app", T0 + 5 + store.rate_bucket_idle_s) is True  # 4 back, 5 taken
    assert rl.held("app") == 4
    assert store.take_tokens("app", 0.0, 50.0, 100,
                             now=T0 + 5 + store.rate_bucket_idle_s) == 45


@pytest.mark.postgres
def test_a_take_racing_a_purge_of_its_bucket_recreates_it(pg_url, key, monkeypatch):
    """On PostgreSQL the take's INSERT ... ON CONFLICT DO NOTHING finds the row without
    locking it: a purge committed before the take's SELECT ... FOR UPDATE left that
    SELECT nothing to read. The take inserts the bucket again (full), as a take after the
    purge would."""
    from nacf_core.store import _sql

    url, _ = pg_url
    a, b = open_store(url, key=key), open_store(url, key=key)
    try:
        assert a.take_tokens("c", 1.0, 10, 10, now=T0) == 10
        real = _sql.Tx.execute
        purged = []

        def execute(self, sql, params=()):
            n = real(self, sql, params)
            if sql.startswith("INSERT INTO rate_buckets") and not purged:
                # another replica's purge, committed between the INSERT and the SELECT
                t = threading.Thread(target=lambda: purged.append(b.purge_rate_buckets(
                    1.0, 10, now=T0 + 100 + b.rate_bucket_idle_s)))
                t.start()
                t.join(10)
            return n

        monkeypatch.setattr(_sql.Tx, "execute", execute)
        assert a.take_tokens("c", 1.0, 10, 3, now=T0 + 100 + a.rate_bucket_idle_s) == 3
        monkeypatch.undo()
        assert purged == [1]
        assert _buckets(a) == {"c": 7.0}
    finally:
        a.close()
        b.close()
