"""Replay a recording file as a live source.

:class:`FileSource` reads any file :func:`~nacf_core.hardware.files.read_recording`
reads and hands it out in chunks, paced like the device that recorded it
(``speed=1``), faster (``speed=4``: four seconds of signal per second) or as fast as the
consumer pulls (``speed=0``). It has the interface every source has (see
``docs/CONTRACTS.md``): a context manager with ``.sfreq``, ``.ch_names``,
``.read_chunk(timeout) -> Chunk | None`` and ``.counters``.

Timestamps follow the recording's timeline (sample ``i`` is ``t0 + i / sfreq``), anchored
at ``t0`` = the local clock (``time.time()``) when the source was opened, whatever the
speed. NaN rows in the file (dropped samples) are delivered as NaN rows and counted in
``counters.dropped``; every other row counts in ``counters.ok``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence

import numpy as np

from nacf_core._validation import check_finite_positive

from .base import Chunk, Counters
from .files import Recording, _check_file_sfreq, read_recording

__all__ = ["FileSource"]

logger = logging.getLogger("nacf.hardware")

# longest single sleep in read_chunk; the loop re-checks what is due after each
_MAX_SLEEP_S = 1.0
# most samples _due() counts (a huge speed makes everything due: 2**62 is "everything")
_MAX_DUE = float(2**62)


class FileSource:
    """A recording replayed as a live source.

    Parameters
    ----------
    path : str or PathLike or Recording
        A file in any supported format, or a :class:`Recording` already read.
    montage : sequence of str or str, optional
        Channel names (see :func:`read_recording`).
    speed : float
        1.0 real time, 2.0 twice as fast, 0 as fast as the consumer reads.
    chunk_s : float
        Largest chunk handed out, in seconds of signal (default 0.04 s, 10 samples at
        250 Hz, about what a Cyton's USB dongle delivers at once); never more than the
        whole recording.
    loop : bool
        Start again from the beginning at the end instead of ending (the timeline
        keeps running: timestamps never go back).
    start_s, stop_s : float, optional
        Replay only this time range of the file.
    units : str, optional
        EDF/BDF: the voltage unit of every signal instead of the header's (see
        :func:`read_recording`; ``file:PATH?units=uV``).

    Raises
    ------
    ValueError
        The file cannot be read (see :func:`read_recording`), or the recording has no
        samples or a sampling rate outside 1 Hz to 100 kHz.

    Notes
    -----
    ``read_chunk(timeout)`` returns the samples that are due (at most ``chunk_s`` of
    them), waiting up to ``timeout`` seconds (``None``: as long as needed) for the first
    one; an empty chunk (``n_times == 0``) if none fell due in time; ``None`` once the
    recording is exhausted (never with ``loop=True``).
    """

    def __init__(
        self,
        path: str | os.PathLike | Recording,
        montage: Sequence[str] | str | None = None,
        speed: float = 1.0,
        chunk_s: float = 0.04,
        *,
        loop: bool = False,
        start_s: float | None = None,
        stop_s: float | None = None,
        units: str | None = None,
    ) -> None:
        speed = float(speed)
        if not math.isfinite(speed) or speed < 0:
            raise ValueError(
                f"'speed' must be a finite number >= 0 (0: as fast as possible), got {speed!r}."
            )
        self.speed = speed
        self.chunk_s = check_finite_positive("chunk_s", chunk_s)
        self.loop = bool(loop)
        if isinstance(path, Recording):
            rec = path
            if (montage is not None or start_s is not None or stop_s is not None
                    or units is not None):
                raise ValueError(
                    "'montage', 'start_s', 'stop_s' and 'units' apply when reading a file; "
                    "pass a path, or a Recording already read with them."
                )
        else:
            rec = read_recording(path, montage=montage, start_s=start_s, stop_s=stop_s,
                                 units=units)
        if rec.n_times == 0:
            raise ValueError(f"recording {rec.path!s} has no samples to replay.")
        where = f"recording {str(rec.path)!r}" if rec.path is not None else "recording"
        _check_file_sfreq(float(rec.sfreq), where)
        self.recording = rec
        self._samples = np.ascontiguousarray(rec.data, dtype=np.float32)
        # at most the whole recording per chunk (a huge chunk_s would overflow)
        self._chunk_n = max(1, int(round(min(self.chunk_s * rec.sfreq, rec.n_times))))
        self.counters = Counters()
        self._lock = threading.Lock()
        self._pos = 0  # samples delivered so far (grows past n_times when looping)
        self._t0: float | None = None  # local clock at open
        self._mono0 = 0.0  # monotonic clock at open, for pacing
        self._closed = False

    # ------------------------------------------------------------------ properties
    @property
    def sfreq(self) -> float:
        return float(self.recording.sfreq)

    @property
    def ch_names(self) -> list[str]:
        return list(self.recording.ch_names)

    @property
    def n_channels(self) -> int:
        return self.recording.n_channels

    @property
    def position_s(self) -> float:
        """Seconds of signal delivered so far."""
        return self._pos / self.sfreq

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> "FileSource":
        if self._closed:
            raise RuntimeError("this FileSource was closed; create a new one to replay again.")
        if self._t0 is None:
            self._t0 = time.time()
            self._mono0 = time.monotonic()
            logger.info(
                "replaying %s: %d channels at %g Hz, speed %s",
                self.recording.path, self.n_channels, self.sfreq,
                "max" if self.speed == 0 else f"{self.speed:g}x",
            )
        return self

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "FileSource":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def _due(self) -> int:
        """Samples due by now (total since open), at the replay speed."""
        if self.speed == 0:
            return self._pos + self._chunk_n
        elapsed = (time.monotonic() - self._mono0) * self.speed
        # capped before int(): at a huge speed the product overflows to inf
        return int(min(elapsed * self.sfreq, _MAX_DUE))

    def read_chunk(self, timeout: float | None = None) -> Chunk | None:
        """The next chunk, an empty chunk on timeout, or ``None`` at the end.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for at least one sample to fall due (``None``: no limit).
        """
        if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
            raise ValueError(f"'timeout' must be None or a finite number >= 0, got {timeout!r}.")
        if self._closed:
            raise RuntimeError("read_chunk() on a closed FileSource.")
        if self._t0 is None:
            self.open()
        with self._lock:
            n_total = self.recording.n_times
            if not self.loop and self._pos >= n_total:
                return None
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                due = self._due()
                if due > self._pos:
                    break
                # sleep until the next sample falls due (or the timeout)
                now = time.monotonic()
                wait = (self._pos + 1) / (self.sfreq * self.speed) - (now - self._mono0) + 1e-4
                if deadline is not None:
                    if deadline - now <= 0:
                        return self._empty()
                    wait = min(wait, deadline - now)
                time.sleep(min(max(0.0, wait), _MAX_SLEEP_S))
            n = min(due - self._pos, self._chunk_n)
            if not self.loop:
                n = min(n, n_total - self._pos)
            idx = (self._pos + np.arange(n)) % n_total if self.loop else None
            if idx is None:
                block = self._samples[self._pos : self._pos + n]
            else:
                block = self._samples[idx]
            ts = self._t0 + (self._pos + np.arange(n, dtype=np.float64)) / self.sfreq
            self._pos += n
        nan_rows = int(np.count_nonzero(np.isnan(block).all(axis=1)))
        self.counters.dropped += nan_rows
        self.counters.ok += n - nan_rows
        return Chunk(
            samples=np.array(block, dtype=np.float32, copy=True),
            timestamps=ts,
            ch_names=self.ch_names,
            sfreq=self.sfreq,
        )

    def _empty(self) -> Chunk:
        return Chunk(
            samples=np.empty((0, self.n_channels), np.float32),
            timestamps=np.empty(0, np.float64),
            ch_names=self.ch_names,
            sfreq=self.sfreq,
        )

    def __repr__(self) -> str:
        return (
            f"FileSource({str(self.recording.path)!r}, speed={self.speed:g}, "
            f"sfreq={self.sfreq:g}, n_channels={self.n_channels})"
        )
