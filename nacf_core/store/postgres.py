"""PostgreSQL backend (psycopg 3): several replicas share one database.

- A small thread-safe connection pool (``pool_size`` connections, opened lazily; a
  broken connection is discarded and replaced).
- Each write is one ``READ COMMITTED`` transaction; read-modify-writes lock their
  row first (``INSERT ... ON CONFLICT DO NOTHING`` then ``SELECT ... FOR UPDATE``), so
  failure counters, token buckets and template versions lose no update across
  replicas. Serialization failures and deadlocks are retried with backoff. Each read
  is one ``REPEATABLE READ, READ ONLY`` transaction: its statements see one snapshot
  (an authentication's template, headset and PAD history are of one moment).
- ``migrate()`` takes a transaction-scoped advisory lock, so replicas starting together
  apply each migration once.
- ``?schema=NAME`` in the URL keeps every table in that schema (``search_path``).
- ``?query_timeout=SECONDS`` (default 30; 0 turns it off) bounds how long a transaction
  may wait for the server: a watchdog thread shuts the socket of a connection lent out
  longer than that, so a server that stops answering without closing its connections (a
  stopped process, a hung disk: TCP keepalives still succeed) costs the calls an
  ``UNAVAILABLE`` instead of their threads. A call waits for a free pooled connection no
  longer than that either (30 s at most), then gets ``UNAVAILABLE`` naming ``pool_size``.
  Migrations are not bounded (they may wait for
  another replica's), nor is a key rotation (it re-encrypts every row in one
  transaction).
- Every commit is durable (``synchronous_commit`` as the server sets it) except the
  rate-limit token buckets, committed asynchronously: a database crash can forget the
  last fraction of a second of rate accounting, never a template, session, nonce,
  lockout counter or audit row.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from ..errors import FailedPrecondition, InvalidArgument, NotFound, OutcomeUnknown, Unavailable
from ._sql import USER_GONE, SqlStore, Tx

__all__ = ["PostgresStore", "MIGRATIONS"]

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "initial schema", [
        "CREATE TABLE store_meta (k TEXT PRIMARY KEY, key_id TEXT NOT NULL, v BYTEA NOT NULL)",
        "CREATE TABLE users (user_id TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'active', "
        "created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, "
        "template_version INTEGER NOT NULL DEFAULT 0, model_version TEXT)",
        "CREATE TABLE templates (user_id TEXT PRIMARY KEY REFERENCES users(user_id), "
        "version INTEGER NOT NULL, model_version TEXT NOT NULL, key_id TEXT NOT NULL, "
        "ciphertext BYTEA NOT NULL, meta TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX templates_model ON templates (model_version, user_id)",
        "CREATE TABLE auth_attempts (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, "
        "ts DOUBLE PRECISION NOT NULL, success BOOLEAN NOT NULL, score DOUBLE PRECISION, "
        "reason TEXT NOT NULL, peer TEXT NOT NULL, duration_s DOUBLE PRECISION NOT NULL, "
        "method TEXT NOT NULL)",
        "CREATE INDEX auth_attempts_ts ON auth_attempts (ts)",
        "CREATE INDEX auth_attempts_user_ts ON auth_attempts (user_id, ts)",
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, "
        "user_id TEXT NOT NULL REFERENCES users(user_id), key_id TEXT NOT NULL, "
        "secret_ct BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX devices_user ON devices (user_id)",
        "CREATE TABLE device_nonces (device_id TEXT NOT NULL, nonce TEXT NOT NULL, "
        "expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device_id, nonce))",
        "CREATE INDEX device_nonces_expiry ON device_nonces (expires_at)",
        "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, "
        "user_id TEXT NOT NULL REFERENCES users(user_id), created_at DOUBLE PRECISION NOT NULL, "
        "expires_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION, end_reason TEXT, "
        "device_id TEXT)",
        "CREATE INDEX sessions_active ON sessions (ended_at, expires_at)",
        "CREATE INDEX sessions_user ON sessions (user_id)",
        "CREATE TABLE lockouts (user_id TEXT PRIMARY KEY, failures INTEGER NOT NULL, "
        "locked_until DOUBLE PRECISION, updated_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE rate_buckets (client_id TEXT PRIMARY KEY, "
        "tokens DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE pad_fingerprints (id BIGSERIAL PRIMARY KEY, "
        "user_id TEXT NOT NULL REFERENCES users(user_id), kind TEXT NOT NULL, "
        "created_at DOUBLE PRECISION NOT NULL, key_id TEXT NOT NULL, ciphertext BYTEA NOT NULL)",
        "CREATE INDEX pad_fingerprints_user ON pad_fingerprints (user_id, kind, id)",
    ]),
    (2, "sessions.last_verified_at: when ContinuousAuthenticate last verified the wearer", [
        "ALTER TABLE sessions ADD COLUMN last_verified_at DOUBLE PRECISION",
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
        "ALTER TABLE rate_buckets ADD COLUMN rate_per_s DOUBLE PRECISION",
        "ALTER TABLE rate_buckets ADD COLUMN burst DOUBLE PRECISION",
    ]),
    (6, "session_windows: the replay history of each session's ContinuousAuthenticate "
        "windows (encrypted PAD fingerprints), shared by the replicas", [
        "CREATE TABLE session_windows (id BIGSERIAL PRIMARY KEY, "
        "session_id TEXT NOT NULL, user_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
        "key_id TEXT NOT NULL, ciphertext BYTEA NOT NULL)",
        "CREATE INDEX session_windows_session ON session_windows (session_id, id)",
    ]),
    (7, "session_windows.seq: each window's ordinal in its session (beyond the newest, one "
        "window in every so many stays: a loop longer than the newest is caught); by user: "
        "a window is checked against the user's windows of other sessions too", [
        "ALTER TABLE session_windows ADD COLUMN seq BIGINT",
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

#: the most connections one store opens (PostgreSQL's own default max_connections is 100)
_MAX_POOL = 1000
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_MIGRATION_LOCK_ID = 0x6E616366  # "nacf"
#: errors of transactions that collided with others: retried, and no sign of an outage
_CONTENTION = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected,
               pg_errors.LockNotAvailable)
#: libpq connection parameters set unless the store URL gives them: TCP keepalives on
#: idle pooled connections, and unacknowledged data dropping the connection after 20 s
_TCP_DEFAULTS = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
                 "keepalives_count": "3", "tcp_user_timeout": "20000"}
#: libpq's refusal of a connection parameter's value (before any server is asked):
#: 'invalid port number: "99999"', 'invalid integer value "x" for connection option
#: "port"', 'invalid sslmode value: "bogus"'
_BAD_OPTION = re.compile(r'invalid (?:port number: |integer value |[a-z_]+ value: )"')
#: the longest a transaction waits for the server by default (``?query_timeout=``)
QUERY_TIMEOUT_S = 30.0
_MAX_QUERY_TIMEOUT_S = 24 * 3600.0


def _redact(conninfo: str) -> str:
    """host:port/dbname for messages, never the password."""
    try:
        d = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable conninfo>"
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


class _CommitUnknown(Exception):
    """A write transaction's COMMIT was sent and its answer lost: it may have been applied,
    so running the transaction again could apply it twice (a second enrollment, a failure
    counted twice). ``timed_out``: the watchdog cut the connection (the server did not
    answer within the query timeout), else the connection was lost."""

    def __init__(self, why: str, *, timed_out: bool = False) -> None:
        super().__init__(why)
        self.timed_out = timed_out


class _QueryTimeout(Exception):
    """The server did not answer within the query timeout: the watchdog shut the
    connection's socket (not an ``OperationalError``, so it is not run again: a server
    that stopped answering would hold the call for as long again)."""


class _Watchdog:
    """Shuts the socket of every connection lent out for longer than ``timeout_s``.

    libpq waits for the server's answer without a limit, and TCP keepalives do not help
    when the server's host still acknowledges (a stopped process, a disk that hangs), so
    a thread blocked in a query is freed from the outside: ``shutdown()`` on the socket
    wakes its wait with an error, and the server, when it runs again, sees the connection
    gone and rolls the transaction back. Only the socket is touched from this thread
    (libpq's connection object is not thread-safe); the pool then discards the
    connection."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._lent: dict[int, tuple[Any, float]] = {}   # id(conn) -> (conn, deadline)
        self._cut: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lend(self, conn: Any) -> None:
        with self._lock:
            self._lent[id(conn)] = (conn, time.monotonic() + self.timeout_s)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="nacf-pg-watchdog")
                self._thread.start()

    def back(self, conn: Any) -> bool:
        """The connection is back from its transaction: True if it was cut."""
        with self._lock:
            self._lent.pop(id(conn), None)
            if id(conn) in self._cut:
                self._cut.discard(id(conn))
                return True
            return False

    def was_cut(self, conn: Any) -> bool:
        with self._lock:
            return id(conn) in self._cut

    def _loop(self) -> None:
        tick = min(1.0, max(0.05, self.timeout_s / 10))
        while not self._stop.wait(tick):
            now = time.monotonic()
            # under the lock: a connection is cut only while its transaction holds it,
            # never after it went back to the pool and on to another call
            with self._lock:
                for key, (conn, deadline) in list(self._lent.items()):
                    if deadline <= now:
                        del self._lent[key]
                        self._cut.add(key)
                        _shutdown(conn)

    def close(self) -> None:
        self._stop.set()


def _shutdown(conn: Any) -> None:
    try:
        dup = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, psycopg.Error):
        return  # already closed
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


class _Pool:
    """Thread-safe pool of at most ``size`` connections, created on demand; with a
    ``watchdog``, a connection lent out for longer than its timeout is cut."""

    def __init__(self, connect, size: int, timeout_s: float,
                 watchdog: _Watchdog | None = None) -> None:
        self._connect = connect
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._sem = threading.BoundedSemaphore(size)
        self.size = size
        self._timeout = timeout_s
        self._all: set = set()
        self._lock = threading.Lock()
        self.watchdog = watchdog
        self._closed = False

    @contextmanager
    def connection(self, *, bounded: bool = True) -> Iterator[psycopg.Connection]:
        """A connection for one transaction; ``bounded=False``: not cut by the
        watchdog (migrations, which may wait for another replica's)."""
        wait = self.wait_s(bounded=bounded)
        if not self._sem.acquire(timeout=wait):
            why = ("query_timeout" if bounded and self.watchdog is not None
                   and self.watchdog.timeout_s < self._timeout else "pool wait")
            raise Unavailable(f"No PostgreSQL connection free within {wait:g} s ({why}): "
                              f"all pool_size={self.size} connections are in use; raise "
                              f"pool_size in the store URL or look for slow transactions.")
        conn = None
        watched = False
        try:
            if self._closed:  # no new connection for a closed store: nobody would close it
                raise FailedPrecondition("The store is closed.")
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
                with self._lock:
                    self._all.add(conn)
            if bounded and self.watchdog is not None:
                self.watchdog.lend(conn)
                watched = True
            yield conn
        finally:
            if conn is not None:
                cut = watched and self.watchdog.back(conn)
                if self._closed:  # back after close() stopped waiting for it
                    self._discard(conn)
                elif cut or conn.broken or conn.closed:
                    # the server went away (a restart, a failover): the idle connections
                    # are dead too, and handing them out would spend a call's retries on
                    # them one by one
                    self._discard(conn)
                    self._discard_idle()
                elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self._discard(conn)
                else:
                    self._idle.put(conn)
            self._sem.release()

    def wait_s(self, *, bounded: bool = True) -> float:
        """How long a caller waits for a free connection: the pool's own bound (30 s by
        default), no longer than the query timeout for a bounded transaction (a call
        asked to fail within ``query_timeout`` must not wait longer for a connection)."""
        if bounded and self.watchdog is not None:
            return min(self._timeout, self.watchdog.timeout_s)
        return self._timeout

    def _discard_idle(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            self._discard(conn)

    def _discard(self, conn) -> None:
        with self._lock:
            self._all.discard(conn)
        try:
            conn.close()
        except psycopg.Error:
            pass

    def close(self) -> None:
        """Close the idle connections; one still lent out is closed when it comes back
        (closing it under the thread using it frees libpq's connection under that
        thread)."""
        self._closed = True
        self._discard_idle()


class PostgresStore(SqlStore):
    """PostgreSQL store.

    Parameters
    ----------
    url : str
        ``postgresql://user[:password]@host[:port]/db[?schema=NAME&pool_size=N&query_timeout=S]``;
        other query parameters are passed to libpq (e.g. ``sslmode``,
        ``application_name``, ``options``).
    key : bytes | str | path-like | None
        Template key (see :mod:`nacf_core.store.crypto`).
    pool_size : int
        Maximum connections this process opens.
    connect_timeout_s : float
        libpq connect timeout; six times it (at least 6 s, 30 s by default) bounds the
        wait for a free pooled connection, and so does ``query_timeout_s`` when shorter.
    query_timeout_s : float
        The longest one transaction may wait for the server (``?query_timeout=`` in the
        URL wins); 0: no limit. Past it the connection is shut and the call gets
        ``Unavailable``; a write whose ``COMMIT`` was waiting is reported as of unknown
        outcome, as for a lost connection.
    """

    backend = "postgresql"
    MIGRATIONS = MIGRATIONS
    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, key: Any = None, *, pool_size: int | None = None,
                 connect_timeout_s: float = 5.0, schema: str | None = None,
                 query_timeout_s: float = QUERY_TIMEOUT_S, create: bool = True) -> None:
        super().__init__(key)
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", None) or schema
        size = query.pop("pool_size", None)
        if size is not None:
            try:
                pool_size = int(size)
            except ValueError:
                raise InvalidArgument(f"'pool_size' in the store URL must be an integer, got "
                                      f"{size!r}.") from None
        pool_size = 8 if pool_size is None else pool_size
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) \
                or not 1 <= pool_size <= _MAX_POOL:
            raise InvalidArgument(f"'pool_size' must be an integer in [1, {_MAX_POOL}], got "
                                  f"{pool_size!r}.")
        timeout = query.pop("query_timeout", None)
        if timeout is not None:
            try:
                query_timeout_s = float(timeout)
            except ValueError:
                query_timeout_s = -1.0  # refused below, with the value given
        if isinstance(query_timeout_s, bool) or not isinstance(query_timeout_s, (int, float)) \
                or not 0 <= query_timeout_s <= _MAX_QUERY_TIMEOUT_S:
            raise InvalidArgument(
                f"'query_timeout' must be a number of seconds in [0, "
                f"{_MAX_QUERY_TIMEOUT_S:.0f}] (0: no limit), got "
                f"{timeout if timeout is not None else query_timeout_s!r}.")
        self.query_timeout_s = float(query_timeout_s)
        if schema is not None and not _SCHEMA_RE.match(schema):
            raise InvalidArgument(f"'schema' must be a plain identifier "
                                  f"([A-Za-z_][A-Za-z0-9_]*), got {schema!r}.")
        self.schema = schema
        self._options = query.pop("options", "")  # merged with search_path below
        # a server that vanishes from the network (a dead host, a partition) is noticed
        # in about 20 s, not after minutes of TCP retransmissions; the URL can override
        self._tcp = {k: v for k, v in _TCP_DEFAULTS.items() if k not in query}
        scheme = "postgresql"
        self._conninfo = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), ""))
        self._where = _redact(self._conninfo)
        self._connect_timeout = connect_timeout_s
        self._local = threading.local()
        # transactions running now: close() waits for them (see close)
        self._in_use = 0
        self._idle_cv = threading.Condition()
        self._pool = _Pool(self._new_conn, pool_size, max(connect_timeout_s, 1.0) * 6,
                           _Watchdog(self.query_timeout_s) if self.query_timeout_s else None)
        if schema is not None and create:
            self._ensure_schema()
        self._open(create)

    def _describe(self) -> str:
        return f"PostgreSQL {self._where}" + (f", schema {self.schema!r}" if self.schema else "")

    def _has_store_tables(self, tx) -> bool:
        # search_path is the URL's schema alone: a missing schema has no such table
        return tx.one("SELECT to_regclass('schema_migrations')")[0] is not None

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r}, schema={self.schema!r})"

    def _new_conn(self) -> psycopg.Connection:
        kwargs: dict[str, Any] = {"autocommit": True,
                                  "connect_timeout": max(1, int(self._connect_timeout)),
                                  **self._tcp}
        options = self._options
        if self.schema is not None:
            # quoted: the schema _ensure_schema created, "Auth" not auth (the name is a
            # plain identifier, _SCHEMA_RE, so it needs no escaping)
            options = f'{options} -c search_path="{self.schema}"'.strip()
        if options:
            kwargs["options"] = options
        try:
            return psycopg.connect(self._conninfo, **kwargs)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None

    def _connect_error(self, exc: psycopg.Error) -> Exception:
        """The error of a connection that failed: ``InvalidArgument`` for a URL libpq
        refuses (its syntax, a parameter it does not know, a value it cannot use: a port
        that is no number, ``sslmode=bogus``), no retry can help; ``Unavailable`` for a
        server that cannot be reached or refuses the connection."""
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, psycopg.ProgrammingError) or _BAD_OPTION.search(msg):
            return InvalidArgument(f"the PostgreSQL store URL is not valid: "
                                   f"{msg.removeprefix('connection is bad: ')}.")
        if isinstance(exc, psycopg.OperationalError):
            return Unavailable(f"PostgreSQL store at {self._where} is unreachable: {msg}")
        return exc

    def _ensure_schema(self) -> None:
        """Create the URL's schema unless it exists. Only then: ``CREATE SCHEMA IF NOT
        EXISTS`` needs CREATE on the database even for a schema that exists, which a
        role made for the application (its schema created for it by the DBA) has not."""
        conn = None
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True,
                                   connect_timeout=max(1, int(self._connect_timeout)))
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                            (self.schema,)).fetchone() is not None:
                return
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        except psycopg.errors.UniqueViolation:
            pass  # created concurrently
        except psycopg.errors.InsufficientPrivilege as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "denied"
            raise FailedPrecondition(
                f"PostgreSQL {self._where}: the schema {self.schema!r} does not exist and "
                f"this role may not create it ({msg}): create it for the role "
                f"(CREATE SCHEMA \"{self.schema}\" AUTHORIZATION <role>) or grant the "
                f"role CREATE on the database.") from None
        except (psycopg.ProgrammingError, psycopg.OperationalError) as exc:
            raise self._connect_error(exc) from None
        finally:
            if conn is not None:
                conn.close()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        with self._idle_cv:
            if self._closed:
                raise FailedPrecondition("The store is closed.")
            self._in_use += 1
        try:
            with self._pooled_transaction(write) as tx:
                yield tx
        finally:
            with self._idle_cv:
                self._in_use -= 1
                if not self._in_use:
                    self._idle_cv.notify_all()

    @contextmanager
    def _pooled_transaction(self, write: bool) -> Iterator[Tx]:
        bounded = not getattr(self._local, "unbounded", False)
        with self._pool.connection(bounded=bounded) as conn:
            sent_commit = False
            # a read sees one snapshot (all its statements the same commits): REPEATABLE
            # READ, which a read-only transaction gets without serialization failures;
            # a write keeps READ COMMITTED and locks the rows it reads first
            level = None if write else psycopg.IsolationLevel.REPEATABLE_READ
            if conn.isolation_level != level:
                conn.isolation_level = level
                conn.read_only = None if write else True
            try:
                with conn.transaction():
                    with conn.cursor() as cur:
                        yield Tx(cur, "format")
                    sent_commit = True  # leaving the block commits
            except psycopg.OperationalError as exc:
                wd = self._pool.watchdog
                if bounded and wd is not None and wd.was_cut(conn):
                    why = (f"the server did not answer within {wd.timeout_s:g} s "
                           f"(query_timeout), so the connection was closed")
                    if sent_commit and write:
                        raise _CommitUnknown(why, timed_out=True) from exc
                    raise _QueryTimeout(why) from exc
                if sent_commit and write:
                    raise _CommitUnknown(str(exc)) from exc
                raise

    @contextmanager
    def _unbounded(self) -> Iterator[None]:
        """This thread's transactions meanwhile are not bounded by ``query_timeout``."""
        self._local.unbounded = True
        try:
            yield
        finally:
            self._local.unbounded = False

    def migrate(self) -> list[int]:
        # not bounded by query_timeout: the advisory lock may wait for another replica's
        # migrations, and an index on a large table takes what it takes
        with self._unbounded():
            return super().migrate()

    def _run_rotation(self, fn):
        # not bounded by query_timeout either: one transaction re-encrypts every template,
        # device secret and PAD fingerprint, minutes for a large store (the read of its
        # outcome after a lost answer is bounded: rotate_key)
        with self._unbounded():
            return self._run(fn)

    def _relaxed_durability(self, tx: Tx) -> None:
        # token buckets are approximate by nature: do not wait for the WAL flush
        tx.execute("SET LOCAL synchronous_commit TO OFF")

    def _rotation_lock(self, tx: Tx) -> None:
        # writers' INSERTs wait until the rotation commits, then see its key (a row
        # inserted meanwhile would escape the rotation's SELECT, under the old key)
        tx.execute("LOCK TABLE templates, devices, pad_fingerprints, session_windows "
                   "IN EXCLUSIVE MODE")

    def _migration_lock(self, tx: Tx) -> None:
        tx.query("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK_ID,))

    def _is_retryable(self, exc: BaseException, elapsed_s: float) -> bool:
        # a write whose COMMIT was sent is never run again: it may have been applied
        # (_CommitUnknown is no OperationalError)
        return isinstance(exc, _CONTENTION) or (
            isinstance(exc, psycopg.OperationalError)
            and not isinstance(exc, pg_errors.QueryCanceled))

    def _is_contention(self, exc: BaseException) -> bool:
        return isinstance(exc, _CONTENTION)

    def _commit_lost(self, exc: BaseException) -> bool:
        # not after the query timeout: a server that did not answer would hold the call
        # as long again (as a read's _QueryTimeout, not run again)
        return isinstance(exc, _CommitUnknown) and not exc.timed_out

    def _translate(self, exc: BaseException) -> BaseException | None:
        if isinstance(exc, _CommitUnknown):
            return OutcomeUnknown(
                f"PostgreSQL store at {self._where}: the connection was lost while "
                f"committing ({exc}); the change may or may not have been saved, so it was "
                "not retried: read the state before repeating the call.")
        if isinstance(exc, _QueryTimeout):
            return Unavailable(f"PostgreSQL store at {self._where} is unavailable: {exc}.")
        if isinstance(exc, psycopg.OperationalError):
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Unavailable(f"PostgreSQL store at {self._where} is unavailable: {msg}")
        if isinstance(exc, pg_errors.ForeignKeyViolation):
            return NotFound(USER_GONE)
        if isinstance(exc, psycopg.Error):
            return Unavailable(f"PostgreSQL store at {self._where} failed: "
                               f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        return None

    def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (tests; irreversible)."""
        if self.schema is None:
            raise InvalidArgument("drop_schema() needs a store opened with ?schema=NAME.")
        self._run(lambda tx: tx.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    #: how long close() waits for the transactions still running in other threads
    close_wait_s = 60.0

    def close(self) -> None:
        """Close the connections once no other thread's transaction is using them
        (calls made after this one are refused; a transaction still running after
        :attr:`close_wait_s` keeps its connection until it ends, closed then). The
        watchdog runs meanwhile: a transaction waiting on a server that stopped
        answering ends at the query timeout."""
        with self._idle_cv:
            self._closed = True
            self._idle_cv.wait_for(lambda: self._in_use == 0, timeout=self.close_wait_s)
        if self._pool.watchdog is not None:
            self._pool.watchdog.close()
        self._pool.close()
