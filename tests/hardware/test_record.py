"""``nacf record`` (and ``nacf simulate`` end to end)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nacf_core.cli import main
from nacf_core.hardware.cyton import decode_packets, encode_packets, uv_per_count
from nacf_core.hardware.files import read_recording
from nacf_core.hardware.simulator import Faults, SimulatedCyton
from nacf_core.hardware.sources import open_source, parse_source

DEMO = Path(__file__).resolve().parents[2] / "nacf_core" / "data" / "demo" / "S024R07.npz"


@pytest.fixture(scope="module")
def recording():
    return read_recording(DEMO, stop_s=10)


def _read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_record_cyton_exact_values(recording, tmp_path, capsys):
    out = tmp_path / "rec.csv"
    with SimulatedCyton(recording, realtime=False) as sim:
        rc = main(["record", "--source", f"cyton:{sim.port}", "--seconds", "1.2",
                   "--out", str(out)])
        start = sim.stream_starts[0]
    assert rc == 0, capsys.readouterr()
    header, rows = _read_csv(out)
    assert header == ["timestamp", "Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]
    assert len(rows) == 300
    vals = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float32)
    counts = np.rint(sim.signal[start:start + 300] / uv_per_count()).astype(np.int64)
    _, expect, _ = decode_packets(encode_packets(np.zeros(300), counts))
    np.testing.assert_array_equal(vals, expect)  # the CSV holds exactly what nacf read
    ts = np.array([float(r[0]) for r in rows])
    assert np.all(np.diff(ts) > 0)
    assert "wrote 300 samples" in capsys.readouterr().out


def test_dropped_samples_are_empty_fields(recording, tmp_path):
    out = tmp_path / "drops.csv"
    with SimulatedCyton(recording, realtime=False, faults=Faults(drop=0.05, seed=3)) as sim:
        rc = main(["record", "--source", f"cyton:{sim.port}?montage=a,b,c,d,e,f,g,h",
                   "--seconds", "4", "--out", str(out)])
    assert rc == 0
    header, rows = _read_csv(out)
    assert header[1:] == list("abcdefgh") and len(rows) == 1000
    empty = [r for r in rows if r[1:] == [""] * 8]
    assert len(empty) > 10
    assert all(all(v != "" for v in r[1:]) for r in rows if r not in empty)
    assert sim.stats["dropped"] >= len(empty) > 0


def test_record_daisy_and_montage_flag(recording, tmp_path):
    out = tmp_path / "daisy.csv"
    names = ",".join(f"E{i}" for i in range(16))
    with SimulatedCyton(recording, daisy=True, realtime=False) as sim:
        rc = main(["record", "--source", f"cyton-daisy:{sim.port}", "--seconds", "1",
                   "--out", str(out), "--montage", names])
    assert rc == 0
    header, rows = _read_csv(out)
    assert header[1:] == names.split(",") and len(rows) == 125


def test_record_file_source(tmp_path):
    out = tmp_path / "file.csv"
    assert main(["record", "--source", f"file:{DEMO}?speed=0", "--seconds", "2",
                 "--out", str(out)]) == 0
    header, rows = _read_csv(out)
    rec = read_recording(DEMO, stop_s=2)
    assert header[1:] == rec.ch_names and len(rows) == 320
    np.testing.assert_array_equal(np.array([[float(v) for v in r[1:]] for r in rows],
                                           np.float32), rec.data.astype(np.float32))


@pytest.mark.parametrize("source, message", [
    ("cyton:/nonexistent/ttyUSB7", "does not exist"),
    ("serial:/dev/ttyUSB0", "Allowed kinds"),
    ("cyton:", "names no port"),
    ("file:x.edf?speed=fast", "must be a number"),
    ("cyton:/dev/ttyUSB0?rate=9", "Options for cyton"),
    # the handshake timeout was refused under its parameter's name, 'handshake_timeout',
    # which the SOURCE string the user wrote does not have
    ("cyton:/dev/ttyUSB0?timeout=0", "Option 'timeout' of the source "
                                     "'cyton:/dev/ttyUSB0?timeout=0' must be a finite number "
                                     "of seconds > 0, got '0'"),
    ("cyton-daisy:/dev/ttyUSB0?timeout=nan", "Option 'timeout' of the source"),
])
def test_record_bad_source(source, message, tmp_path, capsys):
    rc = main(["record", "--source", source, "--seconds", "1", "--out",
               str(tmp_path / "x.csv")])
    assert rc == 1
    assert message in capsys.readouterr().err


def test_parse_source():
    s = parse_source("cyton:/dev/ttyUSB0?montage=Fp1,Fp2,C3,C4,P7,P8,O1,O2")
    assert (s.kind, s.target, s.options["montage"]) == ("cyton", "/dev/ttyUSB0",
                                                        "Fp1,Fp2,C3,C4,P7,P8,O1,O2")
    assert parse_source("file:/a/b.edf?speed=4").options == {"speed": "4"}
    assert parse_source("lsl:My Stream").target == "My Stream"
    src = open_source("cyton-daisy:/dev/ttyUSB3")
    assert src.n_channels == 16 and src.sfreq == 125.0 and not src.connected
    with pytest.raises(ValueError, match="montage"):
        open_source("cyton:/dev/ttyUSB0?montage=Fp1")


def test_parse_source_splits_at_the_first_question_mark():
    s = parse_source("lsl:My Stream?timeout=2&montage=C3,C4")
    assert (s.target, s.options) == ("My Stream", {"timeout": "2", "montage": "C3,C4"})
    assert parse_source(" lsl:X \n").target == "X"  # surrounding whitespace is stripped


@pytest.mark.parametrize("source, message", [
    ("lsl:X?bogus=1&?", "more than one '\\?'"),
    ("lsl:X?timeout=1&?", "more than one '\\?'"),
    ("file:a?b.edf?speed=2", "more than one '\\?'"),
    ("lsl:X?", "empty option"),
    ("lsl:X?timeout=1&", "empty option"),
    ("file:x.edf?speed=1&&montage=a", "empty option"),
    ("file:x.edf?speed=1&speed=2", "'speed' is given twice"),
    ("lsl:X?timeout", "Invalid option 'timeout'"),
    ("lsl:X\x00Y", "target .* contains a control character \\('\\\\x00'\\)"),
    ("file:/tmp/a\nb.edf", "target .* contains a control character"),
    ("cyton:/dev/tty\x1bUSB0?timeout=1", "target .* contains a control character"),
    ("lsl:X?montage=a\x00b", "option 'montage' .* contains a control character"),
])
def test_parse_source_refuses_malformed_strings(source, message):
    with pytest.raises(ValueError, match=message):
        parse_source(source)


def test_simulate_command_end_to_end(tmp_path):
    """``nacf simulate`` in its own process, ``nacf record`` reading its port."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "simulate", str(DEMO), "--speed", "4",
         "--faults", "garbage=0.02,seed=1", "--seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        port = proc.stdout.readline().strip()
        assert port and os.path.exists(port), proc.stderr.read()
        out = tmp_path / "sim.csv"
        t = time.monotonic()
        assert main(["record", "--source", f"cyton:{port}", "--seconds", "2",
                     "--out", str(out)]) == 0
        assert time.monotonic() - t < 10
        header, rows = _read_csv(out)
        assert len(rows) == 500 and header[1] == "Fp1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_simulate_lsl_then_record_lsl(tmp_path):
    """``nacf simulate --lsl NAME`` in its own process, ``nacf record --source lsl:NAME``."""
    import uuid

    name = f"nacf-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "simulate", str(DEMO), "--lsl", name,
         "--seconds", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout.readline().strip() == f"lsl:{name}"
        out = tmp_path / "lsl.csv"
        assert main(["record", "--source", f"lsl:{name}?timeout=15", "--seconds", "1",
                     "--out", str(out)]) == 0
        header, rows = _read_csv(out)
        rec = read_recording(DEMO)
        assert header[1:] == rec.ch_names and len(rows) == 160
        vals = np.array([[float(v) for v in r[1:]] for r in rows], np.float32)
        # consecutive samples of the recording, wherever the inlet joined
        data = rec.data.astype(np.float32)
        k = int(np.flatnonzero(np.all(data == vals[0], axis=1))[0])
        np.testing.assert_array_equal(vals, data[k:k + 160])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_failed_record_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, capsys):
    out = tmp_path / "rec.csv"
    out.write_text("an earlier recording\n")
    # the demo file holds 60 s: the source ends before 100 s are recorded
    rc = main(["record", "--source", f"file:{DEMO}?speed=0", "--seconds", "100",
               "--out", str(out)])
    assert rc == 1
    assert "ended after 9600 of 16000 samples" in capsys.readouterr().err
    assert out.read_text() == "an earlier recording\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv"]


def test_full_disk_while_recording_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import errno

    from nacf_core.commands import record as record_cmd

    write = record_cmd._write_rows
    calls = []

    def write_until_full(fh, timestamps, samples):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(fh, timestamps, samples)

    monkeypatch.setattr(record_cmd, "_write_rows", write_until_full)
    out = tmp_path / "rec.csv"
    rc = main(["record", "--source", f"file:{DEMO}?speed=0", "--seconds", "2",
               "--out", str(out)])
    assert rc == 1 and len(calls) == 4
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_while_recording_leaves_no_partial_file(tmp_path, signame):
    """SIGHUP (the terminal or the SSH session that ran nacf record closed) killed the
    process as it stood, leaving its hidden .part file (all the rows so far) for good;
    it now unwinds like SIGTERM and Ctrl-C."""
    import signal

    out = tmp_path / "rec.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "record", "--source", f"file:{DEMO}?speed=1",
         "--seconds", "50", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # wait until rows are being written (whatever the file is called meanwhile)
        end = time.monotonic() + 60
        while not any(p.stat().st_size > 200 for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in err and "interrupted" in err
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("argv, message", [
    (["--seconds", "1e308"], "'seconds' must be"),
    (["--seconds", "nan"], "'seconds' must be"),
    (["--seconds", "1", "--timeout", "-1"], "'timeout' must be"),
])
def test_record_refuses_absurd_durations(argv, message, tmp_path, capsys):
    out = tmp_path / "x.csv"
    rc = main(["record", "--source", f"file:{DEMO}?speed=0", *argv, "--out", str(out)])
    assert rc == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("bad", ["T7,T8", "Cz\nPz", "Oz\r"])
def test_record_refuses_channel_names_the_csv_header_cannot_hold(bad, tmp_path, capsys):
    from nacf_core.hardware.files import write_npz

    x = np.zeros((500, 3), np.float32)
    rec = write_npz(tmp_path / "names.npz", x, 250.0, [bad, "C3", "C4"])
    out = tmp_path / "x.csv"
    rc = main(["record", "--source", f"file:{rec}?speed=0", "--seconds", "1",
               "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"channel name {bad!r}" in err and "--montage" in err
    assert not out.exists()
    # renamed, the same source records and reads back
    assert main(["record", "--source", f"file:{rec}?speed=0", "--seconds", "1",
                 "--out", str(out), "--montage", "a,C3,C4"]) == 0
    assert read_recording(out).ch_names == ["a", "C3", "C4"]


def test_source_help_of_record_and_client_lists_the_units_option(capsys):
    """``nacf client --help`` listed ``lsl:NAME[?type=EEG]`` without ``units=``, which a
    stream in a unit that is not a voltage needs, and neither command listed it for
    ``file:`` (EDF/BDF headers in such a unit are refused without it)."""
    from nacf_core.cli import main

    for argv in (["record", "--help"], ["client", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "lsl:NAME[?type=EEG&units=uV]" in out and "file:PATH[?speed=N&units=uV]" in out


@pytest.mark.parametrize("where, message", [
    ("missing/x.csv", "does not exist or is not writable"),
    ("a_dir", "is a directory; expected a file to write"),
    ("", "'' is an empty file name; expected a file to write"),
])
def test_record_refuses_an_out_it_cannot_write_before_opening_the_source(
        where, message, tmp_path, capsys, raised_without_blocking):
    """--out in a missing folder, a folder, or '' was tried only once the source was open
    (an LSL stream resolved, a Cyton's session started), and '' only once every row had
    been recorded, then lost: '[Errno 2] No such file or directory: '...part' -> '''."""
    (tmp_path / "a_dir").mkdir()
    out = str(tmp_path / where) if where else ""
    rc = []
    # nothing answers: the source alone would take the whole 30 s to give up
    exc = raised_without_blocking(lambda: rc.append(main(
        ["record", "--source", "lsl:nacf-absent-stream?timeout=30", "--seconds", "1",
         "--out", out])))
    assert exc is None and rc == [1]
    err = capsys.readouterr().err
    assert f"nacf record: --out {out!r}" in err and message in err, err
    assert "LSL" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir"]


def test_record_writes_utf8_whatever_the_locale(tmp_path):
    """The CSV was written in the locale's encoding while the reader reads UTF-8: under
    an ASCII locale (LC_ALL=C without UTF-8 mode) a channel named with a letter outside
    ASCII failed the recording ('ascii' codec can't encode), and under a Latin-1 or
    cp1252 locale it wrote a file nacf refused to read back (not UTF-8)."""
    names = ["Ö1", "Fp2", "µV?"]  # labels a file brings (not argv, which the locale decodes)
    src = tmp_path / "src.csv"
    src.write_text("timestamp," + ",".join(names) + "\n"
                   + "".join(f"{i / 250:.6f},1,2,3\n" for i in range(500)), encoding="utf-8")
    out = tmp_path / "u.csv"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "nacf_core.cli", "record", "--source", f"file:{src}?speed=0",
         "--seconds", "1", "--out", str(out)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_recording(out).ch_names == names


def test_record_refuses_to_write_over_the_file_it_reads(tmp_path, capsys, monkeypatch):
    # `--source file:rec.csv --out rec.csv`: the recording replaced its own source, the
    # rest of it lost, and said "wrote 160 samples" as a success
    rec = tmp_path / "rec.csv"
    assert main(["record", "--source", f"file:{DEMO}?speed=0", "--seconds", "3",
                 "--out", str(rec)]) == 0
    before = rec.read_bytes()
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    rc = main(["record", "--source", "file:./rec.csv?speed=0", "--seconds", "1",
               "--out", str(rec)])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "", (rc, out)
    assert (f"nacf record: --out {str(rec)!r} is the recording the source "
            "'file:./rec.csv?speed=0' reads: write it elsewhere." in err), err
    assert rec.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.csv"]
