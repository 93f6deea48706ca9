"""End to end over a real loopback port with a grpcio client: every RPC, every error
path, the device proof, lockout, sessions, streaming, limits.  One server per module."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from _server_support import CH16, SFREQ, eeg, make_pipeline, proof_md
from prometheus_client import CollectorRegistry

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.config import Config
from nacf_core.errors import NotFound
from nacf_core.metrics import Metrics
from nacf_core.pad import PresentationAttackDetector
from nacf_core.server.app import NacfServer
from nacf_core.server.converters import block_to_signal
from nacf_core.service import AuthService
from nacf_core.store import open_store

ALL = "key-all-0123456789"
AUTH_ONLY = "key-auth-0123456789"
ENROLL_ONLY = "key-enroll-0123456789"
MSG_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def srv(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("grpc")
    cfg = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(d),
                 lockout_threshold=3, lockout_seconds=600, rate_limit_per_s=1000,
                 rate_limit_burst=1000, max_message_bytes=MSG_LIMIT, signal_loss_s=3.0,
                 api_keys={ALL: frozenset({"authenticate", "enroll", "admin"}),
                           AUTH_ONLY: frozenset({"authenticate"}),
                           ENROLL_ONLY: frozenset({"enroll"})})
    metrics = Metrics(CollectorRegistry())
    store = open_store(f"sqlite:///{d / 'nacf.db'}", bytes(range(32)))
    pipeline = make_pipeline(model_path)
    pad = PresentationAttackDetector(list(pipeline.model.ch_names))
    service = AuthService(store, pipeline, cfg, metrics=metrics, pad=pad)
    server = NacfServer(cfg, service, metrics=metrics, sidecar=False).start()
    chan = grpc.insecure_channel(server.address, options=[
        ("grpc.max_send_message_length", 200 * 1024 * 1024)])
    stub = pbg.AuthServiceStub(chan)
    yield server, stub, metrics
    chan.close()
    server.stop(0)
    store.close()


MD = (("x-api-key", ALL),)


def sig(x, device_id=""):
    return block_to_signal(x, SFREQ, CH16, device_id)


def code_of(fn, *a, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, **kw)
    return ei.value.code(), ei.value.details()


def enroll(stub, user, subject, update=False):
    return stub.Enroll(pb.EnrollRequest(user_id=user, signals=[sig(eeg(subject, 3, 0, 40))],
                                        update=update), metadata=MD, timeout=30)


def device(stub, user, dev):
    return stub.RegisterDevice(pb.RegisterDeviceRequest(user_id=user, device_id=dev),
                               metadata=MD, timeout=10).device_secret


def auth(stub, user, x, secret, dev, ts=None, md_extra=()):
    s = sig(x, dev)
    md = (*MD, *proof_md(secret, user, dev, s.samples, ts), *md_extra)
    return stub.Authenticate(pb.AuthenticateRequest(user_id=user, signal=s), metadata=md,
                             timeout=10)


# ------------------------------------------------------------------ happy path
def test_enroll_authenticate_session_cycle(srv, caplog):
    server, stub, metrics = srv
    r = enroll(stub, "alice", 1)
    assert r.template_version == 1 and r.epochs_used > 0 and r.model_version
    assert 0 <= r.quality <= 1
    secret = device(stub, "alice", "hs-1")
    assert len(secret) >= 32
    ok = auth(stub, "alice", eeg(1, 3, 60, 8), secret, "hs-1")
    assert ok.accepted and ok.score >= ok.threshold and ok.session_token
    assert ok.windows_used >= 1 and ok.model_version == r.model_version
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=ok.session_token),
                             metadata=MD)
    assert v.valid and v.user_id == "alice" and v.expires_at_unix > time.time()
    with caplog.at_level("INFO", logger="nacf.service"):
        e = stub.EndSession(pb.EndSessionRequest(session_token=ok.session_token), metadata=MD)
    assert e.ended
    (line,) = [r for r in caplog.records if getattr(r, "event_type", "") == "session_ended"]
    assert (line.user_id, line.method, line.ip_address) == ("alice", "EndSession", "127.0.0.1")
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=ok.session_token),
                             metadata=MD)
    assert not v.valid and v.reason == "ended"
    assert not stub.ValidateSession(pb.ValidateSessionRequest(session_token="nope"),
                                    metadata=MD).valid
    assert code_of(stub.EndSession, pb.EndSessionRequest(session_token="nope"),
                   metadata=MD)[0] == grpc.StatusCode.NOT_FOUND
    out = metrics.exposition().decode()
    assert 'nacfauth_auth_requests_total{method="Authenticate",status="OK"' in out
    assert 'nacfauth_auth_decisions_total{decision="accept"}' in out


def test_impostor_rejected_no_session(srv):
    _, stub, _ = srv
    enroll(stub, "bob", 1)
    secret = device(stub, "bob", "hs-bob")
    r = auth(stub, "bob", eeg(5, 7, 0, 8), secret, "hs-bob")
    assert not r.accepted and not r.session_token and r.reasons
    stub.UnlockUser(pb.UnlockUserRequest(user_id="bob"), metadata=MD)


def test_duplicate_enrollment_and_update(srv):
    _, stub, _ = srv
    enroll(stub, "carol", 2)
    c, msg = code_of(enroll, stub, "carol", 2)
    assert c == grpc.StatusCode.ALREADY_EXISTS and "update" in msg
    assert enroll(stub, "carol", 2, update=True).template_version == 2


def test_users_admin(srv):
    _, stub, _ = srv
    for u in ("u1", "u2", "u3"):
        enroll(stub, u, 3)
    device(stub, "u1", "hs-u1")
    g = stub.GetUser(pb.GetUserRequest(user_id="u1"), metadata=MD).user
    assert g.user_id == "u1" and g.template_version == 1 and not g.locked
    seen, token = [], ""
    while True:
        page = stub.ListUsers(pb.ListUsersRequest(page_size=2, page_token=token), metadata=MD)
        assert len(page.users) <= 2
        seen += [u.user_id for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert {"u1", "u2", "u3"} <= set(seen) and len(seen) == len(set(seen))
    assert stub.DeleteUser(pb.DeleteUserRequest(user_id="u3"), metadata=MD).deleted
    for fn, req in ((stub.GetUser, pb.GetUserRequest(user_id="u3")),
                    (stub.DeleteUser, pb.DeleteUserRequest(user_id="u3")),
                    (stub.UnlockUser, pb.UnlockUserRequest(user_id="ghost"))):
        assert code_of(fn, req, metadata=MD)[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.ListUsers, pb.ListUsersRequest(page_size=5000),
                   metadata=MD)[0] == grpc.StatusCode.INVALID_ARGUMENT
    st = stub.GetStats(pb.GetStatsRequest(), metadata=MD)
    assert st.total_users >= 2 and st.auth_attempts_today >= 0


def test_identify_top_k(srv):
    _, stub, _ = srv
    enroll(stub, "idA", 1)
    enroll(stub, "idB", 5)
    r = stub.Identify(pb.IdentifyRequest(signal=sig(eeg(5, 3, 60, 8)), top_k=2), metadata=MD)
    assert 1 <= len(r.candidates) <= 2
    assert r.candidates[0].user_id == "idB"
    assert [c.score for c in r.candidates] == sorted((c.score for c in r.candidates),
                                                     reverse=True)
    # only matches are answered: no score of a user the signal does not match (a
    # hill-climbing oracle), so a person nobody enrolled gets an empty list
    assert all(c.above_threshold and c.score >= r.threshold for c in r.candidates)
    assert "idA" not in [c.user_id for c in r.candidates]
    r = stub.Identify(pb.IdentifyRequest(signal=sig(eeg(7, 3, 60, 8)), top_k=100),
                      metadata=MD)
    assert list(r.candidates) == [] and r.threshold > 0
    assert code_of(stub.Identify, pb.IdentifyRequest(signal=sig(eeg(5, 3, 60, 8)), top_k=1000),
                   metadata=MD)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_identify_default_top_k_stays_within_a_smaller_identify_max_k(srv):
    """top_k 0 means the default, 5 (the proto). With identify_max_k below 5 an Identify
    that left top_k out was refused INVALID_ARGUMENT "'top_k' must be in [1, 2], got 0",
    though 0 is the documented default: the default is now at most identify_max_k, and
    the refusal of a top_k too large says what 0 means."""
    server, stub, _ = srv
    for u in ("idK1", "idK2", "idK3"):  # one person three times: three matches
        enroll(stub, u, 9)
    probe = sig(eeg(9, 3, 60, 8))
    server.service.config.identify_max_k = 2
    try:
        r = stub.Identify(pb.IdentifyRequest(signal=probe), metadata=MD, timeout=30)
        assert len(r.candidates) == 2
        assert {c.user_id for c in r.candidates} <= {"idK1", "idK2", "idK3"}
        c, m = code_of(stub.Identify, pb.IdentifyRequest(signal=probe, top_k=3), metadata=MD)
        assert c == grpc.StatusCode.INVALID_ARGUMENT
        assert "[1, 2]" in m and "got 3" in m and "0" in m.split("got")[0], m
    finally:
        server.service.config.identify_max_k = 100
    r = stub.Identify(pb.IdentifyRequest(signal=probe), metadata=MD, timeout=30)
    assert len(r.candidates) == 3


def test_identify_leaves_locked_users_out_and_logs_each_call(srv, caplog):
    """A locked user's template is not scored by Identify either (else Identify would be
    an unlimited oracle against a template whose 1:1 attempts are refused)."""
    server, stub, _ = srv
    enroll(stub, "idL", 5)
    store = server.service.store
    for _ in range(3):  # lockout_threshold=3
        store.register_failure("idL", 3, 600)
    assert stub.GetUser(pb.GetUserRequest(user_id="idL"), metadata=MD).user.locked
    probe = sig(eeg(5, 3, 70, 8))
    with caplog.at_level("INFO", logger="nacf.service"):
        r = stub.Identify(pb.IdentifyRequest(signal=probe, top_k=100), metadata=MD)
    assert "idL" not in [c.user_id for c in r.candidates]
    logged = [x for x in caplog.records if getattr(x, "event_type", "") == "identify"]
    assert logged and logged[-1].locked_left_out >= 1 and logged[-1].ip_address
    assert stub.UnlockUser(pb.UnlockUserRequest(user_id="idL"), metadata=MD).was_locked
    r = stub.Identify(pb.IdentifyRequest(signal=probe, top_k=100), metadata=MD)
    assert "idL" in [c.user_id for c in r.candidates]


# ------------------------------------------------------------------ device proof
def test_device_proof_paths(srv):
    _, stub, _ = srv
    enroll(stub, "dave", 1)
    secret = device(stub, "dave", "hs-dave")
    assert code_of(device, stub, "dave", "hs-dave")[0] == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(device, stub, "ghost", "hs-x")[0] == grpc.StatusCode.NOT_FOUND
    x = eeg(1, 3, 60, 8)
    s = sig(x, "hs-dave")
    req = pb.AuthenticateRequest(user_id="dave", signal=s)
    # missing
    c, m = code_of(stub.Authenticate, req, metadata=MD)
    assert c == grpc.StatusCode.UNAUTHENTICATED and "x-device-proof" in m
    # wrong secret
    c, m = code_of(stub.Authenticate, req,
                   metadata=(*MD, *proof_md("not-the-secret", "dave", "hs-dave", s.samples)))
    assert c == grpc.StatusCode.UNAUTHENTICATED and "does not verify" in m
    # a headset not bound to this user gets the same answer: who owns which headset is
    # not the caller's to learn
    s2 = sig(x, "hs-erin")
    c2, m2 = code_of(stub.Authenticate, pb.AuthenticateRequest(user_id="dave", signal=s2),
                     metadata=(*MD, *proof_md("any-secret", "dave", "hs-erin", s2.samples)))
    assert (c2, m2) == (c, m)
    # stale
    c, m = code_of(stub.Authenticate, req, metadata=(*MD, *proof_md(
        secret, "dave", "hs-dave", s.samples, int(time.time()) - 120)))
    assert c == grpc.StatusCode.UNAUTHENTICATED and "stale" in m
    # proof over other samples
    other = sig(eeg(1, 3, 70, 8), "hs-dave").samples
    c, _ = code_of(stub.Authenticate, req,
                   metadata=(*MD, *proof_md(secret, "dave", "hs-dave", other)))
    assert c == grpc.StatusCode.UNAUTHENTICATED
    # valid, then replayed
    md = (*MD, *proof_md(secret, "dave", "hs-dave", s.samples))
    assert stub.Authenticate(req, metadata=md).accepted
    c, m = code_of(stub.Authenticate, req, metadata=md)
    assert c == grpc.StatusCode.UNAUTHENTICATED and "replay" in m
    # a device bound to another user
    enroll(stub, "erin", 2)
    c, _ = code_of(device, stub, "erin", "hs-dave")
    assert c == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("key", ["x-device-id", "x-device-timestamp", "x-device-proof"])
def test_a_device_proof_key_given_twice_is_refused(srv, key):
    """A request carrying one of the x-device-* keys twice was judged on the last value
    (the API key is read from the first): a valid proof after a garbage one was accepted,
    so what a proxy or gateway in front checked (the first value) was not what nacf
    verified. Such a proof is refused as malformed, on both RPCs, whichever value is good."""
    server, stub, _ = srv
    user, dev = f"twice-{key}", f"hs-twice-{key}"
    enroll(stub, user, 1)
    secret = device(stub, user, dev)
    other = {"x-device-id": "hs-other", "x-device-timestamp": str(int(time.time()) - 1),
             "x-device-proof": "0" * 64}[key]
    for i, start in enumerate((60, 68)):
        s = sig(eeg(1, 3, start, 8), dev)
        good = proof_md(secret, user, dev, s.samples)
        at = [k for k, _ in good].index(key)
        # the extra value first, the valid one last
        md = (*MD, *good[:at], (key, other), *good[at:])
        if i == 0:
            c, m = code_of(stub.Authenticate, pb.AuthenticateRequest(user_id=user, signal=s),
                           metadata=md, timeout=10)
        else:
            def gen():
                yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id=user))
                for p in chunks(eeg(1, 3, start, 8)):
                    yield pb.AuthenticateStreamRequest(chunk=sig(p, dev))

            c, m = code_of(stub.AuthenticateStream, gen(), metadata=md, timeout=30)
        assert c == grpc.StatusCode.UNAUTHENTICATED and f"{key} given 2 times" in m, m
        row = server.service.store.recent_attempts(user, limit=1)[0]
        assert (row.success, row.reason) == (False, "device_proof_malformed")
    # neither call was decided: no accepted attempt, no session
    assert not [a for a in server.service.store.recent_attempts(user, limit=10)
                if a.method.startswith("Authenticate") and a.success]


def test_proof_not_required_when_disabled(srv):
    server, stub, _ = srv
    enroll(stub, "frank", 1)
    server.service.config.require_device_proof = False
    try:
        r = stub.Authenticate(pb.AuthenticateRequest(user_id="frank",
                                                     signal=sig(eeg(1, 3, 60, 8))),
                              metadata=MD)
        assert r.accepted
    finally:
        server.service.config.require_device_proof = True


# ------------------------------------------------------------------ lockout
def test_lockout_after_n_failures_and_unlock(srv):
    _, stub, metrics = srv
    enroll(stub, "gina", 1)
    secret = device(stub, "gina", "hs-gina")
    for i in range(3):  # lockout_threshold=3; a fresh probe each time (no replay)
        assert not auth(stub, "gina", eeg(5, 7, 8 * i, 8), secret, "hs-gina").accepted
    c, m = code_of(auth, stub, "gina", eeg(1, 3, 60, 8), secret, "hs-gina")
    assert c == grpc.StatusCode.FAILED_PRECONDITION and "locked" in m
    assert stub.GetUser(pb.GetUserRequest(user_id="gina"), metadata=MD).user.locked
    assert stub.UnlockUser(pb.UnlockUserRequest(user_id="gina"), metadata=MD).was_locked
    assert auth(stub, "gina", eeg(1, 3, 62, 8), secret, "hs-gina").accepted
    assert "nacfauth_lockouts_total 1.0" in metrics.exposition().decode()


def test_refused_attempts_are_counted_logged_and_audited_with_the_callers_address(
        srv, caplog):
    """Attempts refused before any score still leave a trace an operator can follow to
    the caller: an unknown user (counted ``unknown_user``: probing for user ids shows
    on the brute-force alert), a locked user (logged and audited), a refused device proof
    (its security event and audit row carry the address)."""
    server, stub, metrics = srv
    store = server.service.store

    def failed(reason):
        return _metric(metrics, "nacfauth_failed_auth_attempts_total").get(
            (("reason", reason),), 0.0)

    def lines(**want):
        return [r for r in caplog.records
                if all(getattr(r, k, None) == v for k, v in want.items())]

    x = eeg(1, 3, 60, 8)
    n = failed("unknown_user")
    with caplog.at_level("INFO", logger="nacf.service"):
        c, _ = code_of(auth, stub, "nobody-here", x, "s", "hs-nobody")
    assert c == grpc.StatusCode.NOT_FOUND and failed("unknown_user") == n + 1
    (r,) = lines(event_type="auth_attempt", user_id="nobody-here")
    assert (r.success, r.reason, r.ip_address) == (False, "unknown_user", "127.0.0.1")
    assert r.peer.startswith("ipv4:127.0.0.1:") and r.duration_ms >= 0

    enroll(stub, "refused", 1)
    secret = device(stub, "refused", "hs-refused")
    with caplog.at_level("INFO", logger="nacf.service"):
        c, _ = code_of(auth, stub, "refused", x, "not-the-secret", "hs-refused")
    assert c == grpc.StatusCode.UNAUTHENTICATED
    (r,) = lines(security_event_type="device_proof_wrong", user_id="refused")
    assert r.ip_address == "127.0.0.1" and r.peer.startswith("ipv4:127.0.0.1:")
    row = store.recent_attempts("refused", limit=1)[0]
    assert (row.reason, row.peer[:15]) == ("device_proof_wrong", "ipv4:127.0.0.1:")

    for _ in range(3):  # lockout_threshold=3
        store.register_failure("refused", 3, 600)
    n = failed("locked")
    with caplog.at_level("INFO", logger="nacf.service"):
        c, _ = code_of(auth, stub, "refused", x, secret, "hs-refused")
    assert c == grpc.StatusCode.FAILED_PRECONDITION and failed("locked") == n + 1
    (r,) = lines(event_type="auth_attempt", user_id="refused")
    assert (r.success, r.reason, r.ip_address) == (False, "locked", "127.0.0.1")
    row = store.recent_attempts("refused", limit=1)[0]
    assert (row.success, row.reason, row.peer[:15]) == (False, "locked", "ipv4:127.0.0.1:")
    stub.UnlockUser(pb.UnlockUserRequest(user_id="refused"), metadata=MD)


def test_peer_fields():
    from nacf_core.service import peer_fields

    assert peer_fields("ipv4:10.1.2.3:5555") == {"ip_address": "10.1.2.3",
                                                 "peer": "ipv4:10.1.2.3:5555"}
    assert peer_fields("ipv6:[::1]:5555") == {"ip_address": "::1", "peer": "ipv6:[::1]:5555"}
    assert peer_fields("ipv6:%5B::1%5D:60348")["ip_address"] == "::1"  # as gRPC writes it
    assert peer_fields("unix:/run/nacf.sock") == {"peer": "unix:/run/nacf.sock"}
    assert peer_fields("") == {}


def test_account_changes_need_admin_end_sessions_and_are_audited(srv):
    """The enroll scope enrolls new users and binds their first headset; replacing a
    template, binding another headset or rotating a secret takes an account over and
    needs admin. A replaced template ends the user's sessions, a rotated secret those
    opened with its device; every change has an audit row with the caller's address
    (and a log line with its client id)."""
    server, stub, _ = srv
    store = server.service.store
    EN = (("x-api-key", ENROLL_ONLY),)
    PD = grpc.StatusCode.PERMISSION_DENIED

    def reg(dev, md, rotate=False):
        return stub.RegisterDevice(pb.RegisterDeviceRequest(
            user_id="acct", device_id=dev, rotate=rotate), metadata=md, timeout=10)

    stub.Enroll(pb.EnrollRequest(user_id="acct", signals=[sig(eeg(1, 3, 0, 40))]),
                metadata=EN, timeout=30)
    secret = reg("hs-acct", EN).device_secret
    c, m = code_of(stub.Enroll, pb.EnrollRequest(user_id="acct", update=True,
                                                 signals=[sig(eeg(5, 3, 0, 40))]),
                   metadata=EN, timeout=30)
    assert c == PD and "admin" in m
    c, m = code_of(reg, "hs-mallory", EN)
    assert c == PD and "already has a registered device" in m
    assert code_of(reg, "hs-acct", EN, True)[0] == PD
    assert [d for d in stub.GetUser(pb.GetUserRequest(user_id="acct"), metadata=MD)
            .user.device_ids] == ["hs-acct"]

    def valid(tok):
        v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
        return v.valid, v.reason

    tok = auth(stub, "acct", eeg(1, 3, 60, 8), secret, "hs-acct").session_token
    reg("hs-acct-2", MD)  # admin: a second headset
    assert valid(tok) == (True, "")
    new = reg("hs-acct", MD, rotate=True).device_secret  # admin: rotation
    assert valid(tok) == (False, "device_rotated")
    tok = auth(stub, "acct", eeg(1, 3, 70, 8), new, "hs-acct").session_token
    assert valid(tok) == (True, "")
    r = stub.Enroll(pb.EnrollRequest(user_id="acct", update=True,
                                     signals=[sig(eeg(1, 3, 0, 40))]), metadata=MD, timeout=30)
    assert r.template_version == 2 and valid(tok) == (False, "template_replaced")
    rows = [(a.method, a.reason, a.peer[:15]) for a in store.recent_attempts("acct", 50)
            if a.method in ("Enroll", "RegisterDevice")]
    assert rows == [("Enroll", "template_replaced", "ipv4:127.0.0.1:"),
                    ("RegisterDevice", "rotated", "ipv4:127.0.0.1:"),
                    ("RegisterDevice", "registered", "ipv4:127.0.0.1:"),
                    ("RegisterDevice", "registered", "ipv4:127.0.0.1:"),
                    ("Enroll", "enrolled", "ipv4:127.0.0.1:")], rows
    # who made each change: the enroll-scope key enrolled and bound the first headset,
    # the admin key the rest (their client ids, never the keys)
    actors = [a.actor for a in store.recent_attempts("acct", 50)
              if a.method in ("Enroll", "RegisterDevice")]
    admin, enroller = actors[0], actors[-1]
    assert admin and enroller and admin != enroller and ALL not in admin \
        and ENROLL_ONLY not in enroller
    assert actors == [admin, admin, admin, enroller, enroller], actors


def test_account_changes_refused_for_their_scope_are_security_events(srv, caplog):
    """An enroll-scope key that tries to take an account over (replace a template, bind
    another headset, rotate a secret) is refused PERMISSION_DENIED in the handler, after
    the interceptor admitted it: each refusal has its security_event line (method, the
    caller's client id and address), as a key refused for a method's scope has."""
    import hashlib

    _, stub, _ = srv
    EN = (("x-api-key", ENROLL_ONLY),)
    stub.Enroll(pb.EnrollRequest(user_id="takeover", signals=[sig(eeg(1, 3, 0, 40))]),
                metadata=EN, timeout=30)
    stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="takeover", device_id="hs-to"),
                        metadata=EN, timeout=10)
    with caplog.at_level("INFO", logger="nacf"):
        for call, req in (
                (stub.Enroll, pb.EnrollRequest(user_id="takeover", update=True,
                                               signals=[sig(eeg(5, 3, 0, 40))])),
                (stub.RegisterDevice, pb.RegisterDeviceRequest(user_id="takeover",
                                                               device_id="hs-mallory")),
                (stub.RegisterDevice, pb.RegisterDeviceRequest(user_id="takeover",
                                                               device_id="hs-to",
                                                               rotate=True))):
            assert code_of(call, req, metadata=EN, timeout=30)[0] == \
                grpc.StatusCode.PERMISSION_DENIED
    client = "key-" + hashlib.sha256(ENROLL_ONLY.encode()).hexdigest()[:8]
    got = [(r.security_event_type, r.method, r.client_id, r.ip_address)
           for r in caplog.records if getattr(r, "event_type", "") == "security_event"]
    assert got == [("insufficient_scope", m, client, "127.0.0.1")
                   for m in ("Enroll", "RegisterDevice", "RegisterDevice")], got


def test_a_headset_registered_again_with_the_enroll_scope_is_told_rotation_needs_admin(srv):
    """A headset registered again (the enrollment desk's retry) is ALREADY_EXISTS. The
    message told every caller to "set rotate=true for a new secret", but with the enroll
    scope that call is PERMISSION_DENIED: it now says that rotating needs an admin."""
    _, stub, _ = srv
    EN = (("x-api-key", ENROLL_ONLY),)
    stub.Enroll(pb.EnrollRequest(user_id="rereg", signals=[sig(eeg(1, 3, 0, 40))]),
                metadata=EN, timeout=30)
    req = pb.RegisterDeviceRequest(user_id="rereg", device_id="hs-rereg")
    stub.RegisterDevice(req, metadata=EN, timeout=10)
    c, m = code_of(stub.RegisterDevice, req, metadata=EN, timeout=10)
    assert c == grpc.StatusCode.ALREADY_EXISTS and "admin" in m and "rotate=true" in m, m
    c, m = code_of(stub.RegisterDevice, req, metadata=MD, timeout=10)  # an admin: as before
    assert c == grpc.StatusCode.ALREADY_EXISTS and "set rotate=true" in m and "admin" not in m


def test_a_rotation_is_answered_with_the_old_secrets_sessions_ended_in_its_write(srv,
                                                                             monkeypatch):
    """The rotation and the end of the old secret's sessions are one store write: the
    caller gets the new secret and the sessions opened with the old one are ended, with no
    second write that could fail and leave them open (end_user_sessions is not called)."""
    server, stub, metrics = srv
    enroll(stub, "rot-err", 1)
    old = device(stub, "rot-err", "hs-re")
    tok = auth(stub, "rot-err", eeg(1, 3, 60, 8), old, "hs-re").session_token
    from nacf_core.errors import Unavailable

    def down(*a, **k):
        raise Unavailable("the store is down")
    monkeypatch.setattr(server.service.store, "end_user_sessions", down)
    new = stub.RegisterDevice(pb.RegisterDeviceRequest(
        user_id="rot-err", device_id="hs-re", rotate=True), metadata=MD, timeout=10)
    monkeypatch.undo()
    assert new.rotated
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert (v.valid, v.reason) == (False, "device_rotated")
    assert auth(stub, "rot-err", eeg(1, 3, 68, 8), new.device_secret, "hs-re").accepted
    errs = _metric(metrics, "nacfauth_store_errors_total")
    assert (("operation", "end_user_sessions"),) not in errs


def test_an_admin_ends_a_users_sessions(srv):
    """EndUserSessions (admin): every open session of a user, or those of one headset;
    audited; other scopes are refused, an unknown user is NOT_FOUND."""
    server, stub, _ = srv
    enroll(stub, "ended", 1)
    s1, s2 = device(stub, "ended", "hs-e1"), device(stub, "ended", "hs-e2")
    t1 = auth(stub, "ended", eeg(1, 3, 60, 8), s1, "hs-e1").session_token
    t2 = auth(stub, "ended", eeg(1, 3, 70, 8), s2, "hs-e2").session_token

    def end(md, **kw):
        return stub.EndUserSessions(pb.EndUserSessionsRequest(user_id="ended", **kw),
                                    metadata=md, timeout=10).ended

    def valid(tok):
        v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
        return v.valid, v.reason

    for key in (AUTH_ONLY, ENROLL_ONLY):
        assert code_of(end, (("x-api-key", key),))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert end(MD, device_id="hs-e1") == 1
    assert valid(t1) == (False, "ended_by_admin") and valid(t2) == (True, "")
    assert end(MD) == 1 and valid(t2) == (False, "ended_by_admin")
    assert end(MD) == 0
    c, _ = code_of(stub.EndUserSessions, pb.EndUserSessionsRequest(user_id="nobody-x"),
                   metadata=MD, timeout=10)
    assert c == grpc.StatusCode.NOT_FOUND
    rows = [a.reason for a in server.service.store.recent_attempts("ended", 50)
            if a.method == "EndUserSessions"]
    assert rows == ["sessions_ended"] * 3


def test_register_device_tells_an_enroll_key_nothing_of_other_users_headsets(srv):
    """A key without the admin scope may bind a user's first headset only. For a user who
    has one, binding a headset of ANOTHER user was answered ALREADY_EXISTS ("bound to
    another user") and binding an unknown id PERMISSION_DENIED: without writing anything
    an enroll-scope key could test any headset id for whether someone's account holds it.
    Both are now the same refusal; an admin is still told the id is taken."""
    _, stub, _ = srv
    EN = (("x-api-key", ENROLL_ONLY),)

    def reg(user, dev, md=EN):
        return stub.RegisterDevice(pb.RegisterDeviceRequest(user_id=user, device_id=dev),
                                   metadata=md, timeout=10)

    enroll(stub, "leak-a", 1)
    enroll(stub, "leak-b", 2)
    reg("leak-a", "hs-leak-a")
    reg("leak-b", "hs-leak-b")
    taken = code_of(reg, "leak-b", "hs-leak-a")
    free = code_of(reg, "leak-b", "hs-leak-nobody")
    assert taken[0] == grpc.StatusCode.PERMISSION_DENIED, taken
    assert taken == free and "another user" not in taken[1]
    c, m = code_of(reg, "leak-b", "hs-leak-a", MD)  # an admin binding a second headset
    assert c == grpc.StatusCode.ALREADY_EXISTS and "another user" in m
    assert [list(stub.GetUser(pb.GetUserRequest(user_id=u), metadata=MD).user.device_ids)
            for u in ("leak-a", "leak-b")] == [["hs-leak-a"], ["hs-leak-b"]]


def test_delete_and_unlock_are_audited_with_the_caller(srv, caplog):
    """DeleteUser and UnlockUser are account changes like EndUserSessions: each writes an
    audit row (method, outcome, the caller's address) that GetStats does not count as an
    attempt, and its log line names the caller's client id and address."""
    server, stub, _ = srv
    store = server.service.store
    enroll(stub, "audited", 1)
    store.register_failure("audited", 1, 600.0)  # locked
    before = stub.GetStats(pb.GetStatsRequest(), metadata=MD).auth_attempts_today
    with caplog.at_level("INFO", logger="nacf.service"):
        assert stub.UnlockUser(pb.UnlockUserRequest(user_id="audited"), metadata=MD).was_locked
        assert not stub.UnlockUser(pb.UnlockUserRequest(user_id="audited"),
                                   metadata=MD).was_locked
        assert stub.DeleteUser(pb.DeleteUserRequest(user_id="audited"), metadata=MD).deleted
    rows = [(a.method, a.reason, a.success, a.peer[:15])
            for a in store.recent_attempts("audited", 50)
            if a.method in ("UnlockUser", "DeleteUser")]
    assert rows == [("DeleteUser", "user_deleted", True, "ipv4:127.0.0.1:"),
                    ("UnlockUser", "not_locked", True, "ipv4:127.0.0.1:"),
                    ("UnlockUser", "unlocked", True, "ipv4:127.0.0.1:")], rows
    lines = [(r.event_type, r.method, r.actor, r.ip_address) for r in caplog.records
             if getattr(r, "event_type", "") in ("user_unlocked", "user_deleted")]
    actor = lines[0][2]
    assert actor and ALL not in actor  # the key's client id, never the key
    assert lines == [("user_unlocked", "UnlockUser", actor, "127.0.0.1")] * 2 + [
        ("user_deleted", "DeleteUser", actor, "127.0.0.1")], lines
    # the stored audit trail names the calling key's client id too, not only its address
    assert [(a.method, a.actor) for a in store.recent_attempts("audited", 50)
            if a.method in ("UnlockUser", "DeleteUser")] == [
        ("DeleteUser", actor), ("UnlockUser", actor), ("UnlockUser", actor)]
    assert stub.GetStats(pb.GetStatsRequest(), metadata=MD).auth_attempts_today == before


# ------------------------------------------------------------------ API keys
def test_api_keys_and_scopes(srv):
    _, stub, _ = srv
    req = pb.GetStatsRequest()
    c, m = code_of(stub.GetStats, req)
    assert c == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in m
    assert code_of(stub.GetStats, req, metadata=(("x-api-key", "wrong"),))[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    c, m = code_of(stub.GetStats, req, metadata=(("x-api-key", AUTH_ONLY),))
    assert c == grpc.StatusCode.PERMISSION_DENIED and "admin" in m
    c, _ = code_of(stub.Enroll, pb.EnrollRequest(user_id="z"), metadata=(("x-api-key", AUTH_ONLY),))
    assert c == grpc.StatusCode.PERMISSION_DENIED


def test_health_needs_no_key(srv):
    server, _, _ = srv
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for name in ("", "nacf.v1.AuthService"):
            r = h.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("case", ["odd_bytes", "float64", "float64_full", "big_endian", "nan",
                                  "inf", "empty", "rate_zero", "rate_absurd", "rate_nan",
                                  "rate_low", "no_channels", "dup_channels", "too_short",
                                  "unknown_user", "empty_user"])
def test_bad_input_gets_invalid_argument_or_not_found(srv, case):
    _, stub, _ = srv
    enroll_once(stub)
    x = eeg(1, 3, 60, 8)
    s = sig(x)
    user = "badin"
    if case == "odd_bytes":
        s.samples = s.samples[:-3]
    elif case == "float64":
        s.samples = x[: x.shape[0] // 2 * 2].astype("<f8").tobytes()[: 4 * 16 * 1001 + 4]
    elif case == "float64_full":  # a whole float64 payload: length fits, values do not
        s.samples = x[: x.shape[0] // 2].astype("<f8").tobytes()
    elif case == "big_endian":
        s.samples = x.astype(">f4").tobytes()
    elif case == "nan":
        y = x.copy()
        y[10, 3] = np.nan
        s.samples = y.tobytes()
    elif case == "inf":
        y = x.copy()
        y[100, 0] = np.inf
        s.samples = y.tobytes()
    elif case == "empty":
        s.samples = b""
    elif case == "rate_zero":
        s.sample_rate_hz = 0
    elif case == "rate_absurd":
        s.sample_rate_hz = 1e12
    elif case == "rate_nan":
        s.sample_rate_hz = float("nan")
    elif case == "rate_low":
        s.sample_rate_hz = 20
    elif case == "no_channels":
        del s.channel_names[:]
    elif case == "dup_channels":
        s.channel_names[1] = s.channel_names[0]
    elif case == "too_short":
        s.samples = x[:50].tobytes()
    elif case == "unknown_user":
        user = "nobody"
    elif case == "empty_user":
        user = ""
    server = srv[0]
    server.service.config.require_device_proof = False
    try:
        if case in ("float64_full", "big_endian"):
            # EDF data is quantised: as float32 its float64 or byte-swapped bytes are
            # small finite numbers, indistinguishable on the wire from a (strange)
            # signal. The server must not crash nor accept: INVALID_ARGUMENT or a reject.
            try:
                r = stub.Authenticate(pb.AuthenticateRequest(user_id=user, signal=s),
                                      metadata=MD)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
            else:
                assert not r.accepted and r.reasons and not r.session_token
            return
        c, m = code_of(stub.Authenticate, pb.AuthenticateRequest(user_id=user, signal=s),
                       metadata=MD)
    finally:
        server.service.config.require_device_proof = True
    want = grpc.StatusCode.NOT_FOUND if case == "unknown_user" else \
        grpc.StatusCode.INVALID_ARGUMENT
    assert c == want, m
    assert m and "Exception" not in m


_enrolled = threading.Event()


def enroll_once(stub):
    if not _enrolled.is_set():
        enroll(stub, "badin", 1)
        _enrolled.set()


def test_enroll_bad_input(srv):
    _, stub, _ = srv
    c, m = code_of(stub.Enroll, pb.EnrollRequest(user_id="e1"), metadata=MD)
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "signals" in m
    flat = np.zeros((160 * 40, 16), np.float32)
    c, m = code_of(stub.Enroll, pb.EnrollRequest(user_id="e1", signals=[sig(flat)]),
                   metadata=MD)
    assert c in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT), m
    assert code_of(stub.GetUser, pb.GetUserRequest(user_id="e1"),
                   metadata=MD)[0] == grpc.StatusCode.NOT_FOUND  # nothing written


def test_every_enroll_call_is_counted_once_in_registrations_with_its_status(srv):
    """nacfauth_user_registrations_total{registration_method="Enroll", status} counts each
    Enroll call the server handled with the status the call ended with, also those refused
    before the template is computed: a bad user id, a Signal that does not convert, an
    update without the admin scope."""
    _, stub, metrics = srv

    def counts():
        reg = _metric(metrics, "nacfauth_user_registrations_total")
        rpc = _metric(metrics, "nacfauth_auth_requests_total")
        return ({dict(k)["status"]: v for k, v in reg.items()
                 if dict(k)["registration_method"] == "Enroll"},
                {dict(k)["status"]: v for k, v in rpc.items() if dict(k)["method"] == "Enroll"})

    bad_signal = pb.Signal(sample_rate_hz=SFREQ, channel_names=CH16, samples=b"\x00" * 10)
    calls = [
        (pb.EnrollRequest(user_id="", signals=[sig(eeg(1, 3, 0, 40))]), MD,
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.EnrollRequest(user_id="reg-bad", signals=[bad_signal]), MD,
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.EnrollRequest(user_id="reg-upd", signals=[sig(eeg(1, 3, 0, 40))], update=True),
         (("x-api-key", ENROLL_ONLY),), grpc.StatusCode.PERMISSION_DENIED),
        (pb.EnrollRequest(user_id="reg-none"), MD, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, md, want in calls:
        reg0, rpc0 = counts()
        c, m = code_of(stub.Enroll, req, metadata=md, timeout=30)
        assert c == want, m
        reg1, rpc1 = counts()
        assert rpc1[want.name] - rpc0.get(want.name, 0.0) == 1
        assert reg1.get(want.name, 0.0) - reg0.get(want.name, 0.0) == 1, (req, reg0, reg1)
        assert sum(reg1.values()) - sum(reg0.values()) == 1


def _hold_past_deadline(answered: threading.Event, deadlines: list) -> None:
    """In a handler: return once its client has DEADLINE_EXCEEDED (``answered``) and the
    server's copy of the call's deadline (``deadlines[-1]``, monotonic) has passed too."""
    assert answered.wait(30)
    while deadlines[-1] is not None and time.monotonic() <= deadlines[-1]:
        time.sleep(0.01)


def _call_past_deadline(fn, req, answered: threading.Event, done: threading.Event,
                        monkeypatch) -> None:
    """Call ``fn(req)`` with a 1-s timeout whose handler outlives it: the client gets
    DEADLINE_EXCEEDED; wait for the handler to finish (``done``) and undo the patches."""
    try:
        c, _ = code_of(fn, req, metadata=MD, timeout=1.0)
    finally:
        answered.set()
    assert c == grpc.StatusCode.DEADLINE_EXCEEDED
    assert done.wait(30)  # the handler has finished
    monkeypatch.undo()


def test_a_register_device_whose_deadline_passes_before_its_write_writes_nothing(
        srv, monkeypatch):
    """A RegisterDevice that outlives its deadline (a store slow to answer): its client
    gets DEADLINE_EXCEEDED and never sees the secret, so the headset must not be bound
    behind its back. It was: the headset was bound to a secret nobody held, and the
    client's retry got ALREADY_EXISTS (a new secret then needs rotate, the admin
    scope)."""
    server, stub, _ = srv
    svc = server.service
    enroll(stub, "late-reg", 1)
    answered, done = threading.Event(), threading.Event()
    deadlines = []
    register, get_device = svc.bind_device, svc.store.get_device  # RegisterDevice's

    def service_register(*a, **k):
        deadlines.append(k.get("deadline"))  # the call's, as the servicer passes it
        try:
            return register(*a, **k)
        finally:
            done.set()

    def slow_get_device(*a, **k):  # (a new headset: NotFound)
        _hold_past_deadline(answered, deadlines)
        return get_device(*a, **k)

    monkeypatch.setattr(svc, "bind_device", service_register)
    monkeypatch.setattr(svc.store, "get_device", slow_get_device)
    req = pb.RegisterDeviceRequest(user_id="late-reg", device_id="hs-late-reg")
    _call_past_deadline(stub.RegisterDevice, req, answered, done, monkeypatch)
    assert list(stub.GetUser(pb.GetUserRequest(user_id="late-reg"), metadata=MD)
                .user.device_ids) == []
    assert deadlines[-1] is not None
    assert stub.RegisterDevice(req, metadata=MD, timeout=10).device_secret  # the retry


def test_an_authenticate_whose_deadline_passes_in_its_handler_leaves_no_session_open(
        srv, monkeypatch):
    """An Authenticate accepted after its deadline passed (a slow store, a loaded server):
    its client has DEADLINE_EXCEEDED and never sees the session token, yet the session
    stayed open (valid to whoever read the token off the server, counted in
    nacfauth_active_sessions) until its TTL ran out. It is ended at once (reason
    ``not_delivered``), and the call is counted DEADLINE_EXCEEDED as its client saw."""
    server, stub, metrics = srv
    svc = server.service
    enroll(stub, "late-auth", 1)
    secret = device(stub, "late-auth", "hs-late-auth")
    answered, done = threading.Event(), threading.Event()
    tokens, t_call = [], []
    authenticate = svc.authenticate

    def slow_authenticate(*a, **k):
        try:
            r = authenticate(*a, **k)
            tokens.append(r.session_token)
            assert answered.wait(30)  # the client has DEADLINE_EXCEEDED
            while time.monotonic() <= t_call[0] + 1.2:  # past the server's deadline too
                time.sleep(0.01)
            return r
        finally:
            done.set()

    monkeypatch.setattr(svc, "authenticate", slow_authenticate)
    before = _requests_by_status(metrics, "Authenticate")
    s = sig(eeg(1, 3, 60, 8), "hs-late-auth")
    md = (*MD, *proof_md(secret, "late-auth", "hs-late-auth", s.samples))
    t_call.append(time.monotonic())
    try:
        c, _ = code_of(stub.Authenticate, pb.AuthenticateRequest(user_id="late-auth", signal=s),
                       metadata=md, timeout=1.0)
    finally:
        answered.set()
    assert c == grpc.StatusCode.DEADLINE_EXCEEDED
    assert done.wait(30)
    monkeypatch.undo()
    assert tokens and tokens[0], "the service did not accept"
    assert _counted_since(metrics, "Authenticate", before, 1) == {"DEADLINE_EXCEEDED": 1}
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tokens[0]),
                             metadata=MD, timeout=10)
    assert (v.valid, v.reason) == (False, "not_delivered")
    ok = auth(stub, "late-auth", eeg(1, 3, 100, 8), secret, "hs-late-auth")  # a retry
    assert ok.accepted and ok.session_token


def test_an_enroll_whose_deadline_passes_while_its_template_is_computed_writes_nothing(
        srv, monkeypatch):
    """An Enroll that outlives its deadline (a long signal, a loaded server): its client
    gets DEADLINE_EXCEEDED, so the enrollment must not be written behind its back. It
    was: the user existed, the client's retry got ALREADY_EXISTS, and
    nacfauth_user_registrations_total counted OK a call its client saw fail."""
    server, stub, metrics = srv
    svc = server.service
    answered = threading.Event()
    deadlines = []
    enroll_of_service, enroll_of_pipeline = svc.enroll, svc.rec.enroll

    def service_enroll(*a, **k):
        deadlines.append(k.get("deadline"))  # the call's, as the servicer passes it
        return enroll_of_service(*a, **k)

    def slow_template(*a):
        template = enroll_of_pipeline(*a)
        _hold_past_deadline(answered, deadlines)
        return template

    def registrations():
        return {dict(k)["status"]: v for k, v in
                _metric(metrics, "nacfauth_user_registrations_total").items()
                if dict(k)["registration_method"] == "Enroll"}

    monkeypatch.setattr(svc, "enroll", service_enroll)
    monkeypatch.setattr(svc.rec, "enroll", slow_template)
    before = registrations()
    done = threading.Event()
    record = svc.metrics.record_registration

    def record_then_done(*a, **k):  # the handler's last step
        record(*a, **k)
        done.set()

    monkeypatch.setattr(svc.metrics, "record_registration", record_then_done)
    req = pb.EnrollRequest(user_id="late-enroll", signals=[sig(eeg(1, 3, 0, 40))])
    _call_past_deadline(stub.Enroll, req, answered, done, monkeypatch)
    assert code_of(stub.GetUser, pb.GetUserRequest(user_id="late-enroll"),
                   metadata=MD)[0] == grpc.StatusCode.NOT_FOUND
    after = registrations()
    assert after.get("OK", 0.0) == before.get("OK", 0.0)
    assert after["DEADLINE_EXCEEDED"] - before.get("DEADLINE_EXCEEDED", 0.0) == 1
    # the retry the client makes enrolls the user
    assert stub.Enroll(req, metadata=MD, timeout=30).template_version == 1


def test_an_authenticate_s_duration_includes_its_wait_for_the_authentication_thread(
        srv, monkeypatch):
    """With SQLite, Authenticate calls run one at a time on the authentication thread, and
    a call waits there behind the others: its client sees that wait as latency, and so
    must nacfauth_auth_duration_seconds (the high-latency alert's p95). It timed the call
    from when the thread took it up: at 8 clients the histogram's mean was 5.9 ms against
    39 ms (p95 93 ms) seen by the clients, the queue invisible to the alert."""
    server, stub, metrics = srv
    svc, engine = server.service, server._interceptor._engine
    assert engine is not None  # an in-process store: Authenticate calls are serialised
    holding, release, queued = threading.Event(), threading.Event(), threading.Event()
    submitted = []
    authenticate, submit = svc._authenticate, engine.submit

    def held(user_id, *a, **k):
        if user_id == "hold-the-thread":
            holding.set()
            assert release.wait(30)
        return authenticate(user_id, *a, **k)

    def counted_submit(*a, **k):
        submitted.append(1)
        if len(submitted) == 2:
            queued.set()  # the second call waits for the authentication thread
        return submit(*a, **k)

    monkeypatch.setattr(svc, "_authenticate", held)
    monkeypatch.setattr(engine, "submit", counted_submit)
    labels = {"method": "Authenticate", "status": "INVALID_ARGUMENT"}

    def observed():
        reg = metrics.registry
        return (reg.get_sample_value("nacfauth_auth_duration_seconds_count", labels) or 0.0,
                reg.get_sample_value("nacfauth_auth_duration_seconds_sum", labels) or 0.0)

    n0, s0 = observed()
    first = threading.Thread(target=code_of, args=(
        stub.Authenticate, pb.AuthenticateRequest(user_id="hold-the-thread",
                                                  signal=sig(eeg(1, 3, 60, 8)))),
        kwargs={"metadata": MD, "timeout": 30})
    first.start()
    try:
        assert holding.wait(30)
        # the second call (no signal: INVALID_ARGUMENT, a series of its own) queues behind
        second = threading.Thread(target=code_of, args=(
            stub.Authenticate, pb.AuthenticateRequest(user_id="waits")),
            kwargs={"metadata": MD, "timeout": 30})
        second.start()
        assert queued.wait(30)
        waited = 0.5
        time.sleep(waited)  # the wait to be measured (nothing to synchronise on)
    finally:
        release.set()
        first.join(30)
    second.join(30)
    n1, s1 = observed()
    assert n1 - n0 == 1
    assert s1 - s0 >= waited, s1 - s0


def test_huge_message_resource_exhausted_and_server_survives(srv):
    _, stub, _ = srv
    big = pb.AuthenticateRequest(user_id="x", signal=pb.Signal(
        sample_rate_hz=160, channel_names=CH16, samples=b"\0" * (100 * 1024 * 1024)))
    c, _ = code_of(stub.Authenticate, big, metadata=MD, timeout=60)
    assert c == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.GetStats(pb.GetStatsRequest(), metadata=MD) is not None


def test_an_oversized_unary_request_is_counted_resource_exhausted(srv):
    """gRPC reads a unary request only when nacf's handler asks for it, and refuses one
    over max_message_bytes then (the client sees RESOURCE_EXHAUSTED); the handler sees
    the call end as if cancelled. It was left uncounted, so a client sending too large
    requests was invisible in nacfauth_auth_requests_total: each is counted
    RESOURCE_EXHAUSTED, as its client saw, under its caller's user_type, and nothing else
    is counted for it (CANCELLED, a status no client saw, was the old mistake)."""
    _, stub, metrics = srv

    def counts():
        out = {}
        for m in metrics.registry.collect():
            for smp in m.samples:
                if (smp.name == "nacfauth_auth_requests_total"
                        and smp.labels["method"] in ("ValidateSession", "Authenticate")):
                    k = (smp.labels["method"], smp.labels["status"], smp.labels["user_type"])
                    out[k] = out.get(k, 0) + smp.value
        return out

    before = counts()
    big = "x" * (MSG_LIMIT + 1024)
    for fn, req in ((stub.ValidateSession, pb.ValidateSessionRequest(session_token=big)),
                    (stub.Authenticate, pb.AuthenticateRequest(user_id=big))):
        for _ in range(3):
            c, m = code_of(fn, req, metadata=MD, timeout=30)
            assert c == grpc.StatusCode.RESOURCE_EXHAUSTED, m
    want = {("ValidateSession", "RESOURCE_EXHAUSTED", "api_key"): 3,
            ("Authenticate", "RESOURCE_EXHAUSTED", "api_key"): 3}
    t0 = time.monotonic()  # counted by the handler, a moment after the client's answer
    while True:
        after = counts()
        d = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        if d == want or time.monotonic() - t0 > 10:
            break
        time.sleep(0.05)
    assert d == want, d


def test_an_oversized_chunk_in_a_stream_is_counted_resource_exhausted(srv):
    """gRPC refuses a streamed message over max_message_bytes as it reads it and ends the
    call RESOURCE_EXHAUSTED, which its client sees; the handler sees the stream fail as
    if its client had cancelled it, and the call was counted CANCELLED, a status no
    client saw (a headset sending too large chunks looked like one that went away). It
    is counted RESOURCE_EXHAUSTED, in AuthenticateStream and ContinuousAuthenticate
    alike, and nothing else is counted for it."""
    _, stub, metrics = srv
    enroll(stub, "olga", 1)
    secret = device(stub, "olga", "hs-olga")
    tok = auth(stub, "olga", eeg(1, 3, 60, 8), secret, "hs-olga").session_token
    assert tok
    big = pb.Signal(sample_rate_hz=160, channel_names=CH16, device_id="hs-olga",
                    samples=b"\0" * (MSG_LIMIT + 1024))
    stop = threading.Event()

    def auth_stream():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="olga"))
        yield pb.AuthenticateStreamRequest(chunk=big)
        stop.wait(20)

    def cont_stream():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        yield pb.ContinuousAuthenticateRequest(chunk=big)
        stop.wait(20)

    try:
        for method, call in (
                ("AuthenticateStream", lambda: stub.AuthenticateStream(
                    auth_stream(), metadata=MD, timeout=30)),
                ("ContinuousAuthenticate", lambda: list(stub.ContinuousAuthenticate(
                    cont_stream(), metadata=MD, timeout=30)))):
            before = _requests_by_status(metrics, method)
            for _ in range(3):
                c, m = code_of(call)
                assert c == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, c, m)
            assert _counted_since(metrics, method, before, 3) == {"RESOURCE_EXHAUSTED": 3}, \
                method
    finally:
        stop.set()
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert v.valid  # the session stays open, as when its headset goes away


def test_a_unary_call_without_a_request_is_answered_and_counted_unimplemented(srv):
    """A client (not a generated stub) that calls a unary method as a stream and closes
    it without a message: the call stays live, so it is no refused request; it is
    answered UNIMPLEMENTED (what grpcio answers) within the short wait for a refusal,
    and counted so."""
    server, _, metrics = srv
    before = _requests_by_status(metrics, "GetStats")
    with grpc.insecure_channel(server.address) as ch:
        call = ch.stream_unary("/nacf.v1.AuthService/GetStats",
                               request_serializer=pb.GetStatsRequest.SerializeToString,
                               response_deserializer=pb.GetStatsResponse.FromString)
        t0 = time.monotonic()
        c, m = code_of(call, iter(()), metadata=MD, timeout=30)
        assert c == grpc.StatusCode.UNIMPLEMENTED and "one request" in m, (c, m)
        assert time.monotonic() - t0 < 10
    assert _counted_since(metrics, "GetStats", before, 1) == {"UNIMPLEMENTED": 1}


def test_deadline_exceeded(srv):
    _, stub, _ = srv
    enroll_once(stub)

    def slow():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="badin"))
        time.sleep(1.0)
        yield pb.AuthenticateStreamRequest(chunk=sig(eeg(1, 3, 60, 1)))

    c, _ = code_of(stub.AuthenticateStream, slow(), metadata=MD, timeout=0.3)
    assert c == grpc.StatusCode.DEADLINE_EXCEEDED


# ------------------------------------------------------------------ streaming
def chunks(x, seconds=0.5):
    n = int(seconds * SFREQ)
    return [x[i:i + n] for i in range(0, x.shape[0], n)]


def test_authenticate_stream_decides_early(srv):
    _, stub, _ = srv
    enroll(stub, "hank", 1)
    secret = device(stub, "hank", "hs-hank")
    parts = [sig(c, "hs-hank") for c in chunks(eeg(1, 3, 50, 20))]
    md = (*MD, *proof_md(secret, "hank", "hs-hank", parts[0].samples))
    sent = []

    def gen():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="hank"))
        for p in parts:
            sent.append(1)
            yield pb.AuthenticateStreamRequest(chunk=p)

    c, m = code_of(stub.AuthenticateStream, gen(), metadata=MD, timeout=30)  # no proof
    assert c == grpc.StatusCode.UNAUTHENTICATED and "device proof" in m
    sent.clear()
    r = stub.AuthenticateStream(gen(), metadata=md, timeout=30)
    assert r.accepted and r.session_token and r.seconds_used <= 20
    assert any(x.startswith("sequential test: accept") for x in r.reasons), list(r.reasons)
    # an impostor's stream is rejected after the first window, not after 20 s
    imp = [sig(c, "hs-hank") for c in chunks(eeg(5, 7, 40, 20))]

    def gen_imp():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="hank"))
        for p in imp:
            yield pb.AuthenticateStreamRequest(chunk=p)

    r = stub.AuthenticateStream(gen_imp(), timeout=30, metadata=(
        *MD, *proof_md(secret, "hank", "hs-hank", imp[0].samples)))
    assert not r.accepted and not r.session_token
    assert r.seconds_used == 4.0 and r.windows_used == 1
    assert any(x.startswith("sequential test: reject") for x in r.reasons), list(r.reasons)
    stub.UnlockUser(pb.UnlockUserRequest(user_id="hank"), metadata=MD)
    # first message must be start
    c, _ = code_of(stub.AuthenticateStream,
                   iter([pb.AuthenticateStreamRequest(chunk=parts[0])]), metadata=MD)
    assert c == grpc.StatusCode.INVALID_ARGUMENT


def _held_stream(stub, user, parts, md, sent_first=0):
    """An AuthenticateStream whose chunks after the first ``sent_first`` wait for ``go``:
    what happens meanwhile (a rotation, a delete) is the test's."""
    go = threading.Event()
    out: dict = {}

    def gen():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id=user))
        for i, p in enumerate(parts):
            if i == sent_first:
                go.wait(20)
            yield pb.AuthenticateStreamRequest(chunk=p)

    def run():
        try:
            out["r"] = stub.AuthenticateStream(gen(), metadata=md, timeout=30)
        except grpc.RpcError as e:
            out["e"] = (e.code(), e.details())

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)  # the start message is in
    return go, t, out


def test_authenticate_stream_checks_the_device_and_template_as_they_are_at_the_end(srv):
    """A stream opened before a device's secret was rotated is refused with the old
    secret (its proof is checked against the device as it is when the first chunk
    comes, not as it was at the start); a stream whose user was deleted and enrolled
    again as another person meanwhile opens no session on the new account."""
    server, stub, _ = srv
    enroll(stub, "rot", 1)
    old = device(stub, "rot", "hs-rot")
    parts = [sig(c, "hs-rot") for c in chunks(eeg(1, 3, 60, 8))]
    go, t, out = _held_stream(stub, "rot", parts,
                              (*MD, *proof_md(old, "rot", "hs-rot", parts[0].samples)))
    stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="rot", device_id="hs-rot",
                                                 rotate=True), metadata=MD, timeout=10)
    go.set()
    t.join(30)
    assert out.get("e", (None,))[0] == grpc.StatusCode.UNAUTHENTICATED, out
    # rotated after the first chunk's proof was checked with the old secret: no session
    old = stub.RegisterDevice(pb.RegisterDeviceRequest(
        user_id="rot", device_id="hs-rot", rotate=True), metadata=MD, timeout=10).device_secret
    parts = [sig(c, "hs-rot") for c in chunks(eeg(1, 3, 68, 8))]
    go, t, out = _held_stream(stub, "rot", parts,
                              (*MD, *proof_md(old, "rot", "hs-rot", parts[0].samples)),
                              sent_first=1)
    stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="rot", device_id="hs-rot",
                                                 rotate=True), metadata=MD, timeout=10)
    go.set()
    t.join(30)
    code, msg = out.get("e", (None, ""))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "rotated" in msg, out

    enroll(stub, "reenr", 1)
    server.service.config.require_device_proof = False
    try:
        parts = [sig(c) for c in chunks(eeg(1, 3, 60, 8))]
        go, t, out = _held_stream(stub, "reenr", parts, MD)
        stub.DeleteUser(pb.DeleteUserRequest(user_id="reenr"), metadata=MD, timeout=10)
        enroll(stub, "reenr", 5)  # another person under the same id
        go.set()
        t.join(30)
    finally:
        server.service.config.require_device_proof = True
    code, msg = out.get("e", (None, ""))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "template changed" in msg, out


def test_continuous_authenticate_ends_on_wearer_change(srv):
    _, stub, _ = srv
    enroll(stub, "ivy", 1)
    secret = device(stub, "ivy", "hs-ivy")
    tok = auth(stub, "ivy", eeg(1, 3, 60, 8), secret, "hs-ivy").session_token

    def gen():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        for c in chunks(eeg(1, 3, 70, 8)) + chunks(eeg(5, 7, 0, 16)):
            yield pb.ContinuousAuthenticateRequest(chunk=sig(c, "hs-ivy"))

    states = list(stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=30))
    E = pb.ContinuousAuthenticateResponse
    assert states[0].state == E.VERIFIED
    assert states[-1].state == E.ENDED and states[-1].reason == "wearer_changed"
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert not v.valid and v.reason == "wearer_changed"


def test_continuous_authenticate_checks_the_sessions_device(srv):
    """A session opened with a device proof is bound to that headset: a chunk from
    another device ends it (``device_changed``); a chunk that names no device is the
    client's error (INVALID_ARGUMENT saying what is expected) and leaves it open."""
    _, stub, _ = srv
    enroll(stub, "dev-bound", 1)
    secret = device(stub, "dev-bound", "hs-bound")
    E = pb.ContinuousAuthenticateResponse

    def stream(tok, dev_ids):
        def gen():
            yield pb.ContinuousAuthenticateRequest(
                start=pb.ContinuousStart(session_token=tok))
            for c, d in zip(chunks(eeg(1, 3, 70, 8)), dev_ids):
                yield pb.ContinuousAuthenticateRequest(chunk=sig(c, d))
        return stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=30)

    tok = auth(stub, "dev-bound", eeg(1, 3, 60, 8), secret, "hs-bound").session_token
    n = len(chunks(eeg(1, 3, 70, 8)))
    c, m = code_of(lambda *a, **k: list(stream(*a, **k)), tok, ["hs-bound", ""] * n)
    assert c == grpc.StatusCode.INVALID_ARGUMENT, (c, m)
    assert "device_id is empty" in m and "'hs-bound'" in m, m
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert v.valid, v
    states = list(stream(tok, ["hs-bound"] * (n // 2) + ["hs-other"] * n))
    assert states[-1].state == E.ENDED and states[-1].reason == "device_changed", states
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert not v.valid and v.reason == "device_changed"


def test_a_device_change_in_a_continuous_stream_is_a_security_event(srv, caplog):
    """Chunks from another headset on a session bound to one (a stolen session token
    streamed from another device, as a device mismatch in a proof would be) end the
    session AND are a suspicious activity with its security_event line, as a wearer
    change is: they were neither counted nor logged."""
    _, stub, metrics = srv
    enroll(stub, "dev-swap", 1)
    secret = device(stub, "dev-swap", "hs-swap")
    tok = auth(stub, "dev-swap", eeg(1, 3, 60, 8), secret, "hs-swap").session_token
    key = (("activity_type", "device_changed"), ("severity", "medium"))
    before = _metric(metrics, "nacfauth_suspicious_activities_total").get(key, 0.0)

    def gen():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        for c in chunks(eeg(1, 3, 70, 4)):
            yield pb.ContinuousAuthenticateRequest(chunk=sig(c, "hs-swap"))
        for c in chunks(eeg(1, 3, 74, 4)):
            yield pb.ContinuousAuthenticateRequest(chunk=sig(c, "hs-elsewhere"))

    with caplog.at_level("INFO", logger="nacf.service"):
        states = list(stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=30))
    assert states[-1].reason == "device_changed", states
    after = _metric(metrics, "nacfauth_suspicious_activities_total").get(key, 0.0)
    assert after - before == 1
    (r,) = [r for r in caplog.records if getattr(r, "security_event_type", "")
            == "device_changed"]
    assert (r.event_type, r.user_id, r.severity) == ("security_event", "dev-swap", "medium")
    assert (r.device_id, r.session_device_id) == ("hs-elsewhere", "hs-swap")
    assert (r.method, r.ip_address) == ("ContinuousAuthenticate", "127.0.0.1")  # the caller


def _metric(metrics, name):
    """{labels: value} of one sample name in the server's registry."""
    return {tuple(sorted(s.labels.items())): s.value for fam in metrics.registry.collect()
            for s in fam.samples if s.name == name}


def test_artifact_rejections_are_counted_by_reason_code_and_every_path_observes_quality(
        srv):
    """``nacfauth_artifact_rejections_total{reason}`` takes the bounded reason codes,
    not the reasons with their channel lists (one label value per combination of
    channels); Identify refused for quality, and every ContinuousAuthenticate window,
    are observed in the quality histogram too."""
    from nacf_core.pipeline import REASON_CODES

    _, stub, metrics = srv
    enroll(stub, "arti", 1)
    secret = device(stub, "arti", "hs-arti")
    x = eeg(1, 3, 60, 8).copy()
    x[:, :5] = 0.0  # five flat channels, in every window
    before = _metric(metrics, "nacfauth_artifact_rejections_total")
    r = auth(stub, "arti", x, secret, "hs-arti")
    assert not r.accepted and any("flat on" in m for m in r.reasons), r.reasons
    after = _metric(metrics, "nacfauth_artifact_rejections_total")
    assert {dict(k)["reason"] for k in after} <= set(REASON_CODES), after
    flat = (("reason", "flat"),)
    assert after[flat] - before.get(flat, 0.0) == 2  # two 4-s windows
    stub.UnlockUser(pb.UnlockUserRequest(user_id="arti"), metadata=MD)

    def count(signal_type):
        return _metric(metrics, "nacfauth_signal_quality_score_count").get(
            (("signal_type", signal_type),), 0.0)

    n_id = count("identify")
    c, _ = code_of(stub.Identify, pb.IdentifyRequest(signal=sig(np.zeros((640, 16)))),
                   metadata=MD, timeout=10)
    assert c == grpc.StatusCode.FAILED_PRECONDITION
    assert count("identify") == n_id + 1
    tok = auth(stub, "arti", eeg(1, 3, 60, 8), secret, "hs-arti").session_token
    n_cont = count("continuous")

    def gen():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        for c in chunks(eeg(1, 3, 70, 8)):
            yield pb.ContinuousAuthenticateRequest(chunk=sig(c, "hs-arti"))

    t_before = time.time()
    states = list(stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=30))
    assert len(states) == 2
    assert count("continuous") == n_cont + 2
    # a verified window is when the session was last verified
    assert states[-1].state == pb.ContinuousAuthenticateResponse.VERIFIED
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert v.valid and v.last_verified_unix >= t_before


def test_continuous_authenticate_ends_on_signal_loss(srv):
    _, stub, _ = srv
    enroll(stub, "jack", 1)
    secret = device(stub, "jack", "hs-jack")
    tok = auth(stub, "jack", eeg(1, 3, 60, 8), secret, "hs-jack").session_token
    stop = threading.Event()

    def gen():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        yield pb.ContinuousAuthenticateRequest(chunk=sig(eeg(1, 3, 70, 4), "hs-jack"))
        stop.wait(10)  # the headset goes silent

    try:
        states = list(stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=15))
    finally:
        stop.set()
    assert states[-1].state == pb.ContinuousAuthenticateResponse.ENDED
    assert states[-1].reason == "signal_lost"
    c, _ = code_of(lambda: list(stub.ContinuousAuthenticate(iter([
        pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))]),
        metadata=MD)))
    assert c == grpc.StatusCode.FAILED_PRECONDITION


def test_an_open_stream_whose_key_is_revoked_ends_at_its_next_message(tmp_path, model_path,
                                                                       caplog):
    """Keys rotate on SIGHUP (reload_api_keys). A ContinuousAuthenticate stream opened
    with a key that was then removed went on renewing its session for as long as the
    headset sent (up to session_max_age_s, 12 h): revoking a leaked key did not stop the
    holder's open streams. The stream now ends UNAUTHENTICATED at its next message after
    the reload, without that message being decided; the session stays as it was."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{ALL} authenticate,enroll,admin\n{AUTH_ONLY} authenticate\n")
    cfg = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(tmp_path),
                 rate_limit_per_s=1000, rate_limit_burst=1000, signal_loss_s=10.0,
                 require_device_proof=False, api_keys_file=str(keys),
                 api_keys={ALL: frozenset({"authenticate", "enroll", "admin"}),
                           AUTH_ONLY: frozenset({"authenticate"})})
    metrics = Metrics(CollectorRegistry())
    store = open_store(f"sqlite:///{tmp_path / 'nacf.db'}", bytes(range(32)))
    service = AuthService(store, make_pipeline(model_path), cfg, metrics=metrics)
    server = NacfServer(cfg, service, metrics=metrics, sidecar=False).start()
    revoked, stop = threading.Event(), threading.Event()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            enroll(stub, "rita", 1)
            md = (("x-api-key", AUTH_ONLY),)
            tok = stub.Authenticate(pb.AuthenticateRequest(
                user_id="rita", signal=sig(eeg(1, 3, 60, 8))), metadata=md,
                timeout=30).session_token
            assert tok

            def gen():
                yield pb.ContinuousAuthenticateRequest(
                    start=pb.ContinuousStart(session_token=tok))
                for c in chunks(eeg(1, 3, 70, 4)):
                    yield pb.ContinuousAuthenticateRequest(chunk=sig(c))
                revoked.wait(20)
                for c in chunks(eeg(1, 3, 74, 8)):
                    yield pb.ContinuousAuthenticateRequest(chunk=sig(c))
                stop.wait(20)

            call = stub.ContinuousAuthenticate(gen(), metadata=md, timeout=40)
            first = next(call)
            assert first.state == pb.ContinuousAuthenticateResponse.VERIFIED
            keys.write_text(f"{ALL} authenticate,enroll,admin\n")
            assert server.reload_api_keys(env={}) == (2, 1)
            revoked.set()
            with pytest.raises(grpc.RpcError) as ei:
                for r in call:
                    assert r.state != pb.ContinuousAuthenticateResponse.VERIFIED, r
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED, ei.value
            assert "revoked" in ei.value.details()
            v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok),
                                     metadata=MD, timeout=10)
            assert v.valid  # ended by the headset's own stream, not its key
            ev = [r for r in caplog.records
                  if getattr(r, "security_event_type", "") == "revoked_api_key"]
            assert len(ev) == 1 and ev[0].method == "ContinuousAuthenticate"
            assert ev[0].client_id.startswith("key-") and AUTH_ONLY not in ev[0].getMessage()
    finally:
        revoked.set()
        stop.set()
        server.stop(0)
        store.close()


def _timed(fn, *a, **kw):
    t0 = time.monotonic()
    c, m = code_of(fn, *a, **kw)
    return c, m, time.monotonic() - t0


def test_a_client_stream_that_stalls_is_ended_after_signal_loss_s(srv):
    """A client that opens a stream and sends nothing (no start message, or no chunk
    after it) is answered DEADLINE_EXCEEDED after signal_loss_s (3 s here), and its
    worker thread is free: it had held it as long as the client kept the connection."""
    _, stub, _ = srv
    enroll(stub, "stall", 1)
    stop = threading.Event()

    def silent():
        stop.wait(20)
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="stall"))

    def silent_after_start():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="stall"))
        stop.wait(20)

    def continuous_silent():
        stop.wait(20)
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token="x"))

    try:
        c, m, dt = _timed(stub.AuthenticateStream, silent(), metadata=MD, timeout=15)
        assert c == grpc.StatusCode.DEADLINE_EXCEEDED and "'start'" in m, m
        assert 2.5 < dt < 8, dt
        c, m, dt = _timed(stub.AuthenticateStream, silent_after_start(), metadata=MD,
                          timeout=15)
        assert c == grpc.StatusCode.DEADLINE_EXCEEDED and "no message for 3 s" in m, m
        assert 2.5 < dt < 8, dt
        c, m, dt = _timed(lambda: list(stub.ContinuousAuthenticate(
            continuous_silent(), metadata=MD, timeout=15)))
        assert c == grpc.StatusCode.DEADLINE_EXCEEDED and "'start'" in m, m
        assert 2.5 < dt < 8, dt
    finally:
        stop.set()


def _requests_by_status(metrics, method):
    """``{status: count}`` of ``method`` in nacfauth_auth_requests_total."""
    out = {}
    for m in metrics.registry.collect():
        for smp in m.samples:
            if smp.name == "nacfauth_auth_requests_total" and smp.labels["method"] == method:
                out[smp.labels["status"]] = out.get(smp.labels["status"], 0) + smp.value
    return out


def _silent_streams(stub, user: str, dev: str, stop: threading.Event, timeout: float,
                    future: bool = False) -> list:
    """``(method, start)`` for an AuthenticateStream and a ContinuousAuthenticate (of a
    session of ``user``, enrolled and authenticated here with headset ``dev``) that send
    their first message and then nothing until ``stop``; ``start()`` makes the call with
    ``timeout``: blocking (its ``code_of``) or, with ``future``, returning the call."""
    enroll(stub, user, 1)
    secret = device(stub, user, dev)
    tok = auth(stub, user, eeg(1, 3, 60, 8), secret, dev).session_token
    assert tok

    def silent_auth():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id=user))
        stop.wait(20)

    def silent_cont():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        stop.wait(20)

    if future:
        return [("AuthenticateStream", lambda: stub.AuthenticateStream.future(
                    silent_auth(), metadata=MD, timeout=timeout)),
                ("ContinuousAuthenticate", lambda: stub.ContinuousAuthenticate(
                    silent_cont(), metadata=MD, timeout=timeout))]
    return [("AuthenticateStream", lambda: code_of(lambda: stub.AuthenticateStream(
                silent_auth(), metadata=MD, timeout=timeout))),
            ("ContinuousAuthenticate", lambda: code_of(lambda: list(
                stub.ContinuousAuthenticate(silent_cont(), metadata=MD, timeout=timeout))))]


def _counted_since(metrics, method: str, before: dict, n: int) -> dict:
    """The change of ``method``'s request counts by status since ``before``, once ``n``
    more calls are counted (or after 10 s)."""
    t0 = time.monotonic()
    while (sum(_requests_by_status(metrics, method).values()) - sum(before.values()) < n
           and time.monotonic() - t0 < 10):
        time.sleep(0.05)
    after = _requests_by_status(metrics, method)
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def test_a_stream_whose_client_deadline_passes_is_counted_deadline_exceeded(srv):
    """A client whose deadline passes cancels the call; the server's deadline for it is
    a little later (gRPC rounds the timeout it sends up, to 10 ms from 1 s): the server
    saw a cancel before its own deadline and counted CANCELLED what every client saw as
    DEADLINE_EXCEEDED. (The cancel can also reach the handler as the end of the client's
    stream first, counted as what the handler made of that: not this test's subject.)"""
    _, stub, metrics = srv
    stop = threading.Event()
    try:
        for method, start in _silent_streams(stub, "late", "hs-late", stop, 1.011):
            before = _requests_by_status(metrics, method)
            for _ in range(3):
                c, m = start()
                assert c == grpc.StatusCode.DEADLINE_EXCEEDED, (c, m)
            d = _counted_since(metrics, method, before, 3)
            assert not d.get("CANCELLED") and d.get("DEADLINE_EXCEEDED", 0) >= 1, (method, d)
    finally:
        stop.set()


def test_a_stream_its_client_cancels_well_before_a_short_deadline_is_counted_cancelled(srv):
    """A client that cancels 20 ms into a call with a 0.19 s timeout went away; its call
    was counted DEADLINE_EXCEEDED, as every call that ended with less than 0.2 s of its
    deadline left was. The slack is now the rounding of the call's own timeout (1 ms
    here) and DEADLINE_TRANSIT_S, and the time left is taken when the call ended. (The
    cancel can also reach the handler as the end of the client's stream first, counted
    as what the handler made of that, as in the test above.)"""
    _, stub, metrics = srv
    stop = threading.Event()
    try:
        for method, start in _silent_streams(stub, "brief", "hs-brief", stop, 0.19,
                                             future=True):
            before = _requests_by_status(metrics, method)
            for _ in range(3):
                call = start()
                time.sleep(0.02)
                assert call.cancel()
                assert call.code() == grpc.StatusCode.CANCELLED
            d = _counted_since(metrics, method, before, 3)
            assert not d.get("DEADLINE_EXCEEDED") and d.get("CANCELLED", 0) >= 1, (method, d)
    finally:
        stop.set()


def test_the_times_kept_per_call_go_with_the_call(srv):
    """The interceptor keeps each call's deadline and end for ended_status, by its
    context: nothing of it outlives the call, answered, cancelled or timed out (a soak
    would otherwise grow the server without bound)."""
    import gc

    from nacf_core.server.interceptors import _CALLS

    _, stub, _ = srv
    stop = threading.Event()

    def silent():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="nobody-here"))
        stop.wait(20)

    def kept():
        gc.collect()
        return len(_CALLS)

    def nothing_yet():
        stop.wait(20)
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="nobody-here"))

    try:
        before = kept()
        held = stub.AuthenticateStream.future(nothing_yet(), metadata=MD, timeout=5)
        t0 = time.monotonic()
        while kept() == before and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert kept() == before + 1  # kept while the call is served
        held.cancel()
        for i in range(300):
            stub.ValidateSession(pb.ValidateSessionRequest(session_token="x"), metadata=MD,
                                 timeout=10 if i % 2 else None)
        for i in range(20):
            fut = stub.AuthenticateStream.future(silent(), metadata=MD, timeout=5)
            time.sleep(0.01)
            fut.cancel()
        for _ in range(5):
            code_of(stub.AuthenticateStream, silent(), metadata=MD, timeout=0.05)
        t0 = time.monotonic()
        while kept() > before and time.monotonic() - t0 < 10:
            time.sleep(0.05)  # the last calls' handlers may still be ending
        assert kept() <= before, (before, len(_CALLS))
    finally:
        stop.set()


def test_a_stream_trickling_slower_than_the_signal_is_recorded_is_ended(srv):
    """A chunk every second, each of 50 ms of signal, never stalls for signal_loss_s:
    AuthenticateStream answers DEADLINE_EXCEEDED once max_seconds + signal_loss_s of
    wall time have passed (4 + 3 s here), ContinuousAuthenticate ends the session
    (signal_lost) when no window came within a window's time + signal_loss_s. Before,
    both held the stream, and a worker thread, for as long as the client liked."""
    _, stub, _ = srv
    enroll(stub, "trickle", 1)
    secret = device(stub, "trickle", "hs-trickle")
    x = eeg(1, 3, 50, 8)
    parts = [sig(x[i:i + 8], "hs-trickle") for i in range(0, 400, 8)]  # 50 ms each
    md = (*MD, *proof_md(secret, "trickle", "hs-trickle", parts[0].samples))
    stop = threading.Event()

    def gen():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="trickle",
                                                                max_seconds=4))
        for p in parts:
            yield pb.AuthenticateStreamRequest(chunk=p)
            if stop.wait(1.0):
                return

    try:
        c, m, dt = _timed(stub.AuthenticateStream, gen(), metadata=md, timeout=30)
    finally:
        stop.set()
    assert c == grpc.StatusCode.DEADLINE_EXCEEDED and "too slowly" in m, m
    assert 6.5 < dt < 12, dt
    stub.UnlockUser(pb.UnlockUserRequest(user_id="trickle"), metadata=MD)

    tok = auth(stub, "trickle", eeg(1, 3, 60, 8), secret, "hs-trickle").session_token
    assert tok
    stop = threading.Event()

    def gen_c():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        for p in parts:
            yield pb.ContinuousAuthenticateRequest(chunk=p)
            if stop.wait(1.0):
                return

    t0 = time.monotonic()
    try:
        states = list(stub.ContinuousAuthenticate(gen_c(), metadata=MD, timeout=30))
    finally:
        stop.set()
    assert 6.5 < time.monotonic() - t0 < 12
    assert [(u.state, u.reason) for u in states] == [
        (pb.ContinuousAuthenticateResponse.ENDED, "signal_lost")]
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert not v.valid and v.reason == "signal_lost"


# ------------------------------------------------------------------ undecodable bytes
_RAW = [b"\x0a\x02\xff\xfe",  # field 1 (a string) that is not UTF-8
        b"\x0a\xff",  # a length running past the end
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"]  # not protobuf at all


@pytest.mark.parametrize("method,kind", [
    ("/nacf.v1.AuthService/GetUser", "unary"),
    ("/nacf.v1.AuthService/Authenticate", "unary"),
    ("/nacf.v1.AuthService/AuthenticateStream", "client_stream"),
    ("/nacf.v1.AuthService/ContinuousAuthenticate", "bidi"),
    ("/grpc.health.v1.Health/Check", "unary")])
def test_undecodable_request_bytes_get_invalid_argument(srv, method, kind):
    """Bytes that are not a valid message of the request type (what a client other
    than the generated stubs can send): INVALID_ARGUMENT naming the method, not
    grpcio's INTERNAL; the server goes on serving."""
    server, stub, _ = srv
    with grpc.insecure_channel(server.address) as ch:
        for body in _RAW:
            if kind == "unary":
                c, m = code_of(ch.unary_unary(method), body, metadata=MD, timeout=10)
            elif kind == "client_stream":
                c, m = code_of(ch.stream_unary(method), iter([body]), metadata=MD, timeout=10)
            else:
                call = ch.stream_stream(method)
                c, m = code_of(lambda b=body, call=call: list(
                    call(iter([b]), metadata=MD, timeout=10)))
            assert c == grpc.StatusCode.INVALID_ARGUMENT, (body, c, m)
            assert "not a valid protobuf message" in m and method.rsplit("/", 1)[-1] in m
    # without a key, the key is what is wrong
    with grpc.insecure_channel(server.address) as ch:
        c, _ = code_of(lambda: ch.unary_unary("/nacf.v1.AuthService/GetUser")(
            _RAW[0], timeout=10))
        assert c == grpc.StatusCode.UNAUTHENTICATED
    assert stub.GetStats(pb.GetStatsRequest(), metadata=MD, timeout=10) is not None


def test_bytes_after_the_decision_do_not_change_an_authenticate_streams_answer(srv):
    """Chunks are read ahead of the decision (on the stream's reader thread): an
    undecodable message after the sequential test decided must not turn the accept
    (and its open session) into INVALID_ARGUMENT, as it did when the interceptor
    aborted the call from the reader thread; the client got no token for the session
    the server had opened."""
    server, stub, _ = srv
    enroll(stub, "ahead", 1)
    secret = device(stub, "ahead", "hs-ahead")
    parts = [sig(c, "hs-ahead") for c in chunks(eeg(1, 3, 50, 20))]
    md = (*MD, *proof_md(secret, "ahead", "hs-ahead", parts[0].samples))
    body = [pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="ahead"))
            .SerializeToString()]
    body += [pb.AuthenticateStreamRequest(chunk=p).SerializeToString() for p in parts]
    body += [_RAW[2]] * 3
    with grpc.insecure_channel(server.address) as ch:
        raw = ch.stream_unary("/nacf.v1.AuthService/AuthenticateStream",
                              response_deserializer=pb.AuthenticateResponse.FromString)
        r = raw(iter(body), metadata=md, timeout=30)
    assert r.accepted and r.session_token
    assert any(x.startswith("sequential test: accept") for x in r.reasons), list(r.reasons)
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=r.session_token),
                             metadata=MD)
    assert v.valid and v.user_id == "ahead"


@pytest.mark.parametrize("rate", [0.05, 1e-300])
def test_continuous_authenticate_tiny_rate_is_invalid_argument(srv, rate):
    _, stub, _ = srv
    enroll(stub, f"tiny-{rate}", 1)
    secret = device(stub, f"tiny-{rate}", f"hs-tiny-{rate}")
    tok = auth(stub, f"tiny-{rate}", eeg(1, 3, 60, 8), secret, f"hs-tiny-{rate}").session_token
    assert tok
    C = pb.ContinuousAuthenticateRequest
    bad = pb.Signal(sample_rate_hz=rate, channel_names=CH16,
                    samples=np.zeros((1, 16), "<f4").tobytes(), device_id=f"hs-tiny-{rate}")
    c, m = code_of(lambda: list(stub.ContinuousAuthenticate(iter([
        C(start=pb.ContinuousStart(session_token=tok)), C(chunk=bad)]), metadata=MD,
        timeout=15)))
    assert c == grpc.StatusCode.INVALID_ARGUMENT, m
    assert "Hz" in m


# ------------------------------------------------------------------ races
def _race(calls):
    """Run the callables at once; return each one's status code name."""
    out = [None] * len(calls)
    go = threading.Barrier(len(calls))

    def run(i, fn):
        go.wait()
        try:
            fn()
            out[i] = "OK"
        except grpc.RpcError as e:
            out[i] = e.code().name
    ts = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


def test_racing_first_registrations_of_a_device_hand_out_one_secret(srv):
    _, stub, _ = srv
    enroll(stub, "race-dev", 1)
    secrets_out = []

    def reg():
        secrets_out.append(stub.RegisterDevice(pb.RegisterDeviceRequest(
            user_id="race-dev", device_id="hs-race"), metadata=MD, timeout=20).device_secret)
    codes = _race([reg] * 6)
    assert codes.count("OK") == 1 and codes.count("ALREADY_EXISTS") == 5, codes
    r = auth(stub, "race-dev", eeg(1, 3, 60, 8), secrets_out[0], "hs-race")
    assert r.accepted


def test_enroll_racing_delete_user_ends_ok_or_not_found_never_half_written(srv):
    server, stub, _ = srv
    store = server.service.store
    x = sig(eeg(1, 3, 0, 40))
    for i in range(4):
        user = f"race-{i}"
        enroll(stub, user, 1)

        def upd(user=user):
            stub.Enroll(pb.EnrollRequest(user_id=user, signals=[x], update=True),
                        metadata=MD, timeout=30)

        def delete(user=user):
            stub.DeleteUser(pb.DeleteUserRequest(user_id=user), metadata=MD, timeout=30)
        codes = _race([upd, upd, delete, delete])
        assert set(codes) <= {"OK", "NOT_FOUND"}, codes
        try:
            store.get_user(user)
        except NotFound:  # deleted last: nothing of the user is left
            assert store.get_fingerprints(user) == []
        else:  # enrolled last: its template with the enrollment's fingerprints
            assert store.get_template(user).blob
            assert any(k == "enroll" for k, _ in store.get_fingerprints(user))


def test_streams_opened_before_a_lockout_get_no_more_tries_and_no_session(srv):
    """Streams pass the lock check when their first message arrives; the user may be
    locked by the time they finish. Then a reject returns no score and an accept opens
    no session: both FAILED_PRECONDITION, and the attempts are still counted and
    audited (lockout_threshold is 3)."""
    server, stub, _ = srv
    enroll(stub, "lock-st", 1)
    secret = device(stub, "lock-st", "hs-lock-st")
    n = 5
    gates = [threading.Event() for _ in range(n)]
    datas = [eeg(5, 7, 8 * i, 8) for i in range(n - 1)] + [eeg(1, 3, 60, 8)]  # last genuine
    results = [None] * n

    def run(i):
        parts = [sig(c, "hs-lock-st") for c in chunks(datas[i])]
        md = (*MD, *proof_md(secret, "lock-st", "hs-lock-st", parts[0].samples))

        def gen():
            yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="lock-st"))
            gates[i].wait(30)
            for p in parts:
                yield pb.AuthenticateStreamRequest(chunk=p)
        try:
            results[i] = stub.AuthenticateStream(gen(), metadata=md, timeout=60)
        except grpc.RpcError as e:
            results[i] = (e.code(), e.details())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every stream has sent its start message and passed the lock check
    for i in range(n):  # then they finish one after another
        gates[i].set()
        threads[i].join(60)
    for r in results[:3]:  # the three failures that lock the user
        assert not isinstance(r, tuple) and not r.accepted, r
    for r in results[3:]:  # after the lock: neither a score nor a session
        assert isinstance(r, tuple) and r[0] == grpc.StatusCode.FAILED_PRECONDITION, r
        assert "locked" in r[1]
    assert stub.GetUser(pb.GetUserRequest(user_id="lock-st"), metadata=MD).user.locked
    rows = server.service.store.recent_attempts("lock-st", 10)  # newest first
    assert [(a.success, a.reason) for a in rows[:2]] == [(False, "locked"),
                                                        (False, "score_below_threshold")]
    stub.UnlockUser(pb.UnlockUserRequest(user_id="lock-st"), metadata=MD)


def test_continuous_authenticate_ends_on_a_looped_recording(srv, caplog):
    """Every window of the stream is checked for replay like an Authenticate probe,
    against the stored history and the stream's own earlier windows: streaming the same
    recorded 4 s again ends the session (reason ``replay``); the genuine windows before it
    are verified (consecutive genuine 4-s windows against a growing history are the
    protocol of benches/pad_dev_rates.py: 0 of 1450 rejected). The attack's security_event
    line names the caller's address."""
    _, stub, _ = srv
    enroll(stub, "loop", 1)
    secret = device(stub, "loop", "hs-loop")
    tok = auth(stub, "loop", eeg(1, 3, 60, 8), secret, "hs-loop").session_token
    live = eeg(1, 3, 70, 12)
    looped = np.concatenate([live, live[:640]])  # 12 s, then its first 4 s again

    def gen():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        for c in chunks(looped):
            yield pb.ContinuousAuthenticateRequest(chunk=sig(c, "hs-loop"))

    with caplog.at_level("INFO", logger="nacf.service"):
        states = list(stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=30))
    E = pb.ContinuousAuthenticateResponse
    assert [s.state for s in states[:3]] == [E.VERIFIED] * 3
    assert states[-1].state == E.ENDED and states[-1].reason == "replay", states[-1]
    (r,) = [r for r in caplog.records if getattr(r, "security_event_type", "") == "replay"]
    assert (r.user_id, r.method, r.ip_address) == ("loop", "ContinuousAuthenticate",
                                                   "127.0.0.1")
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert not v.valid and v.reason == "replay"


def test_continuous_session_ended_by_another_call_mid_window_is_an_ended_update(srv,
                                                                                monkeypatch):
    """EndSession (or another stream on the token) landing between a window's session
    check and its renewal: the stream says ENDED with the reason, not an error."""
    server, stub, _ = srv
    svc = server.service
    enroll(stub, "renew", 1)
    secret = device(stub, "renew", "hs-renew")
    tok = auth(stub, "renew", eeg(1, 3, 60, 8), secret, "hs-renew").session_token
    renew = svc._renew

    def ended_first(token, expires, now):
        svc.store.end_session(token, "ended", now=now)
        return renew(token, expires, now)
    monkeypatch.setattr(svc, "_renew", ended_first)

    def gen():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=tok))
        for c in chunks(eeg(1, 3, 70, 8)):
            yield pb.ContinuousAuthenticateRequest(chunk=sig(c, "hs-renew"))

    states = list(stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=30))
    E = pb.ContinuousAuthenticateResponse
    assert states[-1].state == E.ENDED and states[-1].reason == "ended", states


def test_register_device_says_whether_it_rotated_a_secret(srv):
    """RegisterDevice with rotate=true on a headset not bound yet registers it (a first
    registration racing a rotation is one), and its answer was the same as a rotation's:
    an admin rotating a compromised headset's secret under a mistyped device_id was told
    nothing, and the old secret stayed valid. RegisterDeviceResponse.rotated says which
    it was."""
    _, stub, _ = srv
    enroll(stub, "rotflag", 1)
    first = stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="rotflag", device_id="hs-rf"),
                                metadata=MD, timeout=10)
    assert first.rotated is False
    typo = stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="rotflag", device_id="hs-fr",
                                                        rotate=True), metadata=MD, timeout=10)
    assert typo.rotated is False and typo.device_secret
    again = stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="rotflag", device_id="hs-rf",
                                                         rotate=True), metadata=MD, timeout=10)
    assert again.rotated is True and again.device_secret != first.device_secret


@pytest.mark.parametrize("device_id", ["casque-é", "hs\u20111", "ヘッドセット1"])
def test_register_device_refuses_an_id_the_device_proof_cannot_carry(srv, device_id):
    """The device proof names the headset in x-device-id gRPC metadata, which holds
    printable ASCII only; RegisterDevice bound any printable id, so a headset registered
    as 'casque-é' got a secret it could never use (its client's call failed before it
    left: 'Invalid metadata'). Such an id is INVALID_ARGUMENT, nothing bound."""
    _, stub, _ = srv
    user = f"asciidev-{len(device_id)}-{ord(device_id[-2])}"
    enroll(stub, user, 1)
    with pytest.raises(grpc.RpcError) as e:
        stub.RegisterDevice(pb.RegisterDeviceRequest(user_id=user, device_id=device_id),
                            metadata=MD, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'device_id' must be printable ASCII" in e.value.details()
    got = stub.GetUser(pb.GetUserRequest(user_id=user), metadata=MD, timeout=10).user
    assert list(got.device_ids) == []


def test_a_continuous_stream_is_counted_as_its_client_ended_it(srv):
    """Over gRPC: a ContinuousAuthenticate whose client declared ``sends_end_of_signal``
    is counted OK when it ends its signal with ``end_of_signal`` and CANCELLED when it
    cancels the call (grpcio's server can see that cancel as the plain end of the
    stream; see test_a_continuous_stream_cut_short_without_its_end_marker_is_cancelled)."""
    _, stub, metrics = srv
    enroll(stub, "cancel-c", 1)
    secret = device(stub, "cancel-c", "hs-cc")
    tok = auth(stub, "cancel-c", eeg(1, 3, 60, 8), secret, "hs-cc").session_token
    E = pb.ContinuousAuthenticateResponse
    for i, how in enumerate(["marker", "cancel", "marker"]):
        before = _requests_by_status(metrics, "ContinuousAuthenticate")
        stop = threading.Event()

        def gen():
            yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(
                session_token=tok, sends_end_of_signal=True))
            for c in chunks(eeg(1, 3, 70 + 8 * i, 4)):
                yield pb.ContinuousAuthenticateRequest(chunk=sig(c, "hs-cc"))
            if how == "marker":
                yield pb.ContinuousAuthenticateRequest(end_of_signal=True)
            stop.wait(20)

        call = stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=30)
        try:
            assert next(call).state == E.VERIFIED
            if how == "cancel":
                assert call.cancel()
            else:
                assert list(call) == [] and call.code() == grpc.StatusCode.OK
        finally:
            stop.set()
        d = _counted_since(metrics, "ContinuousAuthenticate", before, 1)
        assert d == {"CANCELLED" if how == "cancel" else "OK": 1}, (how, d)
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=tok), metadata=MD)
    assert v.valid


def test_log_lines_naming_the_caller_carry_its_user_agent(srv, caplog):
    """The monitoring guide's auth-attempt line (METRICS.md: "JSON lines with the guide's
    fields") carries the client's ``user_agent`` beside its address; nacf's lines had the
    address and no user agent at all, so an operator could not tell which application
    (or which version of it) made an attempt or a refused call. Every line that names the
    caller's address now names its gRPC user-agent too (cut to 256 characters)."""
    server, _, _ = srv
    chan = grpc.insecure_channel(server.address, options=[
        ("grpc.primary_user_agent", "door-app/7.1 " + "x" * 400)])
    stub = pbg.AuthServiceStub(chan)
    try:
        enroll(stub, "ua1", 1)
        secret = device(stub, "ua1", "hs-ua1")
        with caplog.at_level("INFO", logger="nacf"):
            assert auth(stub, "ua1", eeg(1, 3, 60, 8), secret, "hs-ua1").accepted
            stub.Identify(pb.IdentifyRequest(signal=sig(eeg(1, 3, 70, 8))), metadata=MD,
                          timeout=10)
            assert code_of(stub.GetStats, pb.GetStatsRequest(),
                           metadata=(("x-api-key", "not-a-key-0123456789"),),
                           timeout=10)[0] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        chan.close()
    lines = {r.event_type: r for r in caplog.records
             if getattr(r, "event_type", "") in ("auth_attempt", "identify", "security_event")}
    assert set(lines) == {"auth_attempt", "identify", "security_event"}, caplog.records
    for r in lines.values():
        ua = getattr(r, "user_agent", "")
        assert ua.startswith("door-app/7.1 xxx") and len(ua) <= 256, (r.event_type, ua)
        assert r.ip_address == "127.0.0.1"
