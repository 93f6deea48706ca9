"""Readers against the real files in ../shared/data: values, rates and names as the files say."""

from __future__ import annotations

import datetime as dt
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from nacf_core.hardware.files import (
    Recording,
    detect_format,
    read_recording,
    write_npz,
)

GUI = "openbci/gui"
OPENBCI_FILES = [
    f"{GUI}/OpenBCI_GUI-v6-blinks-jawClench-alpha.txt",
    f"{GUI}/OpenBCI_GUI-v5-blinks-jawClench-alpha.txt",
    f"{GUI}/OpenBCI-sampleData-1-blinks-jawClench-alpha.txt",
    f"{GUI}/SDconverted-2014-10-22_16-27-06.txt",
    f"{GUI}/OpenBCI-RAW-2016-07-21_17-46-29.txt",
    f"{GUI}/OpenBCI-RAW-2016-07-27_14-10-53.txt",
    "openbci/cyton-eyes/EyesClosed.txt",
    "openbci/cyton-eyes/OpenBCI-RAW-EyesOpen.txt",
]
BRAINFLOW_FILES = [
    "openbci/brainflow-csv/EyesSubject1Session1.csv",  # comma separated
    "openbci/brainflow-csv/EyesSubject2Session1.csv",  # tab separated
]


def _data_rows(path: Path, sep: str) -> list[list[str]]:
    """Independent parse: every line that starts with a digit or '-'."""
    rows = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and (s[0].isdigit() or s[0] == "-"):
            rows.append([f.strip() for f in s.split(sep)])
    return rows


def _edf_header(path: Path) -> dict:
    """Read the EDF header by hand (EDF spec: 256 + 256 * ns bytes, ASCII)."""
    raw = path.read_bytes()
    ns = int(raw[252:256])
    h = raw[256 : 256 + 256 * ns]

    def field(offset: int, width: int) -> list[str]:
        base = offset * ns
        return [h[base + i * width : base + (i + 1) * width].decode().strip() for i in range(ns)]

    labels = [h[i * 16 : (i + 1) * 16].decode().rstrip(" ") for i in range(ns)]
    off = 16 + 80 + 8  # label, transducer, physical dimension
    pmin = [float(x) for x in field(off, 8)]
    pmax = [float(x) for x in field(off + 8, 8)]
    dmin = [int(x) for x in field(off + 16, 8)]
    dmax = [int(x) for x in field(off + 24, 8)]
    nsamp = [int(x) for x in field(off + 32 + 80, 8)]
    rec_dur = float(raw[244:252])
    return dict(raw=raw, ns=ns, labels=labels, pmin=pmin, pmax=pmax, dmin=dmin, dmax=dmax,
                nsamp=nsamp, rec_dur=rec_dur, header_bytes=256 + 256 * ns,
                start=(raw[168:176].decode(), raw[176:184].decode()))


def _write_edf(path, signals, labels, rates, dim="uV", phys=(-3276.8, 3276.7)):
    """A minimal EDF writer (1 s records, int16), for files unlike EEGMMIDB."""
    ns, dig = len(signals), (-32768, 32767)
    n_rec = int(len(signals[0]) / rates[0])

    def f(v, w):
        return str(v).ljust(w)[:w].encode("ascii")

    h = f("0", 8) + f("X X X X", 80) + f("Startdate 01-JAN-2020 X X X", 80)
    h += f("01.01.20", 8) + f("10.00.00", 8) + f(256 + 256 * ns, 8) + f("", 44)
    h += f(n_rec, 8) + f(1, 8) + f(ns, 4)
    for col, w in ((labels, 16), ([""] * ns, 80), ([dim] * ns, 8), ([phys[0]] * ns, 8),
                   ([phys[1]] * ns, 8), ([dig[0]] * ns, 8), ([dig[1]] * ns, 8),
                   ([""] * ns, 80), (rates, 8), ([""] * ns, 32)):
        h += b"".join(f(v, w) for v in col)
    gain = (phys[1] - phys[0]) / (dig[1] - dig[0])
    body = b""
    for k in range(n_rec):
        for sig, r in zip(signals, rates):
            seg = sig[k * r : (k + 1) * r]
            body += np.round((seg - phys[0]) / gain + dig[0]).astype("<i2").tobytes()
    path.write_bytes(h + body)
    return gain


def test_edf_mixed_rates_keep_the_eeg_rate_and_units(tmp_path):
    t = np.arange(0, 4, 1 / 256)
    fp1, o2 = np.sin(2 * np.pi * 10 * t) * 100, np.cos(2 * np.pi * 6 * t) * 50
    aux = np.arange(4 * 512) / 1000.0
    p = tmp_path / "mixed.edf"
    gain = _write_edf(p, [fp1, aux, o2], ["EEG Fp1-REF", "Pleth", "EEG O2-REF"], [256, 512, 256])
    rec = read_recording(p)
    assert rec.sfreq == 256.0 and rec.ch_names == ["EEG Fp1-REF", "EEG O2-REF"]
    assert rec.data.shape == (1024, 2)
    np.testing.assert_allclose(rec.data[:, 0], fp1, atol=gain)
    np.testing.assert_allclose(rec.data[:, 1], o2, atol=gain)
    # physical dimension mV: microvolts are 1000 x the file's numbers
    q = tmp_path / "mv.edf"
    gain = _write_edf(q, [fp1 / 1000, o2 / 1000], ["Fp1", "O2"], [256, 256], dim="mV",
                      phys=(-3.2768, 3.2767))
    rec = read_recording(q, start_s=1, stop_s=2)
    np.testing.assert_allclose(rec.data[:, 0], fp1[256:512], atol=gain * 1000)
    assert rec.start_time == dt.datetime(2020, 1, 1, 10, 0, 1, tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------------------------------
# EDF (EEGMMIDB)
# ---------------------------------------------------------------------------------------


def test_edf_values_rate_names_match_the_header(shared_data):
    path = shared_data / "eegmmidb/S001/S001R03.edf"
    h = _edf_header(path)
    rec = read_recording(path, start_s=0, stop_s=2)
    assert rec.format == "edf"
    eeg = [i for i, lab in enumerate(h["labels"]) if lab != "EDF Annotations"]
    assert rec.ch_names == [h["labels"][i] for i in eeg]  # unmodified, dots kept
    assert rec.ch_names[:3] == ["Fc5.", "Fc3.", "Fc1."]
    assert rec.sfreq == h["nsamp"][eeg[0]] / h["rec_dur"] == 160.0
    assert rec.data.shape == (320, 64) and rec.data.dtype == np.float64
    # first data record, decoded by hand: int16 little endian, channels one after another
    rec_bytes = sum(h["nsamp"]) * 2
    first = np.frombuffer(h["raw"][h["header_bytes"] : h["header_bytes"] + rec_bytes], "<i2")
    n = h["nsamp"][0]
    for ch in (0, 21, 63):
        dig = first[ch * n : (ch + 1) * n].astype(float)
        gain = (h["pmax"][ch] - h["pmin"][ch]) / (h["dmax"][ch] - h["dmin"][ch])
        uv = (dig - h["dmin"][ch]) * gain + h["pmin"][ch]  # physical unit is uV
        np.testing.assert_allclose(rec.data[:n, ch], uv, atol=1e-6)
    dd, mm, yy = (int(x) for x in h["start"][0].split("."))
    hh, mi, ss = (int(x) for x in h["start"][1].split("."))
    assert rec.start_time == dt.datetime(2000 + yy, mm, dd, hh, mi, ss, tzinfo=dt.timezone.utc)


def test_every_eegmmidb_file_reads(shared_data):
    files = sorted((shared_data / "eegmmidb").glob("S*/S*R*.edf"))
    assert len(files) >= 72
    for f in files:
        rec = read_recording(f, stop_s=0.5)
        assert rec.sfreq == 160.0 and rec.data.shape == (80, 64), f
        assert rec.ch_names[0] == "Fc5." and rec.ch_names[-1] == "Iz..", f


def test_text_detection_with_a_multibyte_char_at_the_read_boundary(shared_data, tmp_path):
    lines = (shared_data / OPENBCI_FILES[2]).read_text().splitlines()
    pad = "%" + "x" * (4095 - len(lines[0]) - 2) + "µµ"  # 'µ' straddles byte 4096
    p = tmp_path / "mb.txt"
    p.write_text("\n".join([lines[0], pad, *lines[1:300]]) + "\n", encoding="utf-8")
    assert p.read_bytes()[4095:4097] == "µ".encode()
    assert detect_format(p) == "openbci"
    np.testing.assert_array_equal(read_recording(p).data, read_recording(
        shared_data / OPENBCI_FILES[2]).data[:read_recording(p).n_times])


def test_edf_time_range_and_annotations(shared_data):
    path = shared_data / "eegmmidb/S001/S001R03.edf"
    whole = read_recording(path, start_s=0, stop_s=10)
    part = read_recording(path, start_s=4, stop_s=6)
    assert part.data.shape == (320, 64)
    np.testing.assert_array_equal(part.data, whole.data[640:960])
    assert part.start_time - whole.start_time == dt.timedelta(seconds=4)
    # EDF+ annotations: T0/T1/T2 events, onsets relative to the range start
    assert {a.description for a in whole.annotations} <= {"T0", "T1", "T2"}
    assert whole.annotations and whole.annotations[0].onset == 0.0
    assert all(0 <= a.onset < 2 for a in part.annotations)
    with pytest.raises(ValueError, match="past the end"):
        read_recording(path, start_s=0, stop_s=10_000)
    with pytest.raises(ValueError, match="stop_s"):
        read_recording(path, start_s=5, stop_s=5)


# ---------------------------------------------------------------------------------------
# OpenBCI GUI text
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPENBCI_FILES)
def test_openbci_values_match_the_file(shared_data, name):
    path = shared_data / name
    rec = read_recording(path)
    assert rec.format == "openbci"
    assert rec.sfreq == 250.0
    assert rec.n_channels == 8 and rec.data.dtype == np.float64
    rows = _data_rows(path, ",")
    # the reader drops placeholder / truncated rows only
    if "v5" in name:
        assert all(float(x) == 0 for x in rows[0]) and rec.skipped_rows == 1
        rows = rows[1:]
    if rec.skipped_rows and "v5" not in name:
        assert len(rows[-1]) < len(rows[0])  # a truncated last line
        rows = rows[:-1]
    assert rec.n_times == len(rows)
    for k in (0, 1, len(rows) // 2, len(rows) - 1):
        want = [float(x) for x in rows[k][1:9]]
        np.testing.assert_array_equal(rec.data[k], want)


def test_openbci_header_rate_and_names(shared_data, tmp_path):
    # the v6 header says 250 Hz and names "EXG Channel N"; edit the rate in a copy
    src = (shared_data / OPENBCI_FILES[0]).read_text().splitlines()[:200]
    assert src[2] == "%Sample Rate = 250 Hz"
    src[2] = "%Sample Rate = 500 Hz"
    p = tmp_path / "v6-500.txt"
    p.write_text("\n".join(src) + "\n")
    rec = read_recording(p)
    assert rec.sfreq == 500.0
    assert rec.n_times == 195
    montage = ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]
    assert read_recording(p, montage=montage).ch_names == montage
    assert read_recording(p, montage=",".join(montage)).ch_names == montage
    with pytest.raises(ValueError, match="expected 8 names, got 2"):
        read_recording(p, montage="Fp1,Fp2")


def test_openbci_start_time_from_posix_ms(shared_data):
    rec = read_recording(shared_data / OPENBCI_FILES[0], start_s=0, stop_s=1)
    assert rec.start_time == dt.datetime.fromtimestamp(1557936053.329, tz=dt.timezone.utc)
    assert rec.n_times == 250


def test_openbci_v5_v6_sampledata_are_the_same_session(shared_data):
    a, b, c = (read_recording(shared_data / n, stop_s=20).data for n in OPENBCI_FILES[:3])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_openbci_malformed_middle_line_is_an_error(shared_data, tmp_path):
    lines = (shared_data / OPENBCI_FILES[2]).read_text().splitlines()[:100]
    lines[50] = "44, 1.0, oops, 3.0"
    p = tmp_path / "bad.txt"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="malformed sample line 51"):
        read_recording(p)


# ---------------------------------------------------------------------------------------
# BrainFlow CSV
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BRAINFLOW_FILES)
def test_brainflow_values_match_the_file(shared_data, name):
    path = shared_data / name
    sep = "\t" if "Subject2" in name else ","
    rows = _data_rows(path, sep)
    rec = read_recording(path)
    assert rec.format == "brainflow" and rec.sfreq == 250.0
    # the first row is the Cyton's first packet, all 8 EEG channels exactly 0: left out
    assert all(float(x) == 0 for x in rows[0][1:9]) and rec.skipped_rows == 1
    rows = rows[1:]
    assert rec.n_times == len(rows) and rec.n_channels == 8
    assert all(len(r) == 24 for r in rows[:10])
    for k in (0, 1, 777, len(rows) - 1):
        np.testing.assert_array_equal(rec.data[k], [float(x) for x in rows[k][1:9]])
    assert rec.start_time == dt.datetime.fromtimestamp(float(rows[0][22]), tz=dt.timezone.utc)
    # timestamps agree with the nominal 250 Hz
    ts = np.array([float(r[22]) for r in rows])
    assert abs((len(ts) - 1) / (ts[-1] - ts[0]) - 250.0) < 5.0


def test_brainflow_counter_gaps_are_counted(shared_data):
    rows = _data_rows(shared_data / BRAINFLOW_FILES[0], ",")
    counter = np.array([int(float(r[0])) for r in rows])
    step = np.diff(counter) % 256
    gaps = read_recording(shared_data / BRAINFLOW_FILES[0]).counter_gaps
    assert gaps == int((step - 1)[step > 1].sum()) > 0


def test_brainflow_bad_column_count(tmp_path):
    p = tmp_path / "short.csv"
    p.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_recording(p)
    with pytest.raises(ValueError, match="24 \\(Cyton\\) and 32"):
        read_recording(p, format="brainflow")


# ---------------------------------------------------------------------------------------
# nacf .npz, detection, errors
# ---------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 50, (1000, 4))
    t0 = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    p = write_npz(tmp_path / "rec", data, 250, ["Fp1", "Fp2", "O1", "O2"], start_time=t0)
    assert p.suffix == ".npz" and detect_format(p) == "npz"
    rec = read_recording(p)
    assert isinstance(rec, Recording) and rec.format == "npz"
    np.testing.assert_allclose(rec.data, data.astype(np.float32))
    assert rec.sfreq == 250.0 and rec.ch_names == ["Fp1", "Fp2", "O1", "O2"]
    assert rec.start_time == t0
    part = read_recording(p, start_s=1.0, stop_s=2.0)
    np.testing.assert_array_equal(part.data, rec.data[250:500])
    assert part.start_time == t0 + dt.timedelta(seconds=1)


def test_npz_missing_keys_and_corrupt(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, data=np.zeros((10, 2), np.float32), sfreq=250.0)
    with pytest.raises(ValueError, match="lacks the key\\(s\\) ch_names"):
        read_recording(p)
    q = tmp_path / "y.npz"
    q.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ValueError, match="corrupt"):
        read_recording(q)


def test_nacf_record_csv(tmp_path):
    t0 = 1_700_000_000.0
    lines = ["timestamp,Fp1,O2"]
    for i in range(500):
        a = "" if i == 7 else f"{i * 0.5}"
        b = "" if i == 7 else f"{-i}"
        lines.append(f"{t0 + i / 250.0 + (1e-4 if i % 3 else 0):.6f},{a},{b}")
    p = tmp_path / "rec.csv"
    p.write_text("\n".join(lines) + "\n")
    rec = read_recording(p)
    assert rec.format == "nacf-csv" and rec.sfreq == 250.0 and rec.ch_names == ["Fp1", "O2"]
    assert rec.data.shape == (500, 2) and np.isnan(rec.data[7]).all()
    assert rec.data[8].tolist() == [4.0, -8.0]
    assert rec.start_time == dt.datetime.fromtimestamp(t0, tz=dt.timezone.utc)
    assert read_recording(p, sfreq=200).sfreq == 200.0


def test_unknown_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_recording(tmp_path / "nope.edf")
    p = tmp_path / "junk.bin"
    p.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="unknown binary format"):
        read_recording(p)
    e = tmp_path / "empty.txt"
    e.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_recording(e)
    with pytest.raises(ValueError, match="'format' parameter"):
        read_recording(p, format="wav")


def test_corrupt_edf_header(tmp_path):
    p = tmp_path / "bad.edf"
    p.write_bytes(b"0       " + b"x" * 248 + struct.pack("<h", 1) * 100)
    with pytest.raises(ValueError, match="cannot read EDF file"):
        read_recording(p)


def test_default_and_preset_montages(shared_data):
    path = shared_data / OPENBCI_FILES[0]
    ultracortex = ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]
    assert read_recording(path, stop_s=1).ch_names == ultracortex  # Cyton default
    assert read_recording(path, stop_s=1, montage="ultracortex-8").ch_names == ultracortex
    bf = read_recording(shared_data / BRAINFLOW_FILES[0], stop_s=1)
    assert bf.ch_names == ultracortex
    with pytest.raises(ValueError, match="twice: Fp1"):
        read_recording(path, stop_s=1, montage="Fp1,Fp1,a,b,c,d,e,f")
    with pytest.raises(ValueError, match="empty channel name"):
        read_recording(path, stop_s=1, montage="Fp1,,a,b,c,d,e,f")
    with pytest.raises(TypeError, match="'montage' must be"):
        read_recording(path, stop_s=1, montage=3)
    # EDF labels are kept unless a montage renames them
    edf = shared_data / "eegmmidb/S001/S001R01.edf"
    assert read_recording(edf, stop_s=1).ch_names[0] == "Fc5."
    with pytest.raises(ValueError, match="expected 64 names"):
        read_recording(edf, stop_s=1, montage="ultracortex-8")


# ---------------------------------------------------------------------------------------
# wrong input: a clear ValueError naming the file, never an unrelated exception
# ---------------------------------------------------------------------------------------

_OBCI_ROWS = "\n".join(f"{i}, " + ", ".join(["1.0"] * 8) for i in range(50)) + "\n"


def _openbci(tmp_path, *header):
    p = tmp_path / "o.txt"
    p.write_text("%OpenBCI Raw EEG Data\n" + "".join(h + "\n" for h in header) + _OBCI_ROWS)
    return p


def test_limits_are_the_service_limits():
    from nacf_core.hardware import files

    from nacf_core.server import converters

    assert files.MAX_SAMPLE_RATE_HZ == converters.MAX_SAMPLE_RATE_HZ
    assert files.MAX_CHANNELS == converters.MAX_CHANNELS


@pytest.mark.parametrize(
    "rate", ["0", "0.0 Hz", "9" * 400 + " Hz", ". Hz", "1.2.3 Hz", "nan Hz", "-250 Hz", "1e-7 Hz",
             "200000 Hz", "fast"],
)
def test_openbci_bad_sample_rate(tmp_path, rate):
    p = _openbci(tmp_path, f"%Sample Rate = {rate}")
    with pytest.raises(ValueError, match=r"o\.txt'.*sampling rate must be a number of Hz from 1 "
                                         r"to 100000, got '%Sample Rate = "):
        read_recording(p)


def test_openbci_contradicting_sample_rates(tmp_path):
    assert read_recording(_openbci(tmp_path, "%Sample Rate = 200.0 Hz")).sfreq == 200.0
    p = _openbci(tmp_path, "%Sample Rate = 250 Hz", "%Sample Rate = 200 Hz")
    with pytest.raises(ValueError, match="contradicts itself, '%Sample Rate = 200 Hz'"):
        read_recording(p)


@pytest.mark.parametrize("n", ["0", "-8", "99999999999999999999", "257", "8.0", ""])
def test_openbci_bad_channel_count(tmp_path, n):
    p = _openbci(tmp_path, f"%Number of channels = {n}", "%Sample Rate = 250 Hz")
    with pytest.raises(ValueError, match=r"o\.txt'.*'%Number of channels' must be an integer "
                                         r"from 1 to 256"):
        read_recording(p)


def test_sfreq_parameter_range(tmp_path):
    p = _openbci(tmp_path, "%Number of channels = 8")
    with pytest.raises(ValueError, match="'sfreq' must be from 1 to 100000 Hz, got 1e\\+300"):
        read_recording(p, sfreq=1e300)


def _nacf_csv(tmp_path, header, times):
    p = tmp_path / "rec.csv"
    p.write_text(header + "\n" + "".join(f"{t},1,2\n" for t in times))
    return p


def test_nacf_csv_not_utf8_after_the_first_4kb(tmp_path):
    p = _nacf_csv(tmp_path, "timestamp,Fp1,Fp2", [1.7e9 + i / 250 for i in range(1000)])
    raw = p.read_bytes()
    p.write_bytes(raw[:6000] + b"\xff" + raw[6000:])
    line = raw[:6000].count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"rec\.csv' is not UTF-8 text: byte 0xff at offset 6000 "
                                         rf"\(line {line}\)"):
        read_recording(p)


@pytest.mark.parametrize(
    "times", [[0, 1e300], [0, 1e-320], [0, 4, 8], [0, float("inf")], [0, 1e-6]],
    ids=["span-1e300", "span-1e-320", "milliseconds", "inf", "1-MHz"],
)
def test_nacf_csv_rate_from_timestamps_out_of_range(tmp_path, times):
    p = _nacf_csv(tmp_path, "timestamp,Fp1,Fp2", times)
    with pytest.raises(ValueError, match=r"rec\.csv'.*sampling rate must be a number of Hz from "
                                         r"1 to 100000, got .* Hz from \d timestamps"):
        read_recording(p)


@pytest.mark.parametrize("header", ["timestamp,Fp1,Fp1", "timestamp,Fp1,"])
def test_nacf_csv_repeated_or_empty_channel_name(tmp_path, header):
    p = _nacf_csv(tmp_path, header, [0, 0.004])
    with pytest.raises(ValueError, match=r"rec\.csv'.*(repeated: 'Fp1'|channel name is empty)"):
        read_recording(p)


def _npz(tmp_path, name="r.npz", **arrays):
    base = dict(data=np.zeros((10, 2), np.float32), sfreq=np.float64(250),
                ch_names=np.array(["A", "B"]))
    base.update(arrays)
    p = tmp_path / name
    np.savez(p, **{k: v for k, v in base.items() if v is not None})
    return p


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(sfreq=np.array([1.0, 2.0])), "'sfreq' must be a single real number, got an array "
                                           "of shape \\(2,\\)"),
        (dict(sfreq=np.array("fast")), "'sfreq' must be a single real number"),
        (dict(sfreq=np.complex128(1j)), "'sfreq' must be a single real number"),
        (dict(sfreq=np.float64(0)), "sampling rate must be a number of Hz from 1 to 100000"),
        (dict(sfreq=np.float64(1e-300)), "sampling rate must be a number of Hz"),
        (dict(start_time=np.zeros(3)), "'start_time' must be a single real number"),
        (dict(start_time=np.float64(1e300)), "'start_time' must be POSIX seconds \\(UTC\\) in "
                                             "\\[0, 1e\\+11\\), got 1e\\+300"),
        (dict(start_time=np.float64(-1e12)), "'start_time' must be POSIX seconds"),
        (dict(start_time=np.float64("nan")), "'start_time' must be POSIX seconds"),
        (dict(ch_names=np.array(["A", "A"])), "channel names must be unique; repeated: 'A'"),
        (dict(ch_names=np.array(["A", ""])), "a channel name is empty"),
        (dict(ch_names=np.array([1, 2])), "'ch_names' must be a 1-D array of strings"),
        (dict(data=np.zeros((0, 2))), "has no samples or no channels \\(shape \\(0, 2\\)\\)"),
        (dict(data=np.zeros((5, 0)), ch_names=np.array([], str)), "has no samples or no channels"),
        (dict(data=np.array([[1, None]], dtype=object)), "'data' holds Python objects"),
    ],
)
def test_npz_malformed_entries(tmp_path, arrays, message):
    p = _npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match=r"nacf \.npz recording '.*r\.npz'.*" + message):
        read_recording(p)


def _npz_with_data_npy(path, old, new):
    """A valid archive (CRCs right) whose data.npy header has ``old`` replaced by ``new``."""
    import io
    import zipfile

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    data = npy(np.zeros((4, 2)))
    assert old in data and len(old) == len(new)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.npy", data.replace(old, new))
        z.writestr("sfreq.npy", npy(np.float64(250)))
        z.writestr("ch_names.npy", npy(np.array(["A", "B"])))
    return path


def test_npz_corrupt_deflate_stream_and_npy_header(tmp_path):
    import zipfile

    p = tmp_path / "c.npz"
    write_npz(p, np.random.default_rng(0).normal(size=(2000, 4)), 250, ["a", "b", "c", "d"])
    raw = bytearray(p.read_bytes())
    ho = zipfile.ZipFile(p).getinfo("data.npy").header_offset
    name_len, extra_len = struct.unpack("<HH", raw[ho + 26 : ho + 30])  # local file header
    raw[ho + 30 + name_len + extra_len + 2] ^= 0xFF  # 3rd deflate byte: zlib.error before
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=r"c\.npz' is corrupt: cannot read 'data' \(Error -3 "
                                         r"while decompressing"):
        read_recording(p)
    # an unclosed parenthesis in the .npy header: tokenize.TokenError before the fix
    q = _npz_with_data_npy(tmp_path / "h.npz", b"(4, 2)", b"(4, 2 ")
    with pytest.raises(ValueError, match=r"h\.npz' is corrupt: cannot read 'data' \(.*EOF in "
                                         r"multi-line statement"):
        read_recording(q)


def test_npz_declared_shape_must_match_the_payload(tmp_path):
    q = _npz_with_data_npy(tmp_path / "s.npz", b"(4, 2), }" + b" " * 12, b"(9999999999999, 2), }")
    with pytest.raises(ValueError, match=r"s\.npz' is corrupt: 'data' declares "
                                         r"159999999999984 bytes of data but holds 64 bytes"):
        read_recording(q)


def test_npz_array_size_limit(tmp_path, monkeypatch):
    from nacf_core.hardware import files

    p = _npz(tmp_path, data=np.zeros((1000, 2), np.float32))  # 8000 bytes + header
    assert read_recording(p).n_times == 1000
    monkeypatch.setattr(files, "_NPZ_MAX_ARRAY_BYTES", 4096)
    with pytest.raises(ValueError, match=r"r\.npz': 'data' is 8128 bytes uncompressed, more than "
                                         r"the 4096 bytes"):
        read_recording(p)


@pytest.mark.parametrize("ns", [b"-1  ", b"0   ", b"-0  "])
def test_edf_signal_count_not_positive(tmp_path, ns):
    p = tmp_path / "n.edf"
    _write_edf(p, [np.zeros(256)], ["Fp1"], [256])
    raw = bytearray(p.read_bytes())
    raw[252:256] = ns
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=r"cannot read EDF file '.*n\.edf': the header declares "
                                         r"-?\d signals \(bytes 252-255\); expected at least 1"):
        read_recording(p)


@pytest.mark.parametrize("offset, value, msg", [
    (104, b"nan     ", r"signal 2 \('O2'\) has physical minimum 'nan'; expected a finite"),
    (112, b"inf     ", r"signal 2 \('O2'\) has physical maximum 'inf'; expected a finite"),
    (120, b"-Infinit", r"signal 2 \('O2'\) has digital minimum '-Infinit'; expected a"),
    (128, b"-32768  ", r"signal 2 \('O2'\) has digital minimum = maximum \(-32768\)"),
    # equal physical bounds: every sample read as the same value, a FLAT channel whose
    # every window was rejected far from the cause (the header)
    (112, b"-3276.8 ", r"signal 2 \('O2'\) has physical minimum = maximum \(-3276\.8\)"),
])
def test_edf_scaling_that_is_not_finite_is_refused(tmp_path, offset, value, msg):
    """MNE scales an EDF signal by (pmax - pmin) / (dmax - dmin): a NaN or infinite
    physical bound read the channel as NaN throughout, silently (nacf then rejected
    every window as non-finite, far from the cause); equal digital bounds gave a
    RuntimeWarning and unscaled samples; a bound that is not a number was refused
    without naming the signal or the field."""
    p = tmp_path / "scale.edf"
    _write_edf(p, [np.zeros(256), np.zeros(256)], ["Fp1", "O2"], [256, 256])
    raw = bytearray(p.read_bytes())
    ns, at = 2, 256 + 2 * offset + 8  # signal 2's field
    assert raw[256 + ns * offset : 256 + ns * offset + 8].strip()  # the field is there
    raw[at : at + 8] = value
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=r"cannot read EDF file '.*scale\.edf': " + msg):
        read_recording(p)


def test_edf_rate_out_of_range(tmp_path):
    p = tmp_path / "slow.edf"
    _write_edf(p, [np.zeros(4)], ["Fp1"], [4])
    raw = bytearray(p.read_bytes())
    raw[244:252] = b"100     "  # 4 samples per 100-s record: 0.04 Hz
    p.write_bytes(raw)
    with pytest.raises(ValueError, match=r"EDF file '.*slow\.edf': the sampling rate must be a "
                                         r"number of Hz from 1 to 100000, got 0\.04"):
        read_recording(p)


@pytest.mark.parametrize("rows", [
    ["0.000,1,2,3", "0.004,4,5,6"],   # every row one field more than the header names
    ["0.000,1,2", "0.004,4,5,6"],     # one row
], ids=["every-row", "one-row"])
def test_nacf_csv_row_with_more_fields_than_the_header_is_refused(tmp_path, rows):
    # the extra values were dropped without a word (a header that lost a channel name)
    p = tmp_path / "rec.csv"
    p.write_text("timestamp,Fp1,Fp2\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"rec\.csv. is malformed: line \d has 4 fields; "
                                         r"every row must have 3 "):
        read_recording(p)


@pytest.mark.parametrize("sfreq", [250.0, 125.0])
def test_nacf_csv_rate_survives_a_gap_in_the_timestamps(tmp_path, sfreq):
    """nacf record of a Cyton whose dongle dropped out for 2 s (the reader reconnects and
    its timestamps jump; the lost samples are not in the file): the rate is still the
    board's. Before, the span over samples gave 208.3 Hz (104.2 Hz for a Daisy)."""
    t0 = 1_700_000_000.0
    n = int(10 * sfreq)
    times = t0 + np.arange(n) / sfreq
    times[n // 2:] += 2.0
    p = _nacf_csv(tmp_path, "timestamp,Fp1,Fp2", [f"{t:.6f}" for t in times])
    assert read_recording(p).sfreq == sfreq


def test_nacf_csv_outage_is_read_as_dropped_samples_not_joined(tmp_path):
    """A nacf record CSV made across a Cyton reconnect (its timestamps jump 2 s; the lost
    samples are not in the file) was read, and replayed through file:, as one continuous
    signal: the rows before and after the outage joined. The outage is now NaN rows
    (dropped samples) on the rate's grid, as the Epocher fills one: at most 20 s of them
    per gap; a step within 1 / sfreq + 0.25 s is jitter; a file of far-apart rows (a
    timestamp in the wrong unit) is refused, not read as hours of NaN."""
    sfreq = 250.0
    times = 1_700_000_000.0 + np.arange(2500) / sfreq
    times[1000:] += 2.0          # a reconnect: 500 samples lost
    times[2000:] += 0.2          # jitter: no outage
    times[2200:] += 60.0         # a long one: 20 s of NaN rows at most
    rows = [f"{t:.6f},{k},{-k}" for k, t in enumerate(times)]
    p = tmp_path / "outage.csv"
    p.write_text("timestamp,Fp1,Fp2\n" + "\n".join(rows) + "\n")
    rec = read_recording(p)
    assert rec.sfreq == sfreq and rec.extra["timestamp_gaps"] == 2
    assert rec.n_times == 2500 + 500 + 5000
    x = rec.data[:, 0]
    assert np.isnan(x[1000:1500]).all() and x[999] == 999 and x[1500] == 1000
    assert np.isnan(x[2700:7700]).all() and x[2699] == 2199 and x[7700] == 2200
    assert np.isfinite(x[:1000]).all() and np.isfinite(x[1500:2700]).all()
    # the source replays it with the gap as dropped samples
    from nacf_core.hardware.playback import FileSource

    with FileSource(p, speed=0) as src:
        got = []
        while (c := src.read_chunk(0)) is not None:
            got.append(c.samples)
    assert np.isnan(np.concatenate(got)[1000:1500, 0]).all()
    # far-apart rows (milliseconds, a 2-s outage every 10 rows): more gap than signal
    q = tmp_path / "ms.csv"
    ms = np.cumsum(np.where(np.arange(200) % 10 == 9, 2000.0, 4.0))
    q.write_text("timestamp,Fp1\n" + "\n".join(f"{t:.3f},{k}" for k, t in enumerate(ms))
                 + "\n")
    with pytest.raises(ValueError, match=r"ms\.csv.: its timestamps jump over \d+ gaps .*"
                                         r"more gap than signal"):
        read_recording(q, sfreq=250.0)


@pytest.mark.parametrize("sfreq", [256.0, 512.0, 128.0, 1024.0])
def test_nacf_csv_gap_does_not_snap_the_rate_to_a_neighbouring_common_rate(tmp_path, sfreq):
    """60 s of a 256 Hz LSL stream (a Muse, an Emotiv) with a 1.5 s gap where the stream
    was away: the span over samples is 249.8 Hz, within 1 % of 250 Hz, and was read as
    250 Hz (the 512, 128 and 1024 Hz ones as 500, 125 and 1000 Hz), though every row
    is 1/256 s after the one before it."""
    n = int(60 * sfreq)
    times = 5000.0 + np.arange(n) / sfreq
    times[n // 2:] += 1.5
    p = _nacf_csv(tmp_path, "timestamp,Fp1,Fp2", [f"{t:.6f}" for t in times])
    assert read_recording(p).sfreq == sfreq


@pytest.mark.parametrize(
    "dim, per_uv",
    [
        (b"uv", 1.0), (b"UV", 1.0), (b"microV", 1.0), (b"\xc2\xb5V", 1.0),  # UTF-8 micro sign
        (b"mv", 1e-3), (b"nV", 1e3), (b"volts", 1e-6),
        (b"", 1.0),  # no unit: the file's numbers, taken as microvolts (logged)
    ],
)
def test_edf_physical_dimensions_mne_does_not_know_are_scaled_right(tmp_path, dim, per_uv):
    """MNE scales only 'uV', 'µV' (Latin-1) and 'mV', and takes any other physical
    dimension for volts: a channel in 'uv', 'UV', UTF-8 'µV' or with no unit came out a
    million times too large (24 300 000 µV for 24.3 µV), one in 'nV' a billion times."""
    t = np.arange(0, 2, 1 / 256)
    x = np.sin(2 * np.pi * 10 * t) * 100  # microvolts
    p = tmp_path / "dim.edf"
    gain = _write_edf(p, [x * per_uv], ["Fp1"], [256], dim="Q",
                      phys=(-3000 * per_uv, 3000 * per_uv)) / per_uv  # in µV
    raw = bytearray(p.read_bytes())
    off = 256 + 16 + 80  # the physical dimension
    raw[off : off + 8] = dim.ljust(8)
    p.write_bytes(bytes(raw))
    rec = read_recording(p)
    np.testing.assert_allclose(rec.data[:, 0], x, atol=gain)


def test_a_truncated_edf_is_a_clear_error_or_a_logged_shorter_recording(
    shared_data, tmp_path, caplog
):
    """An EDF cut short (a download or a copy that stopped): a cut in the header was
    "could not convert string to float: ''", a cut before the first complete data
    record "list index out of range"; a cut later gave a shorter recording and only an
    INFO line. Now the first two say what the file lacks, the last is a warning."""
    raw = (shared_data / "eegmmidb/S001/S001R01.edf").read_bytes()
    ns = int(raw[252:256])
    header = 256 + 256 * ns
    p = tmp_path / "cut.edf"
    for cut, msg in ((300, rf"header is cut short: the file has 300 bytes, the header of "
                            rf"its {ns} signals {header}"),
                     (header + 3000, r"no complete data record")):
        p.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=msg) as err:
            read_recording(p)
        assert str(p) in str(err.value)
    p.write_bytes(raw[: len(raw) // 2])
    with caplog.at_level("WARNING", logger="nacf.hardware"):
        rec = read_recording(p)
    assert 0 < rec.n_times < 9760
    assert any("cut short" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


@pytest.mark.parametrize("name", [f"openbci/brainflow-csv/EyesSubject{s}Session{n}.csv"
                                  for s in (1, 2) for n in (1, 2)])
def test_brainflow_leading_all_zero_row_does_not_ring_through_the_first_epoch(
    shared_data, name
):
    """Every BrainFlow CSV of a Cyton starts with a row whose 8 EEG channels are exactly
    0 (the first packet after 'b', before the ADS1299's first conversion). It was kept as
    a sample, so the band-pass settled on 0 and the channels' DC offsets (10-25 mV) rang
    through the first epoch: 23 879 µV peak instead of about 300."""
    from nacf_core import dsp
    from nacf_core.hardware.epoching import Epocher

    rec = read_recording(shared_data / name)
    assert np.any(rec.data[0] != 0)
    ep = Epocher(250.0, 8, 4.0, sos=dsp.bandpass_sos(1, 40, 250.0))
    first = ep.push(rec.data[:1000])[0]
    assert np.abs(first).max() < 2000


@pytest.mark.parametrize("cut", [60, 3])
def test_brainflow_truncated_last_line_is_dropped(shared_data, tmp_path, cut):
    """A BrainFlow CSV whose writer was stopped mid-line (DataFilter.write_file appending
    in a loop, then Ctrl-C) was refused whole, with numpy's advice to 'use usecols';
    the truncated last line is now dropped and counted, as in OpenBCI GUI files, and a
    short line elsewhere is an error naming the line and the fields expected."""
    path = shared_data / BRAINFLOW_FILES[0]
    whole = read_recording(path)
    raw = path.read_bytes()
    p = tmp_path / "cut.csv"
    p.write_bytes(raw[: len(raw) - cut])
    rec = read_recording(p)
    assert rec.n_times == whole.n_times - 1 and rec.skipped_rows == whole.skipped_rows + 1
    np.testing.assert_array_equal(rec.data, whole.data[:-1])
    lines = raw.decode().splitlines(keepends=True)
    lines[100] = ",".join(lines[100].split(",")[:10]) + "\n"
    p.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"line 101 has 10 fields; every row must have 24"):
        read_recording(p)


@pytest.mark.parametrize("fmt, value", [("openbci", "1e400"), ("openbci", "-inf"),
                                        ("brainflow", "inf"), ("nacf-csv", "1e999"),
                                        ("npz", "inf")])
def test_an_infinite_sample_is_refused_naming_the_file_row_and_channel(tmp_path, fmt, value):
    """A number no headset measures (a float overflow written out as 1e400, an 'inf') was
    read as an infinite sample: it passed on to the filters, turning a whole recording's
    features into NaN (or, streamed, to the server's refusal much later)."""
    if fmt == "openbci":
        rows = _OBCI_ROWS.splitlines()
        rows[7] = "7, 1.0, 1.0, " + value + ", 1.0, 1.0, 1.0, 1.0, 1.0"
        p = tmp_path / "o.txt"
        p.write_text("%OpenBCI Raw EEG Data\n%Sample Rate = 250 Hz\n" + "\n".join(rows) + "\n")
    elif fmt == "brainflow":
        rows = [[str(i % 256)] + ["1.0"] * 23 for i in range(50)]
        rows[7][3] = value
        p = tmp_path / "bf.csv"
        p.write_text("".join("\t".join(r) + "\n" for r in rows))
    elif fmt == "nacf-csv":
        p = tmp_path / "rec.csv"
        p.write_text("timestamp,Fp1,Fp2,O1\n" + "".join(
            f"{i / 250:.4f},1,2,{value if i == 7 else 3}\n" for i in range(50)))
    else:
        data = np.ones((50, 3), np.float32)
        data[7, 2] = np.inf
        p = _npz(tmp_path, data=data, ch_names=np.array(["A", "B", "C"]))
    with pytest.raises(ValueError, match=r"infinite.*row 8.*channel 3") as ei:
        read_recording(p)
    assert str(p) in str(ei.value)


def _edf_with_dims(tmp_path, signals, labels, dims, phys=(-3000.0, 3000.0), name="u.edf"):
    """An EDF (256 Hz, 2 s) whose signals state the physical dimensions ``dims``."""
    p = tmp_path / name
    gain = _write_edf(p, signals, labels, [256] * len(signals), dim="Q", phys=phys)
    raw = bytearray(p.read_bytes())
    ns = len(signals)
    off = 256 + ns * (16 + 80)  # the physical dimensions, 8 bytes per signal
    for i, d in enumerate(dims):
        raw[off + 8 * i : off + 8 * (i + 1)] = d.encode("latin-1").ljust(8)
    p.write_bytes(bytes(raw))
    return p, gain


@pytest.mark.parametrize("dim", ["counts", "a.u.", "mV?"])
def test_edf_eeg_channel_in_a_unit_that_is_not_a_voltage_is_refused(tmp_path, dim):
    """An EEG signal whose physical dimension is not a voltage (ADC counts, arbitrary
    units, a typo) was read as microvolts with only a warning, so it was enrolled and
    matched at whatever scale it had; LSL streams are refused in that case. Now EDF is
    too, naming the signal and its unit and how to state the unit instead."""
    t = np.arange(0, 2, 1 / 256)
    x = np.sin(2 * np.pi * 10 * t) * 100
    p, _ = _edf_with_dims(tmp_path, [x, x], ["Fp1", "O2"], ["uV", dim])
    with pytest.raises(ValueError) as err:
        read_recording(p)
    msg = str(err.value)
    assert str(p) in msg and f"'O2' ({dim!r})" in msg and "'Fp1'" not in msg
    assert f"file:{p}?units=uV" in msg and "units=" in msg


def test_edf_units_option_states_the_unit_of_every_signal(tmp_path):
    """``read_recording(units=U)``, ``FileSource(units=U)`` and ``file:PATH?units=U``
    state the voltage unit of every signal instead of the header's."""
    from nacf_core.hardware.playback import FileSource
    from nacf_core.hardware.sources import open_source

    t = np.arange(0, 2, 1 / 256)
    x = np.sin(2 * np.pi * 10 * t) * 100
    p, gain = _edf_with_dims(tmp_path, [x, x / 2], ["Fp1", "O2"], ["counts", "counts"])
    rec = read_recording(p, units="uV")
    np.testing.assert_allclose(rec.data[:, 0], x, atol=gain)
    np.testing.assert_allclose(rec.data[:, 1], x / 2, atol=gain)
    np.testing.assert_allclose(read_recording(p, units="mV").data[:, 0], x * 1000,
                               atol=gain * 1000)
    # the header's own units are replaced, a voltage one too
    q, gain = _edf_with_dims(tmp_path, [x], ["Fp1"], ["mV"], name="mv.edf")
    np.testing.assert_allclose(read_recording(q, units="uV").data[:, 0], x, atol=gain)
    with FileSource(p, speed=0, units="nV") as src:
        chunk = src.read_chunk(timeout=1.0)
        np.testing.assert_allclose(chunk.samples[:, 0], x[: chunk.n_times] / 1000,
                                   atol=gain / 1000 + 1e-4)
    with open_source(f"file:{p}?units=uV&speed=0") as src:
        chunk = src.read_chunk(timeout=1.0)
        np.testing.assert_allclose(chunk.samples[:, 0], x[: chunk.n_times], atol=gain + 1e-4)


def test_edf_signal_that_is_not_eeg_keeps_its_numbers_in_its_own_unit(tmp_path, caplog):
    """A signal that is not EEG (a temperature, a pulse oximeter) in a unit that is not a
    voltage is never used as EEG: its numbers are kept (logged), the file is read."""
    t = np.arange(0, 2, 1 / 256)
    x = np.sin(2 * np.pi * 10 * t) * 100
    temp = np.full_like(t, 36.5)
    p, gain = _edf_with_dims(tmp_path, [x, temp], ["Fp1", "Temp"], ["uV", "degC"])
    with caplog.at_level("INFO", logger="nacf.hardware"):
        rec = read_recording(p)
    np.testing.assert_allclose(rec.data[:, 0], x, atol=gain)
    np.testing.assert_allclose(rec.data[:, 1], temp, atol=gain)
    assert any("'Temp' ('degC')" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("units", ["counts", "", "uV,mV", 5])
def test_a_units_option_that_is_not_a_voltage_is_refused_for_files(tmp_path, units):
    t = np.arange(0, 2, 1 / 256)
    p, _ = _edf_with_dims(tmp_path, [t], ["Fp1"], ["uV"])
    with pytest.raises(ValueError, match="'units' must be one voltage unit"):
        read_recording(p, units=units)


def test_a_units_option_on_a_format_in_microvolts_is_refused(tmp_path):
    """Only EDF/BDF headers state a unit per signal; the other formats are microvolts by
    definition, so ``units=`` there would only rescale them wrongly."""
    p = write_npz(tmp_path / "r.npz", np.zeros((512, 2), np.float32), 256.0, ["Fp1", "O2"])
    with pytest.raises(ValueError, match=r"'units' applies to EDF and BDF files"):
        read_recording(p, units="uV")


def test_nacf_simulate_units_states_the_unit_of_an_edf_in_counts(tmp_path, capsys):
    """``nacf simulate`` reads its recording itself: an EDF whose EEG signals are in
    counts is refused there too, naming ``--units``, and plays with ``--units uV``."""
    from nacf_core.cli import main

    t = np.arange(0, 2, 1 / 256)
    x = np.sin(2 * np.pi * 10 * t) * 100
    p, _ = _edf_with_dims(tmp_path, [x] * 8, ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"],
                          ["counts"] * 8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert main(["simulate", str(p), "--seconds", "0.1", "--port-dir", str(tmp_path / "a")]) == 2
    assert "--units uV" in capsys.readouterr().err
    assert main(["simulate", str(p), "--units", "uV", "--seconds", "0.1",
                 "--port-dir", str(tmp_path / "b")]) == 0


def test_edf_signals_a_montage_names_as_eeg_are_checked_by_those_names(tmp_path):
    """A montage renames an EDF's signals: signals labelled 'Ch1', 'Ch2' (no electrode)
    in counts were let through as 'not EEG', then named Fp1 and O2 by the montage and
    used as EEG at whatever scale they had. As for LSL, the names they are read under
    decide; the header's labels are still named in the message."""
    t = np.arange(0, 2, 1 / 256)
    x = np.sin(2 * np.pi * 10 * t) * 100
    p, gain = _edf_with_dims(tmp_path, [x, x], ["Ch1", "Ch2"], ["counts", "counts"])
    with pytest.raises(ValueError, match=r"'Ch1' \('counts'\).*'Ch2' \('counts'\)"):
        read_recording(p, montage="Fp1,O2")
    rec = read_recording(p, montage="Fp1,O2", units="uV")
    assert rec.ch_names == ["Fp1", "O2"]
    np.testing.assert_allclose(rec.data[:, 1], x, atol=gain)
    assert read_recording(p).ch_names == ["Ch1", "Ch2"]  # not EEG by their own names


@pytest.mark.parametrize("labels, msg", [
    (["Fp1", "Fp1", "T7"], r"signals 1 and 2 are both Fp1"),
    (["EEG T3-REF", "Cz", "T7"], r"signals 1 and 3 are both T7 \(labelled 'EEG T3-REF' and "
                                 r"'T7'\)"),
])
def test_edf_labelling_one_electrode_twice_is_refused_unless_a_montage_renames(
        tmp_path, labels, msg):
    """MNE renamed two signals labelled Fp1 to 'Fp1-0' and 'Fp1-1', names no electrode:
    the model then said the recording lacked Fp1, which it has twice. The LSL reader and
    the montages refuse one electrode named twice; so does the EDF reader now (a signal
    that is not EEG may repeat: MNE's renaming is harmless there)."""
    t = np.arange(512) / 256
    p = tmp_path / "dup.edf"
    _write_edf(p, [np.sin(t) * 10, np.cos(t) * 10, t], labels, [256, 256, 256])
    with pytest.raises(ValueError, match=r"EDF file '.*dup\.edf' labels one electrode twice: "
                                         + msg + r".*montage"):
        read_recording(p)
    assert read_recording(p, montage="Fp1,Fp2,T7").ch_names == ["Fp1", "Fp2", "T7"]
    _write_edf(p, [np.sin(t) * 10, np.cos(t) * 10, t], ["Fp1", "EMG", "EMG"], [256] * 3)
    assert read_recording(p).ch_names == ["Fp1", "EMG-0", "EMG-1"]


@pytest.mark.parametrize("bad, shown", [('"3"', "'\"3\"'"), ("1,5e2", None), ("12 uV", "'12 uV'")])
def test_nacf_csv_value_that_is_no_number_names_its_line_and_channel(tmp_path, bad, shown):
    """A nacf CSV field that is no number was reported with numpy's 0-based data row
    ('at row 4, column 3'), which is neither the file's line (6) nor a channel name."""
    lines = ["timestamp,Fp1,Fp2"] + [f"{i / 250:.6f},1,2" for i in range(10)]
    lines[5] = f"{4 / 250:.6f},1,{bad}"
    p = tmp_path / "rec.csv"
    p.write_text("\n".join(lines) + "\n")
    if shown is None:  # a comma in the value: one field too many, said as such
        with pytest.raises(ValueError, match=r"line 6 has 4 fields"):
            read_recording(p)
        return
    with pytest.raises(ValueError, match=r"rec\.csv' is malformed: line 6, channel 'Fp2': "
                                         + re.escape(shown) + r" is not a number \(expected "
                                         r"microvolts, or an empty field for a dropped sample\)"):
        read_recording(p)


@pytest.mark.parametrize("back_s", [0.0, 100.0])
def test_nacf_csv_whose_timestamps_go_back_is_refused_naming_the_line(tmp_path, back_s):
    """Two nacf recordings joined into one file (or a clock set back): the timestamps
    start again. Starting again where the first began, the span over the samples gave
    twice the rate (a 250 Hz recording read at 500 Hz, every filter and epoch wrong);
    going back further, the error said the rate could not be estimated, not why. The
    timestamps of a nacf CSV only go forward; unless sfreq= is given, one that goes back
    is refused, naming its line."""
    t0 = 1.7e9
    times = [t0 + i / 250 for i in range(2500)] + [t0 - back_s + i / 250 for i in range(2500)]
    p = _nacf_csv(tmp_path, "timestamp,Fp1,Fp2", [f"{x:.6f}" for x in times])
    with pytest.raises(ValueError, match=r"rec\.csv': the timestamp on line 2502 "
                                         rf"\({t0 - back_s:.6f}\) is before the one on line "
                                         rf"2501 \({times[2499]:.6f}\).*sfreq="):
        read_recording(p)
    rec = read_recording(p, sfreq=250)
    assert rec.sfreq == 250.0 and rec.n_times == 5000


def _edf_plus(path, onsets, kind=b"EDF+D"):
    """An EDF+ file (1 s records, Fp1 and O2 at 256 Hz) whose records start at ``onsets``
    (seconds, the time-keeping annotation of each record)."""
    n = len(onsets)
    t = np.arange(n * 256) / 256
    _write_edf(path, [np.sin(2 * np.pi * 10 * t) * 50, np.cos(t) * 20, np.zeros(n * 30)],
               ["Fp1", "O2", "EDF Annotations"], [256, 256, 30])
    raw = bytearray(path.read_bytes())
    raw[192:236] = kind.ljust(44)
    header, size = 256 + 256 * 3, (256 + 256 + 30) * 2
    for k, onset in enumerate(onsets):
        tal = f"+{onset:g}".encode() + b"\x14\x14\x00"
        at = header + k * size + 512 * 2
        raw[at : at + 60] = tal.ljust(60, b"\x00")
    path.write_bytes(raw)


def test_edf_plus_d_with_gaps_is_refused_and_without_gaps_is_read(tmp_path):
    """An EDF+D file (discontinuous: its records say when each starts) was read as one
    continuous signal by MNE, its gaps closed without a word: 10 s lost between two
    records became a splice inside an epoch, and every later sample was 10 s early on
    the recording's timeline. Such a file is now refused naming the first gap; an EDF+D
    whose records follow each other (most are) is read as before."""
    p = tmp_path / "d.edf"
    _edf_plus(p, [0, 1, 2, 13, 14])
    with pytest.raises(ValueError, match=r"EDF file '.*d\.edf' is discontinuous \(EDF\+D\): "
                                         r"data record 4 starts at 13 s, 10 s after record 3 "
                                         r"ends \(1 gap, 10 s in all\)"):
        read_recording(p)
    _edf_plus(p, [0, 1, 2, 3, 4])
    rec = read_recording(p)
    assert rec.n_times == 5 * 256 and rec.ch_names == ["Fp1", "O2"]


def test_edf_with_no_signal_but_its_annotations_is_refused_by_name(tmp_path):
    """An EDF+ holding only its annotations channel (an events file exported apart from
    the signals) failed with MNE's 'picks (None, treated as "all") yielded no channels,
    consider passing picks explicitly', which names neither the file nor what it lacks."""
    p = tmp_path / "events.edf"
    _write_edf(p, [np.zeros(60)], ["EDF Annotations"], [30])
    with pytest.raises(ValueError, match=r"EDF file '.*events\.edf' holds no signal besides "
                                         r"its annotations"):
        read_recording(p)


@pytest.mark.parametrize("extra", ["truncated-last", "blank-lines"])
def test_openbci_malformed_line_number_is_the_files_line(shared_data, tmp_path, extra):
    """The line named for a malformed OpenBCI sample was off: one more when the file also
    ended in a truncated line (dropped at the end, counted before), and fewer when blank
    lines came before it (left out of the count)."""
    lines = (shared_data / OPENBCI_FILES[2]).read_text().splitlines()[:100]
    lines[50] = "44, 1.0, oops, 3.0"
    if extra == "truncated-last":
        lines[-1] = lines[-1][:10]
    else:
        lines[30:30] = ["", "   "]
    p = tmp_path / "bad.txt"
    p.write_text("\n".join(lines) + "\n")
    want = lines.index("44, 1.0, oops, 3.0") + 1
    with pytest.raises(ValueError, match=rf"malformed sample line {want}: '44, 1.0, oops"):
        read_recording(p)


@pytest.mark.parametrize("name", BRAINFLOW_FILES)
def test_brainflow_value_that_is_no_number_names_the_files_line(shared_data, tmp_path, name):
    """A BrainFlow CSV field that is no number was reported with numpy's 0-based row
    ('at row 44, column 3', the file's line 45), not the file's line."""
    src = shared_data / name
    sep = "\t" if "\t" in src.open().readline() else ","
    lines = src.read_text().splitlines()[:100]
    fields = lines[44].split(sep)
    fields[2] = "oops"
    lines[44] = sep.join(fields)
    p = tmp_path / "bf.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bf\.csv' is malformed: line 45, column 3: 'oops' "
                                         r"is not a number"):
        read_recording(p)
