"""The Authenticate path with PAD and device proof on, in process: one read and one write
transaction per attempt, the probe history, and the caches never serving stale data."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _server_support import eeg, make_pipeline, signal_block
from prometheus_client import CollectorRegistry

from nacf_core.config import Config
from nacf_core.errors import Unauthenticated
from nacf_core.metrics import Metrics
from nacf_core.pad import PresentationAttackDetector
from nacf_core.service import AuthService, DeviceProof, device_proof
from nacf_core.store import open_store


@pytest.fixture
def svc(tmp_path, model_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    pipe = make_pipeline(model_path)
    cfg = Config(data_dir=str(tmp_path), require_device_proof=True, rate_limit_per_s=1000,
                 rate_limit_burst=1000)
    service = AuthService(store, pipe, cfg, metrics=Metrics(CollectorRegistry()),
                          pad=PresentationAttackDetector(list(pipe.model.ch_names)))
    yield service
    store.close()


_N = iter(range(1_000_000))
_USED: set = set()


def _auth(service, user, secret, x, device="hs-1"):
    b = signal_block(x, device)
    while True:  # distinct proofs for the same samples, even across a second boundary
        ts = int(time.time()) - next(_N) % 50
        if (user, device, b.raw, ts) not in _USED:
            _USED.add((user, device, b.raw, ts))
            break
    proof = DeviceProof(device, str(ts), device_proof(secret, user, device, ts, b.raw))
    return service.authenticate(user, b, proof, peer="ipv4:127.0.0.1")


def test_authenticate_writes_once_and_keeps_history(svc):
    store = svc.store
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("u1", "hs-1")
    n_fp = len(store.get_fingerprints("u1"))
    calls = {"get_auth_state": 0, "finish_authentication": 0}
    for name in calls:
        orig = getattr(store, name)

        def counted(*a, _orig=orig, _name=name, **k):
            calls[_name] += 1
            return _orig(*a, **k)

        setattr(store, name, counted)
    try:
        probe = eeg(1, 3, 44, 8)
        r = _auth(svc, "u1", secret, probe)
        assert r.accepted and r.session_token
        assert calls == {"get_auth_state": 1, "finish_authentication": 1}
        fps = store.get_fingerprints("u1")
        assert len(fps) == n_fp + 1 and fps[-1][0] == "probe"
        assert store.recent_attempts("u1", 5)[0].success
        # the same samples again (a fresh, valid proof): a replay of that probe
        r2 = _auth(svc, "u1", secret, probe)
        assert not r2.accepted and not r2.session_token
        assert any("replay_of_probe" in x for x in r2.reasons)
        assert store.get_lockout("u1").failures == 1
        assert len(store.get_fingerprints("u1")) == n_fp + 1  # an attack is not kept
        a = store.recent_attempts("u1", 5)[0]
        assert (a.success, a.reason) == (False, "presentation_attack")
        # a wrong device secret: UNAUTHENTICATED, with the device read in the same query
        with pytest.raises(Unauthenticated, match="does not verify"):
            _auth(svc, "u1", "not-the-secret", eeg(1, 3, 52, 8))
        # a genuine accept resets the failure count
        assert _auth(svc, "u1", secret, eeg(1, 3, 60, 8)).accepted
        assert store.get_lockout("u1").failures == 0
    finally:
        for name in calls:
            delattr(store, name)


def test_reenrolled_user_never_gets_the_old_cached_template(svc):
    """Delete + re-enroll restarts the template version at 1: the decoded-template cache
    is keyed by the template's bytes, so the new template is used."""
    svc.enroll("u2", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("u2", "hs-2")
    assert _auth(svc, "u2", secret, eeg(1, 3, 44, 8), "hs-2").accepted
    svc.delete_user("u2")
    svc.enroll("u2", [signal_block(eeg(2, 3, 0, 40))])  # another person, same id
    assert svc.store.get_template("u2").version == 1
    secret = svc.register_device("u2", "hs-2")
    r = _auth(svc, "u2", secret, eeg(1, 3, 52, 8), "hs-2")  # the old person
    assert not r.accepted
    assert _auth(svc, "u2", secret, eeg(2, 3, 44, 8), "hs-2").accepted


def test_concurrent_authentications_run_one_at_a_time_on_sqlite(svc):
    """With the in-process store, unary authentications from many threads are
    serialised (no GIL ping-pong between them) and each still gets its own answer;
    an impostor's rejections all count towards the lockout."""
    import threading

    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("u1", "hs-1")
    assert svc.store.in_process and svc.authenticate_gate is not None
    inside, peak, lock = [0], [0], threading.Lock()
    orig = svc._authenticate

    def counted(*a, **k):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            time.sleep(0.005)  # widen the window a second caller would use
            return orig(*a, **k)
        finally:
            with lock:
                inside[0] -= 1

    svc._authenticate = counted
    results, errors = [], []
    probes = [eeg(2, 3, 8 * i, 8) for i in range(4)]  # another person's EEG: impostor

    def worker(i):
        try:
            results.append(_auth(svc, "u1", secret, probes[i % 4]))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]  # < lockout
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 4
    assert peak[0] == 1
    rejected = sum(not r.accepted for r in results)
    assert rejected >= 3
    assert svc.store.get_lockout("u1").failures == rejected


def test_networked_store_keeps_authentications_concurrent():
    from nacf_core.store.base import Store
    from nacf_core.store.postgres import PostgresStore

    assert Store.in_process is False and PostgresStore.in_process is False


def test_an_update_without_pad_drops_the_replaced_enrollment_s_fingerprints(svc):
    """Replacing a template on a server with presentation-attack detection off kept the
    old enrollment's PAD fingerprints (derived from the EEG of a template that no longer
    exists) as the user's enrollment history: with PAD back on, replays of the old
    recording counted as replays of the enrollment, and the data outlived its template.
    The update replaces them with none; the probe history stays, as with PAD on."""
    store = svc.store
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("u1", "hs-1")
    assert _auth(svc, "u1", secret, eeg(1, 3, 44, 8)).accepted
    kinds = [k for k, _ in store.get_fingerprints("u1")]
    assert kinds == ["enroll", "probe"]
    svc.pad = None  # presentation_attack_detection = false
    svc.enroll("u1", [signal_block(eeg(1, 3, 60, 40))], update=True)
    assert [k for k, _ in store.get_fingerprints("u1")] == ["probe"]


def _chunks(x, device="hs-1", n=80):
    return [signal_block(x[i:i + n], device) for i in range(0, x.shape[0], n)]


def test_a_refused_proof_is_audited_and_logged_under_the_method_that_carried_it(svc, caplog):
    """A refused device proof wrote its audit row with method 'device_proof' and its
    security_event line with no method at all, whichever RPC carried it: an operator
    could not tell a refused Authenticate from a refused AuthenticateStream (every other
    attempt row names its RPC)."""
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    svc.register_device("u1", "hs-1")
    bad = "0" * 64
    ts = str(int(time.time()))
    b = signal_block(eeg(1, 3, 44, 8), "hs-1")
    with caplog.at_level("WARNING", logger="nacf.service"):
        with pytest.raises(Unauthenticated):
            svc.authenticate("u1", b, DeviceProof("hs-1", ts, bad), peer="ipv4:127.0.0.1:5")
        with pytest.raises(Unauthenticated):
            svc.authenticate_stream("u1", iter(_chunks(eeg(1, 3, 52, 8))),
                                    DeviceProof("hs-1", ts, bad), peer="ipv4:127.0.0.1:6")
        # a later chunk from another headset: refused as the proof's device mismatch
        x = eeg(1, 3, 60, 8)
        parts = _chunks(x)
        parts[2] = signal_block(x[160:240], "hs-9")
        t = int(time.time())
        with pytest.raises(Unauthenticated, match="differs"):
            svc.authenticate_stream("u1", iter(parts), DeviceProof(
                "hs-1", str(t), device_proof(svc.register_device("u1", "hs-1", rotate=True),
                                             "u1", "hs-1", t, parts[0].raw)))
    rows = [(a.method, a.reason) for a in svc.store.recent_attempts("u1", 10)
            if a.reason.startswith("device_proof")]
    assert rows == [("AuthenticateStream", "device_proof_device_mismatch"),
                    ("AuthenticateStream", "device_proof_wrong"),
                    ("Authenticate", "device_proof_wrong")]
    lines = [(r.security_event_type, getattr(r, "method", None)) for r in caplog.records
             if getattr(r, "event_type", None) == "security_event"]
    assert lines == [("device_proof_wrong", "Authenticate"),
                     ("device_proof_wrong", "AuthenticateStream"),
                     ("device_proof_device_mismatch", "AuthenticateStream")]


@pytest.mark.parametrize("max_seconds,extra_s", [(20.0, 10.0), (8.0, 8.0)])
def test_a_stream_s_presentation_attack_check_sees_the_signal_its_decision_used(
        svc, caplog, max_seconds, extra_s):
    """AuthenticateStream ran presentation-attack detection over everything it had
    buffered, signal past the sequential decision included: a genuine user whose client
    sent the recording in one chunk, the headset taken off after the decision's windows
    (a flat tail), was rejected as a presentation attack (pad: periodic), counted towards
    the lockout and logged as a high-severity security event, for samples the decision
    never looked at. PAD now judges the windows the decision used."""
    svc.config.require_device_proof = False
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    x = eeg(1, 4, 0, max_seconds)
    flat = np.zeros((int(extra_s * 160), x.shape[1]), dtype=np.float32)
    b = signal_block(np.concatenate([x, flat]))
    with caplog.at_level("WARNING", logger="nacf.service"):
        r = svc.authenticate_stream("u1", iter([b]), max_seconds=max_seconds)
    assert (r.accepted, r.reasons[-1]) == (
        True, f"sequential test: accept after {int(max_seconds // 4)} window(s)"), r.reasons
    assert not [x for x in caplog.records if getattr(x, "event_type", "") == "security_event"]
    assert svc.store.get_lockout("u1").failures == 0
    # what the decision used is the probe PAD remembers: the same windows again, with
    # another tail, are a replay of it
    b2 = signal_block(np.concatenate([x, eeg(2, 4, 0, extra_s)]))
    r2 = svc.authenticate_stream("u1", iter([b2]), max_seconds=max_seconds)
    assert not r2.accepted and "pad: replay_of_probe" in r2.reasons


def test_a_replay_with_a_tail_past_its_window_is_still_a_replay(svc):
    """Authenticate decides on the probe's whole windows; samples past the last one (a
    tail shorter than a window) are in no window, so the quality gate never sees them,
    but presentation-attack detection analysed them: a replay of the enrollment
    recording with half a second more holding one absurd value (1e30 µV) had its
    envelope swamped and its periodicity NaN, and was accepted, a session opened. PAD
    now judges the windows the decision used."""
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("u1", "hs-1")
    replay = np.concatenate([eeg(1, 3, 12, 4), np.zeros((80, 16), np.float32)])
    replay[-10:-5] = 1e30
    r = _auth(svc, "u1", secret, replay)
    assert r.windows_used == 1
    assert not r.accepted and not r.session_token
    assert r.reasons[-1] == "pad: replay_of_enrollment", r.reasons


@pytest.mark.parametrize("field,value", [
    ("timestamp", "\u00b2"),                     # a superscript two: isdigit, no int
    ("timestamp", "fullwidth"),                  # fullwidth digits: int() took them
    ("device_id", "hs-1\t"),                     # a control character
    ("device_id", "h\u00e9adset"),               # no ASCII
])
def test_proof_values_grpc_metadata_cannot_carry_are_refused_as_malformed(svc, field, value):
    """The x-device-* values are what gRPC metadata carries, printable ASCII, and the
    timestamp ASCII digits. Through the domain API a timestamp of a superscript digit
    escaped as a ValueError (INVALID_ARGUMENT, neither audited nor counted), a timestamp
    of fullwidth digits was taken for the integer they spell (the proof verified, the
    call accepted), and a device id with a control character was the store's
    INVALID_ARGUMENT. Each is now a malformed proof: UNAUTHENTICATED, audited, counted."""
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("u1", "hs-1")
    b = signal_block(eeg(1, 3, 44, 8))
    t = int(time.time())
    dev, ts = "hs-1", str(t)
    if field == "timestamp":
        ts = "".join(chr(ord(c) + 0xFEE0) for c in ts) if value == "fullwidth" else value
    else:
        dev = value
    proof = DeviceProof(dev, ts, device_proof(secret, "u1", "hs-1", t, b.raw))
    key = "x-device-id" if field == "device_id" else "x-device-timestamp"
    with pytest.raises(Unauthenticated, match=key):
        svc.authenticate("u1", b, proof, peer="ipv4:127.0.0.1:5")
    row = svc.store.recent_attempts("u1", 1)[0]
    assert (row.success, row.reason) == (False, "device_proof_malformed")
    assert svc.metrics.registry.get_sample_value(
        "nacfauth_failed_auth_attempts_total", {"reason": "device_proof_malformed"}) == 1


def test_each_refused_proof_kind_has_its_message_its_reason_and_its_suspicion(svc):
    """Missing, malformed, stale, wrong, unknown device and replayed proofs are each
    UNAUTHENTICATED with a message of their own (a wrong secret and a headset bound to
    no one or another user alike), audited and counted in
    nacfauth_failed_auth_attempts_total under ``device_proof_<kind>``; each is a
    suspicious activity but a missing proof (a misconfigured client: README), and none
    counts towards the lockout."""
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("u1", "hs-1")
    svc.enroll("u2", [signal_block(eeg(2, 3, 0, 40))])
    other = svc.register_device("u2", "hs-2")
    b = signal_block(eeg(1, 3, 44, 8))
    t = int(time.time())

    def proof(dev="hs-1", ts=t, key=secret):
        return DeviceProof(dev, str(ts), device_proof(key, "u1", dev, ts, b.raw))

    good = proof()
    assert svc.authenticate("u1", b, good).accepted
    cases = {"missing": DeviceProof(None, None, None),
             "malformed": DeviceProof("hs-1", str(t), "0" * 63),
             "stale": proof(ts=t - 600),
             "wrong": proof(key="not-the-secret-0123"),
             "unknown_device": proof(dev="hs-2", key=other),
             "replayed": good}
    messages = {}
    for kind, p in cases.items():
        with pytest.raises(Unauthenticated) as ei:
            svc.authenticate("u1", b, p, peer="ipv4:127.0.0.1:5")
        messages[kind] = str(ei.value)
        row = svc.store.recent_attempts("u1", 1)[0]
        assert (row.success, row.reason) == (False, f"device_proof_{kind}")
    assert messages["wrong"] == messages["unknown_device"]
    assert len(set(messages.values())) == len(messages) - 1, messages
    reg = svc.metrics.registry
    for kind in cases:
        assert reg.get_sample_value("nacfauth_failed_auth_attempts_total",
                                    {"reason": f"device_proof_{kind}"}) == 1, kind
        sev = "high" if kind == "replayed" else "medium"
        assert reg.get_sample_value("nacfauth_suspicious_activities_total", {
            "activity_type": f"device_proof_{kind}", "severity": sev}) == (
            None if kind == "missing" else 1), kind
    assert svc.store.get_lockout("u1").failures == 0


def test_presentation_attack_and_lockout_security_events_name_the_caller(svc, caplog):
    """The security_event lines of a presentation attack on Authenticate or
    AuthenticateStream, of a non-physiological enrollment and of a lockout said which
    user but neither the caller's address nor the RPC (every other security event, a
    refused proof's, Identify's and ContinuousAuthenticate's, names both): the address
    of whoever replays a recording or drives a user into a lockout, what such an event
    is looked up for, was only in the separate auth_attempt line."""
    from nacf_core.errors import InvalidArgument

    svc.config.require_device_proof = False
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    b = signal_block(eeg(1, 3, 44, 8))
    assert svc.authenticate("u1", b, peer="ipv4:10.0.0.7:5").accepted
    with caplog.at_level("WARNING", logger="nacf.service"):
        assert not svc.authenticate("u1", b, peer="ipv4:10.0.0.7:5").accepted  # a replay
        assert not svc.authenticate_stream("u1", iter(_chunks(eeg(1, 3, 44, 8))),
                                           peer="ipv4:10.0.0.8:6").accepted
        svc.enroll("u2", [signal_block(eeg(1, 3, 0, 40))])
        svc.config.lockout_threshold = 1
        assert not svc.authenticate("u2", signal_block(eeg(2, 3, 40, 8)),
                                    peer="ipv4:10.0.0.9:7").accepted  # an impostor
        noise = np.random.default_rng(0).normal(0, 20, (40 * 160, 16)).astype(np.float32)
        with pytest.raises(InvalidArgument, match="does not look like EEG"):
            svc.enroll("u3", [signal_block(noise)], peer="ipv4:10.0.0.10:8")
    lines = [(r.security_event_type, getattr(r, "ip_address", None),
              getattr(r, "method", None)) for r in caplog.records
             if getattr(r, "event_type", None) == "security_event"]
    assert ("replay", "10.0.0.7", "Authenticate") in lines, lines
    assert ("replay", "10.0.0.8", "AuthenticateStream") in lines, lines
    assert ("lockout", "10.0.0.9", "Authenticate") in lines, lines
    assert [x for x in lines if x[1:] == ("10.0.0.10", "Enroll")], lines
    assert all(ip is not None and m is not None for _, ip, m in lines), lines


def test_the_auth_attempt_line_of_a_rejection_says_why(svc, caplog):
    """The auth_attempt line of an attempt refused before a decision says why
    (``reason``), and the audit row of every attempt does; the line of a decided
    rejection did not: a replay rejected with a score above the threshold was logged
    success false, confidence 0.83, and nothing else, and a search of the logs by reason
    found none of the presentation attacks, low-quality probes or impostors."""
    svc.config.require_device_proof = False
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    b = signal_block(eeg(1, 3, 44, 8))
    with caplog.at_level("INFO", logger="nacf.service"):
        assert svc.authenticate("u1", b).accepted
        assert not svc.authenticate("u1", b).accepted  # a replay
        assert not svc.authenticate("u1", signal_block(eeg(2, 3, 40, 8))).accepted
    lines = [(r.success, getattr(r, "reason", None)) for r in caplog.records
             if getattr(r, "event_type", "") == "auth_attempt"]
    assert lines == [(True, None), (False, "presentation_attack"),
                     (False, "score_below_threshold")], lines
    audit = [a.reason for a in svc.store.recent_attempts("u1", 10)]
    assert audit[:2] == ["score_below_threshold", "presentation_attack"]
