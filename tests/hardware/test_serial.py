"""The full serial path over a real pty: simulator on one side, CytonReader on the other."""

from __future__ import annotations

import os
import time
import tty
from pathlib import Path

import numpy as np
import pytest
from nacf_core.hardware.cyton import COUNT_MAX, decode_packets, encode_packets, uv_per_count
from nacf_core.hardware.files import read_recording
from nacf_core.hardware.montages import ULTRACORTEX_8, ULTRACORTEX_16
from nacf_core.hardware.serial_reader import (
    CytonReader,
    HandshakeTimeout,
    PortBusy,
    PortLost,
    PortNotFound,
    SerialSourceError,
)
from nacf_core.hardware.simulator import Faults, SimulatedCyton

DEMO = Path(__file__).resolve().parents[2] / "nacf_core" / "data" / "demo" / "S021R03.npz"


@pytest.fixture(scope="module")
def recording():
    return read_recording(DEMO, stop_s=20)


def read_rows(reader, n, timeout=15.0):
    rows, ts = [], []
    got = 0
    end = time.monotonic() + timeout
    while got < n:
        assert time.monotonic() < end, f"only {got} of {n} samples within {timeout} s"
        c = reader.read_chunk(0.5)
        if c.n_times:
            rows.append(c.samples)
            ts.append(c.timestamps)
            got += c.n_times
    return np.concatenate(rows)[:n], np.concatenate(ts)[:n]


def expected_uv(sim, start, n, gains=None):
    """What the board sends for signal rows start..start+n, decoded (float32 µV)."""
    sig = sim.signal[start:start + n]
    scale = uv_per_count(24) if gains is None else np.array([uv_per_count(g) for g in gains])
    counts = np.clip(np.rint(sig / scale), -(2**23), 2**23 - 1).astype(np.int64)
    if sim.daisy:
        pk = encode_packets(np.zeros(2 * n), counts.reshape(2 * n, 8))
        _, uv, _ = decode_packets(pk)
        return uv.reshape(n, 16)  # the codec is linear: the order of halves does not matter
    _, uv, _ = decode_packets(encode_packets(np.zeros(n), counts), gains)
    return uv


def test_handshake_and_exact_values(recording):
    with SimulatedCyton(recording, realtime=False) as sim, CytonReader(sim.port) as r:
        assert r.banner.rstrip().endswith("$$$") and "OpenBCI" in r.banner
        x, ts = read_rows(r, 600)
        assert sim.commands[:4] == ["s", "v", "d", "b"] and sim.stream_starts == [0]
        assert r.ch_names == list(ULTRACORTEX_8) and r.sfreq == 250.0
        np.testing.assert_array_equal(x, expected_uv(sim, 0, 600))
        np.testing.assert_allclose(np.diff(ts), 1 / 250, atol=1e-6)
        assert r.counters.ok >= 600 and r.counters.corrupt == 0 and r.counters.dropped == 0
    # the session ended with 's'
    assert sim.commands[-1] == "s"


def test_missing_port_is_a_clear_error():
    with pytest.raises(PortNotFound, match="/nonexistent/ttyUSB9.*does not exist"):
        CytonReader("/nonexistent/ttyUSB9").open()


def test_busy_port_is_a_clear_error(recording):
    with SimulatedCyton(recording, realtime=False) as sim, CytonReader(sim.port):
        with pytest.raises(PortBusy, match="busy"):
            CytonReader(sim.port).open()


def test_silent_port_times_out(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        t = time.monotonic()
        with pytest.raises(HandshakeTimeout, match=r"\$\$\$"):
            CytonReader(os.ttyname(slave), handshake_timeout=0.3).open()
        assert time.monotonic() - t < 3
    finally:
        os.close(master)
        os.close(slave)


def test_mid_stream_disconnect_and_reconnect(recording):
    faults = Faults(disconnect_after=0.4, disconnect_for=0.6)
    with SimulatedCyton(recording, faults=faults, realtime=True, speed=4) as sim, \
            CytonReader(sim.port) as r:
        r.send_command("x1030110X")  # gain 6 on channel 1: replayed after the reconnect
        n = 0
        end = time.monotonic() + 20
        while r.counters.reconnects == 0 or n < 300:
            assert time.monotonic() < end, "no reconnect"
            c = r.read_chunk(0.5)
            n = n + c.n_times if r.counters.reconnects else 0
        assert sim.stats["disconnects"] == 1
        assert sim.commands.count("v") == 2 and sim.commands.count("b") >= 3
        assert sim.commands.count("x1030110X") == 2
        assert r.gains.gains[0] == 6 and sim.gains.gains[0] == 6


def test_port_that_never_returns_raises(recording):
    with SimulatedCyton(recording, realtime=False) as sim:
        with CytonReader(sim.port, reconnect_timeout=0.5) as r:
            read_rows(r, 10)
            sim.disconnect(30)
            t = time.monotonic()
            with pytest.raises(PortLost, match="did not come back"):
                while time.monotonic() - t < 10:
                    r.read_chunk(0.2)


def test_gain_command_changes_scale(recording):
    with SimulatedCyton(recording, realtime=False) as sim, CytonReader(sim.port) as r:
        read_rows(r, 10)
        reply = r.send_command("x2010110X")  # channel 2 -> gain 2
        assert "Success" in reply and r.gains.gains[1] == 2 and sim.gains.gains[1] == 2
        x, _ = read_rows(r, 300)
        gains = [24, 2, 24, 24, 24, 24, 24, 24]
        np.testing.assert_array_equal(x, expected_uv(sim, sim.stream_starts[-1], 300, gains))
        with pytest.raises(ValueError, match="gain code"):
            r.send_command("x2090110X")


def test_faults_are_counted(recording):
    faults = Faults(garbage=0.05, drop=0.02, railed=2, seed=7)
    with SimulatedCyton(recording, faults=faults, realtime=False) as sim, \
            CytonReader(sim.port) as r:
        x, _ = read_rows(r, 3000)
        c = r.counters
        assert c.garbage_bytes > 0 and c.dropped > 0
        assert np.isnan(x).all(axis=1).sum() > 0
        ok = np.isfinite(x).all(axis=1)
        assert np.all(x[ok, 2] == np.float32(COUNT_MAX * uv_per_count()))  # railed
        assert sim.stats["dropped"] > 0 and sim.stats["garbage_bytes"] > 0


def test_daisy(recording):
    with SimulatedCyton(recording, daisy=True, realtime=False) as sim, \
            CytonReader(sim.port, daisy=True) as r:
        assert "Daisy" in r.banner
        x, ts = read_rows(r, 400)
        assert r.sfreq == 125.0 and r.ch_names == list(ULTRACORTEX_16)
        np.testing.assert_array_equal(x, expected_uv(sim, 0, 400))
        np.testing.assert_allclose(np.diff(ts), 1 / 125, atol=1e-6)


def test_daisy_requested_on_a_plain_cyton(recording):
    with SimulatedCyton(recording, realtime=False) as sim:
        with pytest.raises(SerialSourceError, match="Daisy"):
            CytonReader(sim.port, daisy=True).open()


def test_bad_arguments():
    with pytest.raises(ValueError, match="port"):
        CytonReader("")
    with pytest.raises(ValueError, match="montage"):
        CytonReader("/dev/null", montage="Fp1,Fp2")
    with pytest.raises(ValueError, match="handshake_timeout"):
        CytonReader("/dev/null", handshake_timeout=0)


def _port_that_dies_once_open(reader):
    """Make the reader's next opens give a real pty whose other end is already gone (a
    dongle pulled out, or still enumerating, right after the open): I/O fails."""
    real_open = reader._open_port
    dead = []

    def open_dead_port():
        master, slave = os.openpty()
        tty.setraw(slave)
        try:
            reader.port, port = os.ttyname(slave), reader.port
            ser = real_open()
        finally:
            reader.port = port
            os.close(master)
            os.close(slave)
        dead.append(ser)
        return ser

    reader._open_port = open_dead_port
    return real_open, dead


def test_io_error_during_the_handshake_is_a_serial_error():
    r = CytonReader("/dev/ttyUSB-dongle", handshake_timeout=0.3)
    _port_that_dies_once_open(r)
    with pytest.raises(SerialSourceError, match="/dev/ttyUSB-dongle.*Input/output error"):
        r.open()
    assert not r.connected


def test_io_error_during_a_reconnect_handshake_is_retried(recording):
    with SimulatedCyton(recording, realtime=False) as sim, CytonReader(sim.port) as r:
        read_rows(r, 10)
        real_open, dead = _port_that_dies_once_open(r)
        sim.disconnect(0.5)
        while not dead:  # the reader notices the loss and tries the (dead) port
            r.read_chunk(0.2)
        r._open_port = real_open  # the port works again
        n, end = 0, time.monotonic() + 20
        while n < 50:
            assert time.monotonic() < end, "no samples after the reconnect"
            n += r.read_chunk(0.5).n_times
        assert r.counters.reconnects == 1


def test_a_command_that_cannot_be_sent_leaves_the_stream_running(recording):
    with SimulatedCyton(recording, realtime=False) as sim, CytonReader(sim.port) as r:
        read_rows(r, 10)
        with pytest.raises(ValueError, match=r"'command' must be ASCII.*'x1060110X→'"):
            r.send_command("x1060110X→")
        # it stopped the board ('s') and then failed to encode: the stream stayed dead
        read_rows(r, 100)
        assert sim.streaming and sim.commands.count("s") == 1  # the 's' of the handshake


def test_cyton_reader_on_a_board_with_a_daisy_streams_the_cyton_channels(recording):
    """cyton:PORT on a Cyton+Daisy: the firmware streams 16 channels (Daisy packets on
    even counters) until told 'c' (8-channel mode). The reader must say 'c' after each
    soft reset; before, every other 'sample' of its 8 channels at 250 Hz was channels
    9-16 of the Daisy."""
    with SimulatedCyton(recording, daisy=True, realtime=False) as sim, \
            CytonReader(sim.port) as r:
        assert "Daisy" in r.banner
        x, ts = read_rows(r, 400)
        assert sim.commands[:5] == ["s", "v", "c", "d", "b"]
        assert r.sfreq == 250.0 and r.ch_names == list(ULTRACORTEX_8)
        sig = sim.cyton_signal  # channels 1-8 at 250 Hz, what the board sends after 'c'
        counts = np.clip(np.rint(sig[:400] / uv_per_count(24)), -(2**23), 2**23 - 1)
        _, uv, _ = decode_packets(encode_packets(np.zeros(400), counts.astype(np.int64)))
        np.testing.assert_array_equal(x, uv)
        np.testing.assert_allclose(np.diff(ts), 1 / 250, atol=1e-6)
        # a soft reset sent by the user brings the Daisy back: 'c' again
        assert "Daisy" in r.send_command("v")
        read_rows(r, 100)
        assert sim.commands.count("c") == 2 and not sim.daisy_attached


def test_defaults_sent_after_channel_settings_are_not_undone_by_a_reconnect(recording):
    """x...X then d (defaults): after a reconnect the board must be at the defaults the
    user asked for, not at the x...X settings replayed over them (before, channel 1
    came back at gain 6, or powered down if the x command had turned it off)."""
    with SimulatedCyton(recording, realtime=False) as sim, CytonReader(sim.port) as r:
        r.send_command("x1030110X")  # channel 1 at gain 6
        r.send_command("x2030110X")
        r.send_command("x2050110X")  # channel 2 at gain 12 (supersedes gain 6)
        r.send_command("d")          # every channel back to the defaults
        r.send_command("x3020110X")  # channel 3 at gain 4: still to be replayed
        sim.disconnect(0.5)
        end = time.monotonic() + 20
        while r.counters.reconnects == 0:
            assert time.monotonic() < end, "no reconnect"
            r.read_chunk(0.5)
        read_rows(r, 50)
        assert sim.commands.count("x1030110X") == 1 and sim.commands.count("x2050110X") == 1
        assert sim.commands.count("x3020110X") == 2
        assert sim.gains.gains.tolist() == [24, 24, 4, 24, 24, 24, 24, 24]
        assert r.gains.gains.tolist() == sim.gains.gains.tolist()


def test_a_closed_reader_does_not_reopen_the_port(recording):
    """read_chunk after close (a reader thread that outlived its session) took the closed
    port for a lost one and reconnected: the port was open and streaming again, held
    until the process ended (another program got PortBusy). It is now an error."""
    with SimulatedCyton(recording, realtime=False) as sim:
        r = CytonReader(sim.port)
        with r:
            read_rows(r, 10)
        try:
            with pytest.raises(RuntimeError, match="closed"):
                r.read_chunk(0.3)
            assert not r.connected and sim.commands.count("v") == 1
            with CytonReader(sim.port) as again:  # the port is free for the next session
                read_rows(again, 10)
        finally:
            r.close()


def test_dongle_without_its_board_is_a_clear_error(recording):
    """The USB dongle answers every command with 'Failure: Communications timeout -
    Device failed to poll Host$$$' when the board is off (or on another radio channel).
    Before, that was taken for the banner: the session 'started' and read_chunk returned
    empty chunks for ever (nacf record: 'no samples for 10 s')."""
    with SimulatedCyton(recording, realtime=False) as sim:
        sim.board_on = False
        t = time.monotonic()
        with pytest.raises(SerialSourceError, match=r"dongle answers on .*ttyUSB0.*board does "
                                                    r"not.*failed to poll.*switched on"):
            CytonReader(sim.port).open()
        assert time.monotonic() - t < 2.5  # not after waiting for a 'd' prompt
        sim.board_on = True
        with CytonReader(sim.port) as r:
            read_rows(r, 10)


def test_a_command_to_a_port_that_vanished_is_a_serial_source_error(recording):
    """pyserial's reset_input_buffer (tcflush) and its timeout setter (tcsetattr) raise
    termios.error, not an OSError, on a device that is gone: send_command let it out
    (neither the documented SerialSourceError nor a reconnect)."""
    import errno
    import termios

    with SimulatedCyton(recording, realtime=False) as sim, CytonReader(sim.port) as r:
        read_rows(r, 10)

        def gone():
            raise termios.error(errno.EIO, "Input/output error")

        r._ser.reset_input_buffer = gone
        with pytest.raises(SerialSourceError, match="went away while sending"):
            r.send_command("x1030110X")
        assert not r.connected
        read_rows(r, 10)  # it reconnects
        assert r.counters.reconnects == 1


def test_a_board_switched_off_mid_stream_is_a_port_lost_that_says_why(recording):
    """The board switched off (or its battery dead) while the dongle stays plugged in:
    the stream stops, the reader starts the session again after stall_timeout, and the
    dongle answers 'failed to poll Host'. PortLost said only that the port 'vanished';
    it now gives the last attempt's reason (the board does not answer: switched on?)."""
    with SimulatedCyton(recording, realtime=False) as sim, \
            CytonReader(sim.port, stall_timeout=0.2, reconnect_timeout=0.6) as r:
        read_rows(r, 10)
        sim.board_on = False
        end = time.monotonic() + 20
        with pytest.raises(PortLost, match=r"did not come back within 0.6 s \(last attempt:"
                                           r".*board does not.*switched on"):
            while time.monotonic() < end:
                r.read_chunk(0.2)


@pytest.mark.parametrize("daisy, command", [(True, "c"), (False, "C"), (False, "dC")])
def test_a_command_that_changes_the_channel_mode_is_refused(recording, daisy, command):
    """'c' (8-channel mode) to a cyton-daisy reader made the board drop its Daisy: every
    16-channel row was then one Cyton packet as channels 1-8 and the one before it as
    the Daisy's 9-16, labelled with Daisy electrodes; 'C' to a cyton reader on a board
    with a Daisy sent the Daisy's channels in every other 'sample' of channels 1-8. No
    error, no count. Such a command is refused before anything is sent (the reader's
    mode is its SOURCE's: cyton: or cyton-daisy:), and the stream goes on as it was."""
    with SimulatedCyton(recording, daisy=True, realtime=False) as sim, \
            CytonReader(sim.port, daisy=daisy) as r:
        read_rows(r, 50)
        sent = list(sim.commands)
        with pytest.raises(ValueError, match=r"channel mode.*cyton"):
            r.send_command(command)
        assert sim.commands == sent
        assert sim.daisy_attached == daisy
        x, _ = read_rows(r, 100)
        assert np.isfinite(x).all()
