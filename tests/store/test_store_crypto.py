"""Encryption at rest: key loading, wrong keys, swapped rows, rotation, real deletion."""

from __future__ import annotations

import base64
import os

import pytest

from nacf_core.errors import FailedPrecondition, InvalidArgument, TemplateUnreadable
from nacf_core.store import create_key_file, load_key, open_store
from nacf_core.store.crypto import KEY_ENV, KEY_FILE_ENV, Cipher


def test_load_key_sources(tmp_path, monkeypatch):
    raw = os.urandom(32)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    with pytest.raises(FailedPrecondition, match=KEY_ENV):
        load_key(None)
    assert load_key(raw) == raw
    assert load_key(base64.b64encode(raw).decode()) == raw
    assert load_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    monkeypatch.setenv(KEY_ENV, base64.b64encode(raw).decode())
    assert load_key(None) == raw
    monkeypatch.delenv(KEY_ENV)
    path = tmp_path / "k"
    made = create_key_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        create_key_file(path)
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    assert load_key(None) == made
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(FailedPrecondition, match="missing"):
        load_key(None)
    with pytest.raises(InvalidArgument, match="32 bytes"):
        load_key("dG9vIHNob3J0")
    with pytest.raises(InvalidArgument, match="32 bytes"):
        load_key(b"short")
    with pytest.raises(TypeError, match="key"):
        load_key(12)


def test_ciphertext_on_disk_is_not_the_template(tmp_path, key):
    path = tmp_path / "s.db"
    marker = b"THIS-IS-A-TEMPLATE-" * 8
    s = open_store(f"sqlite:///{path}", key=key)
    s.put_template("alice", marker, "m")
    s.register_device("alice", "hs", "DEVICE-SECRET-MARKER-123")
    s.close()
    data = path.read_bytes() + (path.with_name("s.db-wal").read_bytes()
                                if path.with_name("s.db-wal").exists() else b"")
    assert marker[:19] not in data and b"DEVICE-SECRET-MARKER" not in data


def test_env_key_and_wrong_key(store_url, key, monkeypatch):
    monkeypatch.setenv(KEY_ENV, base64.b64encode(key).decode())
    s = open_store(store_url)  # key from the environment
    s.put_template("alice", b"template", "m")
    s.close()
    other = os.urandom(32)
    with pytest.raises(FailedPrecondition, match="Wrong template key.*key id"):
        open_store(store_url, key=other)
    s = open_store(store_url, key=key)
    assert s.get_template("alice").blob == b"template"
    s.close()


def test_swapped_or_tampered_rows_fail(store):
    store.put_template("alice", b"alice-template", "m")
    store.put_template("mallory", b"mallory-template", "m")
    store.put_template("alice", b"alice-template-2", "m")  # alice at v2, mallory at v1
    ct = store._run(lambda tx: tx.one(
        "SELECT ciphertext FROM templates WHERE user_id = ?", ("mallory",)))[0]
    # an attacker with database access copies mallory's template into alice's row
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET ciphertext = ?, version = 1 WHERE user_id = ?", (ct, "alice")))
    with pytest.raises(FailedPrecondition, match="alice.*does not belong"):
        store.get_template("alice")
    # flip one bit of mallory's ciphertext
    bad = bytearray(ct)
    bad[20] ^= 1
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET ciphertext = ? WHERE user_id = ?", (bytes(bad), "mallory")))
    with pytest.raises(FailedPrecondition, match="altered"):
        store.get_template("mallory")


def test_read_gallery_returns_the_others_around_a_row_that_does_not_decrypt(store):
    """One template that does not decrypt (altered, or under a key that is not the
    store's) failed the whole read_gallery, so 1:N failed for everyone; it maps to a
    TemplateUnreadable naming the user and saying to re-enroll, and the others are read
    (get_template says the same of it)."""
    for u in ("a", "b", "c"):
        store.put_template(u, f"t-{u}".encode(), "m")
    ct = bytearray(store._run(lambda tx: tx.one(
        "SELECT ciphertext FROM templates WHERE user_id = ?", ("a",)))[0])
    ct[20] ^= 1
    kid, ct_b = Cipher(os.urandom(32)).encrypt(b"t-b", Cipher.aad("template", "b", 1, "m"))
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET ciphertext = ? WHERE user_id = ?", (bytes(ct), "a")))
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET key_id = ?, ciphertext = ? WHERE user_id = ?",
        (kid, ct_b, "b")))
    listing, fresh = store.read_gallery("m")
    assert [u for u, _ in listing] == ["a", "b", "c"]
    assert fresh["c"].blob == b"t-c"
    for u, why in (("a", "altered"), ("b", f"key id {kid}, not with the store's key")):
        assert isinstance(fresh[u], TemplateUnreadable) and fresh[u].user_id == u
        assert f"user {u!r}" in str(fresh[u]) and why in str(fresh[u])
        assert "re-enroll the user (Enroll with update=true)" in str(fresh[u])
        with pytest.raises(TemplateUnreadable, match=why):
            store.get_template(u)
    store.put_template("a", b"t-a2", "m")  # re-enrolled
    assert store.read_gallery("m", dict(listing))[1]["a"].blob == b"t-a2"


def test_a_replica_with_the_old_key_still_fails_every_template_read(store_url, key):
    """Not a damaged row: after another process rotated the key, every row is under a key
    this one lacks; each read still fails with the store's FailedPrecondition naming the
    key ids (no row is passed off as unreadable, to be left out or re-enrolled)."""
    a = open_store(store_url, key=key)
    b = open_store(store_url, key=key)
    try:
        a.put_template("alice", b"ta", "m")
        a.rotate_key(os.urandom(32))
        for call in (lambda: b.read_gallery("m"), lambda: b.get_template("alice")):
            with pytest.raises(FailedPrecondition, match="configure the key") as ei:
                call()
            assert not isinstance(ei.value, TemplateUnreadable)
    finally:
        a.close()
        b.close()


def test_rotate_key(store, store_url, key):
    for i in range(5):
        store.put_template(f"u{i}", f"template-{i}".encode(), "m")
    store.register_device("u1", "hs-1", "secret-secret-secret")
    store.add_fingerprints("u2", [b"fp-a", b"fp-b"], "enroll")
    old_id = store.key_id
    new = os.urandom(32)
    out = store.rotate_key(new)
    assert out.rows == 5 + 1 + 2 and out.complete
    assert store.key_id == Cipher(new).key_id != old_id
    ids = store._run(lambda tx: tx.query(
        "SELECT key_id FROM templates UNION ALL SELECT key_id FROM devices "
        "UNION ALL SELECT key_id FROM pad_fingerprints"))
    assert {r[0] for r in ids} == {store.key_id}
    store.close()
    with pytest.raises(FailedPrecondition, match="Wrong template key"):
        open_store(store_url, key=key)  # the old key no longer opens it
    s = open_store(store_url, key=new)
    try:
        assert [t.blob for t in s.iter_templates()] == [
            f"template-{i}".encode() for i in range(5)]
        assert s.get_device("hs-1").secret == "secret-secret-secret"
        assert s.get_fingerprints("u2") == [("enroll", b"fp-a"), ("enroll", b"fp-b")]
    finally:
        s.close()


def _rows(store, sql):
    return store._run(lambda tx: [tuple(bytes(v) if isinstance(v, memoryview) else v
                                        for v in r) for r in tx.query(sql)])


def test_rotate_key_rotates_every_readable_row_and_names_the_damaged_ones(store, store_url,
                                                                          key):
    """One damaged template (a disk error, a row edited by hand) stopped the rotation at
    that row: nothing was rotated, and the store could not leave the old key (a leaked
    key could not be retired) until the row was found and fixed by hand. Every readable
    row is rotated now; the damaged ones (templates, device secrets, PAD fingerprints)
    are left as they were and named in the result."""
    for u in ("a", "b", "c"):
        store.put_template(u, f"t{u}".encode(), "m")
    store.register_device("a", "hs-a", "secret-a-secret-a")
    store.register_device("c", "hs-c", "secret-c-secret-c")
    store.add_fingerprints("a", [b"fp-a"], "enroll")
    store.add_fingerprints("c", [b"fp-c1", b"fp-c2"], "probe")
    # damage b's template, c's device secret and one of c's fingerprints
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET ciphertext = ? WHERE user_id = ?", (b"\0" * 40, "b")))
    store._run(lambda tx: tx.execute(
        "UPDATE devices SET secret_ct = ? WHERE device_id = ?", (b"\1" * 40, "hs-c")))
    store._run(lambda tx: tx.execute(
        "UPDATE pad_fingerprints SET ciphertext = ? WHERE id = (SELECT MIN(id) FROM "
        "pad_fingerprints WHERE user_id = 'c')", (b"\2" * 40,)))
    damaged = ("SELECT user_id, key_id, ciphertext FROM templates WHERE user_id = 'b' "
               "UNION ALL SELECT device_id, key_id, secret_ct FROM devices "
               "WHERE device_id = 'hs-c' UNION ALL SELECT user_id, key_id, ciphertext "
               "FROM pad_fingerprints WHERE user_id = 'c' AND kind = 'probe' "
               "AND id = (SELECT MIN(id) FROM pad_fingerprints WHERE user_id = 'c')")
    before = _rows(store, damaged)
    new = os.urandom(32)
    out = store.rotate_key(new)
    assert out.rows == 2 + 1 + 2  # a and c; hs-a; fp-a and fp-c2
    assert out.unreadable_templates == ["b"]
    assert out.unreadable_devices == ["hs-c"]
    assert out.unreadable_fingerprints == ["c"]
    assert not out.complete
    assert store.key_id == Cipher(new).key_id
    assert _rows(store, damaged) == before  # left exactly as they were
    store.close()
    with open_store(store_url, key=new) as s:
        assert s.get_template("a").blob == b"ta" and s.get_template("c").blob == b"tc"
        assert s.get_device("hs-a").secret == "secret-a-secret-a"
        assert s.get_fingerprints("a") == [("enroll", b"fp-a")]
        with pytest.raises(TemplateUnreadable, match="re-enroll"):
            s.get_template("b")
        # re-enrolling b and re-registering hs-c replace them under the new key
        s.put_template("b", b"tb-2", "m")
        s.register_device("c", "hs-c", "secret-c-new-new")
        # a second rotation skips the row still damaged (now under neither key)
        newer = os.urandom(32)
        out = s.rotate_key(newer)
        assert (out.unreadable_templates, out.unreadable_devices,
                out.unreadable_fingerprints) == ([], [], ["c"])
        assert out.rows == 3 + 2 + 2
    with open_store(store_url, key=newer) as s:
        assert s.get_template("b").blob == b"tb-2"
        assert s.get_device("hs-c").secret == "secret-c-new-new"


def test_rotate_key_refuses_a_store_another_process_rotated(store_url, key):
    """A rotation from a store object whose key is no longer the store's (another process
    rotated since it opened) reads no row; it must not put its key in the store's key
    check over rows it never re-encrypted (the store would then open with a key that
    reads nothing)."""
    a = open_store(store_url, key=key)
    b = open_store(store_url, key=key)
    try:
        a.put_template("alice", b"ta", "m")
        k2 = os.urandom(32)
        a.rotate_key(k2)
        with pytest.raises(FailedPrecondition, match="rotated"):
            b.rotate_key(os.urandom(32))
    finally:
        a.close()
        b.close()
    with open_store(store_url, key=k2) as s:
        assert s.get_template("alice").blob == b"ta"


def test_delete_user_leaves_no_ciphertext_in_sqlite_file(tmp_path, key):
    path = tmp_path / "d.db"
    s = open_store(f"sqlite:///{path}", key=key)
    s.put_template("alice", os.urandom(64), "m")
    ct = s._run(lambda tx: tx.one("SELECT ciphertext FROM templates"))[0]
    s.put_template("bob", b"b", "m")
    s._after_delete()  # checkpoint so the row is in the main file
    assert bytes(ct[:32]) in path.read_bytes()
    s.delete_user("alice")
    disk = path.read_bytes()
    wal = path.with_name("d.db-wal")
    disk += wal.read_bytes() if wal.exists() else b""
    assert bytes(ct[:32]) not in disk  # zeroed (secure_delete) and checkpointed
    s.close()


def test_a_refused_open_leaves_nothing_open(store_url, key):
    """A store refused while opening (here: the wrong key) kept its connections, its
    PostgreSQL pool and SQLite's writer-lock file open: a caller that tries again (a
    key being fixed, a supervisor) leaked a descriptor or a server connection per try."""
    open_store(store_url, key=key).close()
    other = bytes(b ^ 0xFF for b in key)

    def n_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with pytest.raises(FailedPrecondition):  # the first may open lazily-kept things
        open_store(store_url, key=other)
    before = n_fds()
    for _ in range(10):
        with pytest.raises(FailedPrecondition, match="Wrong template key"):
            open_store(store_url, key=other)
    assert n_fds() <= before


def test_rotating_to_the_key_in_use_is_refused(store, key, tmp_path, capsys):
    """Rotating to the store's own key (the same file given as --key-file and
    --new-key-file) re-encrypted every row under it and reported success, 'rows_reencrypted'
    and all: an operator retiring a leaked key believed it retired."""
    from nacf_core.cli import main
    from nacf_core.errors import InvalidArgument

    store.put_template("alice", b"ta", "m")
    before = store._run(lambda tx: tx.query("SELECT ciphertext FROM templates"))
    with pytest.raises(InvalidArgument, match="already"):
        store.rotate_key(key)
    assert store._run(lambda tx: tx.query("SELECT ciphertext FROM templates")) == before
    assert store.key_id == Cipher(key).key_id
    kf = tmp_path / "k"
    kf.write_text(base64.b64encode(key).decode())
    if store.backend == "sqlite":
        url = f"sqlite:///{store.path}"
        assert main(["store", "rotate-key", "--store-url", url, "--key-file", str(kf),
                     "--new-key-file", str(kf)]) == 1
        out, err = capsys.readouterr()
        assert out == "" and "already" in err


def test_a_device_or_fingerprint_left_by_a_rotation_is_reported_damaged_not_a_wrong_key(
        store, store_url, key):
    """A damaged device secret or PAD fingerprint that a rotation left under the old key
    was reported, once the server ran the new key, as 'configure the key this store was
    written with (or rotate_key() from it)': the store's key taken for wrong, when it is
    right and one row is damaged (templates already said so)."""
    store.put_template("c", b"tc", "m")
    store.register_device("c", "hs-c", "secret-c-secret-c")
    store.add_fingerprints("c", [b"fp"], "probe")
    store._run(lambda tx: tx.execute("UPDATE devices SET secret_ct = ?", (b"\1" * 40,)))
    store._run(lambda tx: tx.execute("UPDATE pad_fingerprints SET ciphertext = ?",
                                     (b"\2" * 40,)))
    new = os.urandom(32)
    store.rotate_key(new)
    store.close()
    with open_store(store_url, key=new) as s:
        for call in (lambda: s.get_device("hs-c"), lambda: s.get_fingerprints("c"),
                     lambda: s.get_auth_state("c", device_id="hs-c")):
            with pytest.raises(FailedPrecondition, match="not with the store's key") as ei:
                call()
            assert "configure the key" not in str(ei.value)
        # a store object whose key is not the store's any more still hears that
        s.register_device("c", "hs-d", "secret-d-secret-d")
        with open_store(store_url, key=new) as stale:
            s.rotate_key(os.urandom(32))
            with pytest.raises(FailedPrecondition, match="configure the key"):
                stale.get_device("hs-d")
