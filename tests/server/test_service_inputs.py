"""The recognition path as the service exposes it, fed inputs from outside that are
wrong or unusual: rates that are not whole numbers, limits below one window, templates
of another model, streams whose chunks change."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from _server_support import CH16, SFREQ, eeg, make_pipeline
from prometheus_client import CollectorRegistry
from scipy.signal import resample

from nacf_core.config import Config
from nacf_core.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from nacf_core.metrics import Metrics
from nacf_core.pipeline import Template, samples_for
from nacf_core.service import AuthService, DeviceProof, SignalBlock, device_proof
from nacf_core.store import open_store


@pytest.fixture
def svc(tmp_path, model_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    cfg = Config(data_dir=str(tmp_path), require_device_proof=False, rate_limit_per_s=1000,
                 rate_limit_burst=1000)
    service = AuthService(store, make_pipeline(model_path), cfg,
                          metrics=Metrics(CollectorRegistry()))
    yield service
    store.close()


@pytest.fixture
def pad_svc(svc):
    """``svc`` with presentation-attack detection on (the server's default)."""
    from nacf_core.pad import PresentationAttackDetector

    svc.pad = PresentationAttackDetector(list(svc.rec.model.ch_names))
    return svc


def block(x: np.ndarray, sfreq: float = SFREQ, ch_names=CH16, device_id: str = ""):
    x = np.ascontiguousarray(x, dtype="<f4")
    return SignalBlock(x, float(sfreq), tuple(ch_names), device_id, x.tobytes())


def at_rate(x: np.ndarray, sfreq: float) -> np.ndarray:
    """``x`` (at ``SFREQ``) resampled to ``sfreq``."""
    return resample(x, int(round(len(x) * sfreq / SFREQ)), axis=0).astype(np.float32)


def chunked(x: np.ndarray, sfreq: float, n: int, **kw):
    return [block(x[i:i + n], sfreq, **kw) for i in range(0, len(x), n)]


@pytest.mark.parametrize("sfreq", [250.1, 333.333])
def test_continuous_windows_at_a_rate_that_is_not_a_whole_number(svc, sfreq):
    """ContinuousAuthenticate cut its 4-s window as round(4 * sfreq) samples, one fewer
    than the pipeline's ceil(4 * sfreq) whenever the fraction is under one half (250.1 Hz:
    1000 of 1001): every window was 'too short' and the stream failed INVALID_ARGUMENT."""
    svc.enroll("c1", [block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("c1", 600).token
    x = at_rate(eeg(1, 3, 60, 12), sfreq)
    ups = list(svc.continuous(token, iter(chunked(x, sfreq, int(sfreq / 2)))))
    # a window is scored once 4 s have come: in half-second chunks, every 4.5 s
    assert [u.state for u in ups] == ["verified"] * 2, ups


@pytest.mark.parametrize("max_seconds", [1.0, 3.99])
def test_stream_max_seconds_below_one_window_is_refused(svc, max_seconds):
    """AuthenticateStream's max_seconds is the most signal the sequential test may
    consume; below one 4-s window the stream read and scored 4 s anyway and answered OK,
    past the bound the caller set. It is refused naming the window, before any chunk."""
    svc.enroll("m1", [block(eeg(1, 3, 0, 40))])
    read = []

    def chunks():
        for c in chunked(eeg(1, 3, 60, 12), SFREQ, 40):
            read.append(c)
            yield c

    with pytest.raises(InvalidArgument, match=r"'max_seconds'.*4-s window"):
        svc.authenticate_stream("m1", chunks(), max_seconds=max_seconds)
    assert read == []
    r = svc.authenticate_stream("m1", chunks(), max_seconds=4.0)
    assert r.windows_used == 1 and r.seconds_used == 4.0


def test_stream_max_seconds_default_below_one_window_is_named(svc):
    """The same bound set by the server (stream_max_seconds below a window) is the
    operator's to fix, and said so: no stream could be decided within it."""
    svc.enroll("m2", [block(eeg(1, 3, 0, 40))])
    short = AuthService(svc.store, svc.rec.pipeline,
                        Config(data_dir=svc.config.data_dir, require_device_proof=False,
                               stream_max_seconds=2.0), metrics=svc.metrics)
    with pytest.raises(FailedPrecondition, match="stream_max_seconds"):
        short.authenticate_stream("m2", iter(chunked(eeg(1, 3, 60, 12), SFREQ, 40)))


def test_a_template_of_another_model_is_failed_precondition_before_any_signal(svc):
    """A user enrolled under another model (the server was upgraded) cannot be compared:
    Authenticate, AuthenticateStream and ContinuousAuthenticate answered INVALID_ARGUMENT,
    the request's fault, though the request was fine; a stream only after a whole window
    had come. It is FAILED_PRECONDITION saying to re-enroll, before a chunk is read."""
    svc.enroll("old", [block(eeg(1, 3, 0, 40))])
    t = Template.from_bytes(svc.store.get_template("old").blob)
    t.model_version = "eegmmidb-16ch-00000000"
    svc.store.put_template("old", t.to_bytes(), t.model_version, {})
    probe = eeg(1, 3, 60, 8)
    with pytest.raises(FailedPrecondition, match="re-enroll"):
        svc.authenticate("old", block(probe))
    read = []

    def chunks():
        for c in chunked(probe, SFREQ, 80):
            read.append(c)
            yield c

    with pytest.raises(FailedPrecondition, match="re-enroll"):
        svc.authenticate_stream("old", chunks())
    token = svc.store.create_session("old", 600).token
    with pytest.raises(FailedPrecondition, match="re-enroll"):
        list(svc.continuous(token, chunks()))
    assert read == []
    assert svc.store.get_lockout("old").failures == 0
    svc.enroll("old", [block(eeg(1, 3, 0, 40))], update=True)  # what the message says
    assert svc.authenticate("old", block(probe)).accepted


@pytest.mark.parametrize("change, said", [
    (dict(ch_names=CH16[1::-1] + CH16[2:]), "channel 0 was 'Fp1.' in the first, 'Fp2.'"),
    (dict(ch_names=["EEG Fp1"] + CH16[1:]), "channel 0 was 'Fp1.' in the first, 'EEG Fp1'"),
    (dict(sfreq=160.0001), "at 160.0 Hz, this one at 160.0001 Hz"),
])
def test_a_chunk_that_changes_mid_stream_is_refused_naming_the_change(svc, change, said):
    """A chunk whose channels were reordered or renamed (or whose rate moved by less than
    ':g' prints) was refused with 'the first (160 Hz, 16 channels); got 160 Hz, 16
    channels': the same words twice, nothing saying what changed."""
    svc.enroll("ch", [block(eeg(1, 3, 0, 40))])
    x = eeg(1, 3, 60, 8)
    kw = {"sfreq": SFREQ, "ch_names": CH16, **change}
    chunks = [block(x[:300]), block(x[300:], kw["sfreq"], kw["ch_names"])]
    with pytest.raises(InvalidArgument, match="sample rate and channels of the first") as e:
        svc.authenticate_stream("ch", iter(chunks))
    assert said in str(e.value)


@pytest.mark.parametrize("bad, said", [
    (lambda x: block(x[:100]), "too short"),
    (lambda x: block(x[:, :8], ch_names=CH16[:8]), "lacks 8 of the 16 channels"),
    (lambda x: block(x, 100.0), "outside the supported range"),
])
def test_enroll_names_the_signal_that_is_refused(svc, bad, said):
    """An enrollment of several signals with one too short, missing channels or at a rate
    out of range was refused with the pipeline's message alone ('the signal is too
    short: 0.625 s'), not saying which of the signals: the caller had to guess."""
    x = eeg(1, 3, 0, 30)
    with pytest.raises(InvalidArgument, match=said) as e:
        svc.enroll("e1", [block(x), block(x), bad(x)])
    assert str(e.value).startswith("signals[2]: ")
    with pytest.raises(NotFound):
        svc.get_user("e1")


def test_a_stream_chunk_from_another_headset_is_refused(svc):
    """AuthenticateStream checked the first chunk's device_id against the proof's
    x-device-id ('differs' is UNAUTHENTICATED) but not the later chunks': a stream could
    switch headsets after its first chunk and still be decided and open a session."""
    svc.enroll("hs", [block(eeg(1, 3, 0, 40))])
    secret = svc.register_device("hs", "hs-a")
    x = eeg(1, 3, 60, 8)
    chunks = chunked(x, SFREQ, 160, device_id="hs-a")
    chunks[3] = block(x[480:640], device_id="hs-b")
    ts = int(time.time())
    proof = DeviceProof("hs-a", str(ts), device_proof(secret, "hs", "hs-a", ts,
                                                      chunks[0].raw_bytes()))
    with pytest.raises(Unauthenticated, match="'hs-b' differs from x-device-id 'hs-a'"):
        svc.authenticate_stream("hs", iter(chunks), proof)
    assert svc.store.count_active_sessions() == 0
    # without a proof the headset is the first chunk's
    unproved = chunked(x, SFREQ, 160, device_id="hs-c")
    unproved[2] = block(x[320:480], device_id="hs-d")
    with pytest.raises(InvalidArgument, match="'hs-d' differs from the first chunk's"):
        svc.authenticate_stream("hs", iter(unproved))
    # chunks that name no headset after one that does are the same stream
    unnamed = chunked(x, SFREQ, 160, device_id="")
    unnamed[0] = block(x[:160], device_id="hs-c")
    assert svc.authenticate_stream("hs", iter(unnamed)).accepted


def test_enroll_cuts_and_embeds_each_signal_once(svc):
    """Enroll cut, filtered and embedded every signal twice: once for the rejected
    windows it reports (and PAD), then again inside the pipeline's enroll to build the
    template, doubling the CPU of every enrollment (the longest calls the server takes).
    Each signal is now processed once, and the template is the same."""
    blocks = [block(eeg(1, 3, 0, 30)), block(at_rate(eeg(1, 3, 30, 30), 250.0), 250.0)]
    calls = []
    windows = svc.rec.pipeline.windows

    def counted(*a, **k):
        calls.append(a[1])
        return windows(*a, **k)

    svc.rec.pipeline.windows = counted
    try:
        r = svc.enroll("once", blocks)
    finally:
        del svc.rec.pipeline.windows
    assert calls == [SFREQ, 250.0]
    stored = Template.from_bytes(svc.store.get_template("once").blob)
    fresh = svc.rec.pipeline.enroll([(b.samples, b.sfreq, list(b.ch_names)) for b in blocks])
    assert np.array_equal(stored.embedding, fresh.embedding)
    assert (r.epochs_used, stored.n_rejected, stored.rejected) == (
        fresh.n_epochs, fresh.n_rejected, fresh.rejected)
    assert r.quality == pytest.approx(fresh.quality)


@pytest.mark.parametrize("token", ["garbage!", "dTE", "_w==", "AA=="])
def test_list_users_garbage_token_is_said_once(svc, token):
    """A page token the store did not issue was answered "'page_token' is not valid:
    'page_token' is not a token this store issued: ..." (the store's message wrapped in
    the service's, saying the same thing twice)."""
    with pytest.raises(InvalidArgument) as e:
        svc.list_users(10, token)
    assert str(e.value).count("page_token") == 1, str(e.value)
    assert "not a token this store issued" in str(e.value)


def test_an_enrollment_refused_for_quality_is_observed_in_the_quality_histogram(svc):
    """Enroll observed nacfauth_signal_quality_score and the processing time only once a
    template was made: an enrollment refused for too few good windows (the signals an
    operator most needs to see there) left no trace, while its rejected windows were
    counted and Identify's refusals observed."""
    def count(name):
        return svc.metrics.registry.get_sample_value(name, {"signal_type": "enroll"}) or 0.0

    x = eeg(1, 3, 0, 40).copy()
    x[:, :3] = 0.0  # three flat channels: every window rejected
    with pytest.raises(FailedPrecondition, match="enrollment needs at least"):
        svc.enroll("poor", [block(x)])
    assert count("nacfauth_signal_quality_score_count") == 1
    poor = count("nacfauth_signal_quality_score_sum")  # the flat channels count as 0
    assert 0.0 < poor < 13 / 16
    svc.enroll("good", [block(eeg(1, 3, 0, 40))])
    assert count("nacfauth_signal_quality_score_count") == 2
    assert count("nacfauth_signal_quality_score_sum") - poor > poor


def test_an_artifact_in_enrollment_and_probe_is_not_a_replay(pad_svc):
    """The replay search compared every piece of the probe, those in windows the quality
    gate had rejected too: a genuine user who moved (or whose reference electrode popped)
    once while enrolling and once in a probe was refused as a 'replay_of_enrollment',
    a high-severity presentation attack counted towards the lockout, because the two
    artifacts ruled both band-power envelopes. Rejected windows are now left out of the
    search; a real replay with an artifact added is still one."""
    svc = pad_svc

    def pop(x, at, value=187_500.0, n=6):  # every channel at the Cyton's rail, 40 ms
        x = x.copy()
        x[at:at + n] = value
        return x

    def step(x, at):  # every channel 300 µV off for 1.25 s
        return pop(x, at, 300.0, 200)

    for i, art in enumerate((pop, step)):
        user = f"pad{i}"
        svc.enroll(user, [block(art(eeg(1, 3, 0, 40), 3000))])
        r = svc.authenticate(user, block(art(eeg(1, 3, 60, 12), 700)))
        assert r.windows_used == 2, r.reasons  # the window with the artifact is rejected
        assert r.accepted, r.reasons
    x = eeg(2, 3, 0, 40)
    svc.enroll("victim", [block(x)])
    r = svc.authenticate("victim", block(pop(x[1000:2920], 700)))
    assert not r.accepted and r.reasons[-1] == "pad: replay_of_enrollment", r.reasons


@pytest.mark.parametrize("second, said", [
    (lambda x: block(x), "signals[1] repeats signals[0]"),
    (lambda x: block(x[320:]), "signals[1] repeats signals[0]"),
    (lambda x: block(x[:, ::-1], ch_names=CH16[::-1]), "signals[1] repeats signals[0]"),
])
def test_enroll_refuses_a_signal_that_repeats_another(svc, second, said):
    """The quality gate (at least min_enroll_epochs good windows) counted the windows of
    every Signal of the request, so 10 s of EEG sent five times, refused alone for too
    few windows (4 of 10), was enrolled with epochs_used 20: a template from a fifth of
    the signal the gate asks for, and a response counting each window five times. A
    Signal whose samples repeat a whole window of an earlier one (the same recording,
    a piece of it, its channels in another order) is now INVALID_ARGUMENT, nothing
    written."""
    x = eeg(1, 3, 0, 10)
    with pytest.raises(FailedPrecondition, match="got 4 of 4"):
        svc.enroll("dup", [block(x)])
    with pytest.raises(InvalidArgument, match=re.escape(said)):
        svc.enroll("dup", [block(x), second(x), block(x), block(x), block(x)])
    with pytest.raises(NotFound):
        svc.get_user("dup")
    # distinct recordings, and pieces of one recording that overlap by less than a
    # window, are enrolled as before
    y = eeg(1, 3, 0, 40)
    r = svc.enroll("ok", [block(y[:3200]), block(y[3200 - 320:]), block(eeg(1, 4, 0, 20))])
    assert r.epochs_used == 9 + 10 + 9


@pytest.mark.parametrize("copy, how", [
    (lambda x: x * np.float32(1.5), "rescaled"),
    (lambda x: x + np.float32(25.0), "offset"),
    (lambda x: x + np.random.default_rng(0).normal(0, 0.05 * x.std(), x.shape), "noise"),
    (lambda x: x[160:], "a piece, not on a window boundary, rescaled"),
])
@pytest.mark.parametrize("pad", [True, False], ids=["pad_on", "pad_off"])
def test_enroll_refuses_a_signal_that_repeats_another_rescaled_or_noisy(
        request, svc, pad, copy, how):
    """The repeat check compared samples byte for byte, so the same 10 s sent five times
    with a gain of 1.5, 25 µV added or 5 % noise (what any client can do in one line) got
    past it: the quality gate counted each window five times and enrolled a template from
    a fifth of the signal it asks for. A Signal whose PAD fingerprint matches an earlier
    one's as a replay would (similarity at least the replay threshold: genuine
    consecutive 20-s pieces of one recording reach 0.80, such copies 0.99) is
    INVALID_ARGUMENT too, nothing written; with presentation-attack detection off as
    well (it was checked only with PAD on, while the quality gate is the same), and then
    no fingerprint is kept."""
    if pad:
        svc = request.getfixturevalue("pad_svc")
    x = eeg(1, 3, 0, 10)
    second = copy(x)
    if how.startswith("a piece"):
        second = second * np.float32(0.5)
    with pytest.raises(InvalidArgument, match=re.escape("signals[1] repeats signals[0]")):
        svc.enroll("dup", [block(x), block(second), block(x * 1.1), block(x * 0.9),
                           block(x * 1.2)])
    with pytest.raises(NotFound):
        svc.get_user("dup")
    # consecutive pieces of one recording and another run are enrolled as before
    y = eeg(1, 3, 0, 60)
    r = svc.enroll("ok", [block(y[i * 3200:(i + 1) * 3200]) for i in range(3)]
                   + [block(eeg(1, 4, 0, 20))])
    assert r.epochs_used > 0
    assert bool(svc.store.get_fingerprints("ok")) == pad


@pytest.mark.parametrize("pad", [True, False], ids=["pad_on", "pad_off"])
def test_a_signal_without_a_good_window_is_not_refused_as_a_repeat(request, svc, pad):
    """PAD's search for a Signal repeating another compared whole signals, those of which
    the quality gate accepted no window too: a good recording sent with an unusable one
    was refused as 'signals[1] repeats signals[0]: their signals look like one
    recording' when the unusable one's rejected windows (a dead channel, artifacts)
    happened to look alike (20-s pieces of two distinct OpenBCI Cyton recordings, the
    2016-07-27 one, no window accepted, and EyesOpen: similarity 0.915, threshold 0.9;
    here a copy with a dead channel). Only signals
    with an accepted window count towards the quality gate, so only they are compared
    now: such an enrollment goes on with the good recording, the other's windows
    reported rejected."""
    if pad:
        svc = request.getfixturevalue("pad_svc")
    x = eeg(1, 3, 0, 40)
    dead = x * np.float32(1.5)
    dead[:, 0] = 0.0  # a dead electrode: every window rejected
    r = svc.enroll("dead", [block(x), block(dead)])
    assert r.epochs_used > 10
    assert {e.signal_index for e in r.rejected} == {1}


@pytest.mark.parametrize("signal", [
    lambda x: np.concatenate([x] * 5),
    lambda x: np.concatenate([eeg(2, 3, 0, 3), x, x, x, x[:900]]),  # a unique start
    lambda x: np.concatenate([x[:163]] * 40),  # a 1-s loop, not on the window grid
])
def test_enroll_refuses_a_signal_that_repeats_itself(svc, signal):
    """The repeat check compared each Signal with the earlier ones only, so 10 s of EEG
    looped five times in one Signal (refused alone: 4 of 4 windows, 10 needed) was
    enrolled with epochs_used 24, each window counted five or six times, a template
    from a fifth of the signal the gate asks for. A Signal in which a window of its
    samples comes again is now INVALID_ARGUMENT, nothing written; genuine signals are
    enrolled as before. (Enroll's non-physiological check, which runs first, finds these
    loops periodic too: either refusal will do, and the repeat check alone is asked.)"""
    from nacf_core.service import _refuse_repeated_signals

    x = eeg(1, 3, 0, 10)
    blocks = [block(eeg(3, 3, 0, 20)), block(signal(x))]
    with pytest.raises(InvalidArgument, match=re.escape("signals[1] repeats itself")):
        _refuse_repeated_signals(blocks, svc.rec.model.ch_names, svc.rec.window_s)
    with pytest.raises(InvalidArgument,
                       match=re.escape("signals[1] ") + "(repeats itself|does not look)"):
        svc.enroll("loop", blocks)
    with pytest.raises(NotFound):
        svc.get_user("loop")
    y = eeg(1, 3, 0, 60).copy()
    y[1000:1900] = np.nan  # the headset dropped out twice: not a repeat
    y[5000:5900] = np.nan
    r = svc.enroll("ok", [block(y)])
    assert r.epochs_used > 10 and r.rejected


NOT_EEG = pytest.mark.parametrize("signal, why", [
    (lambda x: np.random.default_rng(0).normal(0, 20, x.shape), "flat_spectrum"),
    (lambda x: 50 * np.sin(2 * np.pi * 10 * np.arange(len(x))[:, None] / SFREQ
                           + np.arange(x.shape[1])), "periodic"),
    (lambda x: np.concatenate([x[:800] * (1 + k / 10) for k in range(8)]), "periodic"),
])


def _refuses_signal_that_is_not_eeg(svc, signal, why: str) -> None:
    """``signal`` (of 40 s of EEG) as an enrollment's second Signal is refused naming
    ``why``, nothing written, counted as non-physiological; a genuine one passes."""
    x = eeg(1, 3, 0, 40)
    with pytest.raises(InvalidArgument, match=re.escape("signals[1]") + ".*" + why):
        svc.enroll("fake", [block(eeg(2, 3, 0, 20)), block(signal(x))])
    with pytest.raises(NotFound):
        svc.get_user("fake")
    assert svc.metrics.registry.get_sample_value(
        "nacfauth_suspicious_activities_total",
        {"activity_type": "non_physiological", "severity": "high"}) == 1
    r = svc.enroll("ok", [block(x), block(eeg(1, 4, 0, 30))])
    assert r.epochs_used > 10


@NOT_EEG
def test_enroll_with_pad_refuses_a_signal_that_is_not_eeg(pad_svc, signal, why):
    """Presentation-attack detection judged only probes: white noise, a 10 Hz sine on
    every channel, or 5 s of EEG looped with a gain changed at each pass (past the
    byte-for-byte repeat check) were enrolled, the noise and the sine with quality 1.00
    in the response, a template of no person, while any probe of the same kind is refused
    as non-physiological. With PAD on, a Signal whose accepted windows PAD finds
    non-physiological is now INVALID_ARGUMENT naming the reason, counted as a suspicious
    activity, nothing written; genuine enrollments pass as before."""
    _refuses_signal_that_is_not_eeg(pad_svc, signal, why)


@NOT_EEG
def test_enroll_with_pad_off_refuses_a_signal_that_is_not_eeg(svc, signal, why):
    """With presentation-attack detection off, Enroll built a template of white noise,
    a 10 Hz sine on every channel or 5 s of EEG looped with its gain changed at each
    pass (noise and sine with quality 1.00): PAD's non-physiological check ran at
    enrollment only with PAD on. A template of no person is never wanted: the check now
    runs at enrollment whatever the PAD setting (INVALID_ARGUMENT naming the reason,
    counted as a suspicious activity, nothing written, no PAD fingerprint kept);
    genuine enrollments pass as before, and Authenticate stays without PAD."""
    assert svc.pad is None
    _refuses_signal_that_is_not_eeg(svc, signal, why)
    assert svc.pad is None and svc.store.get_fingerprints("ok") == []


@pytest.mark.parametrize("pad", [True, False], ids=["pad_on", "pad_off"])
@pytest.mark.parametrize("fake, why", [
    (lambda n: np.random.default_rng(0).normal(0, 20, (n, 16)), "flat_spectrum"),
    (lambda n: 50 * np.sin(2 * np.pi * 10 * np.arange(n)[:, None] / SFREQ
                           + np.arange(16)), "periodic"),
])
def test_enroll_refuses_a_signal_that_is_eeg_only_in_part(request, svc, pad, fake, why):
    """The non-physiological check judged a Signal's consecutive accepted windows as one
    probe, so 10 s of EEG (refused alone: 4 of 4 windows, 10 needed) followed by 30 s of
    white noise or of a 10 Hz sine was enrolled with epochs_used 19, quality 0.95: three
    quarters of the template's windows of no person, counted by the quality gate. Each
    accepted window is now judged on its own too, as a 4-s probe is: such a Signal is
    INVALID_ARGUMENT naming the window, nothing written. (Every accepted window of every
    EEGMMIDB run, 4330, and of the OpenBCI Cyton recordings, 262, passes.)"""
    if pad:
        svc = request.getfixturevalue("pad_svc")
    x = eeg(1, 3, 0, 10)
    mixed = np.concatenate([x, fake(3 * len(x))]).astype(np.float32)
    with pytest.raises(InvalidArgument,
                       match=re.escape("signals[1] does not look like EEG") + ".*" + why
                       + r".*window at [\d.]+-[\d.]+ s is"):
        svc.enroll("part", [block(eeg(2, 3, 0, 10)), block(mixed)])
    with pytest.raises(NotFound):
        svc.get_user("part")
    with pytest.raises(FailedPrecondition):  # without it, too little EEG for the gate
        svc.enroll("part", [block(eeg(2, 3, 0, 10))])
    assert svc.enroll("ok", [block(eeg(1, 3, 0, 40))]).epochs_used > 10


def test_enroll_refuses_more_signals_than_it_compares(svc, monkeypatch):
    """Enroll compares every Signal with every earlier one (the repeat checks; PAD's
    replay search costs about a millisecond a pair), and took any number of them: one
    16 MiB request of 800 short Signals was 320 000 pairs, minutes of a server's CPU
    (60 Signals of 2 s took 3.6 s), from one enroll-scope key. More than
    MAX_ENROLL_SIGNALS (a client sends one recording, a few sessions at most) is now
    INVALID_ARGUMENT saying how many are taken, before any signal is processed; that
    many are enrolled as before."""
    from nacf_core.service import MAX_ENROLL_SIGNALS

    x = np.concatenate([eeg(1, 3, 0, 80), eeg(1, 7, 0, 80)])
    n = samples_for(4.0, SFREQ)
    calls = []
    windows = svc.rec.windows
    monkeypatch.setattr(svc.rec, "windows", lambda *a, **k: calls.append(1) or windows(*a, **k))
    many = [block(x[i * n:(i + 1) * n]) for i in range(MAX_ENROLL_SIGNALS + 1)]
    with pytest.raises(InvalidArgument, match=f"at most {MAX_ENROLL_SIGNALS} signals.*got "
                       f"{MAX_ENROLL_SIGNALS + 1}"):
        svc.enroll("many", many)
    assert calls == []
    with pytest.raises(NotFound):
        svc.get_user("many")
    r = svc.enroll("many", many[:MAX_ENROLL_SIGNALS])
    assert r.epochs_used == MAX_ENROLL_SIGNALS


def test_enroll_refuses_one_signal_copied_onto_every_channel(svc):
    """A Signal carrying one electrode's EEG on all 16 channels (a headset whose inputs
    are all bridged or shorted to one, or a copied channel) passed the quality gate with
    quality 1.00 and was enrolled: a template of no person, which then accepted any
    other person's single channel copied the same way (score 0.97-0.99 against a
    threshold of 0.80). A Signal whose accepted windows are one signal on every model
    channel (the first principal component holds 99 % of their power; real EEG at most
    95 % in a window, 89 % over a recording) is now INVALID_ARGUMENT, nothing written."""
    x = np.repeat(eeg(5, 3, 0, 40)[:, 3:4], 16, axis=1)
    with pytest.raises(InvalidArgument,
                       match=re.escape("signals[1] carries one signal on every channel")):
        svc.enroll("one", [block(eeg(2, 3, 0, 20)), block(x)])
    with pytest.raises(NotFound):
        svc.get_user("one")
    # nor with a little independent noise on each channel
    noisy = x + np.random.default_rng(1).normal(0, 0.5, x.shape)
    with pytest.raises(InvalidArgument, match="one signal on every channel"):
        svc.enroll("one", [block(noisy)])
    assert svc.enroll("ok", [block(eeg(5, 3, 0, 40))]).epochs_used > 10
