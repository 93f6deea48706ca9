"""AuthenticateStream's cost grows with the stream's length, not with its square, and its
answers are those of the whole-buffer recomputation it replaced."""

import math
from fractions import Fraction

import numpy as np
import pytest
from _server_support import CH16, SFREQ, eeg, signal_block, sqlite_service

from nacf_core.sequential import SequentialTest
from nacf_core.service import RESAMPLED_STREAM_MAX_S, SignalBlock


@pytest.fixture
def svc(tmp_path, model_path):
    s = sqlite_service(tmp_path, model_path, require_device_proof=False,
                       lockout_threshold=100000, stream_max_seconds=600,
                       signal_loss_s=100000)
    s.pad = None
    s.enroll("u", [signal_block(eeg(1, 3, 0, 40))])
    yield s
    s.store.close()


@pytest.fixture
def no_early_decision(monkeypatch):
    """The sequential test decides only at the stream's maximum (a stream whose scores
    stay between the bounds: the longest and costliest)."""
    init = SequentialTest.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        self.upper, self.lower = math.inf, -math.inf
    monkeypatch.setattr(SequentialTest, "__init__", patched)


def _old_stream(svc, user_id, chunks, limit):
    """The decision of the former AuthenticateStream loop: the windows of the whole
    buffer (of the signal up to the new window's end at another rate) recomputed for
    each new window, and every accepted window so far fused again. Returns what the
    service answers (PAD off) and the scores the sequential test was given."""
    rec = svc.rec
    template = rec.template_from_bytes(svc.store.get_template(user_id).blob)
    win = rec.window_s
    test = rec.sequential(limit)
    fed = []
    parts, n, sfreq, ch = [], 0, 0.0, ()
    n_scored = n_done = 0
    decision = w = None
    for b in chunks:
        parts.append(b.samples)
        n += len(b.samples)
        sfreq, ch = b.sfreq, b.ch_names
        seconds = n / sfreq
        if seconds < win * (n_done + 1):
            continue
        resampled = sfreq != rec.model.sfreq
        while decision is None and seconds >= win * (n_done + 1):
            data = np.concatenate(parts)
            if resampled:
                data = data[:math.ceil((n_done + 1) * win * sfreq - 1e-9)]
            w = rec.windows(SignalBlock(data, sfreq, ch, ""))
            acc = np.asarray(w.accepted, dtype=bool)
            for j in range(n_done, len(acc)):
                score = None
                if acc[j]:
                    n_scored += 1
                    score = float(rec.decide(w.select(slice(0, j + 1)), template).score)
                fed.append(score)
                decision = test.update(score)
                if decision is not None:
                    w = w.select(slice(0, j + 1))
                    break
            n_done = len(acc)
        if decision is not None or seconds >= limit:
            break
    d = rec.decide(w, template)
    reasons = list(d.reasons)
    if decision is not None:
        accepted = decision == "accept"
        reasons.append(f"sequential test: {decision} after {n_scored} window(s)")
    else:
        accepted = bool(d.accepted)
        reasons.append(f"sequential test undecided after {n_scored} window(s) "
                       f"({n / sfreq:.1f} s): fused-score decision")
    accepted = bool(accepted and d.windows_used > 0 and math.isfinite(d.score))
    return (accepted, float(d.score), float(d.threshold), float(d.quality), reasons,
            int(d.windows_used), n_scored * win), fed


def _answer(r):
    return (r.accepted, r.score, r.threshold, r.quality, list(r.reasons), r.windows_used,
            r.seconds_used)


def _fed(monkeypatch):
    fed = []
    update = SequentialTest.update

    def recording(self, score):
        fed.append(score)
        return update(self, score)
    monkeypatch.setattr(SequentialTest, "update", recording)
    return fed


def _chunked(x, sizes, rate=SFREQ):
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        c = np.ascontiguousarray(x[i:i + n], dtype="<f4")
        out.append(SignalBlock(c, rate, tuple(CH16), "", c.tobytes()))
        i, k = i + n, k + 1
    return out


def _dropouts(x):
    """Real EEG with what a wireless headset does to it: a channel that starts with
    dropped samples for over a window, dropped stretches later, a railed stretch."""
    x = x.copy()
    x[:900, 3] = np.nan          # O(5.6 s) before the first sample of F4
    x[2000:2040, 7] = np.nan
    x[5000:5003, :] = np.nan
    x[7000:7400, 12] = 200000.0  # railed
    return x


CHUNKINGS = [[10 ** 6], [160], [97], [333], [641], [1, 5000, 7, 640, 1700]]


@pytest.mark.parametrize("early", [True, False], ids=["sequential", "to-the-end"])
def test_a_streams_answer_is_the_whole_buffer_recomputations(svc, monkeypatch, request,
                                                             early):
    """Each window is now computed once, and the fused score kept as windows come: the
    answer (decision, score, threshold, quality, reasons, windows and seconds used) and
    every score given to the sequential test are those of the former recomputation of
    the whole buffer for each new window, bit for bit, on real recordings (the user's,
    impostors', one with dropped samples and a railed stretch), however chunked."""
    if not early:
        request.getfixturevalue("no_early_decision")
    fed = _fed(monkeypatch)
    probes = [eeg(1, 4, 0, 100), eeg(1, 7, 20, 100), eeg(2, 7, 0, 100), eeg(5, 3, 0, 100),
              _dropouts(eeg(1, 7, 0, 100))]
    for k, x in enumerate(probes):
        for sizes in CHUNKINGS:
            for limit in (20.0, 96.0):
                chunks = _chunked(x, sizes)
                fed.clear()
                want, want_fed = _old_stream(svc, "u", chunks, limit)
                fed.clear()
                got = svc.authenticate_stream("u", iter(chunks), max_seconds=limit)
                assert _answer(got) == want, (k, sizes, limit)
                assert fed == want_fed, (k, sizes, limit)


def test_a_stream_whose_channel_never_has_a_sample_is_answered_as_before(svc, monkeypatch):
    """A model channel dropped for the whole stream: every window is rejected (the
    sequential test is given no score), and the reasons and quality are those of the
    whole buffer (that channel held at 0), computed once at the end."""
    fed = _fed(monkeypatch)
    x = eeg(1, 4, 0, 30)
    x[:, 5] = np.nan
    for sizes in ([10 ** 6], [160], [333]):
        chunks = _chunked(x, sizes)
        want, want_fed = _old_stream(svc, "u", chunks, 24.0)
        fed.clear()
        got = svc.authenticate_stream("u", iter(chunks), max_seconds=24.0)
        assert _answer(got) == want and fed == want_fed == [None] * 6, sizes
        assert not got.accepted and got.windows_used == 0


@pytest.mark.parametrize("rate", [250.0, 125.0])
def test_a_stream_at_another_rate_is_answered_as_before_within_its_bound(
        svc, monkeypatch, rate):
    """At another rate than the model's each window is still cut from the signal up to
    its end resampled whole (the same answer as before, bit for bit), which costs every
    window all those before it: such a stream takes at most RESAMPLED_STREAM_MAX_S of
    signal, however high stream_max_seconds or max_seconds."""
    fed = _fed(monkeypatch)
    f = Fraction(rate / SFREQ).limit_denominator(1000)
    from scipy.signal import resample_poly

    for wearer in (1, 5):
        x = resample_poly(eeg(wearer, 7, 0, 100).astype(np.float64), f.numerator,
                          f.denominator, axis=0).astype(np.float32)
        for sizes in ([10 ** 6], [int(rate)], [333]):
            chunks = _chunked(x, sizes, rate)
            want, want_fed = _old_stream(svc, "u", chunks, 20.0)
            fed.clear()
            got = svc.authenticate_stream("u", iter(chunks), max_seconds=20.0)
            assert _answer(got) == want and fed == want_fed, (wearer, sizes)


@pytest.mark.usefixtures("no_early_decision")
@pytest.mark.parametrize("rate", [SFREQ, 250.0])
def test_a_long_streams_work_grows_with_its_length(svc, monkeypatch, rate):
    """The windows of the whole buffer were recomputed for each new window and every
    accepted window so far fused again: a stream's CPU grew with the square of its length
    (a 600-s stream took 9 s of CPU, all under the CPU gate every Authenticate shares;
    1 900 s, ~50 s). Counted, not timed: the samples band-passed, the windows embedded
    and the embeddings fused for a 400-s stream in 1-s chunks are now each about the
    stream's own (at the model's rate); a stream at another rate, which still recomputes
    every window before each new one, stops at RESAMPLED_STREAM_MAX_S of signal."""
    p = svc.rec.pipeline
    count = {"filtered": 0, "embedded": 0, "fused": 0}

    class Counting:
        def __init__(self, k):
            self._k = k

        def __getattr__(self, name):
            return getattr(self._k, name)

        def sosfilt(self, sos, x, *a, **k):
            count["filtered"] += x.shape[0]
            return self._k.sosfilt(sos, x, *a, **k)

    p._k = Counting(p._k)
    embed, fuse = p._embed, p.fuse

    def counted_embed(epochs):
        count["embedded"] += len(epochs)
        return embed(epochs)

    def counted_fuse(emb):
        count["fused"] += len(emb)
        return fuse(emb)
    monkeypatch.setattr(p, "_embed", counted_embed, raising=False)
    monkeypatch.setattr(p, "fuse", counted_fuse, raising=False)
    from nacf_core import pipeline

    if hasattr(pipeline, "RunningScore"):
        add = pipeline.RunningScore.add

        def counted_add(self, e):
            count["fused"] += 1
            return add(self, e)
        monkeypatch.setattr(pipeline.RunningScore, "add", counted_add)

    seconds = 400.0
    x = np.concatenate([eeg(1, r, 0, 125) for r in (4, 7)] + [eeg(2, r, 0, 125)
                                                             for r in (4, 7)])
    if rate != SFREQ:
        from scipy.signal import resample_poly

        f = Fraction(rate / SFREQ).limit_denominator(1000)
        x = resample_poly(x.astype(np.float64), f.numerator, f.denominator,
                          axis=0).astype(np.float32)
    x = x[:int(seconds * rate)]
    r = svc.authenticate_stream("u", iter(_chunked(x, [int(rate)], rate)),
                                max_seconds=seconds)
    n_win = int(seconds // svc.rec.window_s)
    if rate == SFREQ:
        assert r.seconds_used == seconds and r.windows_used > n_win // 2, r
        # one band-pass of the signal at the model's rate; the windows once each; the
        # fused score: once per window, and once at the end for the answer
        assert count["filtered"] == len(x), count
        assert count["embedded"] <= n_win, count
        assert count["fused"] <= 2 * n_win, count
    else:
        assert r.seconds_used == RESAMPLED_STREAM_MAX_S, r
        n = int(RESAMPLED_STREAM_MAX_S // svc.rec.window_s)
        model_n = int(RESAMPLED_STREAM_MAX_S * SFREQ)
        assert count["filtered"] <= model_n * (n + 1) // 2 + model_n, count
        assert count["embedded"] <= n * (n + 1) // 2, count


@pytest.mark.parametrize("bad", [np.nan, 200000.0], ids=["dropped", "railed"])
@pytest.mark.parametrize("sizes", [[160], [641], [10 ** 6]])
def test_a_stream_whose_first_window_is_unusable_is_answered_however_chunked(svc, bad, sizes):
    """A first window all dropped or railed everywhere (the headset put on after the
    stream started): the whole-buffer checks were made on the first window's worth of
    samples, so the stream was refused (INVALID_ARGUMENT) when sent in chunks and
    answered when sent in one, as the recomputation had done. The answer is now the
    one-chunk answer (the former loop's on the whole buffer), however chunked."""
    x = eeg(1, 4, 0, 30)
    x[:800] = bad
    want = _old_stream(svc, "u", _chunked(x, [10 ** 6]), 24.0)[0]
    chunks = _chunked(x, sizes)
    assert _answer(svc.authenticate_stream("u", iter(chunks), max_seconds=24.0)) == want
