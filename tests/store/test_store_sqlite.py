"""SQLite-only behaviour of the store."""

from __future__ import annotations

import os
import threading
import time

import pytest

from nacf_core.errors import InvalidArgument
from nacf_core.store import open_store

KEY = bytes(range(32))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connections_of_ended_threads_are_closed(tmp_path):
    """One connection per thread; a thread that ends leaves its connection to be closed
    when the next thread connects. (The sidecar's health checks each run in a new
    thread: 50 of them used to leak 110 file descriptors, and under a limit of 160 the
    readiness probe turned 503.)"""
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", KEY)
    try:
        store.ping()

        def ping():
            store.ping()

        fds0 = _fds()  # (other threads of the test process may open some meanwhile)
        for _ in range(50):
            t = threading.Thread(target=ping)
            t.start()
            t.join()
        assert store.open_connections <= 3
        assert _fds() - fds0 < 50  # was +2 per thread: +100
        # a live thread keeps its connection
        go, done = threading.Event(), threading.Event()

        def hold():
            store.ping()
            go.set()
            done.wait(10)
            store.ping()  # its own connection still works

        t = threading.Thread(target=hold)
        t.start()
        go.wait(10)
        for _ in range(5):
            th = threading.Thread(target=ping)
            th.start()
            th.join()
        done.set()
        t.join()
    finally:
        store.close()
    assert store.open_connections == 0


def test_in_memory_store_keeps_its_one_connection(tmp_path):
    store = open_store("sqlite:///:memory:", KEY)
    try:
        store.put_template("alice", b"x", "m")
        t = threading.Thread(target=store.ping)
        t.start()
        t.join()
        store.ping()
        assert store.get_template("alice").blob == b"x"
    finally:
        store.close()


def test_a_read_only_store_is_reported_and_recovered_from_without_a_restart(
        tmp_path, monkeypatch):
    """While the file can only be opened read-only (permissions, a read-only mount),
    writes are UNAVAILABLE and readiness (``ping``) fails with the reason, not only the
    calls; once it is writable again the next call and ``ping`` work, without a
    restart (a connection opened read-only stays read-only: it is replaced)."""
    import sqlite3

    import pytest

    from nacf_core.errors import Unavailable
    from nacf_core.store import sqlite as backend

    store = open_store(f"sqlite:///{tmp_path / 'ro.db'}", key=os.urandom(32))
    try:
        store.put_template("a", b"t" * 64, "m1", create_only=True)
        real = sqlite3.connect

        def read_only(path, **kw):
            return real(f"file:{path}?mode=ro", uri=True, **kw)

        monkeypatch.setattr(backend.sqlite3, "connect", read_only)
        store._drop_connection(store._local.conn)  # as after a restart of the file's mount
        assert store.get_template("a").version == 1  # reads work
        with pytest.raises(Unavailable, match="readonly"):
            store.register_failure("a", 5, 60)
        with pytest.raises(Unavailable, match="readonly"):
            store.ping()
        monkeypatch.setattr(backend.sqlite3, "connect", real)  # writable again
        store.ping()
        assert store.register_failure("a", 5, 60)[0] == 1
    finally:
        store.close()


def test_a_new_store_file_is_the_owners_alone(tmp_path):
    """The database (audit rows with addresses and scores, session hashes) and the
    -wal/-shm files SQLite creates beside it are 0600, whatever the umask."""
    import stat

    old = os.umask(0o022)
    try:
        store = open_store(f"sqlite:///{tmp_path / 'perm.db'}", key=os.urandom(32))
        store.put_template("a", b"t" * 64, "m1")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert {"perm.db", "perm.db-wal", "perm.db-shm", "perm.db-wlock"} <= set(modes), modes
    assert set(modes.values()) == {0o600}, modes


def test_a_write_that_only_waited_for_another_writer_does_not_make_readiness_wait(tmp_path):
    """A write that ran out of busy timeout (another writer held the lock) says nothing
    about the store: readiness stays a quick read, not a write that waits the timeout."""
    import sqlite3
    import time

    import pytest

    from nacf_core.errors import Unavailable

    path = tmp_path / "busy.db"
    store = open_store(f"sqlite:///{path}", key=os.urandom(32), busy_timeout_s=0.3)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        store.put_template("a", b"t" * 64, "m1")
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(Unavailable, match="locked"):
            store.register_failure("a", 5, 60)
        t0 = time.monotonic()
        store.ping()
        assert time.monotonic() - t0 < 0.2
    finally:
        other.close()
        store.close()


@pytest.mark.parametrize("suffix", ["?mode=ro", "?cache=shared", "#main"])
def test_a_sqlite_url_with_a_query_or_fragment_is_refused(tmp_path, suffix):
    """``sqlite:///nacf.db?mode=ro`` opened a new, empty store in a file literally named
    ``nacf.db?mode=ro`` next to the real one."""
    url = f"sqlite:///{tmp_path / 'nacf.db'}{suffix}"
    with pytest.raises(InvalidArgument, match=r"query or fragment"):
        open_store(url, key=bytes(32))
    assert list(tmp_path.iterdir()) == []


def test_a_plain_sqlite_path_may_hold_a_question_mark(tmp_path):
    s = open_store(str(tmp_path / "odd?name.db"), key=bytes(range(32)))
    s.close()
    assert (tmp_path / "odd?name.db").exists()


def test_close_waits_for_a_transaction_running_in_another_thread(tmp_path):
    """close() closed the connections under a transaction another thread was running
    (a stream's DeleteUser still checkpointing when its caller closed the store): the
    sqlite3 module then crashed the interpreter. close() now waits for it, and calls
    made after close() are refused."""
    from nacf_core.errors import FailedPrecondition

    s = open_store(f"sqlite:///{tmp_path / 'n.db'}", key=bytes(range(32)))
    s.put_template("alice", b"tpl", "m-1")
    started, done, errors = threading.Event(), threading.Event(), []

    def slow_read(tx):
        started.set()
        time.sleep(0.3)  # close() is called meanwhile
        row = tx.one("SELECT COUNT(*) FROM users")
        done.set()
        return row

    def reader():
        try:
            assert s._run(slow_read, write=False)[0] == 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(10)
    s.close()
    assert done.is_set()  # close() returned only once the transaction had ended
    t.join(10)
    assert errors == []
    with pytest.raises(FailedPrecondition, match="closed"):
        s.get_template("alice")


@pytest.mark.parametrize("form", ["sqlite:///{p}\n", "sqlite:///{p}\r\n", " sqlite:///{p}",
                                  "sqlite:///{p}  "])
def test_blanks_around_a_sqlite_url_do_not_make_another_store(tmp_path, form):
    """A store URL read from a file or a secret with its line end (sqlite:///nacf.db\\n)
    opened a new, empty store in a file named 'nacf.db\\n' next to the real one (the
    server then knew no user); a blank before it (' sqlite:///rel.db') made the relative
    path absolute, '/rel.db'. PostgreSQL URLs already ignored them; SQLite URLs now do."""
    key = bytes(range(32))
    with open_store(tmp_path / "nacf.db", key=key) as s:
        s.put_template("alice", b"t", "m")
    with open_store(form.format(p=tmp_path / "nacf.db"), key=key) as s:
        assert s.get_template("alice").blob == b"t"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nacf.db", "nacf.db-wlock"]


@pytest.mark.parametrize("name", ["nacf.db\n", "na\tcf.db", "nacf\x00.db"])
def test_a_sqlite_path_with_a_control_character_is_refused(tmp_path, name):
    """A control character in a SQLite path (a line end carried in from a file) named a
    new, empty store beside the real one; a NUL failed inside sqlite3 as 'embedded null
    character' (a ValueError, not the store's error)."""
    # (inside a URL: one at its end is a blank around it, ignored)
    for url in (str(tmp_path / name), f"sqlite:///{tmp_path / name}.x"):
        with pytest.raises(InvalidArgument, match="control character"):
            open_store(url, key=bytes(32))
    assert list(tmp_path.iterdir()) == []


_FULL_DISK = r"""
import os, resource, signal, sys
from nacf_core.errors import Unavailable
from nacf_core.store import open_store

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
path = sys.argv[1]
store = open_store("sqlite:///" + path, key=bytes(range(32)))
store.put_template("a", b"t" * 64, "m1")
store._after_delete()  # the WAL emptied (truncated): new commits grow it
store.put_template("b", os.urandom(60000), "m1")
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
# no file grows any more (the WAL is the largest file SQLite writes to between
# checkpoints): a full disk, as SQLite sees it
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path + "-wal"), hard))


def outcome(fn):
    try:
        fn()
        return "ok"
    except Unavailable as exc:
        return "Unavailable: " + str(exc)


print(outcome(lambda: store.register_failure("a", 5, 60)))
print(outcome(store.ping))
print(outcome(lambda: store.get_template("b")))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
print(outcome(store.ping))
print(store.register_failure("a", 5, 60))
store.close()
"""


def test_readiness_fails_while_the_disk_is_full_and_recovers_after(tmp_path):
    """With the disk full every write fails; readiness (``ping``) must say so. Its
    write that changed nothing committed nothing to the disk, so it succeeded and the
    server was reported ready (and kept in a load balancer) while every Enroll and every
    authentication failed."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "full.db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("Unavailable: ") and "I/O error" in lines[0], lines
    assert lines[1] == lines[0], lines  # readiness says so, with the reason
    assert lines[2:] == ["ok", "ok", "(1, None)"], lines  # reads work; writes again


def test_a_reader_holding_a_snapshot_does_not_hold_delete_user_and_every_writer(tmp_path):
    """DeleteUser's checkpoint (TRUNCATE, to push the zeroed pages out of the WAL) waits
    for every reader to leave the WAL, holding the WAL's writer lock meanwhile. With a
    reader holding a snapshot (a backup: ``sqlite3 .backup``, Litestream, which keeps one
    open for good) it waited the whole busy timeout (30 s): DeleteUser took 30 s and
    every write of every process (each authentication's) waited behind it, those queued
    longer failing. It now gives up on the readers after a moment."""
    import sqlite3

    path = tmp_path / "snap.db"
    store = open_store(f"sqlite:///{path}", key=os.urandom(32))
    reader = sqlite3.connect(path, isolation_level=None)
    checkpointing = threading.Event()
    real = store._after_delete

    def after_delete():
        checkpointing.set()
        real()

    store._after_delete = after_delete
    box: dict = {}

    def run(name, fn):
        def target():
            try:
                box[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                box[name] = exc
        t = threading.Thread(target=target, daemon=True)
        t.start()
        return t

    try:
        store.put_template("a", b"t" * 64, "m1")
        store.put_template("b", b"t" * 64, "m1")
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM users").fetchone()  # a snapshot, kept
        store.put_template("c", b"t" * 64, "m1")  # the WAL moves on past it
        deleting = run("delete", lambda: store.delete_user("a"))
        assert checkpointing.wait(10)
        writing = run("write", lambda: store.register_failure("b", 5, 60))
        writing.join(10)
        assert box.get("write") == (1, None), box  # not held behind the checkpoint
        deleting.join(10)
        assert box.get("delete") == [], box
    finally:
        reader.close()  # lets a checkpoint that still waits finish
        store.close()


@pytest.mark.parametrize("their_tables", [
    ["CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)"],  # a name nacf uses too
    ["CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)"],  # no name in common
])
def test_another_applications_database_file_is_refused_and_left_as_it_was(tmp_path,
                                                                          their_tables):
    """A --store-url pointing at another application's SQLite file (a typo, a shared
    data directory). One with a ``users`` table failed UNAVAILABLE ("table users already
    exists": retry later, for a file that never works); one without a name in common
    had nacf's tables, templates among them, created inside it. Refused now, naming
    the tables found, and the file is left as it was."""
    import sqlite3

    from nacf_core.errors import FailedPrecondition

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    for stmt in their_tables:
        conn.execute(stmt)
    conn.commit()
    conn.close()
    before = sorted(sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master").fetchall())
    with pytest.raises(FailedPrecondition, match="another application.*of its own"):
        open_store(f"sqlite:///{path}", key=KEY)
    assert sorted(sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master").fetchall()) == before
    # nor switched to WAL (a mode kept in the file: its application may not expect it)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "app.db-wlock"]
    # an empty file (touch) is no other application's: a new store is made in it
    (tmp_path / "empty.db").touch()
    with open_store(f"sqlite:///{tmp_path / 'empty.db'}", key=KEY) as store:
        assert store.schema_version() == store.MIGRATIONS[-1][0]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_under_the_store_is_reported(tmp_path, how):
    """The file removed (rm, a cleanup) or replaced (mv of a backup over it) while the
    server runs: the connections open kept writing to the unlinked file, lost at the
    next restart, readiness said ready, and a thread's new connection opened (or
    created, empty) the file now at the path, beside the old one's -wal. Readiness and
    new connections now say so (UNAVAILABLE, restart); nothing is created at the path."""
    from nacf_core.errors import Unavailable

    path = tmp_path / "n.db"
    store = open_store(f"sqlite:///{path}", key=KEY)
    try:
        store.put_template("alice", b"t" * 64, "m1")
        store.ping()
        if how == "deleted":
            path.unlink()
        else:
            with open_store(f"sqlite:///{tmp_path / 'other.db'}", key=KEY):
                pass
            os.replace(tmp_path / "other.db", path)
        with pytest.raises(Unavailable, match=f"was {how} since this process opened it"):
            store.ping()
        got = []

        def new_thread_call():  # a thread of its own: a new connection
            try:
                store.get_user("alice")
                got.append("read")
            except Unavailable as exc:
                got.append(str(exc))

        t = threading.Thread(target=new_thread_call)
        t.start()
        t.join()
        assert len(got) == 1 and f"was {how} since this process opened it" in got[0], got
        assert path.exists() == (how == "replaced")
    finally:
        store.close()
