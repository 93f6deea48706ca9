"""A simulated OpenBCI Cyton (or Cyton+Daisy) on a pseudo-terminal.

:class:`SimulatedCyton` opens a pty (``os.openpty``), answers the firmware commands a
host sends over the serial port, and, once told ``b``, streams 33-byte packets at
250 packets/s made from a real recording (any format
:func:`nacf_core.hardware.files.read_recording` reads, resampled with
``scipy.signal.resample_poly`` to 250 Hz, or 125 Hz for the Cyton+Daisy, whose 16
channels take two packets per sample). Readers open :attr:`SimulatedCyton.port`, a
symlink to the pty's slave side that stays valid across simulated disconnects.

Commands answered like firmware v3:

=========  ===================================================================
``v``      soft reset: stop streaming, default gains, print the board banner
           ending in ``$$$``
``d``      default channel settings: ``updating channel settings to default$$$``
``x...X``  channel settings (gain tracked): ``Success: Channel set for N$$$``
``c``      8-channel mode: a Cyton+Daisy detaches its Daisy (``daisy removed$$$``)
           and streams channels 1-8 in every packet at 250 Hz until ``C`` or ``v``
``C``      16-channel mode: the Daisy is attached again (``16$$$``; ``8$$$`` without)
``b``      start streaming (no reply)
``s``      stop streaming (no reply)
=========  ===================================================================

Other bytes are ignored, as the firmware ignores unknown commands. With
:attr:`SimulatedCyton.board_on` False the board is switched off: only the USB dongle
answers, to every command, ``Failure: Communications timeout - Device failed to poll
Host$$$``, and nothing streams.

Faults (:class:`Faults`) are injected on request: random garbage bytes between
packets, dropped packets (the counter still advances, as when a radio packet is lost;
the recording's own dropped samples, rows of NaN such as a recorded outage, are never
sent either),
a railed channel (sent at positive full scale, ``0x7FFFFF``) and disconnects (the pty
and the symlink vanish for a while, then a fresh pty appears under the same path, as
when a dongle is unplugged and plugged back).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import shutil
import tempfile
import threading
import time
import tty
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nacf_core._validation import check_finite_positive

from .cyton import (
    COUNT_MAX,
    COUNT_MIN,
    DAISY_SAMPLE_RATE,
    SAMPLE_RATE,
    GainTracker,
    encode_packets,
)
from .montages import default_montage

__all__ = ["Faults", "SimulatedCyton", "prepare_signal"]

logger = logging.getLogger("nacf.hardware.simulator")

BANNER = (
    "OpenBCI V3 8-16 channel\n"
    "On Board ADS1299 Device ID: 0x3E\n"
    "{daisy}"
    "LIS3DH Device ID: 0x33\n"
    "Firmware: v3.1.2\n"
    "$$$"
)
_ACCEL_EVERY = 10          # the firmware sends accelerometer data at 25 Hz
_ACCEL_Z_COUNTS = 8000     # 1 g on the Z axis (0.002/16 g per count)
_MAX_PENDING = 1 << 16     # bytes held while nobody reads; older output is dropped


@dataclass
class Faults:
    """Faults to inject.

    Attributes
    ----------
    garbage : float
        Probability, per packet, of 1-40 random bytes written before it.
    drop : float
        Probability, per packet, that it is not sent (its counter is skipped).
    railed : int or None
        0-based channel sent at positive full scale (0x7FFFFF) throughout.
    disconnect_after : float or None
        Seconds of streaming after which the port vanishes.
    disconnect_for : float
        Seconds the port stays gone.
    disconnects : int
        How many disconnects to perform (each after ``disconnect_after`` s of streaming).
    seed : int
        Seed of the fault generator (reproducible faults).
    """

    garbage: float = 0.0
    drop: float = 0.0
    railed: int | None = None
    disconnect_after: float | None = None
    disconnect_for: float = 1.0
    disconnects: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("garbage", "drop"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"'faults.{name}' must be a probability in [0, 1], got {v!r}.")
        if self.disconnect_after is not None:
            check_finite_positive("faults.disconnect_after", self.disconnect_after)
        check_finite_positive("faults.disconnect_for", self.disconnect_for)
        for name in ("disconnects", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"'faults.{name}' must be an integer >= 0, got {v!r}.")

    @classmethod
    def parse(cls, spec: str | None) -> Faults:
        """From ``"garbage=0.01,drop=0.02,railed=3,disconnect=5:1.5,seed=1"``.

        ``disconnect=AFTER[:FOR]`` in seconds.
        """
        f: dict[str, Any] = {}
        if not spec:
            return cls()
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            try:
                if key in ("garbage", "drop"):
                    f[key] = float(value)
                elif key == "railed":
                    f["railed"] = int(value)
                elif key == "seed":
                    f["seed"] = int(value)
                elif key == "disconnects":
                    f["disconnects"] = int(value)
                elif key == "disconnect":
                    after, _, dur = value.partition(":")
                    f["disconnect_after"] = float(after)
                    if dur:
                        f["disconnect_for"] = float(dur)
                else:
                    raise KeyError(key)
            except KeyError:
                raise ValueError(
                    f"Invalid fault {key!r} in {spec!r}. Allowed faults are garbage=P, drop=P, "
                    "railed=CHANNEL, disconnect=AFTER[:FOR], disconnects=N, seed=N."
                ) from None
            except ValueError:
                raise ValueError(
                    f"Invalid value {value!r} for the fault {key!r} in {spec!r}."
                ) from None
        return cls(**f)


def prepare_signal(recording: Any, n_channels: int, sfreq: float) -> tuple[np.ndarray, list[str]]:
    """Pick, order and resample a recording's channels for the simulated board.

    Channels named as the default montage (after ``channels.canonical_name``) are used
    in montage order when the recording has them all (two of them naming one electrode,
    ``T5`` and ``P7``: a ``ValueError``); otherwise its first
    ``n_channels`` channels (a recording with fewer channels is padded with flat
    zero channels, and a warning logged; a warning also says which of its electrodes a
    reader, naming the channels by the montage, will take for another).

    Returns
    -------
    data : ndarray, shape (n_times, n_channels), float64
        Microvolts at ``sfreq``; NaN replaced by 0 (:class:`SimulatedCyton` does not
        send the packets of a recording's dropped samples).
    ch_names : list of str
    """
    data = np.asarray(recording.data, dtype=np.float64)
    names = [str(n) for n in recording.ch_names]
    src_sfreq = float(recording.sfreq)
    wanted = default_montage(n_channels)
    try:
        from nacf_core.channels import canonical_name, pick
    except ImportError:  # pragma: no cover - recognition layer missing
        canon, pick, canonical_name = [n.strip(". ") for n in names], None, None
    else:
        canon = [canonical_name(n) or n for n in names]
    if all(w in canon for w in wanted):
        # pick: InvalidArgument (a ValueError) when two channels name one electrode
        idx = pick(names, wanted) if pick else [canon.index(w) for w in wanted]
        data, out_names = data[:, idx], list(wanted)
    else:
        data = data[:, :n_channels]
        out_names = names[:n_channels]
        # a reader names channel k by the montage: an electrode there is sent as another
        moved = [k for k in range(len(out_names)) if canon[k] != wanted[k]
                 and canonical_name is not None and canonical_name(names[k]) is not None]
        sent_as = [f"{canon[k]} {'is sent ' if i == 0 else ''}as {wanted[k]}"
                   for i, k in enumerate(moved)]
        if sent_as:
            logger.warning(
                "recording lacks %s of the ultracortex-%d montage: streaming its first %d "
                "channels, which a reader labels by the montage: %s",
                ", ".join(w for w in wanted if w not in canon), n_channels,
                len(out_names), ", ".join(sent_as),
            )
        if data.shape[1] < n_channels:
            logger.warning(
                "recording has %d channels; padding to %d with flat channels",
                data.shape[1], n_channels,
            )
            pad = n_channels - data.shape[1]
            data = np.hstack([data, np.zeros((data.shape[0], pad))])
            out_names += [f"pad{i}" for i in range(pad)]
    if abs(src_sfreq - sfreq) > 1e-9:
        from scipy.signal import resample_poly

        frac = Fraction(sfreq / src_sfreq).limit_denominator(1000)
        data = resample_poly(np.nan_to_num(data), frac.numerator, frac.denominator, axis=0)
    return np.ascontiguousarray(np.nan_to_num(data)), out_names


def _missing_rows(recording: Any, n_out: int, sfreq: float) -> np.ndarray | None:
    """Per sample of the board's signal (``n_out`` at ``sfreq``), whether it falls on a
    row of ``recording`` with no finite value (a dropped sample); ``None`` if none."""
    gone = ~np.isfinite(np.asarray(recording.data, dtype=np.float64)).any(axis=1)
    if not gone.any():
        return None
    src = (np.arange(n_out) * (float(recording.sfreq) / sfreq)).round().astype(np.int64)
    return gone[np.minimum(src, gone.size - 1)]


class SimulatedCyton:
    """A virtual Cyton on a pty. Use as a context manager.

    Parameters
    ----------
    recording : str, PathLike or Recording-like
        A file path (read with ``read_recording``) or an object with ``data``
        (n_times, n_channels) µV, ``sfreq`` and ``ch_names``.
    daisy : bool
        Simulate a Cyton+Daisy (16 channels, 125 Hz per channel).
    faults : Faults or str, optional
    realtime : bool
        Pace packets at 250/s (times ``speed``); False: as fast as the reader reads.
    speed : float
        Pace factor when ``realtime``.
    loop : bool
        Start over at the end of the recording (else stop streaming there).
    port_dir : str, optional
        Directory for the port symlink (default a fresh temporary directory).
    port_name : str
        File name of the port symlink.
    capture : bool
        Keep a copy of every streamed byte in :attr:`sent` (tests compare decoders on
        exactly the bytes sent).

    Attributes
    ----------
    port : str
        Path to open as the serial port.
    signal : ndarray, shape (n_times, n_channels)
        What the board streams, in µV at :attr:`sfreq`.
    cyton_signal : ndarray, shape (n_times, 8)
        What a Cyton+Daisy streams in 8-channel mode (after ``c``): channels 1-8 at
        250 Hz (for a plain Cyton, :attr:`signal`).
    stats : dict
        ``packets`` sent, ``dropped``, ``garbage_bytes``, ``disconnects``, ``overflow``,
        ``missing`` (packets of the recording's dropped samples, not sent).
    board_on : bool
        Set it to False to switch the board off (the dongle stays plugged in).
    """

    #: how long :meth:`close` waits for the thread before leaving the pty to it
    stop_wait_s = 5.0

    def __init__(
        self,
        recording: Any,
        daisy: bool = False,
        faults: Faults | str | None = None,
        realtime: bool = True,
        speed: float = 1.0,
        loop: bool = True,
        port_dir: str | os.PathLike | None = None,
        port_name: str = "ttyUSB0",
        capture: bool = False,
    ):
        if isinstance(recording, (str, os.PathLike)):
            from .files import read_recording

            recording = read_recording(recording)
        for attr in ("data", "sfreq", "ch_names"):
            if not hasattr(recording, attr):
                raise TypeError(
                    "'recording' must be a path or have 'data', 'sfreq' and 'ch_names', "
                    f"got {type(recording).__name__} without {attr!r}."
                )
        self.daisy = bool(daisy)
        self.n_channels = 16 if self.daisy else 8
        self.sfreq = DAISY_SAMPLE_RATE if self.daisy else SAMPLE_RATE
        self.signal, self.ch_names = prepare_signal(recording, self.n_channels, self.sfreq)
        if self.daisy:  # channels 1-8 at 250 Hz, streamed in 8-channel mode ('c')
            from scipy.signal import resample_poly

            self.cyton_signal = np.ascontiguousarray(resample_poly(self.signal[:, :8], 2, 1,
                                                                   axis=0))
        else:
            self.cyton_signal = self.signal
        # the recording's dropped samples (rows without a number: NaN rows, a recording's
        # outage) are packets the board never sent, their counters skipped as for a lost
        # radio packet, so a reader sees the gap (NaN rows, or a resync and a step in its
        # timestamps): streamed as 0 µV, the signal on either side was joined as one
        self._missing = _missing_rows(recording, self.signal.shape[0], self.sfreq)
        self._cyton_missing = self._missing
        if self.daisy and self._missing is not None:  # 8-channel mode: 250 Hz
            self._cyton_missing = np.repeat(self._missing, 2)[:self.cyton_signal.shape[0]]
        self.faults = Faults.parse(faults) if isinstance(faults, str) or faults is None else faults
        railed = self.faults.railed
        if railed is not None and not 0 <= railed < self.n_channels:
            raise ValueError(
                f"'faults.railed' must be a channel index from 0 to {self.n_channels - 1} "
                f"(the {'Cyton+Daisy' if self.daisy else 'Cyton'} has {self.n_channels} "
                f"channels), got {railed}."
            )
        self.realtime = bool(realtime)
        self.speed = check_finite_positive("speed", speed)
        self.loop = bool(loop)
        self.gains = GainTracker(self.n_channels)
        self._own_dir = port_dir is None
        self._dir = (Path(tempfile.mkdtemp(prefix="nacf-sim-")) if port_dir is None
                     else Path(port_dir))
        self.port = str(self._dir / port_name)
        self.stats = {"packets": 0, "dropped": 0, "garbage_bytes": 0, "disconnects": 0,
                      "overflow": 0, "missing": 0}
        self.capture = bool(capture)
        self.sent = bytearray()
        self.commands: list[str] = []   # every command received, for tests and logs
        self.board_on = True
        # row of signal (cyton_signal in 8-channel mode) at each 'b' (for tests)
        self.stream_starts: list[int] = []
        self._rng = np.random.default_rng(self.faults.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master = self._slave = -1
        self._made_port = False  # the port symlink is ours to remove
        self._close_at_end = False  # close() left the pty to the thread (see close)
        self._thread_done = False
        self._end_lock = threading.Lock()
        self._out = bytearray()
        self._cmd = bytearray()
        self._streaming = False
        self._daisy_on = self.daisy  # 16-channel mode ('c' detaches the Daisy, 'v' re-detects)
        self._sample = 0        # next sample index into the signal of the current mode
        self._counter = 0       # next packet counter
        self._t0 = 0.0
        self._sent_ticks = 0
        self._stream_time = 0.0
        self._disconnect_req: float | None = None
        self._disconnects_left = self.faults.disconnects

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> SimulatedCyton:
        try:
            self.start()
        except BaseException:  # no __exit__ follows: the pty and the port folder go now
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Create the pty and start answering."""
        if self._thread is not None:
            return
        self._open_pty()
        self._stop.clear()
        self._thread_done = False
        self._thread = threading.Thread(target=self._run, name="nacf-sim-cyton", daemon=True)
        self._thread.start()
        logger.info("simulated %s on %s", "Cyton+Daisy" if self.daisy else "Cyton", self.port)

    def close(self) -> None:
        """Stop, close the pty and remove the port symlink."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_wait_s)
            with self._end_lock:
                # still running (maybe between a select() and its read or write of the
                # pty): closed now, the fd's number could be handed to another file
                # meanwhile (a gRPC socket, its epoll), which the thread would then read,
                # write or close; the thread closes the pty itself when it ends
                self._close_at_end = not self._thread_done
            if self._close_at_end:
                logger.warning("the simulated Cyton on %s did not stop within %g s; its "
                               "pty is closed when it does", self.port, self.stop_wait_s)
            else:
                self._thread = None
                self._drain_input()
        if not self._close_at_end:
            self._close_pty()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _drain_input(self) -> None:
        """Handle the bytes a reader wrote just before the simulator stopped (its last
        ``s``), as the firmware would have received them."""
        if self._master < 0:
            return
        while True:
            r, _, _ = select.select([self._master], [], [], 0)
            if not r:
                return
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            if not data:
                return
            self._handle(data)

    def disconnect(self, duration: float = 1.0) -> None:
        """Make the port vanish for ``duration`` seconds (as if unplugged)."""
        self._disconnect_req = check_finite_positive("duration", duration)

    @property
    def streaming(self) -> bool:
        return self._streaming

    @property
    def daisy_attached(self) -> bool:
        """The board streams 16 channels (a Daisy that ``c`` has not detached)."""
        return self._daisy_on

    # -- pty ----------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: a serial line
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        try:
            # never over a path that exists: a file of the user's in port_dir, or the
            # port of another simulator on that folder, is not ours to replace (nor to
            # remove at close); a link to a pty that is gone (a simulator killed before
            # it could remove its port) is stale and replaced
            if os.path.islink(self.port) and not os.path.exists(self.port):
                os.unlink(self.port)
            os.symlink(os.ttyname(slave), self.port)
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST, f"{self.port!r} already exists (another simulator's port, "
                "or a file of that name): use another port directory (--port-dir)",
                self.port) from None
        self._made_port = True

    def _close_pty(self) -> None:
        if self._made_port:
            self._made_port = False
            try:
                os.unlink(self.port)
            except FileNotFoundError:
                pass
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1
        self._out.clear()

    def _do_disconnect(self, duration: float) -> None:
        logger.info("simulated disconnect of %s for %.2f s", self.port, duration)
        self.stats["disconnects"] += 1
        self._close_pty()
        self._streaming = False
        self._cmd.clear()
        if self._stop.wait(duration):
            return
        self._open_pty()

    # -- main loop ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._disconnect_req is not None:
                    d, self._disconnect_req = self._disconnect_req, None
                    self._do_disconnect(d)
                    continue
                f = self.faults
                if (f.disconnect_after is not None and self._disconnects_left > 0
                        and self._streaming and self._stream_time >= f.disconnect_after):
                    self._disconnects_left -= 1
                    self._stream_time = 0.0
                    self._do_disconnect(f.disconnect_for)
                    continue
                self._step()
        except Exception:  # pragma: no cover - a simulator bug must be visible
            logger.exception("simulator thread failed")
            raise
        finally:
            with self._end_lock:
                self._thread_done = True
                if self._close_at_end:  # close() gave up waiting for this thread
                    self._close_pty()

    def _step(self) -> None:
        want_write = bool(self._out) or (self._streaming and not self.realtime)
        timeout = 0.004
        r, w, _ = select.select([self._master], [self._master] if want_write else [], [], timeout)
        if r:
            try:
                data = os.read(self._master, 4096)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EIO):
                    raise
                data = b""
            if data:
                self._handle(data)
        if self._streaming and self.board_on:
            self._produce()
        if self._out:
            self._flush()

    def _flush(self) -> None:
        try:
            n = os.write(self._master, bytes(self._out[:4096]))
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EIO):
                raise
            n = 0
        del self._out[:n]
        if len(self._out) > _MAX_PENDING:  # nobody reads: keep the newest output
            extra = len(self._out) - _MAX_PENDING
            del self._out[:extra]
            self.stats["overflow"] += extra

    # -- commands -------------------------------------------------------------------
    def _reply(self, text: str) -> None:
        self._out += text.encode("ascii")

    def _handle(self, data: bytes) -> None:
        if not self.board_on:  # the dongle cannot reach the board: it says so
            self._streaming = False
            if data.strip():
                self._reply("Failure: Communications timeout - Device failed to poll Host$$$")
            return
        self._cmd += data
        while self._cmd:
            ch = chr(self._cmd[0])
            if ch == "x":
                if len(self._cmd) < 9:
                    return  # wait for the rest of the command
                cmd = self._cmd[:9].decode("ascii", "replace")
                del self._cmd[:9]
                self.commands.append(cmd)
                try:
                    self.gains.apply(cmd)
                except ValueError:
                    self._reply("Failure: too few chars$$$")
                    continue
                if not self._streaming:
                    self._reply(f"Success: Channel set for {cmd[1]}$$$")
                continue
            del self._cmd[0]
            if ch.isspace():
                continue
            self.commands.append(ch)
            if ch == "v":
                self._streaming = False
                self.gains.reset()
                self._set_daisy(self.daisy)  # the reset detects the Daisy again
                self._reply(BANNER.format(
                    daisy="On Daisy ADS1299 Device ID: 0x3E\n" if self.daisy else ""))
            elif ch == "d":
                self.gains.reset()
                if not self._streaming:
                    self._reply("updating channel settings to default$$$")
            elif ch == "b":
                if not self._streaming:
                    self._streaming = True
                    self.stream_starts.append(self._sample)
                    self._t0 = time.monotonic()
                    self._sent_ticks = 0
                    self._counter = 0
            elif ch == "s":
                self._streaming = False
            elif ch == "c":
                if not self._streaming:
                    self._reply("daisy removed$$$" if self._daisy_on else "no daisy to remove$$$")
                self._set_daisy(False)
            elif ch == "C":
                self._set_daisy(self.daisy)
                self._reply("16$$$" if self._daisy_on else "8$$$")

    def _set_daisy(self, on: bool) -> None:
        """Switch between 16-channel (125 Hz) and 8-channel (250 Hz) streaming."""
        if on != self._daisy_on:
            self._sample = self._sample // 2 if on else self._sample * 2
            self._daisy_on = on

    # -- streaming ------------------------------------------------------------------
    def _produce(self) -> None:
        if self.realtime:
            # capped before int(): at a huge speed the product overflows to inf
            ticks = (time.monotonic() - self._t0) * SAMPLE_RATE * self.speed
            due = int(min(ticks - self._sent_ticks, 250))
        else:
            if len(self._out) >= 4096:
                return
            due = 64
        if due <= 0:
            return
        daisy = self._daisy_on
        signal = self.signal if daisy else self.cyton_signal
        per_sample = 2 if daisy else 1
        n_samples = max(1, due // per_sample) if daisy else due
        if daisy and due < 2:
            return
        n = signal.shape[0]
        if not self.loop:
            if self._sample >= n:
                self._streaming = False
                return
            n_samples = min(n_samples, n - self._sample)  # streamed once: no wrap to the start
        idx = (self._sample + np.arange(n_samples)) % n
        self._sample += n_samples
        uv = signal[idx]
        counts = np.rint(uv / self.gains.scales()[None, : signal.shape[1]])
        if self.faults.railed is not None and self.faults.railed < signal.shape[1]:
            counts[:, self.faults.railed] = COUNT_MAX
        counts = np.clip(counts, COUNT_MIN, COUNT_MAX).astype(np.int64)
        if daisy:  # even packet: channels 9-16, then odd packet: channels 1-8
            counts = np.ascontiguousarray(counts[:, [8, 9, 10, 11, 12, 13, 14, 15,
                                                     0, 1, 2, 3, 4, 5, 6, 7]])
            counts = counts.reshape(n_samples * 2, 8)
        n_packets = counts.shape[0]
        counters = (self._counter + np.arange(n_packets)) & 0xFF
        self._counter = (self._counter + n_packets) & 0xFF
        accel = np.zeros((n_packets, 3), np.int64)
        accel[counters % _ACCEL_EVERY == 0, 2] = _ACCEL_Z_COUNTS
        packets = encode_packets(counters, counts, accel=accel)
        missing = self._missing if daisy else self._cyton_missing
        if missing is not None:  # dropped samples: never sent, their time passes all the same
            gone = missing[idx]
            if gone.any():
                packets = packets[~np.repeat(gone, per_sample)]
                self.stats["missing"] += int(gone.sum()) * per_sample
        self._sent_ticks += n_packets
        self._stream_time += n_packets / SAMPLE_RATE
        start = len(self._out)
        self._emit(packets)
        if self.capture:
            self.sent += self._out[start:]

    def _emit(self, packets: np.ndarray) -> None:
        f = self.faults
        if f.drop == 0 and f.garbage == 0:
            self._out += packets.tobytes()
            self.stats["packets"] += packets.shape[0]
            return
        for p in packets:
            if f.drop and self._rng.random() < f.drop:
                self.stats["dropped"] += 1
                continue
            if f.garbage and self._rng.random() < f.garbage:
                g = self._rng.integers(0, 256, int(self._rng.integers(1, 41)), dtype=np.uint8)
                self._out += g.tobytes()
                self.stats["garbage_bytes"] += int(g.size)
            self._out += p.tobytes()
            self.stats["packets"] += 1
