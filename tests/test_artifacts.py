"""Public artifact/quality layer: validation, the raw+filtered combination, real recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal

from nacf_core import artifacts
from nacf_core.artifacts import ArtifactLimits, ArtifactReason, detect_artifacts, quality
from nacf_core.kernels import _quality_params as qp

BACKENDS = ["reference", "numba", "cython"]
R = ArtifactReason


def _epochs(rng, shape=(3, 4, 500), scale=20.0, dtype=np.float64):
    return np.ascontiguousarray(rng.normal(0.0, scale, shape).astype(dtype))


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "epochs, exc, words",
    [
        (np.zeros((4, 100)), ValueError, ["'epochs'", "3-D", "2-D"]),
        (np.zeros((2, 4, 100), dtype=np.int32), TypeError, ["'epochs'", "float32", "int32"]),
        (np.zeros((2, 4, 100))[:, :, ::2], ValueError, ["'epochs'", "C-contiguous"]),
        ([[[0.0]]], TypeError, ["'epochs'", "numpy.ndarray", "list"]),
    ],
)
def test_detect_rejects_bad_epochs(epochs, exc, words):
    with pytest.raises(exc) as info:
        detect_artifacts(epochs, 250.0, backend="reference")
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("sfreq", [float("nan"), -250.0, 0.0, float("inf")])
def test_detect_rejects_bad_sfreq(sfreq):
    with pytest.raises(ValueError, match="'sfreq'"):
        detect_artifacts(np.zeros((1, 1, 10)), sfreq, backend="reference")
    with pytest.raises(ValueError, match="'sfreq'"):
        quality(np.zeros((1, 1, 10)), sfreq, backend="reference")


def test_detect_rejects_bad_limits():
    x = np.zeros((1, 1, 10))
    with pytest.raises(TypeError, match="'limits'.*ArtifactLimits.*dict"):
        detect_artifacts(x, 250.0, {"rail_uv": 1.0}, backend="reference")
    with pytest.raises(ValueError, match="'limits.flat_uv'.*>= 0.*-1"):
        detect_artifacts(x, 250.0, ArtifactLimits(flat_uv=-1.0), backend="reference")
    with pytest.raises(ValueError, match="'limits.jump_uv'.*nan"):
        detect_artifacts(x, 250.0, ArtifactLimits(jump_uv=float("nan")), backend="reference")
    with pytest.raises(ValueError, match="'limits.rail_fraction'.*\\[0, 1\\].*2"):
        detect_artifacts(x, 250.0, ArtifactLimits(rail_fraction=2.0), backend="reference")
    with pytest.raises(TypeError, match="'limits.rail_uv'.*real number"):
        detect_artifacts(x, 250.0, ArtifactLimits(rail_uv="big"), backend="reference")


def test_detect_rejects_bad_raw_and_backend():
    x = np.zeros((2, 3, 10))
    with pytest.raises(ValueError, match="'raw'.*shape of 'epochs'"):
        detect_artifacts(x, 250.0, raw=np.zeros((2, 3, 11)), backend="reference")
    with pytest.raises(TypeError, match="'raw'.*float32"):
        detect_artifacts(x, 250.0, raw=np.zeros((2, 3, 10), dtype=np.int16),
                         backend="reference")
    with pytest.raises(ValueError, match="'name'.*'cython'.*'fortran'"):
        detect_artifacts(x, 250.0, backend="fortran")


def test_quality_rejects_bad_reason():
    x = np.zeros((2, 3, 10))
    with pytest.raises(TypeError, match="'reason'.*int8.*int64"):
        quality(x, 250.0, np.zeros((2, 3), dtype=np.int64), backend="reference")
    with pytest.raises(ValueError, match="'reason'.*shape \\(2, 3\\).*\\(3, 2\\)"):
        quality(x, 250.0, np.zeros((3, 2), dtype=np.int8), backend="reference")
    with pytest.raises(ValueError, match="'reason'.*codes 0..5.*got 9"):
        quality(x, 250.0, np.full((2, 3), 9, dtype=np.int8), backend="reference")


def test_aliases_and_reexports():
    assert artifacts.reject_artifacts is detect_artifacts
    assert artifacts.score_quality is quality
    assert artifacts.ArtifactReason is R
    assert set(artifacts.__all__) >= {"detect_artifacts", "reject_artifacts", "quality",
                                      "score_quality", "ArtifactLimits", "ArtifactReason"}


def test_quality_docstring_matches_constants():
    doc = quality.__doc__
    assert qp.LINE_FREQS == (50.0, 60.0)
    assert f"(rms - {qp.FLAT_RMS_UV}) / ({qp.GOOD_RMS_UV} - {qp.FLAT_RMS_UV})" in doc
    mx, good = int(qp.MAX_P2P_UV), int(qp.GOOD_P2P_UV)
    assert f"({mx} - p2p) / ({mx} - {good})" in doc
    assert ArtifactLimits().peak_to_peak_uv == qp.MAX_P2P_UV


# --------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_reason_and_priority(backend):
    rng = np.random.default_rng(1)
    x = _epochs(rng, (1, 7, 400))
    x[0, 1, 10] = np.nan
    x[0, 1, 20] = 187_500.0          # NaN wins over the rail
    x[0, 2, 5] = -187_500.02         # one railed sample: RAILED (and also p2p, jump)
    x[0, 3] = 0.0                    # zeroed channel
    x[0, 4, 200:] += 400.0           # step: p2p > 500 and a jump of ~400
    x[0, 5] = np.sin(np.arange(400) / 3.0) * 240  # p2p 480, steps < 200: OK
    x[0, 6, 100] += 300.0            # a single spike: jump > 200 (p2p < 500)
    reason = detect_artifacts(x, 250.0, backend=backend)
    assert reason.dtype == np.int8 and reason.shape == (1, 7)
    assert reason.tolist() == [[R.OK, R.NON_FINITE, R.RAILED, R.FLAT, R.PEAK_TO_PEAK, R.OK,
                                R.JUMP]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_feeds_rail_and_nonfinite(backend):
    rng = np.random.default_rng(2)
    filtered = _epochs(rng, (2, 3, 300))
    filtered[0, 0] *= 40.0             # a PEAK_TO_PEAK channel in both
    raw = filtered + 60_000.0          # the DC offset the bandpass removed
    raw[0, 1, :40] = -187_500.02       # railed in raw only (the bandpass flattened it)
    raw[1, 2, 7] = np.inf              # non-finite in raw only
    raw = np.ascontiguousarray(raw)
    alone = detect_artifacts(filtered, 250.0, backend=backend)
    both = detect_artifacts(filtered, 250.0, raw=raw, backend=backend)
    assert both[0, 1] == R.RAILED and alone[0, 1] == R.OK
    assert both[1, 2] == R.NON_FINITE and alone[1, 2] == R.OK
    assert both[0, 0] == alone[0, 0] == R.PEAK_TO_PEAK
    keep = np.ones_like(both, dtype=bool)
    keep[0, 1] = keep[1, 2] = False
    assert (both[keep] == alone[keep]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_big_endian_epochs_give_what_native_ones_give(backend, dtype):
    """The dtype check looks at the number type only, so big-endian epochs ('>f8', as
    a .npy or .mat file written on another machine holds them) passed validation, then
    the compiled backends failed: Cython with 'Big-endian buffer not supported on
    little-endian compiler', Numba with a TypingError page; the reference took them."""
    rng = np.random.default_rng(7)
    x = _epochs(rng, (2, 3, 300), dtype=dtype)
    x[0, 1, 5] = np.nan
    x[1, 2] = 0.0
    raw = np.ascontiguousarray(x + 60_000.0)
    raw[1, 0, :3] = -187_500.02
    big, big_raw = x.astype(x.dtype.newbyteorder(">")), raw.astype(raw.dtype.newbyteorder(">"))
    want = detect_artifacts(x, 250.0, raw=raw, backend=backend)
    np.testing.assert_array_equal(detect_artifacts(big, 250.0, raw=big_raw, backend=backend),
                                  want)
    np.testing.assert_array_equal(detect_artifacts(big, 250.0, backend=backend),
                                  detect_artifacts(x, 250.0, backend=backend))
    for got, expected in zip(quality(big, 250.0, backend=backend),
                             quality(x, 250.0, backend=backend)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_quality_formula_cases(backend):
    sfreq, n = 250.0, 1000
    t = np.arange(n) / sfreq
    rng = np.random.default_rng(3)
    clean = rng.normal(0, 15, n)
    x = np.stack([clean,                                       # clean: ~1
                  clean + 40 * np.sin(2 * np.pi * 50 * t),     # 50 Hz: line ratio ~0.78
                  clean + 40 * np.sin(2 * np.pi * 60 * t),     # 60 Hz
                  np.full(n, 3.0),                              # constant: q_flat 0
                  clean * 0.1,                                  # rms 1.5 µV: q_flat ~2/3
                  clean * 8])[None]                             # p2p > 500: q_range 0
    reason = np.zeros((1, 6), dtype=np.int8)
    pc, pe = quality(x, sfreq, reason, backend=backend)
    assert pc.shape == (1, 6) and pe.shape == (1,)
    assert ((pc >= 0) & (pc <= 1)).all()
    assert pc[0, 0] > 0.95
    line_share = 40**2 / 2 / (40**2 / 2 + 15**2)
    assert pc[0, 1] == pytest.approx(1 - line_share, abs=0.03)
    assert pc[0, 2] == pytest.approx(1 - line_share, abs=0.03)
    assert pc[0, 3] == 0.0
    assert pc[0, 4] == pytest.approx((1.5 - 0.5) / 1.5, abs=0.05)
    assert pc[0, 5] == 0.0
    assert pe[0] == pytest.approx(pc[0].mean())
    # Artifact codes zero their channel; the epoch score falls with the artifact fraction.
    reason[0, 0] = R.JUMP
    pc2, pe2 = quality(x, sfreq, reason, backend=backend)
    assert pc2[0, 0] == 0.0 and pe2[0] == pytest.approx(pc2[0].mean())
    # Without reason, the default detector runs first.
    pc3, _ = quality(x, sfreq, backend=backend)
    np.testing.assert_allclose(
        pc3, np.where(detect_artifacts(x, sfreq, backend=backend) == 0, pc, 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_quality_skips_line_freqs_above_nyquist(backend):
    sfreq, n = 110.0, 440   # Nyquist 55 Hz: 50 Hz counts, 60 Hz does not exist
    t = np.arange(n) / sfreq
    x = np.random.default_rng(4).normal(0, 10, (1, 1, n)) + 30 * np.sin(2 * np.pi * 50 * t)
    pc, _ = quality(np.ascontiguousarray(x), sfreq, np.zeros((1, 1), np.int8), backend=backend)
    assert pc[0, 0] < 0.3


# --------------------------------------------------------------------------- real recordings
def _read_openbci(path: Path) -> tuple[np.ndarray, float]:
    """(n_times, 8) µV and sfreq from an OpenBCI GUI text file."""
    try:
        from nacf_core.hardware.files import read_recording
    except ImportError:  # the hardware reader not there: a tiny local parser
        rows = []
        for line in path.read_text().splitlines():
            parts = line.split(",")
            if line.startswith("%") or len(parts) < 9:
                continue
            try:
                rows.append([float(v) for v in parts[1:9]])
            except ValueError:
                continue
        return np.asarray(rows), 250.0
    rec = read_recording(path)
    return np.asarray(rec.data, dtype=np.float64), float(rec.sfreq)


def _raw_epochs(data: np.ndarray, n_times: int = 1000) -> np.ndarray:
    n = data.shape[0] // n_times
    return np.ascontiguousarray(
        data[: n * n_times].T.reshape(data.shape[1], n, n_times).transpose(1, 0, 2))


def _bandpassed_epochs(data: np.ndarray, sfreq: float) -> np.ndarray:
    sos = scipy.signal.butter(4, [1.0, 40.0], btype="band", fs=sfreq, output="sos")
    zi = scipy.signal.sosfilt_zi(sos)[:, :, None] * data[:1]
    y, _ = scipy.signal.sosfilt(sos, data, axis=0, zi=zi)
    return _raw_epochs(y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_zeroed_channels_are_flat(shared_data, backend):
    data, sfreq = _read_openbci(shared_data / "openbci/gui/OpenBCI-RAW-2016-07-21_17-46-29.txt")
    raw = _raw_epochs(data)
    reason = detect_artifacts(_bandpassed_epochs(data, sfreq), sfreq, raw=raw, backend=backend)
    zeroed = [0, 2, 3, 4, 5, 6, 7]
    assert (reason[:, zeroed] == R.FLAT).all()
    assert (reason[:, 1] != R.FLAT).all()
    pc, pe = quality(_bandpassed_epochs(data, sfreq), sfreq, reason, backend=backend)
    assert (pc[:, zeroed] == 0).all() and (pe <= 1 / 8 + 1e-12).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, railed",
    [
        # (epoch, channel) pairs whose raw samples reach the Cyton rail (±187 500 µV)
        ("cyton-eyes/OpenBCI-RAW-EyesOpen.txt", {(0, 6), (1, 6), (2, 6), (3, 6), (3, 7)}),
        ("gui/OpenBCI-RAW-2016-07-27_14-10-53.txt", {(2, 4), (3, 6), (3, 7), (4, 7)}),
    ],
)
def test_real_railed_channels(shared_data, backend, name, railed):
    data, sfreq = _read_openbci(shared_data / "openbci" / name)
    data = data[: 6 * 1000]
    raw = _raw_epochs(data)
    filtered = _bandpassed_epochs(data, sfreq)
    reason = detect_artifacts(filtered, sfreq, raw=raw, backend=backend)
    found = {tuple(int(v) for v in ij) for ij in np.argwhere(reason == R.RAILED)}
    assert found == railed
    # On the raw signal alone the rail test finds the same channels.
    alone = detect_artifacts(raw, sfreq, backend=backend)
    assert {tuple(int(v) for v in ij) for ij in np.argwhere(alone == R.RAILED)} == railed


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_clean_recording_mostly_ok(shared_data, backend):
    data, sfreq = _read_openbci(
        shared_data / "openbci/gui/OpenBCI_GUI-v6-blinks-jawClench-alpha.txt")
    data = data[: 10 * 1000]
    filtered = _bandpassed_epochs(data, sfreq)
    reason = detect_artifacts(filtered, sfreq, raw=_raw_epochs(data), backend=backend)
    assert (reason == R.OK).mean() >= 0.8
    # This recording carries strong 60 Hz mains noise: about half of what the 1-40 Hz
    # bandpass lets through.  The line term sees it, and a 60 Hz notch restores it.
    pc, pe = quality(filtered, sfreq, reason, backend=backend)
    assert 0.2 < np.median(pc[reason == R.OK]) < 0.7
    assert ((pe >= 0) & (pe <= 1)).all()
    b, a = scipy.signal.iirnotch(60.0, 30.0, fs=sfreq)
    notched = _bandpassed_epochs(scipy.signal.filtfilt(b, a, data, axis=0), sfreq)
    pc2, pe2 = quality(notched, sfreq, reason, backend=backend)
    assert np.median(pc2[reason == R.OK]) > 0.9
    assert (pe2 > pe).all()
