"""Upgrades of a store written by an older nacf (every schema version the code has
migrations from), on both backends: nothing lost or changed, and an upgrade that fails
half-way leaves the store as it was."""

from __future__ import annotations

from unittest import mock

import pytest

from nacf_core.errors import FailedPrecondition, Unavailable
from nacf_core.store import open_store
from nacf_core.store.postgres import PostgresStore
from nacf_core.store.sqlite import SQLiteStore

T0 = 1_790_000_000.0
FP = b"FPv1" + bytes(range(40))
WINDOW = b"FPv1" + bytes(range(40, 80))
CURRENT = 9
#: a schema version of a nacf newer than this one
NEWER = CURRENT + 1


def _cls(store_url):
    return SQLiteStore if store_url.startswith("sqlite") else PostgresStore


def _write_as_of(store, version: int) -> str:
    """The rows a nacf of schema ``version`` writes (only the columns it knows): a
    template, a headset, sessions, audit rows, a lockout, PAD fingerprints, a nonce, a
    rate bucket and (from schema 6) a stream window. Returns the open session's token."""
    store.put_template("alice", b"tmpl-a", "m-1", {"epochs": 5}, now=T0)
    store.put_template("bob", b"tmpl-b", "m-1", now=T0)
    store.register_device("alice", "hs-1", "s" * 16, now=T0)
    live = store.create_session("alice", 600.0, device_id="hs-1", now=T0)
    ended = store.create_session("bob", 600.0, now=T0)
    store.record_attempt("alice", True, 0.9, "ok", "peer-1", 0.25, "Authenticate", now=T0)
    store.record_attempt("bob", False, 0.1, "rejected", "peer-2", 0.5, "Authenticate",
                         now=T0 + 1)
    store.register_failure("bob", 5, 60.0, now=T0 + 1)
    store.add_fingerprints("alice", [FP], now=T0)

    def raw(tx):
        tx.execute("UPDATE sessions SET ended_at = ?, end_reason = 'ended' WHERE "
                   "token_hash = ?", (T0 + 1, ended.session_id))
        nonce_cols = "device_id, nonce, expires_at"
        tx.execute(f"INSERT INTO device_nonces ({nonce_cols}) VALUES ('hs-1', 'n-1', ?)",
                   (T0 + 1e6,))
        tx.execute("INSERT INTO rate_buckets (client_id, tokens, updated_at) "
                   "VALUES ('client-1', 3, ?)", (T0,))
        if version >= 6:
            kid, ct = store._cipher.encrypt(
                WINDOW, store._window_aad(live.session_id, "alice"))
            tx.execute("INSERT INTO session_windows (session_id, user_id, created_at, "
                       "key_id, ciphertext) VALUES (?, 'alice', ?, ?, ?)",
                       (live.session_id, T0 + 1, kid, ct))

    store._run(raw)
    return live.token


@pytest.mark.parametrize("version", range(1, CURRENT))
def test_a_store_of_each_older_schema_is_upgraded_with_every_row_intact(
        store_url, key, monkeypatch, version):
    """A store a nacf of schema 1 to 8 wrote opens at the current schema with each of
    its rows as it was (templates and headset secrets decrypt, sessions, audit rows,
    lockouts, PAD history, nonces and stream windows read as written), and is used as
    any other afterwards."""
    cls = _cls(store_url)
    monkeypatch.setattr(cls, "MIGRATIONS", cls.MIGRATIONS[:version])
    with open_store(store_url, key=key) as old:
        assert old.schema_version() == version
        token = _write_as_of(old, version)
    monkeypatch.undo()
    with open_store(store_url, key=key) as new:
        assert new.schema_version() == CURRENT
        t = new.get_template("alice")
        assert (t.blob, t.model_version, t.meta, t.version) == (b"tmpl-a", "m-1",
                                                                {"epochs": 5}, 1)
        assert new.get_template("bob").blob == b"tmpl-b"
        assert sorted(u.user_id for u in new.list_users().users) == ["alice", "bob"]
        dev = new.get_device("hs-1")
        assert (dev.user_id, dev.secret) == ("alice", "s" * 16)
        s = new.get_session(token)
        assert s.user_id == "alice" and s.device_id == "hs-1" and s.is_active(T0 + 10)
        assert s.last_verified_at is None
        assert new.count_active_sessions(now=T0 + 10) == 1
        got = [(a.user_id, a.success, a.score, a.reason, a.peer, a.method, a.actor)
               for a in new.recent_attempts()]
        assert got == [("bob", False, 0.1, "rejected", "peer-2", "Authenticate", None),
                       ("alice", True, 0.9, "ok", "peer-1", "Authenticate", None)]
        assert new.get_lockout("bob").failures == 1
        assert [fp for _, fp in new.get_fingerprints("alice")] == [FP]
        assert new.use_nonce("hs-1", "n-1", T0 + 1e6, now=T0 + 2) is False  # a replay
        # the bucket as written: 3 tokens, a fourth take within the second is refused
        assert new.take_tokens("client-1", 1e-9, 10, 3, now=T0) == 3
        assert new.take_tokens("client-1", 1e-9, 10, 1, now=T0) == 0
        windows = new.get_session_windows(s.session_id, "alice")
        assert [fp for _, fp in windows] == ([WINDOW] if version >= 6 else [])
        # and the store works as a new one: a window, an actor, a renewal
        assert new.add_session_window(s.session_id, "alice", FP, keep=64,
                                      now=T0 + 3) is not None
        new.record_attempt("alice", True, None, "unlocked", "p", 0.0, "UnlockUser",
                           actor="ops", now=T0 + 4)
        assert new.recent_attempts("alice", limit=1)[0].actor == "ops"
        assert new.renew_session(token, 600.0, now=T0 + 5).last_verified_at == T0 + 5


def _columns(store, table):
    return store._run(lambda tx: tx.columns(table), write=False)


def test_an_upgrade_that_fails_half_way_leaves_the_store_as_it_was(store_url, key,
                                                                 monkeypatch):
    """An upgrade from schema 1 whose sixth migration fails after its first statement
    (a full disk, a lost connection, a statement the database refuses) is rolled back
    whole: the store stays at schema 1 with none of the later tables or columns and
    every row as it was, the open fails with a clear error, and the next open upgrades
    it."""
    cls = _cls(store_url)
    full = list(cls.MIGRATIONS)
    monkeypatch.setattr(cls, "MIGRATIONS", full[:1])
    with open_store(store_url, key=key) as old:
        token = _write_as_of(old, 1)
        sessions_cols = sorted(_columns(old, "sessions"))
    broken = [(v, n, stmts + ["SELECT no_such_column FROM users"] if v == 6 else stmts)
              for v, n, stmts in full]
    monkeypatch.setattr(cls, "MIGRATIONS", broken)
    with pytest.raises(Unavailable, match="no_such_column"):
        open_store(store_url, key=key)
    monkeypatch.setattr(cls, "MIGRATIONS", full[:1])
    with open_store(store_url, key=key) as old:  # the nacf of schema 1 still runs it
        assert old.schema_version() == 1
        assert sorted(_columns(old, "sessions")) == sessions_cols
        exists = old._run(lambda tx: tx.one(
            "SELECT COUNT(*) FROM schema_migrations"), write=False)[0]
        assert exists == 1
        assert old.get_template("alice").blob == b"tmpl-a"
        assert old._run(lambda tx: tx.one("SELECT COUNT(*) FROM sessions"),
                        write=False)[0] == 2
    monkeypatch.undo()
    with open_store(store_url, key=key) as new:
        assert new.schema_version() == CURRENT
        assert new.get_template("alice").blob == b"tmpl-a"
        assert "last_verified_at" in _columns(new, "sessions")
        assert len(new.recent_attempts()) == 2
        assert new.get_session(token).is_active(T0 + 10)


def _dump(store):
    tables = [r[0] for r in store._run(lambda tx: tx.query(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        if store.backend == "sqlite" else
        "SELECT table_name FROM information_schema.tables WHERE table_schema = "
        "current_schema() ORDER BY table_name"), write=False)]
    return {t: (sorted(_columns(store, t)), sorted(map(repr, store._run(
        lambda tx, t=t: tx.query(f"SELECT * FROM {t}"), write=False)))) for t in tables}


def test_a_store_of_a_newer_schema_is_refused_and_left_as_it_was(store_url, key):
    """A store a newer nacf migrated (schema NEWER: a column and a table this code does
    not know) is refused at every open, migrate included, naming both versions, and not
    one row or column of it changes."""
    with open_store(store_url, key=key) as s:
        _write_as_of(s, CURRENT)

        def newer(tx):
            tx.execute("ALTER TABLE users ADD COLUMN future TEXT")
            tx.execute("CREATE TABLE future_things (x TEXT)")
            tx.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                       "VALUES (?, 'a newer nacf', 0)", (NEWER,))
        s._run(newer)
        before = _dump(s)
    for _ in range(2):
        with pytest.raises(FailedPrecondition, match=rf"schema version {NEWER}, .* knows "
                                                     rf"version {CURRENT} at most"):
            open_store(store_url, key=key)
    with pytest.raises(FailedPrecondition, match=f"schema version {NEWER}"):
        open_store(store_url, key=b"\x01" * 32)  # refused before the key is checked
    # read back by a nacf that knows the newer schema (its migration already applied)
    cls = _cls(store_url)
    with mock.patch.object(cls, "MIGRATIONS", cls.MIGRATIONS + [(NEWER, "a newer nacf", [])]):
        with open_store(store_url, key=key) as s:
            assert _dump(s) == before
