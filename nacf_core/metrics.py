"""Prometheus metrics of the nacf service.

Every metric is declared once, in :class:`Metrics`, with the names, types, label
sets and buckets of ``METRICS.md`` (the monitoring guide's, in base units, with no
``user_id`` or ``ip_address`` label: those go into the JSON logs). The module-level
default instance :data:`METRICS` is bound to ``prometheus_client.REGISTRY``; that is
the one the server and the sidecar use. Tests build their own:
``Metrics(CollectorRegistry())``.

Design decisions
----------------
- Latency histograms keep the guide's buckets (0.1 … 10 s) and add finer ones
  (0.25 ms … 50 ms), because this service answers in milliseconds.
- ``nacfauth_session_duration_seconds`` is the guide's ``_hours`` histogram in the
  base unit: its 1 h … 168 h buckets, in seconds, after finer ones (1 … 30 min) that
  resolve this service's 15-min sessions.
- ``nacfauth_auth_success_rate{method}`` is computed on every scrape from a sliding
  window (default 300 s, one-second buckets) that :meth:`Metrics.observe_rpc` feeds:
  the share of the calls of that method in the window that returned ``OK``.
  A method with no call in the window exports no sample (a rate of nothing is not 0).
- ``nacfauth_daily_active_users`` is the number of distinct users seen since 00:00
  UTC: from a callable (the store's count, shared by every replica) when one is set
  with :meth:`Metrics.use_daily_active_users_from`, else from an in-process tracker
  fed by :meth:`Metrics.track_active_user` (which keeps only keyed hashes of ids).
- Free-text label values (RPC method, failure reason, ...) go through a guard that
  allows at most ``max_label_values`` distinct values per label and maps the rest to
  ``"other"``, so a buggy or hostile caller cannot blow up cardinality. Labels with
  a known vocabulary (``status``, ``user_type``, ``severity``, ``decision``, ...)
  are validated and a wrong value raises ``ValueError``.

Beyond the guide (what an operator of this service needs)
---------------------------------------------------------
``nacfauth_auth_decisions_total{decision}``, ``nacfauth_kernel_duration_seconds
{kernel,backend}``, ``nacfauth_artifact_rejections_total{reason}``,
``nacfauth_device_packets_total{status}`` (ok/dropped/corrupt),
``nacfauth_lockouts_total``, ``nacfauth_store_errors_total{operation}``,
``nacfauth_component_up{component}`` and
``nacfauth_health_check_duration_seconds{component}`` (set by the sidecar's checks),
``nacfauth_build_info{version,kernel_backend,model_version}``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from nacf_core._validation import check_finite_positive, check_int_range, check_option

__all__ = [
    "Metrics",
    "METRICS",
    "SlidingSuccessRate",
    "DailyActiveUsers",
    "GRPC_STATUS_NAMES",
    "USER_TYPES",
    "SEVERITIES",
    "DECISIONS",
    "PACKET_STATUSES",
    "LATENCY_BUCKETS",
    "SIGNAL_PROCESSING_BUCKETS",
    "QUALITY_BUCKETS",
    "SESSION_BUCKETS",
    "KERNEL_BUCKETS",
    "quality_bucket",
    "InstrumentedKernels",
]

# --- vocabularies -----------------------------------------------------------------

#: ``grpc.StatusCode`` names (kept here so importing this module does not need grpc).
GRPC_STATUS_NAMES: tuple[str, ...] = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
#: How the caller authenticated: API key, client certificate, open loopback mode, or not at all.
USER_TYPES: tuple[str, ...] = ("api_key", "mtls", "open", "anonymous")
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
DECISIONS: tuple[str, ...] = ("accept", "reject")
PACKET_STATUSES: tuple[str, ...] = ("ok", "dropped", "corrupt")
REGISTRATION_STATUSES: tuple[str, ...] = GRPC_STATUS_NAMES

# --- buckets ------------------------------------------------------------------------

_GUIDE_AUTH_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0)
_FINE_LATENCY = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
                 0.03, 0.05, 0.075)
#: ``nacfauth_auth_duration_seconds``: fine buckets (0.25 ms … 75 ms) + the guide's.
LATENCY_BUCKETS: tuple[float, ...] = tuple(sorted(set(_FINE_LATENCY + _GUIDE_AUTH_BUCKETS)))
_GUIDE_SIGNAL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
#: ``nacfauth_signal_processing_duration_seconds``: fine buckets + the guide's.
SIGNAL_PROCESSING_BUCKETS: tuple[float, ...] = tuple(
    sorted(set((0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.02, 0.03)
               + _GUIDE_SIGNAL_BUCKETS))
)
#: ``nacfauth_signal_quality_score``: the guide's.
QUALITY_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: ``nacfauth_session_duration_seconds``: the guide's 1, 2, 4, 8, 12, 24, 48, 168 hours,
#: after 1, 5, 10, 15 and 30 minutes: sessions last 15 min by default (``session_ttl_s``),
#: renewed while ContinuousAuthenticate verifies the wearer, so with the guide's buckets
#: alone nearly every session fell in the first one and every quantile read 30 min.
SESSION_BUCKETS: tuple[float, ...] = (60.0, 300.0, 600.0, 900.0, 1800.0, *(
    h * 3600.0 for h in (1, 2, 4, 8, 12, 24, 48, 168)))
#: ``nacfauth_kernel_duration_seconds``: 5 µs … 100 ms.
KERNEL_BUCKETS: tuple[float, ...] = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1,
)

#: Quality score thresholds of the ``quality`` label of the processing histogram.
_QUALITY_GOOD = 0.8
_QUALITY_FAIR = 0.5


def quality_bucket(score: float) -> str:
    """Map a quality score in [0, 1] to the bounded label ``good`` / ``fair`` / ``poor``.

    ``good`` is >= 0.8, ``fair`` is >= 0.5, anything lower (or NaN) is ``poor``.
    """
    s = float(score)
    if s >= _QUALITY_GOOD:
        return "good"
    if s >= _QUALITY_FAIR:
        return "fair"
    return "poor"


# --- helpers ------------------------------------------------------------------------


class _BoundedLabel:
    """Admit at most ``limit`` distinct values of one free-text label; the rest -> other."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"{self.name!r} must be a non-empty str, got {value!r} instead."
            )
        v = value[:64]
        with self._lock:
            if v in self._seen:
                return v
            if len(self._seen) < self.limit:
                self._seen.add(v)
                return v
        return "other"


class SlidingSuccessRate:
    """Share of calls that returned OK over the last ``window_s`` seconds, per key.

    Calls are counted in one-second buckets (a ring of ``ceil(window_s)`` buckets per
    key), so memory stays bounded at any call rate; the window slides by whole seconds.

    Parameters
    ----------
    window_s : float
        Window length in seconds (default 300, the guide's "last 5 minutes").
    clock : callable
        Returns the time in seconds (default ``time.monotonic``); tests inject a fake.
    """

    def __init__(self, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = check_finite_positive("window_s", window_s)
        self._n = max(1, math.ceil(self.window_s))
        self._clock = clock
        self._lock = threading.Lock()
        # key -> {second: [ok, total]}
        self._buckets: dict[str, dict[int, list[int]]] = {}

    def record(self, key: str, ok: bool) -> None:
        """Count one call of ``key``; ``ok`` is whether it returned OK."""
        sec = int(math.floor(self._clock()))
        with self._lock:
            per = self._buckets.setdefault(key, {})
            b = per.get(sec)
            if b is None:
                b = per[sec] = [0, 0]
                self._prune(per, sec)
            b[0] += 1 if ok else 0
            b[1] += 1

    def _prune(self, per: dict[int, list[int]], now_sec: int) -> None:
        oldest = now_sec - self._n + 1
        for s in [s for s in per if s < oldest]:
            del per[s]

    def rates(self) -> dict[str, float]:
        """``{key: share in [0, 1]}`` for every key with at least one call in the window."""
        now_sec = int(math.floor(self._clock()))
        out: dict[str, float] = {}
        with self._lock:
            for key, per in list(self._buckets.items()):
                self._prune(per, now_sec)
                ok = sum(b[0] for b in per.values())
                total = sum(b[1] for b in per.values())
                if total:
                    out[key] = ok / total
                else:
                    del self._buckets[key]
        return out


class DailyActiveUsers:
    """Distinct users seen since 00:00 UTC, in process, keeping only keyed hashes.

    Parameters
    ----------
    now : callable
        Returns an aware UTC ``datetime`` (default ``datetime.now(timezone.utc)``).
    """

    def __init__(self, now: Callable[[], _dt.datetime] | None = None) -> None:
        self._now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
        self._key = os.urandom(16)  # per process: the hashes are not linkable elsewhere
        self._day: _dt.date | None = None
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()

    def _roll(self) -> None:
        today = self._now().date()
        if today != self._day:
            self._day = today
            self._seen = set()

    def add(self, user_id: str) -> None:
        if not isinstance(user_id, str) or not user_id:
            raise TypeError(f"'user_id' must be a non-empty str, got {user_id!r} instead.")
        digest = hashlib.blake2b(user_id.encode(), key=self._key, digest_size=16).digest()
        with self._lock:
            self._roll()
            self._seen.add(digest)

    def count(self) -> int:
        with self._lock:
            self._roll()
            return len(self._seen)


class _SuccessRateCollector:
    """Custom collector exporting ``nacfauth_auth_success_rate{method}`` on scrape."""

    def __init__(self, tracker: SlidingSuccessRate) -> None:
        self._tracker = tracker

    def describe(self):
        return [GaugeMetricFamily(
            "nacfauth_auth_success_rate",
            "Share of calls that returned OK over the last 5 minutes, per RPC method",
            labels=["method"],
        )]

    def collect(self):
        fam = GaugeMetricFamily(
            "nacfauth_auth_success_rate",
            "Share of calls that returned OK over the last 5 minutes, per RPC method",
            labels=["method"],
        )
        for method, rate in sorted(self._tracker.rates().items()):
            fam.add_metric([method], rate)
        yield fam


# --- the metrics --------------------------------------------------------------------


class Metrics:
    """All nacf metrics, registered in one registry.

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry
        Where to register (default: the process-wide ``REGISTRY``; tests pass a fresh
        ``CollectorRegistry()``). Two instances on one registry collide, by design.
    success_window_s : float
        Window of ``nacfauth_auth_success_rate`` in seconds (default 300).
    clock : callable
        Time source of the success-rate window (default ``time.monotonic``).
    max_label_values : int
        Distinct values admitted per free-text label before mapping to ``"other"``.

    Attributes
    ----------
    auth_requests_total, auth_duration_seconds, ... : prometheus_client metrics
        One attribute per metric (name without the ``nacfauth_`` prefix and suffixes
        as in the table of ``METRICS.md``), for callers that need the raw object.
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        success_window_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_label_values: int = 64,
    ) -> None:
        check_int_range("max_label_values", max_label_values, 1)
        self.registry = registry
        r = registry
        # -- the guide's metrics (METRICS.md) --
        self.auth_requests_total = Counter(
            "nacfauth_auth_requests_total", "Total number of authentication service requests",
            ["method", "status", "user_type"], registry=r)
        self.auth_duration_seconds = Histogram(
            "nacfauth_auth_duration_seconds", "Request duration of the authentication service",
            ["method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.success_rate = SlidingSuccessRate(success_window_s, clock)
        r.register(_SuccessRateCollector(self.success_rate))
        self.signal_processing_duration_seconds = Histogram(
            "nacfauth_signal_processing_duration_seconds",
            "Neural signal processing duration (filter, artifacts, quality, embedding)",
            ["signal_type", "quality"], buckets=SIGNAL_PROCESSING_BUCKETS, registry=r)
        self.signal_quality_score = Histogram(
            "nacfauth_signal_quality_score", "Neural signal quality distribution (0 to 1)",
            ["signal_type"], buckets=QUALITY_BUCKETS, registry=r)
        self.model_accuracy = Gauge(
            "nacfauth_model_accuracy",
            "Balanced accuracy 1 - (FMR + FNMR) / 2 of the serving model, from its calibration",
            ["model_version"], registry=r)
        self.active_sessions = Gauge(
            "nacfauth_active_sessions", "Number of currently active sessions", registry=r)
        self.session_duration_seconds = Histogram(
            "nacfauth_session_duration_seconds", "Session duration distribution",
            buckets=SESSION_BUCKETS, registry=r)
        self.failed_auth_attempts_total = Counter(
            "nacfauth_failed_auth_attempts_total",
            "Total number of failed authentication attempts", ["reason"], registry=r)
        self.suspicious_activities_total = Counter(
            "nacfauth_suspicious_activities_total",
            "Total number of suspicious activities detected", ["activity_type", "severity"],
            registry=r)
        self.user_registrations_total = Counter(
            "nacfauth_user_registrations_total", "Total number of user registrations",
            ["registration_method", "status"], registry=r)
        self.daily_active_users = Gauge(
            "nacfauth_daily_active_users", "Number of distinct users seen since 00:00 UTC",
            registry=r)
        self._dau_tracker = DailyActiveUsers()
        self._dau_source: Callable[[], int] | None = None
        self._dau_cache: tuple[float, float | None] | None = None  # (time, value or failed)
        self._dau_ttl = 15.0
        self._dau_lock = threading.Lock()
        self._dau_reading: threading.Thread | None = None  # the source's read under way
        #: longest a scrape waits for the source's read before it exports the last value
        self.dau_wait_s = 1.0
        self.daily_active_users.set_function(self._daily_active_users_value)
        # -- beyond the guide --
        self.auth_decisions_total = Counter(
            "nacfauth_auth_decisions_total",
            "Biometric decisions of Authenticate/AuthenticateStream (accept or reject)",
            ["decision"], registry=r)
        self.kernel_duration_seconds = Histogram(
            "nacfauth_kernel_duration_seconds", "Duration of one compute-kernel call",
            ["kernel", "backend"], buckets=KERNEL_BUCKETS, registry=r)
        self.artifact_rejections_total = Counter(
            "nacfauth_artifact_rejections_total", "Epochs rejected as artifacts, by reason",
            ["reason"], registry=r)
        self.device_packets_total = Counter(
            "nacfauth_device_packets_total", "Headset packets read, by outcome",
            ["status"], registry=r)
        self.lockouts_total = Counter(
            "nacfauth_lockouts_total", "Users locked out after consecutive failures",
            registry=r)
        self.store_errors_total = Counter(
            "nacfauth_store_errors_total", "Errors raised by the template store",
            ["operation"], registry=r)
        self.component_up = Gauge(
            "nacfauth_component_up",
            "1 when the component's last health check passed, else 0", ["component"],
            registry=r)
        self.health_check_duration_seconds = Gauge(
            "nacfauth_health_check_duration_seconds",
            "Duration of the component's last health check", ["component"], registry=r)
        self.build_info = Gauge(
            "nacfauth_build_info", "Build information; the value is always 1",
            ["version", "kernel_backend", "model_version"], registry=r)
        self._build_lock = threading.Lock()
        # free-text label guards
        n = max_label_values
        self._method = _BoundedLabel("method", n)
        self._reason = _BoundedLabel("reason", n)
        self._signal_type = _BoundedLabel("signal_type", n)
        self._activity = _BoundedLabel("activity_type", n)
        self._reg_method = _BoundedLabel("registration_method", n)
        self._kernel = _BoundedLabel("kernel", n)
        self._backend = _BoundedLabel("backend", n)
        self._artifact = _BoundedLabel("reason", n)
        self._operation = _BoundedLabel("operation", n)
        self._component = _BoundedLabel("component", n)
        self._model_version = _BoundedLabel("model_version", n)
        self._device_last: dict[str, dict[str, int]] = {}  # by source name (dicts)
        self._device_objs: dict[int, dict[str, int]] = {}  # by counters object (readers)
        self._device_lock = threading.Lock()
        # (method, status, user_type) -> (counter child, histogram child, method label)
        self._rpc_children: dict[tuple, tuple] = {}

    # -- requests ------------------------------------------------------------------

    def observe_rpc(self, method: str, status_name: str, seconds: float,
                    user_type: str = "api_key") -> None:
        """Record one finished RPC.

        Parameters
        ----------
        method : str
            The RPC name, e.g. ``"Authenticate"`` (not the full path).
        status_name : str
            The ``grpc.StatusCode`` name it returned, e.g. ``"OK"``, ``"NOT_FOUND"``.
        seconds : float
            Wall time of the call, >= 0.
        user_type : str
            How the caller authenticated: one of :data:`USER_TYPES`.
        """
        key = (method, status_name, user_type)
        children = self._rpc_children.get(key)
        if children is None:
            m = self._method(method)
            check_option("status_name", status_name, GRPC_STATUS_NAMES)
            check_option("user_type", user_type, USER_TYPES)
            children = (self.auth_requests_total.labels(m, status_name, user_type),
                        self.auth_duration_seconds.labels(m, status_name), m)
            if len(self._rpc_children) < 4096:
                self._rpc_children[key] = children
        s = _seconds("seconds", seconds)
        children[0].inc()
        children[1].observe(s)
        self.success_rate.record(children[2], status_name == "OK")

    def record_decision(self, accepted: bool) -> None:
        """Count one biometric decision (``accept`` or ``reject``)."""
        self.auth_decisions_total.labels("accept" if accepted else "reject").inc()

    # -- signal --------------------------------------------------------------------

    def observe_signal(self, signal_type: str, seconds: float, quality_score: float) -> None:
        """Record the processing of one signal block.

        Parameters
        ----------
        signal_type : str
            What the signal was for: ``enroll``, ``authenticate``, ``identify``,
            ``stream`` or ``continuous`` (free text, bounded).
        seconds : float
            Processing wall time, >= 0.
        quality_score : float
            Its quality in [0, 1]; labels the duration good/fair/poor and feeds
            ``nacfauth_signal_quality_score``.
        """
        t = self._signal_type(signal_type)
        s = _seconds("seconds", seconds)
        q = float(quality_score)
        if not (0.0 <= q <= 1.0):
            raise ValueError(f"'quality_score' must be in [0, 1], got {quality_score!r} instead.")
        self.signal_processing_duration_seconds.labels(t, quality_bucket(q)).observe(s)
        self.signal_quality_score.labels(t).observe(q)

    def record_artifact_rejections(self, reasons) -> None:
        """Count rejected epochs by reason code, one increment per code: the service
        passes ``pipeline.reason_codes`` of ``Windows.reasons`` (``non_finite``,
        ``railed``, ``flat``, ``peak_to_peak``, ``jump``, ``low_quality``), never the
        reasons themselves, whose channel lists would make every combination a label."""
        for reason in reasons:
            if reason:
                self.artifact_rejections_total.labels(self._artifact(str(reason))).inc()

    @contextlib.contextmanager
    def time_kernel(self, kernel: str, backend: str) -> Iterator[None]:
        """Context manager observing ``nacfauth_kernel_duration_seconds{kernel,backend}``."""
        k, b = self._kernel(kernel), self._backend(backend)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.kernel_duration_seconds.labels(k, b).observe(time.perf_counter() - t0)

    def observe_kernel(self, kernel: str, backend: str, seconds: float) -> None:
        """Observe one kernel call that was timed elsewhere."""
        self.kernel_duration_seconds.labels(self._kernel(kernel), self._backend(backend)
                                            ).observe(_seconds("seconds", seconds))

    def record_device_packets(self, ok: int = 0, dropped: int = 0, corrupt: int = 0) -> None:
        """Add packet counts (deltas, not totals) by outcome."""
        for status, n in (("ok", ok), ("dropped", dropped), ("corrupt", corrupt)):
            n = check_int_range(status, n, 0)
            if n:
                self.device_packets_total.labels(status).inc(n)

    def observe_device_counters(self, source: str, counters) -> None:
        """Export a source's cumulative counters (``Source.counters`` of
        :mod:`nacf_core.hardware`, or its ``as_dict()``) as deltas since the last call.

        A counters object is one reader's: its deltas are since the last call with that
        same object, and a new object (a new reader, the port or file opened again) is
        counted from zero, whatever ``source`` says; nothing is kept for it once it is
        gone. A dict (a snapshot) is matched by ``source`` (e.g. the port or stream name;
        not a label). A counter that went down (the source was reopened) starts over from
        zero.
        """
        if not isinstance(source, str) or not source:
            raise TypeError(f"'source' must be a non-empty str, got {source!r} instead.")
        if isinstance(counters, dict):
            now, obj = counters, None
        else:
            now, obj = counters.as_dict(), counters
            try:
                weakref.ref(obj)
            except TypeError:  # cannot tell when it goes: matched by the name
                obj = None
        with self._device_lock:
            if obj is not None:
                table, key = self._device_objs, id(obj)
                if key not in table:
                    # the entry goes with the reader (a lock-free pop: it may run at any
                    # allocation, this thread's included)
                    weakref.finalize(obj, table.pop, key, None)
                    table[key] = {}
            else:
                table, key = self._device_last, source
            last = table.get(key, {})
            deltas = {}
            for status in PACKET_STATUSES:
                v = int(now.get(status, 0))
                prev = int(last.get(status, 0))
                deltas[status] = v - prev if v >= prev else v
            if obj is not None or key in table or len(table) < 256:
                table[key] = {k: int(now.get(k, 0)) for k in PACKET_STATUSES}
        self.record_device_packets(**deltas)

    # -- model, sessions, users ------------------------------------------------------

    def set_model_accuracy(self, model_version: str, accuracy: float) -> None:
        """Set the evaluated accuracy (in [0, 1]) of the serving model version."""
        a = float(accuracy)
        if not (0.0 <= a <= 1.0):
            raise ValueError(f"'accuracy' must be in [0, 1], got {accuracy!r} instead.")
        self.model_accuracy.labels(self._model_version(model_version)).set(a)

    def set_model_accuracy_from(self, model_version: str, calibration: dict,
                                n_windows: int | None = None) -> float:
        """Set ``nacfauth_model_accuracy`` from a model's calibration record.

        Parameters
        ----------
        model_version : str
            The label value (``Model.version``).
        calibration : dict
            ``Model.info["calibration"]``: ``{str(n_windows): {"fmr": ..., "fnmr": ...}}``.
        n_windows : int, optional
            Which entry (default: the smallest number of windows, a one-shot decision).

        Returns
        -------
        accuracy : float
            The balanced accuracy ``1 - (fmr + fnmr) / 2`` that was set.
        """
        if not isinstance(calibration, dict) or not calibration:
            raise ValueError("'calibration' must be a non-empty dict "
                             f"{{n_windows: {{'fmr', 'fnmr'}}}}, got {calibration!r} instead.")
        keys = sorted(calibration, key=lambda k: int(k))
        key = keys[0] if n_windows is None else str(n_windows)
        if key not in calibration:
            raise ValueError(f"Invalid value for the 'n_windows' parameter. Allowed values are "
                             f"{', '.join(keys)}, but got {n_windows!r} instead.")
        entry = calibration[key]
        try:
            fmr, fnmr = float(entry["fmr"]), float(entry["fnmr"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"calibration[{key!r}] must hold numbers 'fmr' and 'fnmr', "
                             f"got {entry!r} instead.") from None
        accuracy = 1.0 - (fmr + fnmr) / 2.0
        self.set_model_accuracy(model_version, accuracy)
        return accuracy

    def set_active_sessions(self, n: int) -> None:
        """Set the number of currently active sessions."""
        self.active_sessions.set(check_int_range("n", n, 0))

    def observe_session_duration(self, seconds: float) -> None:
        """Observe the length of a session that just ended."""
        self.session_duration_seconds.observe(_seconds("seconds", seconds))

    def record_registration(self, registration_method: str, status_name: str) -> None:
        """Count one enrollment: how (e.g. ``Enroll``, ``cli``) and the status name."""
        check_option("status_name", status_name, REGISTRATION_STATUSES)
        self.user_registrations_total.labels(self._reg_method(registration_method),
                                             status_name).inc()

    def track_active_user(self, user_id: str) -> None:
        """Note that ``user_id`` used the service today (in-process tracker)."""
        self._dau_tracker.add(user_id)

    def use_daily_active_users_from(self, source: Callable[[], int] | None,
                                    ttl_s: float = 15.0) -> None:
        """Read ``nacfauth_daily_active_users`` from ``source()`` (e.g. the store's stats).

        The value is cached for ``ttl_s`` seconds so a scrape does not hit the store
        every time. Once it is older, the next scrape starts one read of ``source()`` on
        a thread of its own (never two at a time) and waits for it at most
        :attr:`dau_wait_s` (1 s): a store that hangs must not hold ``/metrics`` past the
        scraper's timeout (every series, the store's health among them, would be lost
        and the replica look down); meanwhile the last value read is exported. If
        ``source`` raises, the in-process tracker's count is exported until the next
        read. ``None`` goes back to the in-process tracker.
        """
        with self._dau_lock:
            self._dau_source = source
            self._dau_ttl = check_finite_positive("ttl_s", ttl_s)
            self._dau_cache = None
            self._dau_reading = None  # a read of the previous source no longer counts

    def _read_daily_active_users(self, source: Callable[[], int]) -> None:
        """One read of ``source`` (on a thread of its own), kept unless the source was
        replaced meanwhile."""
        try:
            value: float | None = float(source())
        except Exception:  # the store is down: the tracker is the best we know
            self.store_errors_total.labels(self._operation("daily_active_users")).inc()
            value = None  # and do not ask again before the TTL
        with self._dau_lock:
            if self._dau_source is source:
                self._dau_cache = (time.monotonic(), value)
            if self._dau_reading is threading.current_thread():
                self._dau_reading = None

    def _daily_active_users_value(self) -> float:
        with self._dau_lock:
            source, cache, ttl = self._dau_source, self._dau_cache, self._dau_ttl
            if source is None:
                reading = None
            elif cache is not None and time.monotonic() - cache[0] < ttl:
                reading = None
            else:
                reading = self._dau_reading
                if reading is None:
                    reading = self._dau_reading = threading.Thread(
                        target=self._read_daily_active_users, args=(source,),
                        name="nacf-daily-active-users", daemon=True)
                    reading.start()
        if reading is not None:
            reading.join(self.dau_wait_s)
            with self._dau_lock:
                cache = self._dau_cache
        if source is not None and cache is not None and cache[1] is not None:
            return cache[1]
        return float(self._dau_tracker.count())

    # -- security ------------------------------------------------------------------

    def record_failed_auth(self, reason: str) -> None:
        """Count one failed authentication attempt (e.g. ``score_below_threshold``,
        ``presentation_attack``, ``poor_quality``, ``locked``, ``unknown_user``,
        ``device_rotated`` / ``template_replaced`` (an accept on credentials an admin
        changed while it ran: no session), and
        ``device_proof_<kind>`` for a refused device proof: ``missing``, ``malformed``,
        ``stale``, ``wrong``, ``replayed``, ``unknown_device``, ``device_mismatch``)."""
        self.failed_auth_attempts_total.labels(self._reason(reason)).inc()

    def record_suspicious(self, activity_type: str, severity: str) -> None:
        """Count one suspicious activity; ``severity`` is one of :data:`SEVERITIES`."""
        check_option("severity", severity, SEVERITIES)
        self.suspicious_activities_total.labels(self._activity(activity_type), severity).inc()

    def record_lockout(self) -> None:
        """Count one user lockout."""
        self.lockouts_total.inc()

    def record_store_error(self, operation: str) -> None:
        """Count one store error during ``operation`` (e.g. ``get_template``)."""
        self.store_errors_total.labels(self._operation(operation)).inc()

    # -- health, build ---------------------------------------------------------------

    def set_component_health(self, component: str, up: bool, seconds: float) -> None:
        """Record the outcome and duration of a component's health check."""
        c = self._component(component)
        self.component_up.labels(c).set(1 if up else 0)
        self.health_check_duration_seconds.labels(c).set(_seconds("seconds", seconds))

    def set_build_info(self, version: str, kernel_backend: str, model_version: str) -> None:
        """Export ``nacfauth_build_info{version,kernel_backend,model_version} 1`` (one series)."""
        for name, v in (("version", version), ("kernel_backend", kernel_backend),
                        ("model_version", model_version)):
            if not isinstance(v, str) or not v:
                raise TypeError(f"{name!r} must be a non-empty str, got {v!r} instead.")
        with self._build_lock:
            self.build_info.clear()
            self.build_info.labels(version, kernel_backend, model_version).set(1)

    # -- exposition ------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


class InstrumentedKernels:
    """A kernel backend whose public functions time themselves.

    Wraps the module ``nacf_core.kernels.backend(name)`` returns; every call of one of
    its public functions (``sosfilt``, ``detect_artifacts``, ``quality``,
    ``cosine_scores``, ``top_k``, ...) is observed in
    ``nacfauth_kernel_duration_seconds{kernel=<function name>, backend}``. Everything
    else (constants, classes) passes through. Kernels themselves stay free of metrics
    (STYLE point 1); the caller that dispatches to them decides to instrument.

    Parameters
    ----------
    module : module
        The backend module, e.g. ``nacf_core.kernels.backend("cython")``.
    backend : str
        The ``backend`` label, e.g. ``"cython"``.
    metrics : Metrics, optional
        Default: the process-wide :data:`METRICS`.

    Examples
    --------
    >>> from nacf_core import kernels
    >>> k = InstrumentedKernels(kernels.backend("reference"), "reference")
    >>> k.top_k  # doctest: +ELLIPSIS
    <function top_k at ...>
    """

    def __init__(self, module, backend: str, metrics: Metrics | None = None) -> None:
        if not isinstance(backend, str) or not backend:
            raise TypeError(f"'backend' must be a non-empty str, got {backend!r} instead.")
        self._module = module
        self._backend = backend
        self._metrics = metrics

    def __getattr__(self, name: str):
        attr = getattr(self._module, name)
        if name.startswith("_") or not callable(attr) or isinstance(attr, type):
            return attr
        metrics = self._metrics if self._metrics is not None else METRICS
        child = metrics.kernel_duration_seconds.labels(metrics._kernel(name),
                                                       metrics._backend(self._backend))
        perf = time.perf_counter

        def timed(*args, **kwargs):
            t0 = perf()
            try:
                return attr(*args, **kwargs)
            finally:
                child.observe(perf() - t0)

        timed.__name__ = getattr(attr, "__name__", name)
        timed.__qualname__ = getattr(attr, "__qualname__", name)
        timed.__doc__ = getattr(attr, "__doc__", None)
        timed.__wrapped__ = attr
        self.__dict__[name] = timed  # later look-ups skip __getattr__
        return timed

    def __repr__(self) -> str:
        return f"InstrumentedKernels({self._module.__name__!r}, backend={self._backend!r})"


def _seconds(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name!r} must be a finite number >= 0, got {value!r} instead.")
    return v


#: The process-wide instance, registered in ``prometheus_client.REGISTRY``.
METRICS = Metrics(REGISTRY)
