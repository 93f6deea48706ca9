"""The simulated Cyton, spoken to byte by byte like firmware."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from nacf_core.cli import main
from nacf_core.hardware.cyton import decode_packets
from nacf_core.hardware.files import read_recording
from nacf_core.hardware.simulator import Faults, SimulatedCyton, prepare_signal

DEMO = Path(__file__).resolve().parents[2] / "nacf_core" / "data" / "demo" / "S023R03.npz"


def _read_until(fd, token: bytes, timeout=3.0) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while token not in buf:
        assert time.monotonic() < end, f"no {token!r}, got {buf[-200:]!r}"
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            buf += os.read(fd, 4096)
    return buf


def _banner(port: str) -> bytes:
    """What the board at ``port`` answers to ``v`` (its banner, up to ``$$$``)."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"v")
        return _read_until(fd, b"$$$")
    finally:
        os.close(fd)


def _read_n(fd, n, timeout=3.0) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while len(buf) < n:
        assert time.monotonic() < end
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            buf += os.read(fd, n - len(buf))
    return buf


def _drain(fd, quiet=0.3) -> bytes:
    buf = b""
    while True:
        r, _, _ = select.select([fd], [], [], quiet)
        if not r:
            return buf
        buf += os.read(fd, 4096)


@pytest.fixture(scope="module")
def recording():
    return read_recording(DEMO, stop_s=10)


def test_answers_like_firmware(recording):
    with SimulatedCyton(recording, realtime=True, speed=2) as sim:
        assert os.path.islink(sim.port)
        fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"v")
            banner = _read_until(fd, b"$$$").decode()
            assert banner.startswith("OpenBCI V3") and banner.endswith("$$$")
            assert "Daisy" not in banner
            os.write(fd, b"d")
            assert _read_until(fd, b"$$$").endswith(b"updating channel settings to default$$$")
            os.write(fd, b"x1030110X")
            assert _read_until(fd, b"$$$").endswith(b"Success: Channel set for 1$$$")
            assert sim.gains.gains[0] == 6
            os.write(fd, b"b")
            data = _read_n(fd, 33 * 20)
            pk = np.frombuffer(data, np.uint8).reshape(20, 33)
            assert (pk[:, 0] == 0xA0).all() and (pk[:, 32] == 0xC0).all()
            assert pk[:, 1].tolist() == list(range(20))
            # real EEG at gain 6 on channel 1, 24 elsewhere: decodes back to the signal
            _, uv, _ = decode_packets(np.ascontiguousarray(pk), [6] + [24] * 7)
            np.testing.assert_allclose(uv, sim.signal[:20], atol=0.1)
            assert np.abs(uv).max() > 1
            os.write(fd, b"s")
            _drain(fd)
            assert _drain(fd) == b""  # stopped
            assert sim.commands == ["v", "d", "x1030110X", "b", "s"]
        finally:
            os.close(fd)
    assert not os.path.lexists(sim.port)


def test_close_leaves_the_pty_to_a_thread_that_has_not_stopped(recording):
    """close() waited 5 s for the simulator's thread and then closed the pty under it
    all the same: a thread between its select() and its os.read/os.write of the fd (a
    loaded machine) then read, wrote or closed whatever file got that number next in
    the process (a gRPC socket or its epoll, in nacf demo). The pty is now closed by the
    thread itself when it ends, and close() still returns."""
    import threading

    sim = SimulatedCyton(recording, realtime=True)
    sim.stop_wait_s = 0.05
    step, hold = sim._step, [False]
    inside, release = threading.Event(), threading.Event()

    def slow_step():
        if hold[0]:  # still inside a step when close() gives up waiting
            inside.set()
            release.wait(5)
        step()

    sim._step = slow_step
    sim.start()
    master, thread = sim._master, sim._thread
    hold[0] = True
    assert inside.wait(5)
    sim.close()
    assert thread.is_alive()
    os.fstat(master)  # not closed under the running thread
    release.set()
    thread.join(5)
    assert not thread.is_alive() and sim._master == -1
    with pytest.raises(OSError):
        os.fstat(master)
    assert not os.path.lexists(sim.port)


def test_daisy_banner_and_packet_order(recording):
    with SimulatedCyton(recording, daisy=True, realtime=False) as sim:
        fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"v")
            assert b"On Daisy ADS1299" in _read_until(fd, b"$$$")
            os.write(fd, b"b")
            pk = np.frombuffer(_read_n(fd, 33 * 4), np.uint8).reshape(4, 33).copy()
            os.write(fd, b"s")
        finally:
            os.close(fd)
    _, uv, _ = decode_packets(pk)
    assert pk[:, 1].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(uv[0], sim.signal[0, 8:], atol=0.02)   # even: channels 9-16
    np.testing.assert_allclose(uv[1], sim.signal[0, :8], atol=0.02)   # odd: channels 1-8
    assert sim.sfreq == 125.0


def test_a_recording_streamed_once_ends_at_its_end_not_at_its_start():
    """With loop=False the last batch of packets wrapped to the recording's start (the
    index taken modulo its length): a 300-sample recording streamed 320 samples, its
    first 20 joined after its last, finite and continuous for a reader."""
    t = np.arange(300) / 250.0
    data = np.tile(100 * np.sin(2 * np.pi * 7 * t)[:, None], (1, 8))
    rec = SimpleNamespace(data=data, sfreq=250.0, ch_names=[f"c{k}" for k in range(8)])
    with SimulatedCyton(rec, realtime=False, loop=False) as sim:
        fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"v")
            _read_until(fd, b"$$$")
            os.write(fd, b"b")
            raw = _read_n(fd, 33 * 300)
            rest = _drain(fd)
        finally:
            os.close(fd)
    assert len(rest) == 0, f"{len(rest) / 33:g} packets after the recording's end"
    _, uv, _ = decode_packets(np.frombuffer(raw, np.uint8).reshape(-1, 33))
    np.testing.assert_allclose(uv[-1], sim.signal[-1], atol=0.05)


@pytest.mark.parametrize("daisy", [False, True])
def test_a_recordings_dropped_samples_are_not_streamed_as_zeros(daisy):
    """A recording with an outage (rows of NaN: a nacf record CSV made across a
    reconnect) was streamed with 0 µV in place of the lost samples, so a reader got the
    signal on either side joined by a flat stretch, finite and continuous; those packets
    are now never sent, their counters skipped (a lost radio packet), as a real board's."""
    sfreq = 125.0 if daisy else 250.0
    t = np.arange(300) / sfreq
    data = np.tile(100 * np.sin(2 * np.pi * 10 * t)[:, None], (1, 16 if daisy else 8))
    data[100:150] = np.nan
    rec = SimpleNamespace(data=data, sfreq=sfreq, ch_names=[f"c{k}" for k in range(
        data.shape[1])])
    per = 2 if daisy else 1
    with SimulatedCyton(rec, daisy=daisy, realtime=False, loop=False) as sim:
        fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"v")
            _read_until(fd, b"$$$")
            os.write(fd, b"b")
            raw = _read_n(fd, 33 * 250 * per)
            rest = _drain(fd)
        finally:
            os.close(fd)
    assert rest == b""  # nothing more: 50 samples were never sent
    pk = np.frombuffer(raw, np.uint8).reshape(-1, 33)
    counters = pk[:, 1].astype(int)
    expected = np.r_[np.arange(100 * per), np.arange(150 * per, 300 * per)] & 0xFF
    assert counters.tolist() == expected.tolist()
    assert sim.stats["missing"] == 50 * per
    _, uv, _ = decode_packets(pk)
    assert np.abs(uv[:, 0]).max() > 50  # the signal, no zeros in place of the gap
    assert (np.abs(uv[100 * per:110 * per, 0]) > 0.5).mean() > 0.5


def test_prepare_signal_picks_montage_and_resamples():
    rng = np.random.default_rng(0)
    names = ["Fc5.", "O2..", "Fp1.", "Fp2.", "C3..", "C4..", "P7..", "P8..", "O1..", "Cz.."]
    rec = SimpleNamespace(data=rng.normal(size=(1600, 10)), sfreq=160.0, ch_names=names)
    data, ch = prepare_signal(rec, 8, 250.0)
    assert ch == ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]
    assert data.shape == (2500, 8)
    # a 10 Hz sine stays a 10 Hz sine after resampling
    t = np.arange(1600) / 160
    rec2 = SimpleNamespace(data=np.sin(2 * np.pi * 10 * t)[:, None] * np.ones((1, 8)),
                           sfreq=160.0, ch_names=[f"c{i}" for i in range(8)])
    d2, ch2 = prepare_signal(rec2, 8, 250.0)
    tt = np.arange(2500) / 250
    np.testing.assert_allclose(d2[100:-100, 0], np.sin(2 * np.pi * 10 * tt)[100:-100], atol=0.02)
    assert ch2 == [f"c{i}" for i in range(8)]


def test_prepare_signal_refuses_one_electrode_named_twice():
    """T5 next to P7 (one electrode, its old and new name): the simulated board sent the
    first of them as P7 and dropped the other without a word."""
    names = ["Fp1.", "Fp2.", "C3..", "C4..", "T5..", "P7..", "P8..", "O1..", "O2.."]
    rec = SimpleNamespace(data=np.zeros((160, 9)), sfreq=160.0, ch_names=names)
    with pytest.raises(ValueError, match=r"P7 \(written 'T5\.\.' and 'P7\.\.'\)"):
        prepare_signal(rec, 8, 250.0)


def test_fewer_channels_are_padded():
    rec = SimpleNamespace(data=np.ones((250, 3)), sfreq=250.0, ch_names=["a", "b", "c"])
    data, ch = prepare_signal(rec, 8, 250.0)
    assert data.shape == (250, 8) and (data[:, 3:] == 0).all() and ch[:3] == ["a", "b", "c"]


def test_accepts_a_path_and_validates():
    with SimulatedCyton(str(DEMO), realtime=False) as sim:
        assert sim.ch_names == ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]
    with pytest.raises(TypeError, match="recording"):
        SimulatedCyton(object())
    with pytest.raises(ValueError, match="speed"):
        SimulatedCyton(str(DEMO), speed=0)


def test_faults_parse():
    f = Faults.parse("garbage=0.1, drop=0.05,railed=3,disconnect=2:0.5,seed=9")
    assert (f.garbage, f.drop, f.railed, f.disconnect_after, f.disconnect_for, f.seed) == \
        (0.1, 0.05, 3, 2.0, 0.5, 9)
    assert Faults.parse("") == Faults()
    with pytest.raises(ValueError, match="Allowed faults"):
        Faults.parse("explode=1")
    with pytest.raises(ValueError, match="garbage"):
        Faults.parse("garbage=2")
    with pytest.raises(ValueError, match="drop"):
        Faults.parse("drop=x")


@pytest.mark.parametrize("spec, match", [
    ("disconnects=-1", r"'faults.disconnects' must be an integer >= 0, got -1"),
    ("disconnect=2,disconnects=-3", r"'faults.disconnects' must be an integer >= 0, got -3"),
    ("seed=-1", r"'faults.seed' must be an integer >= 0, got -1"),
])
def test_faults_that_cannot_be_are_named(spec, match):
    """disconnects=-1 was taken as no disconnect at all (a test of a reader's recovery
    streamed a clean signal), and seed=-1 was refused only by NumPy, as 'expected
    non-negative integer', naming neither the fault nor the value."""
    with pytest.raises(ValueError, match=match):
        Faults.parse(spec)


def test_no_reader_keeps_memory_bounded(recording):
    with SimulatedCyton(recording, realtime=True, speed=50) as sim:
        fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
        os.write(fd, b"b")
        os.close(fd)
        # 12 500 packets a second, nobody reading; on a loaded machine the simulator
        # may fall behind, so wait for the packets rather than for a fixed time
        # The bound: 64 KiB held, plus the one step (at most 250 packets) the thread may
        # have produced and not yet trimmed when the test looks (read without its lock)
        bound = (1 << 16) + 250 * 33
        deadline = time.monotonic() + 20.0
        while sim.stats["packets"] <= 5000 and time.monotonic() < deadline:
            assert len(sim._out) <= bound
            time.sleep(0.05)
        assert len(sim._out) <= bound
        assert sim.stats["packets"] > 5000


def test_a_very_fast_speed_keeps_streaming(recording):
    sim = SimulatedCyton(recording, speed=1e307)  # not started: drive one step by hand
    try:
        sim._streaming = True
        sim._t0 = time.monotonic() - 1.0  # one second on: 2.5e309 packets due (inf)
        sim._produce()  # OverflowError before (it killed the streaming thread)
        assert sim.stats["packets"] == 250  # at most one second's worth per step
    finally:
        sim.close()


@pytest.mark.parametrize("spec, daisy", [("railed=8", False), ("railed=-1", False),
                                         ("railed=16", True)])
def test_a_railed_channel_the_board_lacks_is_refused(recording, spec, daisy):
    # it was ignored without a word: the fault asked for never happened
    with pytest.raises(ValueError, match=r"'faults.railed' must be a channel index"):
        SimulatedCyton(recording, daisy=daisy, faults=spec)
    assert main(["simulate", str(DEMO), "--faults", spec, "--seconds", "0.1",
                 *(["--daisy"] if daisy else [])]) == 2


def test_a_stale_port_link_left_by_a_killed_simulator_is_replaced(recording, tmp_path):
    # a simulator killed (kill -9) before it removed its port leaves a link to a pty
    # that no longer exists: the next simulator on that folder takes the name over
    os.symlink("/dev/pts/999999", tmp_path / "ttyUSB0")
    with SimulatedCyton(recording, port_dir=tmp_path) as sim:
        assert os.readlink(sim.port) != "/dev/pts/999999"
        assert _banner(sim.port).endswith(b"$$$")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["file", "port"])
def test_a_port_path_that_exists_is_refused_and_left_alone(recording, tmp_path, existing):
    # --port-dir names a folder of the user's: a file of the port's name there (or the
    # port of another simulator running on that folder) is not the simulator's to
    # replace, nor to delete when it stops
    other = None
    if existing == "file":
        (tmp_path / "ttyUSB0").write_text("not a port\n")
    else:
        other = SimulatedCyton(recording, port_dir=tmp_path)
        other.start()
    before = os.readlink(tmp_path / "ttyUSB0") if other else "not a port\n"
    try:
        sim = SimulatedCyton(recording, port_dir=tmp_path)
        with pytest.raises(FileExistsError, match="ttyUSB0"):
            sim.start()
        sim.close()
        after = (os.readlink(tmp_path / "ttyUSB0") if other
                 else (tmp_path / "ttyUSB0").read_text())
        assert after == before
        if other:  # the first simulator's port still answers
            assert _banner(other.port).endswith(b"$$$")
    finally:
        if other:
            other.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if other else ["ttyUSB0"])


def test_simulate_cli_refuses_a_port_dir_whose_port_name_is_taken(tmp_path, capsys):
    (tmp_path / "ttyUSB0").write_text("not a port\n")
    assert main(["simulate", "--port-dir", str(tmp_path), "--seconds", "0.1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"cannot create the port {str(tmp_path / 'ttyUSB0')!r}" in err
    assert "exists" in err
    assert (tmp_path / "ttyUSB0").read_text() == "not a port\n"


def test_a_with_block_whose_start_fails_leaves_no_port_folder(recording, tmp_path,
                                                              monkeypatch):
    import tempfile

    def no_pty():
        raise OSError(2, "No such file or directory")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(os, "openpty", no_pty)
    with pytest.raises(OSError, match="No such file"):
        with SimulatedCyton(recording):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("lsl", [[], ["--lsl", "nacf-test-speed-fast"]])
def test_simulate_refuses_speed_with_fast(capsys, lsl):
    # --fast streams without pacing (on the pty; --lsl pushes at 1000x), so a --speed
    # beside it was ignored without a word
    assert main(["simulate", *lsl, "--fast", "--speed", "2", "--seconds", "0.1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert "nacf simulate: --speed paces the stream and --fast does not pace it" in err, err


def test_a_recording_without_the_montage_says_which_electrodes_are_sent_under_its_names(
        caplog):
    """A recording whose electrodes are not the montage's (FC5, FC3, ... next to no O2)
    was streamed as channels 1-8 without a word, and every reader labelled FC5 as Fp1,
    FC3 as Fp2, ...: enrolled and matched as electrodes they are not."""
    names = ["FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "C5", "Fp1"]
    rec = SimpleNamespace(data=np.zeros((250, 9)), sfreq=250.0, ch_names=names)
    with caplog.at_level("WARNING", logger="nacf.hardware.simulator"):
        _, ch = prepare_signal(rec, 8, 250.0)
    assert ch == names[:8]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "lacks Fp2, C3, C4, P7, P8, O1, O2 of the ultracortex-8 montage" in msg, msg
    assert "FC5 is sent as Fp1" in msg and "C5 as O2" in msg, msg
    caplog.clear()
    rec = SimpleNamespace(data=np.zeros((250, 3)), sfreq=250.0, ch_names=["a", "b", "c"])
    with caplog.at_level("WARNING", logger="nacf.hardware.simulator"):
        prepare_signal(rec, 8, 250.0)  # no electrode: nothing is sent as another
    assert not any("is sent as" in r.getMessage() for r in caplog.records)


def test_simulate_stopped_by_sigterm_once_its_port_exists_removes_it(tmp_path):
    # `nacf simulate` took SIGTERM as its end (the port removed) only once it waited:
    # a SIGTERM right after the port was made, or printed (a script that kills it once it
    # has read the port), killed it with the port's folder left in TMPDIR. Here SIGTERM
    # comes as soon as the port exists, every time
    import subprocess
    import sys

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, signal\n"
        "from nacf_core.hardware.simulator import SimulatedCyton\n"
        "start = SimulatedCyton.start\n"
        "def start_then_sigterm(self):\n"
        "    start(self)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "SimulatedCyton.start = start_then_sigterm\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING",
                           "simulate", "--seconds", "30"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp)) == []


def test_simulate_whose_terminal_closes_removes_its_port(tmp_path):
    # SIGHUP (the terminal nacf simulate ran in was closed) killed it with the port's
    # folder left in TMPDIR; it now ends as Ctrl-C ends it
    import signal
    import subprocess
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING",
                             "simulate", "--seconds", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ,
                                                                        TMPDIR=str(tmp)),
                            # (as from a terminal, even when these tests run under nohup)
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith(str(tmp)), port
        time.sleep(0.5)  # (waiting, as after the port's line it does)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (proc.returncode, err[-2000:])
    assert "# stats:" in err and "Traceback" not in err, err[-2000:]
    assert sorted(os.listdir(tmp)) == []
