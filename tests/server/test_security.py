"""Transport and admission: TLS and mTLS from file paths, the concurrency bound, the
per-client token bucket, open-loopback mode."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import threading
import time
from types import SimpleNamespace

import grpc
import pytest
from _server_support import StatusRecorder, make_pipeline
from _server_support import auth_requests as _requests
from _server_support import wait_in_flight as _wait_in_flight
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.config import Config
from nacf_core.errors import FailedPrecondition
from nacf_core.metrics import Metrics
from nacf_core.server import interceptors
from nacf_core.server.app import NacfServer
from nacf_core.service import AuthService
from nacf_core.store import open_store

KEY = "sec-key-0123456789"
ALL = frozenset({"authenticate", "enroll", "admin"})


def _server(tmp_path, model_path, *, sidecar=False, **kw):
    cfg = Config(**{"grpc_address": "127.0.0.1:0", "metrics_address": "",
                    "data_dir": str(tmp_path), "api_keys": {KEY: ALL}, **kw})
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    metrics = Metrics(CollectorRegistry())
    svc = AuthService(store, make_pipeline(model_path), cfg, metrics=metrics)
    return NacfServer(cfg, svc, metrics=metrics, sidecar=sidecar), store


def _cert(name, issuer_key=None, issuer_name=None, ca=False, san=(), *, valid=None):
    """``valid``: ``(not before, not after)`` as offsets from now (default: a minute ago,
    a year on: beyond the 14 days that are warned about)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    before, after = valid or (-dt.timedelta(minutes=1), dt.timedelta(days=365))
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer_name or subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now + before)
         .not_valid_after(now + after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    kpem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    return key, subject, pem, kpem


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_name, ca_pem, _ = _cert("nacf test CA", ca=True)
    (d / "ca.key").write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    _, _, srv_pem, srv_key = _cert("localhost", ca_key, ca_name, san=[
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    _, _, cli_pem, cli_key = _cert("app-1", ca_key, ca_name)
    files = {}
    for n, data in (("ca.pem", ca_pem), ("srv.pem", srv_pem), ("srv.key", srv_key),
                    ("cli.pem", cli_pem), ("cli.key", cli_key)):
        (d / n).write_bytes(data)
        files[n] = d / n
    files["ca.key"] = d / "ca.key"
    return files


def test_tls_and_mtls(tmp_path, pki, model_path):
    server, store = _server(tmp_path, model_path, tls_cert_file=str(pki["srv.pem"]),
                            tls_key_file=str(pki["srv.key"]),
                            tls_client_ca_file=str(pki["ca.pem"]), api_keys={})
    server.start()
    try:
        target = f"localhost:{server.port}"
        ca = pki["ca.pem"].read_bytes()
        creds = grpc.ssl_channel_credentials(ca, pki["cli.key"].read_bytes(),
                                             pki["cli.pem"].read_bytes())
        with grpc.secure_channel(target, creds) as ch:  # client cert: every scope, no key
            st = pbg.AuthServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=10)
            assert st.total_users == 0
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)) as ch:
            with pytest.raises(grpc.RpcError) as ei:  # no client certificate: handshake fails
                pbg.AuthServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=5)
            assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                       grpc.StatusCode.UNAUTHENTICATED)
        with grpc.insecure_channel(target) as ch:  # plaintext to a TLS port
            with pytest.raises(grpc.RpcError):
                pbg.AuthServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=5)
    finally:
        server.stop(0)
        store.close()


DAY = dt.timedelta(days=1)


def _server_cert(d, name, valid):
    _, _, pem, kpem = _cert("localhost", valid=valid, san=[x509.DNSName("localhost")])
    (d / f"{name}.pem").write_bytes(pem)
    (d / f"{name}.key").write_bytes(kpem)
    return str(d / f"{name}.pem"), str(d / f"{name}.key")


@pytest.mark.parametrize("valid, what", [
    ((-30 * DAY, -DAY), "expired on"),
    ((DAY, 30 * DAY), "not valid before"),
])
def test_a_server_certificate_out_of_its_validity_is_refused_at_start(
        tmp_path, model_path, valid, what):
    """An expired (or not yet valid) certificate started, and every client's handshake
    then failed with an unclear error; it stops the server at start, naming the option,
    the file and the dates."""
    cert, key = _server_cert(tmp_path, "srv", valid)
    with pytest.raises(ValueError) as ei:
        _server(tmp_path, model_path, tls_cert_file=cert, tls_key_file=key)
    msg = str(ei.value)
    assert msg.startswith("option 'tls_cert_file'") and cert in msg and what in msg, msg
    now = dt.datetime.now(dt.UTC)
    assert (now + valid[0]).strftime("%Y-%m-%d") in msg
    assert (now + valid[1]).strftime("%Y-%m-%d") in msg


def test_a_server_certificate_expiring_soon_starts_with_a_warning(tmp_path, model_path,
                                                                  caplog):
    cert, key = _server_cert(tmp_path, "soon", (-DAY, 3 * DAY))
    with caplog.at_level(logging.WARNING, logger="nacf.server"):
        server, store = _server(tmp_path, model_path, tls_cert_file=cert, tls_key_file=key)
    store.close()
    warned = [r for r in caplog.records if getattr(r, "event_type", "") == "tls_cert_expiring"]
    assert len(warned) == 1 and warned[0].file == cert and warned[0].option == "tls_cert_file"
    assert 2 <= warned[0].days_left <= 3 and "tls_cert_file" in warned[0].getMessage()
    caplog.clear()
    cert, key = _server_cert(tmp_path, "later", (-DAY, 20 * DAY))  # beyond 14 days: silent
    with caplog.at_level(logging.WARNING, logger="nacf.server"):
        server, store = _server(tmp_path, model_path, tls_cert_file=cert, tls_key_file=key)
    store.close()
    assert not [r for r in caplog.records
                if getattr(r, "event_type", "") == "tls_cert_expiring"]


def test_a_client_ca_file_without_a_valid_certificate_is_refused(tmp_path, pki, model_path,
                                                                 caplog):
    """A client CA that has expired makes every client certificate fail verification:
    refused at start when no certificate of the file is valid now; a bundle that still
    holds a valid CA (one rotated in beside the old) starts, with a warning when the last
    valid one expires within 14 days."""
    old = _cert("old CA", ca=True, valid=(-60 * DAY, -DAY))[2]
    soon = _cert("soon CA", ca=True, valid=(-DAY, 5 * DAY))[2]
    tls = {"tls_cert_file": str(pki["srv.pem"]), "tls_key_file": str(pki["srv.key"]),
           "api_keys": {}}
    (tmp_path / "old.pem").write_bytes(old)
    with pytest.raises(ValueError) as ei:
        _server(tmp_path, model_path, tls_client_ca_file=str(tmp_path / "old.pem"), **tls)
    msg = str(ei.value)
    assert msg.startswith("option 'tls_client_ca_file'") and "old.pem" in msg
    assert "expired on" in msg
    (tmp_path / "both.pem").write_bytes(old + pki["ca.pem"].read_bytes())
    server, store = _server(tmp_path, model_path,
                            tls_client_ca_file=str(tmp_path / "both.pem"), **tls)
    store.close()
    (tmp_path / "soon.pem").write_bytes(old + soon)
    with caplog.at_level(logging.WARNING, logger="nacf.server"):
        server, store = _server(tmp_path, model_path,
                                tls_client_ca_file=str(tmp_path / "soon.pem"), **tls)
    store.close()
    warned = [r for r in caplog.records if getattr(r, "event_type", "") == "tls_cert_expiring"]
    assert [(r.option, r.file) for r in warned] == [("tls_client_ca_file",
                                                     str(tmp_path / "soon.pem"))]


def test_a_client_certificate_with_a_long_san_only_is_served(tmp_path, pki, model_path):
    """A client certificate without a common name is known by its subject alternative
    name, which can be 253 characters (a DNS name): the client id made of it was longer
    than the rate limit's bucket id may be, and every call got INVALID_ARGUMENT."""
    ca_key = serialization.load_pem_private_key(pki["ca.key"].read_bytes(), None)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nacf test CA")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    long_dns = ".".join(["a" * 60] * 4) + ".example"  # 252 characters
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(long_dns)]),
                           critical=True)
            .sign(ca_key, hashes.SHA256()))
    server, store = _server(tmp_path, model_path, tls_cert_file=str(pki["srv.pem"]),
                            tls_key_file=str(pki["srv.key"]),
                            tls_client_ca_file=str(pki["ca.pem"]), api_keys={})
    server.start()
    try:
        creds = grpc.ssl_channel_credentials(
            pki["ca.pem"].read_bytes(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))
        with grpc.secure_channel(f"localhost:{server.port}", creds) as ch:
            for _ in range(2):
                assert pbg.AuthServiceStub(ch).GetStats(pb.GetStatsRequest(),
                                                        timeout=10).total_users == 0
    finally:
        server.stop(0)
        store.close()


def test_with_api_keys_a_client_certificate_alone_does_not_bypass_their_scopes(
        tmp_path, pki, model_path):
    """mTLS with API keys: every client holds a certificate (the handshake requires one),
    and a certificate alone carried every scope, so a device given a key with the
    authenticate scope only became admin by leaving its key out (GetStats, DeleteUser,
    Enroll with update). With keys configured the key is required and its scopes apply;
    a certificate alone admits only when no key is configured (test_tls_and_mtls)."""
    auth_only = "sec-auth-only-0123456789"
    server, store = _server(tmp_path, model_path, tls_cert_file=str(pki["srv.pem"]),
                            tls_key_file=str(pki["srv.key"]),
                            tls_client_ca_file=str(pki["ca.pem"]),
                            api_keys={auth_only: frozenset({"authenticate"}), KEY: ALL})
    server.start()
    try:
        creds = grpc.ssl_channel_credentials(pki["ca.pem"].read_bytes(),
                                             pki["cli.key"].read_bytes(),
                                             pki["cli.pem"].read_bytes())
        with grpc.secure_channel(f"localhost:{server.port}", creds) as ch:
            stub = pbg.AuthServiceStub(ch)
            for md, want in (((), grpc.StatusCode.UNAUTHENTICATED),
                             ((("x-api-key", auth_only),), grpc.StatusCode.PERMISSION_DENIED)):
                with pytest.raises(grpc.RpcError) as ei:
                    stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
                assert ei.value.code() == want, (md, ei.value)
            assert stub.GetStats(pb.GetStatsRequest(), metadata=(("x-api-key", KEY),),
                                 timeout=10).total_users == 0
            v = stub.ValidateSession(pb.ValidateSessionRequest(session_token="t"),
                                     metadata=(("x-api-key", auth_only),), timeout=10)
            assert v.reason == "unknown"
        assert _requests(server, "GetStats", "UNAUTHENTICATED", "anonymous") == 1
    finally:
        server.stop(0)
        store.close()


def test_a_key_reload_that_empties_the_keys_of_an_mtls_server_changes_nothing(
        tmp_path, pki, model_path):
    """mTLS with API keys: a reload (SIGHUP) whose keys file holds no key any more (a
    file emptied by mistake, a rotation half done) swapped in no key, and a certificate
    alone then carried every scope: each device holding an authenticate-only key became
    admin by leaving its key out. As README says, a reload that would leave no key
    changes nothing: the keys in use stay, and a certificate alone is still refused."""
    auth_only = "sec-auth-only-0123456789"
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{auth_only} authenticate\n")
    server, store = _server(tmp_path, model_path, tls_cert_file=str(pki["srv.pem"]),
                            tls_key_file=str(pki["srv.key"]),
                            tls_client_ca_file=str(pki["ca.pem"]),
                            api_keys={auth_only: frozenset({"authenticate"})},
                            api_keys_file=str(keys))
    server.start()
    try:
        keys.write_text("# every key removed\n")
        with pytest.raises(ValueError, match="hold no key"):
            server.reload_api_keys(env={})
        creds = grpc.ssl_channel_credentials(pki["ca.pem"].read_bytes(),
                                             pki["cli.key"].read_bytes(),
                                             pki["cli.pem"].read_bytes())
        with grpc.secure_channel(f"localhost:{server.port}", creds) as ch:
            stub = pbg.AuthServiceStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.GetStats(pb.GetStatsRequest(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                stub.GetStats(pb.GetStatsRequest(), timeout=10,
                              metadata=(("x-api-key", auth_only),))
            assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        server.stop(0)
        store.close()


def _readme_scopes() -> dict[str, str]:
    """The scope each RPC needs, as README's "API keys and scopes" lists them."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    para = text[text.index("**API keys and scopes.**"):]
    para = " ".join(para[:para.index("PERMISSION_DENIED")].split())
    got = {}
    for scope, methods in re.findall(r"`(authenticate|enroll|admin)` \(([A-Za-z, ]+)\)", para):
        for m in methods.split(","):
            got[m.strip()] = scope
    return got


def test_every_rpc_of_the_service_needs_its_documented_scope(tmp_path, model_path):
    """Every RPC of nacf.v1.AuthService, as the proto descriptor lists them (a new RPC
    included), has the scope README documents in METHOD_SCOPES, and over the wire a call
    without a key is UNAUTHENTICATED and one with a key of each other scope is
    PERMISSION_DENIED, before its request is read (no request is sent here)."""
    service = pb.DESCRIPTOR.services_by_name["AuthService"]
    rpcs = {m.name: m for m in service.methods}
    assert set(interceptors.METHOD_SCOPES) == set(rpcs)
    assert _readme_scopes() == interceptors.METHOD_SCOPES
    keys = {s: f"only-{s}-0123456789" for s in ALL}
    server, store = _server(tmp_path, model_path,
                            api_keys={k: frozenset({s}) for s, k in keys.items()})
    server.start()
    stop = threading.Event()

    def nothing():  # the request never comes: a refusal must not wait for it
        stop.wait(30)
        yield from ()

    try:
        with grpc.insecure_channel(server.address) as ch:
            for name, m in rpcs.items():
                path = f"/{service.full_name}/{name}"
                call = (ch.stream_stream if m.server_streaming else ch.stream_unary)(path)
                need = interceptors.METHOD_SCOPES[name]
                for scope, want in [(None, grpc.StatusCode.UNAUTHENTICATED)] + [
                        (s, grpc.StatusCode.PERMISSION_DENIED) for s in sorted(ALL - {need})]:
                    md = () if scope is None else (("x-api-key", keys[scope]),)
                    with pytest.raises(grpc.RpcError) as ei:
                        r = call(nothing(), metadata=md, timeout=10)
                        if m.server_streaming:
                            list(r)
                    assert ei.value.code() == want, (name, scope, ei.value)
    finally:
        stop.set()
        server.stop(0)
        store.close()


def _holding_stream(stub, md, release: threading.Event) -> threading.Thread:
    """A started thread whose AuthenticateStream sends its start message only once
    ``release`` is set: its handler holds a worker thread and a slot meanwhile (up to
    signal_loss_s)."""
    def gen():
        release.wait(20)
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))

    def hold():
        try:
            stub.AuthenticateStream(gen(), metadata=md, timeout=30)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=hold)
    t.start()
    return t


def _slow_stats(svc, at_least_s: float = 0.0) -> tuple[threading.Event, threading.Event]:
    """Make ``svc``'s GetStats a slow store: its handler waits until the first event
    returned is set (10 s at most) and ``at_least_s`` has passed since it started; the
    second is set once it has returned."""
    release, returned = threading.Event(), threading.Event()
    orig = svc.stats

    def slow_stats():
        t0 = time.monotonic()
        try:
            release.wait(10)
            time.sleep(max(0.0, t0 + at_least_s - time.monotonic()))
            return orig()
        finally:
            returned.set()

    svc.stats = slow_stats
    return release, returned


def test_concurrency_bound_answers_resource_exhausted_fast(tmp_path, model_path, caplog):
    """gRPC admits max_concurrent_rpcs + max_streams calls (2 + 1 here: two GetStats held
    in a slow store and a stream); the next is answered RESOURCE_EXHAUSTED at once,
    counted and logged."""
    server, store = _server(tmp_path, model_path, max_workers=2, max_concurrent_rpcs=2,
                            max_streams=1, rate_limit_per_s=1000, rate_limit_burst=1000)
    caplog.set_level(logging.WARNING, logger="nacf.server")
    server.start()
    assert not [r for r in caplog.records
                if getattr(r, "event_type", "") == "grpc_busy_uncounted"]
    release = threading.Event()
    release_stats, _ = _slow_stats(server.service)
    try:
        ch = grpc.insecure_channel(server.address)
        stub = pbg.AuthServiceStub(ch)
        md = (("x-api-key", KEY),)

        slow = [stub.GetStats.future(pb.GetStatsRequest(), metadata=md, timeout=30)
                for _ in range(2)]
        ts = [_holding_stream(stub, md, release)]
        _wait_in_flight(server, 3)
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as ei:
            stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.perf_counter() - t0 < 1.0
        # refused by gRPC before any handler ran, yet counted as what the client saw,
        # with the caller's user_type, and logged; a second refusal is counted, not logged
        assert _requests(server, "GetStats", "RESOURCE_EXHAUSTED") == 1
        with pytest.raises(grpc.RpcError) as ei:
            stub.GetStats(pb.GetStatsRequest(), timeout=10)  # no key
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _requests(server, "GetStats", "RESOURCE_EXHAUSTED", "anonymous") == 1
        t0 = time.monotonic()  # the line is written on a thread of its own
        while not (busy := [r for r in caplog.records
                            if getattr(r, "event_type", "") == "grpc_busy"]):
            if time.monotonic() - t0 > 10:
                break
            time.sleep(0.05)
        assert len(busy) == 1 and busy[0].max_concurrent_rpcs == 2, busy
        assert busy[0].max_streams == 1 and busy[0].method == "GetStats"
        release.set()
        release_stats.set()
        for t in ts:
            t.join(10)
        for f in slow:
            assert f.result(10) is not None
        _wait_in_flight(server, 0)
        assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10) is not None
        # below the bound nothing more is counted as refused
        assert _requests(server, "GetStats", "RESOURCE_EXHAUSTED") == 1
        assert _requests(server, "GetStats", "OK") == 3
        ch.close()
    finally:
        release.set()
        release_stats.set()
        server.stop(0)
        store.close()


def test_a_call_whose_deadline_passes_while_it_waits_for_a_worker_is_counted(tmp_path,
                                                                            model_path):
    """A unary call admitted below the concurrency bound waits for a worker thread; when
    every worker is held (by calls in a slow store) until its deadline passes, gRPC ends
    it without running its handler. The client saw DEADLINE_EXCEEDED: the RPC metrics
    count it so (they counted nothing, an overloaded server looked idle)."""
    server, store = _server(tmp_path, model_path, max_workers=1, max_concurrent_rpcs=8,
                            rate_limit_per_s=1000, rate_limit_burst=1000)
    server.start()
    release, returned = _slow_stats(server.service)
    try:
        ch = grpc.insecure_channel(server.address)
        stub = pbg.AuthServiceStub(ch)
        md = (("x-api-key", KEY),)

        # the one worker waits in the store until released
        slow = stub.GetStats.future(pb.GetStatsRequest(), metadata=md, timeout=30)
        _wait_in_flight(server, 1)  # taken in first: the one worker runs it first
        for fn, req in ((stub.GetStats, pb.GetStatsRequest()),
                        (stub.Authenticate, pb.AuthenticateRequest(user_id="x"))):
            with pytest.raises(grpc.RpcError) as ei:
                fn(req, metadata=md, timeout=0.5)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        assert slow.result(10) is not None
        t0 = time.monotonic()  # the worker picks the ended calls up after the slow one
        while _requests(server, "Authenticate", "DEADLINE_EXCEEDED") < 1:
            if time.monotonic() - t0 > 10:
                break
            time.sleep(0.05)
        assert _requests(server, "GetStats", "DEADLINE_EXCEEDED") == 1
        assert _requests(server, "Authenticate", "DEADLINE_EXCEEDED") == 1
        assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10) is not None
        assert _requests(server, "GetStats", "OK") == 2
        ch.close()
    finally:
        release.set()
        server.stop(0)
        store.close()


def test_a_call_its_client_cancels_while_it_waits_for_a_worker_is_counted(tmp_path,
                                                                          model_path):
    """A unary call waiting for a worker thread (every worker held by a call in a slow
    store) whose client cancels it: its handler finds it ended and drops it before any
    work. It was left uncounted (as a request over max_message_bytes would have been
    counted CANCELLED: gRPC refuses that one only once the handler reads it, so the two
    do not meet); it is counted CANCELLED, as its client saw, under its caller's
    user_type."""
    server, store = _server(tmp_path, model_path, max_workers=1, max_concurrent_rpcs=8,
                            rate_limit_per_s=1000, rate_limit_burst=1000)
    server.start()
    release, returned = _slow_stats(server.service)
    try:
        ch = grpc.insecure_channel(server.address)
        stub = pbg.AuthServiceStub(ch)
        md = (("x-api-key", KEY),)

        slow = stub.GetStats.future(pb.GetStatsRequest(), metadata=md, timeout=30)
        _wait_in_flight(server, 1)  # taken in first: the one worker runs it first
        futs = [fn.future(req, metadata=md, timeout=60) for fn, req in (
            (stub.GetStats, pb.GetStatsRequest()),
            (stub.Authenticate, pb.AuthenticateRequest(user_id="x")))]
        _wait_in_flight(server, 3)  # both queued behind the slow call
        for f in futs:
            assert f.cancel() and f.code() == grpc.StatusCode.CANCELLED
        release.set()  # the slow call returns, long after the cancels came
        assert slow.result(10) is not None
        t0 = time.monotonic()  # the worker picks the ended calls up after the slow one
        while (_requests(server, "GetStats", "CANCELLED")
               + _requests(server, "Authenticate", "CANCELLED") < 2
               and time.monotonic() - t0 < 10):
            time.sleep(0.05)
        assert _requests(server, "GetStats", "CANCELLED") == 1
        assert _requests(server, "Authenticate", "CANCELLED") == 1
        assert _requests(server, "GetStats", "DEADLINE_EXCEEDED") == 0
        assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10) is not None
        assert _requests(server, "GetStats", "OK") == 2
        ch.close()
    finally:
        release.set()
        server.stop(0)
        store.close()


def test_health_watch_streams_hold_no_worker_thread(tmp_path, model_path):
    """grpc.health.v1 Watch needs no key (probes) and lasts as long as its client wants.
    The stock health servicer answers it without a thread (experimental_non_blocking),
    but nacf's wrapper around its handler (undecodable requests) hid that, so each Watch
    held a worker thread for its whole life: as many Watch calls as --max-workers, from
    anyone, left no thread for any other call (every GetStats and Authenticate timed
    out). They hold none now, and still get the status and its changes."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server, store = _server(tmp_path, model_path, max_workers=2, max_concurrent_rpcs=16)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            h = health_pb2_grpc.HealthStub(ch)
            watches = [h.Watch(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(4)]
            try:
                for w in watches:  # (without a key)
                    assert next(w).status == health_pb2.HealthCheckResponse.SERVING
                st = pbg.AuthServiceStub(ch).GetStats(
                    pb.GetStatsRequest(), metadata=(("x-api-key", KEY),), timeout=5)
                assert st.total_users == 0
                server._set_health(False)
                for w in watches:
                    assert next(w).status == health_pb2.HealthCheckResponse.NOT_SERVING
            finally:
                for w in watches:
                    w.cancel()
            # undecodable bytes are still INVALID_ARGUMENT, not grpcio's INTERNAL
            with pytest.raises(grpc.RpcError) as ei:
                list(ch.unary_stream("/grpc.health.v1.Health/Watch")(b"\xff\xff", timeout=5))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value
    finally:
        server.stop(0)
        store.close()


def test_a_unary_call_without_a_valid_key_is_refused_before_its_request_is_read(
        tmp_path, model_path):
    """nacf reads a unary call's request first and checks its key after: a client
    without any key that opens a unary call and never sends the request (a raw HTTP/2
    or streaming client can) held a worker thread until its deadline, or for ever
    without one; --max-workers such calls left no thread for anyone. A call without a
    valid key, or whose key lacks the method's scope, is now refused (UNAUTHENTICATED,
    PERMISSION_DENIED) before its request is read, and counted so."""
    auth_only = "sec-auth-only-0123456789"
    server, store = _server(tmp_path, model_path, max_workers=2, max_concurrent_rpcs=16,
                            api_keys={KEY: ALL, auth_only: frozenset({"authenticate"})})
    server.start()
    stop = threading.Event()

    def never():
        stop.wait(30)
        yield from ()

    try:
        with grpc.insecure_channel(server.address) as ch:
            call = ch.stream_unary("/nacf.v1.AuthService/GetStats")
            futs = [(call.future(never(), metadata=md, timeout=20), want) for md, want in (
                ((), grpc.StatusCode.UNAUTHENTICATED),
                ((("x-api-key", "not-a-key-0123456789"),), grpc.StatusCode.UNAUTHENTICATED),
                ((("x-api-key", auth_only),), grpc.StatusCode.PERMISSION_DENIED))]
            for f, want in futs:
                assert f.exception(timeout=10) is not None and f.code() == want, f
            st = pbg.AuthServiceStub(ch).GetStats(
                pb.GetStatsRequest(), metadata=(("x-api-key", KEY),), timeout=5)
            assert st.total_users == 0
        assert _requests(server, "GetStats", "UNAUTHENTICATED", "anonymous") == 2
        assert _requests(server, "GetStats", "PERMISSION_DENIED") == 1
    finally:
        stop.set()
        server.stop(0)
        store.close()


def test_token_bucket_per_client(tmp_path, model_path):
    server, store = _server(tmp_path, model_path, rate_limit_per_s=0.01, rate_limit_burst=3)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            md = (("x-api-key", KEY),)
            for _ in range(3):
                stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
            with pytest.raises(grpc.RpcError) as ei:
                stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "rate limit" in ei.value.details()
    finally:
        server.stop(0)
        store.close()


def test_calls_refused_after_the_key_is_known_are_counted_under_its_user_type(
        tmp_path, model_path):
    """A known API key that lacks the method's scope (PERMISSION_DENIED) or whose bucket
    is empty (RESOURCE_EXHAUSTED) authenticated with its key: user_type="api_key" in
    nacfauth_auth_requests_total; only a call without a valid key is "anonymous"."""
    server, store = _server(tmp_path, model_path, rate_limit_per_s=0.01, rate_limit_burst=1,
                            api_keys={KEY: ALL, "auth-only-key-0123": frozenset(
                                {"authenticate"})})
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)

            def code(key):
                try:
                    stub.GetStats(pb.GetStatsRequest(), metadata=(("x-api-key", key),),
                                  timeout=10)
                except grpc.RpcError as e:
                    return e.code()
                return grpc.StatusCode.OK

            assert code("auth-only-key-0123") == grpc.StatusCode.PERMISSION_DENIED
            assert code(KEY) == grpc.StatusCode.OK
            assert code(KEY) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert code("no-such-key") == grpc.StatusCode.UNAUTHENTICATED
        reg = server.metrics.registry

        def n(status, user_type):
            return reg.get_sample_value("nacfauth_auth_requests_total", {
                "method": "GetStats", "status": status, "user_type": user_type}) or 0.0

        assert n("PERMISSION_DENIED", "api_key") == 1.0
        assert n("RESOURCE_EXHAUSTED", "api_key") == 1.0
        assert n("UNAUTHENTICATED", "anonymous") == 1.0
        assert n("PERMISSION_DENIED", "anonymous") == n("RESOURCE_EXHAUSTED", "anonymous") == 0
    finally:
        server.stop(0)
        store.close()


def test_calls_refused_at_admission_are_logged_without_the_key(tmp_path, model_path,
                                                                caplog):
    """A call refused before its handler (no key, an unknown key, a key without the
    method's scope, an empty token bucket) leaves a security_event line naming the method,
    the caller's address and, once known, its client id: a rate-limited call is counted
    in nacfauth_suspicious_activities_total and fires NACFSuspiciousActivity, whose
    operator looks in the logs for who it was. No line holds a key."""
    scoped = "auth-only-key-0123"
    server, store = _server(tmp_path, model_path, rate_limit_per_s=0.01, rate_limit_burst=1,
                            api_keys={KEY: ALL, scoped: frozenset({"authenticate"})})
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch, \
                caplog.at_level("INFO", logger="nacf"):
            stub = pbg.AuthServiceStub(ch)
            for md, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                             ((("x-api-key", "wrong-key-987654"),),
                              grpc.StatusCode.UNAUTHENTICATED),
                             ((("x-api-key", scoped),), grpc.StatusCode.PERMISSION_DENIED),
                             ((("x-api-key", KEY),), None),
                             ((("x-api-key", KEY),), grpc.StatusCode.RESOURCE_EXHAUSTED)):
                try:
                    stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == code
                else:
                    assert code is None
        events = [r for r in caplog.records if getattr(r, "event_type", "") == "security_event"]
        got = [(r.security_event_type, r.method, r.ip_address, getattr(r, "client_id", None))
               for r in events]
        key_id = "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:8]
        scoped_id = "key-" + hashlib.sha256(scoped.encode()).hexdigest()[:8]
        assert got == [("missing_api_key", "GetStats", "127.0.0.1", None),
                       ("unknown_api_key", "GetStats", "127.0.0.1", None),
                       ("insufficient_scope", "GetStats", "127.0.0.1", scoped_id),
                       ("rate_limited", "GetStats", "127.0.0.1", key_id)]
        assert all(r.peer.startswith("ipv4:127.0.0.1:") for r in events)
        text = "\n".join(logging.Formatter().format(r) + repr(vars(r))
                         for r in caplog.records)
        assert KEY not in text and scoped not in text and "wrong-key-987654" not in text
    finally:
        server.stop(0)
        store.close()


def test_a_unary_call_whose_deadline_passed_in_its_handler_is_not_counted_ok(
        tmp_path, model_path):
    """A handler that returns after the call's deadline (a slow store) answers nobody:
    the client got DEADLINE_EXCEEDED, and so does nacfauth_auth_requests_total (it said
    OK, so NACFHighErrorRate stayed quiet while every client timed out)."""
    server, store = _server(tmp_path, model_path)
    # the handler returns once the client has given up on the call and the server's
    # deadline (at most 0.3 s after the handler started) has passed too: the client's
    # comes first (gRPC sends the timeout rounded up, and the server counts it from the
    # call's arrival), so returning between the two could still answer in time as far as
    # the server knows
    timed_out, returned = _slow_stats(server.service, at_least_s=0.35)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.GetStats(pb.GetStatsRequest(), metadata=(("x-api-key", KEY),),
                              timeout=0.3)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            timed_out.set()
            assert returned.wait(10)

        def n(status):
            return _requests(server, "GetStats", status)

        deadline = time.monotonic() + 10
        while n("OK") + n("DEADLINE_EXCEEDED") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the interceptor counts the call once its handler returned
        assert (n("OK"), n("DEADLINE_EXCEEDED")) == (0.0, 1.0)
    finally:
        timed_out.set()
        server.stop(0)
        store.close()


def test_a_unary_call_cancelled_early_is_counted_cancelled_when_its_handler_ends_late(
        tmp_path, model_path):
    """A client that cancels a call 20 ms into its 1 s timeout, whose handler (a slow
    store) returns only after the deadline: the call is counted CANCELLED, with the time
    left when gRPC ended it (0.98 s), not when the handler noticed (none: it was counted
    DEADLINE_EXCEEDED)."""
    server, store = _server(tmp_path, model_path)
    release, returned = _slow_stats(server.service)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            fut = stub.GetStats.future(pb.GetStatsRequest(), metadata=(("x-api-key", KEY),),
                                       timeout=1.0)
            time.sleep(0.02)
            assert fut.cancel() and fut.code() == grpc.StatusCode.CANCELLED
            time.sleep(1.2)  # past the call's deadline
            release.set()
            assert returned.wait(10)
            t0 = time.monotonic()
            while (_requests(server, "GetStats", "CANCELLED")
                   + _requests(server, "GetStats", "DEADLINE_EXCEEDED") == 0
                   and time.monotonic() - t0 < 10):
                time.sleep(0.01)  # counted once the handler returned
            assert (_requests(server, "GetStats", "CANCELLED"),
                    _requests(server, "GetStats", "DEADLINE_EXCEEDED")) == (1.0, 0.0)
    finally:
        release.set()
        server.stop(0)
        store.close()


def test_the_timeout_the_server_sees_is_rounded_up_as_timeout_granularity_says():
    """The server's deadline is the client's timeout rounded up by gRPC (read in grpcio
    1.85): by at most timeout_granularity, which deadline_slack builds on; for these
    timeouts, just above a step, by most of it. Should another grpcio round otherwise,
    this says so."""
    from concurrent import futures

    from nacf_core.server.interceptors import timeout_granularity

    arrived, seen = [], []

    class Arrival(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            arrived.append(time.monotonic())
            return continuation(details)

    def received(request, context):  # the timeout as it arrived, however late this runs
        seen.append(context.time_remaining() + time.monotonic() - arrived[-1])
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[Arrival()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {
        "U": grpc.unary_unary_rpc_method_handler(received)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/t.T/U")
            for timeout in (0.15, 1.011, 10.001, 100.001, 1000.5, 10001.0):
                call(b"", timeout=timeout)
                g = timeout_granularity(timeout)
                extra = seen[-1] - timeout
                # (+2 ms: gRPC keeps deadlines in whole milliseconds, rounded up)
                assert -0.05 < extra <= g + 0.002, (timeout, extra, g)
                if g >= 0.1:  # rounded up by nearly all of it
                    assert extra > 0.5 * g, (timeout, extra, g)
    finally:
        server.stop(0)


def test_a_failed_maintenance_round_leaves_the_grpc_health_serving(tmp_path, model_path):
    """grpc.health.v1 reports the readiness (the store answers, the server is not
    starting or draining), as /health/ready does: a maintenance round that fails (a purge
    or an expiry sweep the store refused) is logged and counted, it does not turn the
    replica NOT_SERVING for a health-checking load balancer while it is ready."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from nacf_core.errors import Unavailable

    server, store = _server(tmp_path, model_path)
    rounds = []
    second = threading.Event()

    def failing_maintenance(force=False):
        rounds.append(1)
        if len(rounds) >= 2:  # the first round's failure has been handled
            second.set()
        raise Unavailable("the template store failed during purge_attempts: "
                          "OperationalError; retry later.")

    server.service.maintenance = failing_maintenance
    said = []
    set_health = server._set_health
    server._set_health = lambda ok: (said.append(ok), set_health(ok))
    server.start()
    assert said[-1] is True  # (NOT_SERVING while starting, then ready)
    del said[:]
    try:
        assert second.wait(15)
        assert server.ready() and said and all(said), said
        with grpc.insecure_channel(server.address) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)
        store.close()


def test_a_readiness_check_in_flight_when_draining_starts_does_not_say_serving_after(
        tmp_path, model_path):
    """The health loop reads the readiness (a store ping: up to 2 s when the store is
    slow) and then sets grpc.health.v1; a SIGTERM landing in between set NOT_SERVING and
    the loop then set SERVING from its earlier reading, and went no further (the server
    stopping): a health-checking load balancer watching the replica was told it serves,
    for the whole drain. The loop now sets what it read only if draining has not begun."""
    from grpc_health.v1 import health_pb2

    from nacf_core.server.app import SERVICE_NAME

    server, store = _server(tmp_path, model_path)
    server.start()
    entered, proceed = threading.Event(), threading.Event()
    ready = server.service.ready

    def slow_ready():
        entered.set()
        proceed.wait(10)
        return ready()

    server.service.ready = slow_ready
    stopper = threading.Thread(target=server.stop, args=(0,))
    try:
        assert entered.wait(10)  # the loop is reading the readiness
        stopper.start()
        t0 = time.monotonic()
        while (server.health._server_status.get("") != health_pb2.HealthCheckResponse.
               NOT_SERVING and time.monotonic() - t0 < 10):
            time.sleep(0.01)
        proceed.set()
        server._health_thread.join(10)
        assert not server._health_thread.is_alive()
        for name in ("", SERVICE_NAME):
            assert server.health._server_status[name] == \
                health_pb2.HealthCheckResponse.NOT_SERVING, name
    finally:
        proceed.set()
        stopper.join(30)
        store.close()


def test_a_long_maintenance_round_does_not_hold_health_or_the_gauges(tmp_path, model_path):
    """A purge backlog takes a while (32 s of batches for 2.3 M audit rows on SQLite);
    it ran on the health loop, so grpc.health.v1 and the gauges read from the store were
    not refreshed meanwhile. Maintenance now has a thread of its own."""
    server, store = _server(tmp_path, model_path)
    busy, release = threading.Event(), threading.Event()

    def long_maintenance(force=False):
        busy.set()
        release.wait(30)

    refreshed = []
    refresh = server.service.refresh_gauges
    server.service.maintenance = long_maintenance
    server.service.refresh_gauges = lambda: (refreshed.append(time.monotonic()), refresh())
    said = []
    set_health = server._set_health
    server._set_health = lambda ok: (said.append(time.monotonic()), set_health(ok))
    server.start()
    try:
        assert busy.wait(15)
        t0 = time.monotonic()
        time.sleep(4.5)
        # the 2-s loop went on while the round ran
        assert len([t for t in refreshed if t > t0]) >= 1, refreshed
        assert len([t for t in said if t > t0]) >= 1, said
    finally:
        release.set()
        server.stop(0)
        store.close()


def test_a_call_carrying_x_api_key_more_than_once_is_refused(tmp_path, model_path, caplog):
    """A call with two x-api-key entries was judged on the first alone: a valid key
    followed by anything was admitted, and an unknown key followed by a valid one was
    refused as unknown; something in front of nacf that reads the last entry would see
    another caller than nacf. Such a call, its entries different or the same, is now
    refused UNAUTHENTICATED saying exactly one x-api-key is expected (as a device proof
    key given twice is), before its request is read or its stream is taken up, counted
    like the other refusals (user_type anonymous: no key was accepted) and logged
    (repeated_api_key), without the keys."""
    other = "sec-other-key-0123456789"
    server, store = _server(tmp_path, model_path, rate_limit_per_s=1000,
                            rate_limit_burst=1000, api_keys={KEY: ALL, other: ALL})
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch, \
                caplog.at_level("INFO", logger="nacf"):
            stub = pbg.AuthServiceStub(ch)
            for md in ((("x-api-key", KEY), ("x-api-key", other)),
                       (("x-api-key", "wrong-key-987654"), ("x-api-key", KEY)),
                       (("x-api-key", KEY), ("user-agent-x", "a"), ("x-api-key", KEY))):
                with pytest.raises(grpc.RpcError) as ei:
                    stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
                assert "exactly one x-api-key" in ei.value.details(), ei.value.details()
            start = pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))
            with pytest.raises(grpc.RpcError) as ei:
                stub.AuthenticateStream(iter([start]), timeout=10, metadata=(
                    ("x-api-key", KEY), ("x-api-key", other)))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "exactly one x-api-key" in ei.value.details(), ei.value.details()
            # one key, as ever
            assert stub.GetStats(pb.GetStatsRequest(), metadata=(("x-api-key", KEY),),
                                 timeout=10) is not None
        assert _requests(server, "GetStats", "UNAUTHENTICATED", "anonymous") == 3
        assert _requests(server, "AuthenticateStream", "UNAUTHENTICATED", "anonymous") == 1
        assert _requests(server, "GetStats", "OK") == 1
        lines = [r for r in caplog.records
                 if getattr(r, "security_event_type", "") == "repeated_api_key"]
        assert lines and lines[0].method == "GetStats" and lines[0].ip_address == "127.0.0.1"
        assert not hasattr(lines[0], "client_id")
        text = "\n".join(logging.Formatter().format(r) + repr(vars(r))
                         for r in caplog.records)
        assert KEY not in text and other not in text
    finally:
        server.stop(0)
        store.close()


def test_a_flood_of_refused_calls_is_not_a_flood_of_log_lines(tmp_path, model_path, caplog):
    """Calls refused at admission are not bounded by the rate limit: a caller sending
    many gets one security_event line (per kind, every 10 s) and the next line says how
    many it stood for; the metrics count every call."""
    server, store = _server(tmp_path, model_path)
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch, \
                caplog.at_level("INFO", logger="nacf"):
            stub = pbg.AuthServiceStub(ch)
            for _ in range(20):
                with pytest.raises(grpc.RpcError):
                    stub.GetStats(pb.GetStatsRequest(),
                                  metadata=(("x-api-key", "wrong-key-987654"),), timeout=10)
        lines = [r for r in caplog.records
                 if getattr(r, "security_event_type", "") == "unknown_api_key"]
        assert len(lines) == 1 and not hasattr(lines[0], "suppressed")
        assert server.metrics.registry.get_sample_value("nacfauth_auth_requests_total", {
            "method": "GetStats", "status": "UNAUTHENTICATED",
            "user_type": "anonymous"}) == 20.0
        icp = server._interceptor
        icp._refusals.interval_s = 0.0  # the next line: the 19 it stood for
        with grpc.insecure_channel(server.address) as ch, \
                caplog.at_level("INFO", logger="nacf"):
            with pytest.raises(grpc.RpcError):
                pbg.AuthServiceStub(ch).GetStats(
                    pb.GetStatsRequest(), metadata=(("x-api-key", "wrong-key-987654"),),
                    timeout=10)
        lines = [r for r in caplog.records
                 if getattr(r, "security_event_type", "") == "unknown_api_key"]
        assert len(lines) == 2 and lines[1].suppressed == 19
    finally:
        server.stop(0)
        store.close()


def test_active_sessions_gauge_is_right_from_the_first_scrape_after_a_start(
        tmp_path, model_path):
    """nacfauth_active_sessions comes from the store before the server starts serving
    (after a restart the gauge read 0 until the health loop's first refresh, 2 s later,
    while the sessions opened before the restart were still active)."""
    server, store = _server(tmp_path, model_path)
    store.put_template("gauge-user", b"not-a-real-template", "m-1")
    for _ in range(3):
        store.create_session("gauge-user", 900.0)
    server.start()
    try:
        reg = server.metrics.registry
        assert reg.get_sample_value("nacfauth_active_sessions") == 3.0
    finally:
        server.stop(0)
        store.close()


def test_open_loopback_mode(tmp_path, model_path):
    with pytest.raises(FailedPrecondition, match="no API keys"):
        _server(tmp_path, model_path, api_keys={})
    keys = tmp_path / "keys.txt"
    keys.write_text("")
    server, store = _server(tmp_path, model_path, api_keys={}, allow_open_loopback=True,
                            api_keys_file=str(keys))
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            assert stub.GetStats(pb.GetStatsRequest(), timeout=10)
            # keys configured since (SIGHUP): they are required from now on; a caller
            # without one must not keep every scope
            keys.write_text("auth-only-0123456789 authenticate\n")
            assert server.reload_api_keys(env={}) == (0, 1)
            with pytest.raises(grpc.RpcError) as ei:
                stub.GetStats(pb.GetStatsRequest(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                stub.GetStats(pb.GetStatsRequest(), timeout=10,
                              metadata=(("x-api-key", "auth-only-0123456789"),))
            assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
            keys.write_text("")  # and no way back to open without a restart
            with pytest.raises(ValueError, match="hold no key"):
                server.reload_api_keys(env={})
    finally:
        server.stop(0)
        store.close()


@pytest.mark.parametrize("address, why", [
    ("nohost.invalid:0", "not known"),
    ("127.0.0.1:{taken}", "in use"),
])
def test_a_metrics_address_that_cannot_be_served_is_named(tmp_path, model_path, address,
                                                          why):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = address.format(taken=taken.getsockname()[1])
        server, store = _server(tmp_path, model_path, metrics_address=address, sidecar=True)
        try:
            with pytest.raises(OSError, match=rf"cannot serve metrics on {address} \(option "
                                              rf"'metrics_address', --metrics-address\): "
                                              rf".*{why}"):
                server.start()
            assert server.server is None  # the gRPC server it had started is stopped
        finally:
            store.close()


def test_stop_does_not_close_the_store_under_a_handler_still_running(tmp_path, model_path):
    """A call still running when the grace period ends is cancelled by gRPC, but its
    handler runs on: the store is closed only once it has returned."""
    server, store = _server(tmp_path, model_path)
    server._own_service = True  # as nacf serve: stop() closes the store
    entered, release, events = threading.Event(), threading.Event(), []

    def slow_enroll(*args, **kwargs):
        entered.set()
        release.wait(30)
        events.append("handler returned")
        raise FailedPrecondition("released")

    closing = store.close

    def close():
        events.append("store closed")
        closing()

    server.service.enroll = slow_enroll
    store.close = close
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            fut = stub.Enroll.future(pb.EnrollRequest(user_id="u1"), timeout=30,
                                     metadata=(("x-api-key", KEY),))
            assert entered.wait(20)
            stopper = threading.Thread(target=server.stop, args=(0.1,))
            stopper.start()
            time.sleep(1.0)  # the grace period is long over; the handler still runs
            assert "store closed" not in events
            release.set()
            stopper.join(30)
            assert not stopper.is_alive()
            assert events == ["handler returned", "store closed"]
            with pytest.raises(grpc.RpcError):
                fut.result()
    finally:
        release.set()
        server.stop(0)


class _Ctx:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def abort(self, code, details):  # pragma: no cover - open mode never aborts here
        raise AssertionError(f"aborted: {code} {details}")


@pytest.mark.parametrize("peer, client_id", [
    ("ipv4:127.0.0.1:50122", "peer-127.0.0.1"),
    ("ipv6:%5B::1%5D:50122", "peer-::1"),  # as gRPC writes an IPv6 peer
    ("unix:/run/nacf.sock", "peer-unix:/run/nacf.sock"),
])
def test_open_mode_gives_each_address_its_own_client_id(peer, client_id):
    """Open mode names a caller by its address alone (its rate-limit bucket and the
    client_id in the logs), as the logs' ip_address field does, IPv6 unquoted."""
    from nacf_core.server.interceptors import AuthInterceptor

    icpt = AuthInterceptor({}, open_mode=True)
    assert icpt.authorize(_Ctx(peer), "GetStats", None, False) == (client_id, "open", ALL)


class _StreamCtx(_Ctx):
    """A server-streaming call's context: callbacks run when the test ends the call."""

    def __init__(self, remaining=None) -> None:
        super().__init__("ipv4:127.0.0.1:1")
        self.callbacks, self.remaining = [], remaining

    def add_callback(self, fn) -> bool:
        self.callbacks.append(fn)
        return True

    def time_remaining(self):
        return self.remaining

    def code(self):
        return None

    def end(self) -> None:  # what gRPC does when the call terminates
        for fn in self.callbacks:
            fn()


@pytest.mark.parametrize("remaining, status", [(None, "CANCELLED"), (-0.1, "DEADLINE_EXCEEDED"),
                                               ("finished", "OK")])
def test_a_stream_abandoned_by_its_client_is_counted_once(remaining, status):
    """gRPC may never resume nor close the response generator of a call whose client went
    away: the call is counted when it ends (CANCELLED, or DEADLINE_EXCEEDED past its
    deadline), and once only, whatever happens to the generator after."""
    from nacf_core.server.interceptors import AuthInterceptor, _wrap

    metrics = Metrics(CollectorRegistry())
    icpt = AuthInterceptor({KEY: ALL}, metrics=metrics)

    def updates(request, context):
        yield from range(3)

    wrapped = _wrap(grpc.unary_stream_rpc_method_handler(updates), icpt,
                    "ContinuousAuthenticate", KEY, False)
    ctx = _StreamCtx(None if remaining == "finished" else remaining)
    gen = wrapped.unary_stream(object(), ctx)
    assert next(gen) == 0  # one update sent; then the client goes away
    if remaining == "finished":
        assert list(gen) == [1, 2]
    ctx.end()  # the call is over; the generator is left as it is
    gen.close()  # and if it is closed later after all: not counted again

    def count(name):
        return metrics.registry.get_sample_value("nacfauth_auth_requests_total", {
            "method": "ContinuousAuthenticate", "status": name, "user_type": "api_key"}) or 0
    assert count(status) == 1
    assert sum(count(n) for n in ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL")) == 1


class _Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _TimedCtx(StatusRecorder, _StreamCtx):
    """A call's context with its deadline on the test's clock, as grpcio gives it: time
    remaining never below 0, callbacks refused once the call has ended."""

    def __init__(self, clock: _Clock, deadline: float) -> None:
        super().__init__()
        self.clock, self.deadline, self.active = clock, deadline, True

    def time_remaining(self):
        return max(self.deadline - self.clock(), 0.0)

    def is_active(self) -> bool:
        return self.active

    def add_callback(self, fn) -> bool:
        return self.active and super().add_callback(fn)

    def end(self) -> None:
        self.active = False
        super().end()


@pytest.mark.parametrize("timeout, sent", [(100.001, 101.0), (1000.5, 1010.0)])
@pytest.mark.parametrize("path", ["server stream", "unary", "unary queued", "servicer"])
def test_a_long_call_abandoned_at_its_client_deadline_is_counted_deadline_exceeded(
        monkeypatch, path, timeout, sent):
    """gRPC sends a timeout rounded up to three significant figures (a client's 100.001 s
    arrives as 101 s, its 1000.5 s as 1010 s): when the client's deadline passes and it
    cancels the call, the server's deadline is up to a second (ten) ahead. Such a call
    was counted CANCELLED (more than 0.2 s left); the slack now follows the call's own
    timeout. A call its client cancels earlier is still CANCELLED. Every path that
    gives an ended call its status: the stream's end, a unary handler answering a call
    that is gone, an Authenticate dropped while queued, the servicer's."""
    from nacf_core.server import interceptors, servicer
    from nacf_core.server.interceptors import AuthInterceptor, _wrap

    clock = _Clock()
    monkeypatch.setattr(interceptors, "_clock", clock)

    def status(cancel_after: float) -> str:
        """Serve one call, which the client gives up ``cancel_after`` s after sending
        it (the server sees that 2 ms later); the status it is counted with."""
        metrics = Metrics(CollectorRegistry())
        arrived = clock.t  # the call arrives, its deadline that of the rounded timeout
        ctx = _TimedCtx(clock, arrived + sent)

        def client_gives_up() -> None:
            clock.t = arrived + cancel_after + 0.002
            ctx.end()

        class Gate:  # the Authenticate queue: the client gives up while the call waits
            def __enter__(self):
                client_gives_up()

            def __exit__(self, *exc):
                return False

        gate = Gate() if path == "unary queued" else None
        icpt = AuthInterceptor({KEY: ALL}, metrics=metrics, service=SimpleNamespace(
            authenticate_gate=gate, check_rate_limit=lambda client_id: None))
        method = "ContinuousAuthenticate" if path == "server stream" else "Authenticate"
        try:
            if path == "server stream":
                def updates(request, context):
                    yield 0
                    client_gives_up()
                    yield 1

                gen = _wrap(grpc.unary_stream_rpc_method_handler(updates), icpt, method,
                            KEY, False, arrived).unary_stream(object(), ctx)
                assert next(gen) == 0
                next(gen)  # the update is never sent; gRPC leaves the generator
            elif path == "servicer":
                interceptors.call_started(ctx, arrived)
                client_gives_up()
                servicer._gone(ctx)
                return ctx.code().name
            else:
                def answer(request, context):
                    if gate is None:  # the client gives up while the handler works
                        client_gives_up()
                    return "answered late"

                h = _wrap(grpc.unary_unary_rpc_method_handler(answer), icpt, method, KEY,
                          False, arrived)
                try:
                    h.stream_unary(iter([object()]), ctx)
                except Exception:  # noqa: BLE001 - the call is aborted, answered or queued
                    pass
        finally:
            icpt.close()
        got = {smp.labels["status"]: smp.value for m in metrics.registry.collect()
               for smp in m.samples if smp.name == "nacfauth_auth_requests_total"}
        assert sum(got.values()) == 1, got
        return next(iter(got))

    assert status(timeout) == "DEADLINE_EXCEEDED"  # at the client's deadline
    assert status(timeout / 3) == "CANCELLED"


def test_reuse_port_lets_two_servers_share_an_address(tmp_path, model_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"127.0.0.1:{port}"
    for n in "abcd":
        (tmp_path / n).mkdir()
    a, sa = _server(tmp_path / "a", model_path, grpc_address=addr, reuse_port=True)
    b, sb = _server(tmp_path / "b", model_path, grpc_address=addr, reuse_port=True)
    a.start()
    try:
        b.start()  # would fail to bind without SO_REUSEPORT
        try:
            with grpc.insecure_channel(addr) as ch:
                assert pbg.AuthServiceStub(ch).GetStats(
                    pb.GetStatsRequest(), metadata=(("x-api-key", KEY),), timeout=10)
        finally:
            b.stop(0)
    finally:
        a.stop(0)
        sa.close()
        sb.close()
    c, sc = _server(tmp_path / "c", model_path, grpc_address=addr)
    d, sd = _server(tmp_path / "d", model_path, grpc_address=addr)
    c.start()
    try:
        with pytest.raises(OSError):
            d.start()
    finally:
        c.stop(0)
        sc.close()
        sd.close()


def test_authenticate_calls_queue_on_the_gate_before_the_rate_limit(tmp_path, model_path):
    """With SQLite, a unary Authenticate holds the service's gate from the rate limit on
    (queued calls wait without competing for the GIL); other RPCs do not wait for it."""
    server, store = _server(tmp_path, model_path, rate_limit_per_s=1000,
                            rate_limit_burst=1000)
    svc = server.service
    gate = svc.authenticate_gate
    assert gate is not None
    seen = []
    orig = svc.check_rate_limit

    def spy(client_id):
        seen.append(gate._is_owned())
        return orig(client_id)

    svc.check_rate_limit = spy
    server.start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            md = (("x-api-key", KEY),)
            with pytest.raises(grpc.RpcError) as ei:  # an unknown user: NOT_FOUND
                stub.Authenticate(pb.AuthenticateRequest(
                    user_id="nobody", signal=pb.Signal(
                        sample_rate_hz=160.0, channel_names=["C3", "C4"],
                        samples=b"\x00" * 8 * 640)), metadata=md, timeout=10)
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
            stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
            assert seen == [True, False]
            # a held gate blocks Authenticate only
            gate.acquire()
            try:
                assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=5)
                known = list(interceptors._CALLS.values())
                with pytest.raises(grpc.RpcError) as ei:
                    stub.Authenticate(pb.AuthenticateRequest(user_id="nobody"),
                                      metadata=md, timeout=0.5)
                assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # the gate lets the call on only once the server knows it is gone: gRPC
                # has ended it (the client's cancel arrived) or the server's copy of its
                # deadline, counted from its arrival, after the client's, has passed (a
                # fixed 0.2 s guessed that, on a loaded machine too short)
                t0 = time.monotonic()
                while time.monotonic() - t0 < 10:
                    now = interceptors._clock()
                    queued = [t for t in list(interceptors._CALLS.values())
                              if not any(t is k for k in known)]
                    if queued and all(t.ended is not None or t.deadline <= now
                                      for t in queued):
                        break
                    time.sleep(0.01)
                else:
                    raise AssertionError("the server still has the call in time")
            finally:
                gate.release()
            # the call that timed out while queued is dropped, not served late
            assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=5)
            time.sleep(0.3)
            assert seen == [True, False, False, False]  # no rate-limit call for it
            reg = server.metrics.registry
            # (counted under its caller's user_type: its key is known, even though the
            # call was dropped before its admission)
            assert reg.get_sample_value("nacfauth_auth_requests_total", {
                "method": "Authenticate", "status": "DEADLINE_EXCEEDED",
                "user_type": "api_key"}) == 1.0
    finally:
        server.stop(0)
        store.close()


def test_a_grpcio_without_the_known_internals_leaves_refusals_uncounted(
        tmp_path, model_path, monkeypatch, caplog):
    """Should grpcio rename what watch_concurrency reads, nacf serve says so at start and
    counts nothing as refused (it never guesses)."""
    from nacf_core.server import interceptors

    icp = interceptors.AuthInterceptor({KEY: ALL})
    assert icp.watch_concurrency(object()) is False
    assert icp._at_concurrency_bound() is None
    monkeypatch.setattr(interceptors.AuthInterceptor, "watch_concurrency",
                        lambda self, server: False)
    caplog.set_level(logging.WARNING, logger="nacf.server")
    server, store = _server(tmp_path, model_path)
    server.start()
    try:
        assert [r for r in caplog.records
                if getattr(r, "event_type", "") == "grpc_busy_uncounted"]
    finally:
        server.stop(0)
        store.close()


def test_a_log_write_that_blocks_does_not_stall_the_server(tmp_path, model_path):
    """The grpc_busy line is written off gRPC's polling thread: that thread holds the
    server's lock while it asks the interceptor for a handler, so a log write that blocks
    (a full stderr pipe, a stalled log driver) stalled every call, the refused one and
    the completion of those in flight included."""
    server, store = _server(tmp_path, model_path, max_workers=2, max_concurrent_rpcs=1,
                            max_streams=1, rate_limit_per_s=1000, rate_limit_burst=1000)
    stuck, unblock, release = threading.Event(), threading.Event(), threading.Event()

    class Blocking(logging.Handler):
        def emit(self, record):
            if getattr(record, "event_type", "") == "grpc_busy":
                stuck.set()
                unblock.wait(60)

    handler = Blocking(logging.WARNING)
    logging.getLogger("nacf.server").addHandler(handler)
    server.start()
    try:
        ch = grpc.insecure_channel(server.address)
        stub = pbg.AuthServiceStub(ch)
        md = (("x-api-key", KEY),)

        def gen():  # the handler waits for the first message: holds the one slot
            release.wait(20)
            yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))

        # gRPC admits max_concurrent_rpcs + max_streams = 2 calls: a GetStats held in a
        # slow store and a stream
        release_stats, _ = _slow_stats(server.service)
        slow = stub.GetStats.future(pb.GetStatsRequest(), metadata=md, timeout=30)
        hold = threading.Thread(target=lambda: code_of(stub.AuthenticateStream, gen(),
                                                       metadata=md, timeout=30))
        hold.start()
        _wait_in_flight(server, 2)
        c = code_of(stub.GetStats, pb.GetStatsRequest(), metadata=md, timeout=8)
        assert c == grpc.StatusCode.RESOURCE_EXHAUSTED, c
        assert stuck.wait(10)
        assert _requests(server, "GetStats", "RESOURCE_EXHAUSTED") == 1
        release.set()
        release_stats.set()
        hold.join(10)
        assert slow.result(10) is not None
        # the log line is still being written: the stream ends and calls go on
        _wait_in_flight(server, 0)
        assert stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=8) is not None
        ch.close()
    finally:
        unblock.set()
        release.set()
        logging.getLogger("nacf.server").removeHandler(handler)
        server.stop(0)
        store.close()


def code_of(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_calls_refused_at_admission_are_counted_as_suspicious_activities(tmp_path,
                                                                         model_path):
    """A call refused at admission is a security_event line (unknown_api_key,
    repeated_api_key, insufficient_scope) but was not counted in
    nacfauth_suspicious_activities_total, whose every other line is (a refused device
    proof, a replay, a lockout, a rate-limited client): a client trying keys by the
    thousand showed on no panel of suspicious activity and fired no alert (the
    brute-force alert counts failed attempts, the refused-calls alert
    RESOURCE_EXHAUSTED). Each such call is now counted, every one of them, also those
    whose line the 10-s throttle leaves out; a call without a key (a misconfigured
    client, as a missing device proof) is logged and not counted."""
    auth_only = "sec-auth-only-0123456789"
    server, store = _server(tmp_path, model_path,
                            api_keys={KEY: ALL, auth_only: frozenset({"authenticate"})})
    server.start()
    reg = server.metrics.registry

    def suspicious(kind, severity):
        return reg.get_sample_value("nacfauth_suspicious_activities_total",
                                    {"activity_type": kind, "severity": severity}) or 0.0

    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthServiceStub(ch)
            for md in [(("x-api-key", "unknown-key-0123456789"),)] * 3 + [
                    (("x-api-key", KEY), ("x-api-key", KEY)), (("x-api-key", auth_only),),
                    ()]:
                with pytest.raises(grpc.RpcError):
                    stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)

            def start():
                yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="x"))

            with pytest.raises(grpc.RpcError):
                stub.AuthenticateStream(start(), metadata=(
                    ("x-api-key", "unknown-key-0123456789"),), timeout=10)
        assert suspicious("unknown_api_key", "medium") == 4
        assert suspicious("repeated_api_key", "medium") == 1
        assert suspicious("insufficient_scope", "medium") == 1
        assert suspicious("missing_api_key", "low") == 0
    finally:
        server.stop(0)
        store.close()


def test_enroll_calls_ended_or_refused_before_their_handler_count_as_registrations(
        tmp_path, model_path):
    """Every Enroll its handler refuses is counted in nacfauth_user_registrations_total
    with its status (an Enroll whose deadline passed before its handler started too:
    "a loaded server's refused enrollments vanished from the counter"), but those the
    interceptor ended before the handler did not count there at all: one whose deadline
    passed while it waited for a worker thread, and one refused for its key or scope,
    all in nacfauth_auth_requests_total. Each now counts once, with the same status."""
    auth_only = "sec-auth-only-0123456789"
    server, store = _server(tmp_path, model_path, max_workers=1, max_concurrent_rpcs=8,
                            rate_limit_per_s=1000, rate_limit_burst=1000,
                            api_keys={KEY: ALL, auth_only: frozenset({"authenticate"})})
    server.start()
    release, _ = _slow_stats(server.service)
    reg = server.metrics.registry

    def registrations(status):
        return reg.get_sample_value("nacfauth_user_registrations_total", {
            "registration_method": "Enroll", "status": status}) or 0.0

    try:
        ch = grpc.insecure_channel(server.address)
        stub = pbg.AuthServiceStub(ch)
        md = (("x-api-key", KEY),)
        req = pb.EnrollRequest(user_id="late")
        for bad, code, who in (
                ((("x-api-key", "unknown-key-0123456789"),), "UNAUTHENTICATED", "anonymous"),
                ((("x-api-key", auth_only),), "PERMISSION_DENIED", "api_key")):
            with pytest.raises(grpc.RpcError) as ei:
                stub.Enroll(req, metadata=bad, timeout=10)
            assert ei.value.code().name == code
            assert _requests(server, "Enroll", code, who) == 1
            assert registrations(code) == 1, code
        slow = stub.GetStats.future(pb.GetStatsRequest(), metadata=md, timeout=30)
        _wait_in_flight(server, 1)  # the one worker waits in the store until released
        with pytest.raises(grpc.RpcError) as ei:
            stub.Enroll(req, metadata=md, timeout=0.5)
        assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        assert slow.result(10) is not None
        t0 = time.monotonic()  # the worker picks the ended call up after the slow one
        while _requests(server, "Enroll", "DEADLINE_EXCEEDED") < 1:
            if time.monotonic() - t0 > 10:
                break
            time.sleep(0.05)
        assert _requests(server, "Enroll", "DEADLINE_EXCEEDED") == 1
        assert registrations("DEADLINE_EXCEEDED") == 1
        # one the handler refuses: counted once, by the service, as before
        with pytest.raises(grpc.RpcError) as ei:
            stub.Enroll(req, metadata=md, timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert registrations("INVALID_ARGUMENT") == 1
        ch.close()
    finally:
        release.set()
        server.stop(0)
        store.close()


@pytest.mark.parametrize("method", ["GetStats", "Authenticate"])
def test_an_answer_counted_deadline_exceeded_is_not_sent(monkeypatch, method):
    """A unary handler that returns past its deadline before gRPC's polling thread has
    ended the call (the context still says active) was counted DEADLINE_EXCEEDED, yet
    its answer was handed to gRPC, which could still send it: a soak on PostgreSQL saw a
    client get OK for a call the metrics counted DEADLINE_EXCEEDED. The call now ends
    with the status it is counted with, and its answer is not sent; what the handler
    asked to undo then (an accept's session: nobody holds its token) is undone."""
    from nacf_core.server.interceptors import AuthInterceptor, _wrap

    clock = _Clock()
    monkeypatch.setattr(interceptors, "_clock", clock)
    metrics = Metrics(CollectorRegistry())
    arrived = clock.t
    ctx = _TimedCtx(clock, arrived + 0.05)
    icpt = AuthInterceptor({KEY: ALL}, metrics=metrics, service=SimpleNamespace(
        authenticate_gate=None, check_rate_limit=lambda client_id: None))

    dropped = []

    def answer(request, context):
        clock.t = arrived + 0.051  # the deadline passes while it works; gRPC has not seen
        interceptors.on_dropped(context, lambda: dropped.append("session ended"))
        return "answered late"

    h = _wrap(grpc.unary_unary_rpc_method_handler(answer), icpt, method, KEY, False, arrived)
    try:
        with pytest.raises(Exception):
            h.stream_unary(iter([object()]), ctx)
    finally:
        icpt.close()
    assert ctx.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _requests(SimpleNamespace(metrics=metrics), method, "DEADLINE_EXCEEDED") == 1
    assert _requests(SimpleNamespace(metrics=metrics), method, "OK") == 0
    assert dropped == ["session ended"]
