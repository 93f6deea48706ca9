"""The one domain API of nacf: enrollment, authentication, identification, users,
sessions, devices, lockout, rate limits, audit and stats.

The gRPC servicer (``nacf_core.server``) and the CLI are thin adapters over
:class:`AuthService`; it never sees a protobuf message.  Inputs arrive as
:class:`SignalBlock` (samples ``(n_times, n_channels)`` float32 µV), errors leave as
``nacf_core.errors.*`` whose ``code`` is the gRPC status name.

Security decisions (written down here, enforced here):

- **Device proof** (NIST SP 800-63B rev. 3 §5.2.3: a biometric goes with a physical
  authenticator).  ``Authenticate`` carries ``device_id``, ``timestamp`` (unix seconds,
  integer) and ``proof`` = lowercase hex HMAC-SHA256 with key = UTF-8 device secret
  over UTF-8 ``f"{user_id}\\n{device_id}\\n{timestamp}\\n{sha256_hex(samples)}"``
  (``samples`` = the raw little-endian float32 bytes as sent; for the streaming RPCs
  the samples of the first chunk).  Missing, wrong, stale (``|now - timestamp| >
  proof_max_skew_s``, 60 s) or replayed (the same proof seen before, remembered in the
  shared store for twice the skew) → ``Unauthenticated``.  The device must be bound
  to that user with :meth:`AuthService.register_device`.
- **Lockout**: only biometric rejections count as failures (a bad device proof is a
  suspicious activity and an audit row, but it does not lock the user: otherwise
  anyone holding an API key could lock anyone out without a headset).  After
  ``lockout_threshold`` consecutive failures the user is locked for
  ``lockout_seconds``; while locked, authentication gets ``FailedPrecondition`` and
  no biometric comparison is made.  ``unlock_user`` lifts it.  Counters live in the
  store, so replicas share them.
- **Rate limit**: a token bucket per client id (the API key's id, the client
  certificate or the peer), in the store; empty → ``ResourceExhausted``.
- **Sessions**: a successful authentication opens a session with ``session_ttl_s``;
  the store keeps only the SHA-256 of the token.  ``continuous`` keeps a session
  verified while a headset streams and ends it when the wearer changes
  (``continuous_mismatch_windows`` consecutive windows below the threshold) or the
  signal is lost (no usable window, or no data, for ``signal_loss_s``; or data slower
  than a headset records).
- Nothing here logs a signal, an embedding, a template, a secret or a token.
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import hmac
import logging
import math
import queue
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nacf_core.config import Config
from nacf_core.errors import (
    AlreadyExists,
    AnotherDeviceBound,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NacfError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SignalUnusable,
    TemplateUnreadable,
    Unauthenticated,
    Unavailable,
)
from nacf_core.pipeline import check_supported_sfreq, reason_codes, samples_for
from nacf_core.ratelimit import TokenLeases
from nacf_core.store.base import DEVICE_CHANGED, TEMPLATE_CHANGED, retention_cutoff

__all__ = [
    "AuthResult",
    "AuthService",
    "ContinuousUpdate",
    "DeviceProof",
    "EnrollResult",
    "IdentifyResult",
    "SessionInfo",
    "SignalBlock",
    "UserInfo",
    "check_user_id",
    "device_proof",
    "sha256_hex",
]

log = logging.getLogger("nacf.service")

_USER_ID_MAX = 128
_DEVICE_ID_MAX = 128
_UNREAD = object()  # a device record that was not looked up

#: Enroll: the share of a window's power in its first principal component (median over
#: a signal's accepted windows) from which its channels are one signal copied
_ONE_SIGNAL_PC1 = 0.99
#: ... for models of at least this many channels (measured on 8 and 16)
_ONE_SIGNAL_MIN_CHANNELS = 4
#: ContinuousAuthenticate: how many of the session's newest streamed windows its replay
#: check keeps (in the store, encrypted: ~2 KB a window); before them, one window in every
#: ``_STREAM_PAD_HISTORY`` of the session stays too, so a recording looped for longer than
#: the newest meets one of them on its second pass
_STREAM_PAD_HISTORY = 64
#: ... up to this many of the user's windows in all, across its sessions (the newest; an
#: ended session's stay, so that its recording replayed on a new session is caught): 64
#: newest and 128 older ones of one session cover loops up to 128 x 64 windows (9 h of
#: 4-s windows); each window is compared with every one kept (and the user's stored
#: history), under the CPU gate
_STREAM_PAD_MOST = 192
#: ... but for the windows of the user's other sessions streamed within this many seconds:
#: a headset feeding two apps' sessions at once is one live signal, not a replay
_STREAM_PAD_OTHERS_AFTER_S = 60.0
_PROOF_FAILS = ("device proof does not verify: the device is not registered to this user, "
                "or the secret, the signed user, device, timestamp or samples differ.")
_ANOTHER_DEVICE = ("user {user!r} already has a registered device; binding another one "
                   "(or rotating a secret) needs the admin scope.")


#: How many of the last gallery rows dropped (DeleteUser, a template replaced elsewhere)
#: AuthService remembers, so that a gallery built from an earlier store read is not kept
#: with them (one built before more drops than this is not kept at all)
_GALLERY_CUTS_KEPT = 1024


class _IdentifyLogged(Exception):
    """An Identify refusal whose identify line is written already: ``error`` is raised."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _ProofRejected(Exception):
    """A device proof that does not pass (kind: the ``device_proof_<kind>`` reason)."""

    def __init__(self, kind: str, message: str, severity: str = "medium") -> None:
        super().__init__(message)
        self.kind, self.message, self.severity = kind, message, severity


#: The gRPC ``user-agent`` of the call being served, set by the server's interceptor
#: around the call's handler (empty in process): :func:`peer_fields` adds it.
CALLER_USER_AGENT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "nacf_caller_user_agent", default="")
#: Most characters of a ``user_agent`` log field (the client chooses it).
MAX_USER_AGENT = 256


def peer_fields(peer: str) -> dict[str, str]:
    """The log fields naming a gRPC caller: ``ip_address`` (the monitoring guide's field:
    the address alone, e.g. ``127.0.0.1`` or ``::1``), ``peer`` (gRPC's whole peer
    string, e.g. ``ipv4:127.0.0.1:50122``, ``unix:/run/nacf.sock``) and, in a call the
    server serves, ``user_agent`` (the guide's field: the client's gRPC user-agent,
    :data:`CALLER_USER_AGENT`); nothing when the peer is unknown."""
    if not peer:
        return {}
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)  # gRPC writes an IPv6 peer as ipv6:%5B::1%5D:port
    if kind == "ipv4":
        out = {"ip_address": rest.rpartition(":")[0] or rest, "peer": peer}
    elif kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        out = {"ip_address": host.strip("[]") or rest, "peer": peer}
    else:
        out = {"peer": peer}
    ua = CALLER_USER_AGENT.get()
    if ua:
        out["user_agent"] = ua
    return out


# ----------------------------------------------------------------------------------
# value types
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignalBlock:
    """A block of EEG as a client sent it.

    Attributes
    ----------
    samples : ndarray, shape (n_times, n_channels), float32
        Microvolts (may be a read-only view of the request bytes).
    sfreq : float
        Sampling rate in Hz.
    ch_names : tuple of str, length n_channels
    device_id : str
        The headset that recorded it ("" if not given).
    raw : bytes
        The little-endian float32 bytes as received (the device proof hashes these).
    """

    samples: np.ndarray = field(repr=False)
    sfreq: float
    ch_names: tuple[str, ...]
    device_id: str = ""
    raw: bytes = field(default=b"", repr=False)

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sfreq

    def raw_bytes(self) -> bytes:
        if self.raw:
            return self.raw
        return np.ascontiguousarray(self.samples, dtype="<f4").tobytes()


@dataclass(frozen=True)
class DeviceProof:
    """The device-proof metadata exactly as received (strings; validated here).
    ``repeated``: the keys the request carried more than once, with how many times (the
    proof is then refused: which value counts would be the reader's guess)."""

    device_id: str | None
    timestamp: str | None
    proof: str | None = field(repr=False)  # never in a message or a log line
    repeated: tuple[tuple[str, int], ...] = ()

    @property
    def present(self) -> bool:
        return bool(self.device_id or self.timestamp or self.proof)


@dataclass(frozen=True)
class RejectedEpoch:
    signal_index: int
    epoch_index: int
    reason: str


@dataclass(frozen=True)
class EnrollResult:
    user_id: str
    template_version: int
    epochs_used: int
    rejected: list[RejectedEpoch]
    quality: float
    model_version: str


@dataclass(frozen=True)
class AuthResult:
    accepted: bool
    score: float
    threshold: float
    quality: float
    reasons: list[str]
    model_version: str
    seconds_used: float
    windows_used: int
    session_token: str = field(default="", repr=False)
    session_expires_at: float = 0.0


@dataclass(frozen=True)
class IdentifyResult:
    candidates: list[tuple[str, float]]
    threshold: float
    quality: float
    model_version: str
    reasons: list[str]


@dataclass(frozen=True)
class UserInfo:
    user_id: str
    template_version: int
    created_at: float
    updated_at: float
    model_version: str
    locked: bool
    locked_until: float
    consecutive_failures: int
    device_ids: list[str]


@dataclass(frozen=True)
class SessionInfo:
    valid: bool
    user_id: str
    expires_at: float
    last_verified: float
    reason: str


@dataclass(frozen=True)
class ContinuousUpdate:
    state: str  # "verified" | "uncertain" | "ended"
    score: float
    threshold: float
    quality: float
    reason: str
    session_expires_at: float
    seconds_streamed: float


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------
def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def device_proof(secret: str, user_id: str, device_id: str, timestamp: int | str,
                 samples: bytes) -> str:
    """The device proof a headset sends (lowercase hex HMAC-SHA256).

    Parameters
    ----------
    secret : str
        The device secret ``register_device`` returned.
    user_id, device_id : str
    timestamp : int or str
        Unix seconds, an integer.
    samples : bytes
        The ``Signal.samples`` bytes (little-endian float32) as sent.
    """
    msg = f"{user_id}\n{device_id}\n{int(timestamp)}\n{sha256_hex(samples)}"
    return hmac.new(secret.encode("utf-8"), msg.encode("utf-8"), hashlib.sha256).hexdigest()


def check_user_id(user_id: Any, name: str = "user_id") -> str:
    """A non-empty printable id of at most 128 characters."""
    if not isinstance(user_id, str):
        raise InvalidArgument(f"{name!r} must be a string, got {type(user_id).__name__}.")
    if not user_id:
        raise InvalidArgument(f"{name!r} must not be empty.")
    if len(user_id) > _USER_ID_MAX:
        raise InvalidArgument(f"{name!r} must be at most {_USER_ID_MAX} characters, got "
                              f"{len(user_id)}.")
    if not user_id.isprintable():
        raise InvalidArgument(f"{name!r} must be printable (no control characters), got "
                              f"{user_id!r}.")
    return user_id


def _status_name(exc: BaseException) -> str:
    if isinstance(exc, NacfError):
        return exc.code
    if isinstance(exc, (ValueError, TypeError)):
        return "INVALID_ARGUMENT"
    return "INTERNAL"


#: Most signal seconds an AuthenticateStream at another rate than the model's takes
#: (stream_max_seconds or max_seconds above it are cut to it): each of its windows is cut
#: from the signal up to the window's end resampled whole, as Authenticate on those
#: samples cuts it, so every window recomputes all those before it and the stream's CPU
#: grows with the square of its length (60 s: 15 windows of the shipped model, about
#: 0.2 s of CPU at 250 Hz; at the model's rate a stream's CPU grows with its length).
RESAMPLED_STREAM_MAX_S = 60.0


class _Recognizer:
    """Adapter between the service and ``nacf_core.pipeline`` (one place to change)."""

    def __init__(self, pipeline: Any) -> None:
        from nacf_core.pipeline import Template

        self.pipeline = pipeline
        self.model = pipeline.model
        self._template_cls = Template

    @property
    def model_version(self) -> str:
        return str(self.model.version)

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    @property
    def window_s(self) -> float:
        return float(self.model.window_s)

    def windows(self, block: SignalBlock, hop_s: float | None = -1.0):
        """Windows of ``block``; non-overlapping by default (as verification uses),
        ``hop_s=None`` for the model's enrollment hop."""
        hop = self.window_s if hop_s == -1.0 else hop_s
        return self.pipeline.windows(block.samples, block.sfreq, list(block.ch_names),
                                     hop_s=hop)

    def enroll(self, blocks: list[SignalBlock], windows: list[Any] | None = None) -> Any:
        """The template of ``blocks``; from their ``windows`` (:meth:`windows` with
        ``hop_s=None``) when the caller has them already."""
        if windows is not None:
            return self.pipeline.template_from_windows(windows)
        return self.pipeline.enroll([(b.samples, b.sfreq, list(b.ch_names)) for b in blocks])

    def decide(self, windows: Any, template: Any) -> Any:
        return self.pipeline.decide(windows, template)

    def scores(self, windows, template) -> np.ndarray:
        return np.asarray(self.pipeline.score(windows, template), dtype=np.float64)

    def window_stream(self, sfreq: float, ch_names: Iterable[str]) -> Any:
        """A ``pipeline.WindowStream`` of verification windows (non-overlapping) of a
        signal at the model's rate that arrives piece by piece."""
        return self.pipeline.window_stream(sfreq, list(ch_names), hop_s=self.window_s)

    def push_windows(self, stream: Any, samples: np.ndarray) -> Any:
        """The windows the next piece ``samples`` of ``stream`` completes."""
        return stream.push(samples)

    def running_score(self, template: Any) -> Any:
        return self.pipeline.running_score(template)

    def template_from_bytes(self, blob: bytes) -> Any:
        return self._template_cls.from_bytes(blob)

    def sequential(self, max_seconds: float) -> Any:
        from nacf_core.sequential import SequentialTest

        return SequentialTest(self.model,
                              max_windows=max(1, int(max_seconds // self.window_s)))


# ----------------------------------------------------------------------------------
class AuthService:
    """The domain service.

    Parameters
    ----------
    store : nacf_core.store.Store
    pipeline : nacf_core.pipeline.Pipeline
        Its ``model`` gives ``version``, ``threshold`` and ``window_s``.
    config : Config
    metrics : nacf_core.metrics.Metrics, optional
        Default: the process-wide ``METRICS``.
    clock : callable
        Unix seconds (tests inject a fake).
    pad : object, optional
        Presentation-attack detector with ``check(user_id, windows, block)`` (see
        ``nacf_core.pad``); ``None`` disables it.
    """

    def __init__(self, store: Any, pipeline: Any, config: Config | None = None, *,
                 metrics: Any = None, clock: Callable[[], float] = time.time,
                 pad: Any = None) -> None:
        self.store = store
        self.rec = _Recognizer(pipeline)
        self.config = config or Config()
        if metrics is None:
            from nacf_core.metrics import METRICS as metrics
        self.metrics = metrics
        self.clock = clock
        self.pad = pad
        # enrollment's non-physiological check and its search for copies of a signal
        # run whatever the PAD setting: with PAD off, on a detector of the model's
        # channels made at the first enrollment (_physiology_detector); Authenticate
        # and the streams do not use it
        self._enroll_detector: Any = None
        self._enroll_detector_lock = threading.Lock()
        # decoded templates, by user id, with their bytes and stamp (see _template)
        self._templates: dict[str, tuple[bytes, Any, bytes]] = {}
        # Identify's gallery: (user ids, their templates' stamps, embedding matrix, the
        # stamps of the templates left out as unreadable by user id), rebuilt only where
        # a template changed (see _gallery)
        self._gallery_state: tuple[list[str], list[bytes], np.ndarray,
                                   dict[str, bytes]] | None = None
        # held to replace the gallery: a row cut out (a deleted user's) is cut from the
        # gallery as it is then, not from one another cut is replacing meanwhile
        self._gallery_lock = threading.RLock()
        # the rows cut out, numbered: a gallery built from a store read made before a
        # cut is kept without that row (see _gallery)
        self._gallery_cuts = 0
        self._gallery_cut: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=_GALLERY_CUTS_KEPT)
        # the CPU-bound part of an authentication (pipeline, PAD; also of a stream's
        # windows and of Identify) runs one thread at a time per process: under the GIL more
        # would not run in parallel, and the many short NumPy calls would hand the GIL back
        # and forth between worker threads
        # (each hand-over can cost a switch interval); store I/O stays concurrent
        self._cpu_gate = threading.Lock()
        # with an in-process store (SQLite: its writers are serialised anyway, and its
        # calls are CPU, not waiting) a whole unary authentication runs one at a time:
        # 8 concurrent calls made ~30-40 context switches per call and cost 1.4-2x the
        # CPU of one call at a time (measured in process, without gRPC);
        # a networked store (PostgreSQL) keeps its round trips concurrent. The server
        # takes this (re-entrant) lock around the whole call, rate limit and request
        # checks included, so the threads queued behind it wait without competing for
        # the GIL; ``None`` with a networked store.
        self.authenticate_gate: threading.RLock | None = (
            threading.RLock() if getattr(store, "in_process", False) else None)
        # per-client rate limit: leases of the store's shared buckets (nacf_core.ratelimit)
        self.rate_leases = TokenLeases(
            self.store.take_tokens, float(self.config.rate_limit_per_s),
            float(self.config.rate_limit_burst), max_lease=int(self.config.rate_limit_lease))
        self._last_purge = 0.0
        self._last_expire = 0.0
        self._purge_lock = threading.Lock()

    # ---------------------------------------------------------------- infrastructure
    @property
    def model_version(self) -> str:
        return self.rec.model_version

    def model_info(self) -> dict[str, Any]:
        """What a signal must be for the model (``GetModel``): its version, the channels
        it reads, the rates a signal may have, its window's seconds."""
        from nacf_core._validation import MAX_SFREQ, MIN_SFREQ

        return {"model_version": self.model_version,
                "channel_names": [str(c) for c in self.rec.model.ch_names],
                "min_sample_rate_hz": float(MIN_SFREQ), "max_sample_rate_hz": float(MAX_SFREQ),
                "window_seconds": float(self.rec.window_s)}

    def ready(self) -> bool:
        """True when the store answers."""
        try:
            self.store.ping()
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    def check_rate_limit(self, client_id: str) -> None:
        """Take one token from ``client_id``'s bucket (through this process's lease of
        it, :mod:`nacf_core.ratelimit`) or raise ``ResourceExhausted``."""
        ok = self._store("take_token", self.rate_leases.take, client_id, self.clock())
        if not ok:
            self.metrics.record_suspicious("rate_limited", "low")
            raise ResourceExhausted(
                f"rate limit exceeded for this client: {self.config.rate_limit_per_s:g} "
                f"requests/s with bursts of {self.config.rate_limit_burst:g}; retry later.")

    def _security_event(self, message: str, kind: str, severity: str, user_id: str, *,
                        counted: bool = True, **fields: Any) -> None:
        """A suspicious activity: counted in ``nacfauth_suspicious_activities_total``
        (unless not ``counted``) and written as a ``security_event`` line."""
        if counted:
            self.metrics.record_suspicious(kind, severity)
        log.warning(message, extra={"event_type": "security_event",
                                    "security_event_type": kind, "severity": severity,
                                    "user_id": user_id, **fields})

    def _store(self, op: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call the store; domain errors pass through, anything else is UNAVAILABLE.
        A store failure, raised as ``Unavailable`` by the store itself (its driver's
        errors translated: a writer lock held too long, a server gone, a query timeout)
        or by this method, is counted in ``nacfauth_store_errors_total``; so is a stored
        template that does not decrypt (``TemplateUnreadable``, logged too)."""
        try:
            return fn(*args, **kwargs)
        except TemplateUnreadable as e:
            self._template_unreadable(e, op)
            raise
        except Unavailable as e:
            if not getattr(e, "counted", False):
                self.metrics.record_store_error(op)
                log.error("store error", extra={"event_type": "store_error", "operation": op,
                                                "error": str(e)})
                e.counted = True
            raise
        except NacfError:
            raise
        except Exception as e:
            self.metrics.record_store_error(op)
            # with the traceback: a programming error must not pass for an outage
            log.error("store error", exc_info=True, extra={
                "event_type": "store_error", "operation": op, "error": type(e).__name__})
            err = Unavailable(f"the template store failed during {op}: {type(e).__name__}; "
                              "retry later.")
            err.counted = True  # in nacfauth_store_errors_total already
            raise err from e

    def _template_unreadable(self, exc: TemplateUnreadable, op: str) -> None:
        """Count a stored template that cannot be read in ``nacfauth_store_errors_total``
        under the store operation ``op`` that read it, and log it (the user id and what
        is wrong with it, never its bytes)."""
        self.metrics.record_store_error(op)
        log.error("stored template unreadable", extra={
            "event_type": "template_unreadable", "user_id": exc.user_id, "operation": op,
            "error": str(exc)})

    def _decode(self, user_id: str, version: int, blob: bytes) -> Any:
        """The template decoded from a record's ``blob``; ``TemplateUnreadable`` when the
        bytes are no template, or one of the served model whose embedding has another
        dimension than the model's."""
        try:
            tpl = self.rec.template_from_bytes(blob)
            dim = getattr(self.rec.model, "embedding_dim", None)
            shape = np.shape(tpl.embedding)
            if str(tpl.model_version) == self.model_version and dim is not None \
                    and shape != (dim,):
                raise InvalidArgument(f"its embedding has shape {shape}, not ({dim},)")
        except Exception as e:  # noqa: BLE001 - whatever the bytes made the decoder raise
            # nacf's own messages say what is wrong; another exception's could quote bytes
            why = str(e).rstrip(".") if isinstance(e, NacfError) else type(e).__name__
            raise TemplateUnreadable(
                f"The template of user {user_id!r} (version {version}) does not decode "
                f"({why}). It cannot be read: re-enroll the user (Enroll with update=true) "
                "to replace it.", user_id) from None
        return tpl

    def maintenance(self, force: bool = False) -> None:
        """Expire sessions and drop what this process keeps of users deleted or
        re-enrolled by another replica (every 30 s at most), and purge audit rows and
        ended sessions past retention, and the rate-limit buckets idle long enough to be
        full again (every ``purge_interval_s``).  The server's maintenance thread calls
        this every 2 s; it never runs inside a request."""
        now = self.clock()
        with self._purge_lock:
            # a last run later than now: the wall clock stepped back, due now (waiting for
            # the clock to catch up expired no session for as long as the step)
            expire = force or not (0.0 <= now - self._last_expire
                                   < min(30.0, self.config.purge_interval_s))
            purge = force or not 0.0 <= now - self._last_purge < self.config.purge_interval_s
            if expire:
                self._last_expire = now
            if purge:
                self._last_purge = now
        n, n_sessions, n_buckets, ended = 0, 0, 0, []
        if purge:
            cutoff = retention_cutoff(now, self.config.audit_retention_days)
            n = self._store("purge_attempts", self.store.purge_attempts, cutoff)
            # ended sessions say who authenticated when, as audit rows do
            n_sessions = self._store("purge_sessions", self.store.purge_sessions, cutoff)
            # one bucket per client id (per address in open mode) ever seen, unless the
            # full ones go (the next take recreates a bucket full: nothing changes)
            n_buckets = self._store("purge_rate_buckets", self.store.purge_rate_buckets,
                                    float(self.config.rate_limit_per_s),
                                    float(self.config.rate_limit_burst), now=now)
        forgotten = 0
        shortened: list[str] = []
        n_shortened = 0
        if expire:
            # a lock with more than lockout_seconds left: the wall clock stepped back since
            # it was set (it lasted as much longer, an hour for an hour's step), or the
            # lockout got shorter; it ends lockout_seconds from now
            shortened = self._store("shorten_lockouts", self.store.shorten_lockouts,
                                    float(self.config.lockout_seconds), now=now)
            # so for an open session with more than session_ttl_s left (no renewal sets
            # more): it would outlive its TTL by the step, a day for a snapshot's; and one
            # expiring after its opening + session_max_age_s (lowered since it opened: the
            # longest a session lasts) expires then, ended below if that has passed
            n_shortened = self._store("shorten_sessions", self.store.shorten_sessions,
                                      float(self.config.session_ttl_s), now=now,
                                      max_age_s=float(self.config.session_max_age_s))
            ended = self._store("expire_sessions", self.store.expire_sessions, now=now)
            for s in ended:
                self.metrics.observe_session_duration(max(0.0, s.expires_at - s.created_at))
            self._update_active_sessions(now)
            forgotten = self._forget_changed_elsewhere()
        if n or n_sessions or n_buckets or ended or forgotten or shortened or n_shortened:
            log.info("maintenance", extra={"event_type": "maintenance", "audit_purged": n,
                                           "lockouts_shortened": len(shortened),
                                           "sessions_shortened": n_shortened,
                                           "sessions_purged": n_sessions,
                                           "rate_buckets_purged": n_buckets,
                                           "sessions_expired": len(ended),
                                           "users_forgotten": forgotten})

    def refresh_gauges(self) -> None:
        """Refresh the gauges read from the shared store (the server calls this every
        couple of seconds, so every replica exports the shared count)."""
        self._update_active_sessions()

    def _update_active_sessions(self, now: float | None = None) -> None:
        try:
            n = self.store.count_active_sessions(now=self.clock() if now is None else now)
        except Exception:  # noqa: BLE001 - a gauge refresh must not fail a call
            self.metrics.record_store_error("count_active_sessions")
            return
        self.metrics.set_active_sessions(int(n))

    # -------------------------------------------------------------------- enrollment
    def enroll(self, user_id: str, blocks: list[SignalBlock], update: bool = False,
               *, method: str = "Enroll", actor: str = "", peer: str = "",
               deadline: float | None = None) -> EnrollResult:
        """Enroll ``user_id`` from one or more blocks (or replace its template).

        Raises ``AlreadyExists`` for an existing user unless ``update``;
        ``InvalidArgument`` for bad signals; ``FailedPrecondition`` when too few good
        epochs remain (the pipeline says how many it needs); ``DeadlineExceeded``, with
        nothing written, when ``deadline`` (a ``time.monotonic()`` value: the call's) has
        passed once the template is computed (the client has been told the call failed:
        a template written anyway made its retry ``AlreadyExists``), or while the store's
        write waited for a lock (the store refuses it then). A replaced template
        ends the user's sessions (they were verified against the old one). ``actor`` (the
        caller's client id) and ``peer`` go into the audit trail.
        """
        status = "INTERNAL"
        try:
            user_id = check_user_id(user_id)
            if not blocks:
                raise InvalidArgument("'signals' must hold at least one Signal, got none.")
            if len(blocks) > MAX_ENROLL_SIGNALS:  # each is compared with every other
                raise InvalidArgument(
                    f"'signals' holds at most {MAX_ENROLL_SIGNALS} signals, got "
                    f"{len(blocks)}: send the recording as one Signal (or a few, one "
                    "per session) rather than in pieces.")
            if not update:
                try:
                    self._store("get_user", self.store.get_user, user_id)
                except NotFound:
                    pass
                else:
                    raise AlreadyExists(f"user {user_id!r} is already enrolled; set "
                                        "update=true to replace the template.")
            t0 = time.perf_counter()
            wins, rejected = [], []
            for i, b in enumerate(blocks):
                try:
                    w = self.rec.windows(b, hop_s=None)
                except InvalidArgument as e:  # which of the signals (as the wire names it)
                    raise InvalidArgument(f"signals[{i}]: {e}") from None
                wins.append(w)
                for j, ok in enumerate(np.asarray(w.accepted)):
                    if not ok:
                        rejected.append(RejectedEpoch(i, j, _reason_at(w.reasons, j)))
            self._refuse_one_signal_on_every_channel(blocks, wins)
            self._refuse_non_physiological(user_id, blocks, wins, peer=peer,
                                           method=method)  # PAD on or off
            # a window sent twice must not count twice towards the quality gate
            _refuse_repeated_signals(blocks, self.rec.model.ch_names, self.rec.window_s)
            # nor a copy rescaled, offset or with noise added (PAD on or off: the
            # quality gate is the same; the fingerprints are kept only with PAD on)
            det = self._physiology_detector() if len(blocks) > 1 else self.pad
            indexed_fps = [] if det is None else det.block_fingerprints(blocks)
            # only signals with an accepted window count towards the gate: an unusable
            # one's rejected windows (a dead channel, artifacts) can look like another's
            good = {i for i, w in enumerate(wins) if np.asarray(w.accepted).any()}
            repeat = None if det is None else det.first_repeat(
                [(i, fp) for i, fp in indexed_fps if i in good])
            if repeat is not None:
                j, i, s = repeat
                raise InvalidArgument(
                    f"signals[{j}] repeats signals[{i}]: their signals look like one "
                    f"recording (similarity {s:.3f}, {det.replay_threshold:g} or "
                    "more is a copy: rescaled, offset, with noise added or a piece of "
                    "it); each window of an enrollment counts once, send distinct "
                    "recordings.")
            if self.pad is None:
                indexed_fps = []
            # counted before the enrollment can be refused for too few good windows
            self.metrics.record_artifact_rejections(_codes(r.reason for r in rejected))
            try:
                template = self.rec.enroll(blocks, wins)  # the windows computed above
            except FailedPrecondition:
                # too few good windows: the signals that most need to show in the quality
                # histogram (as Identify's refused ones do), with every window's quality
                q_all = np.concatenate([np.asarray(w.quality, dtype=np.float64)
                                        for w in wins])
                self.metrics.observe_signal("enroll", time.perf_counter() - t0,
                                            min(1.0, max(0.0, _mean(q_all))))
                raise
            quality = float(template.quality)
            used = int(template.n_epochs)
            self.metrics.observe_signal("enroll", time.perf_counter() - t0,
                                        min(1.0, max(0.0, quality)))
            blob = template.to_bytes()
            # the template and its PAD fingerprints in one transaction: a crash, a
            # concurrent update or a delete never leaves one without the other; without
            # PAD none, so a replaced enrollment's fingerprints do not outlive it
            fps = [fp for _, fp in indexed_fps]
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(
                    "the call's deadline passed while the template was computed: nothing "
                    "was written; retry with a longer deadline.")
            # a replaced template ends the sessions verified against it in the same
            # transaction: one opened on the new template just after it stays open
            now = self.clock()
            version, ended = self._store(
                "put_template", self.store.put_template_ending_sessions, user_id, blob,
                self.model_version, {"epochs_used": used, "quality": quality},
                reason="template_replaced", create_only=not update,
                enroll_fingerprints=fps, now=now, deadline=deadline)
            status = "OK"
            log.info("enrolled", extra={"event_type": "enrollment", "user_id": user_id,
                                        "template_version": version, "epochs_used": used,
                                        "epochs_rejected": len(rejected),
                                        "quality": round(quality, 3)})
            self._sessions_ended(ended, now)
            self._audit(user_id, method, "template_replaced" if version > 1 else "enrolled",
                        actor, peer, template_version=version, sessions_ended=len(ended))
            return EnrollResult(user_id, int(version), used, rejected, quality,
                                self.model_version)
        except BaseException as e:
            status = _status_name(e)
            raise
        finally:
            self.metrics.record_registration(method, status)

    def _refuse_one_signal_on_every_channel(self, blocks: list[SignalBlock],
                                            wins: list[Any]) -> None:
        """``InvalidArgument`` for the first enrollment signal whose accepted windows are
        one signal on every model channel (a headset whose inputs are bridged or shorted
        together, a channel copied): in most of them the first principal component of
        the band-passed channels holds ``_ONE_SIGNAL_PC1`` of the power (real EEG: at
        most 0.97 in a window, a median of 0.95 over a recording: EEGMMIDB and the
        OpenBCI Cyton recordings, eyes closed the highest). Its template is of no
        person: any other EEG channel copied the same way matched it. The signal's front
        end runs again (enrollment only)."""
        epochs_of = getattr(self.rec.pipeline, "epochs", None)
        if epochs_of is None or len(self.rec.model.ch_names) < _ONE_SIGNAL_MIN_CHANNELS:
            return  # two or three neighbouring electrodes can be that alike
        for i, (b, w) in enumerate(zip(blocks, wins)):
            acc = np.asarray(w.accepted, dtype=bool)
            if not acc.any():
                continue
            ep = epochs_of(b.samples, b.sfreq, list(b.ch_names), hop_s=None)[0][acc]
            ep = ep - ep.mean(axis=2, keepdims=True)
            ev = np.linalg.eigvalsh(np.einsum("nct,ndt->ncd", ep, ep))
            total = ev.sum(axis=1)
            pc1 = np.where(total > 0, ev[:, -1] / np.where(total > 0, total, 1.0), 0.0)
            if float(np.median(pc1)) >= _ONE_SIGNAL_PC1:
                raise InvalidArgument(
                    f"signals[{i}] carries one signal on every channel: its channels are "
                    f"copies of one another ({float(np.median(pc1)):.3f} of their power in "
                    "one component), as from electrodes bridged or shorted together; it "
                    "would make a template of no person. Check the headset's electrodes "
                    "and send a recording of the user.")

    def _refuse_non_physiological(self, user_id: str, blocks: list[SignalBlock],
                                  wins: list[Any], *, peer: str = "",
                                  method: str = "Enroll") -> None:
        """``InvalidArgument`` (a suspicious activity, counted and logged) for the first
        enrollment signal whose accepted windows PAD finds non-physiological (white
        noise, a sine, a loop with its gain changed at each pass: what a probe is
        refused for), so no template is made of them. A signal without an accepted
        window is left to the quality gate. With PAD off too: a template of no person is
        never wanted (no replay search: no history is given)."""
        det = None
        for i, (b, w) in enumerate(zip(blocks, wins)):
            if not np.asarray(w.accepted).any():
                continue
            det = det or self._physiology_detector()
            v, where = det.check(w, b, []), "its accepted windows are"
            if not (v.attack and v.kind != "replay"):
                v, where = _non_physiological_window(det, w, b)
            if v is not None and v.attack and v.kind != "replay":  # no history: no replay
                self._security_event("presentation attack at enrollment", v.kind, "high",
                                     user_id, reason=v.reason, signal_index=i,
                                     **peer_fields(peer), method=method)
                raise InvalidArgument(
                    f"signals[{i}] does not look like EEG (pad: {v.reason}): {where} "
                    "white noise, a pure tone or a loop, which would make a template of "
                    "no person; check the headset and send a recording of the user.")

    def _physiology_detector(self) -> Any:
        """The detector judging enrollment signals (physiological, not copies of one
        another): PAD's when it is on, else one of the model's channels (as the
        server's PAD), made once."""
        if self.pad is not None:
            return self.pad
        with self._enroll_detector_lock:
            if self._enroll_detector is None:
                from nacf_core.pad import PresentationAttackDetector

                self._enroll_detector = PresentationAttackDetector(
                    list(self.rec.model.ch_names))
            return self._enroll_detector

    def refused_enrollment(self, exc: BaseException, method: str = "Enroll") -> None:
        """Count an enrollment refused before :meth:`enroll` (its request did not convert,
        the caller may not update) in ``nacfauth_user_registrations_total``, with the
        status it ends with, as :meth:`enroll` counts its own refusals."""
        self.metrics.record_registration(method, _status_name(exc))

    # ------------------------------------------------------------- authentication
    def _check_user_and_lock(self, user_id: str, proof: DeviceProof | None = None, *,
                             fingerprints: bool = False, peer: str = "",
                             method: str = "Authenticate",
                             t_start: float | None = None) -> tuple[Any, Any]:
        """One store read: template, lockout, the proof's device (when the proof names
        a plausible one) and, with ``fingerprints``, the PAD history. Raises
        ``NotFound`` for an unknown user and ``FailedPrecondition`` for a locked one,
        each counted in ``nacfauth_failed_auth_attempts_total`` and logged with the
        caller's ``peer`` and the time since ``t_start`` (``time.perf_counter()`` when the
        call began; a locked one also audited). Returns ``(state, device)`` where
        ``device`` is ``_UNREAD`` when it was not looked up."""
        dev_id = proof.device_id if proof is not None else None
        if not (isinstance(dev_id, str) and dev_id and len(dev_id) <= _DEVICE_ID_MAX
                and dev_id.isprintable()):
            dev_id = None
        try:
            st = self._store("get_auth_state", self.store.get_auth_state, user_id,
                             device_id=dev_id, fingerprints=fingerprints)
        except NotFound:
            # counted and logged: probing for user ids shows on the brute-force alert
            self.metrics.record_failed_auth("unknown_user")
            self._log_refused(user_id, "unknown_user", peer, method, t_start)
            raise
        lock = st.lockout
        now = self.clock()
        if lock.is_locked(now):
            self._audit_row(user_id, False, "locked", peer, method, now)
            self._raise_locked(user_id, lock.locked_until, now, peer, method, t_start)
        return st, (st.device if dev_id is not None else _UNREAD)

    def _log_refused(self, user_id: str, reason: str, peer: str, method: str,
                     t_start: float | None) -> None:
        """The ``auth_attempt`` line of an attempt refused without a decision."""
        ms = 0.0 if t_start is None else (time.perf_counter() - t_start) * 1000
        log.info("authentication refused", extra={
            "event_type": "auth_attempt", "user_id": user_id, "success": False,
            "reason": reason, "duration_ms": round(ms, 3), **peer_fields(peer),
            "method": method})

    def _raise_locked(self, user_id: str, locked_until: float, now: float, peer: str,
                      method: str, t_start: float | None) -> None:
        self.metrics.record_failed_auth("locked")
        self._log_refused(user_id, "locked", peer, method, t_start)
        # at most lockout_seconds: more is a lock the maintenance shortens (the clock
        # stepped back since it was set)
        locked_until = min(locked_until, now + float(self.config.lockout_seconds))
        raise FailedPrecondition(
            f"user {user_id!r} is locked after {self.config.lockout_threshold} "
            f"consecutive failed attempts until {_iso(locked_until)} "
            f"({locked_until - now:.0f} s from now); an admin can lift it with "
            "UnlockUser.")

    def _template(self, rec: Any, user_id: str = "", op: str = "get_template") -> Any:
        """The decoded template of a ``TemplateRecord``, cached per user with its
        decrypted bytes (a new enrollment, an update or a re-enrollment after deletion
        brings new bytes, so an entry can never be stale; DeleteUser drops it).

        Bytes that do not decode are ``TemplateUnreadable`` (``FAILED_PRECONDITION``,
        re-enroll), counted and logged under ``op``, the store operation that read them.

        A template enrolled with another model than the one this server runs cannot be
        compared (its embedding lives in another space): ``FailedPrecondition`` saying to
        re-enroll, before any signal is read. The request is not at fault, the account's
        state is (the pipeline's own check said ``InvalidArgument``, and only once a
        stream had sent a whole window)."""
        blob = bytes(rec.blob)
        cached = self._templates.get(rec.user_id)
        if cached is not None and cached[0] == blob:
            tpl = cached[1]
            if cached[2] != rec.stamp:  # the same bytes written again (a key rotation)
                self._templates[rec.user_id] = (blob, tpl, rec.stamp)
        else:
            try:
                tpl = self._decode(rec.user_id, rec.version, blob)
            except TemplateUnreadable as e:
                self._template_unreadable(e, op)
                raise
            if len(self._templates) >= 4096:
                self._templates.clear()
            self._templates[rec.user_id] = (blob, tpl, rec.stamp)
        if str(tpl.model_version) != self.model_version:
            raise FailedPrecondition(
                f"user {user_id or rec.user_id!r} was enrolled with model "
                f"{tpl.model_version!r}, but this server runs {self.model_version!r}: "
                "re-enroll the user (Enroll with update=true).")
        return tpl

    def _verify_proof(self, user_id: str, block: SignalBlock, proof: DeviceProof | None,
                      device: Any, peer: str, method: str,
                      t_start: float | None = None) -> tuple[str | None, Any]:
        """Check the device proof; return the device id (``None`` when not required and
        not given) and the device key that verified it, ``(device_id, created_at)``
        (which secret: a rotation changes it), for ``finish_authentication(device_key=)``.
        Raises ``Unauthenticated`` on a missing/wrong/stale/replayed proof, counted,
        logged and audited with the caller's ``peer`` and the RPC ``method`` carrying it."""
        try:
            return self._check_proof(user_id, block, proof, device)
        except _ProofRejected as e:
            if e.kind == "unknown_device":
                # a user deleted since the call read it (with its headsets): the call
                # answers NOT_FOUND, as it would have a moment earlier, instead of
                # logging a false security event; the call already said the user exists,
                # so this tells the caller nothing new; an attempt refused for an
                # unknown user, logged and counted as one refused at its start is
                try:
                    self._store("get_user", self.store.get_user, user_id)
                except NotFound:
                    self.metrics.record_failed_auth("unknown_user")
                    self._log_refused(user_id, "unknown_user", peer, method, t_start)
                    raise
            raise self._proof_fail(user_id, e.kind, e.message, e.severity, peer,
                                   method) from None

    def _check_proof(self, user_id: str, block: SignalBlock, proof: DeviceProof | None,
                     device: Any) -> tuple[str | None, Any]:
        if proof is None or not proof.present:
            if not self.config.require_device_proof:
                return None, None
            raise _ProofRejected("missing",
                                 "device proof required: send x-device-id, "
                                 "x-device-timestamp and x-device-proof metadata.")
        if proof.repeated:
            raise _ProofRejected("malformed", "device proof ambiguous: " + ", ".join(
                f"{k} given {n} times" for k, n in proof.repeated) + "; send each once.")
        missing = [n for n, v in (("x-device-id", proof.device_id),
                                  ("x-device-timestamp", proof.timestamp),
                                  ("x-device-proof", proof.proof)) if not v]
        if missing:
            raise _ProofRejected("missing",
                                 f"device proof incomplete: missing {', '.join(missing)}.")
        device_id = proof.device_id or ""
        if len(device_id) > _DEVICE_ID_MAX:
            raise _ProofRejected("malformed", "x-device-id is longer than "
                                 f"{_DEVICE_ID_MAX} characters.")
        if not (device_id.isascii() and device_id.isprintable()):
            # what gRPC metadata carries (and RegisterDevice binds): anything else is no
            # headset's id
            raise _ProofRejected("malformed", "x-device-id must be printable ASCII, got "
                                 f"{device_id[:32]!r}.")
        if block.device_id and block.device_id != device_id:
            raise _ProofRejected("device_mismatch",
                                 f"Signal.device_id {block.device_id!r} differs from "
                                 f"x-device-id {device_id!r}.")
        ts_s = (proof.timestamp or "").strip()
        # ASCII digits only: str.isdigit() also takes superscripts (int() refuses them)
        # and other scripts' digits (int() reads them)
        if not ts_s.isascii() or not (ts_s.isdigit() or (ts_s.startswith("-")
                                                          and ts_s[1:].isdigit())) \
                or len(ts_s) > 15:
            raise _ProofRejected("malformed",
                                 "x-device-timestamp must be integer unix seconds, got "
                                 f"{ts_s[:32]!r}.")
        ts = int(ts_s)
        now = self.clock()
        skew = self.config.proof_max_skew_s
        if abs(now - ts) > skew:
            raise _ProofRejected("stale",
                                 f"device proof is stale: x-device-timestamp {ts} is "
                                 f"{now - ts:+.0f} s from the server clock (allowed "
                                 f"±{skew:g} s).")
        given = (proof.proof or "").strip()
        if len(given) != 64 or any(c not in "0123456789abcdef" for c in given):
            raise _ProofRejected("malformed",
                                 "x-device-proof must be 64 lowercase hex characters "
                                 "(HMAC-SHA256).")
        if device is None or device is _UNREAD:
            try:
                dev = self._store("get_device", self.store.get_device, device_id)
            except NotFound:
                dev = None
        else:  # read with the template by _check_user_and_lock
            dev = device if device.device_id == device_id else None
        if dev is None or dev.user_id != user_id:
            # the same answer as a wrong secret: which headsets are bound to whom is not
            # the caller's to learn (the log and the metrics keep the difference)
            raise _ProofRejected("unknown_device", _PROOF_FAILS)
        want = device_proof(dev.secret, user_id, device_id, ts, block.raw_bytes())
        if not hmac.compare_digest(want, given):
            raise _ProofRejected("wrong", _PROOF_FAILS)
        fresh = self._store("use_nonce", self.store.use_nonce, device_id, given,
                            now + 2 * skew, now=now)
        if not fresh:
            raise _ProofRejected("replayed",
                                 "device proof was already used (replay); sign every "
                                 "request afresh.", severity="high")
        return device_id, (device_id, float(dev.created_at))

    def _proof_fail(self, user_id: str, kind: str, message: str, severity: str,
                    peer: str, method: str) -> Unauthenticated:
        """Count, log and audit a refused proof (under the RPC ``method`` that carried
        it, as every attempt row); return the error to raise."""
        self.metrics.record_failed_auth(f"device_proof_{kind}")
        # a missing proof is logged, not counted as suspicious (a misconfigured client)
        self._security_event("device proof rejected", f"device_proof_{kind}", severity,
                             user_id, counted=kind != "missing", **peer_fields(peer),
                             method=method)
        self._audit_row(user_id, False, f"device_proof_{kind}", peer, method, self.clock())
        return Unauthenticated(message)

    def authenticate(self, user_id: str, block: SignalBlock, proof: DeviceProof | None = None,
                     *, peer: str = "", method: str = "Authenticate") -> AuthResult:
        """1:1 verification of one block; opens a session on success."""
        user_id = check_user_id(user_id)
        gate = self.authenticate_gate
        if gate is None:
            return self._authenticate(user_id, block, proof, peer, method)
        with gate:
            return self._authenticate(user_id, block, proof, peer, method)

    def _authenticate(self, user_id: str, block: SignalBlock, proof: DeviceProof | None,
                      peer: str, method: str) -> AuthResult:
        t_start = time.perf_counter()
        st, dev = self._check_user_and_lock(user_id, proof, fingerprints=self.pad is not None,
                                            peer=peer, method=method, t_start=t_start)
        template = self._template(st.template, user_id, "get_auth_state")
        device_id, device_key = self._verify_proof(user_id, block, proof, dev, peer, method,
                                                   t_start)
        t0 = time.perf_counter()
        with self._cpu_gate:
            w = self.rec.windows(block)
            d = self.rec.decide(w, template)
        self.metrics.observe_signal("authenticate", time.perf_counter() - t0,
                                    min(1.0, max(0.0, float(d.quality))))
        self.metrics.record_artifact_rejections(_codes(w.reasons))
        return self._decide(user_id, bool(d.accepted), float(d.score), float(d.threshold),
                            float(d.quality), list(d.reasons), int(d.windows_used),
                            int(d.windows_used) * self.rec.window_s, device_id, w, block,
                            peer, method, t_start,
                            fingerprints=st.fingerprints, template_id=_template_id(st),
                            device_key=device_key)

    def _decide(self, user_id: str, accepted: bool, score: float, thr: float,
                quality: float, reasons: list[str], n_used: int, seconds: float,
                device_id: str | None, windows: Any, block: SignalBlock | None, peer: str,
                method: str, t_start: float, *,
                fingerprints: list | None = None,
                template_id: tuple[int, float] | None = None,
                device_key: tuple[str, float] | None = None) -> AuthResult:
        reasons = list(reasons)
        accepted = bool(accepted and n_used > 0 and math.isfinite(score))
        probe_fp = None
        if accepted and self.pad is not None and block is not None:
            if fingerprints is None:  # (the stream path reads the history only now)
                fingerprints = self._store("get_fingerprints", self.store.get_fingerprints,
                                           user_id)
            with self._cpu_gate:  # no store I/O inside
                pad_reason, probe_fp = self._pad_check(user_id, windows, block, fingerprints,
                                                       peer=peer, method=method)
            if pad_reason:
                accepted = False
                reasons.append(pad_reason)
        now = self.clock()
        token, expires = "", 0.0
        fail_reason = "accepted"
        if not accepted:
            fail_reason = ("poor_quality" if n_used == 0 else
                           "presentation_attack" if reasons and reasons[-1].startswith("pad")
                           else "score_below_threshold")
        self.metrics.track_active_user(user_id)
        duration = time.perf_counter() - t_start
        # every write of this attempt in one transaction: session or failure count,
        # the probe's PAD fingerprint, the audit row
        try:
            out = self._store(
                "finish_authentication", self.store.finish_authentication, user_id, accepted,
                score=None if not math.isfinite(score) else score, reason=fail_reason,
                peer=peer, duration_s=duration, method=method,
                session_ttl_s=float(self.config.session_ttl_s), device_id=device_id,
                max_failures=int(self.config.lockout_threshold),
                lock_seconds=float(self.config.lockout_seconds), probe_fingerprint=probe_fp,
                template_id=template_id, device_key=device_key, now=now)
        except NotFound:
            # deleted while this call ran: what it decoded and prepared of the user after
            # DeleteUser dropped it (template, PAD history) goes too; the attempt is logged
            # and counted as one refused for an unknown user at its start is
            self._forget(user_id)
            self.metrics.record_failed_auth("unknown_user")
            self._log_refused(user_id, "unknown_user", peer, method, t_start)
            raise
        except FailedPrecondition as e:
            # an accept on a template replaced, or with a device secret rotated, while this
            # call ran: nothing written (no session on the old credentials); logged and
            # counted, a proof signed with a secret just rotated away (a stolen headset's)
            # racing its rotation included
            why = {DEVICE_CHANGED: "device_rotated",
                   TEMPLATE_CHANGED: "template_replaced"}.get(str(e))
            if why is not None:
                self.metrics.record_failed_auth(why)
                self._log_refused(user_id, why, peer, method, t_start)
            raise
        # the user was locked by concurrent failures after the check at the start of this
        # call (a stream started before them, calls racing with a networked store): an
        # accept opens no session, and a reject counted while locked returns no score;
        # both are audited. A lock this reject set ends at now + lockout_seconds (the
        # store's sum of the same floats): not its count, which is above the threshold
        # too when the threshold was lowered during a user's streak
        locked_by_this = (out.locked_until is not None
                          and out.locked_until == now + float(self.config.lockout_seconds))
        if out.locked or (not accepted and out.locked_until is not None
                          and out.locked_until > now and not locked_by_this):
            self._raise_locked(user_id, out.locked_until, now, peer, method, t_start)
        self.metrics.record_decision(accepted)
        if accepted:
            sess = out.session
            token, expires = sess.token or "", float(sess.expires_at)
            # nacfauth_active_sessions is refreshed by refresh_gauges() (every 2 s)
        else:
            failures = out.failures
            self.metrics.record_failed_auth(fail_reason)
            if locked_by_this:
                self.metrics.record_lockout()
                self._security_event("user locked out", "lockout", "high", user_id,
                                     failures=failures, **peer_fields(peer), method=method)
        log.info("authentication", extra={
            "event_type": "auth_attempt", "user_id": user_id, "success": accepted,
            "confidence": None if not math.isfinite(score) else round(score, 4),
            "duration_ms": round(duration * 1000, 3), **peer_fields(peer), "method": method,
            "quality": round(quality, 3), "seconds_used": seconds,
            # why a rejection (as a refusal's line and every audit row say)
            **({} if accepted else {"reason": fail_reason})})
        return AuthResult(accepted, score if math.isfinite(score) else 0.0, thr, quality,
                          reasons, self.model_version, float(seconds), n_used, token, expires)

    def _pad_check(self, user_id: str, windows: Any, block: SignalBlock,
                   fps: list | None = None, *, peer: str = "", method: str = "Authenticate"
                   ) -> tuple[str, bytes | None]:
        """Presentation-attack detection against the user's history ``fps`` (read from
        the store when ``None``); an attack's security event names the caller (``peer``)
        and the RPC ``method``. Returns ``(rejection reason or "", the probe's
        fingerprint to append to the history or None)``."""
        if fps is None:
            fps = self._store("get_fingerprints", self.store.get_fingerprints, user_id)
        verdict = self.pad.check(windows, block, fps, history_key=user_id)
        if verdict.attack:
            self._security_event("presentation attack", verdict.kind, "high", user_id,
                                 **peer_fields(peer), method=method)
            return f"pad: {verdict.reason}", None
        return "", verdict.fingerprint

    # ------------------------------------------------------------------ streaming
    def _stream_channels(self) -> list[str] | None:
        """The channels a stream's decision reads: the model's, and PAD's (``None``:
        every channel, when PAD judges every channel the signal has)."""
        names = list(self.rec.model.ch_names)
        if self.pad is not None:
            pad_ch = getattr(self.pad, "ch_names", None)
            if pad_ch is None:
                return None
            from nacf_core.channels import canonical_name
            have = {canonical_name(c) for c in names}
            names += [c for c in pad_ch if canonical_name(c) not in have]
        return names

    def authenticate_stream(self, user_id: str, chunks: Iterable[SignalBlock],
                            proof: DeviceProof | None = None, *, max_seconds: float = 0.0,
                            peer: str = "", deadline: float | None = None) -> AuthResult:
        """Sequential 1:1 decision over a stream of chunks.

        After each complete window the evidence so far is fused by the sequential test;
        it returns as soon as it crosses a bound, or at ``max_seconds`` of signal
        (default ``stream_max_seconds``; at most :data:`RESAMPLED_STREAM_MAX_S` at
        another rate than the model's), or when the stream ends (then on the fused
        score).  ``deadline`` (``time.monotonic()`` value) → ``DeadlineExceeded``.
        """
        user_id = check_user_id(user_id)
        t_start = time.perf_counter()
        limit = float(max_seconds) if max_seconds else float(self.config.stream_max_seconds)
        if not math.isfinite(limit) or limit <= 0 or limit > self.config.stream_max_seconds:
            raise InvalidArgument(f"'max_seconds' must be in (0, "
                                  f"{self.config.stream_max_seconds:g}], got {max_seconds!r}.")
        win = self.rec.window_s
        if limit < win:
            # an upper bound on the signal consumed: below one window no decision fits in
            # it (the stream read a whole window past it)
            if max_seconds:
                raise InvalidArgument(
                    f"'max_seconds' must be at least one {win:g}-s window (the sequential "
                    f"test scores whole windows), got {max_seconds!r}.")
            raise FailedPrecondition(
                f"the server's stream_max_seconds ({limit:g} s) is below one {win:g}-s "
                "window: no stream can be decided; raise it.")
        # the PAD history is read when PAD runs, at the end of the stream
        # (the device is read when the first chunk's proof is checked)
        st, _ = self._check_user_and_lock(user_id, None, peer=peer,
                                          method="AuthenticateStream", t_start=t_start)
        template = self._template(st.template, user_id, "get_auth_state")
        test = self.rec.sequential(limit)
        buf = _Buffer(keep=self._stream_channels())
        device_id: str | None = None
        device_key = None
        headset = ""          # the stream's headset: the proof's, else the first named
        first = True
        n_scored = 0          # windows fed to the sequential test
        n_done = 0            # windows computed so far
        decision = None
        w = None              # the windows (another rate than the model's)
        ws = None             # the stream's windows, each computed once (the model's rate)
        running = None        # the fused score of ws' accepted windows so far
        fresh: list[np.ndarray] = []  # samples not given to ws yet
        n_decided = 0         # windows up to the sequential decision (the model's rate)
        computed = False
        unusable = None       # the stream's signal had no usable sample so far
        t_proc = 0.0
        # a headset streams its signal as it records it: the most signal a decision takes
        # arrives within that many seconds and signal_loss_s more, else the stream trickles
        # (it held a worker thread for as long as its client liked)
        t_wall, wall_limit = time.monotonic(), limit + float(self.config.signal_loss_s)
        for block in chunks:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("the deadline passed before the sequential decision.")
            # less the server's own work on the windows (t_proc: the CPU gate it shares
            # with every call): a server slow under load refused a headset in real time
            if time.monotonic() - t_wall - t_proc > wall_limit:
                raise DeadlineExceeded(
                    f"the stream sent {buf.seconds:.1f} s of signal in {wall_limit:g} s, "
                    f"too slowly for a decision (at most {limit:g} s of signal, streamed as "
                    "it is recorded, with signal_loss_s to spare).")
            if first:
                # the device as it is now, not as it was when the stream opened: a
                # rotation or a delete since then must refuse the old secret
                device_id, device_key = self._verify_proof(user_id, block, proof, None, peer,
                                                           "AuthenticateStream", t_start)
                first = False
                if block.sfreq != self.rec.model.sfreq and limit > RESAMPLED_STREAM_MAX_S:
                    # at another rate each window recomputes every window before it (see
                    # below): such a stream's CPU grows with the square of its length, so
                    # it takes at most RESAMPLED_STREAM_MAX_S of signal (at least a window)
                    limit = max(RESAMPLED_STREAM_MAX_S, win)
                    test = self.rec.sequential(limit)
                    wall_limit = limit + float(self.config.signal_loss_s)
            elif block.device_id and headset and block.device_id != headset:
                # every chunk from the headset of the first (the proof's, when there is
                # one): a later chunk naming another went into the decision unchecked
                src = "x-device-id" if device_id else "the first chunk's device_id"
                what = (f"a chunk's Signal.device_id {block.device_id!r} differs from {src} "
                        f"{headset!r}: every chunk of a stream comes from one headset.")
                if device_id:
                    raise self._proof_fail(user_id, "device_mismatch", what, "medium", peer,
                                           "AuthenticateStream")
                raise InvalidArgument(what)
            headset = headset or device_id or block.device_id
            fresh.append(buf.push(block))
            if buf.seconds < self.rec.window_s * (n_done + 1):
                continue
            t0 = time.perf_counter()
            if buf.sfreq == self.rec.model.sfreq:
                # at the model's rate a window depends on the signal up to its end only:
                # each is computed once, when its last sample arrives, and the fused score
                # is kept as the windows come (the windows of the whole buffer recomputed
                # for each new one, and all of them fused again, made a stream's CPU grow
                # with the square of its length)
                with self._cpu_gate:  # as Authenticate's CPU steps (no store I/O inside)
                    if ws is None:
                        ws = self.rec.window_stream(buf.sfreq, buf.ch_names)
                        running = self.rec.running_score(template)
                    new = self.rec.push_windows(
                        ws, np.concatenate(fresh) if len(fresh) > 1 else fresh[0])
                    fresh = []
                    acc = np.asarray(new.accepted, dtype=bool)
                    for i in range(len(acc)):
                        # the test takes the fused score of every accepted window so far
                        # (None for a window the quality gate rejected: it only costs time)
                        if acc[i]:
                            n_scored += 1
                            decision = test.update(running.add(new.embeddings[i]))
                        else:
                            decision = test.update(None)
                        if decision is not None:
                            n_decided = n_done + i + 1
                            break
                    n_done += len(acc)
                    computed = computed or len(acc) > 0
            else:
                # at another rate the resampling reads the whole block it is given (its
                # edges, the line it fits end to end), so each window is cut from the
                # signal up to its own end, as Authenticate on those samples cuts it,
                # however the client chunked them: every window recomputes them all
                # (bounded: such a stream takes at most RESAMPLED_STREAM_MAX_S of signal)
                fresh = []
                while decision is None and buf.seconds >= self.rec.window_s * (n_done + 1):
                    with self._cpu_gate:
                        try:
                            w = self.rec.windows(buf.block(first_seconds=(n_done + 1) * win))
                        except SignalUnusable as exc:
                            # nothing usable yet (a headset put on after the stream
                            # started): a window the gate rejects, as in the whole signal
                            # (which is refused so if it never gets a usable sample)
                            unusable, computed = exc, True
                            n_done += 1
                            decision = test.update(None)
                            continue
                        computed = True
                        acc = np.asarray(w.accepted, dtype=bool)
                        if len(acc) <= n_done:  # no whole window more (never expected)
                            break
                        for j in range(n_done, len(acc)):
                            if acc[j]:
                                n_scored += 1
                                fused = float(self.rec.decide(w.select(slice(0, j + 1)),
                                                              template).score)
                                decision = test.update(fused)
                            else:
                                decision = test.update(None)
                            if decision is not None:
                                w = w.select(slice(0, j + 1))
                                break
                    n_done = len(acc)
            t_proc += time.perf_counter() - t0
            if decision is not None or buf.seconds >= limit:
                break
        if first:
            raise InvalidArgument("the stream carried no Signal chunk after the start message.")
        if not computed:
            raise InvalidArgument(
                f"the stream ended after {buf.seconds:.2f} s of signal; at least one "
                f"{self.rec.window_s:g}-s window is needed.")
        if w is None and ws is None:  # no sample of it was usable (another rate)
            raise unusable
        with self._cpu_gate:
            if ws is not None:
                w = ws.windows()
                if n_decided:
                    w = w.select(slice(0, n_decided))
            d = self.rec.decide(w, template)
        self.metrics.observe_signal("stream", t_proc, min(1.0, max(0.0, float(d.quality))))
        self.metrics.record_artifact_rejections(_codes(w.reasons))
        reasons = list(d.reasons)
        if decision is not None:
            accepted = decision == "accept"
            reasons.append(f"sequential test: {decision} after {n_scored} window(s)")
        else:
            accepted = bool(d.accepted)
            reasons.append(f"sequential test undecided after {n_scored} window(s) "
                           f"({buf.seconds:.1f} s): fused-score decision")
        # presentation-attack detection judges the signal the decision used (its windows,
        # from the stream's start), not what came after it in the last chunk
        used = buf.block(first_seconds=len(np.asarray(w.accepted)) * win)
        return self._decide(user_id, accepted, float(d.score), float(d.threshold),
                            float(d.quality), reasons, int(d.windows_used),
                            n_scored * self.rec.window_s, device_id, w, used, peer,
                            "AuthenticateStream", t_start, template_id=_template_id(st),
                            device_key=device_key)

    # --------------------------------------------------------------- identification
    def identify(self, block: SignalBlock, top_k: int = 5, *, peer: str = "") -> IdentifyResult:
        """1:N: of the ``top_k`` enrolled users most similar to ``block``, those it
        matches (score at or above the threshold), best first; none when it matches no
        one. The others' scores are never returned (a hill-climbing oracle).

        Users locked out at the time are left out (Identify must not score a signal
        against a template whose 1:1 attempts are refused), and so are users enrolled
        under another model (their embeddings do not compare; ``nacf serve`` warns of
        them at start) and users whose stored template does not decrypt or decode (see
        :meth:`_gallery`). With presentation-attack detection on, a probe that matches is
        judged as an Authenticate probe claiming each matched user (:meth:`_identify_pad`):
        a replay or a non-physiological signal matches no one. Every call is logged, a
        refused one too (success false, the refusal's status as its reason)."""
        t_start = time.perf_counter()
        try:
            return self._identify(block, top_k, peer, t_start)
        except _IdentifyLogged as e:
            raise e.error from None
        except Exception as e:
            self._log_identify(peer, [], 0.0, None, None, t_start,
                               reason=_status_name(e).lower())
            raise

    def refused_identify(self, exc: BaseException, *, peer: str = "",
                         t_start: float | None = None) -> None:
        """Log an Identify refused before :meth:`identify` (its request did not convert)
        as :meth:`identify` logs its own refusals; ``t_start``: when the call's handler
        started (``time.perf_counter``)."""
        self._log_identify(peer, [], 0.0, None, None,
                           time.perf_counter() if t_start is None else t_start,
                           reason=_status_name(exc).lower())

    def _identify(self, block: SignalBlock, top_k: Any, peer: str, t_start: float
                  ) -> IdentifyResult:
        if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)):
            raise InvalidArgument(f"'top_k' must be an integer, got {top_k!r}.")
        top_k = int(top_k)
        max_k = self.config.identify_max_k
        # 0: the default, 5, or identify_max_k when that is smaller (a request that left
        # top_k out was refused for a value it never gave)
        default_k = min(5, max_k)
        k = top_k or default_k
        if not 1 <= k <= max_k:
            raise InvalidArgument(f"'top_k' must be in [1, {max_k}] (0: {default_k}), "
                                  f"got {top_k}.")
        t0 = time.perf_counter()
        with self._cpu_gate:  # as Authenticate's CPU steps (no store I/O inside)
            w = self.rec.windows(block)
        acc = np.asarray(w.accepted, dtype=bool)
        quality = _mean(np.asarray(w.quality, dtype=np.float64))
        # observed before any refusal: a signal too poor to identify is what the quality
        # histogram and the artifact counter are for
        self.metrics.observe_signal("identify", time.perf_counter() - t0,
                                    min(1.0, max(0.0, quality)))
        self.metrics.record_artifact_rejections(_codes(w.reasons))
        reasons = sorted({r for r in (w.reasons or []) if r})
        if not acc.any():
            self._log_identify(peer, [], 0.0, quality, None, t_start, reason="poor_quality")
            raise _IdentifyLogged(FailedPrecondition(
                "no window of the signal passed the quality gate (" + "; ".join(reasons)
                + "); cannot identify."))
        ids, matrix = self._gallery()
        locked = self._store("locked_user_ids", self.store.locked_user_ids, now=self.clock())
        n_left_out = 0  # of this gallery (a locked user it does not hold is not left out)
        if locked:
            keep = [i for i, u in enumerate(ids) if u not in locked]
            n_left_out = len(ids) - len(keep)
            ids, matrix = [ids[i] for i in keep], matrix[keep]
        thr = float(self.model_threshold_for(int(acc.sum())))
        if not ids:
            self._log_identify(peer, [], thr, quality, n_left_out, t_start)
            return IdentifyResult([], thr, quality, self.model_version, reasons)
        probe = np.ascontiguousarray(self.rec.pipeline.fuse(w.embeddings[acc])[None, :],
                                     dtype=np.float32)
        from nacf_core.kernels import default_backend_name
        from nacf_core.matching import top_k as _top_k

        backend = getattr(self.rec.pipeline, "backend", None)
        # the kernel that grows with the enrolled users, in nacfauth_kernel_duration_seconds
        # like the pipeline's own (which its instrumented kernels time)
        with self._cpu_gate, self.metrics.time_kernel("top_k",
                                                      backend or default_backend_name()):
            idx, sc = _top_k(probe, matrix, min(k, len(ids)), backend=backend)
        scored = [(ids[int(i)], float(v)) for i, v in zip(idx[0], sc[0])]
        # only matches are answered: the scores of users the signal does not match
        # would be an oracle to climb towards a template (a random search over a channel
        # mixing of another person's EEG, ~2 300 calls at the rate limit, raised one
        # user's score from 0.07 past the threshold) and would list the enrolled users
        cands = [(u, v) for u, v in scored if v >= thr]
        attack = (self._identify_pad(cands, w, block, peer)
                  if cands and self.pad is not None else None)
        if attack is not None:  # a recording played back, or no EEG: it matches no one
            self._log_identify(peer, scored, thr, quality, n_left_out, t_start,
                               reason="presentation_attack", attack=True)
            return IdentifyResult([], thr, quality, self.model_version,
                                  [*reasons, f"pad: {attack.reason}"])
        self._log_identify(peer, scored, thr, quality, n_left_out, t_start)
        return IdentifyResult(cands, thr, quality, self.model_version, reasons)

    def _identify_pad(self, cands: list[tuple[str, float]], windows: Any,
                      block: SignalBlock, peer: str) -> Any:
        """Presentation-attack detection of an Identify probe that matched ``cands``, as
        of an Authenticate probe claiming each of them: judged against each matched
        user's stored history (enrollment and accepted probes), the first attack found
        (a replay of any one's recording, a non-physiological signal) is a security event
        and returned; ``None`` when there is none. Nothing is stored (Identify opens no
        session: its probe joins no history). A matched user dropped meanwhile (DeleteUser)
        does not keep the history its check prepared."""
        with self._gallery_lock:
            cuts = self._gallery_cuts
        checked = []
        try:
            for user_id, _ in cands:
                checked.append(user_id)
                fps = self._store("get_fingerprints", self.store.get_fingerprints, user_id)
                with self._cpu_gate:  # no store I/O inside
                    verdict = self.pad.check(windows, block, fps, history_key=user_id)
                if verdict.attack:
                    self._security_event("presentation attack", verdict.kind, "high",
                                         user_id, reason=verdict.reason, method="Identify",
                                         **peer_fields(peer))
                    return verdict
            return None
        finally:
            cut = self._cut_since(cuts)
            forget = getattr(self.pad, "forget", None)
            for user_id in checked if forget is not None else ():
                if cut is None or user_id in cut:
                    forget(user_id)

    def _cut_since(self, cuts: int) -> set[str] | None:
        """The users whose gallery rows were dropped since the ``cuts``-th drop (see
        :meth:`_drop_gallery_row_and_pad_history`), or ``None`` when more were than are
        remembered."""
        with self._gallery_lock:
            n_cut = self._gallery_cuts - cuts
            if n_cut > len(self._gallery_cut):
                return None
            return {u for _, u in list(self._gallery_cut)[len(self._gallery_cut) - n_cut:]}

    def _gallery(self) -> tuple[list[str], np.ndarray]:
        """Every active user enrolled under the served model, by user id, and their
        embeddings as one float32 matrix (a row per user). The store is read on every
        call, but only the templates written since the last gallery are fetched,
        decrypted and decoded again (``Store.read_gallery``: a template's stamp changes
        with every write of it); decoding every template on every call cost ~50 µs per
        enrolled user, and decrypting it ~15 more. Users the store no longer lists drop
        out. Concurrent calls may both rebuild; each uses its own result. The gallery kept
        leaves out the rows dropped (DeleteUser, a template replaced elsewhere) since
        this call read the store, which the call itself still answers from: it read the
        store before they were dropped.

        A template that does not decrypt or decode is left out (one damaged row must not
        take 1:N down for everyone), counted in ``nacfauth_store_errors_total
        {operation="read_gallery"}`` and logged (``template_unreadable``) once per write
        of it: its stamp is kept, so it is read again only once it is rewritten (Enroll
        with update=true)."""
        with self._gallery_lock:
            prev, cuts = self._gallery_state, self._gallery_cuts
        known = {} if prev is None else {**dict(zip(prev[0], prev[1])), **prev[3]}
        listing, fresh = self._store("read_gallery", self.store.read_gallery,
                                     self.model_version, known)
        if prev is not None and not fresh and len(listing) == len(prev[0]) + len(prev[3]) \
                and [u for u, _ in listing if u not in prev[3]] == prev[0]:
            return prev[0], prev[2]
        kept = {} if prev is None else {u: prev[2][i] for i, u in enumerate(prev[0])}
        ids, stamps, rows, bad = [], [], [], {}
        for u, st in listing:
            rec = fresh.get(u)
            err = None
            if rec is None:
                if prev is not None and u in prev[3]:
                    bad[u] = st
                    continue
                row = kept[u]
            elif isinstance(rec, TemplateUnreadable):
                err = rec
            else:
                try:
                    row = self._decode(u, rec.version, rec.blob).embedding
                except TemplateUnreadable as e:
                    err = e
            if err is not None:
                self._template_unreadable(err, "read_gallery")
                bad[u] = st
                continue
            ids.append(u)
            stamps.append(st)
            rows.append(row)
        if not ids:
            # nobody listed (or only unreadable templates): drop the rows kept (users
            # deleted meanwhile, by another replica or while a concurrent call rebuilt
            # the gallery)
            matrix = np.empty((0, 0), np.float32)
            with self._gallery_lock:
                self._gallery_state = ([], [], matrix, bad) if bad else None
            return ids, matrix
        matrix = np.ascontiguousarray(np.stack(rows), dtype=np.float32)
        with self._gallery_lock:  # (re-entered by _cut_since: an RLock)
            cut = self._cut_since(cuts)
            if cut is None:
                return ids, matrix  # more cuts since than are remembered: keep none
            keep = [i for i, u in enumerate(ids) if u not in cut]
            if len(keep) == len(ids):
                self._gallery_state = (ids, stamps, matrix, bad)
            elif keep:
                self._gallery_state = ([ids[i] for i in keep], [stamps[i] for i in keep],
                                       matrix[keep], bad)
            else:
                self._gallery_state = ([], [], np.empty((0, 0), np.float32), bad) \
                    if bad else None
        return ids, matrix

    def _log_identify(self, peer: str, cands: list, thr: float, quality: float | None,
                      n_locked: int | None, t_start: float, reason: str | None = None,
                      attack: bool = False) -> None:
        top = cands[0] if cands else None
        matched = top is not None and top[1] >= thr and not attack
        log.info("identification", extra={
            "event_type": "identify", "success": matched,
            **({"reason": reason} if reason else {}),
            "duration_ms": round((time.perf_counter() - t_start) * 1000, 3),
            **peer_fields(peer), "method": "Identify", "candidates": len(cands),
            "matches": 0 if attack else sum(1 for _, v in cands if v >= thr),
            # the guide's field naming the line's user (what a search for one person
            # reads), and ``match`` as before
            "user_id": top[0] if matched else None, "match": top[0] if matched else None,
            "confidence": round(top[1], 4) if top is not None else None,
            "quality": None if quality is None else round(quality, 3),
            **({"locked_left_out": n_locked} if n_locked is not None else {})})

    def model_threshold_for(self, n_windows: int) -> float:
        """The decision threshold for a probe of ``n_windows`` fused windows."""
        m = self.rec.model
        fn = getattr(m, "threshold_for", None)
        return float(fn(max(n_windows, 1))) if fn is not None else float(m.threshold)

    # ------------------------------------------------------------------------ users
    def get_user(self, user_id: str) -> UserInfo:
        user_id = check_user_id(user_id)
        u = self._store("get_user", self.store.get_user, user_id)
        return self._user_info(u)

    def _user_info(self, u: Any, devices: list[str] | None = None) -> UserInfo:
        now = self.clock()
        locked = u.locked_until is not None and now < u.locked_until
        # a lockout that ran out ended its streak: the store counts the next rejection as
        # the first of a new one (its row keeps the old count until then)
        failures = 0 if u.locked_until is not None and not locked else int(u.failures)
        if devices is None:
            devices = self._device_ids(u.user_id) if u.n_devices else []
        return UserInfo(u.user_id, int(u.template_version), float(u.created_at),
                        float(u.updated_at), u.model_version or "", locked,
                        float(u.locked_until or 0.0) if locked else 0.0, failures,
                        devices)

    def _device_ids(self, user_id: str) -> list[str]:
        fn = getattr(self.store, "list_devices", None)
        if fn is None:
            return []
        return sorted(d.device_id for d in self._store("list_devices", fn, user_id))

    def list_users(self, page_size: int = 0, page_token: str = "") -> tuple[list[UserInfo], str]:
        if isinstance(page_size, (bool, np.bool_)) or not isinstance(page_size,
                                                                    (int, np.integer)):
            raise InvalidArgument(f"'page_size' must be an integer, got {page_size!r}.")
        page_size = int(page_size)
        size = page_size or 100
        if not 1 <= size <= 1000:
            raise InvalidArgument(f"'page_size' must be in [1, 1000], got {page_size}.")
        # a token the store did not issue is its InvalidArgument, naming 'page_token'
        page = self._store("list_users", self.store.list_users, size, page_token or "")
        # the headsets of the whole page in one read, not one per user (a page of 1 000
        # users with headsets took 1 000 store transactions: 0.25 s on a local PostgreSQL)
        of = getattr(self.store, "device_ids_of", None)
        want = [u.user_id for u in page.users if u.n_devices]
        devices = self._store("list_devices", of, want) if of is not None and want else None
        users = []
        for u in page.users:
            if devices is not None and u.n_devices and u.user_id not in devices:
                continue  # deleted since the page was read: no longer listed
            try:
                users.append(self._user_info(
                    u, None if devices is None else devices.get(u.user_id, [])))
            except NotFound:  # deleted since the page was read: no longer listed
                continue
        return users, page.next_page_token

    def delete_user(self, user_id: str, *, actor: str = "", peer: str = "") -> None:
        """Delete every row of the user (audit rows keep its id) and what this process
        keeps of it. ``actor`` (the caller's client id) and ``peer`` go into the audit
        row (method ``DeleteUser``) and the ``user_deleted`` log line."""
        user_id = check_user_id(user_id)
        now = self.clock()
        try:
            ended = self._store("delete_user", self.store.delete_user, user_id,
                                now=now) or []
        except NotFound:
            # deleted already, by another replica (or nacf store): the admin is told the
            # user is gone, so what this process held of it goes now, not at its next
            # maintenance round
            self._forget(user_id)
            fps = getattr(self.store, "forget_deleted_fingerprints", None)
            if fps is not None:
                try:
                    self._store("forget_deleted_fingerprints", fps)
                except NacfError:
                    pass  # counted and logged: the answer stays NOT_FOUND (the next
                    # maintenance round drops them)
            raise
        self._forget(user_id)
        # its open sessions ended with it: observed like a session ended any other way
        for sess in ended:
            self.metrics.observe_session_duration(
                max(0.0, float(sess.ended_at) - float(sess.created_at)))
        self._update_active_sessions(now)
        self._audit_row(user_id, True, "user_deleted", peer, "DeleteUser", now, actor)
        log.info("user deleted", extra={"event_type": "user_deleted", "user_id": user_id,
                                        "sessions_ended": len(ended), "actor": actor,
                                        "method": "DeleteUser", **peer_fields(peer)})

    def _forget(self, user_id: str) -> None:
        """Drop what this process keeps in memory of a deleted user: its decoded
        template, its row of Identify's gallery, its prepared PAD history (the store's
        own cache of its decrypted fingerprints goes with its rows). An Identify that
        read the store before the deletion does not keep the row in the gallery it
        builds (see :meth:`_gallery`)."""
        self._templates.pop(user_id, None)
        self._drop_gallery_row_and_pad_history(user_id)

    def _session_windows(self, session_id: str, user_id: str,
                         have: dict[int, bytes]) -> list[tuple[str, bytes]]:
        """The fingerprints of the windows the session's ContinuousAuthenticate streams
        sent (the last ``_STREAM_PAD_HISTORY``, and one in every ``_STREAM_PAD_HISTORY``
        before them), and those of the user's other sessions (but for the last
        ``_STREAM_PAD_OTHERS_AFTER_S``), ``_STREAM_PAD_MOST`` of the user in all, which
        each window is checked against for a replay: a stream's own alone let a recording
        replayed on a new stream of the session (a client 'reconnecting' each time, to any
        replica) pass every time, and the session's own alone one replayed on a new
        session. Kept in the store (encrypted; dropped with the user, or when the
        session's row is purged), so every replica's streams see them. ``have`` (the
        stream's own, by row id: updated here) holds those read before: only rows new
        since are read and decrypted."""
        rows = self._store("get_session_windows", self.store.get_session_windows,
                           session_id, user_id, have.keys(),
                           others_before=self.clock() - _STREAM_PAD_OTHERS_AFTER_S)
        fresh = {rid: (fp if fp is not None else have[rid]) for rid, fp in rows}
        have.clear()
        have.update(fresh)
        return [("probe", fp) for fp in fresh.values()]

    def _drop_gallery_row_and_pad_history(self, user_id: str) -> None:
        """Drop the user's row of Identify's gallery and its prepared PAD history."""
        with self._gallery_lock:
            self._gallery_cuts += 1
            self._gallery_cut.append((self._gallery_cuts, user_id))
            g = self._gallery_state
            if g is not None and user_id in g[0]:
                i = g[0].index(user_id)
                self._gallery_state = (g[0][:i] + g[0][i + 1:], g[1][:i] + g[1][i + 1:],
                                       np.delete(g[2], i, axis=0), g[3])
        forget = getattr(self.pad, "forget", None)
        if forget is not None:
            forget(user_id)

    def _forget_changed_elsewhere(self) -> int:
        """Drop what this process keeps in memory of users deleted, or whose template was
        replaced, by another replica (or ``nacf store``): DeleteUser on one replica drops
        only that process's copies, and the others kept the decoded template, the
        gallery row, the prepared PAD history and the decrypted fingerprints (biometric
        data) until a call for the user there, or for ever. One read of the held users'
        template stamps and one of the cached fingerprint rows; the maintenance thread
        runs this with session expiry. Returns how many users were dropped or changed."""
        templates = dict(self._templates)
        g = self._gallery_state
        gallery = {} if g is None else dict(zip(g[0], g[1]))
        keys = getattr(self.pad, "history_keys", None)
        # PAD's caches are the process's, not this service's: keys of other histories
        # (another detector's, a tool's: not user ids) are not this store's to look up,
        # and one of them failed the whole sweep (TypeError, every maintenance round)
        users = (set(templates) | set(gallery)
                 | ({k for k in keys() if isinstance(k, str)} if keys is not None else set()))
        n = 0
        stamps_of = getattr(self.store, "template_stamps", None)
        if users and stamps_of is not None:
            stamps = self._store("template_stamps", stamps_of, users)
            for u in users:
                stamp = stamps.get(u)
                if stamp is None:  # deleted
                    self._forget(u)
                    n += 1
                    continue
                e = templates.get(u)
                if (e is not None and e[2] != stamp) or (u in gallery and gallery[u] != stamp):
                    # replaced (an update, a re-enrollment after deletion): the old
                    # template, its gallery row and its enrollment's PAD history go
                    if e is not None and self._templates.get(u) is e:
                        self._templates.pop(u, None)
                    self._drop_gallery_row_and_pad_history(u)
                    n += 1
        fps = getattr(self.store, "forget_deleted_fingerprints", None)
        if fps is not None:
            self._store("forget_deleted_fingerprints", fps)
        return n

    def unlock_user(self, user_id: str, *, actor: str = "", peer: str = "") -> bool:
        """Lift a lockout; return whether the user was locked. ``actor`` (the caller's
        client id) and ``peer`` go into the audit row (method ``UnlockUser``) and the
        ``user_unlocked`` log line."""
        user_id = check_user_id(user_id)
        # the lock it lifted, not one read before (a failure of another replica in
        # between was lifted and answered was_locked=false)
        lock = self._store("unlock_user", self.store.unlock_user, user_id)
        now = self.clock()
        was = lock.is_locked(now)
        self._audit_row(user_id, True, "unlocked" if was else "not_locked", peer,
                        "UnlockUser", now, actor)
        log.info("user unlocked", extra={"event_type": "user_unlocked", "user_id": user_id,
                                         "was_locked": was, "actor": actor,
                                         "method": "UnlockUser", **peer_fields(peer)})
        return was

    # --------------------------------------------------------------------- sessions
    def _session(self, token: str) -> Any:
        if not isinstance(token, str) or not token:
            raise InvalidArgument("'session_token' must not be empty.")
        if len(token) > 512:
            raise InvalidArgument("'session_token' is longer than 512 characters.")
        return self._store("get_session", self.store.get_session, token)

    def _seen_expired(self, token: str, s: Any, now: float) -> Any:
        """``s`` (the session of ``token``), recorded ended in the store when it is past
        its expiry at ``now`` and no sweep has ended it yet (at its expiry, reason
        ``expired``, as the sweep does): otherwise a wall clock that stepped back before
        its expiry made it valid again, where a caller had been told it expired. A store
        failure here is counted and logged, not raised: the session is answered expired
        all the same (the sweep ends it later)."""
        if s.ended_at is not None or s.is_active(now):
            return s
        try:
            ended = self.store.expire_session(token, now=now)
        except Exception:  # noqa: BLE001 - the answer (expired) does not depend on it
            self.metrics.record_store_error("expire_session")
            log.error("store error", exc_info=True, extra={
                "event_type": "store_error", "operation": "expire_session"})
            return s
        if ended is None:  # ended meanwhile (the sweep, another call): as it is now
            return s
        # the sweep no longer sees it: its duration is counted here, as the sweep would
        self.metrics.observe_session_duration(max(0.0, ended.expires_at - ended.created_at))
        return ended

    def validate_session(self, token: str) -> SessionInfo:
        now = self.clock()
        try:
            s = self._session(token)
        except NotFound:
            return SessionInfo(False, "", 0.0, 0.0, "unknown")
        s = self._seen_expired(token, s, now)
        # when the wearer was last verified, else when the session opened, valid or not
        last = float(s.last_verified_at or s.created_at)
        if s.ended_at is not None:
            return SessionInfo(False, s.user_id, float(s.expires_at), last,
                               s.end_reason or "ended")
        if not s.is_active(now):
            return SessionInfo(False, s.user_id, float(s.expires_at), last, "expired")
        return SessionInfo(True, s.user_id, float(s.expires_at), last, "")

    def end_session(self, token: str, reason: str = "ended", *, peer: str = "",
                    method: str = "EndSession") -> tuple[bool, float]:
        """End a session; return (whether this call ended it, its duration in s).
        ``peer`` and ``method``, the call that ended it, go into its log line."""
        s = self._session(token)  # NotFound for an unknown token
        if s.ended_at is not None:
            return False, float(s.ended_at - s.created_at)
        now = self.clock()
        if not s.is_active(now):
            self._seen_expired(token, s, now)
            return False, float(s.expires_at - s.created_at)
        ended = self._store("end_session", self.store.end_session, token, reason, now=now)
        dur = max(0.0, float((ended.ended_at or now) - ended.created_at))
        if ended.ended_at != now or ended.end_reason != reason:
            # another call ended it after the read above (the store keeps the first end)
            return False, dur
        self.metrics.observe_session_duration(dur)
        self._update_active_sessions(now)
        log.info("session ended", extra={"event_type": "session_ended",
                                         "user_id": s.user_id, "session_id": s.session_id,
                                         "reason": reason, "duration_s": round(dur, 3),
                                         "method": method, **peer_fields(peer)})
        return True, dur

    def continuous(self, token: str, chunks: Iterable[SignalBlock], *,
                   cancelled: Callable[[], bool] = lambda: False,
                   peer: str = "") -> Iterator[ContinuousUpdate]:
        """Keep a session verified while a headset streams; yield one update per window.

        Ends the session (last update has state ``"ended"``) when the wearer changes
        (``continuous_mismatch_windows`` consecutive windows below the threshold), when
        the signal is lost (no usable window within ``signal_loss_s`` of signal, no
        data for ``signal_loss_s`` of wall time, or no whole window within a window's time
        and ``signal_loss_s`` more), or when the session is no longer
        active.  When the client closes the stream the session stays open; so it does when
        the stream gets no data for ``signal_loss_s`` after another stream on the session
        verified the wearer (a client that reconnected): that stream alone ends,
        ``DeadlineExceeded``.  A session
        the store fails to end is no ``"ended"`` update: the stream raises ``Unavailable``.
        """
        s = self._session(token)
        now = self.clock()
        if not s.is_active(now):
            self._seen_expired(token, s, now)
            raise FailedPrecondition("session is not active ("
                                     f"{s.end_reason or 'expired'}); authenticate again.")
        user_id = s.user_id
        # what the stream's security events say of it: a stolen token streams from elsewhere
        where = {"method": "ContinuousAuthenticate", "session_id": s.session_id,
                 **peer_fields(peer)}
        rec = self._store("get_template", self.store.get_template, user_id)
        template = self._template(rec, user_id)
        thr = self.rec.threshold
        win = self.rec.window_s
        # every window is checked for replay like an Authenticate probe: against the
        # user's stored history and the session's streamed windows, this stream's and
        # its earlier (or concurrent) streams', on any replica (a looped recording, also
        # one replayed on a new stream each time), and the user's other sessions' (one
        # replayed on a new session)
        stored_fps: list = []  # the user's stored history, read for each window PAD judges
        stream_fps: dict[int, bytes] = {}  # the session's windows read so far, by row id
        loss = float(self.config.signal_loss_s)
        stream = chunks if isinstance(chunks, ClientStream) else ClientStream(chunks)
        buf = _Buffer(max_seconds=4 * win + 1, keep=self._stream_channels())
        pending = 0.0          # seconds of signal not yet scored
        streamed = 0.0
        carry = None           # the rest of a chunk past a window's end: the next turn's
        since_good = 0.0       # seconds of signal since the last usable window
        mismatches = 0
        expires = float(s.expires_at)
        window_t = time.monotonic()  # when the last window was complete (or the start)
        # when this stream last verified the wearer (the session's last verification when
        # it started): a later one is another stream's on the same session
        own_verified = float(s.last_verified_at or s.created_at)

        def deleted() -> str:
            # the user was deleted while the stream ran: what this process prepared of it
            # since DeleteUser dropped it (the fingerprints a window's PAD compared with,
            # the stream's own) goes too, as an Authenticate's does
            self._forget(user_id)
            return "user_deleted"

        def end(reason: str, score: float = 0.0, quality: float = 0.0) -> ContinuousUpdate:
            if reason == "wearer_changed":
                self._security_event("wearer changed", "wearer_changed", "medium", user_id,
                                     **where)
            until = expires
            try:
                ended, _ = self.end_session(token, reason, peer=peer,
                                            method="ContinuousAuthenticate")
                if not ended:
                    # another call ended it first (EndSession, EndUserSessions, another
                    # stream), or it expired: the update says why, as ValidateSession does
                    cur = self._store("get_session", self.store.get_session, token)
                    reason, until = cur.end_reason or "expired", float(cur.expires_at)
            except NotFound:  # deleted with its user meanwhile: ended all the same
                reason = deleted()
            # a store error propagates (UNAVAILABLE): the session is still open, so the
            # client must not be told ENDED
            return ContinuousUpdate("ended", score, thr, quality, reason, until, streamed)

        try:
            while True:
                if cancelled():
                    return
                if carry is not None:  # the rest of the last chunk first
                    item, carry = carry, None
                else:
                    try:
                        item = stream.next(loss)
                    except StopIteration:
                        return
                    except TimeoutError:
                        if cancelled():  # the call is gone (client or server shutdown)
                            return
                        try:
                            cur = self._store("get_session", self.store.get_session, token)
                        except NotFound:  # deleted with its user meanwhile
                            yield ContinuousUpdate("ended", 0.0, thr, 0.0, deleted(),
                                                   expires, streamed)
                            return
                        if cur.is_active(self.clock()) and \
                                (cur.last_verified_at or 0.0) > own_verified:
                            # another stream on the session verified the wearer since this
                            # one last did: a client that reconnected, leaving this stream
                            # behind (its connection died without a word, so gRPC still
                            # holds the call). Its silence is not the session's
                            raise DeadlineExceeded(
                                f"the stream sent no message for {loss:g} s (signal_loss_s) "
                                "and ends; the session stays open: another "
                                "ContinuousAuthenticate stream verified the wearer since this "
                                "one last did.")
                        yield end("signal_lost")
                        return
                if time.monotonic() - window_t > win + loss:
                    # data, but not a window's worth in a window's time and signal_loss_s
                    # more: a headset that lost most of its samples, or a client trickling
                    # a few now and then (which held the stream, and a worker thread, for
                    # as long as it liked, past the session's expiry)
                    yield end("signal_lost")
                    return
                block: SignalBlock = item
                if s.device_id and not block.device_id:
                    # the session was opened with a device proof: its stream names that
                    # headset in every chunk (a client error; the session stays open)
                    raise InvalidArgument(
                        "Signal.device_id is empty: this session was opened with device "
                        f"{s.device_id!r}, and every chunk must name it.")
                if block.device_id and s.device_id and block.device_id != s.device_id:
                    # the session's token streamed from another headset: suspicious, as a
                    # device mismatch in a proof is
                    self._security_event("device changed", "device_changed", "medium",
                                         user_id, device_id=block.device_id,
                                         session_device_id=s.device_id, **where)
                    yield end("device_changed")
                    return
                due = False
                n = block.samples.shape[0]
                if pending + block.seconds > win and block.sfreq == (buf.sfreq or block.sfreq):
                    # a chunk past the next window's end (an app sending long chunks):
                    # cut there, so that every window of it is scored, one update each
                    k = samples_for(win - pending, check_supported_sfreq(block.sfreq))
                    if 0 < k < n:
                        block, carry = (SignalBlock(x, block.sfreq, block.ch_names,
                                                    block.device_id)
                                        for x in (block.samples[:k], block.samples[k:]))
                        due = True
                buf.push(block)
                pending += block.seconds
                streamed += block.seconds
                if pending < win and not due:
                    continue
                pending = 0.0
                window_t = time.monotonic()
                blk = buf.block(last_seconds=win)
                t0 = time.perf_counter()
                # the CPU-bound steps take the gate as an Authenticate's do (one thread at
                # a time: many streams otherwise slowed every unary call), never with
                # store I/O inside
                unusable = None
                with self._cpu_gate:
                    try:
                        w = self.rec.windows(blk)
                    except SignalUnusable as exc:
                        # railed or dropped on every model channel (the headset taken
                        # off): a window without a usable signal, not a client error (it
                        # failed the stream and left the session open for the next wearer)
                        w, unusable = None, exc
                if w is None:
                    acc, quality, rejected = np.zeros(0, dtype=bool), 0.0, [unusable.artifact]
                    why = str(unusable)
                else:
                    acc = np.asarray(w.accepted, dtype=bool)
                    quality = _mean(np.asarray(w.quality, dtype=np.float64))
                    rejected = _codes(w.reasons)
                    why = "; ".join(sorted({r for r in w.reasons if r}))
                self.metrics.observe_signal("continuous", time.perf_counter() - t0,
                                            min(1.0, max(0.0, quality)))
                self.metrics.record_artifact_rejections(rejected)
                try:
                    cur = self._store("get_session", self.store.get_session, token)
                except NotFound:  # deleted with its user meanwhile: said as an update
                    yield ContinuousUpdate("ended", 0.0, thr, quality, deleted(),
                                           expires, streamed)
                    return
                now = self.clock()
                if not cur.is_active(now):
                    self._seen_expired(token, cur, now)
                    yield ContinuousUpdate("ended", 0.0, thr, quality,
                                           cur.end_reason or "expired", float(cur.expires_at),
                                           streamed)
                    return
                if not acc.any():
                    since_good += win
                    if since_good >= loss:
                        yield end("signal_lost", 0.0, quality)
                        return
                    window_t = time.monotonic()  # (see below)
                    yield ContinuousUpdate("uncertain", 0.0, thr, quality, why, expires,
                                           streamed)
                    continue
                since_good = 0.0
                seen = ([] if self.pad is None else
                        self._session_windows(s.session_id, user_id, stream_fps))
                if self.pad is not None:
                    # the user's history as it is now: an Authenticate probe stored since
                    # the stream started, replayed on it, was never compared (the store
                    # decrypts only rows it has not seen: a read of the ids, in the main)
                    stored_fps = self._store("get_fingerprints", self.store.get_fingerprints,
                                             user_id)
                with self._cpu_gate:
                    v = (None if self.pad is None else
                         self.pad.check(w, blk, [*stored_fps, *seen], owner=user_id))
                    d = None if v is not None and v.attack else self.rec.decide(w, template)
                if v is not None:
                    if v.attack:  # a replay or a non-physiological signal
                        self._security_event("presentation attack", v.kind, "high",
                                             user_id, reason=v.reason, **where)
                        yield end(v.kind, 0.0, quality)
                        return
                    if v.fingerprint is not None:
                        rid = self._store("add_session_window", self.store.add_session_window,
                                          s.session_id, user_id, v.fingerprint,
                                          keep=_STREAM_PAD_HISTORY,
                                          every=_STREAM_PAD_HISTORY,
                                          most=max(_STREAM_PAD_MOST, _STREAM_PAD_HISTORY),
                                          now=now)
                        if rid is not None:
                            stream_fps[rid] = v.fingerprint
                score, thr = float(d.score), float(d.threshold)
                if d.accepted:
                    mismatches = 0
                    try:
                        expires = self._renew(token, expires, now)
                        own_verified = now  # the store's last_verified_at
                    except (FailedPrecondition, NotFound):
                        # ended meanwhile (EndSession, another stream on the token, a
                        # delete): say so as an update, like the check above does
                        try:
                            cur = self._store("get_session", self.store.get_session, token)
                            why, until = cur.end_reason or "expired", float(cur.expires_at)
                            self._seen_expired(token, cur, now)
                        except NotFound:  # the session went with its user
                            why, until = deleted(), expires
                        yield ContinuousUpdate("ended", 0.0, thr, quality, why, until,
                                               streamed)
                        return
                    # the server's own work on the window (the CPU gate it shares with
                    # every call, the store) is not the client's time: counted, a server
                    # slow on one window (under load) ended a healthy stream signal_lost
                    window_t = time.monotonic()
                    yield ContinuousUpdate("verified", score, thr, quality, "", expires, streamed)
                else:
                    mismatches += 1
                    if mismatches >= self.config.continuous_mismatch_windows:
                        yield end("wearer_changed", score, quality)
                        return
                    window_t = time.monotonic()  # (see above)
                    yield ContinuousUpdate("uncertain", score, thr, quality,
                                           f"score {score:.3f} below threshold {thr:.3f}",
                                           expires, streamed)
        finally:
            stream.close()

    def _renew(self, token: str, expires: float, now: float) -> float:
        fn = getattr(self.store, "renew_session", None)
        if fn is None:
            return expires
        s = self._store("renew_session", fn, token, float(self.config.session_ttl_s),
                        max_age_s=float(self.config.session_max_age_s), now=now)
        return float(s.expires_at)

    # ---------------------------------------------------------------------- devices
    def register_device(self, user_id: str, device_id: str, rotate: bool = False, *,
                        first_only: bool = False, actor: str = "", peer: str = "",
                        deadline: float | None = None) -> str:
        """Bind ``device_id`` to ``user_id``; return its secret (shown once). See
        :meth:`bind_device`, which also says whether it rotated a secret."""
        return self.bind_device(user_id, device_id, rotate, first_only=first_only,
                                actor=actor, peer=peer, deadline=deadline)[0]

    def bind_device(self, user_id: str, device_id: str, rotate: bool = False, *,
                    first_only: bool = False, actor: str = "", peer: str = "",
                    deadline: float | None = None) -> tuple[str, bool]:
        """Bind ``device_id`` to ``user_id``; return ``(secret, rotated)``: its secret
        (shown once), and whether the write replaced the secret of a headset bound to the
        user (``rotate`` on a headset not bound yet is a first registration: False).

        ``first_only``: only a user's first device (the server sets it for callers
        without the admin scope: binding another headset to an enrolled user, like
        rotating a secret, is an account change). A rotation ends the sessions that were
        opened with the device. ``actor`` (the caller's client id) and ``peer`` go into
        the audit trail. ``DeadlineExceeded``, with nothing written, when ``deadline``
        (a ``time.monotonic()`` value: the call's) has passed before the write, or while
        the write waited for the store (the store refuses it then): a secret
        stored but never received binds the headset to nothing anyone holds, and a retry
        then needs ``rotate`` (the admin scope)."""
        user_id = check_user_id(user_id)
        device_id = check_user_id(device_id, "device_id")
        if not (device_id.isascii() and device_id.isprintable()):
            # its proof names it in x-device-id metadata, which holds printable ASCII only:
            # a headset bound under another id could never authenticate
            raise InvalidArgument(
                f"'device_id' must be printable ASCII, got {device_id!r}: the device proof "
                "carries it in the x-device-id gRPC metadata, which cannot hold other "
                "characters.")
        self._store("get_user", self.store.get_user, user_id)  # NotFound first
        try:
            dev = self._store("get_device", self.store.get_device, device_id)
        except NotFound:
            dev = None
        if dev is not None:
            if dev.user_id != user_id:
                # a caller without the admin scope whose user already has a headset is
                # refused for that, as for a free id: else, writing nothing, it could test
                # any id for whether another account holds it
                if first_only and self._store("list_devices", self.store.list_devices,
                                              user_id):
                    raise PermissionDenied(_ANOTHER_DEVICE.format(user=user_id))
                raise AlreadyExists(f"device {device_id!r} is bound to another user.")
            if not rotate:
                # rotate=true is an account change: a caller without the admin scope
                # (first_only) asks an admin, instead of being refused for it next
                how = ("an admin can rotate its secret (rotate=true needs the admin scope)"
                       if first_only else "set rotate=true for a new secret")
                raise AlreadyExists(f"device {device_id!r} is already registered to user "
                                    f"{user_id!r}; {how}.")
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("the call's deadline passed before the headset was "
                                   "registered: nothing was written; retry.")
        # first_only is decided in the store's transaction alone, so two headsets
        # registered at once cannot both pass (one gets its secret, the other
        # PERMISSION_DENIED)
        # a rotation ends the sessions opened with the old secret in its own transaction:
        # a second one after it, failing (the store gone a moment, the process stopped),
        # left them open, renewed by ContinuousAuthenticate, after a stolen headset's
        # secret was rotated
        try:
            rec, ended = self._store(
                "register_device", self.store.register_device_ending_sessions, user_id,
                device_id, secret, reason="device_rotated", replace=rotate,
                first_only=first_only, now=now, deadline=deadline)
        except AnotherDeviceBound:
            raise PermissionDenied(_ANOTHER_DEVICE.format(user=user_id)) from None
        # what the write did, not what the read above saw: a first registration of the
        # same headset landing in between makes this one a rotation (and a device deleted
        # in between, with its user, a first registration)
        rotated = bool(getattr(rec, "replaced", False))
        self._sessions_ended(ended, now)
        self._audit(user_id, "RegisterDevice", "rotated" if rotated else "registered",
                    actor, peer, device_id=device_id, sessions_ended=len(ended))
        return secret, rotated

    def end_user_sessions(self, user_id: str, device_id: str | None = None, *,
                          actor: str = "", peer: str = "") -> int:
        """End every open session of ``user_id`` (only those opened with ``device_id``
        when given): an admin's answer to a stolen headset or a compromised account.
        Audited; ``NotFound`` for an unknown user. Returns how many were ended."""
        user_id = check_user_id(user_id)
        if device_id is not None:
            device_id = check_user_id(device_id, "device_id")
        self._store("get_user", self.store.get_user, user_id)  # NotFound first
        ended = self._end_user_sessions(user_id, "ended_by_admin", device_id=device_id)
        self._audit(user_id, "EndUserSessions", "sessions_ended", actor, peer,
                    device_id=device_id, sessions_ended=len(ended))
        return len(ended)

    def _end_user_sessions(self, user_id: str, reason: str, *,
                           device_id: str | None = None) -> list:
        now = self.clock()
        ended = self._store("end_user_sessions", self.store.end_user_sessions, user_id,
                            reason, device_id=device_id, now=now)
        self._sessions_ended(ended, now)
        return ended

    def _sessions_ended(self, ended: list, now: float) -> None:
        """The metrics of sessions an account change ended at ``now``."""
        for sess in ended:
            self.metrics.observe_session_duration(max(0.0, now - float(sess.created_at)))
        if ended:
            self._update_active_sessions(now)

    def _audit_row(self, user_id: str, success: bool, reason: str, peer: str, method: str,
                   now: float, actor: str | None = None) -> None:
        """Append an audit row outside an authentication's own transaction (a refused
        attempt, an account change: ``actor``, the caller's client id, says who made it).
        The answer the caller gets matters more: a store error is counted and logged, not
        raised."""
        try:
            self.store.record_attempt(user_id, success, None, reason, peer, 0.0, method,
                                      actor=actor, now=now)
        except Exception:  # noqa: BLE001
            self.metrics.record_store_error("record_attempt")
            log.exception("audit row not written", extra={"user_id": user_id,
                                                          "reason": reason})

    def _audit(self, user_id: str, method: str, what: str, actor: str, peer: str,
               **fields: Any) -> None:
        """An account change (enrollment, template update, device registration or
        rotation): an audit row and a log line naming who made it."""
        self._audit_row(user_id, True, what, peer, method, self.clock(), actor)
        log.info("account change", extra={
            "event_type": "account_change", "user_id": user_id, "method": method,
            "change": what, "actor": actor, **peer_fields(peer), **fields})

    # ------------------------------------------------------------------------ stats
    def stats(self) -> dict[str, float]:
        st = self._store("stats", self.store.stats, now=self.clock())
        n = self._store("count_active_sessions", self.store.count_active_sessions,
                        now=self.clock())
        self.metrics.set_active_sessions(int(n))
        return {"total_users": int(st.total_active_users),
                "active_users_today": int(st.active_users_today),
                "auth_attempts_today": int(st.attempts_today),
                "success_rate_today": float(st.success_rate_today or 0.0),
                "active_sessions": int(n)}


# ----------------------------------------------------------------------------------
class ClientStream:
    """A client stream read on a thread of its own, so that its consumer waits for the
    next message with a timeout. grpcio's request iterator blocks until the client sends:
    a client that opened a stream and went silent (or sent a few samples now and then)
    held a worker thread for as long as it kept its connection, bounded only by its own
    deadline if it set one.

    ``convert`` runs on the reader thread on each message; an exception it or the
    iterator raises is raised by :meth:`next` in the consumer, in order. Iterating the
    stream waits ``idle_s`` at most for each message (``None``: for ever), else
    ``DeadlineExceeded``. :meth:`close` lets the reader go (it ends when the call does).
    At most ``maxsize`` messages wait read ahead, and one more in the reader's hands
    (each up to the message size limit)."""

    _END = object()

    def __init__(self, it: Iterable, convert: Callable[[Any], Any] | None = None, *,
                 idle_s: float | None = None, maxsize: int = 2) -> None:
        self.idle_s = idle_s
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._done = False
        threading.Thread(target=self._read, args=(it, convert), name="nacf-stream-reader",
                         daemon=True).start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, it: Iterable, convert: Callable[[Any], Any] | None) -> None:
        try:
            for m in it:
                if not self._put(m if convert is None else convert(m)):
                    return
            self._put(self._END)
        except Exception as e:  # noqa: BLE001 - forwarded to the consumer
            self._put(e)

    def next(self, timeout: float | None) -> Any:
        """The next message: ``StopIteration`` at the end of the stream, ``TimeoutError``
        when none came within ``timeout`` seconds."""
        if self._done:
            raise StopIteration
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no message for {timeout:g} s") from None
        if item is self._END or isinstance(item, BaseException):
            self._done = True
            if item is self._END:
                raise StopIteration
            raise item
        return item

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.next(self.idle_s)
            except StopIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the stream sent no message for {self.idle_s:g} s (signal_loss_s): "
                    "the server ends a stream that stalls; stream the signal as it is "
                    "recorded.") from None

    def close(self) -> None:
        self._stop.set()


class _Buffer:
    """Concatenates streamed blocks (same rate and channels) into one block.

    ``keep``: the channels the stream's decision reads (the model's, PAD's), by name;
    the buffer holds only those, in that order, when the stream has them and more (a
    client's 256 channels × 1000 Hz × stream_max_seconds held ~614 MB a stream, of which
    the pipeline reads its model's few). ``None``: every channel."""

    def __init__(self, max_seconds: float | None = None,
                 keep: Sequence[str] | None = None) -> None:
        self._parts: list[np.ndarray] = []
        self._n = 0
        self.sfreq = 0.0
        self.ch_names: tuple[str, ...] = ()   # the channels held
        self._sent: tuple[str, ...] = ()      # the channels of the first chunk, as sent
        self._idx: list[int] | None = None    # the columns held of a chunk (None: all)
        self.device_id = ""
        self.max_seconds = max_seconds
        self.keep = None if keep is None else list(keep)

    @property
    def seconds(self) -> float:
        return self._n / self.sfreq if self.sfreq else 0.0

    def push(self, b: SignalBlock) -> np.ndarray:
        """Buffer ``b``; returns its samples as held (its kept channels)."""
        if not self._parts and not self._n:
            check_supported_sfreq(b.sfreq)  # the pipeline's own check, before buffering
            self.sfreq, self._sent, self.device_id = b.sfreq, b.ch_names, b.device_id
            self.ch_names, self._idx = b.ch_names, None
            if self.keep is not None and len(b.ch_names) > len(self.keep):
                from nacf_core.channels import pick
                try:
                    self._idx = pick(list(b.ch_names), self.keep)
                except InvalidArgument:
                    pass  # (missing or ambiguous channels: the pipeline says so, as before)
                else:
                    self.ch_names = tuple(b.ch_names[i] for i in self._idx)
        elif b.sfreq != self.sfreq or b.ch_names != self._sent:
            raise InvalidArgument("every chunk of a stream must have the sample rate and "
                                  f"channels of the first: {self._change(b)}.")
        x = b.samples if self._idx is None else b.samples[:, self._idx]
        self._parts.append(x)
        self._n += x.shape[0]
        if self.max_seconds is not None:
            keep = max(1, int(self.max_seconds * self.sfreq))
            while len(self._parts) > 1 and self._n - self._parts[0].shape[0] >= keep:
                self._n -= self._parts.pop(0).shape[0]
        return x

    def _change(self, b: SignalBlock) -> str:
        """What differs between ``b`` and the first chunk, in words (a renamed or
        reordered channel keeps the count, so counts alone said nothing)."""
        if b.sfreq != self.sfreq:
            return f"the first was at {self.sfreq!r} Hz, this one at {b.sfreq!r} Hz"
        if len(b.ch_names) != len(self._sent):
            return (f"the first had {len(self._sent)} channels, this one "
                    f"{len(b.ch_names)}")
        i = next(i for i, (a, c) in enumerate(zip(self._sent, b.ch_names)) if a != c)
        return (f"channel {i} was {self._sent[i]!r} in the first, {b.ch_names[i]!r} in "
                "this one (same names in the same order)")

    def block(self, last_seconds: float | None = None,
              first_seconds: float | None = None) -> SignalBlock:
        """The buffered signal, or its last or first that many seconds."""
        data = np.concatenate(self._parts, axis=0) if len(self._parts) > 1 else self._parts[0]
        if len(self._parts) > 1:
            self._parts = [data]
        if first_seconds is not None:
            data = data[:max(1, samples_for(first_seconds, self.sfreq))]
        if last_seconds is not None:
            # as many samples as the pipeline needs for that many seconds: round() gave
            # one fewer at rates like 250.1 Hz, a window 'too short'
            data = data[-max(1, samples_for(last_seconds, self.sfreq)):]
        return SignalBlock(data, self.sfreq, self.ch_names, self.device_id)


#: the most Signals one Enroll takes: the repeat checks compare each with every earlier
#: one (PAD's replay search about a millisecond a pair): 800 short ones in a 16 MiB
#: request were minutes of CPU; a client sends one recording, a few sessions at most
MAX_ENROLL_SIGNALS = 32

#: How many row-misaligned or partial matches of a signal's first window are examined
#: (contrived data could make the search quadratic; real EEG has none)
_REPEAT_CANDIDATES = 64


def _refuse_repeated_signals(blocks: list[SignalBlock], model_ch: Iterable[str],
                             window_s: float) -> None:
    """``InvalidArgument`` when an Enroll signal repeats at least one whole window of an
    earlier one: the same samples on the model's channels (in any channel order, at the
    same rate), all of it or a piece. Each window counts towards the quality gate
    (``min_enroll_epochs``) and in ``epochs_used``: 10 s sent five times passed a gate
    that asks for about 22 s, with every window counted five times. The blocks have
    passed the pipeline's checks (their channels are there)."""
    from nacf_core.channels import pick

    model_ch = list(model_ch)
    seen: list[tuple[int, float, bytes]] = []  # (index, rate, bytes)
    for j, b in enumerate(blocks):
        x = np.ascontiguousarray(np.asarray(b.samples)[:, pick(list(b.ch_names), model_ch)],
                                 dtype="<f4")
        data, row = x.tobytes(), x.shape[1] * 4
        n = samples_for(window_s, b.sfreq)
        if _repeats_itself(x, n):
            raise InvalidArgument(
                f"signals[{j}] repeats itself: a {window_s:g}-s window of its samples (on "
                "the model's channels) comes again later in it, as in a shorter recording "
                "looped; each window of an enrollment counts once, send a recording "
                "that does not repeat.")
        for i, sfreq, prev in seen:
            if sfreq != b.sfreq:
                continue
            if _starts_inside(prev, data, row, n) or _starts_inside(data, prev, row, n):
                raise InvalidArgument(
                    f"signals[{j}] repeats signals[{i}]: at least one {window_s:g}-s window "
                    "of the same samples (on the model's channels) is in both; each "
                    "window of an enrollment counts once, send distinct recordings.")
        seen.append((j, b.sfreq, data))


def _non_physiological_window(det: Any, w: Any, b: SignalBlock) -> tuple[Any, str]:
    """``(PAD verdict, where)`` of the first accepted window of ``b`` (its windows ``w``)
    that ``det`` finds non-physiological judged on its own, as a probe of one window is;
    ``(None, "")`` when none is, or when a window is shorter than PAD's 2 s. A run of
    accepted windows judged as one (``check``) let 30 s of white noise through after
    10 s of EEG; every accepted window of every EEGMMIDB run (4330) and of the OpenBCI
    Cyton recordings (262) passes alone (periodicity at most 0.79, flatness 0.89)."""
    win = float(getattr(w, "window_s", 0.0) or 0.0)
    acc = np.asarray(w.accepted, dtype=bool)
    if win < 2.0 or acc.sum() < 2:  # one window: check() judged it alone
        return None, ""
    sfreq = float(b.sfreq)
    n = len(b.samples)
    names = list(b.ch_names)
    for s in np.asarray(w.starts_s, dtype=np.float64)[acc]:
        a = max(0, int(round(float(s) * sfreq)))
        e = min(n, math.ceil((float(s) + win) * sfreq - 1e-9))
        v = det.analyse(b.samples[a:e], sfreq, names)
        if v.attack and v.kind != "replay":
            return v, f"its accepted window at {float(s):g}-{float(s) + win:g} s is"
    return None, ""


#: per-channel odd multipliers of _repeats_itself's row hash (fixed: deterministic)
_ROW_HASH = np.random.default_rng(0x6e616366).integers(1, 2 ** 63, 1024, dtype=np.uint64) | 1


def _repeats_itself(x: np.ndarray, n: int) -> bool:
    """True when a piece of ``n`` rows of ``x`` (``(n_times, n_channels)`` float32)
    starting at a multiple of ``n`` comes again at another row: any stretch of at least
    ``2 n`` rows found twice in ``x`` (a loop, at any period) holds one. Linear in ``x``:
    one 64-bit hash per row, and only the rows whose hash is a piece's first row's are
    compared (``_REPEAT_CANDIDATES`` at most per piece). A constant piece (a flat or
    railed headset, dropped samples) says nothing."""
    n_t = x.shape[0]
    if n <= 0 or n_t < n + 1:
        return False
    rows = x.view(np.uint32).reshape(n_t, -1)
    mult = np.resize(_ROW_HASH, rows.shape[1])
    with np.errstate(over="ignore"):
        h = (rows.astype(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    starts = np.arange(0, n_t - n + 1, n)
    hits = np.flatnonzero(np.isin(h, h[starts]))
    if len(hits) <= len(starts):  # every piece's first row is found only where it is
        return False
    by_hash: dict[int, list[int]] = {}
    for t in hits[hits <= n_t - n]:
        by_hash.setdefault(int(h[t]), []).append(int(t))
    for p in starts:
        piece = rows[p:p + n]  # compared as bits: NaN rows too
        if (piece == piece[:1]).all():
            continue
        others = [t for t in by_hash.get(int(h[p]), ()) if t != p][:_REPEAT_CANDIDATES]
        if any(np.array_equal(rows[t:t + n], piece) for t in others):
            return True
    return False


def _starts_inside(a: bytes, b: bytes, row: int, n: int) -> bool:
    """True when ``b`` (rows of ``row`` bytes) starts at a row of ``a`` and equals ``a``
    from there for as long as both last, at least ``n`` rows (one window)."""
    head = b[:n * row]
    if len(head) < n * row or len(a) < n * row:
        return False
    if head[:row] * n == head:  # a constant start (a flat headset) says nothing
        return False
    pos = a.find(head)
    for _ in range(_REPEAT_CANDIDATES):
        if pos < 0:
            return False
        if pos % row == 0:
            size = min(len(a) - pos, len(b))
            if a[pos:pos + size] == b[:size]:
                return True
        pos = a.find(head, pos + 1)
    return False


def _template_id(state: Any) -> tuple[int, float] | None:
    """``(version, created_at)`` of the template in an ``AuthState``: which template a
    decision used (``finish_authentication`` refuses to open a session on another)."""
    t = getattr(state, "template", None)
    if t is None:
        return None
    return int(t.version), float(t.created_at)


def _codes(reasons: Iterable[str]) -> list[str]:
    """The reason codes (``pipeline.reason_codes``) of rejected windows' reasons: the
    bounded values of ``nacfauth_artifact_rejections_total{reason}``."""
    return [c for r in reasons if r for c in reason_codes(str(r))]


def _reason_at(reasons: Any, j: int) -> str:
    try:
        r = reasons[j]
    except (IndexError, TypeError, KeyError):
        return "rejected by the quality gate"
    return str(r) if r else "rejected by the quality gate"


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else 0.0


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
