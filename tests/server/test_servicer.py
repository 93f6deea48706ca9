"""The servicer without sockets (``grpc_testing``), the converters, and the config."""

from __future__ import annotations

import time

import grpc
import grpc_testing
import numpy as np
import pytest
from _server_support import CH16, SFREQ, eeg, make_pipeline
from prometheus_client import CollectorRegistry

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core.config import Config, load_api_keys, load_config
from nacf_core.errors import InvalidArgument, NotFound
from nacf_core.metrics import Metrics
from nacf_core.server.converters import block_to_signal, signal_to_block
from nacf_core.server.servicer import AuthServicer
from nacf_core.service import AuthService
from nacf_core.store import open_store

SD = pb.DESCRIPTOR.services_by_name["AuthService"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("svc")
    store = open_store(f"sqlite:///{d / 'n.db'}", bytes(range(32)))
    cfg = Config(data_dir=str(d), require_device_proof=False, rate_limit_per_s=1000,
                 rate_limit_burst=1000)
    service = AuthService(store, make_pipeline(model_path), cfg,
                          metrics=Metrics(CollectorRegistry()))
    server = grpc_testing.server_from_dictionary(
        {SD: AuthServicer(service)}, grpc_testing.strict_real_time())
    yield service, server
    store.close()


def call(server, name, request, metadata=()):
    rpc = server.invoke_unary_unary(SD.methods_by_name[name], metadata, request, None)
    resp, _, code, details = rpc.termination()
    return resp, code, details


def test_servicer_enroll_authenticate_errors(svc):
    _, server = svc
    s = block_to_signal(eeg(1, 3, 0, 40), SFREQ, CH16)
    _, code, _ = call(server, "Enroll", pb.EnrollRequest(user_id="t1", signals=[s]))
    assert code == grpc.StatusCode.OK
    _, code, details = call(server, "Enroll", pb.EnrollRequest(user_id="t1", signals=[s]))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "t1" in details
    probe = block_to_signal(eeg(1, 3, 60, 8), SFREQ, CH16)
    resp, code, _ = call(server, "Authenticate", pb.AuthenticateRequest(user_id="t1",
                                                                        signal=probe))
    assert code == grpc.StatusCode.OK and resp.accepted and resp.session_token
    _, code, details = call(server, "Authenticate", pb.AuthenticateRequest(user_id="t1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "signal" in details
    _, code, _ = call(server, "GetUser", pb.GetUserRequest(user_id="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND
    _, code, _ = call(server, "GetUser", pb.GetUserRequest(user_id="x" * 500))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_servicer_internal_error_is_internal_not_unknown(svc):
    service, server = svc
    orig = service.stats
    service.stats = lambda: 1 / 0
    try:
        _, code, details = call(server, "GetStats", pb.GetStatsRequest())
    finally:
        service.stats = orig
    assert code == grpc.StatusCode.INTERNAL and "internal error (id" in details


def test_store_failure_is_unavailable(svc):
    service, server = svc

    class Broken:
        def __getattr__(self, name):
            def f(*a, **k):
                raise OSError("disk on fire")
            return f

    real = service.store
    service.store = Broken()
    try:
        _, code, details = call(server, "GetUser", pb.GetUserRequest(user_id="t1"))
    finally:
        service.store = real
    assert code == grpc.StatusCode.UNAVAILABLE and "store" in details


# ------------------------------------------------------------------ converters
def test_signal_to_block_is_zero_copy():
    x = np.arange(32, dtype=np.float32).reshape(8, 4)
    s = block_to_signal(x, 250, ["a", "b", "c", "d"])
    b = signal_to_block(s)
    assert b.samples.shape == (8, 4) and np.array_equal(b.samples, x)
    assert not b.samples.flags.owndata and not b.samples.flags.writeable


def test_float64_payload_with_full_mantissas_is_refused():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 20, (640, 16))  # float64 µV with full mantissas
    s = block_to_signal(np.zeros((1, 16), np.float32), 160, [f"c{i}" for i in range(16)])
    s.samples = x.astype("<f8").tobytes()  # 2 × 4 × 16 bytes per row: the length fits
    with pytest.raises(InvalidArgument, match="wrong dtype|non-finite"):
        signal_to_block(s)


@pytest.mark.parametrize("mutate,match", [
    (lambda s: setattr(s, "samples", s.samples[:-1]), "multiple of 4"),
    (lambda s: setattr(s, "sample_rate_hz", -1), "sample_rate_hz"),
    (lambda s: setattr(s, "sample_rate_hz", float("inf")), "sample_rate_hz"),
    (lambda s: setattr(s, "samples", b""), "empty"),
    (lambda s: s.channel_names.append("a"), "unique"),
    (lambda s: setattr(s, "samples", np.full((8, 4), np.nan, "<f4").tobytes()), "non-finite"),
    (lambda s: setattr(s, "samples", np.full((8, 4), 3e7, "<f4").tobytes()), "wrong dtype"),
])
def test_signal_to_block_rejects(mutate, match):
    s = block_to_signal(np.ones((8, 4), np.float32), 250, ["a", "b", "c", "d"])
    mutate(s)
    with pytest.raises(InvalidArgument, match=match):
        signal_to_block(s)


# ------------------------------------------------------------------ config
def test_config_precedence_and_validation(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('grpc_address = "127.0.0.1:6000"\nlockout_threshold = 7\n'
                 'require_device_proof = false\n')
    c = load_config(f, env={"NACF_LOCKOUT_THRESHOLD": "8"}, grpc_address=None)
    assert c.grpc_address == "127.0.0.1:6000" and c.lockout_threshold == 8
    assert c.require_device_proof is False
    c = load_config(f, env={}, lockout_threshold=9)
    assert c.lockout_threshold == 9
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        f.write_text("nope = 1\n")
        load_config(f, env={})
    with pytest.raises(ValueError, match="lockout_threshold"):
        load_config(None, env={"NACF_LOCKOUT_THRESHOLD": "0"})
    with pytest.raises(ValueError, match="grpc_address"):
        load_config(None, env={"NACF_GRPC_ADDRESS": "nohost"})
    with pytest.raises(ValueError, match="tls_key_file"):
        Config(tls_cert_file="x")


def test_keys_file_scopes(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\nk1 authenticate\nk2 authenticate, enroll,admin\n")
    keys = load_api_keys(f, "k3")
    assert keys["k1"] == {"authenticate"} and keys["k2"] == {"authenticate", "enroll", "admin"}
    assert keys["k3"] == {"authenticate", "enroll", "admin"}
    f.write_text("k1 superuser\n")
    with pytest.raises(ValueError, match="scopes must be among"):
        load_api_keys(f)


def test_session_ttl_expiry(svc):
    service, _ = svc
    t = [time.time()]
    service.clock = lambda: t[0]
    try:
        r = service.authenticate("t1", signal_to_block(block_to_signal(
            eeg(1, 3, 68, 8), SFREQ, CH16)))
        assert r.accepted
        assert service.validate_session(r.session_token).valid
        t[0] += service.config.session_ttl_s + 1
        v = service.validate_session(r.session_token)
        assert not v.valid and v.reason == "expired"
    finally:
        service.clock = time.time


def test_serve_help_documents_every_option():
    import argparse

    from nacf_core.commands import serve
    from nacf_core.config import OPTION_HELP

    parser = argparse.ArgumentParser(prog="nacf")
    serve.register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["serve"]
    text = sub.format_help()
    for flag in ("--grpc-address HOST:PORT", "--metrics-address HOST:PORT", "--data-dir DIR",
                 "--config FILE", "--require-device-proof", "--no-require-device-proof",
                 "--allow-open-loopback", "--tls-cert", "--tls-client-ca"):
        assert flag in text, flag
    for name in OPTION_HELP:
        assert name in text and f"NACF_{name.upper()}" in text, name


def test_maintenance_expires_sessions_and_purges_audit_and_ended_sessions(svc):
    service, _ = svc
    t = [time.time()]
    service.clock = lambda: t[0]
    try:
        r = service.authenticate("t1", signal_to_block(block_to_signal(
            eeg(1, 3, 76, 8), SFREQ, CH16)))
        assert r.accepted
        n_rows = len(service.store.recent_attempts("t1", limit=1000))
        assert n_rows >= 1
        hist = service.metrics.session_duration_seconds
        before = sum(s.value for m in hist.collect() for s in m.samples
                     if s.name.endswith("_count"))
        t[0] += service.config.session_ttl_s + 1
        service.maintenance(force=True)
        after = sum(s.value for m in hist.collect() for s in m.samples
                    if s.name.endswith("_count"))
        assert after >= before + 1
        assert service.metrics.active_sessions._value.get() == 0
        ended = service.store.get_session(r.session_token)  # ended, kept until retention
        assert ended.ended_at is not None and not ended.is_active(t[0])
        t[0] += service.config.audit_retention_days * 86400 + 1
        # an open session (one opened past retention ago would be past its maximum age)
        active = service.store.create_session("t1", 600, now=t[0])
        service.maintenance(force=True)
        assert service.store.recent_attempts("t1", limit=1000) == []
        with pytest.raises(NotFound):  # who authenticated when: purged like the audit
            service.store.get_session(r.session_token)
        assert service.store.get_session(active.token).is_active(t[0])
    finally:
        service.clock = time.time


def test_an_enroll_whose_deadline_passed_before_it_started_is_counted_in_registrations(svc):
    """Every Enroll the handler refuses before the service runs (a Signal that does not
    convert, an update without the admin scope) is counted in
    nacfauth_user_registrations_total with its status, but one whose deadline had passed
    when its handler started was not: a loaded server's refused enrollments vanished from
    the counter. It is counted DEADLINE_EXCEEDED now, once."""
    service, server = svc

    def counts():
        return {s.labels["status"]: s.value
                for m in service.metrics.registry.collect()
                if m.name == "nacfauth_user_registrations"
                for s in m.samples if s.name.endswith("_total")
                and s.labels["registration_method"] == "Enroll"}

    s = block_to_signal(eeg(1, 3, 0, 40), SFREQ, CH16)
    before = counts()
    rpc = server.invoke_unary_unary(SD.methods_by_name["Enroll"], (),
                                    pb.EnrollRequest(user_id="late", signals=[s]), 1e-6)
    _, _, code, _ = rpc.termination()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # grpc_testing ends the call at its deadline on a timer of its own, whether or not
    # the handler's thread has run yet (on a loaded machine, not yet): wait for it
    t_end = time.monotonic() + 20
    while sum(counts().values()) == sum(before.values()) and time.monotonic() < t_end:
        time.sleep(0.02)
    time.sleep(0.2)  # a second count, if any, would come now
    after = counts()
    assert after.get("DEADLINE_EXCEEDED", 0.0) - before.get("DEADLINE_EXCEEDED", 0.0) == 1
    assert sum(after.values()) - sum(before.values()) == 1
    with pytest.raises(NotFound):
        service.get_user("late")


def test_an_identify_whose_request_does_not_convert_is_logged_too(svc, caplog):
    """Identify logs every call, a refused one too; but a request refused by the handler
    before the service (no signal, samples that are no float32 rows, a NaN) left no
    identify line at all. It has one, success false, reason invalid_argument."""
    _, server = svc
    bad = block_to_signal(eeg(1, 3, 44, 8), SFREQ, CH16)
    bad.samples = bad.samples[:-2]  # not a whole row
    with caplog.at_level("INFO", logger="nacf.service"):
        for req in (pb.IdentifyRequest(top_k=1), pb.IdentifyRequest(signal=bad)):
            _, code, _ = call(server, "Identify", req)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
    lines = [r for r in caplog.records if getattr(r, "event_type", "") == "identify"]
    assert [(r.success, r.reason, r.method) for r in lines] == [
        (False, "invalid_argument", "Identify")] * 2
