"""Key material and ciphertexts that are not what they should be: refused clearly."""

from __future__ import annotations

import os

import pytest

from nacf_core.errors import FailedPrecondition
from nacf_core.store import open_store


@pytest.mark.parametrize("length", [0, 5, 7])
def test_a_truncated_ciphertext_fails_authentication(store, length):
    """A ciphertext shorter than a nonce (a truncated or overwritten row) raised the AEAD
    library's ValueError ("Nonce must be between 8 and 128 bytes"): not the
    FailedPrecondition naming the row that any other damaged ciphertext gets (the service
    answered UNAVAILABLE, "retry later", for a row no retry can read, and a rotation
    stopped without saying which row; it now goes past the row and names it)."""
    store.put_template("alice", b"alice-template", "m")
    store.register_device("alice", "hs-1", "secret-secret-secret")
    short = os.urandom(length)
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET ciphertext = ? WHERE user_id = ?", (short, "alice")))
    store._run(lambda tx: tx.execute(
        "UPDATE devices SET secret_ct = ? WHERE device_id = ?", (short, "hs-1")))
    with pytest.raises(FailedPrecondition, match="alice.*altered"):
        store.get_template("alice")
    with pytest.raises(FailedPrecondition, match="hs-1.*altered"):
        store.get_device("hs-1")
    out = store.rotate_key(os.urandom(32))  # rotates the rest, names the damaged rows
    assert (out.unreadable_templates, out.unreadable_devices) == (["alice"], ["hs-1"])


def test_a_32_character_text_is_not_taken_for_a_raw_key(tmp_path, monkeypatch):
    """Any 32-character text (a password, `openssl rand -hex 16`) in NACF_TEMPLATE_KEY,
    in key= or in a key file was used as the 32 raw key bytes, its ASCII codes: a weak
    key accepted without a word, where base64 of 32 random bytes was asked for."""
    import base64
    from pathlib import Path

    from nacf_core.errors import InvalidArgument
    from nacf_core.store import load_key
    from nacf_core.store.crypto import KEY_ENV, KEY_FILE_ENV

    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    for text in ("correct-horse-battery-staple-123", os.urandom(16).hex()):
        monkeypatch.setenv(KEY_ENV, text)
        with pytest.raises(InvalidArgument, match=r"NACF_TEMPLATE_KEY.*base64"):
            load_key(None)
        with pytest.raises(InvalidArgument, match="base64"):
            load_key(text)
        path = tmp_path / "text.key"
        path.write_text(text)
        with pytest.raises(InvalidArgument, match="text.key"):
            load_key(Path(path))
    # what is a key still is one
    raw = os.urandom(32)
    monkeypatch.setenv(KEY_ENV, base64.b64encode(raw).decode())
    assert load_key(None) == raw
    assert load_key(raw) == raw
    path = tmp_path / "raw.key"
    path.write_bytes(raw)
    assert load_key(Path(path)) == raw
    path.write_bytes(base64.urlsafe_b64encode(raw) + b"\n")
    assert load_key(Path(path)) == raw


def test_delete_user_drops_its_decrypted_fingerprints_from_memory(store):
    """Every authentication reads the PAD history, so the store keeps its decrypted
    fingerprints in memory by row id; deleting the user deleted the rows but left their
    plaintexts (biometric data) in the process until evicted by 32 MB of other users'."""
    store.put_template("alice", b"ta", "m", enroll_fingerprints=[b"alice-enroll-fp"])
    store.put_template("bob", b"tb", "m", enroll_fingerprints=[b"bob-enroll-fp"])
    store.add_fingerprints("alice", [b"alice-probe-fp"], "probe")
    for uid in ("alice", "bob"):
        store.get_fingerprints(uid)  # read, as an authentication does: cached
    held = [e[2] for e in store._fp_plain.values()]
    assert b"alice-probe-fp" in held and b"bob-enroll-fp" in held
    store.delete_user("alice")
    held = [e[2] for e in store._fp_plain.values()]
    assert held == [b"bob-enroll-fp"]
    assert store._fp_size == sum(len(p) + 200 for p in held)
    assert store.get_fingerprints("bob") == [("enroll", b"bob-enroll-fp")]


def test_another_process_s_deletions_reach_this_process_s_plaintexts_and_stamps(
        store_url, key, store):
    """A user deleted, or a probe trimmed from its history, by another process (another
    replica, `nacf store`): this process's cached plaintexts of those rows stay until
    forget_deleted_fingerprints, which drops exactly those; template_stamps gives each
    held user's current stamp (read_gallery's) and leaves a deleted one out."""
    store.pad_history = 2
    store.put_template("alice", b"ta", "m", enroll_fingerprints=[b"alice-enroll-fp"])
    store.put_template("bob", b"tb", "m", enroll_fingerprints=[b"bob-enroll-fp"])
    store.add_fingerprints("bob", [b"bob-probe-1", b"bob-probe-2"], "probe")
    for uid in ("alice", "bob"):
        store.get_fingerprints(uid)
    other = open_store(store_url, key=key)
    try:
        other.pad_history = 2
        other.delete_user("alice")
        other.add_fingerprints("bob", [b"bob-probe-3"], "probe")  # trims bob-probe-1
    finally:
        other.close()
    assert b"alice-enroll-fp" in [e[2] for e in store._fp_plain.values()]
    assert store.forget_deleted_fingerprints() == 2
    held = sorted(e[2] for e in store._fp_plain.values())
    assert held == [b"bob-enroll-fp", b"bob-probe-2"]
    assert store._fp_size == sum(len(p) + 200 for p in held)
    assert store.forget_deleted_fingerprints() == 0
    listing, _ = store.read_gallery("m")
    assert store.template_stamps(["alice", "bob"]) == dict(listing) == {
        "bob": store.get_template("bob").stamp}
    assert store.template_stamps([]) == {}
    store.gallery_chunk = 1  # more ids than a few lookups: one scan, the same answer
    assert store.template_stamps(["alice", "bob", "x", "y", "z"]) == dict(listing)


def _sql_on(store_url: str, statements: list[str]) -> list:
    """Run ``statements`` on the database behind ``store_url`` (its schema on PostgreSQL,
    created first); return the rows of the last one."""
    if store_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(store_url[len("sqlite:///"):], isolation_level=None)
        try:
            rows = [conn.execute(s).fetchall() for s in statements]
        finally:
            conn.close()
        return rows[-1]
    import psycopg

    dsn, schema = store_url.rsplit("schema=", 1)
    with psycopg.connect(dsn.rstrip("?&"), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        cur = None
        for s in statements:
            cur = conn.execute(s)
        return cur.fetchall() if cur.description else []


@pytest.mark.parametrize("columns, version", [
    ("version VARCHAR(255) PRIMARY KEY", "'20240101120000'"),          # Rails, dbmate
    ("version BIGINT PRIMARY KEY, dirty BOOLEAN NOT NULL DEFAULT FALSE", "2"),  # migrate
])
def test_another_applications_schema_migrations_table_is_refused(store_url, key, columns,
                                                                  version):
    """A database (or PostgreSQL schema: the default is public) shared with an application
    whose migration tool keeps its own schema_migrations table: its versions were taken
    for nacf's. A text version crashed the open with a TypeError; version 2 passed for
    "every migration applied", and the open failed on a missing store_meta table
    (UNAVAILABLE); 3 and up were "migrated by a newer nacf". Refused now, saying why."""
    _sql_on(store_url, [f"CREATE TABLE schema_migrations ({columns})",
                        f"INSERT INTO schema_migrations (version) VALUES ({version})"])
    with pytest.raises(FailedPrecondition, match="schema_migrations.*not nacf's"):
        open_store(store_url, key=key)
    # the other application's table as it was, and no table of nacf's beside it
    assert [str(r[0]) for r in _sql_on(store_url, ["SELECT version FROM schema_migrations"])] \
        == [version.strip("'")]
    with pytest.raises(Exception):
        _sql_on(store_url, ["SELECT 1 FROM store_meta"])


def test_an_authentication_racing_delete_user_leaves_no_decrypted_fingerprint(store):
    """An authentication reads the PAD history in one transaction and decrypts (and
    caches) it after; a DeleteUser committing in between dropped the cache before the
    plaintexts went in. The authentication's write then finds the user gone, and the
    plaintexts cached meanwhile are dropped with it."""
    from nacf_core.errors import NotFound

    store.put_template("alice", b"ta", "m", enroll_fingerprints=[b"alice-enroll-fp"])
    store.put_template("bob", b"tb", "m", enroll_fingerprints=[b"bob-enroll-fp"])
    store.get_fingerprints("bob")
    decrypt = store._dec_fingerprints

    def deleted_then_decrypted(user_id, got):
        store.delete_user("alice")  # commits between the read and the decryption
        return decrypt(user_id, got)

    store._dec_fingerprints = deleted_then_decrypted
    state = store.get_auth_state("alice", fingerprints=True)
    del store._dec_fingerprints
    assert state.fingerprints == [("enroll", b"alice-enroll-fp")]
    with pytest.raises(NotFound):
        store.finish_authentication("alice", False, score=0.1, reason="score_below_threshold",
                                    peer="", duration_s=0.1, method="Authenticate")
    held = [e[2] for e in store._fp_plain.values()]
    assert held == [b"bob-enroll-fp"]
    assert store._fp_size == sum(len(p) + 200 for p in held)


def test_a_store_encrypted_with_a_32_character_text_key_opens_with_its_base64(tmp_path):
    """An older nacf took a 32-character text for its ASCII codes; such a store is not
    lost: the refusal says to give the text's base64, and that opens it."""
    import base64

    from nacf_core.errors import InvalidArgument
    from nacf_core.store import open_store

    text = "correct-horse-battery-staple-123"
    url = f"sqlite:///{tmp_path / 'old.db'}"
    s = open_store(url, key=text.encode())  # 32 raw bytes: what the older nacf used
    s.put_template("alice", b"tpl", "m-1")
    s.close()
    with pytest.raises(InvalidArgument, match=r"printf %s TEXT \| base64"):
        open_store(url, key=text)
    s = open_store(url, key=base64.b64encode(text.encode()).decode())
    try:
        assert s.get_template("alice").blob == b"tpl"
    finally:
        s.close()


def test_a_key_with_a_character_outside_base64_is_refused_not_decoded_without_it(
        tmp_path, monkeypatch):
    """base64 decoding dropped characters outside its alphabet: a key mistyped with a
    stray '!', '.', '*' or a space inside decoded to 32 bytes all the same — another key
    than the one meant, with which a new store was encrypted (and the right key then
    refused). Such a text is now refused naming the character; the key's own text, with
    or without its padding, standard or url-safe, still opens."""
    import base64
    from pathlib import Path

    from nacf_core.errors import InvalidArgument
    from nacf_core.store import load_key
    from nacf_core.store.crypto import KEY_FILE_ENV

    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    raw = bytes(range(200, 232))  # its base64 holds '+' and '/', its url-safe '-' and '_'
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    assert "+" in std or "/" in std
    for good in (std, url, std.rstrip("="), url.rstrip("="), f"  {std}\n"):
        assert load_key(good) == raw
    for bad in (std[:10] + "!" + std[10:], std[:20] + "." + std[20:-1],
                std[:5] + " " + std[5:], std[:30] + "*" + std[30:], std[:3] + "~" + std[3:]):
        with pytest.raises(InvalidArgument, match="base64"):
            load_key(bad)
        path = tmp_path / "bad.key"
        path.write_text(bad + "\n")
        with pytest.raises(InvalidArgument, match="bad.key"):
            load_key(Path(path))
