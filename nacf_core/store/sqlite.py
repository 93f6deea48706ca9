"""SQLite backend: the embedded default (one file, WAL, no server).

- One connection per thread (``sqlite3`` connections are not shared between threads);
  ``:memory:`` uses a single connection behind a lock, since each in-memory connection
  would otherwise be its own database.
- ``journal_mode=WAL`` (readers never block the writer), ``busy_timeout`` (writers wait
  for each other instead of failing), ``synchronous=NORMAL`` (in WAL mode: durable
  against a process crash such as ``kill -9``; a power loss may drop the last commits
  but never tears one), ``secure_delete=ON`` (deleted rows are zeroed in the file),
  ``foreign_keys=ON``.
- Writes run in ``BEGIN IMMEDIATE`` transactions, so a read-modify-write (version bump,
  failure counter, token bucket) is serialised across threads *and* processes.
- Writers queue on a lock instead of in SQLite's busy handler, which polls with sleeps
  of 1, 2, 5, 10 ... 100 ms (the latency tail under load): a thread lock within the
  process, and ``flock`` on ``<file>-wlock`` between processes (several ``nacf serve``
  processes on one file, ``--reuse-port``; a waiting process polls it every 0.2 ms).
  The kernel drops the lock of a process that dies.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import FailedPrecondition, NotFound, Unavailable
from ._sql import USER_GONE, SqlStore, Tx

__all__ = ["SQLiteStore", "MIGRATIONS"]

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "initial schema", [
        "CREATE TABLE store_meta (k TEXT PRIMARY KEY, key_id TEXT NOT NULL, v BLOB NOT NULL)",
        "CREATE TABLE users (user_id TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'active', "
        "created_at REAL NOT NULL, updated_at REAL NOT NULL, "
        "template_version INTEGER NOT NULL DEFAULT 0, model_version TEXT)",
        "CREATE TABLE templates (user_id TEXT PRIMARY KEY REFERENCES users(user_id), "
        "version INTEGER NOT NULL, model_version TEXT NOT NULL, key_id TEXT NOT NULL, "
        "ciphertext BLOB NOT NULL, meta TEXT NOT NULL, created_at REAL NOT NULL)",
        "CREATE INDEX templates_model ON templates (model_version, user_id)",
        "CREATE TABLE auth_attempts (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "user_id TEXT NOT NULL, ts REAL NOT NULL, success INTEGER NOT NULL, score REAL, "
        "reason TEXT NOT NULL, peer TEXT NOT NULL, duration_s REAL NOT NULL, "
        "method TEXT NOT NULL)",
        "CREATE INDEX auth_attempts_ts ON auth_attempts (ts)",
        "CREATE INDEX auth_attempts_user_ts ON auth_attempts (user_id, ts)",
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, "
        "user_id TEXT NOT NULL REFERENCES users(user_id), key_id TEXT NOT NULL, "
        "secret_ct BLOB NOT NULL, created_at REAL NOT NULL)",
        "CREATE INDEX devices_user ON devices (user_id)",
        "CREATE TABLE device_nonces (device_id TEXT NOT NULL, nonce TEXT NOT NULL, "
        "expires_at REAL NOT NULL, PRIMARY KEY (device_id, nonce))",
        "CREATE INDEX device_nonces_expiry ON device_nonces (expires_at)",
        "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, "
        "user_id TEXT NOT NULL REFERENCES users(user_id), created_at REAL NOT NULL, "
        "expires_at REAL NOT NULL, ended_at REAL, end_reason TEXT, device_id TEXT)",
        "CREATE INDEX sessions_active ON sessions (ended_at, expires_at)",
        "CREATE INDEX sessions_user ON sessions (user_id)",
        "CREATE TABLE lockouts (user_id TEXT PRIMARY KEY, failures INTEGER NOT NULL, "
        "locked_until REAL, updated_at REAL NOT NULL)",
        "CREATE TABLE rate_buckets (client_id TEXT PRIMARY KEY, tokens REAL NOT NULL, "
        "updated_at REAL NOT NULL)",
        "CREATE TABLE pad_fingerprints (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "user_id TEXT NOT NULL REFERENCES users(user_id), kind TEXT NOT NULL, "
        "created_at REAL NOT NULL, key_id TEXT NOT NULL, ciphertext BLOB NOT NULL)",
        "CREATE INDEX pad_fingerprints_user ON pad_fingerprints (user_id, kind, id)",
    ]),
    (2, "sessions.last_verified_at: when ContinuousAuthenticate last verified the wearer", [
        "ALTER TABLE sessions ADD COLUMN last_verified_at REAL",
    ]),
    (3, "indexes for large stores: lockouts_locked (Identify reads the users locked now "
        "on every call); sessions_user with ended_at and expires_at (a user's open sessions)", [
        "CREATE INDEX lockouts_locked ON lockouts (locked_until)",
        "DROP INDEX sessions_user",
        "CREATE INDEX sessions_user ON sessions (user_id, ended_at, expires_at)",
    ]),
    (4, "device_nonces.claim: which call recorded a nonce (it runs again after a lost "
        "COMMIT answer and finds its own row, not a replay)", [
        "ALTER TABLE device_nonces ADD COLUMN claim TEXT",
    ]),
    (5, "rate_buckets.rate_per_s, burst: the refill rate and capacity each bucket was last "
        "taken with (a bucket idle long enough to be full again by them is purged)", [
        "ALTER TABLE rate_buckets ADD COLUMN rate_per_s REAL",
        "ALTER TABLE rate_buckets ADD COLUMN burst REAL",
    ]),
    (6, "session_windows: the replay history of each session's ContinuousAuthenticate "
        "windows (encrypted PAD fingerprints), shared by the replicas", [
        "CREATE TABLE session_windows (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "session_id TEXT NOT NULL, user_id TEXT NOT NULL, created_at REAL NOT NULL, "
        "key_id TEXT NOT NULL, ciphertext BLOB NOT NULL)",
        "CREATE INDEX session_windows_session ON session_windows (session_id, id)",
    ]),
    (7, "session_windows.seq: each window's ordinal in its session (beyond the newest, one "
        "window in every so many stays: a loop longer than the newest is caught); by user: "
        "a window is checked against the user's windows of other sessions too", [
        "ALTER TABLE session_windows ADD COLUMN seq INTEGER",
        "CREATE INDEX session_windows_user ON session_windows (user_id, id)",
    ]),
    (8, "auth_attempts.actor: who made an account change (the caller's client id); NULL "
        "for authentication attempts and rows written before it", [
        "ALTER TABLE auth_attempts ADD COLUMN actor TEXT",
    ]),
    (9, "rate_buckets.clock: the host whose clock set a bucket's time (a time behind it by "
        "more than clock_step_s from that host is its clock stepping back; from another "
        "host, a replica's clock behind: no refill, so skewed replicas refill nothing twice)", [
        "ALTER TABLE rate_buckets ADD COLUMN clock TEXT",
    ]),
]


class SQLiteStore(SqlStore):
    """SQLite store at ``path`` (``":memory:"`` for a private in-memory database).

    Parameters
    ----------
    path : str | path-like
        Database file; its directory must exist. Created on first open.
    key : bytes | str | path-like | None
        Template key (see :mod:`nacf_core.store.crypto`).
    busy_timeout_s : float
        How long a writer waits for another writer before ``Unavailable``.
    """

    backend = "sqlite"
    #: calls run in this process (no network round trip): the service may serialise them
    in_process = True
    MIGRATIONS = MIGRATIONS

    def __init__(self, path: str | os.PathLike, key: Any = None, *,
                 busy_timeout_s: float = 30.0, create: bool = True) -> None:
        super().__init__(key)
        self.path = os.fspath(path)
        self._memory = self.path == ":memory:"
        if not self._memory:
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise Unavailable(f"SQLite store {self.path!r}: directory {str(parent)!r} "
                                  f"does not exist.")
        self._busy_ms = int(busy_timeout_s * 1000)
        self._local = threading.local()
        # every connection with the thread that owns it: a thread that ended leaves its
        # connection here, closed when the next thread connects (a thread per health
        # check would otherwise leak a connection and its file descriptors each time)
        self._conns: list[tuple[weakref.ref | None, sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        self._mem_lock = threading.RLock()
        # writers queue here and on _wlock_fd, not in SQLite's busy handler (see above);
        # BEGIN IMMEDIATE + busy_timeout still guard against a writer that does not
        # take the file lock (the sqlite3 shell, an older nacf)
        self._write_lock = threading.Lock()
        self._wlock_fd = -1
        # transactions (and checkpoints) running now: close() waits for them, since
        # closing a connection another thread is using crashes the sqlite3 module
        self._in_use = 0
        self._idle = threading.Condition()
        self._mem_conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None
        self._abs_path = ""
        if not self._memory and not create and not os.path.exists(self.path):
            raise NotFound(f"There is no nacf store at {self._describe()}: create it with "
                           "`nacf store migrate` (or check the URL).")
        if not self._memory:
            try:
                # a new store file is the owner's alone (0600): it holds the audit trail
                # (addresses, scores) and session hashes next to the encrypted templates;
                # SQLite gives its -wal and -shm files the database file's permissions
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise Unavailable(f"SQLite store {self.path!r}: cannot create it: {exc}.") \
                    from exc
            try:
                # the file this store is: one deleted or replaced under it is told apart
                st = os.stat(self.path)
            except OSError as exc:
                raise Unavailable(f"SQLite store {self.path!r}: cannot read it: {exc}.") \
                    from exc
            self._file_id = (st.st_dev, st.st_ino)
            self._abs_path = os.path.abspath(self.path)
            try:
                self._wlock_fd = os.open(self.path + "-wlock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise Unavailable(f"SQLite store {self.path!r}: cannot open its writer "
                                  f"lock file: {exc}.") from exc
        self._open(create)

    def _describe(self) -> str:
        return f"SQLite file {self.path!r}"

    def _has_store_tables(self, tx) -> bool:
        return tx.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                      "name = 'schema_migrations'") is not None

    def _foreign_tables(self, tx) -> list[str]:
        return _foreign_tables(tx.query)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def _check_file(self) -> None:
        """Raise ``Unavailable`` when the database file was deleted or replaced since the
        store opened it (an ``rm``, a backup moved over it): the connections open go on
        writing to the file unlinked, lost at the next restart, and a new one would open
        (or create, empty) the file now at the path."""
        if self._file_id is None:
            return
        try:
            st = os.stat(self._abs_path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._file_id:
            raise Unavailable(
                f"SQLite store {self.path!r}: the database file was "
                f"{'deleted' if st is None else 'replaced'} since this process opened it; "
                "what it writes now is lost when it stops: restart it (on the file that "
                "should be there).")

    def _unwritable_dir(self) -> str:
        """Why an open failed when the file's directory cannot be written (a read-only
        mount, its mode): SQLite's message blamed the database file ('attempt to write a
        readonly database'), writable itself."""
        where = os.path.dirname(self._abs_path)
        if self._memory or os.access(where, os.W_OK):
            return ""
        return (f" (its directory {where!r} cannot be written: SQLite keeps its -wal and "
                "-shm files beside the database; make the directory writable)")

    def ping(self) -> None:
        self._check_file()
        super().ping()

    def _connect(self) -> sqlite3.Connection:
        self._check_file()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            if not self._memory and conn.execute(
                    "PRAGMA journal_mode").fetchone()[0].lower() != "wal" and not (
                    _foreign_tables(conn.execute)):
                # (another application's file is left in its mode: migrate() refuses it)
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise Unavailable(f"SQLite store {self.path!r}: cannot enable WAL "
                                      f"(journal_mode is {mode!r}).")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise Unavailable(f"Cannot open the SQLite store {self.path!r}: {exc}"
                              f"{self._unwritable_dir()}.") from exc
        dead = []
        with self._conns_lock:
            live = []
            for ref, c in self._conns:
                t = ref() if ref is not None else None
                (live if ref is None or (t is not None and t.is_alive()) else dead).append(
                    (ref, c))
            # the in-memory store's one connection is shared by every thread: no owner
            owner = None if self._memory else weakref.ref(threading.current_thread())
            self._conns = [*live, (owner, conn)]
        for _, c in dead:  # their threads have ended: nobody else uses them
            try:
                c.close()
            except sqlite3.Error:
                pass
        return conn

    @property
    def open_connections(self) -> int:
        """Connections held now (those of ended threads until the next connect)."""
        with self._conns_lock:
            return len(self._conns)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._memory:
            with self._mem_lock:
                if self._mem_conn is None:
                    self._mem_conn = self._connect()
                yield self._mem_conn
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        yield conn

    @contextmanager
    def _use(self) -> Iterator[None]:
        """Count a use of the connections for :meth:`close`."""
        with self._idle:
            if self._closed:
                raise FailedPrecondition("The store is closed.")
            self._in_use += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_use -= 1
                if not self._in_use:
                    self._idle.notify_all()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        with self._use():
            with self._transaction_in_use(write) as tx:
                yield tx

    @contextmanager
    def _transaction_in_use(self, write: bool) -> Iterator[Tx]:
        if not write or self._memory:  # the in-memory connection has its own lock
            with self._transaction_on_connection(write) as tx:
                yield tx
            return
        if not self._write_lock.acquire(timeout=self._busy_ms / 1000):
            raise sqlite3.OperationalError(
                f"database is locked (another writer thread held it for "
                f"{self._busy_ms / 1000:g} s)")
        try:
            self._lock_file()
            try:
                with self._transaction_on_connection(write) as tx:
                    yield tx
            finally:
                fcntl.flock(self._wlock_fd, fcntl.LOCK_UN)
        finally:
            self._write_lock.release()

    def _lock_file(self) -> None:
        """Take the writer lock shared with other processes, waiting at most the busy
        timeout. Only one thread per process waits here (the others queue on
        ``_write_lock``); it polls every 0.2 ms, since a blocking ``flock`` cannot time
        out."""
        deadline = None
        while True:
            try:
                fcntl.flock(self._wlock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._busy_ms / 1000
            elif now >= deadline:
                raise sqlite3.OperationalError(
                    f"database is locked (another process held the writer lock for "
                    f"{self._busy_ms / 1000:g} s)")
            time.sleep(0.0002)

    @contextmanager
    def _transaction_on_connection(self, write: bool) -> Iterator[Tx]:
        with self._connection() as conn:
            try:
                cur = conn.cursor()
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield Tx(cur, "qmark")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
                finally:
                    cur.close()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    # a new connection may not have this one's trouble: one opened while
                    # the file was read-only stays read-only after it is writable again
                    self._drop_connection(conn)
                raise

    def _drop_connection(self, conn: sqlite3.Connection) -> None:
        """Forget and close this thread's connection; the next call opens a new one."""
        if self._memory:
            return
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._conns_lock:
            self._conns = [(r, c) for r, c in self._conns if c is not conn]
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def _is_retryable(self, exc: BaseException, elapsed_s: float) -> bool:
        # SQLITE_BUSY returned at once (WAL recovery, a snapshot conflict) is worth a
        # retry; after busy_timeout has already been waited out, it is not
        return (isinstance(exc, sqlite3.OperationalError) and _busy(exc)
                and elapsed_s < 0.5 * self._busy_ms / 1000)

    def _is_contention(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and _busy(exc)

    def _translate(self, exc: BaseException) -> BaseException | None:
        if isinstance(exc, sqlite3.OperationalError):
            return Unavailable(f"SQLite store {self.path!r} is unavailable: {exc}.")
        if isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY" in str(exc):
            return NotFound(USER_GONE)
        if isinstance(exc, sqlite3.DatabaseError):
            return Unavailable(f"SQLite store {self.path!r} failed: {exc} "
                               f"(is it a nacf store file?).")
        return None

    #: how long the checkpoint after a delete waits for other connections (see
    #: :meth:`_after_delete`)
    delete_checkpoint_wait_s = 0.2

    def _after_delete(self) -> None:
        # push the zeroed pages from the WAL into the main file and truncate the WAL,
        # so the deleted ciphertext is gone from disk, not only from the table.
        # A TRUNCATE checkpoint waits (SQLite's busy handler) for every reader to leave
        # the WAL, and holds the WAL's writer lock meanwhile: with the busy timeout, a
        # reader keeping a snapshot (a backup, Litestream) held this call and every
        # writer of every process for 30 s. It waits a moment only; past it SQLite
        # checkpoints what it can without waiting, and a later checkpoint the rest.
        if self._memory:
            return
        try:
            with self._use(), self._connection() as conn:
                conn.execute(f"PRAGMA busy_timeout = "
                             f"{int(self.delete_checkpoint_wait_s * 1000)}")
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        except sqlite3.Error:  # a busy reader: the next checkpoint finishes it
            pass

    #: how long close() waits for the transactions still running in other threads
    close_wait_s = 60.0

    def close(self) -> None:
        """Close the connections once no other thread is using them (calls made after
        this one are refused). Transactions still running after :attr:`close_wait_s`
        keep their connections, which the process's exit closes."""
        with self._idle:  # held to the end: no new use starts meanwhile
            self._closed = True
            if not self._idle.wait_for(lambda: self._in_use == 0, timeout=self.close_wait_s):
                return
            self._close_connections()

    def _close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for _, conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._mem_conn = None
        self._local = threading.local()
        if self._wlock_fd >= 0:
            try:
                os.close(self._wlock_fd)
            except OSError:
                pass
            self._wlock_fd = -1


def _foreign_tables(query) -> list[str]:
    """The tables of another application in the database ``query`` (a ``Tx.query`` or a
    connection's ``execute``) reads, if it holds no nacf store. A nacf store holds
    schema_migrations (created in the transaction of its first migration): a file with
    other tables and not that one is another application's."""
    names = [r[0] for r in query(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if "schema_migrations" in names:
        return []
    return [n for n in names if not n.startswith("sqlite_")]


def _busy(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another writer, not this connection's trouble."""
    return "locked" in str(exc) or "busy" in str(exc)
