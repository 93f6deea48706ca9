"""The SQL implementation shared by the SQLite and PostgreSQL backends.

Backends supply connections and transactions (:meth:`SqlStore._transaction`), the list
of migrations, the row-lock clause and the error classification; every query is
written once here, with ``?`` placeholders (rewritten to ``%s`` for psycopg).
Statements that both dialects accept: ``INSERT ... ON CONFLICT ... DO NOTHING / DO
UPDATE``, ``UPDATE ... RETURNING``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import logging
import math
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from .._validation import check_finite_nonnegative, check_finite_positive, check_int_range
from ..errors import (
    AlreadyExists,
    AnotherDeviceBound,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NacfError,
    NotFound,
    TemplateUnreadable,
    Unavailable,
)
from .base import (
    DEVICE_CHANGED,
    TEMPLATE_CHANGED,
    Attempt,
    AuthOutcome,
    AuthState,
    DeviceRecord,
    KeyRotation,
    LockoutState,
    Session,
    Stats,
    Store,
    TemplateRecord,
    UserPage,
    UserRecord,
    _now,
    check_time,
    utc_day_start,
)
from .crypto import Cipher

__all__ = ["USER_GONE", "SqlStore", "Tx"]

log = logging.getLogger("nacf.store")
T = TypeVar("T")

_MAX_ID = 256
#: the most stream windows ``add_session_window`` keeps per session
_MAX_KEEP = 1_000_000
#: audit rows (``record_attempt``) of account changes, which ``stats`` does not count
ACCOUNT_CHANGE_METHODS = ("Enroll", "RegisterDevice", "EndUserSessions", "DeleteUser",
                          "UnlockUser")
_KEYCHECK = b"nacf-template-key-check"
#: ``NotFound`` message of a write that breaks a foreign key: every one references
#: users(user_id), so the user was deleted by a concurrent transaction
USER_GONE = ("the user was deleted while this call ran (a concurrent DeleteUser); nothing "
             "was written.")


class _StaleKey(Exception):
    """A write encrypted under a key that is not the store's any more (the key was rotated
    by another process, or by this one while the write waited): rolled back."""

    def __init__(self, store_key_id: str) -> None:
        super().__init__(store_key_id)
        self.store_key_id = store_key_id


class _NotStoreKey(FailedPrecondition):
    """A row under a key that is not the store's, in a store whose key this process has:
    the row is damaged (see :meth:`SqlStore._check_row_key`)."""


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name!r} must be a str, got {type(value).__name__} instead.")
    if not value or len(value) > _MAX_ID or not value.isprintable():
        raise InvalidArgument(
            f"{name!r} must be 1-{_MAX_ID} printable characters, got {value[:40]!r}"
            f"{'...' if len(value) > 40 else ''} ({len(value)} characters)."
        )
    return value


def _check_time(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name!r} must be unix seconds (a real number), got {value!r}.") from None
    except OverflowError:  # an int no float holds
        raise InvalidArgument(f"{name!r} must be finite unix seconds, got a number too "
                              "large for a float.") from None
    return check_time(name, v, value)


#: the highest token-bucket refill rate (the configuration's bound on rate_limit_per_s):
#: a purge's refill (idle seconds x rate) then stays far from overflowing a DOUBLE
#: PRECISION, which on PostgreSQL was an error (UNAVAILABLE) on every later purge
MAX_RATE_PER_S = 1e9


def _check_rate(value: Any) -> float:
    rate = check_finite_nonnegative("rate_per_s", value)
    if rate > MAX_RATE_PER_S:
        raise InvalidArgument(f"'rate_per_s' must be at most {MAX_RATE_PER_S:g} tokens per "
                              f"second, got {value!r}.")
    return rate


def _host_clock_id() -> str:
    """This host's clock, as a name: Linux's boot id (every process and container on the
    host reads one wall clock), else the host name."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read(64).strip()
    except OSError:
        boot = ""
    return (boot or socket.gethostname() or "unknown")[:64]


def _check_fingerprints(name: str, values: Any) -> list[bytes]:
    """PAD fingerprints: an iterable of non-empty bytes. One bytes object given for the
    list, or an item that is no bytes (``bytes(97)`` is 97 zero bytes), is refused: stored,
    it was no fingerprint, in the history every authentication of the user reads."""
    if isinstance(values, (str, bytes, bytearray, memoryview)) or not isinstance(
            values, Iterable):
        raise TypeError(f"{name!r} must be a list of bytes, got {type(values).__name__} "
                        "instead.")
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name!r} must be a list of bytes, got {type(v).__name__} at "
                            f"index {i}.")
        v = bytes(v)
        if not v:
            raise InvalidArgument(f"{name!r} at index {i} is empty: expected a PAD "
                                  "fingerprint (nacf_core.pad.fingerprint).")
        out.append(v)
    return out


def _storable_text(s: str) -> bool:
    """Whether both backends store ``s`` as it is: no NUL (PostgreSQL text holds none) and
    valid UTF-8 (no lone surrogate)."""
    if "\x00" in s:
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _audit_text(name: str, value: Any, size: int) -> str:
    """An audit row's free text (``str(value)``, its first ``size`` characters); a NUL or a
    lone surrogate in it is refused (PostgreSQL's DataError was answered UNAVAILABLE)."""
    text = str(value)[:size]
    if not _storable_text(text):
        raise InvalidArgument(f"{name!r} must be text without NUL or lone surrogates, got "
                              f"{text[:40]!r}.")
    return text


def _is_current(user: tuple, template_id: tuple[int, float]) -> bool:
    """Whether ``template_id`` (``(version, created_at)``) is the template in place,
    judged from the user's row ``(template_version, updated_at)``: ``put_template``
    alone writes that row, with the template, and the same time in both (an account
    deleted and enrolled again since starts its versions anew, at another time; no
    clock order is assumed: a clock stepped back changes nothing)."""
    return (int(user[0]) == int(template_id[0])
            and float(user[1]) == float(template_id[1]))


def _check_stamp_pair(name: str, value: Any) -> tuple:
    """``finish_authentication``'s ``template_id`` (``(version, created_at)``) or
    ``device_key`` (``(device_id, created_at)``): the pair, checked, with its time as a
    float."""
    form = "(version, created_at)" if name == "template_id" else "(device_id, created_at)"
    try:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) \
                or len(value) != 2:
            raise TypeError("no pair")
        if name == "template_id":
            first = check_int_range("version", value[0], 0)
        else:
            first = _check_id("device_id", value[0])
        return first, _check_time("created_at", value[1])
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name!r} must be a pair {form} as the store read it, got "
                        f"{value!r:.60} ({exc})") from None


def _check_token(token: Any) -> str:
    """A session token as a caller gives it: a non-empty str that is UTF-8 (it is hashed
    as such; a lone surrogate raised a codec error naming nothing)."""
    if not isinstance(token, str) or not token:
        raise InvalidArgument("'token' must be a non-empty session token string.")
    if not _storable_text(token.replace("\x00", "")):
        raise InvalidArgument("'token' must be a session token string, got one with a lone "
                              "surrogate (no UTF-8).")
    return token


def token_hash(token: str) -> str:
    """The stored form of a session token: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tx:
    """A transaction handle: ``query`` returns rows, ``execute`` returns the row count."""

    def __init__(self, cursor: Any, paramstyle: str) -> None:
        self._cur = cursor
        self._pg = paramstyle == "format"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pg else sql

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        self._cur.execute(self._sql(sql), params)
        return list(self._cur.fetchall())

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: tuple = ()) -> int:
        self._cur.execute(self._sql(sql), params)
        return self._cur.rowcount

    def columns(self, table: str) -> list[str]:
        """The column names of ``table`` (a name this module wrote, never user input)."""
        self._cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        return [d[0] for d in self._cur.description]


class SqlStore(Store):
    """Common logic; see :class:`nacf_core.store.base.Store` for the contract.

    _RELOCK: a read-modify-write first makes sure its row exists (``INSERT ... ON
    CONFLICT DO NOTHING``), then locks it (``SELECT ... FOR UPDATE``). On PostgreSQL
    (READ COMMITTED) the INSERT that found the row neither waits for it nor locks it, so
    another replica may delete it (UnlockUser, DeleteUser) and commit before the SELECT,
    which then finds nothing; the INSERT runs again (a new statement sees the delete and
    inserts the row). SQLite's BEGIN IMMEDIATE leaves no such gap.
    """

    #: ``(version, name, [statements])`` in order; set by the backend.
    MIGRATIONS: list[tuple[int, str, list[str]]] = []
    #: appended to SELECTs that must lock the row they read.
    FOR_UPDATE = ""
    max_retries = 8
    #: rows per query of :meth:`iter_templates` (one short read transaction each)
    iter_page_size = 500

    def __init__(self, key: Any) -> None:
        self._cipher = Cipher(key)
        # keys this process has used (after rotate_key), to read rows a concurrent
        # writer encrypted under the previous key just before the rotation committed
        self._known = {self._cipher.key_id: self._cipher}
        self._closed = False
        self._fp_plain: dict[tuple, bytes] = {}
        self._fp_size = 0
        self._fp_lock = threading.Lock()
        #: why the last write failed (None once a write succeeds): see :meth:`ping`
        self._write_failure: str | None = None
        #: use_nonce's marks: this object's random prefix and a count (unique per call,
        #: with no random bytes to read per call)
        self._claim_prefix = secrets.token_hex(8) + "-"
        self._claims = itertools.count()

    # -- backend hooks -------------------------------------------------------------
    def _transaction(self, write: bool) -> AbstractContextManager[Tx]:  # pragma: no cover
        raise NotImplementedError

    def _is_retryable(self, exc: BaseException, elapsed_s: float) -> bool:  # pragma: no cover
        """Whether a failed transaction (that ran ``elapsed_s``) is worth retrying."""
        raise NotImplementedError

    def _translate(self, exc: BaseException) -> BaseException | None:  # pragma: no cover
        """Map a driver error to a domain error (or None to re-raise as is)."""
        raise NotImplementedError

    def _is_contention(self, exc: BaseException) -> bool:
        """Whether a failed write only waited too long for other writers (the store
        itself works: readiness need not probe it)."""
        return False

    def _commit_lost(self, exc: BaseException) -> bool:
        """Whether a failed write sent its COMMIT and lost the answer (it may have been
        applied; PostgreSQL: a connection lost then). Such a write is run again only when
        the caller says it is idempotent (:meth:`_run`)."""
        return False

    def _migration_lock(self, tx: Tx) -> None:
        """Serialise concurrent ``migrate()`` calls (SQLite: BEGIN IMMEDIATE does it)."""

    def _relaxed_durability(self, tx: Tx) -> None:
        """This transaction may be lost in a database crash (PostgreSQL: asynchronous
        commit); used only for the rate-limit token buckets."""

    def _after_delete(self) -> None:
        """Backend hook after a user's rows were deleted (SQLite: checkpoint)."""

    def _rotation_lock(self, tx: Tx) -> None:
        """Hold every write to the encrypted tables until this rotation ends (SQLite: BEGIN
        IMMEDIATE does it)."""

    # -- plumbing ------------------------------------------------------------------
    def _run(self, fn: Callable[[Tx], T], *, write: bool = True,
             idempotent: bool = False) -> T:
        """``fn`` in a transaction, run again on the errors the backend retries; with
        ``idempotent`` (running it again after it was applied changes nothing and returns
        what it returned) also after a COMMIT whose answer was lost (:meth:`_commit_lost`),
        which is otherwise ``OutcomeUnknown``."""
        if self._closed:
            raise FailedPrecondition("The store is closed.")
        delay = 0.002
        for attempt in range(self.max_retries):
            t0 = time.monotonic()
            try:
                with self._transaction(write) as tx:
                    out = fn(tx)
                if write and self._write_failure is not None:
                    self._write_failure = None
                return out
            except NacfError:
                raise
            except _StaleKey as exc:
                known = self._known.get(exc.store_key_id)
                if known is not None and attempt < self.max_retries - 1:
                    # rotated by this process meanwhile: encrypt under the new key; or a
                    # rotation of this process whose outcome it could not read (a lost
                    # COMMIT answer, rotate_key): the store's key is one it has, use it
                    self._cipher = known
                    continue
                raise FailedPrecondition(
                    f"The store's template key was rotated (the store is under key id "
                    f"{exc.store_key_id}; this process has key id {self._cipher.key_id}): "
                    "restart it with the new key. Nothing was written.") from None
            except Exception as exc:  # driver errors only: classify, retry or translate
                if ((self._is_retryable(exc, time.monotonic() - t0)
                     or (idempotent and self._commit_lost(exc)))
                        and attempt < self.max_retries - 1):
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 0.2)
                    continue
                mapped = self._translate(exc)
                if (write and isinstance(mapped, Unavailable)
                        and not self._is_contention(exc)):
                    self._write_failure = str(mapped)
                if mapped is None:
                    raise
                raise mapped from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _tx_relock(self, tx: Tx, insert: str, insert_args: tuple, select: str,
                   select_args: tuple, *, on_insert: Callable[[bool], None] | None = None,
                   read_new: bool = True) -> tuple[bool, tuple | None]:
        """Make sure a row exists and lock it (see _RELOCK): ``insert`` (an ``INSERT ...
        ON CONFLICT DO NOTHING``), then ``select`` with :attr:`FOR_UPDATE`; when the
        SELECT finds nothing (another replica deleted the row since the INSERT found it),
        both again. ``on_insert(created)`` runs after each INSERT (it may refuse: raise);
        with ``read_new`` False a row the INSERT created is not read (``(True, None)``).
        Returns whether the last INSERT created the row, and the row read."""
        while True:
            created = tx.execute(insert, insert_args) == 1
            if on_insert is not None:
                on_insert(created)
            if created and not read_new:
                return True, None
            row = tx.one(select + self.FOR_UPDATE, select_args)
            if row is not None:
                return created, row

    def _foreign_tables(self, tx: Tx) -> list[str]:
        """The tables of another application in a database that holds no nacf store
        (SQLite: a file of its own is required; PostgreSQL: none, a schema may be
        shared)."""
        return []

    def _has_store_tables(self, tx: Tx) -> bool:  # pragma: no cover
        """Whether the database holds a nacf store (its ``schema_migrations`` table)."""
        raise NotImplementedError

    def _open(self, create: bool = True) -> None:
        """Run migrations and check the key against the store's key check; with ``create``
        False, ``NotFound`` (and nothing written) unless the store exists already."""
        try:
            if not create and not self._run(self._has_store_tables, write=False):
                raise NotFound(f"There is no nacf store at {self._describe()}: create it "
                               "with `nacf store migrate` (or check the URL).")
            self.migrate()
            # run again after a lost COMMIT answer: the row is inserted once, then read
            self._run(self._check_key, idempotent=True)
        except BaseException:
            # refused (a wrong key, a store of a newer nacf, none there) or failed: the
            # connections, pool and lock file opened so far go with it, not to the caller
            self.close()
            raise

    def _describe(self) -> str:
        """Where the store is, for messages (no password)."""
        return repr(self)

    def _check_key(self, tx: Tx) -> None:
        kid, ct = self._cipher.encrypt(_KEYCHECK, Cipher.aad("keycheck"))
        tx.execute("INSERT INTO store_meta (k, key_id, v) VALUES ('keycheck', ?, ?) "
                   "ON CONFLICT (k) DO NOTHING", (kid, ct))
        row = tx.one("SELECT key_id, v FROM store_meta WHERE k = 'keycheck'")
        assert row is not None
        if row[0] != self._cipher.key_id:
            raise FailedPrecondition(
                f"Wrong template key: this store was written with key id {row[0]}, but the "
                f"configured key ({self._cipher.source}) has id {self._cipher.key_id}: "
                f"give the key this store was written with."
            )
        self._cipher.decrypt(row[0], row[1], Cipher.aad("keycheck"), "The store's key check")

    @staticmethod
    def _tx_check_write_key(tx: Tx, key_id: str) -> None:
        """Raise :class:`_StaleKey` unless ``key_id``, which this write encrypted under, is
        the store's key. Run after the write's INSERTs and UPDATEs: on PostgreSQL they
        wait for a rotation's table locks (READ COMMITTED: this read then sees its
        commit); on SQLite the write lock orders them."""
        row = tx.one("SELECT key_id FROM store_meta WHERE k = 'keycheck'")
        if row is not None and row[0] != key_id:
            raise _StaleKey(row[0])

    def _dec(self, key_id: str, blob: bytes, aad: bytes, what: str) -> bytes:
        cipher = self._known.get(key_id)
        if cipher is None:
            self._check_row_key(key_id, what)
            cipher = self._cipher
        return cipher.decrypt(key_id, blob, aad, what)

    def _check_row_key(self, key_id: str, what: str) -> None:
        """A row under a key this process never had: :class:`_NotStoreKey` when the
        store's key is one it has (the row alone is at fault: damaged, and left under its
        key by a rotation that could not read it); nothing when not (another process
        rotated the store, every row fails alike, ``Cipher.decrypt`` says so)."""
        row = self._run(lambda tx: tx.one(
            "SELECT key_id FROM store_meta WHERE k = 'keycheck'"), write=False)
        if row is not None and row[0] in self._known:
            raise _NotStoreKey(
                f"{what} was encrypted with key id {key_id}, not with the store's key (id "
                f"{row[0]}): the row is damaged (a key rotation leaves a row it cannot read "
                f"as it was).")

    @property
    def key_id(self) -> str:
        return self._cipher.key_id

    # -- migrations ----------------------------------------------------------------
    def migrate(self) -> list[int]:
        def fn(tx: Tx) -> list[int]:
            self._migration_lock(tx)
            foreign = self._foreign_tables(tx)
            if foreign:
                raise FailedPrecondition(
                    f"{self._describe()} holds tables of another application "
                    f"({', '.join(foreign[:8])}{', ...' if len(foreign) > 8 else ''}) and no "
                    "nacf store: give nacf a database file of its own.")
            tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                       "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                       "applied_at DOUBLE PRECISION NOT NULL)")
            cols = tx.columns("schema_migrations")
            if sorted(cols) != ["applied_at", "name", "version"]:
                # another application's migration tool (Rails, dbmate, golang-migrate...)
                # keeps a table of that name: its versions are not nacf's
                where = ("a PostgreSQL schema of its own (?schema=NAME in the store URL)"
                         if self.backend == "postgresql" else "a database file of its own")
                raise FailedPrecondition(
                    f"{self._describe()} holds a schema_migrations table that is not nacf's "
                    f"(columns {', '.join(cols)}): another application's migrations. Give "
                    f"nacf {where}.")
            done = {r[0] for r in tx.query("SELECT version FROM schema_migrations")}
            known = max(v for v, _, _ in self.MIGRATIONS)
            if done and max(done) > known:  # its tables mean what this code does not know
                raise FailedPrecondition(
                    f"The {self.backend} store is at schema version {max(done)}, migrated by "
                    f"a newer nacf; this nacf knows version {known} at most. Run the newer "
                    "nacf (or restore the store from before the upgrade).")
            applied = []
            for version, name, statements in self.MIGRATIONS:
                if version in done:
                    continue
                for stmt in statements:
                    tx.execute(stmt)
                tx.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                           "VALUES (?, ?, ?)", (version, name, time.time()))
                applied.append(version)
            return applied

        # run again after a lost COMMIT answer (an open during a failover): the versions
        # applied are skipped then (and not logged as applied by this call)
        applied = self._run(fn, idempotent=True)
        if applied:
            log.info("store schema migrated", extra={"backend": self.backend,
                                                      "versions": applied})
        return applied

    def schema_version(self) -> int:
        row = self._run(lambda tx: tx.one("SELECT MAX(version) FROM schema_migrations"),
                        write=False)
        return int(row[0] or 0) if row else 0

    def ping(self) -> None:
        """A read; and while the last write failed (a read-only file or connection, a
        full disk), a write that leaves nothing behind, so readiness says so, and says
        when writes work again, even with no traffic. The write must reach the disk: an
        UPDATE that matches no row needs a writable store, but its commit writes
        nothing (no SQLite WAL frame, no PostgreSQL WAL record), so with the disk full it
        succeeded and readiness said ready while every write failed. A row of
        :attr:`write_probe_bytes` (random: it does not compress) inserted and deleted in
        one transaction is written by the commit: about as much as an enrollment (a
        smaller probe fits in the space a failed bigger write left)."""
        self._run(lambda tx: tx.one("SELECT 1"), write=False)
        if self._write_failure is not None:
            self._run(self._tx_write_probe)

    #: what the readiness check writes (and deletes) while writes fail (see :meth:`ping`)
    write_probe_bytes = 64 << 10

    def _tx_write_probe(self, tx: Tx) -> None:
        tx.execute("INSERT INTO store_meta (k, key_id, v) VALUES ('write-probe', '', ?)",
                   (secrets.token_bytes(int(self.write_probe_bytes)),))
        tx.execute("DELETE FROM store_meta WHERE k = 'write-probe'")

    # -- users and templates -------------------------------------------------------
    def _template_aad(self, user_id: str, version: int, model_version: str) -> bytes:
        return Cipher.aad("template", user_id, version, model_version)

    def put_template(self, user_id, blob, model_version, meta=None, *, create_only=False,
                     expected_version=None, enroll_fingerprints=None, now=None,
                     deadline=None) -> int:
        return self._put_template(user_id, blob, model_version, meta, create_only,
                                  expected_version, enroll_fingerprints, now, deadline,
                                  None)[0]

    def put_template_ending_sessions(self, user_id, blob, model_version, meta=None, *,
                                     reason, create_only=False, expected_version=None,
                                     enroll_fingerprints=None, now=None, deadline=None
                                     ) -> tuple[int, list[Session]]:
        _check_id("reason", reason)
        version, rows = self._put_template(user_id, blob, model_version, meta, create_only,
                                           expected_version, enroll_fingerprints, now,
                                           deadline, reason)
        return version, [self._session(r) for r in rows]

    def _put_template(self, user_id, blob, model_version, meta, create_only,
                      expected_version, enroll_fingerprints, now, deadline,
                      end_reason: str | None) -> tuple[int, list[tuple]]:
        _check_id("user_id", user_id)
        _check_id("model_version", model_version)
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError(f"'blob' must be bytes, got {type(blob).__name__} instead.")
        blob = bytes(blob)
        if not blob:
            raise InvalidArgument("'blob' must be a non-empty template (Template.to_bytes()).")
        if expected_version is not None:
            expected_version = check_int_range("expected_version", expected_version, 0)
        if deadline is not None:
            deadline = check_finite_nonnegative("deadline", deadline)
        try:
            meta_json = json.dumps(dict(meta or {}), sort_keys=True)
        except (TypeError, ValueError, RecursionError) as exc:  # (nested too deep)
            raise InvalidArgument(f"'meta' must be JSON-serialisable: {exc}.") from None
        t = _now(now)
        fps = None if enroll_fingerprints is None else _check_fingerprints(
            "enroll_fingerprints", enroll_fingerprints)

        def refuse_existing(created: bool) -> None:
            if create_only and not created:
                raise AlreadyExists(f"User {user_id!r} is already enrolled; "
                                    f"update it explicitly to replace its template.")

        def fn(tx: Tx) -> tuple[int, list[tuple]]:
            # encrypted in the transaction, under the key in use now (see _tx_check_write_key)
            cipher = self._cipher
            # a user deleted by another replica since the INSERT found it is enrolled anew
            _, row = self._tx_relock(
                tx, "INSERT INTO users (user_id, status, created_at, updated_at, "
                "template_version, model_version) VALUES (?, 'active', ?, ?, 0, NULL) "
                "ON CONFLICT (user_id) DO NOTHING", (user_id, t, t),
                "SELECT template_version FROM users WHERE user_id = ?", (user_id,),
                on_insert=refuse_existing)
            current = int(row[0])
            if expected_version is not None and current != expected_version:
                raise FailedPrecondition(
                    f"Template of user {user_id!r} is at version {current}, "
                    f"expected {expected_version} (changed concurrently).")
            new = current + 1
            kid, ct = cipher.encrypt(blob, self._template_aad(user_id, new, model_version))
            tx.execute("UPDATE users SET template_version = ?, model_version = ?, "
                       "updated_at = ? WHERE user_id = ?", (new, model_version, t, user_id))
            tx.execute(
                "INSERT INTO templates (user_id, version, model_version, key_id, "
                "ciphertext, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, "
                "model_version = excluded.model_version, key_id = excluded.key_id, "
                "ciphertext = excluded.ciphertext, meta = excluded.meta, "
                "created_at = excluded.created_at",
                (user_id, new, model_version, kid, ct, meta_json, t))
            if fps is not None:  # the enrollment's PAD fingerprints, same transaction
                tx.execute("DELETE FROM pad_fingerprints WHERE user_id = ? AND kind = 'enroll'",
                           (user_id,))
                self._tx_fingerprints(tx, user_id, "enroll", [
                    (user_id, "enroll", t) + cipher.encrypt(
                        fp, Cipher.aad("pad", user_id, "enroll")) for fp in fps])
            self._tx_check_write_key(tx, kid)
            ended: list[tuple] = []
            if end_reason is not None and new > 1:
                # the sessions verified against the template replaced, in its transaction:
                # one opened on the new template just after it is not ended too
                ended = self._tx_end_sessions(tx, user_id, end_reason, t)
            if deadline is not None and time.monotonic() > deadline:
                # rolled back: the caller's client has been told the call failed
                raise DeadlineExceeded(
                    "the call's deadline passed while the store was busy (waiting for its "
                    "writer lock or a row lock): nothing was written; retry.")
            return new, ended

        return self._run(fn)

    def _decrypt_template(self, row: tuple) -> TemplateRecord:
        """The record of a template row, decrypted. A row that does not decrypt is
        ``TemplateUnreadable`` (re-enrolling replaces it), unless its key is the one a
        rotation by another process switched the store to: then this process holds the
        old key and every row fails alike, the store's ``FailedPrecondition`` as before."""
        user_id, version, model_version, kid, ct, meta, created = row
        what = f"The template of user {user_id!r} (version {version})"
        try:
            blob = self._dec(kid, ct, self._template_aad(user_id, version, model_version),
                             what)
        except FailedPrecondition as exc:
            # altered, truncated, moved from another row, or under a key the store no
            # longer has; not when another process rotated the store (this one holds
            # the old key: every row fails alike)
            if kid not in self._known and not isinstance(exc, _NotStoreKey):
                raise
            raise TemplateUnreadable(
                f"{exc} It cannot be read: re-enroll the user (Enroll with update=true) "
                "to replace it.", user_id) from None
        return TemplateRecord(user_id=user_id, version=int(version),
                              model_version=model_version, blob=blob,
                              meta=json.loads(meta), created_at=float(created),
                              stamp=str(kid).encode() + bytes(ct[:12]))

    _TEMPLATE_COLS = "t.user_id, t.version, t.model_version, t.key_id, t.ciphertext, " \
                     "t.meta, t.created_at"

    def get_template(self, user_id: str) -> TemplateRecord:
        _check_id("user_id", user_id)
        row = self._run(lambda tx: tx.one(
            f"SELECT {self._TEMPLATE_COLS} FROM templates t WHERE t.user_id = ?",
            (user_id,)), write=False)
        if row is None:
            raise NotFound(f"Unknown user {user_id!r}: no enrolled template.")
        return self._decrypt_template(row)

    def iter_templates(self, model_version: str | None = None) -> Iterator[TemplateRecord]:
        if model_version is not None:
            _check_id("model_version", model_version)
        last = ""
        while True:
            sql = (f"SELECT {self._TEMPLATE_COLS} FROM templates t JOIN users u "
                   "ON u.user_id = t.user_id WHERE u.status = 'active' AND t.user_id > ?")
            params: tuple = (last,)
            if model_version is not None:
                sql += " AND t.model_version = ?"
                params += (model_version,)
            sql += f" ORDER BY t.user_id LIMIT {int(self.iter_page_size)}"
            rows = self._run(lambda tx, sql=sql, params=params: tx.query(sql, params),
                             write=False)
            for row in rows:
                yield self._decrypt_template(row)
            if len(rows) < self.iter_page_size:
                return
            last = rows[-1][0]

    #: templates fetched per statement by read_gallery (bound parameters stay well
    #: under SQLite's and PostgreSQL's limits)
    gallery_chunk = 500

    def read_gallery(self, model_version, known=None):
        _check_id("model_version", model_version)
        if known is not None and not isinstance(known, Mapping):
            raise TypeError(f"'known' must be a mapping of user id to stamp (or None), got "
                            f"{type(known).__name__}.")
        known = known or {}

        def fn(tx: Tx) -> tuple[list, list]:
            # the nonce is the ciphertext's first 12 bytes (Cipher.encrypt)
            listing = [(r[0], str(r[1]).encode() + bytes(r[2])) for r in tx.query(
                "SELECT t.user_id, t.key_id, substr(t.ciphertext, 1, 12) FROM templates t "
                "JOIN users u ON u.user_id = t.user_id WHERE u.status = 'active' "
                "AND t.model_version = ? ORDER BY t.user_id", (model_version,))]
            todo = [u for u, st in listing if known.get(u) != st]
            rows = []
            for i in range(0, len(todo), self.gallery_chunk):
                part = todo[i:i + self.gallery_chunk]
                rows += tx.query(f"SELECT {self._TEMPLATE_COLS} FROM templates t WHERE "
                                 f"t.user_id IN ({', '.join('?' * len(part))})", tuple(part))
            return listing, rows

        listing, rows = self._run(fn, write=False)
        fresh: dict[str, TemplateRecord | TemplateUnreadable] = {}
        for r in rows:
            try:
                fresh[r[0]] = self._decrypt_template(r)
            except TemplateUnreadable as exc:  # one damaged row does not hide the others
                fresh[r[0]] = exc
        return listing, fresh

    def template_stamps(self, user_ids):
        ids = sorted({_check_id("user_id", u) for u in user_ids})

        def fn(tx: Tx) -> dict[str, bytes]:
            out = {}
            if len(ids) > 4 * self.gallery_chunk:
                # most of the store (Identify's gallery holds every user): one scan, ~10x
                # cheaper than the lookups (20 000 users on PostgreSQL: 10 against 150 ms)
                wanted = set(ids)
                return {r[0]: str(r[1]).encode() + bytes(r[2]) for r in tx.query(
                    "SELECT user_id, key_id, substr(ciphertext, 1, 12) FROM templates")
                    if r[0] in wanted}
            for i in range(0, len(ids), self.gallery_chunk):
                part = ids[i:i + self.gallery_chunk]
                for r in tx.query("SELECT user_id, key_id, substr(ciphertext, 1, 12) FROM "
                                  f"templates WHERE user_id IN ({', '.join('?' * len(part))})",
                                  tuple(part)):
                    out[r[0]] = str(r[1]).encode() + bytes(r[2])  # as read_gallery's
            return out

        return self._run(fn, write=False) if ids else {}

    _USER_SQL = (
        "SELECT u.user_id, u.status, u.created_at, u.updated_at, u.template_version, "
        "u.model_version, COALESCE(l.failures, 0), l.locked_until, "
        "(SELECT COUNT(*) FROM devices d WHERE d.user_id = u.user_id) "
        "FROM users u LEFT JOIN lockouts l ON l.user_id = u.user_id ")

    @staticmethod
    def _user(row: tuple) -> UserRecord:
        return UserRecord(user_id=row[0], status=row[1], created_at=float(row[2]),
                          updated_at=float(row[3]), template_version=int(row[4]),
                          model_version=row[5], failures=int(row[6]),
                          locked_until=None if row[7] is None else float(row[7]),
                          n_devices=int(row[8]))

    def get_user(self, user_id: str) -> UserRecord:
        _check_id("user_id", user_id)
        row = self._run(lambda tx: tx.one(self._USER_SQL + "WHERE u.user_id = ?",
                                          (user_id,)), write=False)
        if row is None:
            raise NotFound(f"Unknown user {user_id!r}.")
        return self._user(row)

    def list_users(self, page_size: int = 100, page_token: str = "") -> UserPage:
        page_size = check_int_range("page_size", page_size, 1, 1000)
        if not isinstance(page_token, str):
            raise TypeError(f"'page_token' must be a str, got {type(page_token).__name__}.")
        after = ""
        if page_token:
            try:
                after = base64.b64decode(page_token.encode(), altchars=b"-_",
                                         validate=True).decode("utf-8")
                # a user id, as the store issued it (a NUL reached PostgreSQL as a
                # DataError, answered UNAVAILABLE with the store's address)
                if not after or len(after) > _MAX_ID or not after.isprintable():
                    raise ValueError("not a user id")
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"'page_token' is not a token this store issued: "
                                      f"{page_token[:40]!r}.") from None
        rows = self._run(lambda tx: tx.query(
            self._USER_SQL + "WHERE u.user_id > ? ORDER BY u.user_id LIMIT ?",
            (after, page_size + 1)), write=False)
        users = [self._user(r) for r in rows[:page_size]]
        token = ""
        if len(rows) > page_size:
            token = base64.urlsafe_b64encode(users[-1].user_id.encode()).decode()
        return UserPage(users=users, next_page_token=token)

    def delete_user(self, user_id: str, *, now=None) -> list[Session]:
        _check_id("user_id", user_id)
        t = _now(now)

        def fn(tx: Tx) -> list[tuple]:
            if tx.one("SELECT 1 FROM users WHERE user_id = ?" + self.FOR_UPDATE,
                      (user_id,)) is None:
                raise NotFound(f"Unknown user {user_id!r}.")
            # not ended yet: those still active, and those expired that no sweep has
            # ended (expire_sessions would have); locked, so an end committed by another
            # replica before the delete below is not reported ended here too
            open_ = tx.query(f"SELECT {self._SESSION_SELECT} FROM sessions WHERE user_id = ? "
                             "AND ended_at IS NULL" + self.FOR_UPDATE, (user_id,))
            tx.execute("DELETE FROM device_nonces WHERE device_id IN "
                       "(SELECT device_id FROM devices WHERE user_id = ?)", (user_id,))
            for table in ("templates", "devices", "session_windows", "sessions",
                          "pad_fingerprints", "lockouts", "users"):
                tx.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            return open_

        rows = self._run(fn)
        self._after_delete()
        # and the plaintexts of its PAD fingerprints this process keeps (biometric data)
        self._forget_fingerprints(user_id)
        return [self._session((*r[:4], t, "user_deleted", *r[6:])) if float(r[3]) > t
                else self._session((*r[:4], r[3], "expired", *r[6:])) for r in rows]

    # -- devices and nonces --------------------------------------------------------
    def register_device(self, user_id, device_id, secret, *, replace=True, first_only=False,
                        now=None, deadline=None) -> DeviceRecord:
        return self._register_device(user_id, device_id, secret, replace, first_only, now,
                                     deadline, None)[0]

    def register_device_ending_sessions(self, user_id, device_id, secret, *, reason,
                                        replace=True, first_only=False, now=None,
                                        deadline=None) -> tuple[DeviceRecord, list[Session]]:
        _check_id("reason", reason)
        rec, rows = self._register_device(user_id, device_id, secret, replace, first_only,
                                          now, deadline, reason)
        return rec, [self._session(r) for r in rows]

    def _register_device(self, user_id, device_id, secret, replace, first_only, now,
                         deadline, end_reason: str | None
                         ) -> tuple[DeviceRecord, list[tuple]]:
        _check_id("user_id", user_id)
        _check_id("device_id", device_id)
        if not isinstance(secret, str) or len(secret) < 16:
            raise InvalidArgument("'secret' must be a str of at least 16 characters.")
        if not _storable_text(secret.replace("\x00", "")):
            raise InvalidArgument("'secret' must be UTF-8 text, got one with a lone surrogate.")
        if deadline is not None:
            deadline = check_finite_nonnegative("deadline", deadline)
        t = _now(now)

        def fn(tx: Tx) -> tuple[DeviceRecord, list[tuple]]:
            if tx.one("SELECT 1 FROM users WHERE user_id = ?" + self.FOR_UPDATE,
                      (user_id,)) is None:
                raise NotFound(f"Unknown user {user_id!r}: enroll before registering a device.")
            if first_only and tx.one("SELECT 1 FROM devices WHERE user_id = ? AND "
                                     "device_id <> ?", (user_id, device_id)) is not None:
                raise AnotherDeviceBound(f"User {user_id!r} already has a registered "
                                         "device.")
            kid, ct = self._cipher.encrypt(secret.encode(),
                                           Cipher.aad("device", device_id, user_id))
            # a device whose owner was deleted since the INSERT found it is bound anew
            created, row = self._tx_relock(
                tx, "INSERT INTO devices (device_id, user_id, key_id, secret_ct, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO NOTHING",
                (device_id, user_id, kid, ct, t),
                "SELECT user_id FROM devices WHERE device_id = ?", (device_id,),
                read_new=False)
            replaced = not created
            if replaced:
                if row[0] != user_id:
                    raise AlreadyExists(f"Device {device_id!r} is already registered to "
                                        f"another user.")
                if not replace:  # decided here, in the transaction: two racing first
                    # registrations cannot both hand out a secret
                    raise AlreadyExists(f"Device {device_id!r} is already registered to user "
                                        f"{user_id!r}; set rotate=true for a new secret.")
                tx.execute("UPDATE devices SET key_id = ?, secret_ct = ?, created_at = ? "
                           "WHERE device_id = ?", (kid, ct, t, device_id))
            self._tx_check_write_key(tx, kid)
            ended: list[tuple] = []
            if replaced and end_reason is not None:
                # the sessions opened with the secret replaced, in its transaction: a
                # rotation never leaves them open (a stolen headset's)
                ended = self._tx_end_sessions(tx, user_id, end_reason, t, device_id)
            if deadline is not None and time.monotonic() > deadline:
                # rolled back: a secret its caller never receives binds to nobody
                raise DeadlineExceeded(
                    "the call's deadline passed while the store was busy (waiting for its "
                    "writer lock or a row lock): nothing was written; retry.")
            return DeviceRecord(device_id=device_id, user_id=user_id, secret=secret,
                                created_at=t, replaced=replaced), ended

        return self._run(fn)

    def get_device(self, device_id: str) -> DeviceRecord:
        _check_id("device_id", device_id)
        row = self._run(lambda tx: self._tx_get_device(tx, device_id), write=False)
        if row is None:
            raise NotFound(f"Unknown device {device_id!r}: register it with RegisterDevice.")
        return self._dec_device(row)

    @staticmethod
    def _tx_get_device(tx: Tx, device_id: str) -> tuple | None:
        return tx.one("SELECT device_id, user_id, key_id, secret_ct, created_at FROM devices "
                      "WHERE device_id = ?", (device_id,))

    def _dec_device(self, row: tuple) -> DeviceRecord:
        secret = self._dec(row[2], row[3], Cipher.aad("device", row[0], row[1]),
                           f"The secret of device {row[0]!r}")
        return DeviceRecord(device_id=row[0], user_id=row[1], secret=secret.decode(),
                            created_at=float(row[4]))

    def list_devices(self, user_id: str) -> list[DeviceRecord]:
        _check_id("user_id", user_id)

        def fn(tx: Tx):
            if tx.one("SELECT 1 FROM users WHERE user_id = ?", (user_id,)) is None:
                raise NotFound(f"Unknown user {user_id!r}.")
            return tx.query("SELECT device_id, user_id, created_at FROM devices "
                            "WHERE user_id = ? ORDER BY device_id", (user_id,))

        # secrets stay encrypted: listing never decrypts them
        return [DeviceRecord(device_id=r[0], user_id=r[1], secret=None,
                             created_at=float(r[2]))
                for r in self._run(fn, write=False)]

    def device_ids_of(self, user_ids):
        ids = sorted({_check_id("user_id", u) for u in user_ids})

        def fn(tx: Tx) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for i in range(0, len(ids), self.gallery_chunk):
                part = ids[i:i + self.gallery_chunk]
                for uid, dev in tx.query(
                        "SELECT u.user_id, d.device_id FROM users u LEFT JOIN devices d "
                        "ON d.user_id = u.user_id WHERE u.user_id IN "
                        f"({', '.join('?' * len(part))})", tuple(part)):
                    devs = out.setdefault(uid, [])
                    if dev is not None:
                        devs.append(dev)
            return out

        found = self._run(fn, write=False) if ids else {}
        return {u: sorted(d) for u, d in found.items()}

    def use_nonce(self, device_id, nonce, expires_at, *, now=None) -> bool:
        _check_id("device_id", device_id)
        _check_id("nonce", nonce)
        expires_at = _check_time("expires_at", expires_at)
        t = _now(now)
        # this call's mark on the row it inserts: run again after a COMMIT whose answer
        # was lost, it finds its own row (the nonce is fresh: the proof was used once),
        # where another call's, or a row of before schema 4 (NULL), is a replay
        claim = f"{self._claim_prefix}{next(self._claims)}"

        def fn(tx: Tx) -> bool:
            tx.execute("DELETE FROM device_nonces WHERE expires_at <= ?", (t,))
            return tx.execute("INSERT INTO device_nonces (device_id, nonce, expires_at, claim) "
                              "VALUES (?, ?, ?, ?) ON CONFLICT (device_id, nonce) DO UPDATE "
                              "SET claim = excluded.claim "
                              "WHERE device_nonces.claim = excluded.claim",
                              (device_id, nonce, expires_at, claim)) == 1

        return self._run(fn, idempotent=True)

    # -- sessions ------------------------------------------------------------------
    _SESSION_COLS = "token_hash, user_id, created_at, expires_at, ended_at, end_reason, device_id"
    #: what a session read returns (the insert leaves ``last_verified_at`` NULL)
    _SESSION_SELECT = _SESSION_COLS + ", last_verified_at"

    @staticmethod
    def _session(row: tuple, token: str | None = None) -> Session:
        verified = row[7] if len(row) > 7 else None
        return Session(session_id=row[0], user_id=row[1], created_at=float(row[2]),
                       expires_at=float(row[3]),
                       ended_at=None if row[4] is None else float(row[4]),
                       end_reason=row[5], device_id=row[6],
                       last_verified_at=None if verified is None else float(verified),
                       token=token)

    def create_session(self, user_id, ttl_s, *, device_id=None, now=None) -> Session:
        _check_id("user_id", user_id)
        ttl_s = check_finite_positive("ttl_s", ttl_s)
        if device_id is not None:
            _check_id("device_id", device_id)
        t = _now(now)
        token = secrets.token_urlsafe(32)
        row = (token_hash(token), user_id, t, t + ttl_s, None, None, device_id)

        def fn(tx: Tx) -> None:
            if tx.one("SELECT 1 FROM users WHERE user_id = ?" + self.FOR_UPDATE,
                      (user_id,)) is None:
                raise NotFound(f"Unknown user {user_id!r}.")
            tx.execute(f"INSERT INTO sessions ({self._SESSION_COLS}) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", row)

        self._run(fn)
        return self._session(row, token)

    def get_session(self, token: str) -> Session:
        _check_token(token)
        row = self._run(lambda tx: tx.one(
            f"SELECT {self._SESSION_SELECT} FROM sessions WHERE token_hash = ?",
            (token_hash(token),)), write=False)
        if row is None:
            raise NotFound("Unknown session token.")
        return self._session(row)

    def end_session(self, token: str, reason: str = "ended", *, now=None) -> Session:
        _check_token(token)
        _check_id("reason", reason)
        t = _now(now)
        h = token_hash(token)

        def fn(tx: Tx) -> tuple | None:
            # one past its expiry ended then, as expire_sessions records it, not now
            tx.execute("UPDATE sessions SET ended_at = CASE WHEN expires_at > ? THEN ? "
                       "ELSE expires_at END, end_reason = CASE WHEN expires_at > ? THEN ? "
                       "ELSE 'expired' END WHERE token_hash = ? AND ended_at IS NULL",
                       (t, t, t, reason, h))
            return tx.one(f"SELECT {self._SESSION_SELECT} FROM sessions WHERE token_hash = ?",
                          (h,))

        # run again after a lost COMMIT answer: an ended session keeps its first end
        row = self._run(fn, idempotent=True)
        if row is None:
            raise NotFound("Unknown session token.")
        return self._session(row)

    def expire_session(self, token: str, *, now=None) -> Session | None:
        _check_token(token)
        t = _now(now)
        h = token_hash(token)

        def fn(tx: Tx) -> tuple | None:
            rows = tx.query("UPDATE sessions SET ended_at = expires_at, end_reason = 'expired' "
                            "WHERE token_hash = ? AND ended_at IS NULL AND expires_at <= ? "
                            f"RETURNING {self._SESSION_SELECT}", (h, t))
            # its stream windows stay, as an ended session's do (add_session_window)
            return rows[0] if rows else None

        # run again after a lost COMMIT answer: the session is ended then, and None said
        # (the sweep would not count it either)
        row = self._run(fn, idempotent=True)
        return None if row is None else self._session(row)

    def end_user_sessions(self, user_id: str, reason: str, *, device_id: str | None = None,
                          now=None) -> list[Session]:
        _check_id("user_id", user_id)
        _check_id("reason", reason)
        if device_id is not None:
            _check_id("device_id", device_id)
        t = _now(now)
        return [self._session(r) for r in self._run(
            lambda tx: self._tx_end_sessions(tx, user_id, reason, t, device_id))]

    def _tx_end_sessions(self, tx: Tx, user_id: str, reason: str, t: float,
                         device_id: str | None = None) -> list[tuple]:
        """End the user's active sessions (only those opened with ``device_id`` when
        given) at ``t`` with ``reason``, in ``tx``; the rows of those ended. One
        statement: the sessions returned are those it ended (a read, then an update, also
        ended a session another replica opened in between, and did not return it)."""
        where = "user_id = ? AND ended_at IS NULL AND expires_at > ?"
        args: tuple = (user_id, t)
        if device_id is not None:
            where += " AND device_id = ?"
            args += (device_id,)
        return tx.query(f"UPDATE sessions SET ended_at = ?, end_reason = ? WHERE {where} "
                        f"RETURNING {self._SESSION_SELECT}", (t, reason, *args))

    def renew_session(self, token: str, ttl_s: float, *, max_age_s: float | None = None,
                      now=None) -> Session:
        _check_token(token)
        ttl_s = check_finite_positive("ttl_s", ttl_s)
        if max_age_s is not None:
            max_age_s = check_finite_positive("max_age_s", max_age_s)
        t = _now(now)
        h = token_hash(token)

        def fn(tx: Tx) -> tuple | None:
            # only an active session is renewed; never shortened, and never past
            # created_at + max_age_s
            if max_age_s is None:
                new, args = "?", (t + ttl_s,)
            else:
                new = "CASE WHEN created_at + ? < ? THEN created_at + ? ELSE ? END"
                args = (max_age_s, t + ttl_s, max_age_s, t + ttl_s)
            tx.execute(f"UPDATE sessions SET expires_at = CASE WHEN expires_at > {new} "
                       f"THEN expires_at ELSE {new} END, last_verified_at = ? "
                       "WHERE token_hash = ? AND ended_at IS NULL AND expires_at > ?",
                       (*args, *args, t, h, t))
            return tx.one(f"SELECT {self._SESSION_SELECT} FROM sessions WHERE token_hash = ?",
                          (h,))

        # run again after a lost COMMIT answer: at the same `now` it sets the same values
        # (a session it renewed is still active then: its expiry only moved later)
        row = self._run(fn, idempotent=True)
        if row is None:
            raise NotFound("Unknown session token.")
        s = self._session(row)
        if not s.is_active(t):
            raise FailedPrecondition(
                f"Session {s.session_id[:12]}… is no longer active "
                f"({s.end_reason or 'expired'}); authenticate again.")
        return s

    def shorten_sessions(self, ttl_s: float, now=None, *, max_age_s=None) -> int:
        ttl_s = check_finite_positive("ttl_s", ttl_s)
        t = _now(now)
        until = _check_time("now + ttl_s", t + ttl_s)
        if max_age_s is None:
            return int(self._run(lambda tx: tx.execute(
                "UPDATE sessions SET expires_at = ? WHERE ended_at IS NULL AND expires_at > ?",
                (until, until))))
        max_age_s = check_finite_positive("max_age_s", max_age_s)
        # the earlier of now + ttl_s and created_at + max_age_s, for open sessions that
        # expire after either
        return int(self._run(lambda tx: tx.execute(
            "UPDATE sessions SET expires_at = CASE WHEN created_at + ? < ? "
            "THEN created_at + ? ELSE ? END WHERE ended_at IS NULL AND expires_at > ? "
            "AND (expires_at > ? OR expires_at > created_at + ?)",
            (max_age_s, until, max_age_s, until, t, until, max_age_s))))

    def count_active_sessions(self, now=None) -> int:
        t = _now(now)
        row = self._run(lambda tx: tx.one(
            "SELECT COUNT(*) FROM sessions WHERE ended_at IS NULL AND expires_at > ?", (t,)),
            write=False)
        return int(row[0])

    def expire_sessions(self, now=None) -> list[Session]:
        t = _now(now)
        # in batches: a backlog (sessions that expired while no replica ran) is no
        # longer one long transaction
        rows = self._in_batches(
            "UPDATE sessions SET ended_at = expires_at, end_reason = 'expired' WHERE",
            "sessions", "expires_at", "<=", t, where="ended_at IS NULL",
            returning=self._SESSION_SELECT)
        return [self._session(r) for r in rows]

    # -- lockout and rate limits ---------------------------------------------------
    def register_failure(self, user_id, max_failures, lock_seconds, now=None):
        _check_id("user_id", user_id)
        max_failures = check_int_range("max_failures", max_failures, 1)
        lock_seconds = check_finite_positive("lock_seconds", lock_seconds)
        t = _now(now)

        def fn(tx: Tx) -> tuple[int, float | None]:
            # an unknown (or deleted) user's row would outlive it and lock out an account
            # enrolled later under the same id (as finish_authentication refuses)
            if tx.one("SELECT 1 FROM users WHERE user_id = ?" + self.FOR_UPDATE,
                      (user_id,)) is None:
                raise NotFound(f"Unknown user {user_id!r}.")
            return self._tx_failure(tx, user_id, max_failures, lock_seconds, t)

        return self._run(fn)

    def _tx_failure(self, tx: Tx, user_id: str, max_failures: int, lock_seconds: float,
                    t: float) -> tuple[int, float | None]:
        # a row an UnlockUser (or DeleteUser) of another replica deleted since the INSERT
        # found it: this failure starts a new streak
        _, row = self._tx_relock(
            tx, "INSERT INTO lockouts (user_id, failures, locked_until, updated_at) "
            "VALUES (?, 0, NULL, ?) ON CONFLICT (user_id) DO NOTHING", (user_id, t),
            "SELECT failures, locked_until FROM lockouts WHERE user_id = ?", (user_id,))
        failures, locked_until = row
        if locked_until is not None and locked_until <= t:  # lock over: new streak
            failures, locked_until = 0, None
        failures += 1
        if failures >= max_failures and locked_until is None:
            locked_until = t + lock_seconds
        tx.execute("UPDATE lockouts SET failures = ?, locked_until = ?, updated_at = ? "
                   "WHERE user_id = ?", (failures, locked_until, t, user_id))
        return int(failures), None if locked_until is None else float(locked_until)

    def reset_failures(self, user_id: str) -> None:
        _check_id("user_id", user_id)
        self._run(lambda tx: self._tx_reset(tx, user_id), idempotent=True)

    @staticmethod
    def _tx_reset(tx: Tx, user_id: str) -> None:
        tx.execute("UPDATE lockouts SET failures = 0 WHERE user_id = ? AND failures <> 0",
                   (user_id,))

    def unlock_user(self, user_id: str) -> LockoutState:
        _check_id("user_id", user_id)

        def fn(tx: Tx) -> tuple | None:
            if tx.one("SELECT 1 FROM users WHERE user_id = ?", (user_id,)) is None:
                raise NotFound(f"Unknown user {user_id!r}.")
            # what it lifts, read by the statement that deletes it: a failure of another
            # call committed before is lifted and reported, one committed after stays
            return tx.one("DELETE FROM lockouts WHERE user_id = ? "
                          "RETURNING failures, locked_until", (user_id,))

        row = self._run(fn)
        if row is None:
            return LockoutState(0, None)
        return LockoutState(int(row[0]), None if row[1] is None else float(row[1]))

    def get_lockout(self, user_id: str) -> LockoutState:
        _check_id("user_id", user_id)
        row = self._run(lambda tx: tx.one(
            "SELECT failures, locked_until FROM lockouts WHERE user_id = ?", (user_id,)),
            write=False)
        if row is None:
            return LockoutState(0, None)
        return LockoutState(int(row[0]), None if row[1] is None else float(row[1]))

    def shorten_lockouts(self, lock_seconds: float, now=None) -> list[str]:
        lock_seconds = check_finite_positive("lock_seconds", lock_seconds)
        t = _now(now)
        until = _check_time("now + lock_seconds", t + lock_seconds)
        return sorted(r[0] for r in self._run(lambda tx: tx.query(
            "UPDATE lockouts SET locked_until = ? WHERE locked_until > ? RETURNING user_id",
            (until, until))))

    def locked_user_ids(self, now=None) -> set[str]:
        t = _now(now)
        return {r[0] for r in self._run(lambda tx: tx.query(
            "SELECT user_id FROM lockouts WHERE locked_until > ?", (t,)), write=False)}

    #: how far a bucket's ``now`` may fall behind the time the bucket was last refilled to
    #: and still be a call that read its clock before another's commit (a wait for the
    #: row lock, a replica's clock a little behind): no refill, the bucket's time kept.
    #: Further behind, by the clock of the host that set the bucket's time (schema 9:
    #: ``rate_buckets.clock``), the wall clock stepped back (an NTP correction, a VM
    #: restored from a snapshot): no refill either, and the bucket's time follows the
    #: clock, which it then refills by, instead of nothing until the clock caught up. By
    #: another host's, that replica's clock is ahead of this one's: the bucket's time is
    #: kept (moved back, the replica ahead refilled the gap again at each of its takes:
    #: two replicas 5 s apart taking in turn admitted 200 requests in 10 s of a bucket of
    #: 10 at 1/s)
    clock_step_s = 1.0
    #: further behind than this by another host's clock, that clock was wrong (a replica
    #: set hours ahead, then gone): taken as a step, or a dead replica's bad clock would
    #: keep a client's bucket from refilling for as long as it was ahead (replicas this far
    #: apart are broken anyway: each refuses device proofs timed by the other's clock with
    #: the default proof_max_skew_s of 60 s)
    clock_skew_max_s = 300.0
    #: which clock this process's times come from (its host's: every process there
    #: reads the same wall clock), recorded with each bucket's time
    clock_id = _host_clock_id()

    def take_tokens(self, client_id, rate_per_s, burst, want=1, give_back=0.0,
                    now=None) -> int:
        _check_id("client_id", client_id)
        rate = _check_rate(rate_per_s)
        burst = check_finite_positive("burst", burst)
        want = check_int_range("want", want, 1)
        back = check_finite_nonnegative("give_back", give_back)
        t = _now(now)

        clock = self.clock_id

        def fn(tx: Tx) -> int:
            self._relaxed_durability(tx)
            # a bucket another replica's purge deleted since the INSERT found it (it was
            # full): inserted again, full, as a take after the purge finds it
            _, row = self._tx_relock(
                tx, "INSERT INTO rate_buckets (client_id, tokens, updated_at, rate_per_s, "
                "burst, clock) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO NOTHING",
                (client_id, burst, t, rate, burst, clock),
                "SELECT tokens, updated_at, clock FROM rate_buckets WHERE client_id = ?",
                (client_id,))
            tokens, updated, set_by = row
            tokens = min(burst, tokens + max(0.0, t - updated) * rate + back)
            got = min(want, int(math.floor(tokens))) if tokens >= 1.0 else 0
            # refilled up to `updated` already, unless this host's clock stepped back
            # (clock_step_s; a bucket of before schema 9 names no clock: taken for this
            # host's, as before)
            at = updated if t < updated and (
                updated <= t + self.clock_step_s
                or (set_by not in (None, clock) and updated <= t + self.clock_skew_max_s)
            ) else t
            # the rate and capacity go with the bucket: purge_rate_buckets judges by them
            tx.execute("UPDATE rate_buckets SET tokens = ?, updated_at = ?, rate_per_s = ?, "
                       "burst = ?, clock = ? WHERE client_id = ?",
                       (tokens - got, at, rate, burst, clock if at == t else set_by,
                        client_id))
            return got

        return self._run(fn)

    #: how long a bucket stays after it is full again, at the least (see
    #: :meth:`purge_rate_buckets`): clocks of replicas a little apart, a lease's hold
    rate_bucket_idle_s = 60.0

    def purge_rate_buckets(self, rate_per_s, burst, now=None) -> int:
        rate = _check_rate(rate_per_s)
        burst = check_finite_positive("burst", burst)
        # as if it were rate_bucket_idle_s earlier: a bucket full by then is full now on
        # every replica whose clock is that close, and one taken from since is kept
        t = _now(now) - float(self.rate_bucket_idle_s)
        # the row's own rate and capacity; a row of before schema 5 has none: the caller's
        cond = ("updated_at <= ? AND tokens + (? - updated_at) * COALESCE(rate_per_s, ?) "
                ">= COALESCE(burst, ?)")
        args = (t, t, rate, burst)
        n = int(self.purge_batch)
        # in batches, as the other purges (the first after an upgrade finds every client
        # ever seen). The condition is checked again on each row deleted: on PostgreSQL a
        # take that locked the row first has refreshed it when the DELETE gets it
        sql = (f"DELETE FROM rate_buckets WHERE client_id IN (SELECT client_id FROM "
               f"rate_buckets WHERE {cond} LIMIT {n}) AND {cond}")
        total = 0
        while True:
            got = self._run(lambda tx: tx.execute(sql, args + args))
            total += got
            if got < n:
                return total
            time.sleep(0)  # let writers queued on the lock in (SQLite) go first

    # -- audit log and stats -------------------------------------------------------
    @staticmethod
    def _check_audit_user(user_id: Any) -> str:
        """An audit row's user id: any str the store can hold (a refused attempt's may be
        no valid user id), of at most :data:`_MAX_ID` characters, without NUL
        (PostgreSQL text cannot hold it: its DataError was answered UNAVAILABLE) or a lone
        surrogate (no UTF-8: a codec error naming nothing)."""
        if (not isinstance(user_id, str) or len(user_id) > _MAX_ID
                or not _storable_text(user_id)):
            raise InvalidArgument(f"'user_id' must be a str of at most {_MAX_ID} characters "
                                  f"without NUL or lone surrogates, got {repr(user_id)[:60]}.")
        return user_id

    def record_attempt(self, user_id, success, score, reason, peer, duration_s, method,
                       *, actor=None, now=None) -> None:
        self._check_audit_user(user_id)
        row = self._attempt_row(user_id, success, score, reason, peer, duration_s, method,
                                _now(now))
        if actor is not None:  # who made an account change (schema 8)
            row += (_audit_text("actor", actor, 200),)
        self._run(lambda tx: self._tx_attempt(tx, row))

    @staticmethod
    def _attempt_row(user_id, success, score, reason, peer, duration_s, method, t) -> tuple:
        # a NaN was NULL on SQLite (a NOT NULL duration: an outage, as it answered) and
        # NaN on PostgreSQL: refused alike, naming the parameter
        if score is not None:
            try:
                score = float(score)
            except (TypeError, ValueError):
                raise TypeError(f"'score' must be a real number or None, got {score!r} "
                                "instead.") from None
            except OverflowError:  # an integer beyond the float range
                raise ValueError("'score' must be a finite number, got an integer of "
                                 f"{score.bit_length()} bits instead.") from None
            if not math.isfinite(score):
                raise ValueError(f"'score' must be a finite number, got {score!r} instead.")
        return (user_id, t, bool(success), score, _audit_text("reason", reason, 200),
                _audit_text("peer", peer, 200),
                check_finite_nonnegative("duration_s", duration_s),
                _audit_text("method", method, 64))

    @staticmethod
    def _tx_attempt(tx: Tx, row: tuple) -> None:
        """Insert ``row`` (:meth:`_attempt_row`, and the actor after it when there is
        one: an authentication attempt's row, on the hot path, has none and its statement
        is as before schema 8)."""
        if len(row) == 9:
            tx.execute("INSERT INTO auth_attempts (user_id, ts, success, score, reason, "
                       "peer, duration_s, method, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       row)
            return
        tx.execute("INSERT INTO auth_attempts (user_id, ts, success, score, reason, peer, "
                   "duration_s, method) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def recent_attempts(self, user_id=None, limit=100) -> list[Attempt]:
        limit = check_int_range("limit", limit, 1, 100_000)
        sql = ("SELECT user_id, ts, success, score, reason, peer, duration_s, method, actor "
               "FROM auth_attempts")
        params: tuple = ()
        if user_id is not None:
            sql += " WHERE user_id = ?"
            params = (self._check_audit_user(user_id),)
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        rows = self._run(lambda tx: tx.query(sql, params + (limit,)), write=False)
        return [Attempt(r[0], float(r[1]), bool(r[2]), None if r[3] is None else float(r[3]),
                        r[4], r[5], float(r[6]), r[7], r[8]) for r in rows]

    #: rows one transaction of a purge (or of session expiry) changes, about: rows of the
    #: same time as a batch's last go with it (see :meth:`_in_batches`)
    purge_batch = 10_000

    def _in_batches(self, stmt: str, table: str, column: str, op: str, t: float,
                    where: str = "", returning: str = "") -> Any:
        """Run ``stmt`` (a DELETE or UPDATE of ``table`` ending in ``WHERE``) on the rows
        with ``column op t`` (and ``where``) in transactions of about
        :attr:`purge_batch` rows each, in the order of ``column`` (indexed): each
        transaction finds the batch's last value of ``column`` and changes the rows up
        to it, one range of that index on both backends. In one statement a backlog
        (the first purge after an upgrade, a shortened retention: millions of rows) held
        SQLite's write lock, and every authentication with it, for the whole purge (13 s
        for 2.3 M audit rows; past busy_timeout the waiting calls fail), and on
        PostgreSQL a statement past query_timeout is cut, rolled back and never finishes.
        Returns the row count, or the rows with the columns ``returning`` names."""
        cond = f"{where} AND " if where else ""
        bound_sql = (f"SELECT {column} FROM {table} WHERE {cond}{column} {op} ? "
                     f"ORDER BY {column} LIMIT 1 OFFSET {int(self.purge_batch) - 1}")
        tail = f" RETURNING {returning}" if returning else ""

        def batch(tx: Tx) -> tuple[Any, bool]:
            bound = tx.one(bound_sql, (t,))
            # the last batch: every row left; else those up to the bound (< t)
            sql = f"{stmt} {cond}{column} {op if bound is None else '<='} ?{tail}"
            args = (t if bound is None else bound[0],)
            return (tx.query(sql, args) if returning else tx.execute(sql, args)), bound is None

        out: Any = [] if returning else 0
        while True:
            got, last = self._run(batch)
            out += got
            if last:
                return out
            time.sleep(0)  # let writers queued on the lock in (SQLite) go first

    def purge_attempts(self, older_than: float) -> int:
        t = _check_time("older_than", older_than)
        return self._in_batches("DELETE FROM auth_attempts WHERE", "auth_attempts", "ts", "<",
                                t)

    def purge_sessions(self, older_than: float) -> int:
        t = _check_time("older_than", older_than)
        n = self._in_batches("DELETE FROM sessions WHERE", "sessions", "ended_at", "<", t)
        self._purge_orphan_windows()
        return n

    def _purge_orphan_windows(self) -> int:
        """Delete the stream windows whose session is gone (purged now, or by a nacf of
        before schema 7), walking the table in id order: each transaction looks at the
        next :attr:`purge_batch` windows (a range of the primary key) and deletes those
        of them without a session. One anti-join over the whole table held SQLite's
        write lock, and every authentication with it, for the whole scan. Returns the
        count deleted."""
        n = int(self.purge_batch)
        bound_sql = (f"SELECT id FROM session_windows WHERE id > ? ORDER BY id "
                     f"LIMIT 1 OFFSET {n - 1}")
        orphan = (" AND NOT EXISTS (SELECT 1 FROM sessions WHERE "
                  "sessions.token_hash = session_windows.session_id)")
        after, total = 0, 0  # ids start at 1 on both backends

        def batch(tx: Tx) -> tuple[int, Any]:
            bound = tx.one(bound_sql, (after,))
            if bound is None:  # the last batch: every window left
                return tx.execute("DELETE FROM session_windows WHERE id > ?" + orphan,
                                  (after,)), None
            return tx.execute("DELETE FROM session_windows WHERE id > ? AND id <= ?"
                              + orphan, (after, bound[0])), bound[0]

        while True:
            got, after = self._run(batch)
            total += got
            if after is None:
                return total
            time.sleep(0)  # let writers queued on the lock in (SQLite) go first

    def stats(self, now=None) -> Stats:
        day = utc_day_start(_now(now))
        # the audit rows of account changes (Enroll, RegisterDevice) are no attempts;
        # today's rows are read once for the three figures (the metrics sidecar asks
        # every 15 s; with 300 000 attempts today: 0.19 s, three reads 0.30 s on SQLite)
        row = self._run(lambda tx: tx.one(
            "SELECT (SELECT COUNT(*) FROM users WHERE status = 'active'), "
            "COUNT(DISTINCT user_id), COUNT(*), SUM(CASE WHEN success THEN 1 ELSE 0 END) "
            f"FROM auth_attempts WHERE ts >= ? AND method NOT IN {ACCOUNT_CHANGE_METHODS!r}",
            (day,)), write=False)
        n = int(row[2])
        # the exact percentage rounded to 0.01 with a half going up, as the guide's
        # ROUND(numeric, 2) does (round() of the float rounded 3.125 to 3.12)
        rate = (int(row[3] or 0) * 20_000 + n) // (2 * n) / 100 if n else None
        return Stats(total_active_users=int(row[0]), active_users_today=int(row[1]),
                     attempts_today=n, success_rate_today=rate)

    def count_users_by_model(self) -> dict[str, int]:
        rows = self._run(lambda tx: tx.query(
            "SELECT model_version, COUNT(*) FROM users WHERE status = 'active' "
            "AND model_version IS NOT NULL GROUP BY model_version", ()), write=False)
        return {str(r[0]): int(r[1]) for r in rows}

    # -- PAD fingerprints ----------------------------------------------------------
    def add_fingerprints(self, user_id, fingerprints, kind="probe", *, replace=False,
                         now=None) -> None:
        _check_id("user_id", user_id)
        if kind not in ("enroll", "probe"):
            raise InvalidArgument(f"Invalid value for the 'kind' parameter. Allowed values "
                                  f"are 'enroll', 'probe', but got {kind!r} instead.")
        fps = _check_fingerprints("fingerprints", fingerprints)
        t = _now(now)

        def fn(tx: Tx) -> None:
            # encrypted in the transaction, under the key in use now (see _tx_check_write_key)
            cipher = self._cipher
            rows = [(user_id, kind, t) + cipher.encrypt(fp, Cipher.aad("pad", user_id, kind))
                    for fp in fps]
            if replace:
                tx.execute("DELETE FROM pad_fingerprints WHERE user_id = ? AND kind = ?",
                           (user_id, kind))
            self._tx_fingerprints(tx, user_id, kind, rows)
            if rows:
                self._tx_check_write_key(tx, cipher.key_id)

        self._run(fn)

    def _forget_fingerprints(self, user_id: str) -> None:
        """Drop the decrypted PAD fingerprints of ``user_id`` this process keeps."""
        with self._fp_lock:
            for rid in [rid for rid, e in self._fp_plain.items() if e[0] == user_id]:
                self._fp_size -= len(self._fp_plain.pop(rid)[2]) + self._FP_ENTRY_BYTES

    def forget_deleted_fingerprints(self) -> int:
        with self._fp_lock:
            ids = list(self._fp_plain)
        if not ids:
            return 0

        def fn(tx: Tx) -> set:
            live = set()
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                live.update(r[0] for r in tx.query(
                    "SELECT id FROM pad_fingerprints WHERE id IN ("
                    + ", ".join("?" * len(part)) + ")", tuple(part)))
            return live

        live = self._run(fn, write=False)
        n = 0
        # an id cached came from a committed row, and ids are never reused: one not
        # stored now was deleted
        with self._fp_lock:
            for rid in ids:
                if rid not in live:
                    e = self._fp_plain.pop(rid, None)
                    if e is not None:
                        self._fp_size -= len(e[2]) + self._FP_ENTRY_BYTES
                        n += 1
        return n

    def _tx_fingerprints(self, tx: Tx, user_id: str, kind: str, rows: list[tuple]) -> None:
        for r in rows:
            tx.execute("INSERT INTO pad_fingerprints (user_id, kind, created_at, key_id, "
                       "ciphertext) VALUES (?, ?, ?, ?, ?)", r)
        if kind == "probe":
            # the newest pad_history probes stay: one index seek finds the cut-off id
            tx.execute("DELETE FROM pad_fingerprints WHERE user_id = ? AND kind = 'probe' "
                       "AND id <= (SELECT id FROM pad_fingerprints WHERE user_id = ? "
                       "AND kind = 'probe' ORDER BY id DESC LIMIT 1 OFFSET ?)",
                       (user_id, user_id, int(self.pad_history)))

    def get_fingerprints(self, user_id: str) -> list[tuple[str, bytes]]:
        _check_id("user_id", user_id)
        return self._dec_fingerprints(user_id, self._run(
            lambda tx: self._tx_get_fingerprints(tx, user_id), write=False))

    def _tx_get_fingerprints(self, tx: Tx, user_id: str) -> tuple[list[tuple], dict]:
        """The user's fingerprint rows ``(id, kind, key_id)`` in order, and for each id
        either its plaintext from the cache or its ciphertext read now, as
        ``{id: (True, plaintext) | (False, ciphertext)}`` (every authentication reads
        the whole history, nearly all of it already seen)."""
        rows = tx.query("SELECT id, kind, key_id FROM pad_fingerprints "
                        "WHERE user_id = ? ORDER BY id", (user_id,))
        cache = self._fp_plain
        got: dict = {}
        miss = []
        for rid, kind, _ in rows:
            e = cache.get(rid)  # atomic under the GIL; kept here, whatever evicts it next
            if e is None or e[0] != user_id or e[1] != kind:
                miss.append(rid)
            else:
                got[rid] = (True, e[2])
        for i in range(0, len(miss), 500):
            part = miss[i:i + 500]
            for rid, ct in tx.query("SELECT id, ciphertext FROM pad_fingerprints WHERE id "
                                    "IN (" + ", ".join("?" * len(part)) + ")", tuple(part)):
                got[rid] = (False, ct)
        # both statements see one snapshot (read transactions: SQLite's, PostgreSQL's
        # REPEATABLE READ), so every id listed has its row
        return rows, got

    #: what a cached fingerprint costs beside its plaintext (its entry and key), counted
    #: against fingerprint_cache_bytes
    _FP_ENTRY_BYTES = 200
    #: bytes of decrypted PAD fingerprints kept in memory (see _dec_fingerprints)
    fingerprint_cache_bytes = 32 << 20

    def _dec_fingerprints(self, user_id: str, got: tuple[list[tuple], dict]
                          ) -> list[tuple[str, bytes]]:
        """``[(kind, plaintext)]`` from :meth:`_tx_get_fingerprints`. Plaintexts are
        kept per row id with the user and kind they were authenticated for: ids are
        never reused (AUTOINCREMENT / BIGSERIAL) and a row's plaintext never changes
        (key rotation re-encrypts the same bytes), so a hit returns what decrypting
        would return; a row whose user or kind differs from the cached one is
        decrypted (and authenticated against its AAD) afresh."""
        rows, found = got
        cache = self._fp_plain
        out = []
        for rid, kind, kid in rows:
            plain, v = found[rid]
            if plain:
                out.append((kind, v))
                continue
            ct = v if type(v) is bytes else bytes(v)
            pt = self._dec(kid, ct, Cipher.aad("pad", user_id, kind),
                           f"A PAD fingerprint of user {user_id!r}")
            with self._fp_lock:
                old = cache.pop(rid, None)
                if old is not None:
                    self._fp_size -= len(old[2]) + self._FP_ENTRY_BYTES
                cache[rid] = (user_id, kind, pt)
                self._fp_size += len(pt) + self._FP_ENTRY_BYTES
                while self._fp_size > self.fingerprint_cache_bytes and cache:
                    oldest = cache.pop(next(iter(cache)))
                    self._fp_size -= len(oldest[2]) + self._FP_ENTRY_BYTES
            out.append((kind, pt))
        return out

    # -- ContinuousAuthenticate's replay history ------------------------------------
    @staticmethod
    def _window_aad(session_id: str, user_id: str) -> bytes:
        return Cipher.aad("stream", session_id, user_id)

    def add_session_window(self, session_id, user_id, fingerprint, *, keep, every=0,
                           most=None, now=None) -> int | None:
        _check_id("session_id", session_id)
        _check_id("user_id", user_id)
        if not isinstance(fingerprint, (bytes, bytearray, memoryview)) or not fingerprint:
            raise InvalidArgument("'fingerprint' must be a PAD fingerprint (non-empty bytes, "
                                  f"nacf_core.pad.fingerprint), got {fingerprint!r:.40}.")
        fp = bytes(fingerprint)
        # (they become a query's OFFSET or a modulus: bounds both databases take)
        keep = check_int_range("keep", keep, 1, _MAX_KEEP)
        every = check_int_range("every", every, 0, _MAX_KEEP)
        most = None if most is None else check_int_range("most", most, keep, _MAX_KEEP)
        t = _now(now)

        def fn(tx: Tx) -> int | None:
            # locked: an end committing meanwhile waits for this row, or this waits for
            # it and writes nothing; and the session's windows are numbered one after
            # the other
            if tx.one("SELECT 1 FROM sessions WHERE token_hash = ? AND user_id = ? "
                      "AND ended_at IS NULL AND expires_at > ?" + self.FOR_UPDATE,
                      (session_id, user_id, t)) is None:
                return None
            kid, ct = self._cipher.encrypt(fp, self._window_aad(session_id, user_id))
            # its ordinal in the session: the newest window always stays, so the
            # highest one kept is the last one given
            row = tx.one("INSERT INTO session_windows (session_id, user_id, created_at, "
                         "key_id, ciphertext, seq) VALUES (?, ?, ?, ?, ?, (SELECT "
                         "COALESCE(MAX(seq), 0) + 1 FROM session_windows WHERE "
                         "session_id = ?)) RETURNING id", (session_id, user_id, t, kid, ct,
                                                           session_id))
            # the newest ``keep`` stay, and before them one in every ``every`` (by its
            # ordinal): one index seek finds the cut-off id
            # (integer division in both databases; no '%', which psycopg reads as a
            # placeholder)
            sparse = " AND (seq IS NULL OR (seq / ?) * ? <> seq)" if every else ""
            tx.execute("DELETE FROM session_windows WHERE session_id = ? AND id <= (SELECT "
                       "id FROM session_windows WHERE session_id = ? ORDER BY id DESC "
                       "LIMIT 1 OFFSET ?)" + sparse,
                       (session_id, session_id, keep) + ((every, every) if every else ()))
            if most is not None:  # and ``most`` of the user's, across its sessions
                tx.execute("DELETE FROM session_windows WHERE user_id = ? AND id <= "
                           "(SELECT id FROM session_windows WHERE user_id = ? ORDER BY "
                           "id DESC LIMIT 1 OFFSET ?)", (user_id, user_id, most))
            self._tx_check_write_key(tx, kid)
            return int(row[0])

        return self._run(fn)

    def get_session_windows(self, session_id, user_id, known=(), *,
                            others_before=None) -> list:
        _check_id("session_id", session_id)
        _check_id("user_id", user_id)
        known = frozenset(known)
        if others_before is None:
            where, args = "session_id = ?", (session_id,)
        else:
            where = "user_id = ? AND (session_id = ? OR created_at <= ?)"
            args = (user_id, session_id, _check_time("others_before", others_before))

        def fn(tx: Tx) -> tuple[list[tuple], dict]:
            rows = tx.query(f"SELECT id, session_id, key_id FROM session_windows WHERE {where} "
                            "ORDER BY id", args)
            miss = [r[0] for r in rows if r[0] not in known]
            cts: dict = {}
            for i in range(0, len(miss), 500):
                part = miss[i:i + 500]
                cts.update(tx.query("SELECT id, ciphertext FROM session_windows WHERE id IN ("
                                    + ", ".join("?" * len(part)) + ")", tuple(part)))
            return rows, cts

        rows, cts = self._run(fn, write=False)
        out: list[tuple[int, bytes | None]] = []
        for rid, sid, kid in rows:
            ct = cts.get(rid)
            out.append((int(rid), None if ct is None else self._dec(
                kid, bytes(ct), self._window_aad(sid, user_id),
                f"A stream window of user {user_id!r}")))
        return out

    # -- one authentication: one read, one write ------------------------------------
    def get_auth_state(self, user_id: str, *, device_id: str | None = None,
                       fingerprints: bool = False) -> AuthState:
        _check_id("user_id", user_id)
        if device_id is not None:
            _check_id("device_id", device_id)

        def fn(tx: Tx) -> tuple:
            row = tx.one(f"SELECT {self._TEMPLATE_COLS}, l.failures, l.locked_until "
                         "FROM templates t LEFT JOIN lockouts l ON l.user_id = t.user_id "
                         "WHERE t.user_id = ?", (user_id,))
            if row is None:
                return None, None, None
            dev = None if device_id is None else self._tx_get_device(tx, device_id)
            fps = self._tx_get_fingerprints(tx, user_id) if fingerprints else None
            return row, dev, fps

        row, dev, fps = self._run(fn, write=False)
        if row is None:
            raise NotFound(f"Unknown user {user_id!r}: no enrolled template.")
        template = self._decrypt_template(row[:7])
        lock = LockoutState(int(row[7] or 0), None if row[8] is None else float(row[8]))
        return AuthState(template, lock, None if dev is None else self._dec_device(dev),
                         None if fps is None else self._dec_fingerprints(user_id, fps))

    def finish_authentication(self, user_id: str, accepted: bool, *, score: float | None,
                              reason: str, peer: str, duration_s: float, method: str,
                              session_ttl_s: float = 0.0, device_id: str | None = None,
                              max_failures: int = 1, lock_seconds: float = 1.0,
                              probe_fingerprint: bytes | None = None,
                              template_id: tuple[int, float] | None = None,
                              device_key: tuple[str, float] | None = None,
                              now: float | None = None) -> AuthOutcome:
        _check_id("user_id", user_id)
        accepted = bool(accepted)
        t = _now(now)
        sess_row = token = None
        if accepted:
            ttl = check_finite_positive("session_ttl_s", session_ttl_s)
            if device_id is not None:
                _check_id("device_id", device_id)
            token = secrets.token_urlsafe(32)
            sess_row = (token_hash(token), user_id, t, t + ttl, None, None, device_id)
        else:
            max_failures = check_int_range("max_failures", max_failures, 1)
            lock_seconds = check_finite_positive("lock_seconds", lock_seconds)
        probe = None
        if probe_fingerprint is not None:
            # bytes() of an int is that many zero bytes, of a list its items: no fingerprint
            if not isinstance(probe_fingerprint, (bytes, bytearray, memoryview)):
                raise TypeError(f"'probe_fingerprint' must be bytes, got "
                                f"{type(probe_fingerprint).__name__} instead.")
            probe = bytes(probe_fingerprint)
            if not probe:
                raise InvalidArgument("'probe_fingerprint' is empty: expected a PAD "
                                      "fingerprint (nacf_core.pad.fingerprint).")
        if template_id is not None:
            template_id = _check_stamp_pair("template_id", template_id)
        if device_key is not None:
            device_key = _check_stamp_pair("device_key", device_key)
        attempt = self._attempt_row(user_id, accepted, score, reason, peer, duration_s,
                                    method, t)

        def fn(tx: Tx) -> tuple[int, float | None, bool]:
            out: tuple[int, float | None, bool] = (0, None, False)
            # a user deleted since the caller read it: nothing written, a reject included
            # (its failure would lock out a new account enrolled under the same id)
            user = tx.one("SELECT template_version, updated_at FROM users WHERE user_id = ?"
                          + self.FOR_UPDATE, (user_id,))
            if user is None:
                raise NotFound(f"Unknown user {user_id!r}.")
            if accepted:
                if template_id is not None:
                    # the decision used this template: not one that replaced it meanwhile
                    # (an update; a delete and a new enrollment under the same id)
                    row = tx.one("SELECT version, created_at FROM templates WHERE user_id = ?",
                                 (user_id,))
                    if row is None or (int(row[0]), float(row[1])) != (
                            int(template_id[0]), float(template_id[1])):
                        raise FailedPrecondition(TEMPLATE_CHANGED)
                if device_key is not None:
                    # the proof was verified with this secret: not one rotated meanwhile
                    row = tx.one("SELECT user_id, created_at FROM devices WHERE device_id = ?",
                                 (device_key[0],))
                    if row is None or row[0] != user_id or float(row[1]) != float(
                            device_key[1]):
                        raise FailedPrecondition(DEVICE_CHANGED)
                # the lock as it is now, not as the caller read it: failures of concurrent
                # calls (or of streams checked before them) may have locked the user
                row = tx.one("SELECT failures, locked_until FROM lockouts WHERE user_id = ?"
                             + self.FOR_UPDATE, (user_id,))
                if row is not None and row[1] is not None and float(row[1]) > t:
                    self._tx_attempt(tx, self._attempt_row(
                        user_id, False, score, "locked", peer, duration_s, method, t))
                    return int(row[0]), float(row[1]), True
                if row is not None and row[0]:
                    self._tx_reset(tx, user_id)
                tx.execute(f"INSERT INTO sessions ({self._SESSION_COLS}) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", sess_row)
            elif template_id is None or _is_current(user, template_id):
                out = (*self._tx_failure(tx, user_id, max_failures, lock_seconds, t), False)
            # else judged against a template replaced since the caller read it (Enroll
            # with update=true; a delete and a new enrollment): audited, but no failure
            # of the user's streak since the replacement (read from the user's row,
            # locked above: no statement more)
            if probe is not None:
                # encrypted in the transaction, under the key in use now
                kid, ct = self._cipher.encrypt(probe, Cipher.aad("pad", user_id, "probe"))
                self._tx_fingerprints(tx, user_id, "probe", [(user_id, "probe", t, kid, ct)])
                self._tx_check_write_key(tx, kid)
            self._tx_attempt(tx, attempt)
            return out

        try:
            failures, locked_until, locked = self._run(fn)
        except NotFound:
            # deleted since the caller read it: the plaintexts that read cached after
            # delete_user dropped the user's go too
            self._forget_fingerprints(user_id)
            raise
        if locked:
            return AuthOutcome(None, failures, locked_until, locked=True)
        return AuthOutcome(None if sess_row is None else self._session(sess_row, token),
                           failures, locked_until)

    # -- key rotation --------------------------------------------------------------
    #: rows of one table a key rotation holds in memory at a time (a store's PAD
    #: histories, 64 probes of a few KiB per user, are gigabytes for 10 000 users)
    rotate_chunk = 1000

    def _tx_chunks(self, tx: Tx, table: str, cols: str) -> Iterator[tuple]:
        """The rows of ``table`` (``cols``, its primary key first) in order of that key,
        :attr:`rotate_chunk` at a time, in the transaction ``tx`` (locked)."""
        pk = cols.split(",", 1)[0]
        n = int(self.rotate_chunk)
        last: tuple = ()
        while True:
            rows = tx.query(f"SELECT {cols} FROM {table}"
                            + (f" WHERE {pk} > ?" if last else "")
                            + f" ORDER BY {pk} LIMIT {n}" + self.FOR_UPDATE, last)
            yield from rows
            if len(rows) < n:
                return
            last = (rows[-1][0],)

    def _tx_reencrypt(self, tx: Tx, old: Cipher, new: Cipher, table: str, cols: str,
                      describe: Callable[[tuple], tuple[bytes, str, str]], *,
                      ct_col: str = "ciphertext") -> tuple[int, set]:
        """Re-encrypt ``ct_col`` of every row of ``table`` from ``old`` to ``new`` in
        ``tx`` (rows read by :meth:`_tx_chunks`, ``cols`` with the primary key first);
        ``describe(cols values)`` gives a row's AAD, its name in an error, and what to
        report it by when it does not decrypt (left as it is). Returns ``(rows
        re-encrypted, the reported names of the damaged rows)``."""
        pk = cols.split(",", 1)[0]
        n, bad = 0, set()
        for row in self._tx_chunks(tx, table, f"{cols}, key_id, {ct_col}"):
            *values, kid, ct = row
            aad, what, name = describe(tuple(values))
            try:
                pt = old.decrypt(kid, ct, aad, what)
            except FailedPrecondition:
                bad.add(name)
                continue
            nkid, nct = new.encrypt(pt, aad)
            tx.execute(f"UPDATE {table} SET key_id = ?, {ct_col} = ? WHERE {pk} = ?",
                       (nkid, nct, values[0]))
            n += 1
        return n, bad

    def _run_rotation(self, fn: Callable[[Tx], T]) -> T:
        """The rotation's transaction (PostgreSQL: not bounded by the query timeout)."""
        return self._run(fn)

    def rotate_key(self, new_key) -> KeyRotation:
        new = Cipher(new_key)
        old = self._cipher
        if new.key_id == old.key_id:
            raise InvalidArgument(
                f"The new key ({new.source}) is the key the store is under already (key id "
                f"{old.key_id}): nothing was rotated. Give a new key (`nacf store new-key "
                f"FILE` makes one).")

        #: what the last run of fn computed, if it ran to its end (see below)
        ran: list[KeyRotation] = []

        def fn(tx: Tx) -> KeyRotation:
            ran.clear()
            self._rotation_lock(tx)
            row = tx.one("SELECT key_id, v FROM store_meta WHERE k = 'keycheck'"
                         + self.FOR_UPDATE)
            if row is None or row[0] != old.key_id:
                # rows this key cannot read are damaged ones only while it is the store's
                raise FailedPrecondition(
                    f"The store's template key was rotated by another process since this "
                    f"one opened it (the store is under key id "
                    f"{None if row is None else row[0]}; this process has key id "
                    f"{old.key_id}): nothing was changed; rotate from the store's key.")
            old.decrypt(row[0], row[1], Cipher.aad("keycheck"), "The store's key check")
            # a row that does not decrypt is damaged (altered, truncated, left under a
            # key the store no longer has): left as it is and reported, not a reason to
            # keep every other row under the old key
            n_t, bad_templates = self._tx_reencrypt(
                tx, old, new, "templates", "user_id, version, model_version",
                lambda r: (self._template_aad(*r), f"The template of user {r[0]!r}", r[0]))
            n_d, bad_devices = self._tx_reencrypt(
                tx, old, new, "devices", "device_id, user_id",
                lambda r: (Cipher.aad("device", r[0], r[1]), f"Device {r[0]!r}", r[0]),
                ct_col="secret_ct")
            n_f, bad_fps = self._tx_reencrypt(
                tx, old, new, "pad_fingerprints", "id, user_id, kind",
                lambda r: (Cipher.aad("pad", r[1], r[2]), "A PAD fingerprint", r[1]))
            n_w, bad_windows = self._tx_reencrypt(
                tx, old, new, "session_windows", "id, session_id, user_id",
                lambda r: (self._window_aad(r[1], r[2]), "A stream window", r[2]))
            bad_fps |= bad_windows
            n = n_t + n_d + n_f + n_w
            kid, ct = new.encrypt(_KEYCHECK, Cipher.aad("keycheck"))
            tx.execute("UPDATE store_meta SET key_id = ?, v = ? WHERE k = 'keycheck'",
                       (kid, ct))
            # switch before COMMIT: SQLite writers waiting on BEGIN IMMEDIATE then encrypt
            # under the new key; PostgreSQL writers waiting on these locks find the key
            # changed (_tx_check_write_key) and run again under it
            self._known[new.key_id] = new
            self._cipher = new
            ran.append(KeyRotation(n, sorted(bad_templates), sorted(bad_devices),
                                   sorted(bad_fps)))
            return ran[0]

        try:
            out = self._run_rotation(fn)
        except BaseException as exc:
            self._cipher = old
            if not ran or not isinstance(exc, Exception):
                raise  # failed before its COMMIT: rolled back
            # its COMMIT was sent and failed (a lost answer: it may have been applied).
            # Back on the old key, every later write of this process failed
            # FAILED_PRECONDITION if it was: read which key the store is under (the row
            # lock waits for a commit still in progress), and take that one
            try:
                row = self._run(lambda tx: tx.one(
                    "SELECT key_id FROM store_meta WHERE k = 'keycheck'" + self.FOR_UPDATE))
            except Exception:  # noqa: BLE001 - still unknown: the next write finds out
                # (_run: the store's key is one this process has)
                raise exc  # noqa: B904 - the rotation's error, not the read's
            if row is None or row[0] != new.key_id:
                raise  # not applied: the store and this process stay under the old key
            self._cipher = new
            out = ran[0]
            log.warning("template key rotation: its commit's answer was lost; the store "
                        "is under the new key", extra={"new_key_id": new.key_id})
        log.info("template key rotated", extra={
            "old_key_id": old.key_id, "new_key_id": new.key_id, "rows": out.rows,
            "unreadable_templates": len(out.unreadable_templates),
            "unreadable_devices": len(out.unreadable_devices),
            "unreadable_fingerprint_users": len(out.unreadable_fingerprints)})
        return out
