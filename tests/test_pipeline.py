import numpy as np
import pytest

from nacf_core.errors import FailedPrecondition, InvalidArgument
from nacf_core.features import l2_normalize
from nacf_core.model import default_model
from nacf_core.pipeline import Decision, Pipeline, Template, Windows

DEMO = ["S021", "S022", "S023", "S024"]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(default_model(16))


@pytest.fixture(scope="module")
def recs(shared_data):
    from nacf_core.hardware.files import read_recording

    out = {}
    for s in DEMO:
        for run, stop in (("R03", 60.0), ("R07", 24.0)):
            out[s, run] = read_recording(shared_data / "eegmmidb" / s / f"{s}{run}.edf",
                                         stop_s=stop)
    return out


@pytest.fixture(scope="module")
def templates(pipe, recs):
    return {s: pipe.enroll([(recs[s, "R03"].data, recs[s, "R03"].sfreq, recs[s, "R03"].ch_names)])
            for s in DEMO}


def _block(rec, dtype=np.float64):
    return rec.data.astype(dtype), rec.sfreq, rec.ch_names


def test_windows_shapes_and_norms(pipe, recs):
    x, sf, ch = _block(recs["S021", "R07"], np.float32)
    w = pipe.windows(x, sf, ch)
    assert isinstance(w, Windows)
    assert w.n_windows == (24 - 4) // 2 + 1
    assert w.embeddings.dtype == np.float32
    assert w.embeddings.shape == (w.n_windows, pipe.model.embedding_dim)
    assert w.quality.shape == w.accepted.shape == (w.n_windows,)
    assert len(w.reasons) == w.n_windows
    assert all((r == "") == a for r, a in zip(w.reasons, w.accepted))
    norms = np.linalg.norm(w.embeddings[w.accepted], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert w.seconds == pytest.approx(24.0)
    np.testing.assert_allclose(w.starts_s, np.arange(w.n_windows) * 2.0)
    w4 = pipe.windows(x, sf, ch, hop_s=4.0)
    assert w4.n_windows == 6


def test_hot_path_matches_feature_estimators(pipe, recs):
    m = pipe.model
    x, sf, ch = _block(recs["S022", "R07"])
    ep, q, acc, reasons, _, _ = pipe.epochs(x, sf, ch)
    ref = l2_normalize(m.projection.transform(m.tangent.transform(m.covariances.transform(ep))))
    got = pipe.windows(x, sf, ch).embeddings
    np.testing.assert_allclose(got[acc], ref[acc], atol=2e-6)


def test_channel_selection_by_name_any_order_and_spelling(pipe, recs):
    x, sf, ch = _block(recs["S023", "R07"])
    base = pipe.windows(x, sf, ch).embeddings
    perm = np.random.default_rng(0).permutation(len(ch))
    names = ["EEG " + ch[i].strip(".").upper() + "-REF" for i in perm]
    again = pipe.windows(np.ascontiguousarray(x[:, perm]), sf, names).embeddings
    np.testing.assert_allclose(again, base, atol=1e-6)


def test_old_10_20_names_are_the_model_channels(pipe, recs):
    x, sf, ch = _block(recs["S023", "R07"])
    base = pipe.windows(x, sf, ch).embeddings
    old = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
    names = [f"EEG {old.get(c.strip('.'), c.strip('.'))}-LE" for c in ch]
    assert sum(n[4:6] in ("T3", "T4", "T5", "T6") for n in names) == 4
    np.testing.assert_allclose(pipe.windows(x, sf, names).embeddings, base, atol=1e-6)


def test_a_model_channel_sent_twice_is_refused(pipe, recs):
    """T3 next to T7 (one electrode under its old and new name): the pipeline read the
    first of them and dropped the other without a word."""
    x, sf, ch = _block(recs["S023", "R07"])
    t7 = next(i for i, c in enumerate(ch) if c.strip(".") == "T7")
    x2 = np.ascontiguousarray(np.hstack([x[:, [t7]] * 0.5, x]))
    with pytest.raises(InvalidArgument, match=r"names the model's channel T7 \(written 'T3' "
                                              r"and 'T7\.\.'\)"):
        pipe.windows(x2, sf, ["T3", *ch])


def test_dc_offsets_do_not_ring(pipe, recs):
    x, sf, ch = _block(recs["S021", "R07"])
    offsets = np.random.default_rng(1).uniform(-60000, 60000, size=x.shape[1])
    a = pipe.windows(x, sf, ch)
    b = pipe.windows(x + offsets, sf, ch)
    assert np.array_equal(a.accepted, b.accepted)
    cos = np.sum(a.embeddings * b.embeddings, axis=1)[a.accepted]
    assert cos.min() > 0.999


def test_any_rate_is_resampled(pipe, recs):
    from scipy.signal import resample_poly

    x, sf, ch = _block(recs["S024", "R07"])
    base = pipe.windows(x, sf, ch)
    for rate, (up, down) in ((250.0, (25, 16)), (500.0, (25, 8)), (128.0, (4, 5))):
        y = resample_poly(x, up, down, axis=0)
        w = pipe.windows(y, rate, ch)
        assert w.n_windows == base.n_windows
        ok = w.accepted & base.accepted
        cos = np.sum(w.embeddings * base.embeddings, axis=1)[ok]
        assert np.median(cos) > 0.9, rate


@pytest.mark.parametrize("sfreq", [100.0, 124.9, 1000.5, 2048.0, float("nan")])
def test_rate_out_of_range(pipe, recs, sfreq):
    x, _, ch = _block(recs["S021", "R07"])
    with pytest.raises(InvalidArgument, match="125–1000 Hz"):
        pipe.windows(x, sfreq, ch)


def test_bad_input_errors(pipe, recs):
    x, sf, ch = _block(recs["S021", "R07"])
    with pytest.raises(InvalidArgument, match="missing O1, O2"):
        pipe.windows(x, sf, [c if not c.startswith("O") else "X" + c for c in ch])
    with pytest.raises(InvalidArgument, match="too short"):
        pipe.windows(x[:300], sf, ch)
    with pytest.raises(InvalidArgument, match="too short"):
        pipe.windows(x[:0], sf, ch)
    nan = np.full_like(x, np.nan)
    with pytest.raises(InvalidArgument, match="all NaN"):
        pipe.windows(nan, sf, ch)
    railed = np.where(np.arange(x.shape[0])[:, None] % 2 == 0, 187500.0, -187500.0) + 0 * x
    with pytest.raises(InvalidArgument, match="railed"):
        pipe.windows(railed, sf, ch)
    with pytest.raises(InvalidArgument, match="time-major"):
        pipe.windows(x.T.copy(), sf, ch)
    with pytest.raises(InvalidArgument, match="dtype"):
        pipe.windows(x.astype(np.int32), sf, ch)
    with pytest.raises(InvalidArgument, match="2-D"):
        pipe.windows(x[:, 0], sf, ch)


def test_gate_rejects_broken_windows_with_reasons(pipe, recs):
    x, sf, ch = _block(recs["S021", "R07"])
    x = x.copy()
    o1 = [i for i, c in enumerate(ch) if c.strip(".") == "O1"][0]
    x[int(9 * sf):int(9.5 * sf), o1] = np.nan  # dropped samples inside windows 3, 4
    fp1 = [i for i, c in enumerate(ch) if c.strip(".") == "Fp1"][0]
    x[int(17 * sf):, fp1] = 187500.0  # railed from 17 s on
    w = pipe.windows(x, sf, ch)
    assert not w.accepted[3] and not w.accepted[4]
    assert "non-finite on O1" in w.reasons[3]
    assert not w.accepted[-1] and "Fp1" in w.reasons[-1]
    assert w.accepted[0]


@pytest.mark.parametrize("backend", ["cython", "numba", "reference"])
def test_a_step_that_never_reaches_the_rail_is_not_railed(recs, backend):
    """RAILED is the raw signal's (module docstring, step 5; nacf_core.artifacts): the
    filtered windows were checked against the rail level too, so a 200 mV step of a
    channel whose raw samples stay within +-100 mV (an electrode pop) overshot it after
    the band-pass and the windows were rejected as 'railed on O1', telling the user the
    amplifier clipped; they are peak-to-peak (still rejected)."""
    pipe = Pipeline(default_model(16), backend=backend)
    x, sf, ch = _block(recs["S021", "R07"])
    x = x.copy()
    o1 = [i for i, c in enumerate(ch) if c.strip(".") == "O1"][0]
    x[:, o1] -= 100_000.0
    x[int(10 * sf):, o1] += 200_000.0
    assert np.abs(x).max() < 187_000.0
    w = pipe.windows(x, sf, ch)
    bad = [r for r in w.reasons if r]
    assert bad and not w.accepted[4] and not w.accepted[5]
    assert all(r == "peak-to-peak on O1" for r in bad), bad
    x[int(20 * sf):int(20.1 * sf), o1] = 187_500.0  # clipped for real: raw says RAILED
    w = pipe.windows(x, sf, ch)
    assert "railed on O1" in w.reasons[9]


def test_enroll_template_and_bytes(pipe, templates):
    t = templates["S021"]
    assert isinstance(t, Template)
    assert t.embedding.shape == (pipe.model.embedding_dim,) and t.embedding.dtype == np.float32
    assert abs(np.linalg.norm(t.embedding) - 1) < 1e-5
    assert t.model_version == pipe.model_version
    assert t.n_epochs + t.n_rejected == 29
    t2 = Template.from_bytes(t.to_bytes())
    np.testing.assert_array_equal(t2.embedding, t.embedding)
    assert (t2.model_version, t2.n_epochs, t2.rejected) == (t.model_version, t.n_epochs, t.rejected)
    for bad in (b"", b"NACFTPL1", t.to_bytes()[:-4], b"X" + t.to_bytes()[1:]):
        with pytest.raises(InvalidArgument):
            Template.from_bytes(bad)


def test_enroll_too_few_good_windows(pipe, recs):
    x, sf, ch = _block(recs["S021", "R03"])
    with pytest.raises(FailedPrecondition, match=r"at least 10 good 4-s windows.*got 6 of 6"):
        pipe.enroll([(x[: int(14 * sf)], sf, ch)])
    with pytest.raises(InvalidArgument, match="empty"):
        pipe.enroll([])


def test_verify_genuine_beats_impostors(pipe, recs, templates):
    scores = np.zeros((4, 4))
    for i, s in enumerate(DEMO):
        x, sf, ch = _block(recs[s, "R07"])
        for j, u in enumerate(DEMO):
            d = pipe.verify(x[: int(12 * sf)], sf, ch, templates[u])
            assert isinstance(d, Decision)
            assert d.model_version == pipe.model_version and d.seconds == pytest.approx(12)
            assert d.threshold == pipe.model.threshold_for(d.windows_used)
            assert d.accepted == (d.score >= d.threshold)
            scores[i, j] = d.score
    # every genuine score beats every impostor score of the same probe
    assert np.all(np.diag(scores)[:, None] >= scores)
    assert np.all(scores[~np.eye(4, dtype=bool)] < max(pipe.model.thresholds))


def test_template_of_other_model_is_refused(pipe, templates):
    t = Template.from_bytes(templates["S021"].to_bytes())
    t.model_version = "other-00000000"
    x = np.zeros((1000, 16))
    with pytest.raises(InvalidArgument, match="re-enroll"):
        pipe.verify(x, 160.0, pipe.model.ch_names, t)


def test_identify_top_k(pipe, recs, templates):
    T = np.stack([templates[s].embedding for s in DEMO])
    for s in DEMO:
        x, sf, ch = _block(recs[s, "R07"])
        res = pipe.identify(x, sf, ch, T, DEMO, k=2)
        assert [c.user_id for c in res.candidates][0] == s
        assert res.candidates[0].score >= res.candidates[1].score
        assert res.windows_used > 0
    with pytest.raises(InvalidArgument, match="'k'"):
        pipe.identify(x, sf, ch, T, DEMO, k=5)
    with pytest.raises(InvalidArgument, match="user_ids"):
        pipe.identify(x, sf, ch, T, DEMO[:3], k=1)


def test_adaptation_is_bounded(pipe, templates):
    t = templates["S021"]
    rng = np.random.default_rng(0)
    probe = l2_normalize(rng.normal(size=t.embedding.shape))
    d = Decision(True, 0.99, 0.5, 1.0, [], pipe.model_version, 3, 12.0, 3, probe)
    cur = t
    for _ in range(50):
        cur = pipe.adapt(cur, d, rate=0.5, max_drift=0.05)
    assert cur.n_updates == 50
    assert float(cur.embedding @ t.anchor) >= 0.95 - 1e-5
    assert float(cur.embedding @ t.embedding) < 0.999  # it did move
    # no update without a confident accept
    for dd in (Decision(False, 0.9, 0.5, 1.0, [], pipe.model_version, 3, 12.0, 3, probe),
               Decision(True, 0.52, 0.5, 1.0, [], pipe.model_version, 3, 12.0, 3, probe)):
        assert pipe.adapt(t, dd) is t
    with pytest.raises(InvalidArgument, match="rate"):
        pipe.adapt(t, d, rate=0.0)


def test_single_window_fast_path_matches_batch(pipe, recs):
    x, sf, ch = _block(recs["S024", "R07"])
    ep, _, acc, _, _, _ = pipe.epochs(x, sf, ch)
    batch = pipe._embed(ep[acc][:3])
    for k in range(3):
        np.testing.assert_allclose(pipe._embed(ep[acc][k:k + 1])[0], batch[k], atol=1e-6)


@pytest.mark.numba_kernels
def test_compiled_single_window_embedding_matches_numpy(pipe, recs):
    """The one-call embedding kernel equals the NumPy computation on real windows (to
    float32 rounding; in practice bit for bit), and a whole window set through the
    service path equals the batch path."""
    n = 0
    for key in (("S024", "R07"), ("S022", "R07"), ("S021", "R07")):
        x, sf, ch = _block(recs[key])
        ep, _, acc, _, _, _ = pipe.epochs(x, sf, ch)
        for e in ep[acc][:4]:
            got, want = pipe._embed_one(e), pipe._embed_one_numpy(e)
            assert got.dtype == want.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
            n += 1
    assert n >= 8


def test_real_cyton_recording_at_250_hz(shared_data):
    """A real Cyton file (250 Hz, large DC offsets) through the 8-channel model: resampled
    to 160 Hz, band-passed without ringing, most windows pass the gate."""
    from nacf_core.hardware.files import read_recording

    rec = read_recording(shared_data / "openbci" / "brainflow-csv" / "EyesSubject1Session2.csv")
    assert rec.sfreq == 250.0 and np.abs(np.median(rec.data, axis=0)).max() > 1000
    p8 = Pipeline(default_model(8))
    w = p8.windows(rec.data, rec.sfreq, rec.ch_names)
    assert w.n_windows == int((rec.data.shape[0] / 250.0 - 4) // 2) + 1
    assert w.n_accepted >= 0.8 * w.n_windows
    assert np.all(np.isfinite(w.embeddings))


def test_reason_codes_stay_in_the_declared_set_whatever_the_reason():
    """Every code ``reason_codes`` can return is in ``REASON_CODES``, the set metric
    labels and tests check against; ``other`` (a reason it does not know) was not."""
    from nacf_core.pipeline import REASON_CODES, reason_codes

    assert reason_codes("flat on Fp1, Fp2; jump on O1") == ["flat", "jump"]
    assert reason_codes("quality 0.10 below 0.30") == ["low_quality"]
    assert reason_codes("") == []
    for reason in ("flat on Fp1; something new on O1", "unheard of", "peak-to-peak on C3"):
        assert set(reason_codes(reason)) <= set(REASON_CODES), reason
    assert reason_codes("peak-to-peak on C3") == ["peak_to_peak"]


def _template_bytes(header_changes=None, emb=None, anchor=None) -> bytes:
    """A template's bytes with header fields changed (``KeyError``: removed)."""
    import json
    import struct

    e = l2_normalize(np.arange(1.0, 9.0)) if emb is None else np.asarray(emb, np.float64)
    a = e if anchor is None else np.asarray(anchor, np.float64)
    h = {"model_version": "m-1234abcd", "dim": len(e), "n_epochs": 12, "quality": 0.8,
         "n_rejected": 1, "rejected": {"flat on O1": 1}, "n_updates": 0}
    for k, v in (header_changes or {}).items():
        if v is KeyError:
            h.pop(k)
        else:
            h[k] = v
    hb = json.dumps(h).encode()
    return (b"NACFTPL1" + struct.pack("<I", len(hb)) + hb
            + e.astype("<f4").tobytes() + a.astype("<f4").tobytes())


def test_template_bytes_helper_gives_a_template():
    t = Template.from_bytes(_template_bytes())
    assert (t.model_version, t.n_epochs, t.n_rejected, t.rejected) == (
        "m-1234abcd", 12, 1, {"flat on O1": 1})


@pytest.mark.parametrize("changes, message", [
    # KeyError 'model_version' / 'n_epochs', not InvalidArgument
    ({"model_version": KeyError}, "field 'model_version' is missing"),
    ({"n_epochs": KeyError}, "field 'n_epochs' is missing"),
    ({"quality": KeyError}, "field 'quality' is missing"),
    ({"model_version": 5}, "field 'model_version' must be a printable string"),
    ({"model_version": ""}, "field 'model_version' must be a printable string"),
    ({"n_epochs": "many"}, r"field 'n_epochs' must be an integer >= 1, got 'many'"),
    ({"n_epochs": 0}, r"field 'n_epochs' must be an integer >= 1, got 0"),
    ({"n_epochs": 2.5}, r"field 'n_epochs' must be an integer >= 1"),
    ({"n_rejected": -1}, r"field 'n_rejected' must be an integer >= 0"),
    ({"n_updates": "x"}, r"field 'n_updates' must be an integer >= 0"),
    ({"quality": "good"}, r"field 'quality' must be a number in \[0, 1\]"),
    ({"quality": 7.0}, r"field 'quality' must be a number in \[0, 1\]"),
    ({"rejected": [1, 2]}, r"field 'rejected' must be an object of reason: count"),
    ({"rejected": {"flat": -3}}, r"field 'rejected' must be an object of reason: count"),
    ({"dim": 0}, r"field 'dim' must be an integer >= 1, got 0"),
    ({"dim": True}, r"field 'dim' must be an integer >= 1"),
])
def test_template_header_with_wrong_fields(changes, message):
    with pytest.raises(InvalidArgument, match=f"template data has a corrupt header: {message}"):
        Template.from_bytes(_template_bytes(changes))


def test_template_header_not_an_object():
    import struct

    data = b"NACFTPL1" + struct.pack("<I", 2) + b"[]"
    with pytest.raises(InvalidArgument, match="corrupt header: not a JSON object"):
        Template.from_bytes(data)


@pytest.mark.parametrize("emb, anchor, what", [
    (np.zeros(8), None, "embedding"),
    (np.full(8, 3.0), None, "embedding"),
    (None, np.zeros(8), "anchor"),
])
def test_template_embedding_not_unit_norm(emb, anchor, what):
    # a zero embedding scored 0 against every probe: the user could never authenticate
    with pytest.raises(InvalidArgument, match=f"template data is corrupt: its {what} has norm "
                                              r"[0-9.]+, expected 1"):
        Template.from_bytes(_template_bytes(emb=emb, anchor=anchor))
