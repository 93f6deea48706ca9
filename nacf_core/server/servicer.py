"""``nacf.v1.AuthService`` servicer: a thin adapter over :class:`nacf_core.service.AuthService`.

Every handler converts the request (``converters``), calls the domain service and
converts the result back.  Errors become gRPC statuses here, in one place
(:func:`_status`): ``nacf_core.errors.*`` map by their ``code``, ``ValueError`` /
``TypeError`` to ``INVALID_ARGUMENT``, anything unexpected to ``INTERNAL`` with a log
line and an error id (never ``UNKNOWN``, never a traceback on the wire).
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pb_grpc
from nacf_core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NacfError,
    PermissionDenied,
    ResourceExhausted,
)
from nacf_core.server import converters as cv
from nacf_core.server.interceptors import (
    CALLER,
    ENDED_DETAILS,
    call_active,
    count_suspicious,
    ended_status,
    log_refusal,
    on_dropped,
)
from nacf_core.service import AuthService, ClientStream, DeviceProof

__all__ = ["SERVICE_NAME", "AuthServicer", "add_to_server", "status_for"]

#: Full name of the service (``nacf.v1.AuthService``).
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuthService"].full_name

log = logging.getLogger("nacf.server")

#: Bytes a ListUsers page cut to fit in a response keeps for its ``next_page_token`` (the
#: store's: a user id of at most 128 characters, base64; the page is checked again anyway)
_PAGE_TOKEN_ROOM = 1024


def _too_large(user: Any, limit: int, verb: str) -> ResourceExhausted:
    """The refusal of a user whose record alone does not fit in one response."""
    return ResourceExhausted(
        f"user {user.user_id!r} alone does not fit in a response of max_message_bytes "
        f"({limit} bytes; {len(user.device_ids)} headsets): raise max_message_bytes to "
        f"{verb} it.")


def _fit(resp: Any, limit: int, refusal: Callable[[], ResourceExhausted]) -> Any:
    """``resp``, or ``refusal()`` raised when it is larger than ``limit`` (the server's
    ``max_message_bytes``): gRPC would refuse to send it ("Sent message larger than
    max", which says nothing of why) and the call would be counted ``OK``."""
    if resp.ByteSize() > limit:
        raise refusal()
    return resp


#: Most bytes of a status message: it travels in the call's trailing metadata, which a
#: gRPC client takes up to 8 KiB of (beyond, more and more often, and always beyond
#: 16 KiB, it fails the call RESOURCE_EXHAUSTED "received metadata size exceeds hard
#: limit", saying nothing of the error); a refusal listing every distinct reason of a
#: long signal's rejected windows (Identify, Enroll) reached 20 kB.
MAX_DETAILS_BYTES = 4096


def _fit_details(msg: str) -> str:
    """``msg``, cut to :data:`MAX_DETAILS_BYTES` of UTF-8, saying how much was cut."""
    raw = msg.encode("utf-8", "replace")
    if len(raw) <= MAX_DETAILS_BYTES:
        return msg
    head = raw[:MAX_DETAILS_BYTES - 80].decode("utf-8", "ignore")
    return f"{head}… ({len(msg) - len(head)} more characters left out)"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message for an exception raised by the domain layer
    (the message cut to :data:`MAX_DETAILS_BYTES`)."""
    code, msg = _status_for(exc)
    return code, _fit_details(msg)


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, NacfError) and exc.code in grpc.StatusCode.__members__:
        return grpc.StatusCode[exc.code], str(exc) or exc.code
    if isinstance(exc, (ValueError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc) or type(exc).__name__
    if isinstance(exc, grpc.RpcError):  # the client went away while we read its stream
        return grpc.StatusCode.CANCELLED, "the client cancelled the call."
    err = uuid.uuid4().hex[:12]
    log.error("internal error", exc_info=exc, extra={"event_type": "internal_error",
                                                     "error_id": err})
    return grpc.StatusCode.INTERNAL, f"internal error (id {err}); see the server log."


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    code, msg = status_for(exc)
    if isinstance(exc, grpc.RpcError) or not call_active(context):
        # the call ended under the handler (its deadline passed, the client went away,
        # gRPC refused a streamed request too large), which then saw the client's stream
        # fail or end short: the call ended that way, whatever the handler made of it
        # (the client sees no more of it)
        code = ended_status(context)
        msg = ENDED_DETAILS[code]
    elif isinstance(exc, StreamCutShort):
        # the call may still look active: a client's cancel at its deadline can reach
        # the handler as the stream's end before gRPC marks the call ended
        code = ended_status(context)
        if code != grpc.StatusCode.CANCELLED:
            msg = ENDED_DETAILS[code]
    context.abort(code, msg)


def _check_deadline(context: grpc.ServicerContext) -> float | None:
    """Raise ``DeadlineExceeded`` if the deadline has passed; return it as monotonic."""
    rem = context.time_remaining()
    if rem is None:
        return None
    if rem <= 0:
        raise DeadlineExceeded("the call's deadline passed before it could be served.")
    return time.monotonic() + rem


def _unary(fn: Callable | None = None, *, check_deadline: bool = True) -> Callable:
    """Map the handler's errors to statuses; with ``check_deadline=False`` the handler
    checks its deadline itself (Enroll: a refusal it counts)."""
    if fn is None:
        return functools.partial(_unary, check_deadline=check_deadline)

    @functools.wraps(fn)
    def wrapper(self: AuthServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if check_deadline:
                _check_deadline(context)
            return fn(self, request, context)
        except Exception as e:
            if _is_abort(e, context):
                raise
            if isinstance(e, PermissionDenied):
                _log_scope_refusal(context, fn.__name__, self.service.metrics)
            _abort(context, e)
    return wrapper


def _log_scope_refusal(context: grpc.ServicerContext, method: str, metrics: Any = None
                       ) -> None:
    """A request its key's scopes do not cover (an account change without admin), refused
    in the handler: the security event the interceptor logs (and counts) for a method's
    scope."""
    count_suspicious(metrics, "insufficient_scope", "medium")
    c = CALLER.get()
    log_refusal(context, method, "insufficient_scope", "medium",
                grpc.StatusCode.PERMISSION_DENIED, c[0] if c is not None else None)


def _stream_out(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self: AuthServicer, request: Any, context: grpc.ServicerContext) -> Iterator:
        try:
            _check_deadline(context)
            yield from fn(self, request, context)
        except GeneratorExit:  # gRPC closed the stream: the call is gone
            _gone(context)
            raise
        except Exception as e:
            if _is_abort(e, context):
                raise
            _abort(context, e)
        else:
            if not context.is_active():  # it returned because the call is gone
                _gone(context)
    return wrapper


def _gone(context: grpc.ServicerContext) -> None:
    """Give a call that ended without a status (the client cancelled, or its deadline
    passed) the status it ended with, for the RPC metrics: not ``OK``, not ``INTERNAL``
    (:func:`ended_status`, from the call's timeout and end the interceptor noted)."""
    try:
        if context.code() not in (None, grpc.StatusCode.OK):
            return
    except Exception:  # noqa: BLE001 - older grpcio without ServicerContext.code
        return
    context.set_code(ended_status(context))


def _is_abort(e: BaseException, context: grpc.ServicerContext) -> bool:
    """True for the exception ``context.abort`` raised (its code is already set)."""
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - older grpcio without ServicerContext.code
        return False
    return code is not None and code != grpc.StatusCode.OK and type(e) is Exception


_PROOF_KEYS = ("x-device-id", "x-device-timestamp", "x-device-proof")


def _proof(context: grpc.ServicerContext) -> DeviceProof:
    """The ``x-device-*`` metadata; a key given more than once is noted (``repeated``),
    and the proof refused for it, not judged on one of its values."""
    md: dict[str, str] = {}
    seen: dict[str, int] = {}
    for k, v in context.invocation_metadata() or ():
        if k in _PROOF_KEYS:
            seen[k] = seen.get(k, 0) + 1
            md[k] = v if isinstance(v, str) else v.decode("utf-8", "replace")
    return DeviceProof(md.get("x-device-id"), md.get("x-device-timestamp"),
                       md.get("x-device-proof"),
                       tuple((k, n) for k, n in seen.items() if n > 1))


def _peer(context: grpc.ServicerContext) -> str:
    try:
        return context.peer() or ""
    except Exception:  # noqa: BLE001 - grpc_testing contexts may not know a peer
        return ""


def _caller() -> tuple[str, bool]:
    """``(client id, whether it has the admin scope)`` of the unary call being served
    (no interceptor in the path: unrestricted)."""
    c = CALLER.get()
    if c is None:
        return "", True
    return c[0], "admin" in c[1]


class AuthServicer(pb_grpc.AuthServiceServicer):
    """The gRPC face of :class:`AuthService`."""

    def __init__(self, service: AuthService) -> None:
        self.service = service

    @property
    def _idle_s(self) -> float:
        """How long a client stream may send nothing: ``signal_loss_s``."""
        return float(self.service.config.signal_loss_s)

    @_unary(check_deadline=False)
    def Enroll(self, request: pb.EnrollRequest, context) -> pb.EnrollResponse:
        actor, admin = _caller()
        try:
            # a deadline passed before the handler started is a refusal like the others
            deadline = _check_deadline(context)
            if request.update and not admin:
                # replacing a template takes the account over: an account change, not an
                # enrollment
                raise PermissionDenied("replacing an enrolled user's template (update=true) "
                                       "needs the admin scope; this key has the enroll scope.")
            blocks = [cv.signal_to_block(s, f"signals[{i}]")
                      for i, s in enumerate(request.signals)]
        except Exception as e:  # refused before the service: a registration all the same
            self.service.refused_enrollment(e)
            raise
        r = self.service.enroll(request.user_id, blocks, update=request.update, actor=actor,
                                peer=_peer(context), deadline=deadline)
        return cv.enroll_response(r)

    @_unary
    def Authenticate(self, request: pb.AuthenticateRequest, context
                     ) -> pb.AuthenticateResponse:
        if not request.HasField("signal"):
            raise InvalidArgument("'signal' is missing.")
        block = cv.signal_to_block(request.signal)
        r = self.service.authenticate(request.user_id, block, _proof(context),
                                      peer=_peer(context))
        if r.session_token:
            self._deliver(r.session_token, context, "Authenticate")
        return cv.auth_response(r)

    @_unary
    def AuthenticateStream(self, request_iterator, context
                           ) -> pb.AuthenticateResponse:
        deadline = _check_deadline(context)
        first, stream = _start_and_chunks(request_iterator, "AuthenticateStream", "the user",
                                          self._idle_s, end_marker=True)
        chunks = _SignalChunks(stream, first)
        try:
            r = self.service.authenticate_stream(
                first.start.user_id, chunks, _proof(context),
                max_seconds=first.start.max_seconds, peer=_peer(context), deadline=deadline)
        finally:
            chunks.close()
        if r.session_token:
            self._deliver(r.session_token, context, "AuthenticateStream")
        return cv.auth_response(r)

    def _deliver(self, token: str, context: grpc.ServicerContext, method: str) -> None:
        """An accept's answer is about to go: its session is ended as undelivered if the
        call is gone now (:meth:`_undelivered`), or if the interceptor finds it gone once
        this handler has returned and drops the answer (:func:`on_dropped`)."""
        if not call_active(context):
            self._undelivered(token, context, method)
        peer = _peer(context)  # not the context: the hook is kept under it, weakly
        on_dropped(context, lambda: self._end_undelivered(token, peer, method))

    def _undelivered(self, token: str, context: grpc.ServicerContext, method: str) -> None:
        """An accept whose call ended before its answer (its deadline passed in the
        handler, or its client went away): nobody holds the token, so its session is
        ended at once (reason ``not_delivered``) instead of staying open, and counted
        open, for its whole TTL; the call ends with the status it ended with."""
        self._end_undelivered(token, _peer(context), method)
        _abort(context, DeadlineExceeded("the call ended before its answer: the session "
                                         "it opened was ended."))

    def _end_undelivered(self, token: str, peer: Any, method: str) -> None:
        try:
            self.service.end_session(token, "not_delivered", peer=peer,
                                     method=method)
        except NacfError:  # the store failed: logged and counted by the service
            log.error("the session of an undelivered accept could not be ended",
                      exc_info=True, extra={"event_type": "session_not_ended",
                                            "method": method})

    @_unary
    def Identify(self, request: pb.IdentifyRequest, context) -> pb.IdentifyResponse:
        t_start = time.perf_counter()
        try:
            if not request.HasField("signal"):
                raise InvalidArgument("'signal' is missing.")
            block = cv.signal_to_block(request.signal)
        except Exception as e:  # refused before the service: logged as its refusals are
            self.service.refused_identify(e, peer=_peer(context), t_start=t_start)
            raise
        r = self.service.identify(block, request.top_k, peer=_peer(context))
        # the matches among the top_k best: as many as top_k (identify_max_k can be
        # raised far beyond what a response of max_message_bytes holds)
        limit = int(self.service.config.max_message_bytes)
        return _fit(cv.identify_response(r), limit, lambda: ResourceExhausted(
            f"{len(r.candidates)} matching candidates do not fit in a response of "
            f"max_message_bytes ({limit} bytes): ask for a smaller top_k (got "
            f"{request.top_k}) or raise max_message_bytes."))

    @_unary
    def GetUser(self, request: pb.GetUserRequest, context) -> pb.GetUserResponse:
        """The user's record, or ``RESOURCE_EXHAUSTED`` when it does not fit in one
        response (``max_message_bytes``: hundreds of headsets with long ids), as a user
        alone too large for a ListUsers page: gRPC refused to send it ("Sent message
        larger than max", which said nothing of why) and the call was counted ``OK``."""
        user = self.service.get_user(request.user_id)
        limit = int(self.service.config.max_message_bytes)
        return _fit(pb.GetUserResponse(user=cv.user_message(user)), limit,
                    lambda: _too_large(user, limit, "read"))

    @_unary
    def DeleteUser(self, request, context) -> pb.DeleteUserResponse:
        actor, _ = _caller()
        self.service.delete_user(request.user_id, actor=actor, peer=_peer(context))
        return pb.DeleteUserResponse(deleted=True)

    @_unary
    def UnlockUser(self, request, context) -> pb.UnlockUserResponse:
        actor, _ = _caller()
        return pb.UnlockUserResponse(was_locked=self.service.unlock_user(
            request.user_id, actor=actor, peer=_peer(context)))

    @_unary
    def ListUsers(self, request, context) -> pb.ListUsersResponse:
        """A page of at most ``page_size`` users, and fewer when more would not fit in
        one response (``max_message_bytes``): gRPC refused to send a larger one
        (``RESOURCE_EXHAUSTED`` "Sent message larger than max", counted ``OK``), and no
        page size got past long user ids or users with many headsets. The page is read
        again with as many users as fit, so its ``next_page_token`` is the store's."""
        limit = int(self.service.config.max_message_bytes)
        size = request.page_size
        while True:
            users, token = self.service.list_users(size, request.page_token)
            resp = pb.ListUsersResponse(users=[cv.user_message(u) for u in users],
                                        next_page_token=token)
            if resp.ByteSize() <= limit:
                return resp
            room, fit = limit - _PAGE_TOKEN_ROOM, 0
            for m in resp.users:
                room -= pb.ListUsersResponse(users=[m]).ByteSize()
                if room < 0:
                    break
                fit += 1
            if len(users) == 1:
                raise _too_large(users[0], limit, "list")
            # fewer than this read, always: a page that fits only without its real token
            # (longer than the room kept for it) is cut further, not read again for ever
            size = max(min(fit, len(users) - 1), 1)

    @_unary
    def ValidateSession(self, request, context) -> pb.ValidateSessionResponse:
        return cv.session_response(self.service.validate_session(request.session_token))

    @_unary
    def EndSession(self, request, context) -> pb.EndSessionResponse:
        ended, dur = self.service.end_session(request.session_token, peer=_peer(context))
        return pb.EndSessionResponse(ended=ended, duration_seconds=dur)

    @_unary
    def EndUserSessions(self, request, context) -> pb.EndUserSessionsResponse:
        actor, _ = _caller()
        n = self.service.end_user_sessions(request.user_id, request.device_id or None,
                                           actor=actor, peer=_peer(context))
        return pb.EndUserSessionsResponse(ended=n)

    @_unary
    def RegisterDevice(self, request, context) -> pb.RegisterDeviceResponse:
        deadline = _check_deadline(context)
        actor, admin = _caller()
        if request.rotate and not admin:
            raise PermissionDenied("rotating a device secret (rotate=true) needs the admin "
                                   "scope; this key has the enroll scope.")
        # without admin, only a user's first headset (the enrollment desk's case)
        secret, rotated = self.service.bind_device(request.user_id, request.device_id,
                                                   rotate=request.rotate,
                                                   first_only=not admin, actor=actor,
                                                   peer=_peer(context), deadline=deadline)
        return pb.RegisterDeviceResponse(device_secret=secret, user_id=request.user_id,
                                         device_id=request.device_id, rotated=rotated)

    @_unary
    def GetStats(self, request, context) -> pb.GetStatsResponse:
        return pb.GetStatsResponse(**self.service.stats())

    @_unary
    def GetModel(self, request, context) -> pb.GetModelResponse:
        return pb.GetModelResponse(**self.service.model_info())

    @_stream_out
    def ContinuousAuthenticate(self, request_iterator, context):
        first, stream = _start_and_chunks(request_iterator, "ContinuousAuthenticate",
                                          "the session", self._idle_s, end_marker=True)
        chunks = _MarkedStream(stream, first)
        try:
            for u in self.service.continuous(first.start.session_token, chunks,
                                             cancelled=lambda: not context.is_active(),
                                             peer=_peer(context)):
                yield cv.continuous_response(u)
        finally:
            chunks.close()


def add_to_server(service: AuthService, server: grpc.Server) -> AuthServicer:
    """Register an :class:`AuthServicer` over ``service`` on ``server``."""
    servicer = AuthServicer(service)
    pb_grpc.add_AuthServiceServicer_to_server(servicer, server)
    return servicer


class StreamCutShort(NacfError):
    """An AuthenticateStream or ContinuousAuthenticate whose start declared
    ``sends_end_of_signal`` ended without ``end_of_signal``: its client cancelled it, or
    its connection dropped (grpcio's server can show a cancel as the plain end of the
    stream). Nothing is decided on it; the call ends CANCELLED."""

    code = "CANCELLED"


class _EndOfSignal:
    """A message with ``end_of_signal``: the last chunk's block, or ``None`` (a bare
    marker)."""

    __slots__ = ("block",)

    def __init__(self, block: Any) -> None:
        self.block = block


class _SignalChunks:
    """AuthenticateStream's chunks as ``SignalBlock``s, ending at ``end_of_signal`` (no
    message after it is read). A stream whose start declared ``sends_end_of_signal``
    and that ends without the marker raises :class:`StreamCutShort`; one that did not
    declare it (clients older than the field) ends with its stream, as it always did."""

    def __init__(self, stream: ClientStream, first: Any) -> None:
        self._stream = stream
        self._declared = bool(first.start.sends_end_of_signal)
        self._ended = bool(first.end_of_signal)  # a start that ends the signal: none

    def __iter__(self) -> Iterator[Any]:
        if self._ended:
            return
        for item in self._stream:
            if isinstance(item, _EndOfSignal):
                self._ended = True
                if item.block is not None:
                    yield item.block
                return
            yield item
        if self._declared:
            raise StreamCutShort(
                "the stream ended without end_of_signal, which its start message "
                "(sends_end_of_signal) said it would send: taken for a stream its client "
                "cancelled (or whose connection dropped); nothing was decided and no "
                "attempt counted. End the signal with a message whose end_of_signal is "
                "true.")

    def close(self) -> None:
        self._stream.close()


class _MarkedStream(ClientStream):
    """ContinuousAuthenticate's chunks as the service reads them (a :class:`ClientStream`,
    ``next(timeout)``), ending at ``end_of_signal`` (no message after it is read). A
    stream whose start declared ``sends_end_of_signal`` and that ends without the marker
    raises :class:`StreamCutShort`: grpcio's server can show a cancel as the plain end of
    the stream, while the call still looks active, and the call was counted OK."""

    def __init__(self, stream: ClientStream, first: Any) -> None:  # no reader of its own
        self._stream = stream
        self.idle_s = stream.idle_s
        self._declared = bool(first.start.sends_end_of_signal)
        self._ended = bool(first.end_of_signal)  # a start that ends the signal: no chunk

    def next(self, timeout: float | None) -> Any:
        if self._ended:
            raise StopIteration
        try:
            item = self._stream.next(timeout)
        except StopIteration:
            self._ended = True
            if self._declared:
                raise StreamCutShort(
                    "the stream ended without end_of_signal, which its start message "
                    "(sends_end_of_signal) said it would send: taken for a stream its "
                    "client cancelled (or whose connection dropped); the session stays "
                    "open. End the signal with a message whose end_of_signal is true.") \
                    from None
            raise
        if isinstance(item, _EndOfSignal):
            self._ended = True
            if item.block is None:
                raise StopIteration
            return item.block
        return item

    def close(self) -> None:
        self._stream.close()


def _start_and_chunks(request_iterator, rpc: str, names: str, idle_s: float, *,
                      end_marker: bool = False) -> tuple[Any, ClientStream]:
    """The ``start`` message of a client stream, and its ``chunk`` messages as
    ``SignalBlock``s (``InvalidArgument`` for a message out of place), read on a thread
    of their own: no message within ``idle_s`` → ``DeadlineExceeded`` (the start's
    here, a chunk's when the stream is iterated). With ``end_marker`` (AuthenticateStream)
    a message with ``end_of_signal`` comes as an :class:`_EndOfSignal` (see
    :class:`_SignalChunks`). Close the stream when done."""
    seen = itertools.count()

    def convert(m: Any) -> Any:
        i = next(seen)
        if i == 0:
            return m
        kind = m.WhichOneof("kind")
        marked = end_marker and m.end_of_signal
        if marked and kind is None:
            return _EndOfSignal(None)
        if kind != "chunk":
            raise InvalidArgument(
                f"message {i} of the stream must be a 'chunk'"
                f"{' (or a bare end_of_signal)' if end_marker else ''}; got {kind or 'none'}.")
        block = cv.signal_to_block(m.chunk, f"chunk[{i}]")
        return _EndOfSignal(block) if marked else block

    stream = ClientStream(request_iterator, convert, idle_s=idle_s)
    try:
        try:
            first = stream.next(idle_s)
        except StopIteration:
            first = None
        except TimeoutError:
            raise DeadlineExceeded(f"no {rpc} 'start' message within {idle_s:g} s "
                                   "(signal_loss_s): the server ends a stream that "
                                   "stalls.") from None
        if first is None or first.WhichOneof("kind") != "start":
            raise InvalidArgument(
                f"the first {rpc} message must be 'start' (naming {names}); "
                f"got {'nothing' if first is None else first.WhichOneof('kind')}.")
    except BaseException:
        stream.close()
        raise
    return first, stream
