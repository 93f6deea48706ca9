"""A unary call whose client goes away while its request is still on its way.

gRPC reads a unary request only when the handler asks for it; one over
max_message_bytes is refused then (RESOURCE_EXHAUSTED, what its client sees), and the
handler sees the call end as if cancelled. A client that cancelled (or whose connection
dropped) while its request was uploading was counted RESOURCE_EXHAUSTED too, a status
nobody saw: a flaky link looked like clients sending too large requests. The outcome of
the read (a failed read is gRPC's refusal; a cancel does not fail it) now tells them
apart."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from _server_support import auth_requests

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.server.app import NacfServer

KEY = "upload-key-0123456789"
MD = (("x-api-key", KEY),)
LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    from _server_support import sqlite_service

    d = tmp_path_factory.mktemp("upload")
    service = sqlite_service(d, model_path, grpc_address="127.0.0.1:0", metrics_address="",
                             max_message_bytes=LIMIT,
                             api_keys={KEY: frozenset({"authenticate", "enroll", "admin"})})
    srv = NacfServer(service.config, service, metrics=service.metrics, sidecar=False).start()
    yield srv
    srv.stop(0)
    service.store.close()


class StallingProxy:
    """A TCP proxy to ``address`` that forwards the client's first ``forward`` bytes and
    then stops reading them (the rest of the request stays on its way) until
    :meth:`drop` closes both connections: a client whose link died mid-upload."""

    def __init__(self, address: str, forward: int) -> None:
        host, port = address.rsplit(":", 1)
        self.target = (host, int(port))
        self.forward = forward
        self.forwarded = threading.Event()
        self.socks: list[socket.socket] = []
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen()
        self.address = f"127.0.0.1:{self.ls.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            c, _ = self.ls.accept()
        except OSError:
            return
        s = socket.create_connection(self.target)
        self.socks += [c, s]
        threading.Thread(target=self._pipe, args=(c, s, self.forward), daemon=True).start()
        threading.Thread(target=self._pipe, args=(s, c, None), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, limit: int | None) -> None:
        n = 0
        try:
            while limit is None or n < limit:
                x = a.recv(16384 if limit is None else min(16384, limit - n))
                if not x:
                    return
                b.sendall(x)
                n += len(x)
            self.forwarded.set()
        except OSError:
            pass

    def drop(self) -> None:
        for s in (*self.socks, self.ls):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _wait_count(server, method: str, n: float, timeout: float = 10.0) -> dict:
    statuses = ("OK", "CANCELLED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
                "INVALID_ARGUMENT", "UNIMPLEMENTED", "INTERNAL")
    t0 = time.monotonic()
    while True:
        got = {s: auth_requests(server, method, s) for s in statuses}
        if sum(got.values()) >= n or time.monotonic() - t0 > timeout:
            return {s: v for s, v in got.items() if v}


def test_a_unary_call_whose_client_goes_away_mid_upload_is_counted_cancelled(server):
    """A 3 MB request (under the limit) whose link dies after 1 MB of it reached the
    server, the handler waiting for the rest: counted CANCELLED, not
    RESOURCE_EXHAUSTED. A request over the limit is still RESOURCE_EXHAUSTED."""
    for method in ("ValidateSession", "Authenticate"):
        proxy = StallingProxy(server.address, 1024 * 1024)
        chan = grpc.insecure_channel(proxy.address)
        try:
            stub = pbg.AuthServiceStub(chan)
            req = (pb.ValidateSessionRequest(session_token="x" * 3_000_000)
                   if method == "ValidateSession"
                   else pb.AuthenticateRequest(user_id="x" * 3_000_000))
            fut = getattr(stub, method).future(req, metadata=MD, timeout=30)
            assert proxy.forwarded.wait(20)
            time.sleep(0.3)  # the handler waits for the rest of the request
            proxy.drop()
            with pytest.raises(grpc.RpcError):
                fut.result()
        finally:
            chan.close()
        assert _wait_count(server, method, 1) == {"CANCELLED": 1}, method
    # the refusal of a request too large is unchanged
    with grpc.insecure_channel(server.address) as chan:
        stub = pbg.AuthServiceStub(chan)
        with pytest.raises(grpc.RpcError) as ei:
            stub.ValidateSession(pb.ValidateSessionRequest(session_token="x" * (LIMIT + 1)),
                                 metadata=MD, timeout=30)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _wait_count(server, "ValidateSession", 2) == {"CANCELLED": 1,
                                                        "RESOURCE_EXHAUSTED": 1}
