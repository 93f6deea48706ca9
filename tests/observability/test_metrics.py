"""nacf_core.metrics: names, types, labels, buckets, the success-rate window, DAU."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry

from nacf_core import metrics as m
from nacf_core.metrics import Metrics

# METRICS.md's table: name -> (type, labels)
CONTRACT = {
    "nacfauth_auth_requests_total": ("counter", {"method", "status", "user_type"}),
    "nacfauth_auth_duration_seconds": ("histogram", {"method", "status"}),
    "nacfauth_auth_success_rate": ("gauge", {"method"}),
    "nacfauth_signal_processing_duration_seconds": ("histogram", {"signal_type", "quality"}),
    "nacfauth_signal_quality_score": ("histogram", {"signal_type"}),
    "nacfauth_model_accuracy": ("gauge", {"model_version"}),
    "nacfauth_active_sessions": ("gauge", set()),
    "nacfauth_session_duration_seconds": ("histogram", set()),
    "nacfauth_failed_auth_attempts_total": ("counter", {"reason"}),
    "nacfauth_suspicious_activities_total": ("counter", {"activity_type", "severity"}),
    "nacfauth_user_registrations_total": ("counter", {"registration_method", "status"}),
    "nacfauth_daily_active_users": ("gauge", set()),
    # beyond the guide
    "nacfauth_auth_decisions_total": ("counter", {"decision"}),
    "nacfauth_kernel_duration_seconds": ("histogram", {"kernel", "backend"}),
    "nacfauth_artifact_rejections_total": ("counter", {"reason"}),
    "nacfauth_device_packets_total": ("counter", {"status"}),
    "nacfauth_lockouts_total": ("counter", set()),
    "nacfauth_store_errors_total": ("counter", {"operation"}),
    "nacfauth_build_info": ("gauge", {"version", "kernel_backend", "model_version"}),
}


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def exercise(mt: Metrics) -> None:
    """Touch every metric once so every labelled family has a sample."""
    mt.observe_rpc("Authenticate", "OK", 0.0042, "api_key")
    mt.observe_rpc("Authenticate", "UNAUTHENTICATED", 0.0011, "anonymous")
    mt.record_decision(True)
    mt.record_decision(False)
    mt.observe_signal("authenticate", 0.003, 0.93)
    mt.observe_signal("enroll", 0.004, 0.41)
    mt.set_model_accuracy("demo-1", 0.97)
    mt.set_active_sessions(3)
    mt.observe_session_duration(5400.0)
    mt.record_failed_auth("score_below_threshold")
    mt.record_suspicious("device_proof_replayed", "high")
    mt.record_registration("Enroll", "OK")
    mt.track_active_user("alice")
    mt.observe_kernel("sosfilt", "cython", 0.0002)
    mt.record_artifact_rejections(["flat", "railed", ""])
    mt.record_device_packets(ok=100, dropped=2, corrupt=1)
    mt.record_lockout()
    mt.record_store_error("get_template")
    mt.set_component_health("store", True, 0.0008)
    mt.set_build_info("0.1.0", "cython", "demo-1")


def samples(reg: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in reg.collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_names_types_labels_match_the_contract():
    reg = CollectorRegistry()
    mt = Metrics(reg)
    exercise(mt)
    fams = {f.name: f for f in reg.collect()}
    for name, (typ, labels) in CONTRACT.items():
        base = name[: -len("_total")] if typ == "counter" else name
        assert base in fams, f"{name} not exported"
        fam = fams[base]
        assert fam.type == typ, (name, fam.type)
        main = [s for s in fam.samples if s.name in (name, name + "_count", base + "_total")]
        assert main, name
        for s in main:
            got = set(s.labels) - {"le"}
            assert got == labels, (name, got)
    # no user id or IP address label anywhere
    for fam in reg.collect():
        for s in fam.samples:
            assert not {"user_id", "ip_address", "ip", "peer"} & set(s.labels), s


def test_buckets_keep_the_guide_and_resolve_milliseconds():
    for b in (0.1, 0.5, 1.0, 2.5, 5.0, 10.0):
        assert b in m.LATENCY_BUCKETS
    assert min(m.LATENCY_BUCKETS) <= 0.0005
    assert sum(1 for b in m.LATENCY_BUCKETS if b <= 0.05) >= 8
    for b in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0):
        assert b in m.SIGNAL_PROCESSING_BUCKETS
    guide = tuple(h * 3600.0 for h in (1, 2, 4, 8, 12, 24, 48, 168))
    assert m.SESSION_BUCKETS[-len(guide):] == guide  # the guide's, after finer ones
    assert m.SESSION_BUCKETS[0] <= 60 and 900.0 in m.SESSION_BUCKETS  # the default TTL
    assert list(m.SESSION_BUCKETS) == sorted(set(m.SESSION_BUCKETS))
    assert m.QUALITY_BUCKETS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    reg = CollectorRegistry()
    mt = Metrics(reg)
    mt.observe_rpc("Authenticate", "OK", 0.0042)
    s = samples(reg)
    le = lambda v: ("nacfauth_auth_duration_seconds_bucket",  # noqa: E731
                    (("le", v), ("method", "Authenticate"), ("status", "OK")))
    assert s[le("0.003")] == 0 and s[le("0.005")] == 1 and s[le("+Inf")] == 1


def test_success_rate_window_slides():
    clock = FakeClock()
    reg = CollectorRegistry()
    mt = Metrics(reg, success_window_s=300, clock=clock)
    key = ("nacfauth_auth_success_rate", (("method", "Authenticate"),))
    assert key not in samples(reg)  # no call yet: no sample, not a fake 0 or 1
    for _ in range(3):
        mt.observe_rpc("Authenticate", "OK", 0.01)
    mt.observe_rpc("Authenticate", "INTERNAL", 0.01)
    assert samples(reg)[key] == pytest.approx(0.75)
    clock.t += 200
    mt.observe_rpc("Authenticate", "OK", 0.01)
    assert samples(reg)[key] == pytest.approx(0.8)
    clock.t += 101  # the first four calls leave the window
    assert samples(reg)[key] == pytest.approx(1.0)
    clock.t += 200  # everything left
    assert key not in samples(reg)
    mt.observe_rpc("Authenticate", "NOT_FOUND", 0.01)
    assert samples(reg)[key] == 0.0
    # per method
    mt.observe_rpc("Enroll", "OK", 0.01)
    assert samples(reg)[("nacfauth_auth_success_rate", (("method", "Enroll"),))] == 1.0


def test_daily_active_users_tracker_and_source():
    reg = CollectorRegistry()
    mt = Metrics(reg)
    key = ("nacfauth_daily_active_users", ())
    assert samples(reg)[key] == 0
    for u in ("alice", "bob", "alice"):
        mt.track_active_user(u)
    assert samples(reg)[key] == 2
    mt.use_daily_active_users_from(lambda: 42)
    assert samples(reg)[key] == 42

    def broken():
        raise ConnectionError("store down")

    mt.use_daily_active_users_from(broken)
    assert samples(reg)[key] == 2  # falls back to the tracker, and counts the error
    assert samples(reg)[("nacfauth_store_errors_total",
                         (("operation", "daily_active_users"),))] == 1


def test_a_slow_daily_active_users_source_does_not_hold_the_scrape():
    """The store's count is read when the cached one is older than the TTL: on the scrape's
    own thread, without a bound, by every scrape that came meanwhile. A store that hung
    (a lock held on the audit table: 24 s measured) held /metrics past Prometheus's
    scrape timeout, so up went 0 and NACFServiceDown paged while NACFDatabaseDown, whose
    series were in the failed scrapes, could not fire. Now one read at a time, in the
    background; a scrape waits for it at most a second, then exports the last value."""
    import threading

    reg = CollectorRegistry()
    mt = Metrics(reg)
    key = ("nacfauth_daily_active_users", ())
    calls = []
    release = threading.Event()
    value = [42]

    def source():
        calls.append(1)
        if len(calls) == 2:
            release.wait(30)  # the store hangs on the second read
        return value[0]

    mt.use_daily_active_users_from(source, ttl_s=0.01)
    assert samples(reg)[key] == 42
    threading.Event().wait(0.05)  # the cached count is older than the TTL
    time_out = threading.Event()

    def scrapes():
        for _ in range(3):
            assert samples(reg)[key] == 42  # the last value while the read hangs
        time_out.set()

    t = threading.Thread(target=scrapes, daemon=True)
    t.start()
    t.join(15)
    assert time_out.is_set(), "the scrape waited for the hung store"
    assert len(calls) == 2  # one read at a time
    value[0] = 43
    release.set()
    for _ in range(200):  # the hung read returns 42, the next one reads 43
        if samples(reg)[key] == 43:
            break
        threading.Event().wait(0.05)
    assert samples(reg)[key] == 43


def test_daily_active_users_rolls_over_at_midnight_utc():
    now = [dt.datetime(2026, 1, 1, 23, 59, tzinfo=dt.timezone.utc)]
    dau = m.DailyActiveUsers(now=lambda: now[0])
    dau.add("alice")
    dau.add("bob")
    assert dau.count() == 2
    now[0] += dt.timedelta(minutes=2)
    assert dau.count() == 0
    dau.add("alice")
    assert dau.count() == 1


def test_bad_label_values_are_refused_or_bounded():
    mt = Metrics(CollectorRegistry(), max_label_values=3)
    with pytest.raises(ValueError, match="status_name"):
        mt.observe_rpc("Authenticate", "200", 0.1)
    with pytest.raises(ValueError, match="user_type"):
        mt.observe_rpc("Authenticate", "OK", 0.1, user_type="alice")
    with pytest.raises(ValueError, match="severity"):
        mt.record_suspicious("x", "apocalyptic")
    with pytest.raises(ValueError, match="seconds"):
        mt.observe_rpc("Authenticate", "OK", -1)
    with pytest.raises(ValueError, match="quality_score"):
        mt.observe_signal("authenticate", 0.1, 1.5)
    with pytest.raises(TypeError, match="reason"):
        mt.record_failed_auth(None)
    for i in range(10):
        mt.record_failed_auth(f"reason{i}")
    reasons = {s.labels["reason"] for f in mt.registry.collect()
               if f.name == "nacfauth_failed_auth_attempts" for s in f.samples
               if s.name.endswith("_total")}
    assert reasons == {"reason0", "reason1", "reason2", "other"}


def test_build_info_is_one_series():
    reg = CollectorRegistry()
    mt = Metrics(reg)
    mt.set_build_info("0.1.0", "cython", "a")
    mt.set_build_info("0.1.0", "numba", "b")
    infos = [k for k in samples(reg) if k[0] == "nacfauth_build_info"]
    assert infos == [("nacfauth_build_info", (("kernel_backend", "numba"),
                                              ("model_version", "b"), ("version", "0.1.0")))]


def test_quality_bucket():
    assert m.quality_bucket(0.95) == "good"
    assert m.quality_bucket(0.6) == "fair"
    assert m.quality_bucket(0.1) == "poor"
    assert m.quality_bucket(float("nan")) == "poor"


def test_time_kernel_observes():
    reg = CollectorRegistry()
    mt = Metrics(reg)
    with mt.time_kernel("cosine_scores", "numba"):
        sum(range(1000))
    s = samples(reg)
    assert s[("nacfauth_kernel_duration_seconds_count",
              (("backend", "numba"), ("kernel", "cosine_scores")))] == 1


def test_promtool_check_metrics_passes_on_the_exposition(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed (apt-get install prometheus)"
    reg = CollectorRegistry()
    mt = Metrics(reg)
    exercise(mt)
    out = subprocess.run([promtool, "check", "metrics"], input=mt.exposition(),
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    # and on the process-wide default registry (python_* and process_* collectors too)
    exercise(m.METRICS)
    out = subprocess.run([promtool, "check", "metrics"], input=m.METRICS.exposition(),
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_two_instances_on_one_registry_collide():
    reg = CollectorRegistry()
    Metrics(reg)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(reg)


def test_model_accuracy_from_the_shipped_models_calibration():
    from nacf_core.model import default_model

    model = default_model(16)
    reg = CollectorRegistry()
    mt = Metrics(reg)
    acc = mt.set_model_accuracy_from(model.version, model.info["calibration"])
    cal = model.info["calibration"][min(model.info["calibration"], key=int)]
    assert acc == pytest.approx(1 - (cal["fmr"] + cal["fnmr"]) / 2)
    assert 0.5 < acc <= 1.0
    assert samples(reg)[("nacfauth_model_accuracy",
                         (("model_version", model.version),))] == pytest.approx(acc)
    with pytest.raises(ValueError, match="'n_windows'"):
        mt.set_model_accuracy_from(model.version, model.info["calibration"], n_windows=99)
    with pytest.raises(ValueError, match="'calibration'"):
        mt.set_model_accuracy_from(model.version, {})
    with pytest.raises(ValueError, match="fnmr"):
        mt.set_model_accuracy_from(model.version, {"1": {"fmr": 0.1}})


def test_instrumented_kernels_time_each_call_and_return_the_same():
    import numpy as np

    from nacf_core import kernels

    ref = kernels.backend("reference")
    reg = CollectorRegistry()
    mt = Metrics(reg)
    k = m.InstrumentedKernels(ref, "reference", mt)
    rng = np.random.default_rng(0)
    probe = rng.standard_normal((2, 8)).astype(np.float32)
    templates = rng.standard_normal((5, 8)).astype(np.float32)
    got = k.cosine_scores(probe, templates)
    np.testing.assert_array_equal(got, ref.cosine_scores(probe, templates))
    k.cosine_scores(probe, templates)
    s = samples(reg)
    count = ("nacfauth_kernel_duration_seconds_count",
             (("backend", "reference"), ("kernel", "cosine_scores")))
    assert s[count] == 2
    assert s[("nacfauth_kernel_duration_seconds_sum",
              (("backend", "reference"), ("kernel", "cosine_scores")))] > 0
    assert k.cosine_scores.__wrapped__ is ref.cosine_scores
    # an exception is still timed, and propagates
    with pytest.raises(Exception):
        k.cosine_scores(probe, templates[:, :3])
    assert samples(reg)[count] == 3
    with pytest.raises(AttributeError):
        k.no_such_kernel
    with pytest.raises(TypeError, match="'backend'"):
        m.InstrumentedKernels(ref, "", mt)


def test_device_counters_become_deltas():
    from nacf_core.hardware.base import Counters

    reg = CollectorRegistry()
    mt = Metrics(reg)
    c = Counters(ok=100, corrupt=2, dropped=5)
    mt.observe_device_counters("/dev/ttyUSB0", c)
    c.ok, c.corrupt = 250, 3
    mt.observe_device_counters("/dev/ttyUSB0", c)
    mt.observe_device_counters("/dev/ttyUSB0", {"ok": 10})  # reopened: starts over
    s = samples(reg)
    got = {st: s[("nacfauth_device_packets_total", (("status", st),))]
           for st in ("ok", "corrupt", "dropped")}
    assert got == {"ok": 260, "corrupt": 3, "dropped": 5}
    with pytest.raises(TypeError, match="'source'"):
        mt.observe_device_counters("", c)


def test_a_new_reader_of_the_same_source_is_counted_in_full():
    """nacf demo streams each probe file twice (the wearer's genuine attempt, then an
    impostor's), each time with a new reader whose counters start at 0, under the same
    source name: the second reader's packets were counted as a delta from the first
    reader's total, so when it read as many or more, only the difference was counted
    (here 20 of 120). A new Counters object is a new reader; the one it replaces is
    forgotten when it goes."""
    import gc

    from nacf_core.hardware.base import Counters

    reg = CollectorRegistry()
    mt = Metrics(reg)
    first = Counters(ok=100, dropped=1)
    mt.observe_device_counters("demo:S001R04", first)
    second = Counters(ok=120, dropped=1)
    mt.observe_device_counters("demo:S001R04", second)
    second.ok = 130  # the same reader again: its delta
    mt.observe_device_counters("demo:S001R04", second)
    s = samples(reg)
    got = {st: s.get(("nacfauth_device_packets_total", (("status", st),)))
           for st in ("ok", "dropped")}
    assert got == {"ok": 230, "dropped": 2}
    n = len(mt._device_objs)
    del first, second
    gc.collect()
    assert len(mt._device_objs) == n - 2  # nothing kept for readers that are gone
