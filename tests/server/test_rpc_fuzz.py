"""Generated requests against a real server: whatever a client sends to any RPC, the
answer is a status of the contract (OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAUTHENTICATED, PERMISSION_DENIED,
DEADLINE_EXCEEDED, UNAVAILABLE) with a message, never UNKNOWN or INTERNAL (an exception
that escaped a handler), and the server keeps serving.

The requests mix valid parts (the enrolled user, the model's montage and rate, a real
device proof over the very samples sent) with hostile ones (NaN and infinite numbers,
extreme integers, NUL and non-ASCII text, 5 000-character ids, samples of any length),
so that the calls reach the recognition and the store, not only the first check."""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest
from _server_support import CH16, SFREQ, eeg, make_pipeline, proof_md
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.config import Config
from nacf_core.metrics import Metrics
from nacf_core.pad import PresentationAttackDetector
from nacf_core.server.app import NacfServer
from nacf_core.server.converters import block_to_signal
from nacf_core.service import AuthService
from nacf_core.store import open_store

KEY = "key-fuzz-0123456789"
MD = (("x-api-key", KEY),)
USER, DEV = "fz", "fz-headset"
C = grpc.StatusCode
CONTRACT = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION,
            C.RESOURCE_EXHAUSTED, C.UNAUTHENTICATED, C.PERMISSION_DENIED,
            C.DEADLINE_EXCEEDED, C.UNAVAILABLE}
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def srv(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("fuzz")
    cfg = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(d),
                 lockout_threshold=10, lockout_seconds=1, rate_limit_per_s=100000,
                 rate_limit_burst=100000, max_message_bytes=4 << 20, signal_loss_s=2.0,
                 api_keys={KEY: frozenset({"authenticate", "enroll", "admin"})})
    metrics = Metrics(CollectorRegistry())
    store = open_store(f"sqlite:///{d / 'nacf.db'}", bytes(range(32)))
    pipeline = make_pipeline(model_path)
    service = AuthService(store, pipeline, cfg, metrics=metrics,
                          pad=PresentationAttackDetector(list(pipeline.model.ch_names)))
    server = NacfServer(cfg, service, metrics=metrics, sidecar=False).start()
    chan = grpc.insecure_channel(server.address, options=[
        ("grpc.max_send_message_length", 16 << 20)])
    stub = pbg.AuthServiceStub(chan)
    stub.Enroll(pb.EnrollRequest(user_id=USER, signals=[
        block_to_signal(eeg(1, 3, 0, 40), SFREQ, CH16)]), metadata=MD, timeout=60)
    secret = stub.RegisterDevice(pb.RegisterDeviceRequest(user_id=USER, device_id=DEV),
                                 metadata=MD, timeout=10).device_secret
    yield server, stub, chan, secret
    chan.close()
    server.stop(0)
    store.close()


# ------------------------------------------------------------------ strategies
odd_text = st.sampled_from(["", "a", "\x00", "fz\x00", "ü", "😀", " ", "a" * 5000, "../x",
                            "%s%n", "fz ", "FZ", "\n", "x" * 200,
                            # at the documented 128-character limit of an id and one past
                            # it, in 1- to 4-byte UTF-8 characters; invisible and combining
                            # characters, a right-to-left override, a BOM
                            "a" * 128, "a" * 129, "é" * 128, "😀" * 128, "😀" * 129,
                            "e\u0301" * 64, "\u200b", "fz\u200b", "\u202efz", "\ufeff",
                            "ﬀ", "İ"])
ids = st.one_of(st.just(USER), odd_text, st.text(max_size=40))
#: mostly the enrolled user, so that the call gets to the recognition
claimants = st.one_of(st.just(USER), st.just(USER), st.just(USER), ids)
doubles = st.one_of(
    st.sampled_from([0.0, -0.0, SFREQ, SFREQ, 159.999, 160.001, 80.0, 250.0, 1e-300, 1e300,
                     -SFREQ, math.nan, math.inf, -math.inf, 2.0 ** 31, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True))
int32s = st.one_of(st.sampled_from([0, 1, -1, 5, 100, 101, 1000, 1001, 2 ** 31 - 1,
                                    -2 ** 31]),
                   st.integers(-2 ** 31, 2 ** 31 - 1))
channel_lists = st.one_of(
    st.just(CH16), st.just(CH16[:8]), st.just(CH16[::-1]), st.just([]),
    st.just(CH16[:15] + CH16[:1]), st.just([c.rstrip(".") for c in CH16]),
    st.lists(st.one_of(odd_text, st.text(max_size=8)), max_size=20))
MUTATIONS = ["rate", "channels", "length", "nan", "inf", "zeros", "huge", "tiny", "flat_channel",
             "wild_channel", "dc", "bytes", "trim", "device"]


@st.composite
def signals(draw):
    """A real 4- or 8-s 16-channel block at the model's rate (of the enrolled subject or
    another), then 0 to 3 of :data:`MUTATIONS`: mostly one thing wrong at a time, so the
    call gets past the first checks into the pipeline, PAD and the store."""
    x = eeg(draw(st.sampled_from([1, 2])), 7, draw(st.integers(0, 50)), 8)[
        : draw(st.sampled_from([640, 1280]))].copy()
    rate, names, device = SFREQ, list(CH16), DEV
    raw = None
    for m in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)):
        if m == "rate":
            rate = draw(doubles)
        elif m == "channels":
            names = draw(channel_lists)
            n = max(len(names), 1)
            x = np.ascontiguousarray(np.resize(x.T, (n, x.shape[0])).T)
        elif m == "length":
            x = x[: draw(st.sampled_from([0, 1, 50, 159, 160, 639, 641]))]
        elif m in ("nan", "inf") and x.size:
            x.flat[draw(st.integers(0, x.size - 1))] = np.nan if m == "nan" else -np.inf
        elif m == "zeros":
            x[:] = 0
        elif m == "huge":
            with np.errstate(over="ignore"):
                x *= np.float32(1e30)
        elif m == "tiny":
            x *= np.float32(1e-30)
        elif m in ("flat_channel", "wild_channel") and x.size:
            c = draw(st.integers(0, x.shape[1] - 1))
            x[:, c] = 0 if m == "flat_channel" else np.float32(3e38) * np.sign(x[:, c] + 0.5)
        elif m == "dc":
            x += np.float32(draw(st.sampled_from([1e3, 1e6, -1e9])))
        elif m == "bytes":
            raw = draw(st.binary(max_size=4096))
        elif m == "trim":
            raw = np.ascontiguousarray(x, "<f4").tobytes()
            raw = raw[: len(raw) - draw(st.integers(0, min(len(raw), 7)))]
        elif m == "device":
            device = draw(st.one_of(st.just(""), odd_text))
    if raw is None:
        raw = np.ascontiguousarray(x, "<f4").tobytes()
    return pb.Signal(sample_rate_hz=rate, channel_names=names, samples=raw, device_id=device)


def metadata_for(draw, user_id: str, samples: bytes, secret: str):
    kind = draw(st.sampled_from(["proof"] * 5 + ["none", "stale", "garbage", "twice"]))
    if kind == "proof":
        return (*MD, *proof_md(secret, user_id, DEV, samples))
    if kind == "stale":
        return (*MD, *proof_md(secret, user_id, DEV, samples, int(time.time()) - 3600))
    if kind == "garbage":
        return (*MD, ("x-device-id", draw(st.text(alphabet="abcXYZ-09 ", max_size=30))),
                ("x-device-timestamp", draw(st.sampled_from(
                    ["", "-1", "1e9", "nan", "99999999999999999999", "0x10", " 12"]))),
                ("x-device-proof", draw(st.text(alphabet="0123456789abcdefG", max_size=70))))
    if kind == "twice":
        md = proof_md(secret, user_id, DEV, samples)
        return (*MD, *md, md[0])
    return MD


def check(stub_call, *args, **kwargs):
    """Call; return the status code, having checked it is in the contract."""
    try:
        r = stub_call(*args, timeout=30, **kwargs)
        if hasattr(r, "__iter__") and not hasattr(r, "ListFields"):
            for _ in r:
                pass
        return C.OK
    except grpc.RpcError as e:
        assert e.code() in CONTRACT, (e.code(), e.details())
        assert e.details(), e.code()
        return e.code()


def still_serving(server, stub, secret):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    stub.GetUser(pb.GetUserRequest(user_id=USER), metadata=MD, timeout=10)


# ------------------------------------------------------------------ the tests
@FUZZ
@given(data=st.data())
def test_authenticate_answers_any_request_within_the_contract(srv, data):
    server, stub, _, secret = srv
    s = data.draw(signals())
    user = data.draw(claimants)
    md = metadata_for(data.draw, user, s.samples, secret)
    check(stub.Authenticate, pb.AuthenticateRequest(user_id=user, signal=s), metadata=md)
    stub.UnlockUser(pb.UnlockUserRequest(user_id=USER), metadata=MD, timeout=10)


@FUZZ
@given(data=st.data())
def test_authenticate_stream_answers_any_stream_within_the_contract(srv, data):
    server, stub, _, secret = srv
    user = data.draw(claimants)
    chunks = data.draw(st.lists(signals(), min_size=0, max_size=4))
    msgs = []
    if data.draw(st.integers(0, 4)):  # mostly a start first
        msgs.append(pb.AuthenticateStreamRequest(start=pb.StreamStart(
            user_id=user, max_seconds=data.draw(st.one_of(st.just(0.0), st.just(8.0),
                                                          doubles)))))
    msgs += [pb.AuthenticateStreamRequest(chunk=c) for c in chunks]
    if data.draw(st.integers(0, 5)) == 0:  # a second start, or a start last
        msgs.insert(data.draw(st.integers(0, len(msgs))),
                    pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id=user)))
    first = chunks[0].samples if chunks else b""
    md = metadata_for(data.draw, user, first, secret)
    check(stub.AuthenticateStream, iter(msgs), metadata=md)
    stub.UnlockUser(pb.UnlockUserRequest(user_id=USER), metadata=MD, timeout=10)


@FUZZ
@given(data=st.data())
def test_enroll_and_identify_answer_any_request_within_the_contract(srv, data):
    server, stub, _, _ = srv
    sigs = data.draw(st.lists(signals(), max_size=3))
    user = data.draw(st.one_of(st.just("fz-new"), ids))
    code = check(stub.Enroll, pb.EnrollRequest(user_id=user, signals=sigs,
                                               update=data.draw(st.booleans())), metadata=MD)
    if code == C.OK and user != USER:
        stub.DeleteUser(pb.DeleteUserRequest(user_id=user), metadata=MD, timeout=10)
    check(stub.Identify, pb.IdentifyRequest(signal=data.draw(signals()),
                                            top_k=data.draw(int32s)), metadata=MD)


@FUZZ
@given(data=st.data())
def test_admin_and_session_rpcs_answer_any_request_within_the_contract(srv, data):
    server, stub, _, _ = srv
    user = data.draw(st.one_of(ids.filter(lambda u: u != USER), st.just("nobody")))
    token = data.draw(st.one_of(odd_text, st.text(max_size=60),
                                st.text(alphabet="0123456789abcdef", min_size=64,
                                        max_size=64)))
    check(stub.GetUser, pb.GetUserRequest(user_id=data.draw(ids)), metadata=MD)
    check(stub.UnlockUser, pb.UnlockUserRequest(user_id=data.draw(ids)), metadata=MD)
    check(stub.DeleteUser, pb.DeleteUserRequest(user_id=user), metadata=MD)
    check(stub.ListUsers, pb.ListUsersRequest(page_size=data.draw(int32s),
                                              page_token=data.draw(st.one_of(
                                                  odd_text, st.text(max_size=40)))),
          metadata=MD)
    check(stub.ValidateSession, pb.ValidateSessionRequest(session_token=token), metadata=MD)
    check(stub.EndSession, pb.EndSessionRequest(session_token=token), metadata=MD)
    check(stub.EndUserSessions, pb.EndUserSessionsRequest(
        user_id=user, device_id=data.draw(odd_text)), metadata=MD)
    check(stub.RegisterDevice, pb.RegisterDeviceRequest(
        user_id=data.draw(st.one_of(st.just("nobody"), odd_text)),
        device_id=data.draw(odd_text), rotate=data.draw(st.booleans())), metadata=MD)
    check(stub.GetStats, pb.GetStatsRequest(), metadata=MD)
    check(stub.GetModel, pb.GetModelRequest(), metadata=MD)


@FUZZ
@given(data=st.data())
def test_continuous_authenticate_answers_any_stream_within_the_contract(srv, data):
    server, stub, _, secret = srv
    start_tok = data.draw(st.sampled_from(["session", "session", "odd", "none"]))
    msgs = []
    if start_tok == "session":
        x = eeg(1, 7, data.draw(st.integers(0, 50)), 8)
        s = block_to_signal(x, SFREQ, CH16, DEV)
        try:
            tok = stub.Authenticate(pb.AuthenticateRequest(user_id=USER, signal=s),
                                    metadata=(*MD, *proof_md(secret, USER, DEV, s.samples)),
                                    timeout=30).session_token
        except grpc.RpcError as e:  # a replay of an earlier probe, say: within the contract
            assert e.code() in CONTRACT, (e.code(), e.details())
            tok = ""
        msgs.append(pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(
            session_token=tok)))
    elif start_tok == "odd":
        msgs.append(pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(
            session_token=data.draw(odd_text))))
    msgs += [pb.ContinuousAuthenticateRequest(chunk=c)
             for c in data.draw(st.lists(signals(), max_size=3))]
    check(stub.ContinuousAuthenticate, iter(msgs), metadata=MD)
    stub.UnlockUser(pb.UnlockUserRequest(user_id=USER), metadata=MD, timeout=10)


@FUZZ
@given(data=st.data())
def test_bytes_that_are_no_message_get_invalid_argument(srv, data):
    server, _, chan, _ = srv
    method = data.draw(st.sampled_from(
        ["Authenticate", "Enroll", "Identify", "GetUser", "ListUsers", "ValidateSession",
         "RegisterDevice", "GetStats", "GetModel"]))
    raw = data.draw(st.one_of(st.binary(max_size=300),
                              st.sampled_from([b"\x0a\x02\xff\xfe", b"\x0a\x05ab",
                                               b"\xff" * 20, b"\x12\x80\x80\x80\x80\x10"])))
    call = chan.unary_unary(f"/nacf.v1.AuthService/{method}",
                            request_serializer=None, response_deserializer=None)
    check(call, raw, metadata=MD)


def test_the_server_still_serves_after_the_fuzzing(srv):
    server, stub, _, secret = srv
    still_serving(server, stub, secret)
    x = eeg(1, 7, 60, 8)
    s = block_to_signal(x, SFREQ, CH16, DEV)
    stub.UnlockUser(pb.UnlockUserRequest(user_id=USER), metadata=MD, timeout=10)
    r = stub.Authenticate(pb.AuthenticateRequest(user_id=USER, signal=s),
                          metadata=(*MD, *proof_md(secret, USER, DEV, s.samples)), timeout=30)
    assert r.accepted, (r.score, r.threshold, list(r.reasons))
