"""Presentation-attack detection: genuine probes pass (measured on real EEG), attacks fail."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from nacf_core.hardware.files import read_recording
from scipy import signal
from scipy.signal import resample_poly

from nacf_core import pad
from nacf_core.channels import pick
from nacf_core.errors import InvalidArgument

CH16 = "Fp1 Fp2 F3 F4 F7 F8 C3 C4 T7 T8 P3 P4 P7 P8 O1 O2".split()
SUBJECTS = ["S003", "S009", "S015", "S021"]  # a slice of the dev data; README has all 24


def _block(x, sfreq, names=CH16):
    return SimpleNamespace(samples=x, sfreq=sfreq, ch_names=list(names))


@pytest.fixture(scope="module")
def recordings(shared_data):
    """{subject: {run: (n_times, 16) µV}}, 160 Hz, 16 channels picked by name."""
    out = {}
    for s in SUBJECTS:
        out[s] = {}
        for run in ("R03", "R04", "R07"):
            rec = read_recording(shared_data / "eegmmidb" / s / f"{s}{run}.edf")
            assert rec.sfreq == 160.0
            out[s][run] = rec.data[:, pick(rec.ch_names, CH16)]
    return out


@pytest.fixture(scope="module")
def detector():
    return pad.PresentationAttackDetector(CH16)


@pytest.fixture(scope="module")
def enrolled(recordings, detector):
    """Each subject's history after enrolling on R03."""
    return {s: [("enroll", fp) for fp in detector.enroll_fingerprints(
        None, [_block(r["R03"], 160.0)])] for s, r in recordings.items()}


CH8 = ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]  # the 8-channel Cyton montage


@pytest.mark.parametrize("chans", [CH16, CH8], ids=["16ch", "8ch"])
def test_genuine_probes_rejected_at_most_1_percent(recordings, chans):
    """Enroll R03; probe with every non-overlapping 4-s window of R07 and R04 in time
    order, each accepted probe joining the history (as the service does)."""
    det = pad.PresentationAttackDetector(chans)
    cols = [CH16.index(c) for c in chans]
    n = rejected = 0
    reasons = []
    for s, runs in recordings.items():
        enrolled = [("enroll", fp) for fp in det.enroll_fingerprints(
            None, [_block(runs["R03"][:, cols], 160.0, chans)])]
        for run in ("R07", "R04"):
            x = runs[run][:, cols]
            history = list(enrolled)
            w = 4 * 160
            for k in range(x.shape[0] // w):
                v = det.analyse(x[k * w:(k + 1) * w], 160.0, chans, history)
                n += 1
                if v.attack:
                    rejected += 1
                    reasons.append((s, run, k, v.reason))
                else:
                    assert v.fingerprint is not None and v.kind == "" and v.severity == ""
                    history.append(("probe", v.fingerprint))
    assert n >= 200
    assert rejected / n <= 0.01, f"{rejected}/{n} genuine probes rejected: {reasons}"


def _tweak(seg, rng, noise=0.05):
    """Rescale each channel, add a DC offset and a little noise."""
    gain = rng.uniform(0.3, 3.0, size=seg.shape[1])
    offset = rng.uniform(-300.0, 300.0, size=seg.shape[1])
    return seg * gain + offset + rng.normal(0, noise, size=seg.shape) * seg.std(axis=0)


def test_replays_are_rejected(recordings, detector, enrolled):
    rng = np.random.default_rng(7)
    w = 640
    for s, runs in recordings.items():
        x03 = runs["R03"]
        for _ in range(2):  # a piece of the enrollment recording, anywhere in it
            st = int(rng.integers(0, x03.shape[0] - w))
            v = detector.analyse(_tweak(x03[st:st + w], rng), 160.0, CH16, enrolled[s])
            assert (v.attack, v.kind, v.reason, v.severity) == (
                True, "replay", "replay_of_enrollment", "high"), v.scores
            assert v.scores["replay"] >= detector.replay_threshold and v.fingerprint is None
        # the same replay, resampled to 250 Hz by the attacker's playback device
        st = int(rng.integers(0, x03.shape[0] - w))
        up = resample_poly(x03[st:st + w], 25, 16, axis=0)
        v = detector.analyse(_tweak(up, rng), 250.0, CH16, enrolled[s])
        assert v.reason == "replay_of_enrollment", v.scores
        # an earlier genuine probe, replayed shifted by 0.7 s
        x07 = runs["R07"]
        first = detector.analyse(x07[:w], 160.0, CH16, enrolled[s])
        assert not first.attack
        history = enrolled[s] + [("probe", first.fingerprint)]
        v = detector.analyse(_tweak(x07[112:112 + w], rng), 160.0, CH16, history)
        assert v.reason == "replay_of_probe", v.scores
        # while a later, fresh window of the same person passes
        v = detector.analyse(x07[5 * w:6 * w], 160.0, CH16, history)
        assert not v.attack, v.scores


def test_replays_with_a_gain_varying_in_time_are_rejected(recordings, detector, enrolled):
    """A replay whose gain varies in time, the same on every channel (a playback chain's
    volume or automatic gain control: +-3 dB at 1 Hz, +-6 dB at 0.25-0.5 Hz, +-10 dB at
    0.5 Hz; besides each channel's own gain and offset), passed as fresh EEG: 0 to 9 of
    32 caught per setting on these four subjects, the recogniser still accepting most;
    only a constant gain was taken off. Each frame's mean over the features is now taken
    off the envelope too (faster ones remain a limit: README)."""
    rng = np.random.default_rng(13)
    w = 640
    t = np.arange(w) / 160.0
    for s, runs in recordings.items():
        x03 = runs["R03"]
        for db, f in ((3.0, 1.0), (6.0, 0.5), (6.0, 0.25), (10.0, 0.5)):
            for _ in range(2):
                st = int(rng.integers(0, x03.shape[0] - w))
                g = 10 ** (db / 20 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)))
                v = detector.analyse(_tweak(x03[st:st + w] * g[:, None], rng, noise=0.0),
                                     160.0, CH16, enrolled[s])
                assert v.reason == "replay_of_enrollment", (s, db, f, v.scores)


def test_time_reversed_replays_are_rejected(recordings, detector, enrolled):
    """A stolen recording played backwards keeps its spectrum and channel covariance (the
    recogniser accepts it like the original) and its power envelope, reversed."""
    rng = np.random.default_rng(11)
    w = 640
    for s, runs in recordings.items():
        x03 = runs["R03"]
        for _ in range(3):  # a piece of the enrollment recording, reversed
            st = int(rng.integers(0, x03.shape[0] - w))
            v = detector.analyse(_tweak(x03[st:st + w][::-1], rng), 160.0, CH16, enrolled[s])
            assert v.reason == "replay_of_enrollment", v.scores
        # an earlier genuine probe, replayed backwards
        x07 = runs["R07"]
        first = detector.analyse(x07[:w], 160.0, CH16, enrolled[s])
        assert not first.attack
        history = enrolled[s] + [("probe", first.fingerprint)]
        v = detector.analyse(_tweak(x07[:w][::-1], rng), 160.0, CH16, history)
        assert v.reason == "replay_of_probe", v.scores


def test_non_physiological_signals_are_rejected(recordings, detector):
    rng = np.random.default_rng(3)
    w, sf = 640, 160.0
    t = np.arange(w) / sf
    cases = {
        "white": rng.normal(0, 30, size=(w, 16)),
        "white_common": rng.normal(0, 30, size=(w, 16)) + rng.normal(0, 30, size=(w, 1)),
        "white_250Hz": rng.normal(0, 10, size=(1000, 16)),
    }
    for name, x in cases.items():
        v = detector.analyse(x, 250.0 if "250" in name else sf, CH16)
        assert (v.attack, v.kind, v.reason) == (True, "non_physiological", "flat_spectrum"), (
            name, v.scores)
    for f0 in (2.5, 7.0, 10.0, 23.0, 35.0):
        sin = 20 * np.sin(2 * np.pi * f0 * t[:, None] + rng.uniform(0, 6.3, 16))
        v = detector.analyse(sin + rng.normal(0, 1.0, sin.shape) + 50, sf, CH16)
        assert (v.kind, v.reason) == ("non_physiological", "periodic"), (f0, v.scores)
    for s, runs in recordings.items():  # a real EEG segment looped, 0.3 s to 2 s long
        for period_s in (0.3, 0.8, 1.4, 2.0):
            p = int(period_s * sf)
            st = int(rng.integers(0, runs["R04"].shape[0] - p))
            loop = np.tile(runs["R04"][st:st + p], (w // p + 1, 1))[:w]
            v = detector.analyse(_tweak(loop, rng), sf, CH16)
            assert v.reason == "periodic", (s, period_s, v.scores)
    v = detector.analyse(np.full((w, 16), 12.5), sf, CH16)
    assert v.reason == "no_signal"


def test_fingerprint_invariances_and_privacy(recordings):
    x = recordings["S003"]["R07"][:1280]
    fp = pad.fingerprint(x, 160.0, CH16)
    # gain and offset per channel do not change it much: the score against itself
    scaled = pad.fingerprint(x * np.linspace(0.5, 4, 16) - 80.0, 160.0, CH16)
    assert pad.replay_score(scaled, [fp])[0] > 0.99
    # the sign (and phase) of the waveform are not in it: -x has the same fingerprint,
    # so the signal cannot be reconstructed from it
    assert pad.fingerprint(-x, 160.0, CH16) == fp
    # a coarse int8 power envelope: 8 s x 16 channels of float32 is 82 kB, it is < 9 kB
    assert len(fp) < x.size * 4 / 9
    # another channel set is never compared
    other = pad.fingerprint(x, 160.0, CH16[::-1])
    assert pad.replay_score(other, [fp]) == (0.0, "")
    with pytest.raises(InvalidArgument, match="fingerprint"):
        pad.replay_score(b"garbage", [fp])


def test_service_hooks_and_store_roundtrip(recordings, detector):
    from nacf_core.store import open_store

    x = recordings["S009"]["R03"]
    names = [f"{c}." for c in CH16] + ["Cz.", "Oz.."]  # EDF-style labels, extra channels
    wide = np.concatenate([x, x[:, :2]], axis=1)
    with open_store("sqlite:///:memory:", key=os.urandom(32)) as store:
        store.put_template("u", b"template", "m")
        fps = detector.enroll_fingerprints(None, [_block(wide, 160.0, names),
                                                  _block(x[:100], 160.0)])  # too short
        assert len(fps) == 1
        store.add_fingerprints("u", fps, "enroll", replace=True)
        probe = _block(wide[3000:3640].astype(np.float32) * 2 + 5, 160.0, names)
        v = detector.check(None, probe, store.get_fingerprints("u"))
        assert v.attack and v.kind == "replay" and v.reason == "replay_of_enrollment"
        fresh = _block(recordings["S009"]["R07"][:640], 160.0)
        v = detector.check(None, fresh, store.get_fingerprints("u"))
        assert not v.attack
        store.add_fingerprints("u", [v.fingerprint], "probe")
        v2 = detector.check(None, fresh, store.get_fingerprints("u"))
        assert v2.reason == "replay_of_probe"


def test_bad_input(detector):
    with pytest.raises(InvalidArgument, match="too short"):
        detector.analyse(np.zeros((100, 16)), 160.0)
    with pytest.raises(ValueError, match="2-D"):
        detector.analyse(np.zeros(1000), 160.0)
    with pytest.raises(InvalidArgument, match="finite"):
        detector.analyse(np.full((640, 16), np.nan), 160.0)
    with pytest.raises(ValueError, match="sfreq"):
        detector.analyse(np.zeros((640, 16)), -1.0)
    with pytest.raises(InvalidArgument, match="lacks"):
        detector.analyse(np.zeros((640, 3)), 160.0, ["Fp1", "Fp2", "Cz"])
    # a few NaN samples (dropped packets) are tolerated
    x = np.random.default_rng(0).normal(size=(640, 16))
    x[10:20] = np.nan
    assert detector.analyse(x, 160.0).reason == "flat_spectrum"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_signal_too_large_to_square_is_still_judged(recordings, detector):
    """Past ~1e18 µV the float32 autocorrelation overflowed (periodicity -inf), past
    ~1e154 the sums of squares (every score NaN): no threshold refuses NaN, so a looped
    segment or white noise at such a scale passed as EEG. Scaled down by a power of two
    when that happens, they are refused as at any other scale, the RMS still in µV."""
    rng = np.random.default_rng(5)
    loop = np.tile(recordings["S003"]["R04"][1000:1128], (6, 1))[:640]
    white = rng.normal(0, 30, size=(640, 16))
    for scale in (1e18, 1e20, 1e300):
        for x, reason in ((loop, "periodic"), (white, "flat_spectrum")):
            v = detector.analyse(x * scale, 160.0, CH16)
            assert v.reason == reason, (scale, v.scores)
            assert v.scores["rms"] == pytest.approx(
                detector.analyse(x, 160.0, CH16).scores["rms"] * scale, rel=1e-6)
        v = detector.analyse(recordings["S003"]["R07"][:640] * scale, 160.0, CH16)
        assert not v.attack and all(np.isfinite(list(v.scores.values()))), v.scores


def _naive_max_ncc(segs, seqs):
    """Reference: every piece against every window inside each sequence, directly."""
    best, who = -1.0, -1
    for i, s in enumerate(seqs):
        for seg in segs:
            L = seg.shape[0]
            for t in range(s.shape[0] - L + 1):
                win = s[t:t + L] - s[t:t + L].mean(axis=0)
                r = float((seg * win).sum() / np.sqrt((win ** 2).sum()))
                if r > best:
                    best, who = r, i
    return best, who


def test_fft_correlation_matches_naive_reference():
    rng = np.random.default_rng(11)
    for _ in range(5):
        F = int(rng.integers(2, 8))
        seqs = [rng.normal(size=(int(rng.integers(10, 60)), F)) for _ in range(3)]
        probe = rng.normal(size=(int(rng.integers(12, 40)), F))
        if rng.random() < 0.6:  # plant a scaled, shifted copy of a piece of a sequence
            src = seqs[int(rng.integers(0, 3))]
            n = min(src.shape[0], probe.shape[0])
            probe[:n] = src[:n] * 2.5 + 7
        segs = pad._segments(probe)
        fast = pad._max_ncc(segs, seqs)
        ref = _naive_max_ncc(segs, seqs)
        assert fast[0] == pytest.approx(ref[0], abs=1e-5) and fast[1] == ref[1]


def _fp_bytes(q, n_ch):
    """A fingerprint holding ``q`` (n_frames, 2 * n_ch) in 0.5-dB steps."""
    qi = np.clip(np.round(q / pad._DB_STEP), -127, 127).astype(np.int8)
    head = pad._HEADER.pack(pad._MAGIC, 1, 2, n_ch, qi.shape[0], pad._HOP_S, b"k" * 8)
    return head + qi.tobytes()


def test_cached_replay_path_matches_naive_reference_and_stays_bounded():
    """replay_score uses prepared (cached) stored fingerprints; same value as the
    direct computation, the cache is keyed by content and bounded in bytes."""
    rng = np.random.default_rng(5)
    n_ch = 3
    cache = pad._StoredCache(max_bytes=40_000)
    for trial in range(6):
        seqs_b = [_fp_bytes(rng.normal(size=(int(rng.integers(20, 200)), 2 * n_ch)) * 6, n_ch)
                  for _ in range(4)]
        seqs = [pad._parse(b)[1] for b in seqs_b]
        probe = rng.normal(size=(int(rng.integers(33, 70)), 2 * n_ch)) * 6
        if trial % 2:
            src = seqs[int(rng.integers(0, 4))]
            n = min(src.shape[0], probe.shape[0])
            probe[:n] = src[:n]
        segs = pad._segments(probe)
        L = segs.shape[1]
        stored = [cache.get(b, L) for b in seqs_b]
        stored = [e for e in stored if e.n >= L]
        got = pad._max_ncc_stored(segs, stored)
        ref = _naive_max_ncc(segs, [s for s in seqs if s.shape[0] >= L])
        assert got[0] == pytest.approx(ref[0], abs=1e-5)
        old = pad._max_ncc_stored_reference(segs, stored)
        assert got[0] == pytest.approx(old[0], abs=1e-6) and got[1] == old[1]
        assert cache.get(seqs_b[0], L) is cache.get(bytes(seqs_b[0]), L)
        assert cache._size <= cache.max_bytes or len(cache._d) == 1
    # end to end: a stored probe replayed scores ~1 through the cached path
    hist = [("probe", seqs_b[1])]
    assert pad.replay_score(seqs_b[1], hist) == (pytest.approx(1.0, abs=1e-5), "probe")


def test_history_slab_scores_as_the_plain_path_while_the_history_changes():
    """replay_score with a history key keeps the prepared history in a slab between
    calls and updates it (probes added and trimmed, a re-enrollment, a history cut
    short, a longer probe with another FFT size, another channel count, a small slab
    cache that evicts): the same score and the same best entry as the plain path at
    every step, and a replay of any probe still in the history is caught."""
    rng = np.random.default_rng(11)
    n_ch = 4
    pad._SLABS.clear()
    old_cache, pad._SLABS = pad._SLABS, pad._SlabCache(max_bytes=600_000)
    try:
        def fp(n, ch=n_ch):
            return _fp_bytes(rng.normal(size=(n, 2 * ch)) * 6, ch)

        def same(history, probe_b, key):
            got = pad._replay_score(probe_b, history, False, key)
            want = pad._replay_score(probe_b, history, False)
            assert got[0] == pytest.approx(want[0], abs=1e-6) and got[1] == want[1]
            return got

        enroll = fp(960)
        probes = [fp(61) for _ in range(60)]
        for k in range(60):  # a user's life: one probe more each time, the oldest trimmed
            hist = [("enroll", enroll)] + [("probe", b) for b in probes[max(0, k - 48):k]]
            same(hist, fp(61), "alice")
            if k >= 3:  # a replay of a stored probe (rescaled) scores ~1
                q = pad._parse(probes[k - 2])[1] * 1.7
                score, kind = same(hist, _fp_bytes(q, n_ch), "alice")
                assert score > 0.99 and kind == "probe"
            if k == 30:  # re-enrollment: a new enrollment fingerprint
                enroll = fp(900)
            if k == 40:  # history cut short (e.g. a deleted and re-enrolled user)
                probes = probes[:5] + [fp(61) for _ in range(55)]
        same([("enroll", enroll), ("probe", fp(200)), ("probe", fp(61))], fp(61), "alice")
        same([("probe", fp(61, 2)), ("probe", fp(61, 2))], fp(61, 2), "alice")  # 2 channels
        for u in range(12):  # many users through a small cache: evictions, rebuilds
            same([("enroll", fp(400))] + [("probe", fp(61)) for _ in range(8)], fp(61), u)
        assert pad._SLABS._size <= pad._SLABS.max_bytes or len(pad._SLABS._d) == 1
    finally:
        pad._SLABS = old_cache


@pytest.mark.parametrize("pause", ["before_sync", "after_sync"])
def test_slab_cache_counts_only_its_slabs_when_a_thread_grows_an_evicted_one(pause, monkeypatch):
    """Thread A takes alice's slab and grows it (her history got longer) while the main
    thread's call for bob evicts that slab: the cache's byte count stays the sum of the
    slabs it holds. It counted A's growth of the evicted slab for good (phantom bytes
    that no eviction takes off, so the cache ended up keeping fewer slabs than its
    budget, in the end one)."""
    rng = np.random.default_rng(3)
    n_ch = 4

    def fp(n):
        return _fp_bytes(rng.normal(size=(n, 2 * n_ch)) * 6, n_ch)

    cache = pad._SlabCache(max_bytes=100_000)  # room for one small slab, not two
    monkeypatch.setattr(pad, "_SLABS", cache)
    enroll = fp(200)
    pad._replay_score(fp(61), [("enroll", enroll), ("probe", fp(61))], False, "alice")
    arrived, go = threading.Event(), threading.Event()
    sync = pad._Slab.sync
    thread_a = []

    def paused_sync(self, stored):
        if threading.current_thread() in thread_a:
            if pause == "after_sync":
                sync(self, stored)
            arrived.set()
            assert go.wait(30)
            if pause == "after_sync":
                return None
        return sync(self, stored)

    monkeypatch.setattr(pad._Slab, "sync", paused_sync)
    longer = [("enroll", enroll)] + [("probe", fp(61)) for _ in range(20)]  # past the cap
    got = {}
    a = threading.Thread(target=lambda: got.setdefault(
        "a", pad._replay_score(fp(61), longer, False, "alice")))
    thread_a.append(a)
    a.start()
    assert arrived.wait(30)
    pad._replay_score(fp(61), [("enroll", fp(200)), ("probe", fp(61))], False, "bob")
    assert ("alice", 96) not in cache._d  # alice's slab was evicted under thread A
    go.set()
    a.join(30)
    assert "a" in got
    held = sum(slab.nbytes for slab in cache._d.values())
    assert cache._size == held
    # and the cache keeps what its budget holds: alice and bob in turn, one at a time
    for user in ("alice", "bob", "alice"):
        pad._replay_score(fp(61), [("enroll", enroll), ("probe", fp(61))], False, user)
        assert cache._size == sum(slab.nbytes for slab in cache._d.values())


def _bandpass_reference(x, sfreq):
    """1-40 Hz zero-phase band-pass by the reference path (SciPy's recursion)."""
    xc = pad._as_channels_first(x, sfreq)
    xc -= xc.mean(axis=1, keepdims=True)
    return pad._bp_reference(xc, sfreq, 1.0, 40.0)


def test_zero_phase_kernels_are_bit_equal_to_scipy(recordings):
    """Both compiled zero-phase band-passes (the Cython wavefront kernel PAD uses, and
    the Numba kernel it falls back on) give scipy.signal.sosfiltfilt's bits, for
    channel counts around the kernels' lane blocks, PAD's three bands and a slow
    device (the upper edge lowered)."""
    x = np.concatenate([recordings[s]["R04"][:900] for s in recordings], axis=1)
    for n_ch in (1, 3, 8, 15, 16, 17, 33, min(64, x.shape[1])):
        xc = pad._as_channels_first(x[:, :n_ch], 160.0)
        xc -= xc.mean(axis=1, keepdims=True)
        for lo, hi, sf in ((1.0, 40.0, 160.0), (4.0, 13.0, 160.0), (13.0, 30.0, 160.0),
                           (1.0, 40.0, 70.0)):
            want = signal.sosfiltfilt(pad._sos(lo, hi, sf)[0], xc, axis=-1)
            assert np.array_equal(pad._bp(xc, sf, lo, hi), want), (n_ch, lo, hi, sf)
            assert np.array_equal(pad._bp_numba(xc, sf, lo, hi), want), (n_ch, lo, hi, sf)
    assert pad._cy_filter() is not None  # the build has the Cython kernel


def _reference_analyse(det, x, sfreq, names, history):
    """The detector's decision computed with the NumPy reference paths only."""
    xb = _bandpass_reference(x, sfreq)
    assert np.array_equal(pad.bandpass_1_40(x, sfreq), xb)  # bit-equal
    ph = pad._physiology_numpy(xb, sfreq)
    fp = pad._fingerprint_filtered_numpy(xb, sfreq, pad._channel_hash(xb.shape[0], names))
    return ph, fp, pad._replay_score(fp, history, reference=True)


def test_compiled_kernels_match_numpy_reference(recordings, enrolled):
    """The compiled (Numba) path decides exactly as the NumPy reference: byte-identical
    fingerprints, the same scores to ~1e-9, on real EEG (16 and 8 channels, with and
    without a history) and on attack-like signals."""
    rng = np.random.default_rng(13)
    w, sf = 640, 160.0
    n = 0
    for s, runs in recordings.items():
        hist = list(enrolled[s])
        x = runs["R07"]
        for k in range(0, x.shape[0] // w, 3):
            probes = [(x[k * w:(k + 1) * w], CH16), (x[k * w:(k + 1) * w, :8], CH16[:8]),
                      (x[k * w:k * w + 400], CH16)]
            for probe, names in probes:
                for history in ((), hist):
                    det = pad.PresentationAttackDetector(names)
                    v = det.analyse(probe, sf, names, history)
                    ref = det._analyse(probe, sf, names, history, reference=True)
                    assert (v.attack, v.kind, v.reason, v.fingerprint) == (
                        ref.attack, ref.kind, ref.reason, ref.fingerprint)
                    assert v.scores == pytest.approx(ref.scores, rel=1e-9, abs=1e-6)
                    ph, fp, (score, _) = _reference_analyse(det, probe, sf, names, history)
                    for key in ("rms", "slope", "flatness", "periodicity"):
                        assert v.scores[key] == pytest.approx(ph[key], rel=1e-9, abs=1e-9)
                    if not v.attack:
                        assert v.fingerprint == fp
                        assert v.scores["replay"] == pytest.approx(score, abs=1e-6)
                    n += 1
            hist.append(("probe", pad.fingerprint(x[k * w:(k + 1) * w], sf, CH16)))
    t = np.arange(w) / sf
    others = [rng.normal(0, 30, size=(w, 16)), np.full((w, 16), 3.0),
              20 * np.sin(2 * np.pi * 10 * t[:, None] + rng.uniform(0, 6.3, 16)),
              np.tile(recordings["S003"]["R04"][:100], (7, 1))[:w],
              recordings["S003"]["R03"][:3000]]
    for probe in others:
        xb = _bandpass_reference(probe, sf)
        assert np.array_equal(pad.bandpass_1_40(probe, sf), xb)
        ph, ref = pad.physiology(xb, sf), pad._physiology_numpy(xb, sf)
        assert ph == pytest.approx(ref, rel=1e-9, abs=1e-9)
        assert pad.fingerprint(probe, sf, CH16) == pad._fingerprint_filtered_numpy(
            xb, sf, pad._channel_hash(16, CH16))
        n += 1
    up = resample_poly(recordings["S009"]["R03"][:1280], 25, 16, axis=0)  # 250 Hz
    xb = _bandpass_reference(up, 250.0)
    assert np.array_equal(pad.bandpass_1_40(up, 250.0), xb)
    assert pad.physiology(xb, 250.0) == pytest.approx(pad._physiology_numpy(xb, 250.0),
                                                      rel=1e-9, abs=1e-9)
    assert pad.fingerprint(up, 250.0) == pad._fingerprint_filtered_numpy(
        xb, 250.0, pad._channel_hash(16, None))
    assert n >= 100


@pytest.mark.numba_kernels
def test_kernels_decide_like_the_reference_on_one_window(shared_data):
    """One real window through the compiled kernels (also rerun with NUMBA_DISABLE_JIT=1
    by tests/test_numba_nojit.py, so the kernels' Python is checked too)."""
    rec = read_recording(shared_data / "eegmmidb" / "S015" / "S015R07.edf")
    x = rec.data[:, pick(rec.ch_names, CH16)]
    enroll = _bandpass_reference(x[:4800], 160.0)
    hist = [("enroll", pad._fingerprint_filtered_numpy(enroll, 160.0,
                                                       pad._channel_hash(16, CH16)))]
    det = pad.PresentationAttackDetector(CH16)
    for probe in (x[6400:7040], x[1000:1640] * 3 + 40):  # fresh, and a replay
        v = det.analyse(probe, 160.0, CH16, hist)
        ref = det._analyse(probe, 160.0, CH16, hist, reference=True)
        assert (v.attack, v.reason, v.fingerprint) == (ref.attack, ref.reason, ref.fingerprint)
        assert v.scores == pytest.approx(ref.scores, rel=1e-9, abs=1e-6)
    assert v.reason == "replay_of_enrollment"


def test_check_judges_only_the_windows_the_decision_used(recordings, detector, enrolled):
    """``check`` analysed the whole block, the samples outside the windows the decision
    used too: a tail past the last window (which no window covers, so the quality gate
    never sees it) or a window the gate rejected. A value there far beyond any EEG (one
    sample of 1e30 µV, or 1e12 µV on one channel) made the band-power envelope of the
    whole probe the filter's ringing of it (and the periodicity NaN, taken for "not
    periodic"), so a replay of the enrollment recording with such a tail, which the
    biometric decision accepts on its one window, passed presentation-attack detection;
    likewise a looped segment with an artifact in a rejected window. ``check`` now
    judges the accepted windows' samples only."""
    x03 = recordings["S003"]["R03"]
    one = SimpleNamespace(window_s=4.0, starts_s=[0.0], accepted=[True])
    for ch, value in ((slice(None), 1e30), (slice(0, 1), 1e12)):
        replay = x03[3000:3720].copy()  # 4 s and a 0.5-s tail
        replay[700:705, ch] = value
        v = detector.check(one, _block(replay, 160.0), enrolled["S003"])
        assert v.reason == "replay_of_enrollment", v.scores
    # an 8-s loop of a real 1-s segment; the gate rejected the first window (a pop on
    # every channel at the rail): the accepted one is judged as a probe of its own
    seg = recordings["S009"]["R04"][4000:4160]
    loop = np.tile(seg, (8, 1))
    loop[300:305] = 3e5
    two = SimpleNamespace(window_s=4.0, starts_s=[0.0, 4.0], accepted=[False, True])
    v = detector.check(two, _block(loop, 160.0), enrolled["S009"])
    assert v.reason == "periodic", v.scores
    # a genuine probe whose first window was rejected: what PAD keeps of it (its
    # fingerprint, to catch a replay of it) is the accepted window's
    x07 = recordings["S009"]["R07"][:1280].copy()
    x07[300:305] = 3e5
    v = detector.check(two, _block(x07, 160.0), enrolled["S009"])
    assert not v.attack, v.scores
    assert v.fingerprint == pad.fingerprint(x07[640:], 160.0, CH16)
    # two runs of accepted windows around a rejected one: each judged on its own (a
    # replay in either is one), the fingerprint kept is theirs end to end
    three = SimpleNamespace(window_s=4.0, starts_s=[0.0, 4.0, 8.0],
                            accepted=[True, False, True])
    x07 = recordings["S009"]["R07"][2000:3920].copy()
    x07[900:905] = 3e5
    v = detector.check(three, _block(x07, 160.0), enrolled["S009"])
    assert not v.attack, v.scores
    fps = [pad.fingerprint(x07[a:a + 640], 160.0, CH16) for a in (0, 1280)]
    assert v.fingerprint == pad._join_fingerprints(fps)
    assert pad._parse(v.fingerprint)[1].shape[0] == 2 * pad._parse(fps[0])[1].shape[0]
    x07[1280:] = recordings["S009"]["R03"][5000:5640]
    v = detector.check(three, _block(x07, 160.0), enrolled["S009"])
    assert v.reason == "replay_of_enrollment", v.scores
