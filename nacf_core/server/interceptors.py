"""Cross-cutting RPC concerns, in one server interceptor.

For every call of a method outside ``grpc.health.v1`` it:

1. authenticates the caller: the ``x-api-key`` metadata (keys are compared by their
   SHA-256, so the lookup does not leak key bytes through timing), or, while no key is
   configured, a verified client certificate over mTLS (carries every scope), or
   nothing in open-loopback mode; otherwise ``UNAUTHENTICATED``, so also for a call
   that carries ``x-api-key`` more than once (the same key or not: exactly one is
   expected);
2. checks the key's scope for the method (:data:`METHOD_SCOPES`), else
   ``PERMISSION_DENIED``;
3. takes a token from the caller's bucket (shared in the store), else
   ``RESOURCE_EXHAUSTED``;
4. records ``nacfauth_auth_requests_total`` / ``_duration_seconds`` / success rate
   with the status the call really ended with, its duration from its arrival at the
   server (the wait for a worker thread or the authentication thread included); a
   request gRPC refused as it read it (over ``max_message_bytes``) is
   ``RESOURCE_EXHAUSTED``, as gRPC answered its client, a streamed one too
   (:func:`read_refused`).

Steps 1 and 2 come before a unary call's request is read (a client without a valid
key that never sends it must not hold a worker thread). A call refused in steps 1-3
is logged as a ``security_event`` (``missing_api_key``, ``unknown_api_key``,
``repeated_api_key``, ``insufficient_scope``, ``rate_limited``) with the method, the
caller's address and, once its key is known, its client id (never the key).

The ``grpc.health.v1`` calls (no key, no check) run on threads of their own
(:data:`HEALTH_THREADS`) and wait :data:`HEALTH_REQUEST_WAIT_S` at most for their
request: anyone can open them. At most :data:`HEALTH_MAX_CALLS` are admitted at once
(:class:`_HealthPool`), each holding a slot of gRPC's concurrency bound; one beyond them
is answered ``RESOURCE_EXHAUSTED`` at once, logged (``health_busy``, at most a line
every 10 s).

Request bytes that are not a valid protobuf message of the method's request type
(corrupt wire format, a string field that is not UTF-8: what a client other than the
generated stubs can send) get ``INVALID_ARGUMENT`` saying so, after steps 1-3, for
every method including the health service (grpcio itself would answer ``INTERNAL``).

With an in-process store (SQLite), unary ``Authenticate`` calls run all of the above
and the handler on one dedicated thread, one at a time (the service's gate held):
under the GIL more would not run in parallel, and the pool threads would hand it back
and forth.

A request-streaming call (``AuthenticateStream``, ``ContinuousAuthenticate``,
reflection) holds its thread as long as it is open, so it runs on a
:class:`StreamPool` of ``max_streams`` threads, never on the unary calls' workers; one
that comes with ``max_streams`` streams open is answered ``RESOURCE_EXHAUSTED`` at once
(before any check), counted as such and logged (``streams_busy``, at most a line every
10 s). So is one whose client (known once step 1 has passed) holds
``max_streams_per_client`` open streams already (``client_streams_busy``, with its client
id, at most a line per client every 10 s): one key cannot take every stream. Nothing of
this touches a unary call.

A unary call waits for its request on a worker thread of the server's pool (grpcio reads
it there, as long as the call lasts): a client with a valid key that sent a call's headers
and stalled its request held that worker for as long. So once step 2 has passed, the
wait for a unary call's request is registered under its client (:class:`UploadSlots`)
until the request has come or the read has ended without it (cancelled, its deadline
passed, gRPC refused it), before any further work. A client has at most
``max_uploads_per_client`` such waits: a call beyond them waits for one of them to end,
:data:`UPLOAD_WAIT_S` at most, and none at all once the oldest has lasted that long (a
stalled request), then is answered ``RESOURCE_EXHAUSTED``, before its request is read,
counted as such and logged (``client_uploads_busy``, with its client id, at most a line
per client every 10 s). One key's holder thus cannot hold every worker, while a client's
many calls whose requests are all there (a gateway's, a benchmark's) are not refused for
the moments their reads take under load (milliseconds); what a call does once its
request has come is bounded by the rate limit.

The concurrency bound itself is gRPC's ``maximum_concurrent_rpcs`` (``max_concurrent_rpcs``
+ ``max_streams``, see ``app.py``): a call beyond it is answered ``RESOURCE_EXHAUSTED``
at once, before any worker thread is taken, instead of waiting in an unbounded queue.
gRPC asks the interceptor for the call's handler just before it refuses it, so such a
call is still counted in
``nacfauth_auth_requests_total`` as ``RESOURCE_EXHAUSTED`` and logged (``grpc_busy``,
at most a line every 10 s) once :meth:`AuthInterceptor.watch_concurrency` is given the
server (see its docstring).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import grpc

from nacf_core.errors import InvalidArgument, NacfError, PermissionDenied, Unauthenticated
from nacf_core.service import CALLER_USER_AGENT, MAX_USER_AGENT, peer_fields

__all__ = ["CALLER", "ENDED_DETAILS", "METHOD_SCOPES", "UPLOAD_WAIT_S", "AuthInterceptor",
           "StreamPool", "UploadSlots",
           "call_active", "call_started",
           "client_identity", "deadline_slack", "ended_status", "log_refusal",
           "read_refused", "timeout_granularity"]

log = logging.getLogger("nacf.server")

_SERVICE = "/nacf.v1.AuthService/"
_HEALTH = "/grpc.health.v1.Health/"
_REFLECTION = ("/grpc.reflection.v1alpha.ServerReflection/",
               "/grpc.reflection.v1.ServerReflection/")

#: Scope each RPC needs.  Reflection needs any valid key; health needs none.
METHOD_SCOPES: dict[str, str] = {
    "Authenticate": "authenticate",
    "AuthenticateStream": "authenticate",
    "ContinuousAuthenticate": "authenticate",
    "Identify": "authenticate",
    "ValidateSession": "authenticate",
    "EndSession": "authenticate",
    "Enroll": "enroll",
    "RegisterDevice": "enroll",
    "GetModel": "enroll",
    "GetUser": "admin",
    "DeleteUser": "admin",
    "UnlockUser": "admin",
    "ListUsers": "admin",
    "GetStats": "admin",
    "EndUserSessions": "admin",
}


#: Who makes the unary call being served: ``(client_id, scopes)``, set by the interceptor
#: around the handler; ``None`` where no interceptor is in the path (the servicer alone,
#: in tests), which then restricts nothing. What a request may do beyond its method's
#: scope (``Enroll`` with ``update``, ``RegisterDevice`` with ``rotate`` or for a user
#: who has a device: ``admin``) is decided from it by the servicer.
CALLER: contextvars.ContextVar[tuple[str, frozenset[str]] | None] = contextvars.ContextVar(
    "nacf_caller", default=None)


#: The slack of a call nacf did not see start (:func:`call_started`): how much later than
#: its client's a call's deadline may pass at the server, the same for every call.
DEADLINE_SLACK_S = 0.2

#: What :func:`deadline_slack` allows beyond the timeout's rounding: the client's deadline
#: rounded up to a millisecond, and the call's headers reaching the server later than its
#: cancel does (the server counts its deadline from their arrival; a busy machine delays
#: the one more than the other). About 1 900 calls abandoned at their deadline on a 2-core
#: machine (up to 100 at a time, idle or with the cores oversubscribed) had, when they
#: ended at the server, mostly less than the rounding left, and at most the rounding +
#: 87 ms. A real cancel this close to the deadline is counted DEADLINE_EXCEEDED: the
#: smaller error of the two, as a deadline missed under load is what the error-rate alert
#: is for.
DEADLINE_TRANSIT_S = 0.1

_clock = time.monotonic  # the clock of call_started and ended_status (tests replace it)


def timeout_granularity(timeout_s: float) -> float:
    """The step to which gRPC rounds up a timeout of ``timeout_s`` seconds when it sends
    it (the ``grpc-timeout`` header, C-core's ``Timeout::FromMillis``: three significant
    figures): 1 ms below 1 s, 10 ms below 10 s, 100 ms below 100 s, 1 s below 1000 s,
    10 s and 100 s up to 10**5 s, then 10 and 100 minutes, then hours."""
    for limit, step in ((1.0, 0.001), (10.0, 0.01), (100.0, 0.1), (1e3, 1.0), (1e4, 10.0),
                        (1e5, 100.0), (6e5, 600.0), (6e6, 6000.0)):
        if timeout_s < limit:
            return step
    return 3600.0


def deadline_slack(timeout_s: float) -> float:
    """How much of a call's deadline may be left at the server when its client's passes:
    the rounding of its timeout (:func:`timeout_granularity`, for a timeout up to
    :data:`DEADLINE_TRANSIT_S` longer than the server's view of it) plus
    :data:`DEADLINE_TRANSIT_S`."""
    return timeout_granularity(timeout_s + DEADLINE_TRANSIT_S) + DEADLINE_TRANSIT_S


class _CallTimes:
    """A call's deadline, its timeout as the server saw it, and when it ended
    (:data:`_clock` times; ``ended`` ``None`` until gRPC says)."""

    __slots__ = ("deadline", "ended", "timeout")

    def __init__(self, deadline: float, timeout: float) -> None:
        self.deadline, self.timeout, self.ended = deadline, timeout, None

    def end(self) -> None:
        if self.ended is None:
            self.ended = _clock()


#: The times of the calls being served, by their context; an entry goes with its context
#: (it holds no reference to it: neither the entry nor the callback gRPC keeps).
_CALLS: weakref.WeakKeyDictionary[Any, _CallTimes] = weakref.WeakKeyDictionary()


def call_started(context: grpc.ServicerContext, arrived: float | None = None) -> None:
    """Remember the call's deadline and timeout for :func:`ended_status`, once per call
    (a later call for the same context changes nothing), and have gRPC say when it ends.
    ``arrived``: when the call reached the server (a :data:`_clock` time), if known; it may
    have waited for a worker thread since, and its timeout was that much longer. Nothing
    is kept for a call without a deadline, nor for a context that cannot be weakly
    referenced."""
    try:
        if context in _CALLS:
            return
        rem = context.time_remaining()
    except Exception:  # noqa: BLE001 - not weakly referenceable; a context without a clock
        return
    if rem is None:
        return
    now = _clock()
    start = arrived if arrived is not None and arrived <= now else now
    times = _CallTimes(now + rem, now + rem - start)
    try:
        _CALLS[context] = times
    except TypeError:
        return
    try:
        if not context.add_callback(times.end):
            times.end()  # it has ended already
    except Exception:  # noqa: BLE001 - grpc_testing contexts
        pass


def ended_status(context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status of a call that ended (or is dropped) before its handler answered:
    ``RESOURCE_EXHAUSTED`` when gRPC refused one of its streamed requests as it read it
    (:func:`read_refused`: what gRPC answered its client), else ``DEADLINE_EXCEEDED`` at
    its deadline, else ``CANCELLED`` (the client went away).

    gRPC sends the timeout rounded up, so the client's deadline passes first and the
    client cancels the call while the server's deadline is still ahead. "At its deadline"
    is therefore: for a call :func:`call_started` saw, with at most
    :func:`deadline_slack` of its timeout (as the server received it) left when the call
    ended (when gRPC said it ended, else now); for another (a context nacf did not see
    start), with at most :data:`DEADLINE_SLACK_S` left now."""
    try:
        times = _CALLS.get(context)
        if context in _REFUSED_READS:
            return grpc.StatusCode.RESOURCE_EXHAUSTED
    except TypeError:
        times = None
    if times is None:
        rem = context.time_remaining()
        return (grpc.StatusCode.DEADLINE_EXCEEDED if rem is not None and rem <= DEADLINE_SLACK_S
                else grpc.StatusCode.CANCELLED)
    end = times.ended if times.ended is not None else _clock()
    return (grpc.StatusCode.DEADLINE_EXCEEDED
            if times.deadline - end <= deadline_slack(times.timeout)
            else grpc.StatusCode.CANCELLED)


#: What the interceptor takes for a call's key when its metadata holds ``x-api-key``
#: more than once (the same key or not): no configured key (it holds a NUL, which no key
#: and no gRPC metadata value can), so the call is refused as :meth:`AuthInterceptor.identify`
#: says. nacf does not pick one of the values: something in front of it (a proxy, a
#: gateway that checks keys too) may have read another.
_REPEATED_KEY = "\x00x-api-key repeated"


#: The contexts of the client streams one of whose requests gRPC refused as it read it
#: (:func:`_watch_reads`); an entry goes with its context.
_REFUSED_READS: weakref.WeakSet[Any] = weakref.WeakSet()


def read_refused(context: grpc.ServicerContext) -> bool:
    """Whether gRPC refused a request of this client stream as it read it: one over
    ``max_message_bytes``, for which gRPC ends the call ``RESOURCE_EXHAUSTED`` (its client
    sees that status) and grpcio shows the handler only the end of the stream, or a
    failed read as after a cancel."""
    try:
        return context in _REFUSED_READS
    except TypeError:  # not weakly referenceable
        return False


class _ReadRefused(grpc.RpcError):
    """What a client stream's requests raise where gRPC refused one as it read it
    (:func:`_watch_reads`): the stream failed, it did not end."""

    def __str__(self) -> str:
        return ("a request of the stream was refused as gRPC read it (larger than the "
                "server's maximum message size, max_message_bytes).")


class _WatchedCall:
    """grpcio's call object of one client stream, seeing the outcome of each read of a
    request: a read that fails (gRPC refused the message) marks the call's context in
    :data:`_REFUSED_READS` before grpcio learns of it. Everything else is the call's."""

    __slots__ = ("_call", "_context")

    def __init__(self, call: Any, context: grpc.ServicerContext) -> None:
        self._call, self._context = call, context

    def start_server_batch(self, operations: Any, tag: Callable) -> Any:
        context = self._context

        def watched(event: Any) -> Any:
            if not event.success:
                _REFUSED_READS.add(context)
            return tag(event)

        return self._call.start_server_batch(operations, watched)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


def _watch_reads(it: Any, context: grpc.ServicerContext) -> bool:
    """Have the reads of the client stream ``it`` (grpcio's request iterator) noted when
    gRPC refuses one (:func:`read_refused`). grpcio starts each read through the
    iterator's call object (``_call``, ``start_server_batch``) with a callback it gives
    the read's outcome, then drops it: a message over ``max_message_bytes`` fails the read
    (what a cancel or a deadline does not; its client is answered RESOURCE_EXHAUSTED by
    gRPC), and the handler saw the stream end or fail as if its client had cancelled it.
    These are grpcio's internals (``grpc._server._RequestIterator``, read in grpcio 1.85);
    without them nothing is watched and such a call is counted as the handler ends it.
    A unary call's request is read the same way (:func:`_request_refused`). Returns
    whether the reads are watched."""
    call = getattr(it, "_call", None)
    try:
        weakref.ref(context)
    except TypeError:  # not weakly referenceable (grpc_testing)
        return False
    if isinstance(call, _WatchedCall):
        return True
    if call is not None and callable(getattr(call, "start_server_batch", None)):
        it._call = _WatchedCall(call, context)
        return True
    return False


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


#: the longest client identity taken whole (the rate limit's bucket id holds 256)
_IDENTITY_MAX = 128


def client_identity(context: grpc.ServicerContext) -> str | None:
    """Common name, else first subject alternative name, of a verified client
    certificate, else the SHA-256 of the certificate (one with neither); ``None``
    without one. gRPC gives a certificate without a common name an empty one. A name
    longer than :data:`_IDENTITY_MAX` (a DNS name can be 253 characters) keeps its
    first 96 characters and a digest of the whole, so that it stays one client."""
    try:
        ac = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - grpc_testing contexts
        return None
    for k in ("x509_common_name", "x509_subject_alternative_name", "x509_pem_cert"):
        for v in ac.get(k) or ():
            name = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            if not name.strip():
                continue
            if k == "x509_pem_cert":
                return "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:32]
            if len(name) > _IDENTITY_MAX:
                name = name[:96] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
            return name
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """API-key / mTLS authentication, scopes, rate limit and RPC metrics.

    Parameters
    ----------
    api_keys : mapping of str to frozenset of str
        ``{key: scopes}``.
    service : nacf_core.service.AuthService, optional
        Gives ``check_rate_limit(client_id)``; ``None`` disables rate limiting.
    metrics : nacf_core.metrics.Metrics, optional
    open_mode : bool
        No key required (only ever enabled on loopback, see ``app.py``).
    mtls : bool
        A verified client certificate authenticates the caller.
    streams : StreamPool, optional
        The threads of the request-streaming calls (at most ``max_streams``, each on a
        thread of its own, at most ``max_per_client`` of one client); a stream that comes
        when they are all taken, or its client's are, is refused ``RESOURCE_EXHAUSTED`` at
        once. ``None``: streams run on the server's pool, unbounded per client.
    uploads_per_client : int, optional
        How many unary calls of one client may wait for their request on a worker
        thread at once (:class:`UploadSlots`); ``None``: unbounded.
    """

    def __init__(self, api_keys: Mapping[str, frozenset[str]], service: Any = None,
                 metrics: Any = None, *, open_mode: bool = False, mtls: bool = False,
                 streams: StreamPool | None = None,
                 uploads_per_client: int | None = None) -> None:
        self.set_api_keys(api_keys)
        self.streams = streams
        self._refusals = _RefusalLog()  # the log lines of calls refused at admission
        #: the unary calls of each client waiting for their request (None: unbounded)
        self.uploads = (UploadSlots(uploads_per_client) if uploads_per_client is not None
                        else None)
        self.service = service
        self.metrics = metrics
        self.open_mode = open_mode
        self.mtls = mtls
        # with an in-process store the service serialises unary authentications; they
        # then run on one dedicated thread, which goes from one queued call to the next
        # without a wake-up on the critical path (A/B at 8 clients: -6 % server CPU per
        # call, +10 % throughput against the same gate taken by each pool thread)
        self._grpc_state: Any = None  # see watch_concurrency
        self._gate = getattr(service, "authenticate_gate", None)
        self._engine = (futures.ThreadPoolExecutor(1, thread_name_prefix="nacf-authenticate")
                        if self._gate is not None else None)
        # grpc.health.v1 needs no key: its calls run here, never on the workers, and wait
        # HEALTH_REQUEST_WAIT_S at most for their request (see _health_handler)
        self._health_pool = _HealthPool(HEALTH_THREADS, HEALTH_MAX_CALLS)

    def set_api_keys(self, api_keys: Mapping[str, frozenset[str]]) -> None:
        """Accept exactly these keys from the next call on (one reference swap: a call
        sees the old map or the new one, never a mix)."""
        self._keys = {_key_hash(k): (f"key-{_key_hash(k)[:8]}", frozenset(s))
                      for k, s in api_keys.items()}

    def watch_concurrency(self, server: grpc.Server) -> bool:
        """Count and log the calls ``server`` refuses at its ``maximum_concurrent_rpcs``.

        grpcio refuses them without running any handler, so nothing of nacf's would see
        them: an overloaded server would look idle to the error-rate alert. It does call
        the interceptor for the call's handler first, on its polling thread with its
        server lock held, right after deciding whether the calls in flight
        (``active_rpc_count``) are at the bound; :meth:`intercept_service` reads the same
        two numbers then, which are grpcio's internals (``grpc._server``; read in
        grpcio 1.85). Returns whether they could be found; if not (another grpcio), the
        refusals go uncounted and ``app.py`` says so at start."""
        state = getattr(server, "_state", None)
        ok = (isinstance(getattr(state, "active_rpc_count", None), int)
              and hasattr(state, "maximum_concurrent_rpcs"))
        self._grpc_state = state if ok else None
        return ok

    def _at_concurrency_bound(self) -> int | None:
        """The bound, when gRPC is about to refuse the call asked for (see
        :meth:`watch_concurrency`), else ``None``."""
        st = self._grpc_state
        if st is None:
            return None
        bound = st.maximum_concurrent_rpcs
        return bound if bound is not None and st.active_rpc_count >= bound else None

    def _count_busy(self, method: str, key: str | None, bound: int) -> None:
        """Count and log a call gRPC refuses at its concurrency bound. The caller is not
        authenticated (no handler runs): its ``user_type`` is what its key or transport
        says (with mTLS on, the handshake verified a client certificate)."""
        if key:
            user_type = "api_key" if _key_hash(key) in self._keys else "anonymous"
        else:
            user_type = ("mtls" if self.mtls and not self._keys else "open" if self.open_mode
                         else "anonymous")
        if self.metrics is not None:
            self._observe(method, "RESOURCE_EXHAUSTED", 0.0, user_type)
            self._unhandled(method, "RESOURCE_EXHAUSTED")
        suppressed = self._refusals.admit("grpc_busy", "")
        if suppressed is not None:
            # written on a thread of its own (one every 10 s at most): gRPC's polling
            # thread holds the server's lock here, and a log write that blocks (a full
            # stderr pipe) would stall every call
            streams = self.streams.max_streams if self.streams is not None else 0
            threading.Thread(target=log.warning, name="nacf-grpc-busy-log", daemon=True, args=(
                "%s refused with RESOURCE_EXHAUSTED: %d calls in flight, the bound "
                "(--max-concurrent-rpcs%s)", method, bound,
                " + --max-streams" if streams else ""), kwargs={"extra": {
                    "event_type": "grpc_busy", "method": method,
                    "status": "RESOURCE_EXHAUSTED", "max_concurrent_rpcs": bound - streams,
                    **({"max_streams": streams} if streams else {}),
                    **({"suppressed": suppressed} if suppressed else {})}}).start()

    def close(self) -> None:
        """Stop the authentication and health threads (after the server has drained)."""
        if self._engine is not None:
            self._engine.shutdown(wait=True)
        self._health_pool.shutdown(wait=True)

    @property
    def stream_idle_s(self) -> float | None:
        """How long a stream may send nothing (the service's ``signal_loss_s``); ``None``
        without a service."""
        loss = getattr(getattr(self.service, "config", None), "signal_loss_s", None)
        return float(loss) if loss is not None else None

    def refuse_stream(self, context: grpc.ServicerContext, method: str, key: str | None,
                      is_reflection: bool, t0: float) -> None:
        """Refuse a stream that came while ``max_streams`` streams were open: counted
        ``RESOURCE_EXHAUSTED`` (reflection is not counted), logged (``streams_busy``, at
        most a line every 10 s), aborted. The caller is not authenticated (as at gRPC's
        concurrency bound): its ``user_type`` is what its key or transport says."""
        bound = self.streams.max_streams
        if not is_reflection and self.metrics is not None:
            self._observe(method, "RESOURCE_EXHAUSTED", time.perf_counter() - t0,
                          self.user_type_of(context, key))
        suppressed = self._refusals.admit("streams_busy", "")
        if suppressed is not None:
            log.warning("%s refused with RESOURCE_EXHAUSTED: %d streams open, the bound "
                        "(--max-streams)", method, bound, extra={
                            "event_type": "streams_busy", "method": method,
                            "status": "RESOURCE_EXHAUSTED", "max_streams": bound,
                            **({"suppressed": suppressed} if suppressed else {})})
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"too many open streams: this server serves at most {bound} at once "
                      f"(option max_streams, --max-streams); retry later.")

    def refuse_health(self, context: grpc.ServicerContext, method: str) -> None:
        """Refuse a grpc.health.v1 call that came with :data:`HEALTH_MAX_CALLS` of them
        admitted: logged (``health_busy``, at most a line every 10 s), aborted
        ``RESOURCE_EXHAUSTED``; not counted in the RPC metrics (no health call is)."""
        bound = self._health_pool.max_calls
        suppressed = self._refusals.admit("health_busy", "")
        if suppressed is not None:
            log.warning("grpc.health.v1 %s refused with RESOURCE_EXHAUSTED: %d health calls "
                        "admitted, the bound", method, bound, extra={
                            "event_type": "health_busy", "method": method,
                            "status": "RESOURCE_EXHAUSTED", "max_health_calls": bound,
                            **peer_fields(_peer_of(context)),
                            **({"suppressed": suppressed} if suppressed else {})})
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"too many grpc.health.v1 calls at once: this server serves at most "
                      f"{bound} at once; retry later.")

    def claim_stream(self, context: grpc.ServicerContext, method: str,
                     client_id: str) -> None:
        """Take one of ``client_id``'s stream slots for this stream (on its thread, its
        caller authenticated; see :meth:`StreamPool.claim`), or refuse it: a client that
        holds ``max_streams_per_client`` open streams gets ``RESOURCE_EXHAUSTED`` at once,
        counted as such by the call's guard (reflection is not counted) and logged
        (``client_streams_busy``, at most a line per client every 10 s)."""
        pool = self.streams
        if pool.claim(client_id):
            return
        bound = pool.max_per_client
        self._refuse_busy_client(
            context, method, client_id, "client_streams_busy", "max_streams_per_client",
            bound, f"holds {bound} streams open",
            f"too many open streams for this client: a client holds at most {bound} at "
            f"once (option max_streams_per_client, --max-streams-per-client); retry once "
            f"one of its streams has ended.")

    def claim_upload(self, context: grpc.ServicerContext, method: str,
                     client_id: str) -> bool:
        """Register the wait of this unary call's worker for its request under
        ``client_id`` (:meth:`UploadSlots.start`; end it with :meth:`release_upload`), or
        refuse the call: a client with ``max_uploads_per_client`` calls waiting for their
        requests (for :data:`UPLOAD_WAIT_S`, or stalled) gets ``RESOURCE_EXHAUSTED``
        (counted by the caller), logged (``client_uploads_busy``, at most a line per
        client every 10 s). Returns whether the wait was registered (``False``:
        unbounded, nothing to end)."""
        slots = self.uploads
        if slots is None:
            return False
        if slots.start(client_id, context):
            return True
        bound = slots.bound
        self._refuse_busy_client(
            context, method, client_id, "client_uploads_busy", "max_uploads_per_client",
            bound, f"has {bound} calls waiting for their request",
            f"too many calls of this client waiting for their request: a client has at "
            f"most {bound} at once (option max_uploads_per_client, --max-uploads-per-client)"
            f"; finish sending their requests, or retry once one of those calls has ended.")
        return False  # not reached: abort raises

    def _refuse_busy_client(self, context: grpc.ServicerContext, method: str,
                            client_id: str, event: str, option: str, bound: int,
                            holds: str, details: str) -> None:
        """Abort a call of a client at its per-client ``option`` bound with
        ``RESOURCE_EXHAUSTED`` (``details``), logged as ``event`` at most a line per
        client every 10 s (``holds``: what the client holds, for the log line)."""
        suppressed = self._refusals.admit(event, client_id)
        if suppressed is not None:
            log.warning("%s refused with RESOURCE_EXHAUSTED: client %s %s, its bound "
                        "(--%s)", method, client_id, holds, option.replace("_", "-"),
                        extra={"event_type": event, "method": method,
                               "client_id": client_id, "status": "RESOURCE_EXHAUSTED",
                               option: bound, **peer_fields(_peer_of(context)),
                               **({"suppressed": suppressed} if suppressed else {})})
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    def release_upload(self, client_id: str, context: grpc.ServicerContext) -> None:
        """End the wait :meth:`claim_upload` registered."""
        self.uploads.end(client_id, context)

    # ------------------------------------------------------------------------------
    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        arrived = _clock()  # gRPC asks as the call arrives, before it waits for a worker
        # the start of the call's duration in the RPC metrics: what its client waits for,
        # the wait for a worker thread and for the authentication thread included
        t_arrived = time.perf_counter()
        handler = continuation(details)
        method_path = details.method or ""
        if handler is None:
            return handler
        if method_path.startswith(_HEALTH):
            name = method_path.rsplit("/", 1)[-1]
            if self._health_pool.full():  # its count is this thread's: see _HealthPool
                return _refusing(handler, lambda it, ctx: self.refuse_health(ctx, name))
            return _health_handler(handler, name, self._health_pool)
        method = method_path.rsplit("/", 1)[-1]
        is_reflection = method_path.startswith(_REFLECTION)
        metadata = details.invocation_metadata or ()
        key = None
        ua = ""  # the client's user-agent, for the log lines naming the caller
        for k, v in metadata:
            if k == "x-api-key":
                if key is not None:  # judged on none of them (see identify)
                    key = _REPEATED_KEY
                    break
                key = v if isinstance(v, str) else v.decode("utf-8", "replace")
            elif k == "user-agent":
                ua = (v if isinstance(v, str) else v.decode("utf-8", "replace")
                      )[:MAX_USER_AGENT]
        if not is_reflection and (bound := self._at_concurrency_bound()) is not None:
            # gRPC refuses this call as soon as this returns (see watch_concurrency)
            self._count_busy(method, key, bound)
        return _wrap(handler, self, method, key, is_reflection, arrived, t_arrived, ua)

    # ------------------------------------------------------------------------------
    def identify(self, context: grpc.ServicerContext, key: str | None, method: str = ""
                 ) -> tuple[str, str, frozenset[str]]:
        """Who calls: ``(client_id, user_type, scopes)``, or abort ``UNAUTHENTICATED``."""
        if key:
            entry = self._keys.get(_key_hash(key))
            if entry is None:
                if key is _REPEATED_KEY:
                    kind, why = "repeated_api_key", ("x-api-key given more than once: "
                                                     "exactly one x-api-key is expected.")
                else:
                    kind, why = "unknown_api_key", ("the x-api-key metadata holds an "
                                                    "unknown API key.")
                _refuse(self._refusals, context, method, kind, "medium",
                        grpc.StatusCode.UNAUTHENTICATED, why, metrics=self.metrics)
            client_id, scopes = entry
            user_type = "api_key"
        elif self.mtls and not self._keys and (cn := client_identity(context)):
            # a certificate alone carries every scope only while no key is configured:
            # every mTLS client holds one, so it would void the scopes of the keys
            client_id, scopes, user_type = f"cert-{cn}", frozenset(
                ("authenticate", "enroll", "admin")), "mtls"
        elif self.open_mode:
            peer = context.peer() or ""  # each address its own bucket: peer-127.0.0.1
            client_id, user_type = f"peer-{peer_fields(peer).get('ip_address') or peer}", "open"
            scopes = frozenset(("authenticate", "enroll", "admin"))
        else:
            _refuse(self._refusals, context, method, "missing_api_key", "low",
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing API key: send it in the x-api-key metadata"
                    + ((" (a client certificate alone admits only while no API key is "
                        "configured)" if self._keys else " (or use a client certificate)")
                       if self.mtls else "") + ".")
        return client_id, user_type, scopes

    def admission_check(self, key: str | None, method: str
                        ) -> Callable[[grpc.ServicerContext], None]:
        """What an open stream of ``method`` admitted with ``key`` calls at each of its
        messages: raises ``Unauthenticated`` once the keys reloaded since (SIGHUP) no
        longer hold its key (or, admitted without a key, once keys are required), and
        ``PermissionDenied`` once its key lost the method's scope, logged as a
        ``security_event`` (``revoked_api_key``, with its client id); a dict lookup per
        message, the key's digest taken once here."""
        h = _key_hash(key) if key else None
        need = METHOD_SCOPES.get(method)

        def check(ctx: grpc.ServicerContext) -> None:
            try:
                verify()
            except NacfError as e:
                count_suspicious(self.metrics, "revoked_api_key", "medium")
                log_refusal(ctx, method, "revoked_api_key", "medium",
                            grpc.StatusCode[e.code], f"key-{h[:8]}" if h else None)
                raise

        def verify() -> None:
            keys = self._keys
            if h is None:
                if self.open_mode or (self.mtls and not keys):
                    return
                why = ("API keys are required since the keys were reloaded: this stream, "
                       "opened without one, is ended.")
            else:
                entry = keys.get(h)
                if entry is not None and need in entry[1]:
                    return
                if entry is not None:
                    raise PermissionDenied(
                        f"this API key no longer has the {need!r} scope that {method} needs "
                        f"(the keys were reloaded): this stream is ended.")
                why = "the API key of this stream was revoked (the keys were reloaded)."
            raise Unauthenticated(why)

        return check

    def user_type_of(self, context: grpc.ServicerContext, key: str | None) -> str:
        """How the caller authenticates, without admitting it (no token taken, nothing
        logged, no abort): ``anonymous`` without a valid key or certificate."""
        if key:
            return "api_key" if _key_hash(key) in self._keys else "anonymous"
        if self.mtls and not self._keys and client_identity(context):
            return "mtls"
        return "open" if self.open_mode else "anonymous"

    def authorize(self, context: grpc.ServicerContext, method: str, key: str | None,
                  is_reflection: bool,
                  identity: tuple[str, str, frozenset[str]] | None = None
                  ) -> tuple[str, str, frozenset[str]]:
        """Return ``(client_id, user_type, scopes)`` or abort the call. ``identity``:
        what :meth:`identify` already answered for this call."""
        client_id, user_type, scopes = identity or self.identify(context, key, method)
        if not is_reflection:
            self.check_scope(context, method, client_id, scopes)
        if self.service is not None and not is_reflection:
            try:
                self.service.check_rate_limit(client_id)
            except NacfError as e:
                if e.code == "RESOURCE_EXHAUSTED":
                    _refuse(self._refusals, context, method, "rate_limited", "low",
                            grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), client_id)
                context.abort(grpc.StatusCode[e.code], str(e))
        return client_id, user_type, scopes

    def check_scope(self, context: grpc.ServicerContext, method: str, client_id: str,
                    scopes: frozenset[str]) -> None:
        """Abort ``PERMISSION_DENIED`` unless ``scopes`` hold the one ``method`` needs."""
        need = METHOD_SCOPES.get(method)
        if need is None or need not in scopes:
            _refuse(self._refusals, context, method, "insufficient_scope", "medium",
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this API key lacks the {need!r} scope that {method} needs "
                    f"(it has: {', '.join(sorted(scopes)) or 'none'}).", client_id,
                    metrics=self.metrics)

    def observe(self, method: str, context: grpc.ServicerContext, failed: bool,
                seconds: float, user_type: str, code: str | None = None,
                handled: bool = True) -> None:
        """Count one call; ``code``: its status name when known (else the context's);
        ``handled``: whether its handler ran (see :meth:`_unhandled`)."""
        if self.metrics is None:
            return
        if code is not None:
            name = code
        else:
            try:
                status = context.code()
            except Exception:  # noqa: BLE001
                status = None
            if status is None:
                name = "INTERNAL" if failed else "OK"
            else:
                name = status.name if isinstance(status, grpc.StatusCode) else str(status)
        self._observe(method, name, seconds, user_type)
        if not handled:
            self._unhandled(method, name)

    def _unhandled(self, method: str, name: str) -> None:
        """An Enroll ended or refused before its handler ran (its key, its scope, the
        rate limit, the server's load, its deadline while it waited for a worker): an
        enrollment refused with status ``name`` in nacfauth_user_registrations_total, as
        its handler's own refusals are (the service counts those)."""
        if method != "Enroll" or self.service is None:
            return
        try:
            self.service.metrics.record_registration(method, name)
        except Exception:  # noqa: BLE001 - the call's status stands
            log.exception("metrics recording failed")

    def _observe(self, method: str, name: str, seconds: float, user_type: str) -> None:
        try:
            self.metrics.observe_rpc(method, name, seconds, user_type)
        except Exception:
            log.exception("metrics recording failed")


#: How long a unary call of a client that has ``max_uploads_per_client`` calls waiting for
#: their request may wait for one of them to end (:class:`UploadSlots`): far above the
#: moments the read of a request that is all there takes on a loaded server (at most
#: 12 ms in 960 calls of 32 clients of one key on 2 busy cores; 0.7 ms typically).
UPLOAD_WAIT_S = 0.25


class UploadSlots:
    """The unary calls whose worker waits for their request, by client: at most
    ``bound`` per client.

    :meth:`start` registers a wait and :meth:`end` ends it: a lock and a dict operation
    or two each. A call whose client has ``bound`` waits already waits for one of them to
    end, :data:`UPLOAD_WAIT_S` at most, and not at all once the client's oldest wait has
    lasted that long (its request has stalled); then it is refused. A client's calls
    whose requests are there are not refused (their reads take milliseconds, however
    many there are at once), while a client that stalls its requests holds at most ``bound``
    workers, its further calls refused at once (one each for :data:`UPLOAD_WAIT_S` at
    most while its stalled calls are new)."""

    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError(f"a client needs at least one upload slot; got {bound}.")
        self.bound = bound
        self._reads: dict[str, dict[Any, float]] = {}  # client -> {context: start}
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self.waiting = 0  # calls waiting in start for a client's wait to end

    def of(self, client_id: str) -> int:
        """How many calls of ``client_id`` wait for their request."""
        return len(self._reads.get(client_id, ()))

    def start(self, client_id: str, context: Any) -> bool:
        """Register the wait for ``context``'s request; ``False``, nothing registered,
        when ``client_id`` has ``bound`` waits and none ends in time (see the class)."""
        now = time.monotonic()
        with self._lock:
            reads = self._reads.get(client_id)
            if reads is None:
                self._reads[client_id] = {context: now}
                return True
            if len(reads) >= self.bound:
                until = now + UPLOAD_WAIT_S
                self.waiting += 1
                try:
                    while len(reads) >= self.bound:
                        left = min(until, min(reads.values()) + UPLOAD_WAIT_S) \
                            - time.monotonic()
                        if left <= 0:
                            return False
                        self._ended.wait(left)
                        reads = self._reads.setdefault(client_id, reads)
                finally:
                    self.waiting -= 1
                now = time.monotonic()
            reads[context] = now
            return True

    def end(self, client_id: str, context: Any) -> None:
        """End the wait :meth:`start` registered."""
        with self._lock:
            reads = self._reads[client_id]
            del reads[context]
            if not reads:
                del self._reads[client_id]
            if self.waiting:
                self._ended.notify_all()


#: A thread of the stream pool between two streams (:meth:`StreamPool.claim`).
_NO_TASK = object()


class StreamPool(futures.ThreadPoolExecutor):
    """The threads of the open streams: at most ``max_streams``, one per stream.

    The interceptor gives each admitted stream's behavior this pool
    (``experimental_thread_pool``): grpcio then submits the call here, on its polling
    thread, right after asking the interceptor for the handler; a call gRPC refuses
    instead (its concurrency bound) is never submitted. A stream counts as open from its
    submission until its task (handler, responses, status) has returned, so the count
    cannot leak, and the interceptor, which asks :meth:`full` on that same polling
    thread just before, never admits more streams than there are threads: an admitted
    stream never waits for one. The unary calls keep the server's own pool of
    ``max_workers`` threads, whatever the streams do.

    A client holds at most ``max_per_client`` of them (default and at most
    ``max_streams``): once its caller is known, a stream takes its client's share
    (:meth:`claim`, on its own thread) and gives it back when its task returns, as it does
    its thread; a client that holds them all is refused its next stream, so that one
    client cannot take every stream and lock every other client's out."""

    def __init__(self, max_streams: int, max_per_client: int | None = None) -> None:
        super().__init__(max_workers=max_streams, thread_name_prefix="nacf-stream")
        self.max_streams = max_streams
        self.max_per_client = (max_streams if max_per_client is None
                               else min(max_per_client, max_streams))
        self._open = 0
        self._count_lock = threading.Lock()
        self._by_client: dict[str, int] = {}  # the open streams of each client holding one
        self._task = threading.local()  # .client: whose share the stream of this thread took

    @property
    def open(self) -> int:
        """How many streams are open (submitted, not yet ended)."""
        return self._open

    def full(self) -> bool:
        return self._open >= self.max_streams

    def open_of(self, client_id: str) -> int:
        """How many streams ``client_id`` holds open (that took its share)."""
        return self._by_client.get(client_id, 0)

    def claim(self, client_id: str) -> bool:
        """Count the stream running on this thread as one of ``client_id``'s, until its
        task returns; ``False``, and nothing counted, when the client holds
        ``max_per_client`` already. Once per stream (again: ``True``, nothing more
        counted); on a thread of this pool only (elsewhere: ``True``, nothing counted)."""
        task = self._task
        if getattr(task, "client", _NO_TASK) is not None:
            return True  # claimed already, or not a stream of this pool
        with self._count_lock:
            n = self._by_client.get(client_id, 0)
            if n >= self.max_per_client:
                return False
            self._by_client[client_id] = n + 1
        task.client = client_id
        return True

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> futures.Future:
        with self._count_lock:
            self._open += 1
        try:
            return super().submit(self._run, fn, args, kwargs)
        except BaseException:  # shut down: grpcio's own call of submit fails the same way
            self._ended()
            raise

    def _run(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        task = self._task
        task.client = None  # a stream of this pool, whose client is not known yet
        try:
            return fn(*args, **kwargs)
        finally:
            client, task.client = task.client, _NO_TASK
            if client is not None:
                with self._count_lock:
                    n = self._by_client[client] - 1
                    if n:
                        self._by_client[client] = n
                    else:
                        del self._by_client[client]
            self._ended()

    def _ended(self) -> None:
        with self._count_lock:
            self._open -= 1


#: What to undo when the interceptor drops a call's answer (:func:`on_dropped`).
_ON_DROPPED: weakref.WeakKeyDictionary[Any, Callable[[], None]] = weakref.WeakKeyDictionary()


def on_dropped(context: grpc.ServicerContext, fn: Callable[[], None]) -> None:
    """Have ``fn`` run if the call turns out to be gone when its handler has returned
    (its deadline passed after the handler last checked): its answer is then not sent,
    so what it gave the client (an accept's session) must be undone."""
    try:
        _ON_DROPPED[context] = fn
    except TypeError:  # a context that cannot be weakly referenced: nothing to undo later
        pass


def _run_on_dropped(context: grpc.ServicerContext) -> None:
    try:
        fn = _ON_DROPPED.pop(context, None)
    except TypeError:
        fn = None
    if fn is not None:
        fn()


def call_active(context: grpc.ServicerContext) -> bool:
    """Whether the call is still live (not cancelled, its deadline not passed); ``True``
    for a context that cannot say (grpc_testing's). Its deadline is checked here too:
    gRPC marks a call ended only once its polling thread has handled the event, which on
    a busy machine comes after a handler returns past the deadline."""
    try:
        if not context.is_active():
            return False
        rem = context.time_remaining()
    except Exception:  # noqa: BLE001 - grpc_testing contexts
        return True
    return rem is None or rem > 0


class _RefusalLog:
    """At most one line per (kind, caller) every ``interval_s``: calls refused at
    admission are not bounded by the rate limit (it is one of the reasons), so a flood
    must not become a flood of log lines; a line says how many it stands for since the
    last one (``suppressed``). The metrics count every call."""

    def __init__(self, interval_s: float = 10.0, max_keys: int = 4096) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str, who: str) -> int | None:
        """``None``: do not log; else the number of lines suppressed before this one."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get((kind, who))
            if last is not None and now - last[0] < self.interval_s:
                self._last[(kind, who)] = (last[0], last[1] + 1)
                return None
            if last is None and len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[(kind, who)] = (now, 0)
            return 0 if last is None else last[1]


def _peer_of(context: grpc.ServicerContext) -> str:
    try:
        return context.peer() or ""
    except Exception:  # noqa: BLE001 - grpc_testing contexts may not know a peer
        return ""


def log_refusal(context: grpc.ServicerContext, method: str, kind: str, severity: str,
                code: grpc.StatusCode, client_id: str | None = None,
                suppressed: int = 0) -> None:
    """The ``security_event`` line of a refused call: the method, the status, the
    caller's address and, once its key is known, its client id (never the key);
    ``suppressed``: how many such lines were left out before it."""
    log.warning("call refused", extra={
        "event_type": "security_event", "security_event_type": kind,
        "severity": severity, "method": method, "status": code.name,
        **({"client_id": client_id} if client_id else {}), **peer_fields(_peer_of(context)),
        **({"suppressed": suppressed} if suppressed else {})})


def count_suspicious(metrics: Any, kind: str, severity: str) -> None:
    """Count a refused call in ``nacfauth_suspicious_activities_total`` (``metrics``: a
    :class:`~nacf_core.metrics.Metrics` or ``None``); a failure to count is logged."""
    if metrics is None:
        return
    try:
        metrics.record_suspicious(kind, severity)
    except Exception:  # noqa: BLE001 - the refusal stands whatever the metrics say
        log.exception("metrics recording failed")


def _refuse(refusals: _RefusalLog, context: grpc.ServicerContext, method: str, kind: str,
            severity: str, code: grpc.StatusCode, message: str,
            client_id: str | None = None, *, metrics: Any = None) -> None:
    """Log a call refused at admission as a security event (:func:`log_refusal`; at most
    a line per caller and kind every 10 s), then abort it with ``code``. With
    ``metrics``, every such call is counted as a suspicious activity, as every other
    security event is (not a call without a key, a misconfigured client as a missing
    device proof is, nor a rate-limited one, which the service counts)."""
    count_suspicious(metrics, kind, severity)
    peer = _peer_of(context)
    who = client_id or peer_fields(peer).get("ip_address") or peer
    suppressed = refusals.admit(kind, who)
    if suppressed is not None:
        log_refusal(context, method, kind, severity, code, client_id, suppressed)
    context.abort(code, message)


class _Undecodable:
    """What the lenient deserializer returns for bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _lenient(deserialize: Callable | None) -> Callable | None:
    """A request deserializer that returns :class:`_Undecodable` instead of raising
    (grpcio would end the call with ``INTERNAL`` before any handler runs)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and the like
            return _Undecodable(e)
    return parse


def _decoded(req: Any, ctx: grpc.ServicerContext, method: str) -> Any:
    if isinstance(req, _Undecodable):
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                  f"the {method} request is not a valid protobuf message of the method's "
                  f"request type ({req.error}).")
    return req


def _decoded_stream(it: Any, ctx: grpc.ServicerContext, method: str,
                    raising: bool = False,
                    check: Callable[[grpc.ServicerContext], None] | None = None) -> Any:
    """The messages of a client stream; an undecodable one aborts the call, or with
    ``raising`` raises ``InvalidArgument`` for the handler to answer: nacf's streams are
    read ahead on a thread of their own (``ClientStream``), and an abort from there set
    the call's status even when the handler had answered before it reached the message
    (an accept, its session open, answered ``INVALID_ARGUMENT``).

    With ``raising`` (nacf's own streams), a request gRPC refused as it read it (over
    ``max_message_bytes``, :func:`read_refused`) fails the stream where grpcio may show
    only its end (:class:`_ReadRefused`, a ``grpc.RpcError`` as after a cancel): the
    handler must not take what came before it for the whole stream (decide on it, answer
    ``INVALID_ARGUMENT`` for a stream without a chunk), and the call is counted
    ``RESOURCE_EXHAUSTED``, what its client was answered (:func:`ended_status`).

    ``check`` (:meth:`AuthInterceptor.admission_check`, with ``raising``) runs before each
    message is handed on: a stream whose key was revoked since it opened fails there,
    logged as a ``security_event`` (``revoked_api_key``)."""
    if raising:
        _watch_reads(it, ctx)
    for req in it:
        if check is not None:
            check(ctx)
        if raising and isinstance(req, _Undecodable):
            raise InvalidArgument(f"the {method} request is not a valid protobuf message of "
                                  f"the method's request type ({req.error}).")
        yield _decoded(req, ctx, method)
    if raising and read_refused(ctx):
        raise _ReadRefused()


def _wrap_decoding(handler: grpc.RpcMethodHandler, method: str, raising: bool = False,
                   check: Callable[[grpc.ServicerContext], None] | None = None
                   ) -> grpc.RpcMethodHandler:
    """``handler`` with undecodable requests answered ``INVALID_ARGUMENT`` (in a client
    stream with ``raising``: by the handler, see :func:`_decoded_stream`, which runs
    ``check`` at each message)."""
    des, ser = _lenient(handler.request_deserializer), handler.response_serializer
    if handler.unary_unary:
        f = handler.unary_unary
        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: f(_decoded(req, ctx, method), ctx), des, ser)
    if handler.unary_stream:
        f = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            lambda req, ctx: f(_decoded(req, ctx, method), ctx), des, ser)
    if handler.stream_unary:
        f = handler.stream_unary
        return grpc.stream_unary_rpc_method_handler(
            lambda it, ctx: f(_decoded_stream(it, ctx, method, raising, check), ctx), des, ser)
    f = handler.stream_stream
    return grpc.stream_stream_rpc_method_handler(
        lambda it, ctx: f(_decoded_stream(it, ctx, method, raising, check), ctx), des, ser)


def _idle_bounded(fn: Callable, it: Any, ctx: grpc.ServicerContext, idle_s: float) -> Any:
    """The responses of the stream handler ``fn(requests, ctx)`` whose requests are read
    ahead on a thread of their own (``ClientStream``): none for ``idle_s`` seconds ends
    the call ``DEADLINE_EXCEEDED``."""
    from nacf_core.errors import DeadlineExceeded
    from nacf_core.service import ClientStream

    stream = ClientStream(it, idle_s=idle_s)
    try:
        yield from fn(iter(stream), ctx)
    except DeadlineExceeded as e:
        ctx.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
    finally:
        stream.close()


#: Threads of the grpc.health.v1 calls (the interceptor's own pool).
HEALTH_THREADS = 2
#: Most grpc.health.v1 calls admitted at once (on the health threads or waiting for one).
HEALTH_MAX_CALLS = 4
#: How long a grpc.health.v1 call may take to send its request (a few bytes) once a
#: health thread takes it up; then the call is cancelled.
HEALTH_REQUEST_WAIT_S = 5.0


class _HealthPool(futures.ThreadPoolExecutor):
    """The health threads, counting the grpc.health.v1 calls admitted: from their
    submission (grpcio submits a call here on its polling thread right after asking the
    interceptor for its handler, which asks :meth:`full` on that thread just before) to
    their task's end. Each holds a slot of gRPC's concurrency bound as long, and a call
    that never sends its request holds it up to :data:`HEALTH_REQUEST_WAIT_S` on a
    thread, after its wait for one: without a bound on them, anyone (no key is needed)
    could fill gRPC's bound with such calls and have every other call refused."""

    def __init__(self, threads: int, max_calls: int) -> None:
        super().__init__(max_workers=threads, thread_name_prefix="nacf-health-rpc")
        self.max_calls = max_calls
        self._calls = 0
        self._count_lock = threading.Lock()

    def full(self) -> bool:
        return self._calls >= self.max_calls

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> futures.Future:
        with self._count_lock:
            self._calls += 1
        try:
            return super().submit(self._run, fn, args, kwargs)
        except BaseException:  # shut down
            self._ended()
            raise

    def _run(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            self._ended()

    def _ended(self) -> None:
        with self._count_lock:
            self._calls -= 1


def _refusing(handler: grpc.RpcMethodHandler, refuse: Callable) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape whose client side is a stream (its request is not
    read: ``refuse(requests, context)`` aborts the call), run on the server's pool."""
    make = (grpc.stream_unary_rpc_method_handler
            if handler.unary_unary or handler.stream_unary
            else grpc.stream_stream_rpc_method_handler)
    return make(refuse, handler.request_deserializer, handler.response_serializer)


def _health_request(it: Any, ctx: grpc.ServicerContext, method: str) -> Any:
    """The one request of a health call, read within :data:`HEALTH_REQUEST_WAIT_S` (else
    the call is cancelled); ``UNIMPLEMENTED`` when its client closed its side without one
    (as grpcio answers), ``INVALID_ARGUMENT`` for undecodable bytes."""
    timer = threading.Timer(HEALTH_REQUEST_WAIT_S, ctx.cancel)
    timer.daemon = True
    timer.start()
    try:
        req = next(it, _NO_REQUEST)
    except grpc.RpcError:  # cancelled: by its client, or the timer
        ctx.abort(grpc.StatusCode.CANCELLED, f"no {method} request within "
                                             f"{HEALTH_REQUEST_WAIT_S:g} s.")
    finally:
        timer.cancel()
    if req is _NO_REQUEST:
        ctx.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} requires exactly one request "
                                                 "message.")
    return _decoded(req, ctx, method)


def _health_handler(handler: grpc.RpcMethodHandler, method: str,
                    pool: futures.ThreadPoolExecutor) -> grpc.RpcMethodHandler:
    """A grpc.health.v1 handler (needs no key) served on ``pool``, its request read by
    :func:`_health_request`. grpcio reads a unary request on the call's thread and waits
    for it as long as the call lasts: anyone could open --max-workers Check or Watch calls
    that never send theirs and leave no worker for any other call. Here they wait on the
    health threads, and for a few seconds at most. ``Watch`` stays non-blocking: it
    answers through grpcio's callback without holding a thread while its client watches
    (a plain wrapper would make grpcio run it as a blocking generator, a thread held per
    Watch); undecodable requests are ``INVALID_ARGUMENT``."""
    des, ser = _lenient(handler.request_deserializer), handler.response_serializer
    if handler.unary_unary:
        f = handler.unary_unary

        def unary(it, ctx):
            return f(_health_request(it, ctx, method), ctx)

        unary.experimental_thread_pool = pool
        return grpc.stream_unary_rpc_method_handler(unary, des, ser)
    if handler.unary_stream:
        g = handler.unary_stream
        if getattr(g, "experimental_non_blocking", False):
            def watch(it, ctx, send_response_callback=None):
                return g(_health_request(it, ctx, method), ctx, send_response_callback)

            watch.experimental_non_blocking = True
        else:
            def watch(it, ctx):
                return g(_health_request(it, ctx, method), ctx)
        watch.experimental_thread_pool = pool
        return grpc.stream_stream_rpc_method_handler(watch, des, ser)
    return _wrap_decoding(handler, method)


def _wrap(handler: grpc.RpcMethodHandler, icp: AuthInterceptor, method: str,
          key: str | None, is_reflection: bool, arrived: float | None = None,
          t_arrived: float | None = None, ua: str = "") -> grpc.RpcMethodHandler:
    """``handler`` behind the interceptor's checks and metrics, for one call (``arrived``:
    when it reached the server, see :func:`call_started`; ``t_arrived``: the same as a
    ``time.perf_counter()`` value, where its duration in the RPC metrics starts: the time
    it waited for a worker thread, or for the authentication thread behind other calls,
    is latency its client sees; now when not given; ``ua``: the client's user-agent,
    :data:`CALLER_USER_AGENT` while the call is served)."""
    # nacf's own handlers answer an InvalidArgument; reflection's would answer UNKNOWN.
    # nacf's client streams (open for hours) check at each message that their key is
    # still configured with the method's scope (keys reloaded on SIGHUP); a unary call
    # is checked once, as it starts
    check = (icp.admission_check(key, method) if not is_reflection
             and (handler.stream_unary or handler.stream_stream) else None)
    handler = _wrap_decoding(handler, method, raising=not is_reflection, check=check)
    def _guard(context, fn, stream=False):
        """``stream``: a client stream of the stream pool, which takes one of its
        caller's stream slots once its caller is known (:meth:`AuthInterceptor.claim_stream`)."""
        t0 = time.perf_counter() if t_arrived is None else t_arrived
        call_started(context, arrived)
        user_type = "anonymous"
        failed = True
        code = None
        handled = False  # whether fn, the handler, ran
        ua_token = CALLER_USER_AGENT.set(ua)
        try:
            # a known caller refused for its scope or its rate keeps its user_type
            who = icp.identify(context, key, method)
            user_type = who[1]
            if stream:
                icp.claim_stream(context, method, who[0])
            client_id, user_type, scopes = icp.authorize(context, method, key, is_reflection,
                                                         who)
            token = CALLER.set((client_id, scopes))
            handled = True
            try:
                out = fn()
            finally:
                CALLER.reset(token)
            failed = False
            if not call_active(context):
                # it answered a call that is gone (its deadline passed in the handler, or
                # the client cancelled): nobody gets this answer, the call ended without it.
                # gRPC may not have seen its deadline yet and would still send the answer
                # to a client counted DEADLINE_EXCEEDED: the call ends as it is counted
                ended = ended_status(context)
                code = ended.name
                _run_on_dropped(context)
                context.abort(ended, ENDED_DETAILS[ended])
            return out
        finally:
            CALLER_USER_AGENT.reset(ua_token)
            if not is_reflection:
                icp.observe(method, context, failed, time.perf_counter() - t0, user_type,
                            code=code, handled=handled)

    def _guard_stream(context, fn, stream=False):
        t0 = time.perf_counter() if t_arrived is None else t_arrived
        state = {"user_type": "anonymous", "failed": True, "counted": False}
        lock = threading.Lock()

        def count(gone: bool = False) -> None:
            with lock:
                if state["counted"] or is_reflection:
                    return
                state["counted"] = True
            # gone: the call ended before its handler did (cancelled or timed out)
            code = ended_status(context).name if gone else None
            icp.observe(method, context, state["failed"], time.perf_counter() - t0,
                        state["user_type"], code=code)

        call_started(context, arrived)  # its callback runs before count's: the end is timed
        # a stream the client abandons may never be resumed nor closed by gRPC, so its
        # end is also counted when the call ends, once either way
        if not is_reflection:
            context.add_callback(lambda: count(gone=True))
        # (a generator: gRPC runs it on the stream's own thread from start to end)
        ua_token = CALLER_USER_AGENT.set(ua)
        try:
            who = icp.identify(context, key, method)
            state["user_type"] = who[1]
            if stream:
                icp.claim_stream(context, method, who[0])
            icp.authorize(context, method, key, is_reflection, who)
            yield from fn()
            state["failed"] = False
        finally:
            try:
                CALLER_USER_AGENT.reset(ua_token)
            except ValueError:  # resumed in another context after all
                CALLER_USER_AGENT.set("")
            count()

    if handler.unary_unary:
        inner = handler.unary_unary
        if method == "Authenticate" and icp._engine is not None:
            gate, engine = icp._gate, icp._engine

            def _drop(ctx, t0: float) -> None:
                """A call that timed out or was cancelled while queued: counted in
                the RPC metrics and ended without taking a token or doing the work."""
                code = ended_status(ctx)
                ctx.set_code(code)
                icp.observe(method, ctx, True, time.perf_counter() - t0,
                            icp.user_type_of(ctx, key))
                ctx.abort(code, "the call's deadline passed while it was queued."
                          if code == grpc.StatusCode.DEADLINE_EXCEEDED
                          else "the call was cancelled while it was queued.")

            def _serialised(req, ctx):
                t0 = time.perf_counter() if t_arrived is None else t_arrived

                def run():
                    with gate:  # rate limit, checks and all, one call at a time
                        if not call_active(ctx):
                            _drop(ctx, t0)
                        return _guard(ctx, lambda: inner(req, ctx))

                return engine.submit(run).result()

            return _one_message(_serialised, icp, method, key, handler, arrived, t_arrived,
                                ua)
        return _one_message(lambda req, ctx: _guard(ctx, lambda: inner(req, ctx)), icp, method,
                            key, handler, arrived, t_arrived, ua)
    if handler.unary_stream:
        inner_us = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            lambda req, ctx: _guard_stream(ctx, lambda: inner_us(req, ctx)),
            handler.request_deserializer, handler.response_serializer)
    # a client stream (AuthenticateStream, ContinuousAuthenticate, reflection): it holds
    # its thread as long as it is open (hours for a headset under ContinuousAuthenticate),
    # so it runs on the stream pool, never on the unary calls' workers; when the pool's
    # max_streams streams are open, it is refused at once (on a worker: a moment)
    pool = icp.streams
    if pool is not None and pool.full():
        def refuse(it, ctx):
            icp.refuse_stream(ctx, method, key, is_reflection,
                              time.perf_counter() if t_arrived is None else t_arrived)
        return (grpc.stream_unary_rpc_method_handler if handler.stream_unary
                else grpc.stream_stream_rpc_method_handler)(
            refuse, handler.request_deserializer, handler.response_serializer)
    # on the pool, a stream takes one of its client's slots too (max_streams_per_client)
    pooled = pool is not None
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def behavior(it, ctx):
            return _guard(ctx, lambda: inner_su(it, ctx), pooled)
        make = grpc.stream_unary_rpc_method_handler
    else:
        inner_ss = handler.stream_stream
        idle_s = icp.stream_idle_s if is_reflection else None
        if idle_s is not None:
            # reflection waits for its client's next request as long as the call lasts:
            # one that sends nothing for signal_loss_s ends, as nacf's own streams do
            def behavior(it, ctx):
                return _guard_stream(ctx, lambda: _idle_bounded(inner_ss, it, ctx, idle_s),
                                     pooled)
        else:
            def behavior(it, ctx):
                return _guard_stream(ctx, lambda: inner_ss(it, ctx), pooled)
        make = grpc.stream_stream_rpc_method_handler
    if pool is not None:
        # grpcio runs a behavior that names a pool there (the mechanism of its own
        # health service); the pool counts the stream from its submission to its end
        behavior.experimental_thread_pool = pool
    return make(behavior, handler.request_deserializer, handler.response_serializer)


_NO_REQUEST = object()

#: How long a unary call whose client closed its side without a request may take to
#: show gRPC's refusal of its request (see :func:`_request_refused`).
_REFUSAL_WAIT_S = 0.5


def _request_refused(ctx: grpc.ServicerContext, no_request: bool,
                     watched: bool = False) -> grpc.StatusCode:
    """The status of a unary call that was live when its handler started but whose
    request did not come. gRPC reads a unary request only when the handler asks for it,
    and refuses one over ``max_message_bytes`` then: its client sees
    ``RESOURCE_EXHAUSTED``, the handler sees the call end as if cancelled (at once, or
    just after the end of its requests: ``no_request``). ``DEADLINE_EXCEEDED`` when its
    deadline passed meanwhile (:func:`ended_status`); ``UNIMPLEMENTED`` (what grpcio
    answers) when the call stays live: its client closed its side without a request.
    With the read ``watched`` (:func:`_watch_reads`), a call whose read did not fail
    ended otherwise: its client cancelled it, or its connection dropped, while the
    request was still on its way (``CANCELLED``, as :func:`ended_status` says, not
    ``RESOURCE_EXHAUSTED``); unwatched (grpcio's internals changed) it cannot be told
    from a refusal and is counted as one."""
    if no_request and call_active(ctx):
        ended = threading.Event()
        try:
            live = ctx.add_callback(ended.set)
        except Exception:  # noqa: BLE001 - grpc_testing contexts
            live = True
        if live and not ended.wait(_REFUSAL_WAIT_S) and call_active(ctx):
            return grpc.StatusCode.UNIMPLEMENTED
    code = ended_status(ctx)  # RESOURCE_EXHAUSTED for a watched read that failed
    if watched:
        return code
    return code if code is grpc.StatusCode.DEADLINE_EXCEEDED else \
        grpc.StatusCode.RESOURCE_EXHAUSTED


#: The details of a call ended by what its client did, or gRPC, before its handler
#: answered (:func:`ended_status`); the client has its status already, from gRPC.
ENDED_DETAILS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: "the call's deadline passed before it was served.",
    grpc.StatusCode.CANCELLED: "the client cancelled the call.",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the request is larger than the server's maximum "
                                        "message size (max_message_bytes).",
}


def _one_message(behavior: Callable, icp: AuthInterceptor, method: str, key: str | None,
                 handler: grpc.RpcMethodHandler, arrived: float | None = None,
                 t_arrived: float | None = None, ua: str = "") -> grpc.RpcMethodHandler:
    """The unary ``behavior(request, context)`` served as a client stream of one message.
    grpcio does not run a unary handler whose call ended while it waited for a worker
    thread (all of them held by streams until its deadline passed, or its client
    cancelled it): nothing counted it, and an overloaded server looked idle. A
    client-stream handler always runs: such a call is counted as it ended
    (``DEADLINE_EXCEEDED`` or ``CANCELLED``, :func:`ended_status`) and dropped before any
    work; so is a call whose request gRPC refused as it was read (over
    ``max_message_bytes``: ``RESOURCE_EXHAUSTED``, :func:`_request_refused`). The wait
    for its request is registered under its client (:meth:`AuthInterceptor.claim_upload`)."""

    def read_one(it: Any, ctx: grpc.ServicerContext) -> Any:
        t0 = time.perf_counter() if t_arrived is None else t_arrived
        call_started(ctx, arrived)
        if call_active(ctx):
            # the caller and its scope before the request is read: a client without a
            # valid key that never sent its request held a worker thread until its
            # deadline (for ever without one). The rate limit comes after (_guard).
            # Its worker waits for its request from here: the wait is registered under its
            # client (max_uploads_per_client) until the read has ended however it ends,
            # before the rate limit and the handler.
            user_type = "anonymous"
            ua_token = CALLER_USER_AGENT.set(ua)  # for the refusals' log lines
            try:
                client_id, user_type, scopes = icp.identify(ctx, key, method)
                icp.check_scope(ctx, method, client_id, scopes)
                slot = icp.claim_upload(ctx, method, client_id)
            except BaseException:
                icp.observe(method, ctx, True, time.perf_counter() - t0, user_type,
                            handled=False)
                raise
            finally:
                CALLER_USER_AGENT.reset(ua_token)
            try:
                watched = _watch_reads(it, ctx)
                try:
                    req = next(it, _NO_REQUEST)
                except grpc.RpcError:  # the call ended while its request was read
                    req = None
            finally:
                if slot:
                    icp.release_upload(client_id, ctx)
            if req is not None and req is not _NO_REQUEST:
                return behavior(req, ctx)
            code = _request_refused(ctx, req is _NO_REQUEST, watched)
        else:  # it ended while it waited for a worker thread
            code = ended_status(ctx)
        icp.observe(method, ctx, True, time.perf_counter() - t0, icp.user_type_of(ctx, key),
                    code=code.name, handled=False)
        ctx.abort(code, ENDED_DETAILS.get(code) or f"{method} requires exactly one request "
                                              "message.")

    return grpc.stream_unary_rpc_method_handler(read_one, handler.request_deserializer,
                                                handler.response_serializer)
