"""Turn a stream of chunks into overlapping, band-passed epochs.

:class:`Epocher` is synchronous: ``push(chunk)`` returns every epoch the chunk completed.
Samples wait, unfiltered, until the next epoch is complete; they are then band-passed in
one kernel call, with the filter state carried from call to call (so any chunking gives
the same epochs as filtering the whole signal, and 40 ms chunks do not each pay a kernel
call), and written into a ring buffer one window long. Memory: the ring (``window``
samples), the pending samples (at most ``max(window, hop)``) and the filter state,
whatever the rate or the chunk sizes.

:class:`EpochStream` runs a source's reader in a background thread and hands the
epochs to a consumer through a bounded queue.

Backpressure decision: **counted drops, never at the reader**. The reader thread always
drains the source (so no transport buffer - serial driver, LSL inlet - overflows
because the consumer is slow, and the filter sees every sample, keeping its state
true). When the consumer falls behind, the queue holds at most ``max_pending`` epochs;
a new epoch then evicts the oldest one, and each eviction is counted in
``EpochStream.dropped_epochs``, in the source's ``counters.extra["epochs_overflowed"]``
and in its ``counters.overflow`` as ``hop`` samples (the new signal each epoch brings),
and logged (first time, then every 100th). An authentication wants the freshest
evidence, so dropping the oldest epochs is the right end to cut; blocking the reader
instead would only move the loss into the device transport, where it is later and less visible.

Dropped samples (NaN rows from the source): the filter cannot take a NaN (it would
poison its state for good), so each NaN is replaced at the filter input by the last
finite value of that channel (sample and hold), and the output at that position is set
back to NaN (an infinite value is treated the same way). The epochs that contain it are
still emitted, with their NaN, and the
artifact gate rejects them as non-finite (a failure to acquire, counted there);
epochs after the gap are clean, with no step transient, because the held value keeps
the filter near its state before the gap. An outage the source did not fill (a
reconnect, a resync after a long loss) is found in the timestamps and pushed as NaN
rows too (``gap_s``), so no epoch joins the signal before and after it.

Initial state: the filter starts settled on the first finite sample of each channel
(:func:`nacf_core.dsp.steady_state_zi`), so a Cyton's DC offset of tens of thousands
of microvolts does not ring through the first seconds; a channel that is NaN for whole
epochs first is settled when its first finite sample comes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import numpy as np

from nacf_core import dsp
from nacf_core._validation import check_finite_positive, check_int_range, check_sfreq

from .base import GAP_S, Chunk, timestamp_outages

__all__ = ["Epoch", "Epocher", "EpochStream"]

logger = logging.getLogger("nacf.hardware")


class Epoch(NamedTuple):
    """One window of filtered signal.

    Attributes
    ----------
    data : ndarray, shape (n_channels, n_times)
        Band-passed microvolts (NaN where the source dropped samples).
    t_start : float
        Timestamp of the first sample (the source's clock), NaN if the chunks had none.
    index : int
        0, 1, 2, ... in the order epochs were cut.
    """

    data: np.ndarray
    t_start: float
    index: int


class Epocher:
    """A ring buffer that cuts filtered epochs out of a stream of chunks.

    Parameters
    ----------
    sfreq : float
        Sampling rate in Hz.
    n_channels : int
    window_s : float
        Epoch length in seconds.
    hop_s : float, optional
        Seconds between the starts of consecutive epochs (default ``window_s``: no
        overlap). A hop longer than the window skips the samples in between.
    sos : ndarray, shape (n_sections, 6), optional
        Filter applied before epoching (e.g. ``dsp.bandpass_sos(1, 40, sfreq)``). None:
        no filter.
    dtype : {numpy.float64, numpy.float32}
        Working and output dtype (float64 by default: Cyton DC offsets are large).
    backend : str, optional
        Kernel backend for :func:`nacf_core.dsp.sosfilt`.
    gap_s : float
        A step between consecutive timestamps longer than ``1 / sfreq + gap_s`` seconds
        is an outage the source did not fill (a reconnect, a resync after a long loss):
        the missing samples are pushed as NaN rows (at most one window of them), so no
        epoch joins the signal before and after it. Chunks without timestamps (plain
        arrays, NaN stamps) are taken as contiguous.

    Examples
    --------
    >>> ep = Epocher(250.0, 8, window_s=4.0, hop_s=1.0, sos=dsp.bandpass_sos(1, 40, 250))
    >>> for chunk in chunks:                       # doctest: +SKIP
    ...     for epoch in ep.push(chunk):           # (n_channels, n_times) arrays
    ...         ...
    """

    def __init__(
        self,
        sfreq: float,
        n_channels: int,
        window_s: float,
        hop_s: float | None = None,
        sos: np.ndarray | None = None,
        *,
        dtype: Any = np.float64,
        backend: str | None = None,
        gap_s: float = GAP_S,
    ) -> None:
        self.sfreq = check_sfreq(sfreq)
        self.n_channels = check_int_range("n_channels", n_channels, 1)
        self.window_s = check_finite_positive("window_s", window_s)
        self.hop_s = self.window_s if hop_s is None else check_finite_positive("hop_s", hop_s)
        self.window = int(round(self.window_s * self.sfreq))
        self.hop = int(round(self.hop_s * self.sfreq))
        if self.window < 1 or self.hop < 1:
            raise ValueError(
                f"'window_s' ({self.window_s}) and 'hop_s' ({self.hop_s}) must each be at least "
                f"one sample at {self.sfreq:g} Hz."
            )
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"'dtype' must be float32 or float64, got {dtype.name} instead.")
        self.dtype = dtype
        self.backend = backend
        if sos is not None:
            sos = np.ascontiguousarray(np.asarray(sos, dtype=dtype))
            if sos.ndim != 2 or sos.shape[1] != 6:
                raise ValueError(f"'sos' must have shape (n_sections, 6), got {sos.shape}.")
        self.sos = sos
        self.gap_s = check_finite_positive("gap_s", gap_s)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every sample and the filter state (e.g. after a reconnect)."""
        self._ring = np.zeros((self.window, self.n_channels), self.dtype)
        self._ring_t = np.full(self.window, np.nan)
        cap = max(self.window, self.hop)
        self._pend = np.zeros((cap, self.n_channels), self.dtype)  # raw, not yet filtered
        self._pend_t = np.full(cap, np.nan)
        self._pend_n = 0
        self._write = 0  # next ring row to write
        self._seen = 0  # samples filtered so far
        self._next_end = self.window  # sample count at which the next epoch completes
        self._zi: np.ndarray | None = None
        self._hold = np.zeros(self.n_channels, self.dtype)
        self._have_hold = np.zeros(self.n_channels, bool)
        self.n_epochs = 0
        self.n_nan_samples = 0
        self.n_gaps = 0  # outages found in the timestamps (filled with NaN rows)
        self._t_prev = np.nan  # timestamp of the last sample pushed

    @property
    def samples_seen(self) -> int:
        """Samples pushed so far."""
        return self._seen + self._pend_n

    @property
    def nbytes(self) -> int:
        """Memory held between pushes (ring, pending samples, timestamps, filter state)."""
        z = 0 if self._zi is None else self._zi.nbytes
        return (
            self._ring.nbytes + self._ring_t.nbytes + self._pend.nbytes + self._pend_t.nbytes
            + z + self._hold.nbytes
        )

    # ------------------------------------------------------------------ filtering
    def _filter(self, x: np.ndarray) -> np.ndarray:
        """Filter a block (n_times, n_channels) with carried state; NaN held, then restored.

        Infinite values are treated as NaN (held, and NaN in the output): in the filter
        state they would make every later sample of the channel NaN.
        """
        nan = ~np.isfinite(x)
        any_nan = bool(nan.any())
        has = ~nan.all(axis=0)  # channels with a finite value in this block
        first = has & ~self._have_hold  # channels with their first finite value in it
        if any_nan:
            x = x.copy()
            self.n_nan_samples += int(nan.all(axis=1).sum())
            arange = np.arange(x.shape[0])
            for c in np.flatnonzero(nan.any(axis=0)):
                col, bad = x[:, c], nan[:, c]
                if self._have_hold[c]:
                    prev = self._hold[c]
                else:  # nothing finite seen yet on this channel: back-fill
                    prev = col[~bad][0] if has[c] else 0.0
                idx = np.where(bad, -1, arange)
                np.maximum.accumulate(idx, out=idx)
                col[:] = np.where(idx >= 0, col[np.maximum(idx, 0)], prev)
        self._hold[has] = x[-1, has]
        self._have_hold |= has
        if self.sos is None:
            y = x.copy() if not any_nan else x
        else:
            if self._zi is None:
                self._zi = dsp.steady_state_zi(self.sos, x, axis=0, backend=self.backend)
            elif first.any():  # NaN so far (held at 0): settle on the first finite value
                self._zi[:, :, first] = dsp.steady_state_zi(
                    self.sos, np.ascontiguousarray(x[:1, first]), axis=0, backend=self.backend
                )
            y, self._zi = dsp.sosfilt(self.sos, x, axis=0, zi=self._zi, backend=self.backend)
        if any_nan:
            y[nan] = np.nan
        return y

    # ------------------------------------------------------------------ pushing
    def push(self, chunk: Chunk | np.ndarray) -> list[np.ndarray]:
        """Add samples; return the epochs that became complete, oldest first.

        Parameters
        ----------
        chunk : Chunk or ndarray, shape (n_times, n_channels)
            Microvolts, time-major (NaN rows = dropped samples).

        Returns
        -------
        list of ndarray, shape (n_channels, n_times_window)
        """
        return [e.data for e in self.push_epochs(chunk)]

    def push_epochs(self, chunk: Chunk | np.ndarray) -> list[Epoch]:
        """Like :meth:`push`, returning :class:`Epoch` (data, start timestamp, index)."""
        if isinstance(chunk, Chunk):
            x, ts = chunk.samples, chunk.timestamps
            if chunk.sfreq != self.sfreq:
                raise ValueError(
                    f"'chunk' has sfreq {chunk.sfreq:g} Hz but this Epocher was built for "
                    f"{self.sfreq:g} Hz."
                )
        else:
            x, ts = chunk, None
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.n_channels:
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(
                f"'chunk' samples must have shape (n_times, {self.n_channels}), got {shape}."
            )
        if ts is not None and ts.shape != (x.shape[0],):
            raise ValueError(
                f"'chunk' timestamps must have shape ({x.shape[0]},), got {ts.shape}."
            )
        if ts is not None and x.shape[0]:
            x, ts = self._fill_gaps(x, ts)
        out: list[Epoch] = []
        n, pos = x.shape[0], 0
        while pos < n:
            # raw samples still missing before the next epoch is complete
            missing = self._next_end - self._seen - self._pend_n
            take = min(n - pos, missing)
            k = self._pend_n
            self._pend[k : k + take] = x[pos : pos + take]
            self._pend_t[k : k + take] = np.nan if ts is None else ts[pos : pos + take]
            self._pend_n += take
            pos += take
            if take == missing:
                self._flush(out)
        return out

    def _fill_gaps(self, x: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NaN rows (stamped on the nominal grid) where the timestamps jump by more than
        ``gap_s`` past the next sample's time; at most ``window`` rows per gap."""
        at, step, self._t_prev = timestamp_outages(ts, self._t_prev, self.sfreq, self.gap_s)
        if at.size == 0:
            return x, ts
        xs, tss, begin = [], [], 0
        for i in at:
            n_missing = min(int(round(min(step[i] * self.sfreq, self.window + 1.0))) - 1,
                            self.window)
            xs += [x[begin:i], np.full((n_missing, x.shape[1]), np.nan, x.dtype)]
            tss += [ts[begin:i], ts[i] - np.arange(n_missing, 0, -1) / self.sfreq]
            begin = i
            self.n_gaps += 1
            logger.warning("a gap of %.3f s in the timestamps at %.3f: %d NaN rows",
                           step[i] - 1.0 / self.sfreq, ts[i], n_missing)
        return np.concatenate(xs + [x[begin:]]), np.concatenate(tss + [ts[begin:]])

    def _flush(self, out: list[Epoch]) -> None:
        """Filter the pending samples, write them to the ring, cut the epoch they complete."""
        m = self._pend_n
        y = self._filter(self._pend[:m])
        self._write_ring(y, self._pend_t[:m])
        self._seen += m
        self._pend_n = 0
        if self._seen == self._next_end:
            order = (self._write + np.arange(self.window)) % self.window
            data = np.ascontiguousarray(self._ring[order].T)
            out.append(Epoch(data, float(self._ring_t[order[0]]), self.n_epochs))
            self.n_epochs += 1
            self._next_end += self.hop

    def _write_ring(self, y: np.ndarray, ts: np.ndarray) -> None:
        if y.shape[0] > self.window:  # only the last window matters (hop > window)
            y = y[-self.window :]
            ts = ts[-self.window :]
        k = y.shape[0]
        idx = (self._write + np.arange(k)) % self.window
        self._ring[idx] = y
        self._ring_t[idx] = ts
        self._write = (self._write + k) % self.window


class EpochStream:
    """Read a source in a background thread and queue its epochs, dropping the oldest.

    Parameters
    ----------
    source : Source
        Anything with ``read_chunk(timeout) -> Chunk | None`` (and ``counters``); it is
        entered and closed by the stream when ``own_source`` is True.
    epocher : Epocher
    max_pending : int
        Epochs kept for a slow consumer; beyond, the oldest is dropped and counted.
    poll_s : float
        Timeout of each ``read_chunk`` call (how fast ``close()`` takes effect).
    own_source : bool
        Enter the source on start and close it on close.

    Notes
    -----
    ``get()`` returns the next :class:`Epoch`; ``None`` when the source ended and every
    epoch was taken; raises :class:`TimeoutError` if none came in ``timeout``, and
    re-raises the reader's exception if the source failed. Memory: the epocher's ring
    plus ``max_pending`` epochs.
    """

    def __init__(
        self,
        source: Any,
        epocher: Epocher,
        max_pending: int = 16,
        *,
        poll_s: float = 0.1,
        own_source: bool = True,
    ) -> None:
        self.source = source
        self.epocher = epocher
        self.max_pending = check_int_range("max_pending", max_pending, 1)
        self.poll_s = check_finite_positive("poll_s", poll_s)
        self.own_source = own_source
        self._queue: deque[Epoch] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.dropped_epochs = 0
        self.emitted_epochs = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "EpochStream":
        if self._thread is not None:
            return self
        if self.own_source and hasattr(self.source, "__enter__"):
            self.source.__enter__()
        self._thread = threading.Thread(target=self._run, name="nacf-epoch-reader", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 10 * self.poll_s))
        if self.own_source and hasattr(self.source, "__exit__"):
            self.source.__exit__(None, None, None)

    def __enter__(self) -> "EpochStream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reader thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self.source.read_chunk(timeout=self.poll_s)
                if chunk is None:
                    break
                if chunk.n_times == 0:
                    continue
                epochs = self.epocher.push_epochs(chunk)
                if epochs:
                    self._enqueue(epochs)
        except BaseException as exc:  # handed to the consumer by get()
            logger.error("epoch reader stopped: %s", exc)
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _enqueue(self, epochs: list[Epoch]) -> None:
        with self._cond:
            for e in epochs:
                if len(self._queue) >= self.max_pending:
                    self._queue.popleft()
                    self.dropped_epochs += 1
                    counters = getattr(self.source, "counters", None)
                    if counters is not None:
                        counters.overflow += self.epocher.hop
                        counters.extra["epochs_overflowed"] = self.dropped_epochs
                    if self.dropped_epochs == 1 or self.dropped_epochs % 100 == 0:
                        logger.warning(
                            "consumer too slow: %d epoch(s) dropped so far (max_pending=%d)",
                            self.dropped_epochs, self.max_pending,
                        )
                self._queue.append(e)
                self.emitted_epochs += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ consumer
    @property
    def pending(self) -> int:
        return len(self._queue)

    def get(self, timeout: float | None = None) -> Epoch | None:
        """The oldest pending epoch (see the class notes for end, timeout and errors)."""
        if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
            raise ValueError(f"'timeout' must be None or a finite number >= 0, got {timeout!r}.")
        if self._thread is None:
            raise RuntimeError("EpochStream.get() before start() (use it as a context manager).")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no epoch within {timeout} s")
                self._cond.wait(remaining)
            return self._queue.popleft()

    def __iter__(self):
        while (e := self.get()) is not None:
            yield e
