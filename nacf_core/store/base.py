"""The template-store interface shared by every backend, and its record types.

A :class:`Store` keeps everything the service needs to share between replicas:

- users and their encrypted templates (opaque ``bytes`` from ``Template.to_bytes()``,
  versioned, tagged with the ``model_version`` they were computed with);
- headsets bound to users (``devices``, secret encrypted) and the device-proof nonces
  already used (replay protection with expiry);
- sessions (only a SHA-256 hash of the token is stored);
- lockout state (consecutive failures, ``locked_until``) and per-client token buckets;
- the ``auth_attempts`` audit log and the monitoring guide's stats query;
- presentation-attack fingerprints per user (bounded history, encrypted);
- the PAD fingerprints of each open session's last ``ContinuousAuthenticate`` windows
  (bounded per session, encrypted, dropped when the session ends);
- the ``schema_migrations`` table, applied idempotently at open.

Times are unix seconds (``float``, of a date from year 1 to 9999), passed in by the
caller (``now=``) so that tests and replicas agree on one clock; ``None`` means
``time.time()``.  Every mutating
operation is one transaction: SQLite ``BEGIN IMMEDIATE``, PostgreSQL row locks
(``SELECT ... FOR UPDATE`` / ``INSERT ... ON CONFLICT``) with retry on serialization
failures and deadlocks.

Nothing here logs a template, a secret, a token or a fingerprint.
"""

from __future__ import annotations

import abc
import datetime as _dt
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import FailedPrecondition, InvalidArgument, TemplateUnreadable

#: ``FailedPrecondition`` of an authentication whose device proof was verified with a
#: secret the device no longer has (``finish_authentication(device_key=...)``)
DEVICE_CHANGED = ("the device's secret was rotated, or the device removed, while this "
                  "authentication ran; nothing was written: authenticate again.")
#: ``FailedPrecondition`` of an authentication whose decision used a template that is no
#: longer the user's (``finish_authentication(template_id=...)``)
TEMPLATE_CHANGED = ("the user's template changed while this authentication ran (updated, "
                    "or the user deleted and enrolled again); nothing was written: "
                    "authenticate again.")

__all__ = [
    "Store",
    "UserRecord",
    "TemplateRecord",
    "DeviceRecord",
    "Session",
    "Attempt",
    "Stats",
    "LockoutState",
    "UserPage",
    "AuthState",
    "AuthOutcome",
    "KeyRotation",
    "utc_day_start",
    "retention_cutoff",
    "TEMPLATE_CHANGED",
    "DEVICE_CHANGED",
]


def utc_day_start(now: float) -> float:
    """Unix time of 00:00 UTC of the day containing ``now`` (the guide's ``CURRENT_DATE``)."""
    d = _dt.datetime.fromtimestamp(now, tz=_dt.timezone.utc).date()
    return _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp()


#: the times a store takes (``now=``, expiries, purge bounds): unix seconds of the dates
#: 0001-01-01 to 9999-12-31 UTC. Beyond them ``stats`` had no day to count (an
#: OverflowError) and, on PostgreSQL, sums such as ``created_at + max_age_s`` overflowed
#: DOUBLE PRECISION (an error answered UNAVAILABLE)
MIN_TIME = -62135596800.0
MAX_TIME = 253402300799.0


def retention_cutoff(now: float, days: float) -> float:
    """The purge bound of a retention of ``days`` at ``now``: ``days`` before it, held at
    :data:`MIN_TIME` (a retention of thousands of years, which the store would refuse
    as a bound: nothing in a store is older, so nothing is purged)."""
    return max(now - days * 86400.0, MIN_TIME)


def check_time(name: str, t: float, given: Any) -> float:
    """``t`` (``float(given)``) unless it is no finite time in [MIN_TIME, MAX_TIME]."""
    if not math.isfinite(t) or not MIN_TIME <= t <= MAX_TIME:
        raise InvalidArgument(f"{name!r} must be finite unix seconds of a date from year 1 "
                              f"to 9999, got {given!r}.")
    return t


def _now(now: float | None) -> float:
    """The store's clock: ``now`` (unix seconds) or the wall clock. A ``now`` that is no
    finite number is refused: NaN compares unordered, so ``expires_at <= NaN`` would
    match nothing on SQLite and, on PostgreSQL (where NaN is above every number),
    everything (a ``use_nonce`` at NaN dropped every nonce kept against replays); nor is
    one of no date (:data:`MAX_TIME`)."""
    if now is None:
        return time.time()
    try:
        t = float(now)
    except OverflowError:  # an int no float holds
        raise InvalidArgument("'now' must be finite unix seconds, got a number too large for "
                              "a float.") from None
    return check_time("now", t, now)


def _template_stamp(rec: "TemplateRecord") -> tuple[int, float]:
    """``(version, created_at)`` of a template record (``finish_authentication``'s
    ``template_id``)."""
    return int(rec.version), float(rec.created_at)


@dataclass(frozen=True)
class UserRecord:
    """A user row. ``template_version`` is 0 for a user without a template."""

    user_id: str
    status: str
    created_at: float
    updated_at: float
    template_version: int
    model_version: str | None
    failures: int = 0
    locked_until: float | None = None
    n_devices: int = 0


@dataclass(frozen=True)
class TemplateRecord:
    """A decrypted template. ``blob`` is what ``Template.to_bytes()`` produced."""

    user_id: str
    version: int
    model_version: str
    blob: bytes = field(repr=False)
    meta: dict[str, Any]
    created_at: float
    #: the key id and the ciphertext's nonce, new on every write of the template (what
    #: ``read_gallery`` lists and ``template_stamps`` returns)
    stamp: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class DeviceRecord:
    """A headset bound to a user; ``secret`` is decrypted (never log it), or None where
    it was not asked for (:meth:`Store.list_devices`)."""

    device_id: str
    user_id: str
    secret: str | None = field(repr=False)
    created_at: float
    #: on what :meth:`Store.register_device` returns: whether its write replaced the
    #: secret of a device already bound to the user (a rotation), not a first binding
    replaced: bool = False


@dataclass(frozen=True)
class Session:
    """A session. ``token`` is only set on the object ``create_session`` returns."""

    session_id: str  # hex SHA-256 of the token: safe to log
    user_id: str
    created_at: float
    expires_at: float
    ended_at: float | None
    end_reason: str | None
    device_id: str | None = None
    #: when ContinuousAuthenticate last verified the wearer (``renew_session``)
    last_verified_at: float | None = None
    token: str | None = field(default=None, repr=False)

    def is_active(self, now: float | None = None) -> bool:
        """Not ended and not expired at ``now``."""
        return self.ended_at is None and _now(now) < self.expires_at


@dataclass(frozen=True)
class Attempt:
    """One row of the ``auth_attempts`` audit log."""

    user_id: str
    ts: float
    success: bool
    score: float | None
    reason: str
    peer: str
    duration_s: float
    method: str
    #: who made an account change: the caller's client id (schema 8); ``None`` for an
    #: authentication attempt and for rows written before schema 8
    actor: str | None = None


@dataclass(frozen=True)
class Stats:
    """The monitoring guide's ``get_auth_stats()``.

    ``success_rate_today`` is a percentage rounded to 2 decimals as in the guide
    (``None`` when there were no attempts today). "Today" starts at 00:00 UTC.
    """

    total_active_users: int
    active_users_today: int
    attempts_today: int
    success_rate_today: float | None


@dataclass(frozen=True)
class LockoutState:
    """Consecutive failures and the time the lock ends (``None``: not locked)."""

    failures: int
    locked_until: float | None

    def is_locked(self, now: float | None = None) -> bool:
        return self.locked_until is not None and _now(now) < self.locked_until


@dataclass(frozen=True)
class UserPage:
    """One page of :meth:`Store.list_users`; ``next_page_token`` is ``""`` on the last page."""

    users: list[UserRecord]
    next_page_token: str


@dataclass(frozen=True)
class AuthState:
    """What one authentication reads before deciding (:meth:`Store.get_auth_state`).

    ``device`` is the requested device (``None`` when not asked for or not registered);
    ``fingerprints`` the user's PAD history (``None`` when not asked for)."""

    template: TemplateRecord
    lockout: LockoutState
    device: DeviceRecord | None = None
    fingerprints: list[tuple[str, bytes]] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AuthOutcome:
    """What :meth:`Store.finish_authentication` wrote: the new session on an accept
    (``token`` set), and the lockout state after a reject or a refused accept."""

    session: Session | None
    failures: int
    locked_until: float | None
    #: an accepted decision refused because the user was locked meanwhile (no session)
    locked: bool = False


@dataclass(frozen=True)
class KeyRotation:
    """What :meth:`Store.rotate_key` did: ``rows`` re-encrypted under the new key, and the
    rows it could not decrypt (damaged: altered, truncated, under a key the store no
    longer has), left exactly as they were: templates and PAD fingerprints by user id,
    device secrets by device id, each list sorted and without repeats."""

    rows: int
    unreadable_templates: list[str] = field(default_factory=list)
    unreadable_devices: list[str] = field(default_factory=list)
    unreadable_fingerprints: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every encrypted row is under the new key (none was left unreadable)."""
        return not (self.unreadable_templates or self.unreadable_devices
                    or self.unreadable_fingerprints)


class Store(abc.ABC):
    """The store interface. Use :func:`nacf_core.store.open_store` to get one.

    Thread-safe; usable as a context manager (``close()`` on exit).
    """

    backend: str = ""
    #: True when calls run in this process without network round trips (SQLite): the
    #: service then runs a whole authentication one at a time (see ``AuthService``)
    in_process: bool = False
    #: Number of PAD fingerprint rows of kind ``"probe"`` kept per user.
    pad_history: int = 64

    # -- lifecycle -----------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Apply pending schema migrations (idempotent); return the versions applied."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """Highest applied migration version."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise :class:`~nacf_core.errors.Unavailable` unless the store answers."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection. Idempotent."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- users and templates -------------------------------------------------------
    @abc.abstractmethod
    def put_template(
        self,
        user_id: str,
        blob: bytes,
        model_version: str,
        meta: Mapping[str, Any] | None = None,
        *,
        create_only: bool = False,
        expected_version: int | None = None,
        enroll_fingerprints: Sequence[bytes] | None = None,
        now: float | None = None,
        deadline: float | None = None,
    ) -> int:
        """Create the user or replace its template, atomically; return the new version.

        ``create_only``: raise ``AlreadyExists`` if the user exists.
        ``expected_version``: raise ``FailedPrecondition`` unless the current version is
        this (0 for "no template yet"); an optimistic-concurrency check.
        ``enroll_fingerprints``: the enrollment's PAD fingerprints, replacing the user's
        ``"enroll"`` ones in the same transaction (``None``: left as they are).
        ``deadline``: a ``time.monotonic()`` value; once it has passed when the writes
        are done (the transaction waited for a lock), ``DeadlineExceeded`` and nothing
        is written.
        The version increases by one on every write; the old ciphertext is replaced in
        the same transaction (never a torn template).
        """

    def put_template_ending_sessions(
        self,
        user_id: str,
        blob: bytes,
        model_version: str,
        meta: Mapping[str, Any] | None = None,
        *,
        reason: str,
        create_only: bool = False,
        expected_version: int | None = None,
        enroll_fingerprints: Sequence[bytes] | None = None,
        now: float | None = None,
        deadline: float | None = None,
    ) -> tuple[int, list[Session]]:
        """:meth:`put_template`; when it replaced a template (version above 1), also end
        the user's active sessions with ``reason`` (they were verified against the old
        one): ``(version, the sessions ended)``. Backends do both in one transaction, so
        a session opened on the new template just after it is not ended; this default
        composes the two (not atomic)."""
        version = self.put_template(user_id, blob, model_version, meta,
                                    create_only=create_only,
                                    expected_version=expected_version,
                                    enroll_fingerprints=enroll_fingerprints, now=now,
                                    deadline=deadline)
        if version <= 1:
            return version, []
        return version, self.end_user_sessions(user_id, reason, now=now)

    @abc.abstractmethod
    def get_template(self, user_id: str) -> TemplateRecord:
        """The current template, decrypted. ``NotFound`` for an unknown user or none,
        ``TemplateUnreadable`` for one that does not decrypt."""

    @abc.abstractmethod
    def iter_templates(self, model_version: str | None = None) -> Iterator[TemplateRecord]:
        """Every active user's template (for 1:N), optionally only one model version."""

    @abc.abstractmethod
    def read_gallery(self, model_version: str, known: Mapping[str, bytes] | None = None
                     ) -> tuple[list[tuple[str, bytes]],
                                dict[str, TemplateRecord | TemplateUnreadable]]:
        """For 1:N, read in one snapshot: ``(user_id, stamp)`` of every active user's
        template of ``model_version``, ordered by user id, and the decrypted templates
        of those whose stamp differs from ``known[user_id]`` (all when ``known`` is
        empty). A stamp (key id and the ciphertext's random nonce) changes with every
        write of the template: an update, a re-enrollment after deletion, a key
        rotation; a caller that kept what it decoded from earlier templates reads and
        decrypts only the changed ones. A template that does not decrypt maps to the
        ``TemplateUnreadable`` saying so instead of failing the whole read."""

    @abc.abstractmethod
    def template_stamps(self, user_ids: Iterable[str]) -> dict[str, bytes]:
        """The stamp (as :meth:`read_gallery` lists it) of the template of each of
        ``user_ids`` that has one; a user without one (deleted) is left out. A process
        compares them with those of the templates it keeps in memory, to drop the ones
        another process deleted or replaced."""

    @abc.abstractmethod
    def forget_deleted_fingerprints(self) -> int:
        """Drop the plaintexts of PAD fingerprints this process keeps whose rows are no
        longer stored (their user deleted or re-enrolled, the probe trimmed from the
        history, by this process or another); return how many."""

    @abc.abstractmethod
    def get_user(self, user_id: str) -> UserRecord:
        """``NotFound`` for an unknown user."""

    @abc.abstractmethod
    def list_users(self, page_size: int = 100, page_token: str = "") -> UserPage:
        """Users ordered by id; pass ``next_page_token`` back to get the next page."""

    @abc.abstractmethod
    def delete_user(self, user_id: str, *, now: float | None = None) -> list[Session]:
        """Remove the user, its template, devices, sessions, fingerprints and lockout
        state for real (rows deleted, not flagged). Audit rows keep the user id only.
        ``NotFound`` for an unknown user. Returns the sessions it ended: those still
        active at ``now`` (``ended_at`` ``now``, reason ``user_deleted``) and those expired
        that no :meth:`expire_sessions` had ended yet (``ended_at`` their expiry, reason
        ``expired``)."""

    # -- devices and proof nonces --------------------------------------------------
    @abc.abstractmethod
    def register_device(
        self, user_id: str, device_id: str, secret: str, *, replace: bool = True,
        first_only: bool = False, now: float | None = None,
        deadline: float | None = None
    ) -> DeviceRecord:
        """Bind ``device_id`` to ``user_id`` (re-binding replaces the secret; with
        ``replace=False`` it is ``AlreadyExists``, decided in the same transaction; with
        ``first_only``, a user who has another device is ``AnotherDeviceBound``, a kind
        of ``AlreadyExists``).
        ``NotFound`` for an unknown user; ``AlreadyExists`` if bound to another user.
        The record's ``replaced`` says whether the write replaced a secret (decided in the
        transaction, so a caller learns what it did even when a concurrent registration
        landed after its own read). ``deadline``: as :meth:`put_template`'s."""

    def register_device_ending_sessions(
        self, user_id: str, device_id: str, secret: str, *, reason: str,
        replace: bool = True, first_only: bool = False, now: float | None = None,
        deadline: float | None = None
    ) -> tuple[DeviceRecord, list[Session]]:
        """:meth:`register_device`; when it replaced the device's secret (``replaced``),
        also end the active sessions opened with that device with ``reason`` (they were
        opened with the old secret): ``(record, the sessions ended)``. Backends do both in
        one transaction, so a rotation cannot leave the old secret's sessions open; this
        default composes the two (not atomic)."""
        rec = self.register_device(user_id, device_id, secret, replace=replace,
                                   first_only=first_only, now=now, deadline=deadline)
        if not rec.replaced:
            return rec, []
        return rec, self.end_user_sessions(user_id, reason, device_id=device_id, now=now)

    @abc.abstractmethod
    def get_device(self, device_id: str) -> DeviceRecord:
        """``NotFound`` for an unknown device."""

    @abc.abstractmethod
    def use_nonce(self, device_id: str, nonce: str, expires_at: float,
                  *, now: float | None = None) -> bool:
        """Record a device-proof nonce; ``False`` if it was already used and has not
        expired (a replay). Expired nonces are purged. The row records which call wrote
        it: a call whose COMMIT's answer was lost runs again and finds its own row (the
        nonce was fresh), not a replay."""

    # -- sessions ------------------------------------------------------------------
    @abc.abstractmethod
    def list_devices(self, user_id: str) -> list[DeviceRecord]:
        """The user's devices, by ``device_id``, without their secrets. ``NotFound``
        for an unknown user."""

    def device_ids_of(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """``{user_id: its device ids, sorted}`` for each of ``user_ids`` still stored
        (``[]`` for one without a device; an unknown one is left out): ListUsers' page
        in one read (the backends override this one-read-per-user default)."""
        from ..errors import NotFound

        out = {}
        for u in set(user_ids):
            try:
                out[u] = sorted(d.device_id for d in self.list_devices(u))
            except NotFound:
                continue
        return out

    @abc.abstractmethod
    def end_user_sessions(self, user_id: str, reason: str, *, device_id: str | None = None,
                          now: float | None = None) -> list[Session]:
        """End every active session of ``user_id`` (only those opened with ``device_id``
        when given) with ``reason``; return them as ended."""

    @abc.abstractmethod
    def renew_session(self, token: str, ttl_s: float, *, max_age_s: float | None = None,
                      now: float | None = None) -> Session:
        """Extend an active session to ``now + ttl_s``, or to its ``created_at +
        max_age_s`` when that comes first (never shortens it). ``NotFound`` for an
        unknown token, ``FailedPrecondition`` for an ended or expired one."""

    @abc.abstractmethod
    def create_session(self, user_id: str, ttl_s: float, *, device_id: str | None = None,
                       now: float | None = None) -> Session:
        """Open a session; the returned object carries the token (shown once)."""

    @abc.abstractmethod
    def get_session(self, token: str) -> Session:
        """``NotFound`` for an unknown token (ended/expired sessions are returned;
        check :meth:`Session.is_active`)."""

    @abc.abstractmethod
    def end_session(self, token: str, reason: str = "ended", *,
                    now: float | None = None) -> Session:
        """End a session (idempotent: an ended session keeps its first end time). One
        already past its expiry at ``now`` that no sweep has ended is recorded as
        :meth:`expire_sessions` records it: ended at its expiry, reason ``"expired"``."""

    @abc.abstractmethod
    def shorten_sessions(self, ttl_s: float, now: float | None = None, *,
                         max_age_s: float | None = None) -> int:
        """Open sessions with more than ``ttl_s`` left at ``now`` (the wall clock stepped
        back since they were opened or renewed, or the TTL got shorter) expire ``ttl_s``
        from ``now``, and with ``max_age_s`` those expiring after ``created_at +
        max_age_s`` (the maximum age got shorter) expire then, which may be before
        ``now`` (the next :meth:`expire_sessions` ends them at it); return how many."""

    @abc.abstractmethod
    def count_active_sessions(self, now: float | None = None) -> int:
        """Sessions neither ended nor expired at ``now``."""

    @abc.abstractmethod
    def expire_sessions(self, now: float | None = None) -> list[Session]:
        """Mark sessions past their expiry as ended (reason ``"expired"``); return them."""

    @abc.abstractmethod
    def expire_session(self, token: str, *, now: float | None = None) -> Session | None:
        """End the session of ``token`` if it is past its expiry at ``now`` and no sweep
        has ended it, as :meth:`expire_sessions` does (at its expiry, reason
        ``"expired"``; its stream windows stay): a session seen expired stays so when
        the wall clock steps back. Return it when this call ended it, else ``None``
        (active, ended already or unknown)."""

    # -- lockout and rate limits ---------------------------------------------------
    @abc.abstractmethod
    def register_failure(self, user_id: str, max_failures: int, lock_seconds: float,
                         now: float | None = None) -> tuple[int, float | None]:
        """Atomically count one more consecutive failure; lock when it reaches
        ``max_failures``. Return ``(failures, locked_until)``. ``NotFound`` (nothing
        written) for an unknown user."""

    @abc.abstractmethod
    def reset_failures(self, user_id: str) -> None:
        """A success: consecutive failures back to 0 (the lock, if any, stays)."""

    @abc.abstractmethod
    def unlock_user(self, user_id: str) -> LockoutState:
        """Admin unlock: failures 0 and no lock; return the state it lifted (read by the
        statement that deletes it: ``failures=0, locked_until=None`` when there was
        none). ``NotFound`` for an unknown user."""

    @abc.abstractmethod
    def get_lockout(self, user_id: str) -> LockoutState:
        """Current lockout state (``failures=0, locked_until=None`` when none)."""

    @abc.abstractmethod
    def shorten_lockouts(self, lock_seconds: float, now: float | None = None) -> list[str]:
        """Lockouts with more than ``lock_seconds`` left at ``now`` (the wall clock
        stepped back since they were set, or the lockout got shorter) end ``lock_seconds``
        from ``now``; return their user ids, sorted."""

    @abc.abstractmethod
    def locked_user_ids(self, now: float | None = None) -> set[str]:
        """The users locked at ``now`` (one query; Identify leaves them out)."""

    def take_token(self, client_id: str, rate_per_s: float, burst: float,
                   now: float | None = None) -> bool:
        """Token bucket: refill at ``rate_per_s`` up to ``burst``; take one token if
        available and return ``True``, else ``False``. Atomic across replicas."""
        return self.take_tokens(client_id, rate_per_s, burst, 1, now=now) == 1

    @abc.abstractmethod
    def take_tokens(self, client_id: str, rate_per_s: float, burst: float, want: int = 1,
                    give_back: float = 0.0, now: float | None = None) -> int:
        """Token bucket, several at a time (a lease, see :mod:`nacf_core.ratelimit`):
        refill at ``rate_per_s`` (at most 1e9), add ``give_back`` (a lease's unused tokens), cap at
        ``burst``; then take ``min(want, whole tokens available)`` and return how many
        were taken (0 when none). One transaction, atomic across replicas. A ``now``
        before the bucket's last refill refills nothing; when it is more than a moment
        before (the wall clock stepped back), the bucket refills from it onwards, if this
        host's clock set the bucket's time; if another host's did (a replica whose clock
        is ahead), nothing is refilled until ``now`` reaches it."""

    @abc.abstractmethod
    def purge_rate_buckets(self, rate_per_s: float, burst: float,
                           now: float | None = None) -> int:
        """Delete the token buckets idle long enough to be full again, by the rate and
        capacity each was last taken with (``rate_per_s`` and ``burst`` for a bucket
        written before schema 5, which has none of its own), and full for
        :attr:`rate_bucket_idle_s` more at ``now``; return how many. Deleting a full
        bucket changes nothing (the next take creates it full), so a bucket in use, or
        one that never refills (rate 0) and is not full, is never deleted. In
        transactions of about ``purge_batch`` rows each."""

    # -- audit log and stats -------------------------------------------------------
    @abc.abstractmethod
    def record_attempt(self, user_id: str, success: bool, score: float | None, reason: str,
                       peer: str, duration_s: float, method: str,
                       *, actor: str | None = None, now: float | None = None) -> None:
        """Append one audit row; ``actor`` names who made an account change (the
        caller's client id), audit text like ``reason`` and ``peer`` (its first 200
        characters, no NUL or lone surrogate)."""

    @abc.abstractmethod
    def recent_attempts(self, user_id: str | None = None, limit: int = 100) -> list[Attempt]:
        """Newest first."""

    @abc.abstractmethod
    def purge_attempts(self, older_than: float) -> int:
        """Delete audit rows with ``ts < older_than``; return how many. In short
        transactions of about ``purge_batch`` rows each, so a backlog never holds the
        store for long."""

    @abc.abstractmethod
    def purge_sessions(self, older_than: float) -> int:
        """Delete the rows of sessions that ended before ``older_than`` (who
        authenticated when, from which headset: the audit's retention applies to them
        too), and their stream windows (:meth:`add_session_window`); return how many
        sessions. Active sessions are never touched."""

    @abc.abstractmethod
    def stats(self, now: float | None = None) -> Stats:
        """The monitoring guide's stats query (day boundary at 00:00 UTC)."""

    @abc.abstractmethod
    def count_users_by_model(self) -> dict[str, int]:
        """Active users per the ``model_version`` their template was enrolled with."""

    # -- presentation-attack fingerprints -------------------------------------------
    @abc.abstractmethod
    def add_fingerprints(self, user_id: str, fingerprints: list[bytes], kind: str = "probe",
                         *, replace: bool = False, now: float | None = None) -> None:
        """Store PAD fingerprints (encrypted). ``kind`` is ``"enroll"`` or ``"probe"``;
        ``replace`` drops the user's earlier rows of that kind first. Probe rows beyond
        :attr:`pad_history` per user are dropped, oldest first."""

    @abc.abstractmethod
    def get_fingerprints(self, user_id: str) -> list[tuple[str, bytes]]:
        """``[(kind, fingerprint), ...]`` oldest first."""

    @abc.abstractmethod
    def add_session_window(self, session_id: str, user_id: str, fingerprint: bytes, *,
                           keep: int, every: int = 0, most: int | None = None,
                           now: float | None = None) -> int | None:
        """Append the PAD fingerprint of a window streamed on the session
        ``session_id`` (:attr:`Session.session_id`) of ``user_id`` (encrypted, bound to
        both) and drop the session's windows beyond its newest ``keep`` (at most
        1 000 000), but for one in every ``every`` of them (by their order in the
        session: its ``every``-th, ``2 every``-th... window; 0: none), and the user's
        windows beyond its newest ``most`` (at least ``keep``; ``None``: no bound),
        across its sessions; return the row's id, or ``None`` (nothing written) when the
        session is not active at ``now``. A session's windows stay when it ends (a
        window of a later session is checked against them: a recording replayed on a
        new session is a replay); they go with its row (:meth:`purge_sessions`) and
        with the user (:meth:`delete_user`)."""

    @abc.abstractmethod
    def get_session_windows(self, session_id: str, user_id: str,
                            known: Iterable[int] = (), *,
                            others_before: float | None = None
                            ) -> list[tuple[int, bytes | None]]:
        """The session's window fingerprints, and with ``others_before`` the user's
        windows of its other sessions written at or before ``others_before``, oldest
        first, as ``(id, fingerprint)``; the fingerprint is ``None`` for an id in
        ``known`` (the caller has it: a row's id is never reused and its fingerprint
        never changes), neither read nor decrypted."""

    # -- one authentication: one read, one write ------------------------------------
    def get_auth_state(self, user_id: str, *, device_id: str | None = None,
                       fingerprints: bool = False) -> AuthState:
        """Template and lockout state of ``user_id`` (and the device ``device_id``, and
        the PAD history when ``fingerprints``) in one read. ``NotFound`` for a user
        without a template. Backends override this with one transaction; this default
        composes the single-purpose methods."""
        from ..errors import NotFound

        template = self.get_template(user_id)
        lock = self.get_lockout(user_id)
        device = None
        if device_id is not None:
            try:
                device = self.get_device(device_id)
            except NotFound:
                device = None
        fps = self.get_fingerprints(user_id) if fingerprints else None
        return AuthState(template, lock, device, fps)

    def finish_authentication(self, user_id: str, accepted: bool, *, score: float | None,
                              reason: str, peer: str, duration_s: float, method: str,
                              session_ttl_s: float = 0.0, device_id: str | None = None,
                              max_failures: int = 1, lock_seconds: float = 1.0,
                              probe_fingerprint: bytes | None = None,
                              template_id: tuple[int, float] | None = None,
                              device_key: tuple[str, float] | None = None,
                              now: float | None = None) -> AuthOutcome:
        """Every write of one authentication, atomically: on ``accepted``, unless the
        user is locked at ``now`` (failures counted by concurrent calls since the caller
        checked) or the user's template is no longer the one the decision used
        (``template_id`` = its ``(version, created_at)``: updated, or the user deleted
        and enrolled again meanwhile; ``FailedPrecondition``, nothing written) or the
        device whose secret verified the proof no longer has it (``device_key`` =
        ``(device_id, created_at)``: rotated or removed meanwhile; the same), reset
        the consecutive failures and open a session of ``session_ttl_s``
        (``create_session``); a locked user gets no session (``locked`` set, the attempt
        audited as rejected with reason ``"locked"``); otherwise count a failure
        (``register_failure(max_failures, lock_seconds)``), unless the decision used a
        template replaced since (``template_id`` no longer the user's: audited, not
        counted against the streak of the template in place); append
        ``probe_fingerprint`` to the PAD history when given; append the audit row
        (``record_attempt``). Backends override this with one transaction; this default
        composes the single-purpose methods (not atomic)."""
        t = _now(now)
        session, failures, locked_until = None, 0, None
        if accepted and template_id is not None:
            rec = self.get_template(user_id)
            if _template_stamp(rec) != tuple(template_id):
                raise FailedPrecondition(TEMPLATE_CHANGED)
        if accepted and device_key is not None:
            dev = self.get_device(device_key[0])
            if dev.user_id != user_id or dev.created_at != device_key[1]:
                raise FailedPrecondition(DEVICE_CHANGED)
        if accepted:
            lock = self.get_lockout(user_id)
            if lock.locked_until is not None and lock.locked_until > t:
                self.record_attempt(user_id, False, score, "locked", peer, duration_s,
                                    method, now=t)
                return AuthOutcome(None, lock.failures, lock.locked_until, locked=True)
        if probe_fingerprint is not None:
            self.add_fingerprints(user_id, [probe_fingerprint], "probe", now=t)
        if accepted:
            self.reset_failures(user_id)
            session = self.create_session(user_id, session_ttl_s, device_id=device_id, now=t)
        elif template_id is None or _template_stamp(self.get_template(user_id)) == tuple(
                template_id):
            failures, locked_until = self.register_failure(user_id, max_failures,
                                                           lock_seconds, now=t)
        self.record_attempt(user_id, accepted, score, reason, peer, duration_s, method, now=t)
        return AuthOutcome(session, failures, locked_until)

    # -- key management ------------------------------------------------------------
    @abc.abstractmethod
    def rotate_key(self, new_key: bytes | str) -> KeyRotation:
        """Re-encrypt every template, device secret and fingerprint (stream windows'
        included) under ``new_key`` in
        one transaction; afterwards the store uses the new key. A row that does not
        decrypt (damaged) does not stop it: it is left as it was and named in the
        returned :class:`KeyRotation` (re-enroll the user, re-register the device).
        ``FailedPrecondition`` (nothing changed) when the store's key is no longer this
        object's (another process rotated it).

        A store object of another process (a replica) still holding the old key gets
        ``FailedPrecondition`` for a write that would encrypt under it (nothing written).

        A COMMIT whose answer was lost (``OutcomeUnknown``): the store's key id is read
        again; rotated, the call returns as if answered; not, it raises and this object
        stays on the old key; unreadable, it raises, and this object's next write runs
        under whichever of its two keys the store is under."""

    @property
    @abc.abstractmethod
    def key_id(self) -> str:
        """Id of the key in use (safe to log)."""
