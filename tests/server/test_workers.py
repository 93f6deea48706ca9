"""The gRPC server's threads: what open streams may hold, and what is left for the
unary calls (Authenticate, Enroll, GetStats, ...) whatever the streams do."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from _server_support import CH16, SFREQ, eeg, make_pipeline, proof_md
from _server_support import auth_requests as _requests
from _server_support import wait_in_flight as _wait_in_flight
from prometheus_client import CollectorRegistry

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.config import Config
from nacf_core.metrics import Metrics
from nacf_core.server import interceptors
from nacf_core.server.app import NacfServer
from nacf_core.server.converters import block_to_signal
from nacf_core.service import AuthService
from nacf_core.store import open_store

KEY = "workers-key-0123456789"
MD = (("x-api-key", KEY),)
ALL = frozenset({"authenticate", "enroll", "admin"})


def _server(tmp_path, model_path, **kw):
    cfg = Config(**{"grpc_address": "127.0.0.1:0", "metrics_address": "",
                    "data_dir": str(tmp_path), "api_keys": {KEY: ALL},
                    "rate_limit_per_s": 1000, "rate_limit_burst": 1000, **kw})
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    metrics = Metrics(CollectorRegistry())
    svc = AuthService(store, make_pipeline(model_path), cfg, metrics=metrics)
    return NacfServer(cfg, svc, metrics=metrics, sidecar=False), store


def _sig(x, device_id=""):
    return block_to_signal(x, SFREQ, CH16, device_id)


class _Held:
    """A stream its client holds open: ``AuthenticateStream`` or ``ContinuousAuthenticate``
    whose start message comes only once :meth:`release` is called (its handler waits for
    it, up to signal_loss_s); :attr:`error` is what the call ended with."""

    def __init__(self, stub, method: str = "AuthenticateStream", md=MD) -> None:
        self.go = threading.Event()
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()

        def gen():
            self.go.wait(60)
            if method == "AuthenticateStream":
                yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))
            else:
                yield pb.ContinuousAuthenticateRequest(
                    start=pb.ContinuousStart(session_token="x"))

        def run():
            try:
                if method == "AuthenticateStream":
                    stub.AuthenticateStream(gen(), metadata=md, timeout=60)
                else:
                    list(stub.ContinuousAuthenticate(gen(), metadata=md, timeout=60))
            except grpc.RpcError as e:
                self.error = e
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def release(self) -> None:
        self.go.set()


def _enrolled_session(stub, user="wearer", dev="hs-1"):
    """Enroll ``user`` (EEGMMIDB S001), bind a headset, authenticate: ``(token, secret)``."""
    stub.Enroll(pb.EnrollRequest(user_id=user, signals=[_sig(eeg(1, 3, 0, 40))]),
                metadata=MD, timeout=60)
    secret = stub.RegisterDevice(pb.RegisterDeviceRequest(user_id=user, device_id=dev),
                                 metadata=MD, timeout=10).device_secret
    s = _sig(eeg(1, 3, 60, 8), dev)
    r = stub.Authenticate(pb.AuthenticateRequest(user_id=user, signal=s), timeout=30,
                          metadata=(*MD, *proof_md(secret, user, dev, s.samples)))
    assert r.accepted and r.session_token, r
    return r.session_token, secret


def _continuous(stub, token, dev, stop: threading.Event, updates: list) -> threading.Thread:
    """A headset under ContinuousAuthenticate: 0.5-s chunks of its wearer's EEG, two a
    second (twice real time), until ``stop`` is set; its updates go to ``updates``."""
    x = eeg(1, 3, 70, 40)
    n = int(0.5 * SFREQ)
    parts = [x[i:i + n] for i in range(0, x.shape[0] - n + 1, n)]

    def gen():
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token=token))
        i = 0
        while not stop.is_set():
            yield pb.ContinuousAuthenticateRequest(chunk=_sig(parts[i % len(parts)], dev))
            i += 1
            stop.wait(0.25)

    def run():
        try:
            for u in stub.ContinuousAuthenticate(gen(), metadata=MD, timeout=120):
                updates.append(u)
        except grpc.RpcError as e:
            updates.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_unary_calls_are_served_while_streams_outnumber_the_workers(tmp_path, model_path):
    """An open stream held a gRPC worker thread for its whole life (ContinuousAuthenticate
    for as long as its session is verified: hours), so --max-workers headsets under
    continuous authentication (8 with the defaults) took every worker and every other
    call (Authenticate, Enroll, GetStats) waited until a stream ended or its own deadline
    passed. Streams now run on threads of their own (at most max_streams of them): with
    2 workers, a headset streaming and three more streams open, the unary calls are
    answered, and the headset is still verified after them."""
    server, store = _server(tmp_path, model_path, max_workers=2, max_concurrent_rpcs=16)
    server.start()
    stop = threading.Event()
    held: list[_Held] = []
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            token, secret = _enrolled_session(stub)
            updates: list = []
            t = _continuous(stub, token, "hs-1", stop, updates)
            t0 = time.monotonic()
            while not updates and time.monotonic() - t0 < 30:
                time.sleep(0.05)
            assert updates and updates[0].state == pb.ContinuousAuthenticateResponse.VERIFIED
            held = [_Held(stub), _Held(stub), _Held(stub, "ContinuousAuthenticate")]
            _wait_in_flight(server, 4)
            # every unary call is answered well within its deadline
            st = stub.GetStats(pb.GetStatsRequest(), metadata=MD, timeout=5)
            assert st.total_users == 1
            s = _sig(eeg(1, 3, 100, 8), "hs-1")
            r = stub.Authenticate(pb.AuthenticateRequest(user_id="wearer", signal=s),
                                  timeout=5,
                                  metadata=(*MD, *proof_md(secret, "wearer", "hs-1",
                                                           s.samples)))
            assert r.accepted
            v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=token),
                                     metadata=MD, timeout=5)
            assert v.valid
            # the headset's stream went on meanwhile
            n = len(updates)
            t0 = time.monotonic()
            while len(updates) == n and time.monotonic() - t0 < 30:
                time.sleep(0.05)
            assert len(updates) > n and updates[-1].state == \
                pb.ContinuousAuthenticateResponse.VERIFIED, updates[-1]
            stop.set()
            t.join(30)
            for h in held:
                h.release()
            for h in held:
                assert h.done.wait(30)
    finally:
        stop.set()
        for h in held:
            h.release()
        server.stop(0)
        store.close()


def _wait_open(server, n: int, timeout: float = 20.0) -> None:
    """Wait until the stream pool counts ``n`` open streams."""
    t0 = time.monotonic()
    while server._streams.open != n and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    assert server._streams.open == n, (server._streams.open, n)


def _code(fn, *a, **kw):
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, **kw)
    return ei.value.code(), ei.value.details()


def test_a_stream_beyond_max_streams_is_refused_at_once_and_counted(tmp_path, model_path,
                                                                   caplog):
    """With max_streams streams open, another stream is answered RESOURCE_EXHAUSTED at
    once, naming the option (it does not wait for a thread), counted in
    nacfauth_auth_requests_total under its method and caller as gRPC's own concurrency
    refusals are, and logged (streams_busy, a line every 10 s at most); the unary calls
    are served meanwhile, and a stream is admitted again once one has ended."""
    # one key holds both streams: its own bound (max_streams_per_client) out of the way
    server, store = _server(tmp_path, model_path, max_workers=2, max_streams=2,
                            max_streams_per_client=2, max_concurrent_rpcs=16,
                            signal_loss_s=30.0)
    caplog.set_level("WARNING", logger="nacf.server")
    server.start()
    held: list[_Held] = []
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            held = [_Held(stub), _Held(stub, "ContinuousAuthenticate")]
            _wait_open(server, 2)
            start = pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))
            code, msg = _code(stub.AuthenticateStream, iter([start]), metadata=MD, timeout=5)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
            assert "max_streams" in msg and "at most 2" in msg, msg
            cstart = pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token="x"))
            code, msg = _code(lambda: list(stub.ContinuousAuthenticate(
                iter([cstart]), metadata=MD, timeout=5)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams" in msg, msg
            code, _ = _code(stub.AuthenticateStream, iter([start]), timeout=5)  # no key
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _requests(server, "AuthenticateStream", "RESOURCE_EXHAUSTED") == 1
            assert _requests(server, "ContinuousAuthenticate", "RESOURCE_EXHAUSTED") == 1
            assert _requests(server, "AuthenticateStream", "RESOURCE_EXHAUSTED",
                             "anonymous") == 1
            busy = [r for r in caplog.records if getattr(r, "event_type", "") == "streams_busy"]
            assert len(busy) == 1 and busy[0].max_streams == 2, busy
            assert busy[0].method == "AuthenticateStream"
            assert stub.GetStats(pb.GetStatsRequest(), metadata=MD, timeout=5) is not None
            assert server._streams.open == 2  # the refused streams were never open
            held[0].release()
            assert held[0].done.wait(30)
            _wait_open(server, 1)
            code, msg = _code(stub.AuthenticateStream, iter([start]), metadata=MD, timeout=5)
            assert code == grpc.StatusCode.NOT_FOUND, (code, msg)  # admitted: user 'x'
            assert _requests(server, "AuthenticateStream", "RESOURCE_EXHAUSTED") == 1
    finally:
        for h in held:
            h.release()
        server.stop(0)
        store.close()


def test_one_client_cannot_take_every_stream_slot(tmp_path, model_path, caplog):
    """One key's holder could open max_streams streams and hold them (a headset each, or
    streams that send a message now and then), and every other client's stream was
    refused RESOURCE_EXHAUSTED for as long. A client now holds at most
    max_streams_per_client streams at once (by default half of max_streams, rounded up:
    2 of 4 here); its next one is refused RESOURCE_EXHAUSTED at once, naming the option,
    counted under its method and user_type as the max_streams refusals are, and logged
    (client_streams_busy, with its client id, a line every 10 s at most), while another
    client's streams are admitted; once one of its streams has ended, it is admitted
    again."""
    other = "workers-other-key-0123456789"
    server, store = _server(tmp_path, model_path, max_workers=2, max_streams=4,
                            max_concurrent_rpcs=16, signal_loss_s=30.0,
                            api_keys={KEY: ALL, other: ALL})
    caplog.set_level("WARNING", logger="nacf.server")
    server.start()
    held: list[_Held] = []
    md_other = (("x-api-key", other),)
    start = pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))
    cstart = pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(session_token="x"))
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            held = [_Held(stub), _Held(stub, "ContinuousAuthenticate")]
            _wait_open(server, 2)
            t0 = time.monotonic()
            code, msg = _code(stub.AuthenticateStream, iter([start]), metadata=MD, timeout=5)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
            assert "max_streams_per_client" in msg and "at most 2" in msg, msg
            code, msg = _code(lambda: list(stub.ContinuousAuthenticate(
                iter([cstart]), metadata=MD, timeout=5)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
            assert "max_streams_per_client" in msg, msg
            assert time.monotonic() - t0 < 4  # at once, not at signal_loss_s or a deadline
            assert _requests(server, "AuthenticateStream", "RESOURCE_EXHAUSTED") == 1
            assert _requests(server, "ContinuousAuthenticate", "RESOURCE_EXHAUSTED") == 1
            busy = [r for r in caplog.records
                    if getattr(r, "event_type", "") == "client_streams_busy"]
            assert len(busy) == 1 and busy[0].max_streams_per_client == 2, busy
            assert busy[0].method == "AuthenticateStream"
            mine = server._interceptor._keys[interceptors._key_hash(KEY)][0]
            assert busy[0].client_id == mine
            _wait_open(server, 2)  # the refused streams gave their threads back
            assert server._streams.open_of(mine) == 2
            # another client: its streams are admitted (user 'x': NOT_FOUND), and held
            code, msg = _code(stub.AuthenticateStream, iter([start]), metadata=md_other,
                              timeout=5)
            assert code == grpc.StatusCode.NOT_FOUND, (code, msg)
            held += [_Held(stub, md=md_other), _Held(stub, "ContinuousAuthenticate",
                                                     md=md_other)]
            _wait_open(server, 4)
            held[0].release()
            assert held[0].done.wait(30)
            _wait_open(server, 3)
            assert server._streams.open_of(mine) == 1
            code, msg = _code(stub.AuthenticateStream, iter([start]), metadata=MD, timeout=5)
            assert code == grpc.StatusCode.NOT_FOUND, (code, msg)  # admitted again
            assert _requests(server, "AuthenticateStream", "RESOURCE_EXHAUSTED") == 1
            assert stub.GetStats(pb.GetStatsRequest(), metadata=MD, timeout=5) is not None
            for h in held:
                h.release()
            for h in held:
                assert h.done.wait(30)
            _wait_open(server, 0)
            assert server._streams._by_client == {}  # every client's share given back
    finally:
        for h in held:
            h.release()
        server.stop(0)
        store.close()


def test_a_stream_gives_its_slot_back_however_it_ends(tmp_path, model_path):
    """A stream counts against max_streams from the moment gRPC hands it over to its end,
    whatever that end: refused by the key check, cancelled by its client, its deadline
    passed, or the stream never handed over (gRPC refused it at its own concurrency
    bound). With max_streams=1, a stream is admitted after each."""
    server, store = _server(tmp_path, model_path, max_workers=1, max_streams=1,
                            max_concurrent_rpcs=1, signal_loss_s=30.0)
    server.start()
    start = pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))

    def admitted(stub):
        _wait_open(server, 0)
        code, msg = _code(stub.AuthenticateStream, iter([start]), metadata=MD, timeout=10)
        assert code == grpc.StatusCode.NOT_FOUND, (code, msg)

    release = threading.Event()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            code, _ = _code(stub.AuthenticateStream, iter([start]), timeout=10)  # no key
            assert code == grpc.StatusCode.UNAUTHENTICATED
            admitted(stub)

            def silent():
                release.wait(60)
                yield start

            f = stub.AuthenticateStream.future(silent(), metadata=MD, timeout=60)
            _wait_open(server, 1)
            assert f.cancel()
            admitted(stub)
            code, _ = _code(stub.AuthenticateStream, silent(), metadata=MD, timeout=1)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            admitted(stub)
            # gRPC admits max_concurrent_rpcs + max_streams = 2 calls: a GetStats held in
            # its handler and a stream; a third call, a stream, is refused by gRPC itself
            orig, entered = server.service.stats, threading.Event()

            def slow_stats():
                entered.set()
                release.wait(30)
                return orig()

            server.service.stats = slow_stats
            slow = stub.GetStats.future(pb.GetStatsRequest(), metadata=MD, timeout=60)
            assert entered.wait(10)
            h = _Held(stub)
            _wait_in_flight(server, 2)
            code, msg = _code(stub.AuthenticateStream, iter([start]), metadata=MD, timeout=10)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams" not in msg
            release.set()
            h.release()
            assert slow.result(30) is not None and h.done.wait(30)
            server.service.stats = orig
            admitted(stub)
    finally:
        release.set()
        server.stop(0)
        store.close()


def test_health_calls_that_never_send_their_request_hold_no_worker(tmp_path, model_path,
                                                                   monkeypatch):
    """grpc.health.v1 needs no key (probes), and grpcio reads a unary request on a worker
    thread, waiting for it as long as the call lasts: anyone, without a key, could open
    --max-workers Check (or Watch) calls, never send their request and leave no thread
    for any other call (every GetStats and Authenticate timed out). The health service
    runs on threads of its own, and a request that does not come within
    HEALTH_REQUEST_WAIT_S (5 s; 1 s here) ends the call."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from nacf_core.server import interceptors

    monkeypatch.setattr(interceptors, "HEALTH_REQUEST_WAIT_S", 1.0)
    server, store = _server(tmp_path, model_path, max_workers=2, max_concurrent_rpcs=16)
    server.start()
    stop = threading.Event()

    def never():
        stop.wait(60)
        yield from ()

    try:
        with grpc.insecure_channel(server.address) as ch:
            # as many as a server admits at once (HEALTH_MAX_CALLS), more than its workers
            calls = [ch.stream_unary("/grpc.health.v1.Health/Check").future(never(),
                                                                           timeout=60)
                     for _ in range(2)]
            watches = [ch.stream_stream("/grpc.health.v1.Health/Watch")(never(), timeout=60)
                       for _ in range(2)]
            assert interceptors.HEALTH_MAX_CALLS == 4
            _wait_in_flight(server, 4)
            st = pbg.AuthServiceStub(ch).GetStats(pb.GetStatsRequest(), metadata=MD,
                                                  timeout=5)
            assert st.total_users == 0
            for c in calls:
                assert c.exception(timeout=30) is not None
            for w in watches:
                w.cancel()
            h = health_pb2_grpc.HealthStub(ch)
            assert h.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
            w = h.Watch(health_pb2.HealthCheckRequest(), timeout=10)
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
            w.cancel()
            # as grpcio answers: no request at all, bytes that are no request
            code, _ = _code(ch.stream_unary("/grpc.health.v1.Health/Check"), iter([]),
                            timeout=10)
            assert code == grpc.StatusCode.UNIMPLEMENTED
            code, _ = _code(ch.unary_unary("/grpc.health.v1.Health/Check"), b"\xff\xff",
                            timeout=10)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop.set()
        server.stop(0)
        store.close()


def test_health_calls_that_never_send_their_request_cannot_fill_the_concurrency_bound(
        tmp_path, model_path, caplog, monkeypatch):
    """grpc.health.v1 needs no key, and a Check or Watch that never sends its request
    holds its slot of gRPC's concurrency bound (max_concurrent_rpcs + max_streams) while
    it waits for a health thread and then up to HEALTH_REQUEST_WAIT_S on it: anyone,
    without a key, who opened a few dozen such calls (a few bytes each) had every keyed
    call answered RESOURCE_EXHAUSTED for minutes. At most HEALTH_MAX_CALLS health calls
    are admitted at once; one beyond them is answered RESOURCE_EXHAUSTED at once, logged
    (health_busy), and the other calls keep their slots."""
    import logging

    caplog.set_level(logging.WARNING, logger="nacf.server")
    monkeypatch.setattr(interceptors, "HEALTH_REQUEST_WAIT_S", 60.0)  # none ends here
    server, store = _server(tmp_path, model_path, max_workers=2, max_concurrent_rpcs=4,
                            max_streams=2)
    server.start()
    stop = threading.Event()

    def never():
        stop.wait(60)
        yield from ()

    try:
        with grpc.insecure_channel(server.address) as ch:
            check = ch.stream_unary("/grpc.health.v1.Health/Check")
            watch = ch.stream_unary("/grpc.health.v1.Health/Watch")
            calls = [(check if i % 2 else watch).future(never(), timeout=60)
                     for i in range(30)]
            # each call taken in: refused at once (ended), or in flight (it stays)
            st = server._interceptor._grpc_state
            t0 = time.monotonic()
            while (sum(c.done() for c in calls) + st.active_rpc_count < 30
                   and time.monotonic() - t0 < 20):
                time.sleep(0.01)
            for _ in range(3):
                st = pbg.AuthServiceStub(ch).GetStats(pb.GetStatsRequest(), metadata=MD,
                                                      timeout=5)
                assert st.total_users == 0
            refused = [c for c in calls if c.done()]
            assert len(refused) == 30 - interceptors.HEALTH_MAX_CALLS
            _wait_in_flight(server, interceptors.HEALTH_MAX_CALLS)
            # refused by nacf, or by gRPC while nacf's refusals of the burst were in flight
            assert {c.exception().code() for c in refused} == {
                grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert any("too many grpc.health.v1 calls" in c.exception().details()
                       for c in refused)
            busy = [r for r in caplog.records
                    if getattr(r, "event_type", "") == "health_busy"]
            assert len(busy) == 1, busy  # a line every 10 s at most
    finally:
        stop.set()
        server.stop(0)
        store.close()


def test_a_silent_reflection_stream_gives_its_slot_back(tmp_path, model_path):
    """Reflection (any valid key) is a bidirectional stream whose handler waits for the
    client's next request as long as the call lasts: a client that opened max_streams of
    them and sent nothing (or a grpcurl left hanging) kept every stream slot, and every
    headset's stream was refused. A reflection stream that sends nothing for
    signal_loss_s now ends (DEADLINE_EXCEEDED), as nacf's own streams do; one that asks
    is answered as before."""
    from grpc_reflection.v1alpha import reflection_pb2 as rpb
    from grpc_reflection.v1alpha import reflection_pb2_grpc as rpbg

    server, store = _server(tmp_path, model_path, max_workers=2, max_streams=2,
                            max_streams_per_client=2, signal_loss_s=1.0)
    server.start()
    stop = threading.Event()

    def silent():
        stop.wait(60)
        yield from ()

    try:
        with grpc.insecure_channel(server.address) as ch:
            refl = rpbg.ServerReflectionStub(ch)
            calls = [refl.ServerReflectionInfo(silent(), metadata=MD, timeout=60)
                     for _ in range(2)]
            _wait_open(server, 2)
            done = threading.Event()
            codes = []

            def drain(c):
                try:
                    list(c)
                except grpc.RpcError as e:
                    codes.append(e.code())
                if len(codes) == 2:
                    done.set()

            for c in calls:
                threading.Thread(target=drain, args=(c,), daemon=True).start()
            assert done.wait(20), codes
            assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2, codes
            _wait_open(server, 0)
            (r,) = refl.ServerReflectionInfo(
                iter([rpb.ServerReflectionRequest(list_services="")]), metadata=MD,
                timeout=10)
            assert "nacf.v1.AuthService" in {s.name for s in r.list_services_response.service}
            start = pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))
            code, _ = _code(pbg.AuthServiceStub(ch).AuthenticateStream, iter([start]),
                            metadata=MD, timeout=10)
            assert code == grpc.StatusCode.NOT_FOUND  # admitted
    finally:
        stop.set()
        server.stop(0)
        store.close()


def _stalled(ch, method: str, stop: threading.Event, md, timeout: float = 60):
    """A unary call whose client sent its headers and never sends its request (until
    ``stop``; then it closes its side without one): its worker thread waits for it."""
    def never():
        stop.wait(timeout)
        yield from ()

    return ch.stream_unary(f"/nacf.v1.AuthService/{method}").future(never(), metadata=md,
                                                                    timeout=timeout)


def _settled(server, calls, timeout: float = 20.0) -> None:
    """Wait until every call of ``calls`` not yet ended is in flight at the server (and
    those the server refused have ended): the server has taken them all in."""
    st = server._interceptor._grpc_state
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if st.active_rpc_count == sum(not c.done() for c in calls):
            return
        time.sleep(0.01)
    raise AssertionError((st.active_rpc_count, [c.done() for c in calls]))


def _wait(cond, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    assert cond()


def test_one_client_stalling_its_uploads_cannot_take_every_worker(tmp_path, model_path,
                                                                 caplog):
    """gRPC's server reads a unary request on the call's worker thread and waits for it
    as long as the call lasts: a client with a valid key that opened --max-workers unary
    calls and never finished sending their requests (headers sent, the message stalled)
    held every worker, and every other client's Authenticate, GetUser, GetStats waited
    until its deadline. A client now has at most max_uploads_per_client calls waiting
    for their request (by default half of max_workers, rounded up: 2 of 4): its call
    beyond them is answered RESOURCE_EXHAUSTED before its request is read (within
    UPLOAD_WAIT_S, at once when its waiting calls have stalled), naming the option,
    counted under its method and logged (client_uploads_busy, with its client id), while
    the other clients are served."""
    from test_upload_cancel import StallingProxy

    staller = "workers-staller-key-0123456789"
    md_st = (("x-api-key", staller),)
    server, store = _server(tmp_path, model_path, max_workers=4, max_concurrent_rpcs=16,
                            api_keys={KEY: ALL, staller: ALL})
    caplog.set_level("WARNING", logger="nacf.server")
    server.start()
    stop = threading.Event()
    proxy = StallingProxy(server.address, 1024 * 1024)
    pch = grpc.insecure_channel(proxy.address)
    try:
        with grpc.insecure_channel(server.address) as ch, \
                grpc.insecure_channel(server.address) as sch:
            stub = pbg.AuthServiceStub(ch)
            token, secret = _enrolled_session(stub)
            # one request stalls mid-body (1 MB of 3 reached the server), three more
            # never start theirs: max_workers calls of the one client
            big = pbg.AuthServiceStub(pch).ValidateSession.future(
                pb.ValidateSessionRequest(session_token="x" * 3_000_000), metadata=md_st,
                timeout=60)
            assert proxy.forwarded.wait(20)
            calls = [big] + [_stalled(sch, "GetStats", stop, md_st) for _ in range(3)]
            # the other client is served meanwhile
            st = stub.GetStats(pb.GetStatsRequest(), metadata=MD, timeout=10)
            assert st.total_users == 1
            u = stub.GetUser(pb.GetUserRequest(user_id="wearer"), metadata=MD, timeout=10)
            assert u.user.user_id == "wearer"
            s = _sig(eeg(1, 3, 100, 8), "hs-1")
            r = stub.Authenticate(pb.AuthenticateRequest(user_id="wearer", signal=s),
                                  timeout=10, metadata=(*MD, *proof_md(secret, "wearer",
                                                                       "hs-1", s.samples)))
            assert r.accepted
            # two of the stalling client's calls were refused, before their requests
            _wait(lambda: sum(c.done() for c in calls) == 2)
            assert not big.done()  # the first one is waiting for its request
            for c in calls:
                if c.done():
                    assert c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, c.code()
                    assert "max_uploads_per_client" in c.details() and \
                        "at most 2" in c.details(), c.details()
            # its next call, request complete, is refused at once: its waits have stalled
            t0 = time.monotonic()
            code, msg = _code(pbg.AuthServiceStub(sch).GetStats, pb.GetStatsRequest(),
                              metadata=md_st, timeout=10)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, msg)
            assert "max_uploads_per_client" in msg, msg
            assert time.monotonic() - t0 < 5  # not at its deadline
            assert _requests(server, "GetStats", "RESOURCE_EXHAUSTED") == 3
            busy = [r for r in caplog.records
                    if getattr(r, "event_type", "") == "client_uploads_busy"]
            mine = server._interceptor._keys[interceptors._key_hash(staller)][0]
            assert len(busy) == 1 and busy[0].client_id == mine, busy
            assert busy[0].max_uploads_per_client == 2 and busy[0].method == "GetStats"
            assert busy[0].status == "RESOURCE_EXHAUSTED"
            assert server._interceptor.uploads.of(mine) == 2
            # once its stalled calls end, its calls are served again
            stop.set()
            proxy.drop()
            for c in calls:
                assert c.exception(timeout=30) is not None
            _wait(lambda: server._interceptor.uploads.of(mine) == 0)
            assert pbg.AuthServiceStub(sch).GetStats(pb.GetStatsRequest(), metadata=md_st,
                                                     timeout=10).total_users == 1
    finally:
        stop.set()
        proxy.drop()
        pch.close()
        server.stop(0)
        store.close()


def test_a_clients_many_calls_whose_requests_come_are_not_refused(tmp_path, model_path,
                                                                  monkeypatch):
    """A client (a gateway, a benchmark: one key, many connections) with more calls at
    once than max_uploads_per_client whose requests all come, if not at once (0.2 s
    after their headers here: a slow link, a loaded server; UPLOAD_WAIT_S raised to 1 s
    so that the machine's load cannot make it fail), is served, every call: a call
    beyond the bound waits for one of its client's reads to end."""
    monkeypatch.setattr(interceptors, "UPLOAD_WAIT_S", 1.0)
    server, store = _server(tmp_path, model_path, max_workers=4, max_concurrent_rpcs=16)
    server.start()
    assert server.config.uploads_per_client == 2

    def late():
        time.sleep(0.2)
        yield pb.GetStatsRequest().SerializeToString()

    try:
        with grpc.insecure_channel(server.address) as ch:
            call = ch.stream_unary("/nacf.v1.AuthService/GetStats")
            for _ in range(3):
                futs = [call.future(late(), metadata=MD, timeout=30) for _ in range(4)]
                for f in futs:
                    assert f.exception(timeout=30) is None, (f.code(), f.details())
        assert _requests(server, "GetStats", "OK") == 12
    finally:
        server.stop(0)
        store.close()


def test_a_unary_call_gives_its_upload_slot_back_however_it_ends(tmp_path, model_path,
                                                                 monkeypatch):
    """The wait of a unary call's worker for its request is registered under its client
    until the request has come or the call has ended without it: with
    max_uploads_per_client=1, after each of these ends a stalled call of the client
    still refuses its next call (a wait ended twice would admit it) and, once cancelled,
    admits it (a wait kept would refuse it): Authenticate (served on the authentication
    thread) answered, or raising in its handler; cancelled, or past its deadline, with
    its request on its way; its client closed its side without a request; its request
    over max_message_bytes; a call refused, or admitted after waiting for the slot."""
    server, store = _server(tmp_path, model_path, max_workers=3, max_concurrent_rpcs=16,
                            max_uploads_per_client=1, max_message_bytes=64 * 1024)
    server.start()
    icp = server._interceptor
    assert icp._engine is not None  # Authenticate runs on the authentication thread
    mine = icp._keys[interceptors._key_hash(KEY)][0]
    stop = threading.Event()

    def only_one(ch, stub):
        """No wait is registered, and one stalled call refuses the next: once it is
        cancelled a call is admitted."""
        _wait(lambda: icp.uploads.of(mine) == 0)
        release = threading.Event()
        held = _stalled(ch, "GetStats", release, MD)
        _wait(lambda: icp.uploads.of(mine) == 1)
        code, msg = _code(stub.Authenticate, pb.AuthenticateRequest(user_id="x"),
                          metadata=MD, timeout=10)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_uploads_per_client" in msg
        assert held.cancel()
        _wait(lambda: icp.uploads.of(mine) == 0)
        assert stub.GetStats(pb.GetStatsRequest(), metadata=MD, timeout=10) is not None

    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            only_one(ch, stub)
            # answered by the authentication thread (an unknown user)
            code, _ = _code(stub.Authenticate, pb.AuthenticateRequest(
                user_id="nobody", signal=_sig(eeg(1, 3, 0, 4))), metadata=MD, timeout=30)
            assert code != grpc.StatusCode.RESOURCE_EXHAUSTED, code
            only_one(ch, stub)
            # its handler raises

            def boom(*a, **kw):
                raise RuntimeError("boom")

            monkeypatch.setattr(server.service, "authenticate", boom)
            code, _ = _code(stub.Authenticate, pb.AuthenticateRequest(
                user_id="nobody", signal=_sig(eeg(1, 3, 0, 4))), metadata=MD, timeout=30)
            assert code == grpc.StatusCode.INTERNAL, code
            monkeypatch.undo()
            only_one(ch, stub)
            # cancelled with its request on its way
            c = _stalled(ch, "Authenticate", stop, MD)
            _wait(lambda: icp.uploads.of(mine) == 1)
            assert c.cancel()
            only_one(ch, stub)
            # its deadline passed with its request on its way
            c = _stalled(ch, "Authenticate", stop, MD, timeout=1)
            assert c.exception(timeout=30) is not None
            assert c.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            only_one(ch, stub)
            # its client closed its side without a request
            code, _ = _code(ch.stream_unary("/nacf.v1.AuthService/Authenticate"), iter([]),
                            metadata=MD, timeout=10)
            assert code == grpc.StatusCode.UNIMPLEMENTED, code
            only_one(ch, stub)
            # its request over max_message_bytes
            code, _ = _code(stub.Authenticate, pb.AuthenticateRequest(user_id="x" * 100_000),
                            metadata=MD, timeout=10)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
            only_one(ch, stub)
            # admitted once the slot it waited for was given back
            monkeypatch.setattr(interceptors, "UPLOAD_WAIT_S", 30.0)
            held = _stalled(ch, "GetStats", stop, MD)
            _wait(lambda: icp.uploads.of(mine) == 1)
            waiter = stub.GetStats.future(pb.GetStatsRequest(), metadata=MD, timeout=30)
            _wait(lambda: icp.uploads.waiting == 1)
            assert held.cancel()
            assert waiter.result(timeout=30) is not None
            monkeypatch.undo()
            only_one(ch, stub)
            assert icp.uploads._reads == {} and icp.uploads.waiting == 0
    finally:
        stop.set()
        server.stop(0)
        store.close()
