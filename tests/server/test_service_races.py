"""Races a soak test of ``nacf serve`` found between admin calls and the calls they
overlap, reproduced in process by landing the concurrent call at the racing point."""

from __future__ import annotations

import threading

import grpc
import pytest
from _server_support import CH16, SFREQ, StatusRecorder, eeg, signal_block, sqlite_service

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core.server.converters import block_to_signal
from nacf_core.server.servicer import AuthServicer


@pytest.fixture
def svc(tmp_path, model_path):
    service = sqlite_service(tmp_path, model_path)
    yield service
    service.store.close()


def test_list_users_skips_a_user_deleted_while_the_page_is_read(svc):
    """ListUsers reads a page, then each listed user's headsets: a DeleteUser landing in
    between made the whole page NOT_FOUND (seen under load as ListUsers answering
    NOT_FOUND while an admin deleted users)."""
    x = eeg(1, 3, 0, 40)
    for u in ("a1", "a2", "a3"):
        svc.enroll(u, [signal_block(x)])
        svc.register_device(u, f"hs-{u}")
    store = svc.store
    orig = store.list_users

    def page_then_delete(*a, **k):
        page = orig(*a, **k)
        store.delete_user("a2")  # a concurrent DeleteUser, after the page was read
        return page

    store.list_users = page_then_delete
    users, token = svc.list_users(10)
    assert [u.user_id for u in users] == ["a1", "a3"]
    assert [u.device_ids for u in users] == [["hs-a1"], ["hs-a3"]]
    assert token == ""


def test_end_session_ended_by_a_concurrent_call_is_not_reported_ended_again(svc):
    """EndSession reads the session, then ends it: another end landing in between (a
    second EndSession, ContinuousAuthenticate ending it, EndUserSessions) made both
    calls answer ended=true, and the session's duration was observed twice."""
    svc.enroll("b1", [signal_block(eeg(1, 3, 0, 40))])
    store = svc.store
    token = store.create_session("b1", 60).token
    orig = store.get_session

    def read_then_end(tok):
        s = orig(tok)
        store.end_session(tok, "ended_by_admin")  # the concurrent call, after the read
        return s

    store.get_session = read_then_end
    ended, _ = svc.end_session(token)
    store.get_session = orig
    assert not ended
    assert orig(token).end_reason == "ended_by_admin"
    exposition = svc.metrics.exposition().decode()
    assert "nacfauth_session_duration_seconds_count 0.0" in exposition


def test_continuous_stream_of_a_user_deleted_meanwhile_ends_with_an_update(svc):
    """A DeleteUser while ContinuousAuthenticate streams removes the session: the check
    of the session before each window raised NotFound, so the stream failed NOT_FOUND
    instead of ending with an ENDED update (as it does when the renewal finds the
    session gone)."""
    svc.enroll("c1", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("c1", 60).token
    x = eeg(1, 3, 44, 12)
    step = int(SFREQ / 2)

    deleted = threading.Event()

    def chunks():
        for i in range(0, x.shape[0], step):
            if i == int(5 * SFREQ):
                svc.delete_user("c1")
                deleted.set()
            yield signal_block(x[i:i + step])

    updates = list(svc.continuous(token, chunks()))
    # the stream ends as soon as the session is gone, while DeleteUser may still run in
    # the stream's reader thread (its WAL checkpoint): the fixture must not close the
    # store under it (closing a SQLite connection in use crashes the interpreter)
    assert deleted.wait(30)
    assert updates and updates[-1].state == "ended"
    assert updates[-1].reason == "user_deleted"  # as the store ends its sessions
    assert all(u.state != "ended" for u in updates[:-1])



class _Context(StatusRecorder):
    """What the servicer uses of a grpc.ServicerContext, with the call's liveness in the
    test's hands (grpc_testing's context cannot be cancelled between two updates)."""

    def __init__(self) -> None:
        self.active, self.remaining = True, None

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self):
        return self.remaining

    def invocation_metadata(self):
        return ()


def _continuous_call(svc, user):
    svc.enroll(user, [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session(user, 600).token
    x = eeg(1, 3, 44, 16)
    step = int(SFREQ / 2)
    reqs = [pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=token))]
    reqs += [pb.ContinuousAuthenticateRequest(chunk=block_to_signal(x[i:i + step], SFREQ, CH16))
             for i in range(0, x.shape[0], step)]
    ctx = _Context()
    return ctx, AuthServicer(svc).ContinuousAuthenticate(iter(reqs), ctx)


def test_a_continuous_stream_whose_call_is_gone_ends_cancelled(svc):
    """A client that cancels ContinuousAuthenticate (or disconnects) after an update:
    the stream noticed the call was gone and returned, or gRPC closed it, without a
    status, so nacfauth_auth_requests_total counted it "OK" (returned) or "INTERNAL"
    (closed): a soak test's cancelled streams inflated the success rate."""
    ctx, call = _continuous_call(svc, "d1")
    assert next(call).state == pb.ContinuousAuthenticateResponse.VERIFIED
    ctx.active = False  # the client cancelled
    assert list(call) == []
    assert ctx.code() == grpc.StatusCode.CANCELLED
    ctx, call = _continuous_call(svc, "d2")
    assert next(call).state == pb.ContinuousAuthenticateResponse.VERIFIED
    call.close()  # gRPC closes the stream of a call that is gone
    assert ctx.code() == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("declared, marked, status", [
    (True, False, grpc.StatusCode.CANCELLED),  # cut short: cancelled
    (True, True, None),                        # ended by its client: OK
    (False, False, None),                      # a client older than the marker: OK
])
def test_a_continuous_stream_cut_short_without_its_end_marker_is_cancelled(
        svc, declared, marked, status):
    """grpcio's server can show a client's cancel to the handler as the plain end of the
    client's stream, while the call is still marked active: ContinuousAuthenticate
    returned as for a client that closed its side, and the call was counted OK in
    nacfauth_auth_requests_total. As AuthenticateStream does, a client may now declare
    (``ContinuousStart.sends_end_of_signal``) that it ends its signal with
    ``end_of_signal``: a stream of such a client that ends without it was cut short and
    the call ends CANCELLED; the session stays open either way."""
    svc.enroll("m1", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("m1", 600).token
    x = eeg(1, 3, 44, 8)
    step = int(SFREQ / 2)
    reqs = [pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(
        session_token=token, sends_end_of_signal=declared))]
    reqs += [pb.ContinuousAuthenticateRequest(chunk=block_to_signal(x[i:i + step], SFREQ, CH16))
             for i in range(0, x.shape[0], step)]
    if marked:
        reqs[-1].end_of_signal = True
        # a message after the marker is not read
        reqs.append(pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart()))
    ctx = _Context()
    updates = []
    try:
        for u in AuthServicer(svc).ContinuousAuthenticate(iter(reqs), ctx):
            updates.append(u)
    except Exception:  # noqa: BLE001 - _Context.abort raises, as grpcio's does
        pass
    assert [u.state for u in updates] == [pb.ContinuousAuthenticateResponse.VERIFIED] * 2
    assert ctx.code() == status
    assert svc.validate_session(token).valid


@pytest.mark.parametrize("remaining, status", [
    (0.05, grpc.StatusCode.DEADLINE_EXCEEDED),  # cut at its deadline: the client's cancel
    (30.0, grpc.StatusCode.CANCELLED),          # cut well before it: the client went away
    (None, grpc.StatusCode.CANCELLED),          # no deadline
])
@pytest.mark.parametrize("method", ["ContinuousAuthenticate", "AuthenticateStream"])
def test_a_declared_stream_cut_short_at_its_deadline_is_deadline_exceeded(
        svc, method, remaining, status):
    """A client whose deadline passes cancels its call, and grpcio's server can show that
    cancel as the plain end of the stream while the call still looks active: a stream
    declaring ``sends_end_of_signal`` is then cut short (``StreamCutShort``), and the call
    was counted CANCELLED whatever ended it; a ContinuousAuthenticate of a 2 s timeout
    over ``nacf serve`` was counted CANCELLED 3 times in 4 while its client saw
    DEADLINE_EXCEEDED each time (the error-rate alert and a latency SLO never saw the
    missed deadlines). The call now ends as a call gone under its handler does
    (:func:`ended_status`): DEADLINE_EXCEEDED at its deadline, else CANCELLED."""
    svc.config.require_device_proof = False
    svc.enroll("c9", [signal_block(eeg(1, 3, 0, 40))])
    x = eeg(1, 3, 44, 2)
    chunk = block_to_signal(x, SFREQ, CH16)
    if method == "ContinuousAuthenticate":
        token = svc.store.create_session("c9", 600).token
        reqs = [pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(
            session_token=token, sends_end_of_signal=True)),
            pb.ContinuousAuthenticateRequest(chunk=chunk)]
    else:
        reqs = [pb.AuthenticateStreamRequest(start=pb.StreamStart(
            user_id="c9", sends_end_of_signal=True)),
            pb.AuthenticateStreamRequest(chunk=chunk)]
    ctx = _Context()
    ctx.remaining = remaining
    try:
        out = getattr(AuthServicer(svc), method)(iter(reqs), ctx)
        if method == "ContinuousAuthenticate":
            list(out)
    except Exception:  # noqa: BLE001 - _Context.abort raises, as grpcio's does
        pass
    assert ctx.code() == status


def test_a_stream_of_a_user_deleted_before_its_first_chunk_is_not_found_not_an_attack(svc):
    """AuthenticateStream reads the user when it opens and the headset when the first
    chunk's proof is checked: a DeleteUser in between (the headset goes with the user)
    made a genuine stream fail UNAUTHENTICATED, logged and counted as a
    ``device_proof_unknown_device`` security event that never happened."""
    import time as _time

    from nacf_core.errors import NotFound
    from nacf_core.service import DeviceProof, device_proof

    x = eeg(1, 3, 0, 40)
    svc.enroll("c1", [signal_block(x)])
    secret = svc.register_device("c1", "hs-c1")
    b = signal_block(eeg(1, 3, 40, 10), "hs-c1")
    ts = int(_time.time())
    proof = DeviceProof("hs-c1", str(ts), device_proof(secret, "c1", "hs-c1", ts, b.raw))

    def chunks():
        svc.store.delete_user("c1")  # the concurrent DeleteUser, before the first chunk
        yield b

    with pytest.raises(NotFound):
        svc.authenticate_stream("c1", chunks(), proof, peer="ipv4:127.0.0.1")
    exposition = svc.metrics.exposition().decode()
    assert "device_proof_unknown_device" not in exposition


class _Gone(grpc.RpcError):
    """What reading the client's stream raises once its call has ended."""


@pytest.mark.parametrize("stream_end", ["fails", "ends short"])
@pytest.mark.parametrize("remaining, status", [(-0.1, grpc.StatusCode.DEADLINE_EXCEEDED),
                                               (None, grpc.StatusCode.CANCELLED)])
def test_a_client_stream_whose_call_ended_under_the_handler_ends_with_that_status(
        svc, stream_end, remaining, status):
    """AuthenticateStream reading its client's stream when the call's deadline passes
    (or the client goes away): the read fails, and the call was counted CANCELLED even
    past its deadline; or the stream just ends, and the call was counted
    INVALID_ARGUMENT ("the stream carried no Signal chunk"), the client's fault."""
    svc.enroll("e1", [signal_block(eeg(1, 3, 0, 40))])
    ctx = _Context()
    ctx.remaining = 30.0

    def requests():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="e1"))
        ctx.active, ctx.remaining = False, remaining  # the call ends here
        if stream_end == "fails":
            raise _Gone()

    with pytest.raises(Exception):
        AuthServicer(svc).AuthenticateStream(requests(), ctx)
    assert ctx.code() == status


def test_a_rotation_racing_a_first_registration_is_audited_and_ends_its_sessions(
        svc, caplog):
    """RegisterDevice with rotate=true reads the device, then writes: a first registration
    of the same headset for the same user landing in between (another admin, a retry)
    made the store's write a rotation, yet the call audited it "registered" and left the
    sessions opened with the secret it replaced open. What the write did decides now."""
    import logging

    from nacf_core.errors import NotFound

    svc.enroll("r1", [signal_block(eeg(1, 3, 0, 40))])
    store = svc.store
    orig = store.get_device
    opened = []

    def unknown_then_registered(device_id):
        try:
            return orig(device_id)
        except NotFound:
            # the concurrent first registration and a session opened with its secret,
            # after this call found the headset unknown
            store.register_device("r1", device_id, "secret-0123456789abcdef")
            opened.append(store.create_session("r1", 600, device_id=device_id).token)
            raise

    store.get_device = unknown_then_registered
    with caplog.at_level(logging.INFO, logger="nacf"):
        secret = svc.register_device("r1", "hs-r1", rotate=True)
    store.get_device = orig
    assert orig("hs-r1").secret == secret
    assert store.get_session(opened[0]).end_reason == "device_rotated"
    changes = [(r.change, r.sessions_ended) for r in caplog.records
               if getattr(r, "event_type", "") == "account_change"
               and getattr(r, "method", "") == "RegisterDevice"]
    assert changes == [("rotated", 1)]
    # and a first registration the call itself made is still "registered", ending nothing
    with caplog.at_level(logging.INFO, logger="nacf"):
        caplog.clear()
        svc.register_device("r1", "hs-r1b", rotate=True)
    assert [(r.change, r.sessions_ended) for r in caplog.records
            if getattr(r, "method", "") == "RegisterDevice"] == [("registered", 0)]


def test_a_rotation_ends_the_old_secrets_sessions_in_its_own_transaction(svc):
    """RegisterDevice with rotate=true wrote the new secret, then ended the sessions opened
    with the old one in a second transaction: when that one failed (the store unreachable
    for a moment, the process stopped in between) the rotation was answered OK and those
    sessions stayed valid, renewed by ContinuousAuthenticate up to session_max_age_s, though
    rotating is what an admin does about a stolen headset. They now end in the rotation's
    own transaction: both or neither."""
    from nacf_core.errors import Unavailable

    svc.enroll("r2", [signal_block(eeg(1, 3, 0, 40))])
    svc.register_device("r2", "hs-r2")
    store = svc.store
    old = store.create_session("r2", 600, device_id="hs-r2").token
    other = store.create_session("r2", 600, device_id="hs-r2b").token

    def down(*a, **k):
        raise Unavailable("the store is unreachable (test)")

    store.end_user_sessions = down
    try:
        secret, rotated = svc.bind_device("r2", "hs-r2", rotate=True)
    finally:
        del store.end_user_sessions
    assert rotated and store.get_device("hs-r2").secret == secret
    v = svc.validate_session(old)
    assert (v.valid, v.reason) == (False, "device_rotated")
    assert svc.validate_session(other).valid  # another headset's session stays


@pytest.mark.parametrize("when", ["stream_before_first_chunk", "before_the_write"])
def test_an_attempt_whose_user_is_deleted_while_it_runs_is_logged_and_counted(svc, caplog,
                                                                             when):
    """An authentication refused NOT_FOUND because DeleteUser came while it ran (an
    AuthenticateStream before its first chunk's proof; an Authenticate before its write)
    left no auth_attempt line and no count, where one refused for an unknown user at its
    start has both (README: every attempt has its line, those refused before a decision
    too, unknown_user counted in nacfauth_failed_auth_attempts_total)."""
    import logging
    import time as _time

    from nacf_core.errors import NotFound
    from nacf_core.service import DeviceProof, device_proof

    svc.enroll("d1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("d1", "hs-d1")
    b = signal_block(eeg(1, 3, 40, 10), "hs-d1")
    ts = int(_time.time())
    proof = DeviceProof("hs-d1", str(ts), device_proof(secret, "d1", "hs-d1", ts, b.raw))
    store = svc.store
    with caplog.at_level(logging.INFO, logger="nacf.service"):
        if when == "stream_before_first_chunk":
            def chunks():
                store.delete_user("d1")  # the concurrent DeleteUser
                yield b

            with pytest.raises(NotFound):
                svc.authenticate_stream("d1", chunks(), proof, peer="ipv4:127.0.0.1:7")
        else:
            orig = store.finish_authentication

            def deleted_first(user_id, *a, **k):
                store.delete_user(user_id)
                return orig(user_id, *a, **k)

            store.finish_authentication = deleted_first
            try:
                with pytest.raises(NotFound):
                    svc.authenticate("d1", b, proof, peer="ipv4:127.0.0.1:7")
            finally:
                del store.finish_authentication
    assert svc.metrics.registry.get_sample_value(
        "nacfauth_failed_auth_attempts_total", {"reason": "unknown_user"}) == 1
    lines = [(r.user_id, r.reason, r.method, r.ip_address) for r in caplog.records
             if getattr(r, "event_type", None) == "auth_attempt"]
    method = "AuthenticateStream" if when.startswith("stream") else "Authenticate"
    assert lines == [("d1", "unknown_user", method, "127.0.0.1")], lines


@pytest.mark.parametrize("change", ["device_rotated", "template_replaced"])
def test_an_accept_refused_for_an_account_change_meanwhile_is_logged_and_counted(
        svc, caplog, change):
    """An Authenticate that accepted against a template, or with a device secret, that an
    admin replaced or rotated while it ran is refused FAILED_PRECONDITION with nothing
    written (no session on the old credentials): it left no auth_attempt line and no
    count, so a proof signed with a secret just rotated away (a stolen headset's) racing
    its rotation went unseen. It is logged (reason device_rotated / template_replaced)
    and counted in nacfauth_failed_auth_attempts_total so."""
    import logging
    import time as _time

    from nacf_core.errors import FailedPrecondition
    from nacf_core.service import DeviceProof, device_proof

    svc.enroll("e1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("e1", "hs-e1")
    b = signal_block(eeg(1, 3, 40, 10), "hs-e1")
    ts = int(_time.time())
    proof = DeviceProof("hs-e1", str(ts), device_proof(secret, "e1", "hs-e1", ts, b.raw))
    store = svc.store
    orig = store.finish_authentication

    def changed_first(user_id, *a, **k):
        if change == "device_rotated":
            store.register_device(user_id, "hs-e1", "another-secret-0123456789")
        else:
            tpl = store.get_template(user_id)
            store.put_template(user_id, tpl.blob, tpl.model_version)
        return orig(user_id, *a, **k)

    store.finish_authentication = changed_first
    try:
        with caplog.at_level(logging.INFO, logger="nacf.service"):
            with pytest.raises(FailedPrecondition):
                svc.authenticate("e1", b, proof, peer="ipv4:127.0.0.1:8")
    finally:
        del store.finish_authentication
    assert svc.metrics.registry.get_sample_value(
        "nacfauth_failed_auth_attempts_total", {"reason": change}) == 1
    lines = [(r.user_id, r.reason, r.method, r.ip_address) for r in caplog.records
             if getattr(r, "event_type", None) == "auth_attempt"]
    assert lines == [("e1", change, "Authenticate", "127.0.0.1")], lines
    assert store.count_active_sessions() == 0
