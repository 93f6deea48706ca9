"""Generated damage to recording files: whatever is in a file, ``read_recording`` returns
a recording of samples (numbers, or NaN for a dropped one; never infinite) whose shape
agrees with its channels, or refuses the file
with a ``ValueError`` that names it; never another exception (an IndexError, an
OverflowError, a struct.error from deep inside a parser) nor a hang.

A valid small EDF (written by hand from the EDF specification) has one header field
replaced, its body cut or its header bytes overwritten; an OpenBCI GUI text file has
lines replaced by hostile ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacf_core.hardware.files import read_recording

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
RATE, SECONDS, LABELS = 160, 4, ["Fp1", "Fp2", "O1"]

#: (name, offset, width) of the EDF fixed header; per-signal fields follow as
#: (name, width), each block ns fields wide.
FIXED = [("version", 0, 8), ("patient", 8, 80), ("recording", 88, 80), ("startdate", 168, 8),
         ("starttime", 176, 8), ("header_bytes", 184, 8), ("reserved", 192, 44),
         ("n_records", 236, 8), ("record_s", 244, 8), ("ns", 252, 4)]
PER_SIGNAL = [("label", 16), ("transducer", 80), ("dimension", 8), ("pmin", 8), ("pmax", 8),
              ("dmin", 8), ("dmax", 8), ("prefilter", 80), ("n_samples", 8), ("sreserved", 32)]
HOSTILE = ["", " ", "0", "-1", "1", "2", "+3", "nan", "inf", "-inf", "1e308", "-1e308",
           "1e-320", "99999999", "-9999999", "abc", "0x10", "1,5", "3.", ".", "-0",
           "32767", "-32768", "65536", "uV", "mV", "V", "nV", "counts", "\xff\xfe", "\x00"]


def _field(v: str, w: int) -> bytes:
    return v.encode("utf-8").ljust(w, b" ")[:w]


def _edf(fixed: dict, signals: list[dict], body: bytes) -> bytes:
    h = b"".join(_field(fixed[name], w) for name, _, w in FIXED)
    for name, w in PER_SIGNAL:
        h += b"".join(_field(s[name], w) for s in signals)
    return h + body


def _valid_parts(rng: np.random.Generator):
    ns = len(LABELS)
    fixed = {"version": "0", "patient": "X X X X", "recording": "Startdate 01-JAN-2020 X X X",
             "startdate": "01.01.20", "starttime": "10.00.00",
             "header_bytes": str(256 + 256 * ns), "reserved": "", "n_records": str(SECONDS),
             "record_s": "1", "ns": str(ns)}
    signals = [{"label": lab, "transducer": "", "dimension": "uV", "pmin": "-3276.8",
                "pmax": "3276.7", "dmin": "-32768", "dmax": "32767", "prefilter": "",
                "n_samples": str(RATE), "sreserved": ""} for lab in LABELS]
    x = (rng.standard_normal((SECONDS * RATE, ns)) * 300).astype("<i2")
    body = b"".join(x[k * RATE:(k + 1) * RATE, c].tobytes()
                    for k in range(SECONDS) for c in range(ns))
    return fixed, signals, body


def _check(path) -> None:
    try:
        rec = read_recording(path)
    except ValueError as exc:  # UnicodeDecodeError is one too
        assert str(exc), "an empty message"
        return
    assert rec.data.ndim == 2 and rec.data.shape[1] == len(rec.ch_names) >= 1, rec.data.shape
    # NaN is a dropped sample (the nacf CSV's empty field), which every consumer handles;
    # an infinite one is nothing a headset measured
    assert not np.isinf(rec.data).any(), "infinite samples returned"
    assert math.isfinite(rec.sfreq) and rec.sfreq > 0, rec.sfreq


def test_the_unharmed_file_reads(tmp_path):
    fixed, signals, body = _valid_parts(np.random.default_rng(0))
    p = tmp_path / "ok.edf"
    p.write_bytes(_edf(fixed, signals, body))
    rec = read_recording(p)
    assert rec.data.shape == (SECONDS * RATE, 3) and rec.sfreq == RATE
    assert rec.ch_names == LABELS


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_an_edf_with_a_damaged_header_field_reads_or_is_refused_with_a_value_error(
        tmp_path, data):
    fixed, signals, body = _valid_parts(np.random.default_rng(data.draw(st.integers(0, 9))))
    for _ in range(data.draw(st.integers(1, 2))):
        value = data.draw(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=10)))
        if data.draw(st.booleans()):
            name = data.draw(st.sampled_from([n for n, _, _ in FIXED]))
            fixed[name] = value
        else:
            name = data.draw(st.sampled_from([n for n, _ in PER_SIGNAL]))
            signals[data.draw(st.integers(0, len(signals) - 1))][name] = value
    raw = _edf(fixed, signals, body)
    p = tmp_path / "f.edf"
    p.write_bytes(raw)
    _check(p)


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_an_edf_cut_or_overwritten_reads_or_is_refused_with_a_value_error(tmp_path, data):
    fixed, signals, body = _valid_parts(np.random.default_rng(1))
    raw = bytearray(_edf(fixed, signals, body))
    how = data.draw(st.sampled_from(["cut", "overwrite", "append"]))
    if how == "cut":
        raw = raw[: data.draw(st.integers(1, len(raw) - 1))]
    elif how == "overwrite":
        at = data.draw(st.integers(0, 256 + 256 * len(LABELS) - 1))
        junk = data.draw(st.binary(min_size=1, max_size=16))
        raw[at:at + len(junk)] = junk
    else:
        raw += data.draw(st.binary(min_size=1, max_size=700))
    p = tmp_path / "f.edf"
    p.write_bytes(bytes(raw))
    _check(p)


OPENBCI_HEAD = ["%OpenBCI Raw EXG Data", "%Number of channels = 8", "%Sample Rate = 250 Hz",
                "%Board = OpenBCI_GUI$BoardCytonSerial",
                "Sample Index, EXG Channel 0, EXG Channel 1, EXG Channel 2, EXG Channel 3, "
                "EXG Channel 4, EXG Channel 5, EXG Channel 6, EXG Channel 7, Accel Channel 0, "
                "Accel Channel 1, Accel Channel 2, Timestamp"]
HOSTILE_LINES = ["", "%", "%Sample Rate = 0 Hz", "%Sample Rate = nan Hz",
                 "%Sample Rate = 1e308 Hz", "%Number of channels = -3",
                 "%Number of channels = 99999999", "1, 2, 3", "x, y, z",
                 "0, nan, nan, nan, nan, nan, nan, nan, nan, 0, 0, 0, 1",
                 "0, 1e400, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1",
                 "0, inf, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1", ",,,,,,,,,,,,", "\x00\x00",
                 "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18"]


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_an_openbci_text_file_with_hostile_lines_reads_or_is_refused_with_a_value_error(
        tmp_path, data):
    rng = np.random.default_rng(2)
    rows = [", ".join([str(i % 256)] + [f"{v:.2f}" for v in rng.standard_normal(8) * 20]
                      + ["0.0", "0.0", "0.0", f"{1600000000 + i / 250:.3f}"])
            for i in range(250 * 3)]
    lines = OPENBCI_HEAD + rows
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(lines) - 1))
        lines[at] = data.draw(st.one_of(st.sampled_from(HOSTILE_LINES), st.text(max_size=30)))
    p = tmp_path / "OpenBCI-RAW-fuzz.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    _check(p)
