"""FileSource: a recording replayed as a live source."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nacf_core.hardware.files import Recording, read_recording, write_npz
from nacf_core.hardware.playback import FileSource

V6 = "openbci/gui/OpenBCI_GUI-v6-blinks-jawClench-alpha.txt"
EDF = "eegmmidb/S001/S001R01.edf"


def _drain(src, timeout=5.0):
    chunks = []
    while (c := src.read_chunk(timeout=timeout)) is not None:
        chunks.append(c)
    return chunks


def test_fast_replay_delivers_the_whole_file_in_order(shared_data):
    rec = read_recording(shared_data / V6, stop_s=30)
    with FileSource(rec, speed=0, chunk_s=0.1) as src:
        assert src.sfreq == 250.0 and len(src.ch_names) == 8
        chunks = _drain(src)
        assert src.read_chunk(0) is None  # stays at the end
    assert all(c.n_times == 25 for c in chunks)
    data = np.concatenate([c.samples for c in chunks])
    assert data.dtype == np.float32 and data.shape == rec.data.shape
    np.testing.assert_array_equal(data, rec.data.astype(np.float32))
    ts = np.concatenate([c.timestamps for c in chunks])
    np.testing.assert_allclose(np.diff(ts), 1 / 250.0, atol=1e-6)
    assert abs(ts[0] - time.time()) < 60
    assert src.counters.ok == rec.n_times and src.counters.dropped == 0


def test_real_time_pacing_and_speed(shared_data):
    path = shared_data / EDF
    with FileSource(path, speed=1.0, chunk_s=0.05, stop_s=0.5) as src:
        t = time.monotonic()
        n = sum(c.n_times for c in _drain(src))
        elapsed = time.monotonic() - t
    assert n == 80  # 0.5 s at 160 Hz
    assert 0.4 <= elapsed < 3.0  # not faster than real time
    with FileSource(path, speed=10.0, stop_s=2.0) as src:
        t = time.monotonic()
        n = sum(c.n_times for c in _drain(src))
        elapsed = time.monotonic() - t
    assert n == 320 and 0.15 <= elapsed < 3.0


def test_timeout_gives_an_empty_chunk_before_data_is_due(shared_data):
    with FileSource(shared_data / EDF, speed=0.01, stop_s=1.0) as src:
        first = src.read_chunk(timeout=2.0)  # 1 sample due after 1/1.6 s
        assert first.n_times >= 1
        empty = src.read_chunk(timeout=0.01)
        assert empty.n_times == 0 and empty.samples.shape == (0, 64)


def test_nan_rows_are_counted_as_dropped_and_loop(tmp_path):
    data = np.arange(40, dtype=np.float64).reshape(20, 2)
    data[5] = np.nan
    p = write_npz(tmp_path / "r.npz", data, 100.0, ["C3", "C4"])
    with FileSource(p, speed=0, chunk_s=0.07, montage=["a", "b"]) as src:
        chunks = _drain(src)
    assert chunks[0].ch_names == ["a", "b"]
    assert src.counters.dropped == 1 and src.counters.ok == 19
    assert np.isnan(np.concatenate([c.samples for c in chunks])[5]).all()
    with FileSource(p, speed=0, chunk_s=0.07, loop=True) as src:
        got = np.concatenate([src.read_chunk().samples for _ in range(7)])
    assert got.shape[0] == 49
    np.testing.assert_array_equal(got[20:40], data.astype(np.float32))


def test_errors(tmp_path, shared_data):
    with pytest.raises(ValueError, match="'speed' must be"):
        FileSource(shared_data / EDF, speed=-1)
    with pytest.raises(ValueError, match="'chunk_s' must be"):
        FileSource(shared_data / EDF, chunk_s=0)
    with pytest.raises(FileNotFoundError):
        FileSource(tmp_path / "missing.edf")
    src = FileSource(shared_data / EDF, speed=0, stop_s=1)
    with src:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        src.read_chunk()


def test_a_file_with_a_bad_rate_is_a_clear_error_not_a_crash(tmp_path):
    from nacf_core.hardware.sources import open_source

    rows = "\n".join(f"{i}, " + ", ".join(["1.0"] * 8) for i in range(50))
    for rate in ("0", "9" * 400):  # ZeroDivisionError / OverflowError before
        p = tmp_path / "o.txt"
        p.write_text(f"%OpenBCI Raw EEG Data\n%Sample Rate = {rate} Hz\n{rows}\n")
        with pytest.raises(ValueError, match=r"o\.txt'.*sampling rate must be a number of Hz"):
            with open_source(f"file:{p}") as src:
                src.read_chunk(timeout=0.5)


@pytest.mark.parametrize("sfreq", [0.0, float("inf"), float("nan"), 1e-300])
def test_a_recording_with_a_bad_rate_is_refused(sfreq):
    rec = Recording(data=np.zeros((10, 2)), sfreq=sfreq, ch_names=["a", "b"], path=None)
    with pytest.raises(ValueError,
                       match="^recording: the sampling rate must be a number of Hz from 1"):
        FileSource(rec)


def test_huge_chunk_s_hands_out_at_most_the_recording():
    rec = Recording(data=np.zeros((10, 2)), sfreq=250.0, ch_names=["a", "b"])
    with FileSource(rec, speed=0, chunk_s=1e300, loop=True) as src:  # OverflowError before
        assert src.read_chunk().n_times == 10


def test_waits_are_bounded_at_a_very_slow_speed(monkeypatch):
    from nacf_core.hardware import playback

    slept = []

    class Stop(Exception):
        pass

    def fake_sleep(s):
        slept.append(s)
        raise Stop

    rec = Recording(data=np.zeros((10, 2)), sfreq=250.0, ch_names=["a", "b"])
    with FileSource(rec, speed=1e-300) as src:
        monkeypatch.setattr(playback.time, "sleep", fake_sleep)
        with pytest.raises(Stop):
            src.read_chunk(timeout=None)  # time.sleep(4e297): OverflowError before
    assert 0 < slept[0] <= 1.0


def test_a_very_fast_speed_replays_as_fast_as_read(monkeypatch):
    from nacf_core.hardware import playback

    rec = Recording(data=np.arange(20.0).reshape(10, 2), sfreq=250.0, ch_names=["a", "b"])
    with FileSource(rec, speed=1e307) as src:
        later = src._mono0 + 1.0  # one second on: 2.5e309 samples due (inf as a float)
        monkeypatch.setattr(playback.time, "monotonic", lambda: later)
        chunk = src.read_chunk(timeout=0)  # OverflowError before
        np.testing.assert_array_equal(chunk.samples, rec.data[:10])
        assert src.read_chunk(timeout=0) is None
