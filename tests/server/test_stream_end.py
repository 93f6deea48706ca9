"""AuthenticateStream's end of signal, over a real loopback port.

grpcio's server can show a client's cancel of a stream as its plain end (the request
iterator stops before the cancel is seen), and a server that decides when the stream
ends then decided on a stream its client had cancelled: a failed attempt counted
towards the lockout. A client that declares ``StreamStart.sends_end_of_signal`` marks
the end with ``end_of_signal``; its stream is decided on that marker only, and one that
ends without it is answered CANCELLED with nothing decided. Clients that do not declare
it are decided when their stream ends, as before."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from _server_support import CH16, SFREQ, auth_requests, eeg, make_pipeline

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.config import Config
from nacf_core.server.app import NacfServer
from nacf_core.server.converters import block_to_signal
from nacf_core.service import AuthService
from nacf_core.store import open_store

KEY = "stream-end-key-0123456789"
MD = (("x-api-key", KEY),)
USER = "ann"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, model_path):
    from prometheus_client import CollectorRegistry

    from nacf_core.metrics import Metrics

    d = tmp_path_factory.mktemp("stream-end")
    cfg = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(d),
                 lockout_threshold=50, lockout_seconds=600, rate_limit_per_s=1000,
                 rate_limit_burst=1000, signal_loss_s=3.0, require_device_proof=False,
                 api_keys={KEY: frozenset({"authenticate", "enroll", "admin"})})
    metrics = Metrics(CollectorRegistry())
    store = open_store(f"sqlite:///{d / 'nacf.db'}", bytes(range(32)))
    service = AuthService(store, make_pipeline(model_path), cfg, metrics=metrics)
    server = NacfServer(cfg, service, metrics=metrics, sidecar=False).start()
    chan = grpc.insecure_channel(server.address)
    stub = pbg.AuthServiceStub(chan)
    stub.Enroll(pb.EnrollRequest(user_id=USER, signals=[
        block_to_signal(eeg(1, 3, 0, 40), SFREQ, CH16, "")]), metadata=MD, timeout=30)
    yield server, stub
    chan.close()
    server.stop(0)
    store.close()


def noisy_parts(seconds: float, chunk_s: float = 0.5) -> list:
    """Chunks of ``seconds`` of signal whose every window the quality gate rejects: the
    sequential test never decides before the stream ends (then on the fused score)."""
    n = int(round(seconds * SFREQ))
    x = np.random.default_rng(7).normal(0, 400, (n, len(CH16))).astype("<f4")
    k = int(chunk_s * SFREQ)
    return [block_to_signal(x[i:i + k], SFREQ, CH16, "") for i in range(0, n, k)]


def start(declared: bool) -> pb.AuthenticateStreamRequest:
    return pb.AuthenticateStreamRequest(start=pb.StreamStart(
        user_id=USER, sends_end_of_signal=declared))


def failures(stub) -> int:
    return stub.GetUser(pb.GetUserRequest(user_id=USER), metadata=MD,
                        timeout=10).user.consecutive_failures


def unlock(stub) -> None:
    stub.UnlockUser(pb.UnlockUserRequest(user_id=USER), metadata=MD, timeout=10)


def decisions(server) -> float:
    return sum(server.metrics.registry.get_sample_value(
        "nacfauth_auth_decisions_total", {"decision": d}) or 0.0 for d in ("accept", "reject"))


def wait_counted(server, status: str, n: float, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while (auth_requests(server, "AuthenticateStream", status) < n
           and time.monotonic() - t0 < timeout):
        time.sleep(0.05)
    return auth_requests(server, "AuthenticateStream", status)


def test_a_declared_stream_that_ends_without_its_marker_is_cancelled_not_decided(srv):
    """What grpcio can show the server of a cancel, made certain: the client closes its
    side after 4.5 s of signal without end_of_signal. Answered CANCELLED, saying why; no
    attempt recorded (no failure, no decision), counted CANCELLED."""
    server, stub = srv
    unlock(stub)
    parts = noisy_parts(4.5)
    cancelled0 = auth_requests(server, "AuthenticateStream", "CANCELLED")
    d0 = decisions(server)

    def gen():
        yield start(True)
        for p in parts:
            yield pb.AuthenticateStreamRequest(chunk=p)

    with pytest.raises(grpc.RpcError) as ei:
        stub.AuthenticateStream(gen(), metadata=MD, timeout=30)
    assert ei.value.code() == grpc.StatusCode.CANCELLED, ei.value.details()
    assert "end_of_signal" in ei.value.details()
    assert wait_counted(server, "CANCELLED", cancelled0 + 1) == cancelled0 + 1
    assert failures(stub) == 0 and decisions(server) == d0


def test_a_declared_stream_its_client_cancels_is_never_decided(srv):
    """A client that sends 4.5 s of signal (no decision yet) and cancels: grpcio's server
    showed some such cancels as the end of the stream (2 in 20 in one run), and the server
    decided on them, a failed attempt each. Declared streams record none, and every one
    is counted CANCELLED."""
    server, stub = srv
    unlock(stub)
    parts = noisy_parts(4.5)
    n = 15
    cancelled0 = auth_requests(server, "AuthenticateStream", "CANCELLED")
    ok0 = auth_requests(server, "AuthenticateStream", "OK")
    d0 = decisions(server)
    for _ in range(n):
        sent, hold = threading.Event(), threading.Event()

        def gen():
            yield start(True)
            for p in parts:
                yield pb.AuthenticateStreamRequest(chunk=p)
            sent.set()
            hold.wait(10)

        call = stub.AuthenticateStream.future(gen(), metadata=MD, timeout=30)
        try:
            assert sent.wait(10)
            time.sleep(0.2)  # the chunks are read: the server waits for more
            assert call.cancel()
        finally:
            hold.set()
    assert wait_counted(server, "CANCELLED", cancelled0 + n) == cancelled0 + n
    assert auth_requests(server, "AuthenticateStream", "OK") == ok0
    assert failures(stub) == 0 and decisions(server) == d0


def test_end_of_signal_decides_at_once_alone_or_on_the_last_chunk(srv):
    """The marker decides without the client closing its side: on a message of its own
    after the chunks, or on the last chunk (whose signal counts); a message after the
    marker is not read (this one would be INVALID_ARGUMENT)."""
    server, stub = srv
    release = threading.Event()
    try:
        for on_chunk in (False, True):
            unlock(stub)
            parts = noisy_parts(4.0)

            def gen():
                yield start(True)
                for i, p in enumerate(parts):
                    last = on_chunk and i == len(parts) - 1
                    yield pb.AuthenticateStreamRequest(chunk=p, end_of_signal=last)
                if not on_chunk:
                    yield pb.AuthenticateStreamRequest(end_of_signal=True)
                yield start(True)  # out of place: never read
                release.wait(20)  # the stream stays open

            r = stub.AuthenticateStream(gen(), metadata=MD, timeout=10)
            assert not r.accepted and not r.session_token
            # 4.0 s: one window, the marked chunk's half second included
            assert any("undecided" in x and "(4.0 s)" in x for x in r.reasons), \
                (on_chunk, list(r.reasons))
            assert failures(stub) == 1
    finally:
        release.set()
        unlock(stub)


def test_a_stream_that_does_not_declare_the_marker_is_decided_when_it_ends(srv):
    """Clients older than the marker: the end of their stream is the end of the signal,
    decided on as before; a marker they send ends it too."""
    server, stub = srv
    for marker in (False, True):
        unlock(stub)
        parts = noisy_parts(4.5)

        def gen():
            yield start(False)
            for p in parts:
                yield pb.AuthenticateStreamRequest(chunk=p)
            if marker:
                yield pb.AuthenticateStreamRequest(end_of_signal=True)

        r = stub.AuthenticateStream(gen(), metadata=MD, timeout=30)
        assert not r.accepted and any("undecided" in x for x in r.reasons), list(r.reasons)
        assert failures(stub) == 1
    unlock(stub)


@pytest.mark.parametrize("msg, said", [
    (pb.AuthenticateStreamRequest(), "message 1 of the stream must be a 'chunk' (or a bare "
                                     "end_of_signal); got none"),
    (pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id=USER), end_of_signal=True),
     "message 1 of the stream must be a 'chunk' (or a bare end_of_signal); got start"),
])
def test_a_message_out_of_place_is_still_invalid_argument(srv, msg, said):
    server, stub = srv
    with pytest.raises(grpc.RpcError) as ei:
        stub.AuthenticateStream(iter([start(True), msg]), metadata=MD, timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert said in ei.value.details()


def test_a_marker_on_the_start_message_is_a_stream_without_signal(srv):
    server, stub = srv
    first = start(True)
    first.end_of_signal = True
    with pytest.raises(grpc.RpcError) as ei:
        stub.AuthenticateStream(iter([first]), metadata=MD, timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no Signal chunk" in ei.value.details()


def test_nacf_client_declares_the_marker_and_sends_it_when_the_source_ends(srv):
    """nacf client / nacf demo (``nacf_core.client.authenticate_stream``): a source that
    ends before the server decides gets a decision on what it sent (the marker), as it
    did when the stream's end was taken for the signal's."""
    from nacf_core.client import Blocks, authenticate_stream
    from nacf_core.hardware.base import Chunk

    server, stub = srv
    unlock(stub)
    x = np.random.default_rng(3).normal(0, 400, (int(4.5 * SFREQ), len(CH16))).astype("f4")
    sent: list = []

    class Src:
        sfreq, ch_names = SFREQ, CH16

        def __init__(self):
            self.left = [x[i:i + 40] for i in range(0, len(x), 40)]

        def read_chunk(self, timeout):
            if not self.left:
                return None  # the source ended
            c = self.left.pop(0)
            return Chunk(c, np.zeros(len(c)), self.ch_names, self.sfreq)

    class Stub:  # the real method, the requests noted
        class AuthenticateStream:
            @staticmethod
            def future(requests, **kw):
                def noted():
                    for m in requests:
                        sent.append(m)
                        yield m
                return stub.AuthenticateStream.future(noted(), **kw)

    with Blocks(Src(), timeout=10) as blocks:
        res = authenticate_stream(Stub(), MD, USER, blocks)
    assert not res.response.accepted
    assert any("undecided" in r for r in res.response.reasons), list(res.response.reasons)
    assert sent[0].start.sends_end_of_signal
    assert sent[-1].end_of_signal and sent[-1].WhichOneof("kind") is None
    assert all(m.WhichOneof("kind") == "chunk" and not m.end_of_signal for m in sent[1:-1])
    assert failures(stub) == 1
    unlock(stub)
