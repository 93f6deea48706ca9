"""A serial session with an OpenBCI Cyton or Cyton+Daisy (pyserial), like the real board.

Lifecycle (a context manager; nothing is left to ``__del__``)::

    with CytonReader("/dev/ttyUSB0") as cyton:      # open 115200 8N1, exclusive
        chunk = cyton.read_chunk(timeout=1.0)       # Chunk | None

1. open the port at 115200 baud (exclusive lock: a second reader gets :class:`PortBusy`);
2. send ``s`` (in case a previous session left it streaming), flush the input, send
   ``v`` (soft reset) and wait for the ``$$$`` prompt (``handshake_timeout``; else
   :class:`HandshakeTimeout`; a dongle that answers for a board switched off,
   ``Failure: Communications timeout - Device failed to poll Host``, is a
   :class:`SerialSourceError` saying so); a Cyton reader on a board whose banner reports a Daisy
   sends ``c`` (8-channel mode: the firmware would otherwise stream the Daisy's
   channels in every other packet), a Cyton+Daisy reader on a board without one fails;
3. send ``d`` (default channel settings) and wait for ``$$$``; replay the ``x...X``
   channel settings sent earlier with :meth:`CytonReader.send_command` (each channel's
   last one since the last ``d`` or ``v`` sent);
4. send ``b``: packets flow, decoded by :class:`~nacf_core.hardware.framing.Framer`;
5. on exit send ``s`` and close the port.

If the port disappears (dongle unplugged), or no byte comes for ``stall_timeout``
seconds (a board that reset itself prints its banner and stops streaming while the
dongle keeps the port open), :meth:`CytonReader.read_chunk` reconnects
with exponential backoff (50 ms doubling to 2 s) and repeats the handshake; the
framer starts a new sequence and ``counters.reconnects`` counts it. After
``reconnect_timeout`` seconds without success it raises :class:`PortLost`; a restart
whose handshake succeeds but after which no sample comes does not end the outage (a
board that never streams is lost ``reconnect_timeout`` seconds after its last sample).
A missing port raises :class:`PortNotFound`, a port held by another process
:class:`PortBusy`, both naming the port.

Timestamps are the local clock (``time.time()``) at the first sample of each
sequence (but never before the last stamp handed out: they only go forward, and a
sequence after a loss starts at least the loss's least length after that stamp: the
time since the last samples after a restart, ``max_gap + 1`` packets after a resync,
so the outage shows in the timestamps even when they ran ahead of the clock), advanced
by ``1 / sfreq`` per sample (NaN rows included) after that.
"""

from __future__ import annotations

import errno
import logging
import math
import termios
import threading
import time

import numpy as np

from nacf_core._validation import check_finite_positive
from nacf_core.errors import Unavailable

from .base import Chunk, Counters
from .cyton import _X_COMMAND, DAISY_SAMPLE_RATE, SAMPLE_RATE, GainTracker
from .framing import Framer
from .montages import resolve_montage

__all__ = [
    "BAUDRATE",
    "CytonReader",
    "SerialSourceError",
    "PortNotFound",
    "PortBusy",
    "HandshakeTimeout",
    "PortLost",
]

logger = logging.getLogger("nacf.hardware.serial")

BAUDRATE = 115200
_PROMPT = b"$$$"


class SerialSourceError(Unavailable):
    """The serial device cannot be used."""


class PortNotFound(SerialSourceError):
    """The port does not exist."""


class PortBusy(SerialSourceError):
    """Another process holds the port."""


class HandshakeTimeout(SerialSourceError):
    """The board did not answer with ``$$$``."""


class PortLost(SerialSourceError):
    """The port vanished and did not come back in time."""


class CytonReader:
    """Read a Cyton (8 channels, 250 Hz) or Cyton+Daisy (16 channels, 125 Hz).

    Parameters
    ----------
    port : str
        Serial device, e.g. ``/dev/ttyUSB0`` (or a simulator's pty).
    daisy : bool
        Expect a Daisy board (16 channels).
    montage : str or sequence of str, optional
        Channel names (see :mod:`.montages`; default the Ultracortex layout).
    handshake_timeout : float
        Seconds to wait for each ``$$$`` prompt.
    reconnect : bool
        Reconnect when the port disappears (else raise :class:`PortLost` at once).
    reconnect_timeout : float
        Give up reconnecting after this many seconds.
    stall_timeout : float
        Seconds without a byte from a streaming board after which the session is
        started again (as after a reconnect): a board that reset itself (a brown-out)
        prints its banner and stops streaming while the dongle keeps the port open.
    """

    def __init__(
        self,
        port: str,
        daisy: bool = False,
        montage=None,
        handshake_timeout: float = 3.0,
        reconnect: bool = True,
        reconnect_timeout: float = 30.0,
        stall_timeout: float = 2.0,
    ):
        if not isinstance(port, str) or not port:
            raise ValueError(f"'port' must be a non-empty device path, got {port!r}.")
        self.port = port
        self.daisy = bool(daisy)
        self.n_channels = 16 if self.daisy else 8
        self.sfreq = DAISY_SAMPLE_RATE if self.daisy else SAMPLE_RATE
        self.ch_names = resolve_montage(montage, self.n_channels)
        self.handshake_timeout = check_finite_positive("handshake_timeout", handshake_timeout)
        self.reconnect = bool(reconnect)
        self.reconnect_timeout = check_finite_positive("reconnect_timeout", reconnect_timeout)
        self.stall_timeout = check_finite_positive("stall_timeout", stall_timeout)
        self._last_byte = 0.0  # time.monotonic() of the last byte read (or of 'b')
        self.counters = Counters()
        self.gains = GainTracker(self.n_channels)
        self.framer = Framer(daisy=self.daisy, gains=self.gains, counters=self.counters)
        self.banner = ""
        self._config: dict[str, str] = {}  # channel key -> its last x...X command
        self._ser = None
        # held by read_chunk, send_command, open and close: a close() from another
        # thread waits for the read or handshake in progress, so the port is never
        # closed under it (which then used, or closed again, a file descriptor number
        # the process may have reused: a socket, gRPC's epoll)
        self._io = threading.RLock()
        self._closed = False  # close() was called: no reconnect, read_chunk refuses
        self._lost_at: float | None = None
        # start of an outage that no sample has ended yet: kept across restarts whose
        # handshake succeeds but after which the board sends nothing
        self._outage_since: float | None = None
        self._restarts = 0  # restarts in the current outage
        self._last_error = ""  # why the last reconnect attempt failed
        self._next_try = 0.0
        self._backoff = 0.05
        self._t_anchor = 0.0
        self._t_last = -np.inf  # the last timestamp handed out
        self._sample_mono = 0.0  # time.monotonic() when samples were last handed out
        self._restarted = False  # the framer was reset: its next sequence is a restart
        self._k = 0

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> CytonReader:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> CytonReader:
        """Open the port and start streaming (steps 1-4 of the module docstring); on an
        open reader (e.g. entered by an ``EpochStream`` after ``send_command``), nothing."""
        with self._io:  # one thread at a time on the port (see __init__)
            return self._open()

    def _open(self) -> CytonReader:
        if self._ser is not None and not self._closed:
            return self  # its own session: a second handle would find the port locked
        self._closed = False
        self._lost_at = None
        self._outage_since = None
        self._restarts = 0
        self._connect()
        return self

    def close(self) -> None:
        """Stop streaming (``s``) and close the port. Safe to call twice; the reader
        does not reconnect after it (``read_chunk`` raises until :meth:`open`)."""
        with self._io:  # one thread at a time on the port (see __init__)
            return self._close()

    def _close(self) -> None:
        self._closed = True
        ser, self._ser = self._ser, None
        if ser is None:
            return
        try:
            ser.write(b"s")
            ser.flush()
        except Exception:  # the port may already be gone; closing is all that is left
            pass
        try:
            ser.close()
        except Exception:
            pass

    @property
    def connected(self) -> bool:
        return self._ser is not None

    # -- commands ---------------------------------------------------------------------
    def send_command(self, command: str) -> str:
        """Send a configuration command (e.g. ``x1060110X``: channel 1 at gain 24).

        Channel settings are tracked (gain) and replayed after a reconnect: the last
        ``x...X`` of each channel since the last ``d`` (defaults) or ``v`` (soft reset),
        which undo the ones before them. ``c`` and ``C`` (8- and 16-channel mode) are
        refused with a ``ValueError``: the mode is the reader's (``daisy``). Returns the
        board's reply up to ``$$$`` (empty while streaming: the firmware does not answer
        then).
        """
        with self._io:  # one thread at a time on the port (see __init__)
            return self._send_command(command)

    def _send_command(self, command: str) -> str:
        if not isinstance(command, str) or not command:
            raise ValueError(f"'command' must be a non-empty str, got {command!r}.")
        if not command.isascii():  # checked before 's' stops the board
            raise ValueError(
                f"'command' must be ASCII (a Cyton firmware command), got {command!r}."
            )
        probe = GainTracker(self.n_channels)
        probe.apply(command)  # raises ValueError on a malformed x...X command
        mode = {"c", "C"} & set(_X_COMMAND.sub("", command))
        if mode:
            raise ValueError(
                f"'command' {command!r} contains {sorted(mode)[0]!r}, which changes the board's "
                f"channel mode ('c': 8 channels, 'C': 16 with a Daisy); this reader decodes "
                f"{self.n_channels} channels, as its source says: open cyton:PORT or "
                f"cyton-daisy:PORT instead."
            )
        if self._ser is None:
            raise SerialSourceError(f"serial port {self.port!r} is not open.")
        try:
            self._ser.write(b"s")
            time.sleep(0.02)
            self._ser.reset_input_buffer()
            self._ser.write(command.encode("ascii"))
            reply = self._wait_prompt(f"the reply to {command!r}", required=False)
            self._detach_daisy(reply)  # a 'v' in the command attached the Daisy again
            self.gains.apply(command)
            self._remember_settings(command)
            self._ser.write(b"b")
            self._last_byte = time.monotonic()
        except (OSError, termios.error) as exc:  # SerialException is an OSError; tcflush
            # and tcsetattr (reset_input_buffer, the timeout setter) raise termios.error
            self._lost(exc)
            raise SerialSourceError(
                f"serial port {self.port!r} went away while sending {command!r}: {exc}"
            ) from None
        self.framer.reset()
        self._restarted = True
        return reply

    def _remember_settings(self, command: str) -> None:
        """Keep the channel settings a reconnect must replay, read as the firmware does."""
        i = 0
        while i < len(command):
            m = _X_COMMAND.match(command, i) if command[i] == "x" else None
            if m is not None:
                self._config.pop(m.group(1), None)  # the latest one goes last
                self._config[m.group(1)] = m.group(0)
                i = m.end()
                continue
            if command[i] in "dv":  # defaults / soft reset: the settings before are gone
                self._config.clear()
            i += 1

    # -- reading ----------------------------------------------------------------------
    def read_chunk(self, timeout: float | None = 1.0) -> Chunk:
        """Samples that arrived within ``timeout`` seconds (an empty chunk if none;
        ``None``: wait until samples come).

        A serial source never ends, so unlike a file source this never returns None.

        Returns
        -------
        Chunk
            ``samples`` shape (n_times, n_channels) float32 µV; NaN rows are dropped
            samples.

        Raises
        ------
        PortLost
            The port vanished and did not come back within ``reconnect_timeout``.
        RuntimeError
            The reader was closed.
        ValueError
            ``timeout`` is not None or a finite number >= 0.
        """
        if timeout is not None:
            try:
                t = float(timeout)
            except (TypeError, ValueError):
                t = math.nan
            if not math.isfinite(t) or t < 0:
                raise ValueError(
                    f"'timeout' must be None or a finite number >= 0, got {timeout!r}."
                )
        with self._io:  # one thread at a time on the port (see __init__)
            return self._read_chunk(timeout)

    def _read_chunk(self, timeout: float | None) -> Chunk:
        if self._closed:
            raise RuntimeError(f"read_chunk() on a closed CytonReader ({self.port!r}).")
        deadline = math.inf if timeout is None else time.monotonic() + float(timeout)
        while True:
            if self._ser is None and not self._try_reconnect(deadline):
                return self._empty()
            try:
                ser = self._ser
                ser.timeout = max(0.001, min(0.05, deadline - time.monotonic()))
                data = ser.read(max(1, ser.in_waiting))
                if data and ser.in_waiting:
                    data += ser.read(ser.in_waiting)
            except (OSError, termios.error) as exc:  # SerialException is an OSError: gone
                self._lost(exc)
                continue
            now = time.monotonic()
            if data:
                self._last_byte = now
                frames = self.framer.feed(data)
                if frames.n_times:
                    self._outage_since = None  # samples again: the outage is over
                    self._restarts = 0
                    return self._chunk(frames)
            elif now - self._last_byte > self.stall_timeout:
                # the board stopped streaming (it reset itself: its banner came last) but
                # the port is there: start the session again
                self._lost(f"no data for {self.stall_timeout:g} s (the board reset or "
                           "stopped streaming)")
                continue
            if now >= deadline:
                return self._empty()

    def _empty(self) -> Chunk:
        return Chunk(np.zeros((0, self.n_channels), np.float32), np.zeros(0, np.float64),
                     list(self.ch_names), self.sfreq)

    def _chunk(self, frames) -> Chunk:
        n = frames.n_times
        starts = np.flatnonzero(frames.new_sequence)
        ts = np.empty(n, np.float64)
        now, mono = time.time(), time.monotonic()
        begin = 0
        t_last = self._t_last  # the last stamp handed out, this chunk's rows included
        for s in list(starts) + [n]:
            if s > begin:
                ts[begin:s] = self._t_anchor + (self._k + np.arange(s - begin)) / self.sfreq
                self._k += s - begin
                t_last = float(ts[s - 1])
            if s < n:
                # the local clock, but after the last stamp handed out: stamps counted
                # on at the nominal rate run ahead of the clock when samples came faster
                # (a board whose crystal is fast, a backlog read at once), and time
                # must not go back at a new sequence; nor may the outage before it
                # vanish: it lasted at least the time since the last samples (a restart:
                # reconnect, stall, command) or max_gap + 1 packets (a resync)
                if self._restarted:
                    self._restarted = False
                    floor = max(0.0, mono - self._sample_mono - (n - s) / self.sfreq)
                else:
                    floor = (self.framer.max_gap + 1) / SAMPLE_RATE
                self._t_anchor = max(now - (n - 1 - s) / self.sfreq,
                                     t_last + 1.0 / self.sfreq + floor)
                self._k = 0
            begin = s
        self._t_last = float(ts[-1])
        self._sample_mono = mono
        return Chunk(frames.samples, ts, list(self.ch_names), self.sfreq)

    # -- connection -------------------------------------------------------------------
    def _open_port(self):
        import serial

        try:
            return serial.Serial(self.port, BAUDRATE, timeout=0.05, write_timeout=2.0,
                                 exclusive=True)
        except serial.SerialException as exc:
            text = str(exc)
            err = getattr(exc, "errno", None)
            if err == errno.ENOENT or "No such file" in text:
                raise PortNotFound(
                    f"serial port {self.port!r} does not exist (is the dongle plugged in? "
                    f"on Linux it is usually /dev/ttyUSB0): {text}"
                ) from None
            if err in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text \
                    or "Resource busy" in text:
                raise PortBusy(
                    f"serial port {self.port!r} is busy: another program (the OpenBCI GUI, "
                    f"another nacf reader) has it open: {text}"
                ) from None
            if err == errno.EACCES or "Permission denied" in text:
                raise SerialSourceError(
                    f"no permission to open serial port {self.port!r} (on Linux add the "
                    f"user to the 'dialout' group): {text}"
                ) from None
            raise SerialSourceError(f"cannot open serial port {self.port!r}: {text}") from None

    def _connect(self) -> None:
        ser = self._open_port()
        self._ser = ser
        try:
            ser.write(b"s")
            time.sleep(0.05)
            ser.reset_input_buffer()
            ser.write(b"v")
            self.banner = self._wait_prompt("the '$$$' prompt after 'v' (soft reset)")
            if "failed to poll host" in self.banner.lower():
                raise SerialSourceError(
                    f"the dongle answers on {self.port!r}, but the board does not (\""
                    f"{self.banner.strip().removesuffix('$$$')}\"): is the Cyton switched on "
                    f"(PC position), with its battery charged, and on the dongle's radio "
                    f"channel?"
                )
            if self.daisy and "Daisy" not in self.banner:
                raise SerialSourceError(
                    f"a Cyton+Daisy was requested on {self.port!r}, but the board reports no "
                    f"Daisy module (banner: {self.banner.strip()!r})."
                )
            self._detach_daisy(self.banner)
            self.gains.reset()
            ser.write(b"d")
            self._wait_prompt("the '$$$' prompt after 'd' (default settings)", required=False)
            for cmd in self._config.values():
                ser.write(cmd.encode("ascii"))
                self._wait_prompt(f"the reply to {cmd!r}", required=False)
                self.gains.apply(cmd)
            ser.reset_input_buffer()
            ser.write(b"b")
            self._last_byte = time.monotonic()
        except BaseException as exc:
            self._ser = None
            try:
                ser.close()
            except Exception:
                pass
            if isinstance(exc, (OSError, termios.error)):  # SerialException is an OSError
                # the port went away during the handshake (a reconnect retries this)
                raise SerialSourceError(
                    f"serial port {self.port!r} failed during the handshake: {exc}"
                ) from None
            raise
        self.framer.reset()
        self._restarted = True
        logger.info("cyton session on %s: %s", self.port, self.banner.strip().replace("\n", "; "))

    def _detach_daisy(self, banner: str) -> None:
        """After a soft reset: a Cyton reader on a board with a Daisy sends ``c``.

        The firmware detects the Daisy at each reset and then streams 16 channels, the
        Daisy's in the packets with even counters; ``c`` makes it stream channels 1-8
        in every packet at 250 Hz.
        """
        if self.daisy or "On Daisy" not in banner:
            return
        logger.info("%s has a Daisy: 8-channel mode ('c') for a Cyton reader", self.port)
        self._ser.write(b"c")
        self._wait_prompt("the '$$$' prompt after 'c' (8-channel mode)", required=False)

    def _wait_prompt(self, what: str, required: bool = True) -> str:
        ser = self._ser
        buf = bytearray()
        deadline = time.monotonic() + self.handshake_timeout
        while time.monotonic() < deadline:
            ser.timeout = max(0.001, min(0.05, deadline - time.monotonic()))
            buf += ser.read(max(1, ser.in_waiting))
            if _PROMPT in buf:
                return buf.decode("ascii", "replace")
        if required:
            raise HandshakeTimeout(
                f"no answer from {self.port!r}: waited {self.handshake_timeout:g} s for {what}"
                f" and got {bytes(buf[-80:])!r}. Is the board on and the dongle switched to PC?"
            )
        logger.warning("no '$$$' from %s while waiting for %s", self.port, what)
        return buf.decode("ascii", "replace")

    def _lost(self, exc: BaseException | str) -> None:
        logger.warning("serial port %s lost: %s", self.port, exc)
        ser, self._ser = self._ser, None
        try:
            ser.close()
        except Exception:
            pass
        self.framer.reset()
        self._lost_at = time.monotonic()
        if self._outage_since is None:
            self._outage_since = self._lost_at
        self._last_error = ""
        self._backoff = 0.05
        self._next_try = self._lost_at
        if not self.reconnect:
            raise PortLost(f"serial port {self.port!r} vanished: {exc}") from None

    def _try_reconnect(self, deadline: float) -> bool:
        """Try to reconnect until ``deadline``; True when connected again."""
        while True:
            if self._closed:  # closed by another thread: the port stays closed
                return False
            now = time.monotonic()
            if self._lost_at is not None and now - self._lost_at > self.reconnect_timeout:
                why = f" (last attempt: {self._last_error})" if self._last_error else ""
                raise PortLost(
                    f"serial port {self.port!r} vanished and did not come back within "
                    f"{self.reconnect_timeout:g} s{why}."
                )
            if (self._outage_since is not None
                    and now - self._outage_since > self.reconnect_timeout):
                raise PortLost(
                    f"the board on {self.port!r} answers its handshake but sent no sample "
                    f"within {self.reconnect_timeout:g} s (restarted {self._restarts} "
                    f"time(s) after {self.stall_timeout:g} s without data each): is it "
                    f"stuck after a reset? Switch it off and on."
                )
            if now >= self._next_try:
                try:
                    self._connect()
                except SerialSourceError as exc:
                    logger.debug("reconnect to %s failed: %s", self.port, exc)
                    self._last_error = str(exc)
                    self._next_try = time.monotonic() + self._backoff
                    self._backoff = min(2.0, self._backoff * 2)
                else:
                    if self._closed:  # closed while this thread was connecting
                        self.close()
                        return False
                    self.counters.reconnects += 1
                    self._restarts += 1
                    self._lost_at = None
                    logger.info("reconnected to %s", self.port)
                    return True
            wait = min(self._next_try, deadline) - time.monotonic()
            if time.monotonic() >= deadline:
                return False
            if wait > 0:
                time.sleep(wait)
