"""What the domain service records in the metrics when sessions end, in process."""

from __future__ import annotations

import numpy as np
import pytest
from _server_support import make_pipeline
from prometheus_client import CollectorRegistry

from nacf_core.config import Config
from nacf_core.metrics import Metrics
from nacf_core.service import AuthService
from nacf_core.store import open_store

T0 = 1_800_000_000.0


@pytest.fixture
def svc(tmp_path, model_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    now = [T0]
    service = AuthService(store, make_pipeline(model_path), Config(data_dir=str(tmp_path)),
                          metrics=Metrics(CollectorRegistry()), clock=lambda: now[0])
    service.now = now
    yield service
    store.close()


def _durations(svc) -> tuple[float, float]:
    reg = svc.metrics.registry
    return (reg.get_sample_value("nacfauth_session_duration_seconds_count") or 0.0,
            reg.get_sample_value("nacfauth_session_duration_seconds_sum") or 0.0)


def test_sessions_ended_by_deleting_their_user_are_observed(svc):
    """DeleteUser ends the user's open sessions (their rows go with the user): each is
    observed in nacfauth_session_duration_seconds like a session ended any other way (one
    expired but not yet swept, at its expiry), and the active-sessions gauge drops; a
    session already ended is not observed again."""
    store = svc.store
    store.put_template("del-u", b"not-a-real-template", "m-1", now=T0)
    store.put_template("other", b"not-a-real-template", "m-1", now=T0)
    store.create_session("del-u", 900.0, now=T0)
    store.create_session("del-u", 900.0, now=T0 + 100)
    ended = store.create_session("del-u", 900.0, now=T0 + 100)
    store.end_session(ended.token, now=T0 + 150)
    store.create_session("del-u", 60.0, now=T0)  # expired at T0 + 60, not swept
    store.create_session("other", 900.0, now=T0)
    svc.now[0] = T0 + 300
    svc.refresh_gauges()
    assert svc.metrics.registry.get_sample_value("nacfauth_active_sessions") == 3.0
    n0, s0 = _durations(svc)
    svc.delete_user("del-u")
    n1, s1 = _durations(svc)
    assert n1 - n0 == 3
    assert s1 - s0 == pytest.approx(300.0 + 200.0 + 60.0)
    assert svc.metrics.registry.get_sample_value("nacfauth_active_sessions") == 1.0


def test_identify_times_its_top_k_kernel(svc):
    """The 1:N search is the kernel that grows with the enrolled users: Identify observes
    it in nacfauth_kernel_duration_seconds{kernel="top_k", backend} (the Overview's
    "Kernel p95" panel), once per call, like the pipeline's own kernels."""
    from _server_support import eeg, signal_block

    svc.enroll("id-a", [signal_block(eeg(1, 3, 0, 40))])
    svc.enroll("id-b", [signal_block(eeg(2, 3, 0, 40))])
    labels = {"kernel": "top_k", "backend": svc.rec.pipeline.backend}
    reg = svc.metrics.registry
    before = reg.get_sample_value("nacfauth_kernel_duration_seconds_count", labels) or 0.0
    r = svc.identify(signal_block(eeg(1, 3, 44, 8)), top_k=2)
    assert r.candidates and r.candidates[0][0] == "id-a"
    assert reg.get_sample_value("nacfauth_kernel_duration_seconds_count", labels) == before + 1
    assert reg.get_sample_value("nacfauth_kernel_duration_seconds_sum", labels) > 0


def test_the_identify_line_has_the_guides_fields(svc, caplog):
    """Identify's JSON line carries the guide's fields as an auth_attempt line does:
    success (a match), confidence, duration_ms, the caller's address and the method."""
    from _server_support import eeg, signal_block

    svc.enroll("id-a", [signal_block(eeg(1, 3, 0, 40))])
    with caplog.at_level("INFO", logger="nacf.service"):
        svc.identify(signal_block(eeg(1, 3, 44, 8)), top_k=1, peer="ipv4:127.0.0.1:5000")
        svc.identify(signal_block(eeg(2, 3, 44, 8)), top_k=1, peer="ipv4:127.0.0.1:5000")
    lines = [r for r in caplog.records if getattr(r, "event_type", "") == "identify"]
    assert [(r.success, r.match) for r in lines] == [(True, "id-a"), (False, None)]
    for r in lines:
        assert r.method == "Identify" and r.ip_address == "127.0.0.1"
        assert isinstance(r.duration_ms, float) and r.duration_ms > 0
        assert isinstance(r.confidence, float)


def test_the_identify_line_names_the_user_it_identified_as_user_id(svc, caplog):
    """The guide's log lines name their user in ``user_id`` (METRICS.md: JSON lines with
    the guide's fields), which is what an operator searches for everything about one
    person; Identify's line named the user it identified only as ``match``, so a search
    by user_id never found the identifications of that user. It now carries user_id too
    (the match, null when it matched no one)."""
    from _server_support import eeg, signal_block

    svc.enroll("id-a", [signal_block(eeg(1, 3, 0, 40))])
    with caplog.at_level("INFO", logger="nacf.service"):
        svc.identify(signal_block(eeg(1, 3, 44, 8)), top_k=1)
        svc.identify(signal_block(eeg(2, 3, 44, 8)), top_k=1)
    lines = [r for r in caplog.records if getattr(r, "event_type", "") == "identify"]
    assert [(r.user_id, r.match) for r in lines] == [("id-a", "id-a"), (None, None)]


def test_an_identify_refused_for_quality_is_logged_too(svc, caplog):
    """Identify logs every call it scores or refuses: one whose windows all fail the
    quality gate (FAILED_PRECONDITION) has its identify line, success false, with the
    reason, the caller's address and the duration."""
    from _server_support import signal_block

    from nacf_core.errors import FailedPrecondition

    with caplog.at_level("INFO", logger="nacf.service"):
        with pytest.raises(FailedPrecondition):
            svc.identify(signal_block(np.zeros((640, 16))), peer="ipv4:127.0.0.1:5000")
    (r,) = [r for r in caplog.records if getattr(r, "event_type", "") == "identify"]
    assert (r.success, r.reason, r.ip_address, r.method) == (
        False, "poor_quality", "127.0.0.1", "Identify")
    assert r.duration_ms > 0 and r.match is None


def test_every_identify_refused_is_logged_with_its_status(svc, caplog):
    """Identify says every call is logged, and a call refused for poor quality was; one
    refused for its top_k, for a signal that lacks the model's channels, or because the
    store failed left no identify line (nor any other: the interceptor logs no access
    line), so an operator reading the logs saw nothing of them. Each has its identify
    line, success false, the refusal's status as its reason, the caller and the
    duration."""
    from _server_support import CH16, eeg, signal_block

    from nacf_core.errors import InvalidArgument, Unavailable
    from nacf_core.service import SignalBlock

    svc.enroll("id-a", [signal_block(eeg(1, 3, 0, 40))])
    probe = signal_block(eeg(1, 3, 44, 8))
    x = np.ascontiguousarray(eeg(1, 3, 44, 8)[:, :8])
    half = SignalBlock(x, 160.0, tuple(CH16[:8]), "", x.tobytes())

    def outage(*a, **k):
        raise Unavailable("the template store failed during read_gallery: OperationalError")

    peer = "ipv4:127.0.0.1:5000"
    with caplog.at_level("INFO", logger="nacf.service"):
        with pytest.raises(InvalidArgument, match="top_k"):
            svc.identify(probe, top_k=-1, peer=peer)
        with pytest.raises(InvalidArgument, match="lacks 8 of the 16 channels"):
            svc.identify(half, top_k=1, peer=peer)
        svc.store.read_gallery = outage
        with pytest.raises(Unavailable):
            svc.identify(probe, top_k=1, peer=peer)
    lines = [r for r in caplog.records if getattr(r, "event_type", "") == "identify"]
    assert [(r.success, r.reason) for r in lines] == [
        (False, "invalid_argument"), (False, "invalid_argument"), (False, "unavailable")]
    for r in lines:
        assert (r.method, r.ip_address, r.match, r.quality) == (
            "Identify", "127.0.0.1", None, None)
        assert r.duration_ms >= 0


def test_a_store_outage_is_counted_in_store_errors(tmp_path, model_path):
    """The store translates its driver's failures (a writer lock held too long, a
    PostgreSQL server gone, a query timeout) into Unavailable; the service counted only
    untranslated exceptions, so nacfauth_store_errors_total (and NACFStoreErrors) stayed
    at 0 through a real outage. Each store call that fails is counted once, by operation."""
    import sqlite3

    from nacf_core.errors import Unavailable
    from nacf_core.store.sqlite import SQLiteStore

    path = tmp_path / "locked.db"
    store = SQLiteStore(path, bytes(range(32)), busy_timeout_s=0.1)
    svc = AuthService(store, make_pipeline(model_path), Config(data_dir=str(tmp_path)),
                      metrics=Metrics(CollectorRegistry()))
    store.put_template("held", b"not-a-real-template", "m-1")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer (the sqlite3 shell, a backup)
        with pytest.raises(Unavailable, match="locked"):
            svc.delete_user("held")
    finally:
        other.execute("ROLLBACK")
        other.close()
    reg = svc.metrics.registry
    assert reg.get_sample_value("nacfauth_store_errors_total",
                                {"operation": "delete_user"}) == 1.0
    store.close()
