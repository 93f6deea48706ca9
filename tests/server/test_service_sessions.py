"""Sessions and streaming authentication in process: how a ContinuousAuthenticate stream
ends its session and what it tells the client, and what an AuthenticateStream decides on."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import psycopg
import pytest
from _server_support import CH16, SFREQ, eeg, make_pipeline, signal_block, sqlite_service
from prometheus_client import CollectorRegistry

from nacf_core.config import Config
from nacf_core.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from nacf_core.metrics import Metrics
from nacf_core.service import AuthService, ClientStream
from nacf_core.store import open_store

PG_DSN = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def svc(tmp_path, model_path):
    service = sqlite_service(tmp_path, model_path)
    yield service
    service.store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def svc_both(request, tmp_path, model_path):
    """An ``AuthService`` on each store backend (a fresh PostgreSQL schema, dropped after)."""
    if request.param == "sqlite":
        service = sqlite_service(tmp_path, model_path)
        yield service
        service.store.close()
        return
    schema = f"nacf_t_{uuid.uuid4().hex[:12]}"
    store = open_store(f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}",
                       bytes(range(32)))
    cfg = Config(data_dir=str(tmp_path), rate_limit_per_s=1000, rate_limit_burst=1000)
    try:
        yield AuthService(store, make_pipeline(model_path), cfg,
                          metrics=Metrics(CollectorRegistry()))
    finally:
        store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class _GoneSilent(ClientStream):
    """A client stream that sends ``blocks`` and then nothing: its connection died
    without a word (a Wi-Fi hand-over, a NAT timeout: no RST), so gRPC still holds the
    call active and the stream's read times out after signal_loss_s
    (``ClientStream.next`` raises ``TimeoutError``), here at once."""

    def __init__(self, blocks) -> None:  # no reader thread: the blocks are at hand
        self._blocks = list(blocks)

    def next(self, timeout):
        if self._blocks:
            return self._blocks.pop(0)
        raise TimeoutError(f"no message for {timeout:g} s")

    def close(self) -> None:
        pass


def _blocks(x, seconds=0.5, dev=""):
    n = int(seconds * SFREQ)
    return [signal_block(x[i:i + n], dev) for i in range(0, x.shape[0], n)]


def test_a_wearer_change_the_store_could_not_record_is_not_reported_ended(svc):
    """The wearer changes while the store fails (a PostgreSQL failover, a writer lock
    held too long): ending the session failed silently, and the stream still answered
    ENDED ``wearer_changed`` while the session stayed valid for ValidateSession, the
    new wearer's. The call now fails UNAVAILABLE (the session is not said ended), and
    the wearer change is still logged and counted."""
    svc.enroll("w1", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("w1", 600).token

    def failing_end(*a, **k):
        raise Unavailable("the store is unreachable (test)")

    svc.store.end_session = failing_end
    updates = []
    with pytest.raises(Unavailable):
        for u in svc.continuous(token, _blocks(eeg(1, 3, 44, 8)) + _blocks(eeg(5, 7, 0, 16))):
            updates.append(u)
    assert updates and updates[0].state == "verified"
    assert all(u.state != "ended" for u in updates), updates
    assert svc.validate_session(token).valid  # not ended: the client was not told it was
    reg = svc.metrics.registry
    assert reg.get_sample_value("nacfauth_suspicious_activities_total",
                                {"activity_type": "wearer_changed", "severity": "medium"}) == 1



@pytest.mark.parametrize("end", ["wearer_changed", "expired"])
def test_validate_session_says_when_an_ended_or_expired_session_was_last_verified(svc, end):
    """``last_verified_unix`` is when ContinuousAuthenticate last verified the wearer,
    else when the session opened (README): for a session no longer valid (ended,
    expired) ValidateSession answered the opening time even when the wearer had been
    verified since."""
    store = svc.store
    svc.enroll("v1", [signal_block(eeg(1, 3, 0, 40))])
    t0 = svc.clock()
    s = store.create_session("v1", 60, now=t0 - 100)
    store.renew_session(s.token, 30, now=t0 - 50)  # verified at t0 - 50, expires t0 - 20
    if end != "expired":
        store.end_session(s.token, end, now=t0 - 30)
    v = svc.validate_session(s.token)
    assert (v.valid, v.reason) == (False, end)
    assert v.last_verified == pytest.approx(t0 - 50, abs=1e-3), v


def test_every_window_of_a_large_chunk_is_verified(svc):
    """A client that sends its signal in chunks longer than a window (an app batching
    what the headset sent): only the last window of each chunk was scored, so most of
    the signal was never verified, a wearer change took ``continuous_mismatch_windows``
    chunks (not windows) to end the session, and a 12-s chunk gave one update, not
    one per window."""
    svc.enroll("L1", [signal_block(eeg(1, 3, 0, 40))])
    win = svc.rec.window_s
    token = svc.store.create_session("L1", 600).token
    genuine = eeg(1, 3, 44, 3 * win)
    updates = list(svc.continuous(token, [signal_block(genuine)]))
    assert [u.state for u in updates] == ["verified"] * 3, updates
    assert [u.seconds_streamed for u in updates] == [win, 2 * win, 3 * win]
    # the wearer changes within one chunk: ended after two windows of the other person
    token = svc.store.create_session("L1", 600).token
    both = np.concatenate([eeg(1, 3, 44, win), eeg(5, 7, 0, 3 * win)])
    updates = list(svc.continuous(token, [signal_block(both)]))
    assert [u.state for u in updates] == ["verified", "uncertain", "ended"], updates
    assert updates[-1].reason == "wearer_changed"


def test_a_stream_gone_silent_does_not_end_the_session_another_stream_verifies(svc_both):
    """A headset app whose connection dies silently reconnects and streams the same
    session on a new ContinuousAuthenticate, which verifies the wearer; the abandoned
    stream, which gRPC still holds, then goes signal_loss_s without data: it ended the
    session (signal_lost) under the new stream, whose next window said ENDED, though the
    wearer was being verified all along. The abandoned stream now ends alone
    (DEADLINE_EXCEEDED, as a stalled stream) and the session stays open; a session no
    other stream verified still ends when its stream's signal is lost."""
    svc = svc_both
    svc.enroll("re1", [signal_block(eeg(1, 3, 0, 40))])
    win = svc.rec.window_s
    token = svc.store.create_session("re1", 600).token
    old = svc.continuous(token, _GoneSilent(_blocks(eeg(1, 3, 44, win))))
    assert next(old).state == "verified"
    # the client reconnects: the new stream verifies the wearer, then goes on
    new = svc.continuous(token, _blocks(eeg(1, 3, 44 + win, 2 * win)))
    assert [next(new).state for _ in range(2)] == ["verified"] * 2
    with pytest.raises(DeadlineExceeded, match="another ContinuousAuthenticate stream"):
        next(old)  # signal_loss_s without data on the abandoned stream
    v = svc.validate_session(token)
    assert v.valid, v
    assert list(new) == []  # the new stream's client closes it; the session stays open
    assert svc.validate_session(token).valid
    # alone, a stream whose signal is lost ends its session, as before
    alone = list(svc.continuous(token, _GoneSilent(_blocks(eeg(1, 3, 44 + 3 * win, win)))))
    assert [(u.state, u.reason) for u in alone] == [("verified", ""), ("ended", "signal_lost")]
    v = svc.validate_session(token)
    assert (v.valid, v.reason) == (False, "signal_lost")


def test_continuous_security_events_and_session_end_name_the_caller(svc, caplog):
    """A wearer change, a headset change or a presentation attack on a ContinuousAuthenticate
    stream (a stolen session token streamed from elsewhere) is a security_event line, and
    the session's end a session_ended line: neither said where the stream came from (no
    ip_address, no peer; the wearer change not even the method or the session), though a
    refused device proof's line does, and the stream has no auth_attempt line that would."""
    svc.enroll("ip1", [signal_block(eeg(1, 3, 0, 40))])
    win = svc.rec.window_s
    peer = "ipv4:10.9.8.7:50123"
    s = svc.store.create_session("ip1", 600)
    cases = [
        ("wearer_changed", s.token, _blocks(eeg(1, 3, 44, win)) + _blocks(eeg(5, 7, 0, 2 * win))),
    ]
    s2 = svc.store.create_session("ip1", 600, device_id="hs-ip1")
    cases.append(("device_changed", s2.token, _blocks(eeg(1, 3, 44, win), dev="hs-other")))
    with caplog.at_level("INFO", logger="nacf.service"):
        for reason, token, chunks in cases:
            updates = list(svc.continuous(token, chunks, peer=peer))
            assert (updates[-1].state, updates[-1].reason) == ("ended", reason), updates
    events = {r.security_event_type: r for r in caplog.records
              if getattr(r, "event_type", "") == "security_event"}
    ended = {r.reason: r for r in caplog.records
             if getattr(r, "event_type", "") == "session_ended"}
    for (reason, token, _), sess in zip(cases, (s, s2)):
        for r in (events[reason], ended[reason]):
            assert (r.ip_address, r.peer) == ("10.9.8.7", peer), (reason, r.__dict__)
            assert (r.method, r.session_id) == ("ContinuousAuthenticate", sess.session_id)


@pytest.mark.parametrize("ended_by", ["EndSession", "EndUserSessions", "DeleteUser"])
def test_a_stream_ending_a_session_another_call_ended_gives_that_calls_reason(svc, ended_by):
    """The app ends the session (EndSession: the user logged out; an admin's
    EndUserSessions; DeleteUser) while the headset stream is open, and the stream then
    loses its signal: its ENDED update said ``signal_lost``, the stream's own reason,
    while ValidateSession said ``ended`` (the stream had ended nothing). The update now
    gives the reason the session ended with, as ValidateSession does."""
    svc.enroll("why1", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("why1", 600).token
    stream = svc.continuous(token, _GoneSilent(_blocks(eeg(1, 3, 44, svc.rec.window_s))))
    assert next(stream).state == "verified"
    if ended_by == "EndSession":
        svc.end_session(token)
    elif ended_by == "EndUserSessions":
        svc.end_user_sessions("why1")
    else:
        svc.delete_user("why1")
    (u,) = list(stream)  # signal_loss_s without data
    want = {"EndSession": "ended", "EndUserSessions": "ended_by_admin",
            "DeleteUser": "user_deleted"}[ended_by]
    assert (u.state, u.reason) == ("ended", want)
    v = svc.validate_session(token)
    assert (v.valid, v.reason) == (False, "unknown" if ended_by == "DeleteUser" else want)


@pytest.mark.parametrize("rate", [125.0, 250.0])
def test_a_streams_decision_is_authenticates_on_the_samples_it_used_however_chunked(
        tmp_path, model_path, rate):
    """A headset recording at another rate than the model's (a Cyton at 250 Hz, with the
    Daisy at 125 Hz, for a 160 Hz model) is resampled, and the resampling reads the whole
    block it is given (its edges, the line it fits end to end): AuthenticateStream cut its
    windows from everything buffered, the end of the last chunk included, so the same
    samples scored otherwise when the client cut them otherwise (-0.163471 in one chunk,
    -0.163457 in 4-s chunks) and otherwise than Authenticate on the samples the decision
    used. Each window is now cut from the signal up to its own end, as Authenticate on
    those samples cuts it: the answer depends on the samples alone."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    from nacf_core.pipeline import samples_for
    from nacf_core.service import SignalBlock

    svc = sqlite_service(tmp_path, model_path, require_device_proof=False,
                         lockout_threshold=1000)
    try:
        svc.enroll("c1", [signal_block(eeg(1, 3, 0, 40))])
        f = Fraction(rate / SFREQ).limit_denominator(1000)

        def block(x):
            x = np.ascontiguousarray(x, dtype="<f4")
            return SignalBlock(x, rate, tuple(CH16), "", x.tobytes())

        for wearer in (1, 5):  # the user, then an impostor
            x = resample_poly(eeg(wearer, 7, 0, 24).astype(np.float64), f.numerator,
                              f.denominator, axis=0).astype(np.float32)
            got = []
            for n in (len(x), int(rate // 2), 97, 333, samples_for(4.0, rate) + 1):
                r = svc.authenticate_stream("c1", [block(x[i:i + n])
                                                   for i in range(0, len(x), n)])
                got.append((r.accepted, r.score, r.windows_used, r.seconds_used))
                one = svc.authenticate("c1", block(x[:samples_for(r.seconds_used, rate)]))
                assert (one.accepted, one.windows_used) == (r.accepted, r.windows_used)
                assert one.score == pytest.approx(r.score, abs=1e-9), (wearer, n)
            assert all(g[0] == got[0][0] and g[2:] == got[0][2:] for g in got), got
            assert all(g[1] == pytest.approx(got[0][1], abs=1e-9) for g in got), got
    finally:
        svc.store.close()


def test_a_recording_replayed_on_a_new_stream_of_the_session_ends_it(tmp_path, model_path):
    """A stolen session token and 12 s of the wearer's recorded ContinuousAuthenticate
    signal: replayed on one stream, its second pass ends the session (``replay``), but
    replayed on a new stream each time (a client 'reconnecting') every pass was verified
    and renewed the session, for ever: the replay check knew only the current stream's
    own windows. A stream's windows are now checked against the windows of the session's
    earlier streams too (kept in the store)."""
    from nacf_core.pad import PresentationAttackDetector

    svc = sqlite_service(tmp_path, model_path)
    svc.pad = PresentationAttackDetector(list(svc.rec.model.ch_names))
    try:
        svc.enroll("rp1", [signal_block(eeg(1, 3, 0, 40))])
        win = svc.rec.window_s
        s = svc.store.create_session("rp1", 600)
        recorded = eeg(1, 7, 0, 3 * win)
        first = list(svc.continuous(s.token, _blocks(recorded)))
        assert [u.state for u in first] == ["verified"] * 3, first
        again = list(svc.continuous(s.token, _blocks(recorded)))  # a new stream, replayed
        assert (again[-1].state, again[-1].reason) == ("ended", "replay"), again
        v = svc.validate_session(s.token)
        assert (v.valid, v.reason) == (False, "replay")
        # a new stream of new signal on a session is verified, as before
        s2 = svc.store.create_session("rp1", 600)
        for start in (0, 3 * win):
            ups = list(svc.continuous(s2.token, _blocks(eeg(1, 7, 20 + start, 3 * win))))
            assert [u.state for u in ups] == ["verified"] * 3, (start, ups)
        assert len(svc.store.get_session_windows(s2.session_id, "rp1")) == 6
        svc.end_session(s2.token)
        # an ended session's windows stay for the user's later sessions (see
        # test_a_recorded_stream_replayed_on_a_new_session_ends_it)
        assert len(svc.store.get_session_windows(s.session_id, "rp1")) == 3
        assert len(svc.store.get_session_windows(s2.session_id, "rp1")) == 6
    finally:
        svc.store.close()


def test_a_recorded_stream_replayed_on_a_new_session_ends_it(tmp_path, model_path):
    """A recording of the wearer's ContinuousAuthenticate stream, replayed on a new
    session's stream (after a fresh Authenticate): a session's windows were checked
    only against that session's own, and dropped when it ended, so the recording
    passed presentation-attack detection on every new session. A window is now also
    checked against the user's windows of their other sessions (the newest 192 of the
    user, kept after a session ends), but for those streamed within the last minute: a
    headset feeding two apps' sessions at once is one live signal, not a replay."""
    from nacf_core.pad import PresentationAttackDetector

    svc = sqlite_service(tmp_path, model_path)
    svc.pad = PresentationAttackDetector(list(svc.rec.model.ch_names))
    try:
        svc.enroll("xs1", [signal_block(eeg(1, 3, 0, 40))])
        win = svc.rec.window_s
        t0 = svc.clock()
        svc.clock = lambda: t0
        recorded = eeg(1, 7, 0, 3 * win)
        first = svc.store.create_session("xs1", 600, now=t0)
        ups = list(svc.continuous(first.token, _blocks(recorded)))
        assert [u.state for u in ups] == ["verified"] * 3, ups
        # another app's session streaming the same headset at the same time
        twin = svc.store.create_session("xs1", 600, now=t0)
        ups = list(svc.continuous(twin.token, _blocks(recorded)))
        assert [u.state for u in ups] == ["verified"] * 3, ups
        svc.end_session(first.token)
        svc.end_session(twin.token)
        svc.clock = lambda: t0 + 120
        again = svc.store.create_session("xs1", 600, now=t0 + 120)
        ups = list(svc.continuous(again.token, _blocks(recorded)))
        assert (ups[-1].state, ups[-1].reason) == ("ended", "replay"), ups
        assert (svc.validate_session(again.token).reason) == "replay"
        # new signal on a new session is verified, as before
        fresh = svc.store.create_session("xs1", 600, now=t0 + 120)
        ups = list(svc.continuous(fresh.token, _blocks(eeg(1, 7, 20, 3 * win))))
        assert [u.state for u in ups] == ["verified"] * 3, ups
        # the user's windows go with the user
        svc.delete_user("xs1")
        assert svc.store._run(lambda tx: tx.query("SELECT COUNT(*) FROM session_windows"),
                              write=False)[0][0] == 0
    finally:
        svc.store.close()


def test_a_recording_looped_for_longer_than_the_recent_history_ends_the_session(
        tmp_path, model_path, monkeypatch):
    """A recording left playing in a loop on one stream: a loop longer than the
    session's window history (the last ``_STREAM_PAD_HISTORY`` windows, 64: 4.3 min)
    was never caught, every pass found only windows of the loop it no longer held, and
    kept the session verified for as long as it played. Beyond the newest windows, one
    window in every ``_STREAM_PAD_HISTORY`` of the session now stays for its life (a
    bounded number), so any longer loop meets one of them on its second pass. Here the
    history is cut to 4 windows and the loop is 6 windows long."""
    import nacf_core.service as service_mod
    from nacf_core.pad import PresentationAttackDetector

    monkeypatch.setattr(service_mod, "_STREAM_PAD_HISTORY", 4)
    svc = sqlite_service(tmp_path, model_path, continuous_mismatch_windows=1000)
    svc.pad = PresentationAttackDetector(list(svc.rec.model.ch_names))
    try:
        svc.enroll("lp1", [signal_block(eeg(1, 3, 0, 40))])
        win = svc.rec.window_s
        s = svc.store.create_session("lp1", 600)
        loop = eeg(1, 7, 0, 6 * win)
        updates = list(svc.continuous(s.token, _blocks(np.concatenate([loop] * 3))))
        assert all(u.state != "ended" for u in updates[:6]), updates
        assert (updates[-1].state, updates[-1].reason) == ("ended", "replay"), updates
        # caught on the loop's second pass, not later
        assert len(updates) <= 12, updates
        assert (svc.validate_session(s.token).valid, svc.validate_session(s.token).reason) \
            == (False, "replay")
    finally:
        svc.store.close()


def test_a_continuously_verified_session_ends_at_its_maximum_age(tmp_path, model_path):
    """Every window ContinuousAuthenticate verifies renewed the session to session_ttl_s
    from then, so a session kept verified never ended: NIST SP 800-63B rev. 3 §4.2.3
    asks for reauthentication at least every 12 hours regardless of activity. A renewal
    now stops at ``session_max_age_s`` from the session's opening, and the stream then
    ends it as expired."""
    svc = sqlite_service(tmp_path, model_path, session_ttl_s=600, session_max_age_s=900)
    try:
        svc.enroll("m1", [signal_block(eeg(1, 3, 0, 40))])
        t0 = svc.clock()
        svc.clock = lambda: t0
        s = svc.store.create_session("m1", 800, now=t0 - 700)  # opened 700 s ago
        updates = list(svc.continuous(s.token, _blocks(eeg(1, 3, 44, 8))))
        assert [u.state for u in updates] == ["verified", "verified"], updates
        assert all(u.session_expires_at == t0 + 200 for u in updates), updates
        svc.clock = lambda: t0 + 201
        with pytest.raises(FailedPrecondition, match="expired"):
            list(svc.continuous(s.token, _blocks(eeg(1, 3, 52, 8))))
        v = svc.validate_session(s.token)
        assert (v.valid, v.reason) == (False, "expired")
    finally:
        svc.store.close()


def test_maintenance_runs_after_the_wall_clock_steps_back(svc_both):
    """Session expiry and the audit purge ran once ``now`` minus their last run reached
    their interval: after the wall clock stepped back (an NTP correction, a VM restored
    from a snapshot) that was negative, and no session was expired, nor anything purged,
    until the clock caught up (an hour here). A run of later than ``now`` is due now."""
    svc = svc_both
    t0 = 1_790_000_000.0
    svc.clock = lambda: t0
    svc.store.put_template("u", b"not a template", "m")
    svc.maintenance(force=True)  # the last runs: at t0
    s = svc.store.create_session("u", 60, now=t0 - 3600)  # after the step back
    svc.store.record_attempt("u", True, 0.9, "ok", "p", 0.1, "Authenticate",
                             now=t0 - 3600 - svc.config.audit_retention_days * 86400.0 - 1)
    svc.clock = lambda: t0 - 3600 + 61  # the session expired a second ago
    svc.maintenance()
    assert svc.store.get_session(s.token).end_reason == "expired"
    assert svc.store.recent_attempts("u") == []  # past retention: purged
    svc.maintenance()  # and not again at once
    assert (svc._last_expire, svc._last_purge) == (t0 - 3600 + 61, t0 - 3600 + 61)


def test_maintenance_purges_the_rate_buckets_of_clients_gone_quiet(svc_both, caplog):
    """Every client id (every client address in open mode) left a token bucket in the
    store for ever: the table grew with each client ever seen. The retention purge now
    deletes the buckets idle long enough to be full again (the next request of that
    client recreates its bucket full: nothing changes for it), never one in use."""
    import logging

    svc = svc_both
    t0 = 1_790_000_000.0
    svc.clock = lambda: t0
    for i in range(5):
        svc.check_rate_limit(f"10.0.0.{i}")
    full_again = svc.config.rate_limit_burst / svc.config.rate_limit_per_s
    later = t0 + full_again + svc.store.rate_bucket_idle_s + 1
    svc.clock = lambda: later
    svc.check_rate_limit("10.0.0.9")  # a client in use
    with caplog.at_level(logging.INFO, logger="nacf"):
        svc.maintenance(force=True)
    rows = svc.store._run(lambda tx: tx.query("SELECT client_id FROM rate_buckets"))
    assert rows == [("10.0.0.9",)]
    line = [r for r in caplog.records if getattr(r, "event_type", "") == "maintenance"]
    assert line and line[0].rate_buckets_purged == 5
    svc.check_rate_limit("10.0.0.1")  # back, and admitted


def _gate_watch(svc, held: dict[str, list[bool]]):
    """``watch(obj, name)``: wrap ``obj.name`` so that each call records in ``held[name]``
    whether ``svc``'s CPU gate was held."""
    def watch(obj, name):
        fn = getattr(obj, name)

        def wrapped(*a, **k):
            held.setdefault(name, []).append(svc._cpu_gate.locked())
            return fn(*a, **k)
        setattr(obj, name, wrapped)
    return watch


def test_a_streams_windows_are_computed_under_the_cpu_gate_and_its_store_calls_outside(
        tmp_path, model_path):
    """An Authenticate's CPU-bound work (windows, decision, PAD) runs one thread at a
    time per process (``_cpu_gate``), its store I/O concurrently; a ContinuousAuthenticate
    window took the gate for PAD alone, so its windows and decision (most of its CPU)
    ran beside every unary call's, and many streams slowed them all (each hand-over of
    the GIL between the threads can cost a switch interval). Every CPU step of a window
    now takes the gate, and no store call runs under it."""
    from nacf_core.pad import PresentationAttackDetector

    svc = sqlite_service(tmp_path, model_path)
    svc.pad = PresentationAttackDetector(list(svc.rec.model.ch_names))
    held: dict[str, list[bool]] = {}
    watch = _gate_watch(svc, held)

    try:
        svc.enroll("g1", [signal_block(eeg(1, 3, 0, 40))])
        token = svc.store.create_session("g1", 600).token
        for name in ("windows", "decide"):
            watch(svc.rec, name)
        watch(svc.pad, "check")
        for name in ("get_session", "get_session_windows", "add_session_window",
                     "renew_session"):
            watch(svc.store, name)
        updates = list(svc.continuous(token, _blocks(eeg(1, 3, 44, 3 * svc.rec.window_s))))
        assert [u.state for u in updates] == ["verified"] * 3, updates
        assert {k: v for k, v in held.items() if k in ("windows", "decide", "check")} == {
            "windows": [True] * 3, "decide": [True] * 3, "check": [True] * 3}, held
        for name in ("get_session", "get_session_windows", "add_session_window",
                     "renew_session"):
            assert held[name] and not any(held[name]), (name, held)
    finally:
        svc.store.close()


def test_authenticate_stream_and_identify_compute_under_the_cpu_gate_and_store_calls_outside(
        tmp_path, model_path):
    """Authenticate's and ContinuousAuthenticate's CPU-bound steps run under ``_cpu_gate``
    (one thread at a time per process), but AuthenticateStream computed its windows and
    its sequential decisions beside them, and Identify its windows and its top-k, so
    streams and 1:N calls slowed every other call's CPU steps (the GIL handed back and
    forth between the threads). Their CPU steps now take the gate too, and no store call
    runs under it."""
    svc = sqlite_service(tmp_path, model_path, require_device_proof=False)
    held: dict[str, list[bool]] = {}
    watch = _gate_watch(svc, held)

    try:
        svc.enroll("g1", [signal_block(eeg(1, 3, 0, 40))])
        for name in ("windows", "decide", "push_windows"):
            watch(svc.rec, name)
        for name in ("get_auth_state", "read_gallery", "locked_user_ids"):
            watch(svc.store, name)
        r = svc.authenticate_stream("g1", _blocks(eeg(1, 3, 44, 12)))
        assert r.windows_used >= 1, r.reasons
        # a stream at the model's rate computes each window once, as its samples come
        assert held["push_windows"] and all(held["push_windows"]), held
        svc.identify(signal_block(eeg(1, 3, 60, 8)))
        assert held["windows"] and all(held["windows"]), held
        assert held["decide"] and all(held["decide"]), held
        for name in ("get_auth_state", "read_gallery", "locked_user_ids"):
            assert held[name] and not any(held[name]), (name, held)
    finally:
        svc.store.close()


class _JumpingClock:
    """A stand-in for nacf_core.service's ``time`` whose monotonic and perf_counter
    clocks run ``offset`` seconds ahead (a test makes the server's work on a window
    seem to take that long)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __getattr__(self, name):
        return getattr(time, name)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def perf_counter(self) -> float:
        return time.perf_counter() + self.offset


def test_a_window_the_server_was_slow_on_does_not_count_against_the_clients_signal(
        svc, monkeypatch):
    """A stream that got no whole window within a window's time and signal_loss_s more
    ends (signal_lost); that time ran from when the last window was complete, so it took
    in the server's own work on that window (the CPU gate shared with every other call,
    the store): a server that took 15 s on one window (under load) ended a healthy stream
    whose next chunks were already waiting. Only the wait for the client counts now (a
    clock that jumps 15 s while the server scores the first window)."""
    import nacf_core.service as service_mod

    clock = _JumpingClock()
    monkeypatch.setattr(service_mod, "time", clock)
    svc.enroll("slow", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("slow", 600).token
    windows = svc.rec.windows

    def slow_windows(*a, **k):  # the server's work on a window takes 15 s
        clock.offset += 15.0
        return windows(*a, **k)

    monkeypatch.setattr(svc.rec, "windows", slow_windows)
    assert svc.config.signal_loss_s + svc.rec.window_s < 15.0
    x = eeg(1, 3, 44, 12)
    updates = list(svc.continuous(token, (signal_block(x[i:i + 80])
                                          for i in range(0, x.shape[0], 80))))
    assert [u.state for u in updates] == ["verified"] * 3, updates


def test_an_authenticate_stream_the_server_was_slow_on_is_not_refused_as_trickling(
        tmp_path, model_path, monkeypatch):
    """AuthenticateStream refuses a stream that took longer than stream_max_seconds and
    signal_loss_s more of wall time (one trickling its signal held a worker thread): that
    time took in the server's own work on the windows (the CPU gate shared with every
    call), so a server slow on one window (under load) refused a headset streaming in
    real time (DeadlineExceeded). Only the rest counts now (a clock that jumps 31 s while
    the server scores the first window, as a gate held by other calls would)."""
    import nacf_core.service as service_mod

    clock = _JumpingClock()
    monkeypatch.setattr(service_mod, "time", clock)
    svc = sqlite_service(tmp_path, model_path, require_device_proof=False)
    svc.enroll("slow", [signal_block(eeg(1, 3, 0, 40))])
    # (at the model's rate a stream's windows are computed piece by piece: push_windows)
    windows = svc.rec.push_windows
    calls = []

    def slow_windows(*a, **k):  # the server's work on the first window takes 31 s
        if not calls:
            clock.offset += 31.0
        calls.append(1)
        return windows(*a, **k)

    monkeypatch.setattr(svc.rec, "push_windows", slow_windows)
    assert svc.config.stream_max_seconds + svc.config.signal_loss_s < 31.0
    x = eeg(1, 3, 44, 12)
    try:
        r = svc.authenticate_stream("slow", [signal_block(x[i:i + 80])
                                             for i in range(0, x.shape[0], 80)])
    finally:
        svc.store.close()
    assert len(calls) > 1 and r.accepted, (len(calls), r)


def test_maintenance_ends_a_session_past_session_max_age_lowered_since_it_opened(tmp_path,
                                                                               model_path):
    """session_max_age_s is the longest a session lasts from its opening (README). One
    opened or renewed under a larger maximum age (a configuration lowered since, a replica
    still on the old one) stayed valid past the new one, as long as its expiry was within
    session_ttl_s: the maintenance round only cut what was beyond the TTL. It now also cuts
    an open session at its opening + session_max_age_s, so one older than that is
    expired; a younger one keeps its expiry."""
    svc = sqlite_service(tmp_path, model_path, session_ttl_s=900, session_max_age_s=3600)
    try:
        svc.enroll("m1", [signal_block(eeg(1, 3, 0, 40))])
        t = svc.clock()
        store = svc.store
        old = store.create_session("m1", 3000, now=t - 3000)      # ends t
        store.renew_session(old.token, 900, now=t - 200)           # renewed: ends t + 700
        older = store.create_session("m1", 4000, now=t - 3700)     # ends t + 300
        young = store.create_session("m1", 900, now=t - 100)       # ends t + 800
        svc.maintenance(force=True)
        ended = store.get_session(older.token)  # ended by the same round, at its max age
        assert ended.end_reason == "expired"
        assert ended.ended_at == pytest.approx(t - 100, abs=1e-3)
        assert store.get_session(old.token).expires_at == pytest.approx(t + 600, abs=1e-3)
        v = svc.validate_session(older.token)
        assert (v.valid, v.reason) == (False, "expired")
        assert v.expires_at == pytest.approx(t - 100, abs=1e-3)
        assert store.get_session(young.token).expires_at == pytest.approx(t + 800, abs=1e-3)
        assert svc.validate_session(old.token).valid
    finally:
        svc.store.close()


@pytest.mark.parametrize("lost", ["railed", "no_samples"])
def test_a_headset_taken_off_ends_the_session_signal_lost(svc, lost):
    """The wearer takes the headset off mid-stream: every electrode of a Cyton rails
    (±187 500 µV), or a reader marks every sample of a window dropped. The window's
    signal on every model channel is then unusable, and the pipeline refused it whole
    (``InvalidArgument``, "railed on every model channel for its whole length"): the
    stream failed INVALID_ARGUMENT and the session stayed valid for whoever wore the
    headset next. Such a window is now one without a usable signal: UNCERTAIN saying
    why, and after ``signal_loss_s`` of them the session ends ``signal_lost``."""
    svc.enroll("off1", [signal_block(eeg(1, 3, 0, 40))])
    win = svc.rec.window_s
    token = svc.store.create_session("off1", 600).token
    n = int(4 * win * SFREQ)
    off = (np.full((n, len(CH16)), 187_500.0, np.float32) if lost == "railed"
           else np.full((n, len(CH16)), np.nan, np.float32))
    chunks = _blocks(eeg(1, 3, 44, win)) + [
        # (the converter refuses NaN on the wire; the service may be given it in process)
        signal_block(off[i:i + int(SFREQ)]) for i in range(0, n, int(SFREQ))]
    updates = list(svc.continuous(token, chunks))
    n_lost = int(np.ceil(svc.config.signal_loss_s / win))
    assert [u.state for u in updates] == \
        ["verified"] + ["uncertain"] * (n_lost - 1) + ["ended"], updates
    assert updates[-1].reason == "signal_lost"
    word = "railed" if lost == "railed" else "NaN"
    assert all(word in u.reason for u in updates[1:-1]), updates
    v = svc.validate_session(token)
    assert (v.valid, v.reason) == (False, "signal_lost")


@pytest.mark.parametrize("rate", [SFREQ, 250.0])
def test_a_stream_whose_first_window_is_railed_is_decided_on_the_rest(tmp_path, model_path,
                                                                      rate):
    """The user starts AuthenticateStream and only then puts the headset on: its first
    window is railed on every channel (a Cyton's electrodes off the head). The stream
    failed INVALID_ARGUMENT ("railed on every model channel for its whole length") at
    that first window, while Authenticate on the same samples rejects that window and
    decides on the rest. The railed window is now a window the gate rejects, as
    Authenticate's is; a stream railed from end to end is refused as Authenticate
    refuses that signal."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    from nacf_core.errors import InvalidArgument
    from nacf_core.pipeline import samples_for
    from nacf_core.service import SignalBlock

    svc = sqlite_service(tmp_path, model_path, require_device_proof=False,
                         lockout_threshold=1000)
    try:
        svc.enroll("rf1", [signal_block(eeg(1, 3, 0, 40))])
        f = Fraction(rate / SFREQ).limit_denominator(1000)
        x = resample_poly(eeg(1, 7, 0, 16).astype(np.float64), f.numerator, f.denominator,
                          axis=0).astype(np.float32)
        off = np.full((samples_for(4.0, rate), len(CH16)), 187_500.0, np.float32)
        x = np.concatenate([off, x])

        def block(x):
            x = np.ascontiguousarray(x, dtype="<f4")
            return SignalBlock(x, rate, tuple(CH16), "", x.tobytes())

        n = int(rate // 2)
        r = svc.authenticate_stream("rf1", [block(x[i:i + n]) for i in range(0, len(x), n)])
        # the windows the decision read: those the gate passed (seconds_used) and those
        # it rejected (the railed one, and one the step off the rail rings through)
        n_rejected = sum(int(why.split(" window(s): ")[0]) for why in r.reasons
                         if " window(s): " in why)
        used = r.seconds_used + 4.0 * n_rejected
        one = svc.authenticate("rf1", block(x[:samples_for(used, rate)]))
        assert r.accepted and r.windows_used >= 1, r
        assert (one.accepted, one.windows_used) == (r.accepted, r.windows_used)
        assert one.score == pytest.approx(r.score, abs=1e-9)
        assert any("railed" in why for why in r.reasons), r.reasons
        off = np.full((samples_for(12.0, rate), len(CH16)), 187_500.0, np.float32)
        with pytest.raises(InvalidArgument, match="railed") as unary:
            svc.authenticate("rf1", block(off))
        with pytest.raises(InvalidArgument, match="railed") as stream:
            svc.authenticate_stream("rf1", [block(off[i:i + n])
                                            for i in range(0, len(off), n)])
        assert str(stream.value) == str(unary.value)
    finally:
        svc.store.close()


def test_maintenance_with_a_retention_of_thousands_of_years_purges_and_expires(tmp_path,
                                                                            model_path):
    """audit_retention_days takes up to 1e9 (an operator's "keep the audit for ever"),
    but a cut-off before year 1 was refused by the store: every purge failed
    ('maintenance failed'), before the rate-limit buckets were purged (the table grew
    with every client ever seen) and before that run's session expiry. Such a
    retention purges no audit row and no ended session; the rest goes on."""
    svc = sqlite_service(tmp_path, model_path, audit_retention_days=1e9)
    try:
        t0 = 1_790_000_000.0
        svc.clock = lambda: t0
        svc.store.put_template("u", b"not a template", "m")
        svc.store.record_attempt("u", True, 0.9, "ok", "p", 0.1, "Authenticate", now=1.0)
        s = svc.store.create_session("u", 60, now=t0 - 120)
        svc.check_rate_limit("10.0.0.1")
        svc.clock = lambda: t0 + 3600
        svc.maintenance(force=True)
        assert svc.store.get_session(s.token).end_reason == "expired"
        assert len(svc.store.recent_attempts("u")) == 1
        assert svc.store._run(lambda tx: tx.query("SELECT client_id FROM rate_buckets")) == []
    finally:
        svc.store.close()
