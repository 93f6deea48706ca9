"""LSL end to end: an outlet in a subprocess, the inlet (LslSource) in the test."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pylsl
import pytest

from nacf_core.errors import Unavailable
from nacf_core.hardware.files import read_recording, write_npz
from nacf_core.hardware.lsl import LslSource, make_outlet

V6 = "openbci/gui/OpenBCI_GUI-v6-blinks-jawClench-alpha.txt"
MONTAGE = ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]


def _outlet_process(npz, name, *, speed=4.0, vanish_and_return=False):
    code = textwrap.dedent(
        f"""
        import time
        from nacf_core.hardware.files import read_recording
        from nacf_core.hardware.lsl import stream_recording_to_lsl
        rec = read_recording({str(npz)!r})
        n = stream_recording_to_lsl(rec, {name!r}, speed={speed}, wait_for_consumer_s=20,
                                    linger_s=1.0, source_id="sid-" + {name!r})
        print(n, flush=True)
        if {vanish_and_return}:
            time.sleep(0.5)   # the stream is gone; then it comes back (same source_id)
            n = stream_recording_to_lsl(rec, {name!r}, speed={speed}, wait_for_consumer_s=20,
                                        linger_s=1.0, source_id="sid-" + {name!r})
            print(n, flush=True)
        time.sleep(0.2)
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


@pytest.fixture
def short_npz(shared_data, tmp_path):
    rec = read_recording(shared_data / V6, start_s=10, stop_s=13, montage=MONTAGE)
    return write_npz(tmp_path / "slice.npz", rec.data, rec.sfreq, rec.ch_names), rec


def _read_all(src, limit_s=30.0):
    chunks, t = [], time.monotonic()
    while time.monotonic() - t < limit_s:
        c = src.read_chunk(timeout=0.5)
        if c is None:
            break
        if c.n_times:
            chunks.append(c)
    return chunks


def test_two_processes_on_loopback(short_npz):
    npz, rec = short_npz
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    proc = _outlet_process(npz, name)
    try:
        with LslSource(name=name, timeout=15, reconnect_s=0.3) as src:
            assert src.sfreq == 250.0
            assert src.ch_names == MONTAGE  # labels from the stream description
            chunks = _read_all(src)
            assert src.read_chunk(0.1) is None  # the outlet went away: the end
        assert proc.wait(20) == 0
        pushed = int(proc.stdout.read().split()[0])
    finally:
        proc.kill()
    data = np.concatenate([c.samples for c in chunks])
    assert pushed == rec.n_times == data.shape[0] == src.counters.ok
    np.testing.assert_array_equal(data, rec.data.astype(np.float32))
    ts = np.concatenate([c.timestamps for c in chunks])
    assert np.all(np.diff(ts) >= -1e-3)
    # mapped to this machine's LSL clock, and sent at 4x real time (3 s in ~0.75 s)
    assert pylsl.local_clock() - 30 < ts[0] < ts[-1] <= pylsl.local_clock()
    assert 0.3 < ts[-1] - ts[0] < 2.5
    assert abs(src.clock_offset) < 0.1
    assert src.counters.extra.get("lost") == 1


def test_stream_vanishes_and_comes_back(short_npz):
    npz, rec = short_npz
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    proc = _outlet_process(npz, name, speed=8.0, vanish_and_return=True)
    try:
        with LslSource(name=name, timeout=15, reconnect_s=15) as src:
            first = []
            while src.counters.reconnects == 0:
                c = src.read_chunk(timeout=1.0)
                assert c is not None
                first.append(c)
            src.reconnect_s = 0.3  # after the second run, end
            second = _read_all(src)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    n1 = sum(c.n_times for c in first)
    n2 = sum(c.n_times for c in second)
    assert n1 == rec.n_times  # everything from the first run
    assert 0 < n2 <= rec.n_times  # the second run (its start may race the reconnect)
    assert src.counters.reconnects == 1


def test_resolve_timeout_is_a_clear_error():
    name = f"nacf-absent-{uuid.uuid4().hex[:8]}"
    t = time.monotonic()
    msg = f"no LSL stream with name '{name}' answered within 0.3 s"
    with pytest.raises(Unavailable, match=msg):
        with LslSource(name=name, timeout=0.3):
            pass
    assert time.monotonic() - t < 5
    with pytest.raises(ValueError, match="'name' or 'type'"):
        LslSource()
    with pytest.raises(RuntimeError, match="not open"):
        LslSource(name="x").sfreq


def test_units_labels_and_type_resolution_in_process():
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    typ = f"EEGV{uuid.uuid4().hex[:6]}"
    info = pylsl.StreamInfo(name, typ, 2, 100.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_units(["V", "microvolts"])  # no labels
    outlet = pylsl.StreamOutlet(info)
    try:
        with LslSource(type=typ, timeout=10, montage="C3,C4") as src:
            assert src.ch_names == ["C3", "C4"] and src.sfreq == 100.0
            assert outlet.wait_for_consumers(10)
            x = np.array([[1e-5, 10.0], [2e-5, 20.0], [3e-5, 30.0]], np.float32)
            outlet.push_chunk(x)
            got = []
            t = time.monotonic()
            while sum(len(c) for c in got) < 3 and time.monotonic() - t < 10:
                c = src.read_chunk(timeout=0.5)
                got.append(c.samples)
        y = np.concatenate(got)
        np.testing.assert_allclose(y, [[10, 10], [20, 20], [30, 30]], rtol=1e-5)  # V -> uV
    finally:
        del outlet


@pytest.mark.parametrize("fmt", [pylsl.cf_double64, pylsl.cf_int16, pylsl.cf_int32])
def test_other_sample_formats(fmt):
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 3, 250.0, fmt, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz", "Oz"])
    outlet = pylsl.StreamOutlet(info)
    try:
        with LslSource(name=name, timeout=10) as src:
            assert src.ch_names == ["Cz", "Pz", "Oz"]
            assert outlet.wait_for_consumers(10)
            x = np.arange(60, dtype=np.float64).reshape(20, 3) - 30
            outlet.push_chunk(x)
            got, t = [], time.monotonic()
            while sum(len(c) for c in got) < 20 and time.monotonic() - t < 10:
                got.append(src.read_chunk(timeout=0.5).samples)
        y = np.concatenate(got)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, x)
    finally:
        del outlet


def test_make_outlet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'name'"):
        make_outlet("", ["a"], 250)
    with pytest.raises(ValueError, match="'sfreq'"):
        make_outlet("x", ["a"], 0)


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 1e300, 0.0, 0.02, 1e-300])
def test_bad_nominal_rate_is_refused_before_the_inlet(rate):
    """(A rate below 1 Hz was taken: liblsl sizes the inlet's buffer as max_buflen seconds
    of samples, none at 0.02 Hz, so nothing ever arrived; at 1e-300 Hz pull_chunk spun in
    liblsl past its timeout, the reader hung.)"""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 2, rate, pylsl.cf_float32,
                                                 f"sid-{name}"))
    if rate == 0:
        msg = f"LSL stream '{name}' has an irregular rate"
    elif math.isfinite(rate):
        msg = (rf"LSL stream '{name}' has an invalid nominal_srate {rate:g} Hz.*\[1, "
               r"100000\]").replace("+", r"\+")
    else:  # liblsl's resolver cannot parse the header: the stream is named by the query
        msg = f"LSL stream name '{name}' sent a header liblsl could not read.*NaN, infinite"
    try:
        with pytest.raises(ValueError, match=msg):
            with LslSource(name=name, timeout=10, reconnect_s=0):
                pass
    finally:
        del outlet


def test_a_stream_with_more_channels_than_nacf_reads_is_refused_before_the_inlet():
    """A stream of 257 channels was read, and every chunk of it then failed where the
    Signal's 256-channel limit is checked (the gRPC request), far from the cause."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 257, 250.0, pylsl.cf_float32,
                                                 f"sid-{name}"))
    try:
        with pytest.raises(ValueError, match=f"LSL stream '{name}' has 257 channels; nacf "
                                             "reads at most 256"):
            with LslSource(name=name, timeout=10, reconnect_s=0):
                pass
    finally:
        del outlet


def test_a_refused_stream_leaves_no_inlet_open(monkeypatch):
    """An inlet opened for a stream then refused (a montage naming more or fewer channels
    than it has, labels naming a channel twice) is closed, not left to the collector."""
    opened = []

    class Inlet(pylsl.StreamInlet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.closed = False
            opened.append(self)

        def close_stream(self):
            self.closed = True
            super().close_stream()

    monkeypatch.setattr(pylsl, "StreamInlet", Inlet)
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 3, 250.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Fp1", "Cz", "Fp1"])
    outlet = pylsl.StreamOutlet(info)
    try:
        for montage in ("C3,C4", None):  # 2 names for 3 channels; a label twice
            with pytest.raises(ValueError):
                with LslSource(name=name, timeout=10, reconnect_s=0, montage=montage):
                    pass
        assert len(opened) == 2 and all(i.closed for i in opened)
    finally:
        del outlet


def test_duplicate_labels_are_refused_unless_a_montage_replaces_them():
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 3, 250.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Fp1", "Cz", "Fp1"])
    outlet = pylsl.StreamOutlet(info)
    try:
        with pytest.raises(ValueError, match=f"'{name}' labels a channel twice: Fp1.*montage"):
            with LslSource(name=name, timeout=10, reconnect_s=0):
                pass
        with LslSource(name=name, timeout=10, reconnect_s=0, montage="Fp1,Cz,Fp2") as src:
            assert src.ch_names == ["Fp1", "Cz", "Fp2"]
    finally:
        del outlet


def test_labels_naming_one_electrode_two_ways_are_refused():
    """T3 and T7 are one electrode (its old and new name); a stream labelled with both was
    read, and the pipeline then took the first of them and dropped the other."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 3, 250.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["T3", "Cz", "T7"])
    outlet = pylsl.StreamOutlet(info)
    try:
        with pytest.raises(ValueError, match=rf"'{name}' labels a channel twice: T7 \(written "
                                             r"'T3' and 'T7'\).*montage"):
            with LslSource(name=name, timeout=10, reconnect_s=0):
                pass
    finally:
        del outlet


def _first_chunk(src, outlet, x):
    assert outlet.wait_for_consumers(10)
    outlet.push_chunk(np.asarray(x, np.float32))
    t = time.monotonic()
    while time.monotonic() - t < 10:
        c = src.read_chunk(timeout=0.5)
        if c.n_times:
            return c.samples
    raise AssertionError("no sample arrived")


def test_nanovolt_units_are_scaled_and_a_channel_that_is_not_eeg_keeps_its_unit(caplog):
    """A channel in nanovolts was taken as microvolts (a thousand times too large). A
    channel that is not EEG (an accelerometer in g) is never used as EEG: its values come
    as they are, logged."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 3, 100.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz", "Accel X"])
    info.set_channel_units(["nanovolts", "nV", "g"])
    outlet = pylsl.StreamOutlet(info)
    try:
        with caplog.at_level("INFO", logger="nacf.hardware"):
            with LslSource(name=name, timeout=10) as src:
                got = _first_chunk(src, outlet, [[1000.0, 2000.0, 7.0]])
        np.testing.assert_allclose(got, [[1.0, 2.0, 7.0]], rtol=1e-6)
        assert any("'Accel X'" in r.getMessage() and "'g'" in r.getMessage()
                   for r in caplog.records)
    finally:
        del outlet


@pytest.mark.parametrize("units", [["uV", "counts", "a.u."], ["mV?", "uV", "uV"]])
def test_an_eeg_channel_in_a_unit_that_is_not_a_voltage_is_refused(units):
    """ADC counts, arbitrary units or a typo on an EEG channel were taken as microvolts
    (a warning in the log), and the user authenticated on wrongly scaled samples."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 3, 100.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz", "Oz"])
    info.set_channel_units(units)
    outlet = pylsl.StreamOutlet(info)
    bad = ", ".join(f"{c!r} ({u!r})" for c, u in zip(["Cz", "Pz", "Oz"], units)
                    if u not in ("uV",))
    try:
        with pytest.raises(ValueError) as e:
            with LslSource(name=name, timeout=10, reconnect_s=0):
                pass
        msg = str(e.value)
        assert f"LSL stream '{name}'" in msg and bad in msg, msg
        assert f"lsl:{name}?units=uV" in msg, msg
    finally:
        del outlet


def test_units_option_states_the_unit_of_every_channel():
    """``lsl:NAME?units=U`` says what the samples are in when the stream's own units are
    not a voltage nacf knows; a voltage unit is scaled to microvolts."""
    from nacf_core.hardware.sources import open_source

    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 100.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz"])
    info.set_channel_units(["counts", "counts"])
    outlet = pylsl.StreamOutlet(info)
    try:
        with open_source(f"lsl:{name}?units=uV&timeout=10") as src:
            np.testing.assert_array_equal(_first_chunk(src, outlet, [[3.0, -4.0]]),
                                          [[3.0, -4.0]])
        with LslSource(name=name, timeout=10, reconnect_s=0, units="mV") as src:
            np.testing.assert_allclose(_first_chunk(src, outlet, [[0.5, 2.0]]),
                                       [[500.0, 2000.0]], rtol=1e-6)
    finally:
        del outlet


def test_absent_or_empty_units_are_microvolts():
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 100.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz"])
    info.set_channel_units(["", "  "])
    outlet = pylsl.StreamOutlet(info)
    try:
        with LslSource(name=name, timeout=10, reconnect_s=0) as src:
            np.testing.assert_array_equal(_first_chunk(src, outlet, [[3.0, -4.0]]),
                                          [[3.0, -4.0]])
    finally:
        del outlet


@pytest.mark.parametrize("units", ["counts", "", "uV,mV", 5])
def test_a_units_option_that_is_not_a_voltage_is_refused(units):
    from nacf_core.hardware.sources import open_source

    with pytest.raises((ValueError, TypeError), match="'units' must be one voltage unit"):
        LslSource(name="x", units=units)
    if isinstance(units, str) and units:
        with pytest.raises(ValueError, match="'units' must be one voltage unit"):
            open_source(f"lsl:x?units={units}")


def test_a_name_shared_by_several_streams_reads_the_eeg_one_or_the_type_asked():
    """muselsl streams a Muse's EEG, PPG and accelerometer as three streams all named
    'Muse', with one source_id. lsl:Muse read whichever answered first (the PPG one about
    half the time: 3 channels at 64 Hz taken for EEG), and a SOURCE string could not say
    which: ?type= was refused."""
    from nacf_core.hardware.sources import open_source

    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    outlets = []
    for typ, n_ch, rate in (("ACC", 3, 52.0), ("PPG", 3, 64.0), ("EEG", 5, 256.0)):
        info = pylsl.StreamInfo(name, typ, n_ch, rate, pylsl.cf_float32, "Muse00:55:DA")
        outlets.append(pylsl.StreamOutlet(info))
    try:
        for _ in range(6):
            with LslSource(name=name, timeout=10) as src:
                assert (src.sfreq, len(src.ch_names)) == (256.0, 5)
                assert src.type == "EEG"  # a reconnect resolves the same stream
        with open_source(f"lsl:{name}?type=PPG&timeout=10") as src:
            assert (src.sfreq, len(src.ch_names)) == (64.0, 3)
    finally:
        del outlets


@pytest.mark.parametrize("fmt", [pylsl.cf_float32, pylsl.cf_double64])
def test_samples_that_are_not_numbers_are_dropped_samples_and_stamps_stay_finite(fmt):
    """An infinite sample (or a double too large for float32) came out as an infinite
    microvolt value, which no file source ever hands out (a value that is not a number is
    a dropped sample, NaN); a NaN timestamp from the outlet came out as a NaN timestamp
    (written as 'nan' by nacf record). Non-finite stamps are now the arrival time, the
    samples evenly spaced before it."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 100.0, fmt, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz"])
    info.set_channel_units(["uV", "mV"])  # 3e38 mV: past float32 once in microvolts
    outlet = pylsl.StreamOutlet(info)
    big = 1e300 if fmt == pylsl.cf_double64 else 3e38
    x = np.array([[np.inf, 1.0], [2.0, -np.inf], [np.nan, 3.0], [-big, big], [4.0, 5.0]])
    try:
        with LslSource(name=name, timeout=10, reconnect_s=0) as src:
            assert outlet.wait_for_consumers(10)
            outlet.push_chunk(x.astype(np.float32 if fmt == pylsl.cf_float32 else np.float64),
                              [float("nan")] * 5)
            got, stamps, t = [], [], time.monotonic()
            while sum(len(c) for c in got) < 5 and time.monotonic() - t < 10:
                c = src.read_chunk(timeout=0.5)
                got.append(c.samples)
                stamps.append(c.timestamps)
        y, ts = np.concatenate(got), np.concatenate(stamps)
        want = np.array([[np.nan, 1e3], [2, np.nan], [np.nan, 3e3],
                         [np.nan if big > 1e38 * 4 else -big, np.nan], [4, 5e3]], np.float32)
        np.testing.assert_array_equal(y, want)
        assert np.isfinite(ts).all() and np.all(np.diff(ts) > 0), ts
        assert abs(ts[-1] - pylsl.local_clock()) < 10
    finally:
        del outlet


def test_repaired_timestamps_keep_going_forward_across_chunks():
    """Timestamps an outlet sent as NaN were replaced by the arrival time with the chunk's
    samples spaced back from it at the nominal rate, so a chunk pulled soon after the
    previous one (the outlet's chunk split in two pulls, or a slow stream) got stamps
    before the previous chunk's: time went backwards (a flaky CI failure at 100 Hz; at 1
    Hz every time). Repaired stamps now also come after the last stamp handed out."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 1.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz"])
    outlet = pylsl.StreamOutlet(info)
    try:  # chunks of up to 4 samples: the second, pulled at once, spans 3 s back
        with LslSource(name=name, timeout=10, reconnect_s=0, chunk_s=4.0) as src:
            assert outlet.wait_for_consumers(10)
            stamps = []
            for k in (1, 4):
                outlet.push_chunk(np.ones((k, 2), np.float32), [float("nan")] * k)
                got, t = 0, time.monotonic()
                while got < k and time.monotonic() - t < 10:
                    c = src.read_chunk(timeout=0.5)
                    got += c.n_times
                    stamps.append(c.timestamps)
            ts = np.concatenate(stamps)
        assert len(ts) == 5 and np.isfinite(ts).all() and np.all(np.diff(ts) > 0), ts
    finally:
        del outlet


def test_timestamps_of_an_outlet_whose_clock_steps_back_keep_going_forward():
    """Finite timestamps that go back (an outlet whose clock was stepped back by NTP or
    by hand, or a stamp out of place within a chunk) were handed out as sent: a recording
    whose time goes back (nacf record's CSV then cannot be read back when its last stamp
    is before its first). Like a NaN stamp, a stamp that is not after the one before it
    is repaired: the one before it plus 1/sfreq."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 10.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz"])
    outlet = pylsl.StreamOutlet(info)
    try:
        with LslSource(name=name, timeout=10, reconnect_s=0) as src:
            assert outlet.wait_for_consumers(10)
            t0 = pylsl.local_clock()
            sent = [t0 + np.array([0.0, 0.1, 0.2, 0.3]),          # as the outlet's clock
                    t0 - 100 + np.array([0.0, 0.1, 0.2, 0.3]),    # stepped back 100 s
                    t0 + np.array([0.8, 0.9, -50.0, 1.1]),        # and one out of place
                    np.full(3, t0 + 1.1)]                         # repeated
            stamps = []
            for s in sent:
                outlet.push_chunk(np.ones((len(s), 2), np.float32), s.tolist())
                got, t = 0, time.monotonic()
                while got < len(s) and time.monotonic() - t < 10:
                    c = src.read_chunk(timeout=0.5)
                    got += c.n_times
                    stamps.append(c.timestamps)
            ts = np.concatenate(stamps) - src.clock_offset
        assert len(ts) == 15 and np.all(np.diff(ts) > 0), ts - t0
        np.testing.assert_allclose(ts - t0, np.arange(15) / 10, atol=1e-3)
    finally:
        del outlet


@pytest.mark.parametrize("labels", [
    ["O1", "O2", "", "C3", "C4", "P7", "P8", "Fp1"],  # one channel unlabelled
    ["O1", "O2", "Fp1", "C3", "C4", "P7", "P8", "  "],  # a blank label
])
def test_a_stream_labelling_only_some_channels_is_refused_not_renamed(labels):
    """An 8-channel stream whose description labels some channels but not all was given
    the Ultracortex default names for every channel: its channel labelled O1 was read as
    Fp1, O2 as Fp2, and so on (enrolled and matched with the electrodes swapped)."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 8, 250.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(labels)
    outlet = pylsl.StreamOutlet(info)
    try:
        missing = labels.index(next(x for x in labels if not x.strip())) + 1
        with pytest.raises(ValueError, match=rf"'{name}' labels 7 of its 8 channels; channel "
                                             rf"{missing} has no label.*montage"):
            with LslSource(name=name, timeout=10, reconnect_s=0):
                pass
        montage = ",".join(x.strip() or "Cz" for x in labels)
        with LslSource(name=name, timeout=10, reconnect_s=0, montage=montage) as src:
            assert src.ch_names == montage.split(",")
    finally:
        del outlet


def test_labels_are_stripped_of_surrounding_blanks():
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 250.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels([" Cz", "Pz "])
    outlet = pylsl.StreamOutlet(info)
    try:
        with LslSource(name=name, timeout=10, reconnect_s=0) as src:
            assert src.ch_names == ["Cz", "Pz"]
    finally:
        del outlet


def test_rows_that_carry_no_number_count_as_dropped_not_ok():
    """A row whose every channel is NaN or infinite (an outlet that sends NaN for a lost
    sample) is a dropped sample, delivered as a NaN row: the Cyton reader and the file
    source count such rows in counters.dropped; the LSL source counted them as received
    ('ok'), so nacf record reported a lossy stream as whole."""
    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    info = pylsl.StreamInfo(name, "EEG", 2, 100.0, pylsl.cf_float32, f"sid-{name}")
    info.set_channel_labels(["Cz", "Pz"])
    outlet = pylsl.StreamOutlet(info)
    x = np.array([[1, 2], [np.nan, np.nan], [np.inf, np.nan], [np.nan, 3], [4, 5]], np.float32)
    try:
        with LslSource(name=name, timeout=10, reconnect_s=0) as src:
            assert outlet.wait_for_consumers(10)
            outlet.push_chunk(x)
            n, t = 0, time.monotonic()
            while n < 5 and time.monotonic() - t < 10:
                n += src.read_chunk(timeout=0.5).n_times
            assert n == 5
            assert (src.counters.ok, src.counters.dropped) == (3, 2)
    finally:
        del outlet
