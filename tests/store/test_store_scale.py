"""The store at production sizes: maintenance works in bounded transactions, and the
queries of hot and periodic paths find their rows through an index (both backends)."""

from __future__ import annotations

T0 = 1_790_000_000.0


def _spy_transactions(store, monkeypatch) -> list[int]:
    """Rows each write transaction of ``store`` deleted or updated, one entry per
    transaction, from now on."""
    per_tx: list[int] = []
    run = store._run

    def spying_run(fn, *, write=True):
        changed = []

        def counted(tx):
            execute, query = tx.execute, tx.query

            def ex(sql, params=()):
                n = execute(sql, params)
                if sql.lstrip().startswith(("DELETE", "UPDATE")):
                    changed.append(n)
                return n

            def q(sql, params=()):
                rows = query(sql, params)
                if sql.lstrip().startswith("UPDATE"):
                    changed.append(len(rows))
                return rows

            tx.execute, tx.query = ex, q
            return fn(tx)

        out = run(counted, write=write)
        if write:
            per_tx.append(sum(changed))
        return out

    monkeypatch.setattr(store, "_run", spying_run)
    return per_tx


def test_purges_delete_a_backlog_in_transactions_of_at_most_purge_batch_rows(
        store, monkeypatch):
    """A backlog of audit rows and ended sessions (the first purge after an upgrade, or
    after the retention was shortened) was deleted by one statement in one transaction:
    2.3 M audit rows held SQLite's write lock, and every authentication, for 13 s, and
    on PostgreSQL a statement past query_timeout is cut and never finishes. Each
    transaction now deletes at most ``purge_batch`` rows; the counts stay exact."""
    store.put_template("alice", b"a", "m-1", now=T0)
    for i in range(35):
        store.record_attempt("alice", True, 0.9, "ok", "p", 0.01, "Authenticate", now=T0 + i)
    store.record_attempt("alice", True, 0.9, "ok", "p", 0.01, "Authenticate", now=T0 + 100)
    for i in range(23):
        store.end_session(store.create_session("alice", 500.0, now=T0).token, now=T0 + i)
    kept = store.create_session("alice", 500.0, now=T0)
    store.end_session(kept.token, now=T0 + 100)
    store.purge_batch = 10
    per_tx = _spy_transactions(store, monkeypatch)
    assert store.purge_attempts(T0 + 50) == 35
    assert per_tx and max(per_tx) <= 10 and sum(per_tx) == 35
    per_tx.clear()
    assert store.purge_sessions(T0 + 50) == 23
    assert per_tx and max(per_tx) <= 10 and sum(per_tx) == 23
    assert len(store.recent_attempts()) == 1
    assert store.get_session(kept.token).ended_at == T0 + 100
    assert store.purge_attempts(T0 + 50) == 0 and store.purge_sessions(T0 + 50) == 0


def test_session_expiry_ends_a_backlog_in_transactions_of_at_most_purge_batch_rows(
        store, monkeypatch):
    """Sessions that expired while no replica ran (an outage, a long upgrade) were all
    ended by one UPDATE in one transaction; now by at most ``purge_batch`` each, and
    every one is returned (for nacfauth_session_duration_seconds) exactly once."""
    store.put_template("alice", b"a", "m-1", now=T0)
    expired = {store.create_session("alice", 10.0 + i, now=T0).session_id for i in range(27)}
    active = store.create_session("alice", 1e6, now=T0)
    store.purge_batch = 10
    per_tx = _spy_transactions(store, monkeypatch)
    ended = store.expire_sessions(now=T0 + 100)
    assert {s.session_id for s in ended} == expired and len(ended) == 27
    assert all(s.end_reason == "expired" and s.ended_at == s.expires_at for s in ended)
    assert per_tx and max(per_tx) <= 10 and sum(per_tx) == 27
    assert store.get_session(active.token).is_active(T0 + 100)
    assert store.expire_sessions(now=T0 + 100) == []


def _statements(store, monkeypatch, call) -> list[tuple[str, tuple]]:
    """The statements ``call()`` runs on ``store``, with their parameters."""
    seen: list[tuple[str, tuple]] = []
    run = store._run

    def spying_run(fn, *, write=True):
        def recorded(tx):
            query = tx.query

            def q(sql, params=()):
                seen.append((sql, tuple(params)))
                return query(sql, params)

            tx.query = q  # Tx.one and Tx.execute-free reads go through query
            return fn(tx)

        return run(recorded, write=write)

    monkeypatch.setattr(store, "_run", spying_run)
    try:
        call()
    finally:
        monkeypatch.setattr(store, "_run", run)
    return seen


def _plan(store, sql: str, params: tuple) -> str:
    """The query plan of ``sql``, one line per step. On PostgreSQL with sequential
    scans priced out (``enable_seqscan`` off): on a test's few rows the planner would
    rightly scan, and a scan left in the plan then means no index can serve it."""
    def fn(tx):
        if store.backend == "sqlite":
            return [r[3] for r in tx.query("EXPLAIN QUERY PLAN " + sql, params)]
        tx.execute("SET LOCAL enable_seqscan = off")
        return [r[0] for r in tx.query("EXPLAIN " + sql, params)]

    return "\n".join(store._run(fn, write=False))


def _full_scans(plan: str) -> list[str]:
    return [line.strip() for line in plan.splitlines()
            if line.lstrip(" ->").startswith(("SCAN ", "Seq Scan"))
            and "CONSTANT ROW" not in line]


def test_identify_reads_the_locked_users_through_an_index(store, monkeypatch):
    """Identify asks for the users locked now on every call; ``lockouts`` keeps a row
    for every user who ever failed once (100 000 on a large store), and the query
    scanned all of them (1.6 ms SQLite, 2.2 ms PostgreSQL with 50 000 rows). Migration
    3 indexes ``locked_until``."""
    for u in ("alice", "bob"):
        store.put_template(u, b"x", "m-1", now=T0)
    store.register_failure("alice", 1, 60.0, now=T0)
    store.register_failure("bob", 5, 60.0, now=T0)
    seen = _statements(store, monkeypatch, lambda: store.locked_user_ids(now=T0 + 1))
    assert [s for s, _ in seen if "lockouts" in s]
    for sql, params in seen:
        plan = _plan(store, sql, params)
        assert not _full_scans(plan), plan
    assert store.locked_user_ids(now=T0 + 1) == {"alice"}


def test_stats_reads_todays_audit_rows_once(store, monkeypatch):
    """``stats()`` (GetStats, and nacfauth_daily_active_users every 15 s) read today's
    audit rows three times, one subquery per figure: 0.30 s on SQLite and 0.41 s on
    PostgreSQL with 300 000 attempts today. One pass gives the three figures (0.19 s,
    0.23-0.29 s)."""
    store.put_template("alice", b"x", "m-1", now=T0)
    store.record_attempt("alice", True, 0.9, "ok", "p", 0.01, "Authenticate", now=T0)
    seen = _statements(store, monkeypatch, lambda: store.stats(now=T0))
    reads = []
    for sql, params in seen:
        plan = _plan(store, sql, params)
        reads += [line for line in plan.splitlines() if " auth_attempts" in line
                  and any(w in line for w in ("SEARCH", "SCAN", "Scan"))
                  and "Bitmap Index Scan" not in line]
    assert len(reads) == 1, reads
    st = store.stats(now=T0)
    assert (st.active_users_today, st.attempts_today, st.success_rate_today) == (1, 1, 100.0)


def test_a_users_open_sessions_are_found_through_the_user(store, monkeypatch):
    """EndUserSessions (also an Enroll update, a device rotation) and DeleteUser read a
    user's open sessions inside their write transaction. SQLite took the index of open
    sessions (``ended_at``, ``expires_at``) over the user's: with 50 000 sessions not
    ended it read them all, 47 ms with the write lock held, against 1.1 ms. Migration 3
    gives ``sessions_user`` the ``ended_at`` column too."""
    for u in ("alice", "bob"):
        store.put_template(u, b"x", "m-1", now=T0)
        store.create_session(u, 60.0, now=T0)
    for call in (lambda: store.end_user_sessions("alice", "admin", now=T0 + 1),
                 lambda: store.delete_user("bob", now=T0 + 1)):
        seen = _statements(store, monkeypatch, call)
        reads = [(s, p) for s, p in seen if "FROM sessions" in s or "UPDATE sessions" in s]
        assert reads, seen
        for sql, params in reads:
            plan = _plan(store, sql, params)
            assert "sessions_user" in plan and "sessions_active" not in plan, (sql, plan)


def test_key_rotation_holds_a_bounded_number_of_rows_in_memory(store, monkeypatch):
    """rotate_key fetched every template, device and PAD fingerprint of the store at once
    (one fetchall per table) before re-encrypting them: with PAD's history of 64 probes of
    a few KiB per user, a store of 10 000 users needed gigabytes to rotate and a smaller
    machine could never rotate it (killed for memory, rolled back). Each table is now read
    in chunks of rotate_chunk rows, within the one transaction; every row is rotated."""
    import os

    for i in range(7):
        store.put_template(f"u{i}", f"t{i}".encode(), "m")
        store.register_device(f"u{i}", f"hs{i}", f"secret-{i}-0123456789")
        store.add_fingerprints(f"u{i}", [b"fp-%d-%d" % (i, j) for j in range(3)], "probe")
    store.rotate_chunk = 4
    biggest = []
    run = store._run

    def spying_run(fn, *, write=True):
        def spied(tx):
            query = tx.query

            def q(sql, params=()):
                rows = query(sql, params)
                biggest.append(len(rows))
                return rows

            tx.query = q
            return fn(tx)

        return run(spied, write=write)

    monkeypatch.setattr(store, "_run", spying_run)
    out = store.rotate_key(os.urandom(32))
    monkeypatch.undo()
    assert out.rows == 7 + 7 + 21 and out.complete
    assert max(biggest) <= 4
    assert [t.blob for t in store.iter_templates()] == [f"t{i}".encode() for i in range(7)]
    assert store.get_fingerprints("u6") == [("probe", b"fp-6-%d" % j) for j in range(3)]
    assert store.get_device("hs3").secret == "secret-3-0123456789"


def test_the_windows_of_purged_sessions_go_in_transactions_of_at_most_purge_batch_rows(
        store, monkeypatch):
    """The retention purge dropped the stream windows of every purged session (and of
    sessions an older nacf purged) with one anti-join over the whole table in one
    transaction: on SQLite the write lock, and every authentication, waited for the
    whole scan. They now go in transactions that each look at and delete at most
    ``purge_batch`` windows; every window of a purged session goes, none of a session
    kept (open, or ended after the cutoff)."""
    store.put_template("alice", b"a", "m-1", now=T0)
    fp = b"FPv1" + bytes(60)
    gone, kept = [], []
    for i in range(9):  # windows of purged, kept and open sessions interleaved by id
        purged = store.create_session("alice", 500.0, now=T0)
        late = store.create_session("alice", 500.0, now=T0)
        live = store.create_session("alice", 500.0, now=T0)
        for _ in range(3):
            for s, into in ((purged, gone), (late, kept), (live, kept)):
                into.append(store.add_session_window(s.session_id, "alice", fp, keep=64,
                                                     now=T0 + 1))
        store.end_session(purged.token, now=T0 + 2)
        store.end_session(late.token, now=T0 + 100)
    # a session an older nacf purged without its windows
    orphan = store.create_session("alice", 500.0, now=T0)
    gone.append(store.add_session_window(orphan.session_id, "alice", fp, keep=64,
                                         now=T0 + 1))
    store._run(lambda tx: tx.execute("DELETE FROM sessions WHERE token_hash = ?",
                                     (orphan.session_id,)))
    store.purge_batch = 10
    per_tx = _spy_transactions(store, monkeypatch)
    assert store.purge_sessions(T0 + 50) == 9
    assert per_tx and max(per_tx) <= 10, per_tx
    assert sum(per_tx) == 9 + len(gone)
    left = store._run(lambda tx: tx.query("SELECT id FROM session_windows ORDER BY id"),
                      write=False)
    assert [r[0] for r in left] == sorted(kept)
    per_tx.clear()
    assert store.purge_sessions(T0 + 50) == 0 and sum(per_tx) == 0
