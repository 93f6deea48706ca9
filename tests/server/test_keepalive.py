"""Server keepalive: a client that vanishes without closing its connection (a laptop that
slept, a NAT that dropped its mapping: no FIN, no RST) has its connection closed and its
calls cancelled by the server's pings, not after grpcio's default of 2 hours."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from _server_support import make_pipeline
from prometheus_client import CollectorRegistry

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.config import Config
from nacf_core.metrics import Metrics
from nacf_core.server import app
from nacf_core.server.app import NacfServer
from nacf_core.service import AuthService
from nacf_core.store import open_store

KEY = "keepalive-key-0123456789"
ALL = frozenset({"authenticate", "enroll", "admin"})


class _Proxy:
    """A TCP proxy that, once :meth:`freeze` is called, forwards nothing more either way
    but keeps both connections open and reads what comes (a peer gone silent: the
    kernel still acknowledges, nothing answers); ``upstream_closed`` is set when the
    server closes its side."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self._lsock.getsockname()[1]
        self.frozen = threading.Event()
        self.upstream_closed = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if from_server:
                    self.upstream_closed.set()
                return
            if not self.frozen.is_set():
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self._lsock.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


def test_the_server_pings_and_accepts_pings_as_documented():
    opts = dict(app.keepalive_options())
    assert opts["grpc.keepalive_time_ms"] == 60_000
    assert opts["grpc.keepalive_timeout_ms"] == 20_000
    # a ping out (a flow-control probe) delays the keepalive ping: the same bound for it
    assert opts["grpc.http2.ping_timeout_ms"] == 20_000
    assert opts["grpc.keepalive_permit_without_calls"] == 1
    assert opts["grpc.http2.max_pings_without_data"] == 0
    # a client pinging every 10 s (grpc-go's and grpc-java's floor) is not refused
    assert opts["grpc.http2.min_ping_interval_without_data_ms"] <= 10_000
    assert opts["grpc.http2.max_ping_strikes"] >= 1


WAIT_S = 15  # far beyond the 1 + 1 s the test configures, far below grpcio's 2 hours


def _server(tmp_path, model_path):
    """A running NacfServer on loopback (SQLite in ``tmp_path``), and its store."""
    cfg = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(tmp_path),
                 api_keys={KEY: ALL})
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    metrics = Metrics(CollectorRegistry())
    svc = AuthService(store, make_pipeline(model_path), cfg, metrics=metrics)
    return NacfServer(cfg, svc, metrics=metrics, sidecar=False).start(), store


def test_a_client_that_stops_answering_has_its_connection_closed_and_its_stream_ended(
        tmp_path, model_path, monkeypatch):
    monkeypatch.setattr(app, "KEEPALIVE_TIME_MS", 1000)
    monkeypatch.setattr(app, "KEEPALIVE_TIMEOUT_MS", 1000)
    server, store = _server(tmp_path, model_path)
    proxy = _Proxy(server.port)
    release = threading.Event()

    def chunks():  # a client that opens the stream and sends nothing yet
        release.wait()
        return
        yield  # noqa: B901 - a generator

    try:
        with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as ch:
            stub = pbg.AuthServiceStub(ch)
            assert stub.GetStats(pb.GetStatsRequest(), metadata=(("x-api-key", KEY),),
                                 timeout=10).total_users == 0
            fut = stub.AuthenticateStream.future(chunks(), metadata=(("x-api-key", KEY),))
            deadline = time.monotonic() + WAIT_S
            while server._streams.open == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server._streams.open == 1  # the stream holds its thread
            proxy.freeze()  # the client is gone: nothing reaches it, nothing comes back
            assert proxy.upstream_closed.wait(WAIT_S), \
                "the server kept the connection of a client that stopped answering"
            while server._streams.open and time.monotonic() < deadline + WAIT_S:
                time.sleep(0.05)
            assert server._streams.open == 0, "the stream still holds its thread"
            release.set()
            fut.cancel()
    finally:
        release.set()
        proxy.close()
        server.stop(0)
        store.close()


@pytest.mark.parametrize("with_calls", [False, True])
def test_a_client_pinging_every_10_s_is_not_refused(tmp_path, model_path, monkeypatch,
                                                     with_calls):
    """A well-behaved client's keepalive (grpc.keepalive_time_ms at the server's floor,
    here scaled down with it) keeps its connection; the server refuses only pings more
    frequent than that (GOAWAY too_many_pings)."""
    monkeypatch.setattr(app, "MIN_CLIENT_PING_INTERVAL_MS", 500)
    server, store = _server(tmp_path, model_path)
    proxy = _Proxy(server.port)
    opts = [("grpc.keepalive_time_ms", 600), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{proxy.port}", options=opts) as ch:
            stub = pbg.AuthServiceStub(ch)
            md = (("x-api-key", KEY),)
            assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10) \
                .total_users == 0
            if with_calls:  # a call open while the client pings
                from grpc_health.v1 import health_pb2, health_pb2_grpc

                watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
                next(watch)
            time.sleep(4)  # six pings or so
            assert not proxy.upstream_closed.is_set()
            assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10) \
                .total_users == 0
            if with_calls:
                watch.cancel()
    finally:
        proxy.close()
        server.stop(0)
        store.close()
