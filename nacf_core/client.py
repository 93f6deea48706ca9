"""The headset side of nacf's gRPC service: a source read as blocks, and the calls.

What ``nacf client`` (and ``nacf demo``) run on the machine the headset is attached to:

- :class:`Blocks` reads a source (:func:`~nacf_core.hardware.sources.open_source`: a
  Cyton on a serial port, an LSL stream, a file) on a thread of its own and hands out
  blocks of about half a second of finite little-endian float32 microvolts, as
  ``Signal.samples`` carries them: samples the link dropped (NaN rows) are filled by
  linear interpolation per channel, a block that lost more than a quarter of its samples
  is left out (one after the first block handed out, but the source's last, ends the
  blocks with :class:`SignalInterrupted`: the blocks on either side of it would be
  joined); both counted. An outage the source did not fill with NaN rows (a step
  between timestamps of more than ``1 / sfreq + GAP_S``, 0.25 s: a Cyton that
  reconnected, an LSL stream that came back) is never joined into the signal: before
  the first block it only starts the signal anew; after it, it ends the blocks with
  :class:`SignalInterrupted` (the wire carries finite samples only, so the gap cannot be
  sent as dropped samples).
- :func:`enroll` sends the first ``seconds`` of the blocks to ``Enroll``.
- :func:`authenticate_stream` streams blocks to ``AuthenticateStream`` with the device
  proof (signed over the first chunk) until the server decides; a source that ends
  first ends the signal with ``end_of_signal`` (declared in its start message,
  ``sends_end_of_signal``), on which the server decides.
- :func:`continuous` streams blocks to ``ContinuousAuthenticate`` on a session and yields
  the server's updates until it ends the session or the blocks end (then so does the
  signal, with ``end_of_signal``, declared likewise).

A headset that fails mid-call (its port lost) cancels the call and raises its error, and
an interrupt (Ctrl-C, SIGTERM) cancels it too, without ``end_of_signal``: the server
decides nothing on such a stream (grpcio's server can see a cancel as the plain end of
the stream, which a server older than the marker, or a client that does not declare it,
takes for the end of the signal and decides on).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nacf_core._validation import listed
from nacf_core.errors import Unavailable
from nacf_core.hardware.base import timestamp_outages

__all__ = ["Blocks", "SourceLost", "SignalInterrupted", "fill_dropped", "enroll", "enroll_request",
           "authenticate_stream", "continuous", "StreamResult", "proof_metadata"]

logger = logging.getLogger("nacf.client")

#: a block that lost more than this share of its samples is left out
_MAX_DROPPED_SHARE = 0.25


class SourceLost(Unavailable):
    """A live source whose stream vanished mid-read and did not come back (an LSL outlet
    that died): the signal was lost, which is not its end."""


class SignalInterrupted(Unavailable):
    """The source's signal had an outage after blocks of it were handed out (its
    timestamps jump: a headset that reconnected): the signal on either side of it is not
    one, and a ``Signal`` cannot carry the gap (finite samples only), so the blocks end
    there, as when a headset fails: a call streaming them is cancelled, nothing decided."""


def fill_dropped(block: np.ndarray) -> tuple[np.ndarray | None, int]:
    """``(block, n)``: ``block`` (n_times, n_channels) as contiguous little-endian float32
    with its rows holding a non-finite value (samples the link dropped) filled by linear
    interpolation per channel, and how many rows were filled; ``(None, n_bad)`` when
    more than a quarter of them were (the wire carries finite microvolts only)."""
    bad = ~np.isfinite(block).all(axis=1)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return np.ascontiguousarray(block, dtype="<f4"), 0
    if n_bad > block.shape[0] * _MAX_DROPPED_SHARE:
        return None, n_bad
    t = np.arange(block.shape[0])
    out = np.array(block, dtype="<f4")
    for c in range(out.shape[1]):
        out[bad, c] = np.interp(t[bad], t[~bad], out[~bad, c])
    return out, n_bad


class Blocks:
    """A source read on a thread of its own as blocks of about ``block_s`` seconds.

    ``src``: an opened source (``.sfreq``, ``.ch_names``, ``.read_chunk(timeout)``); the
    caller keeps closing it, after this. :meth:`next` returns the next block, ``None``
    once the source ended (or :meth:`close`), and raises what made the source fail:
    :class:`SourceLost` when it reports its stream lost for good (``read_chunk`` returns
    ``None`` with ``counters.extra["lost"]`` set, as an LSL source does), since that end is
    not the signal's, and :class:`SignalInterrupted` when the timestamps show an outage
    (a step of more than ``1 / sfreq + GAP_S``) after a block was handed out (one before
    that drops what came before it: the signal starts anew). ``timeout``: seconds
    without a usable block (a sample, or only blocks left out for their dropped samples)
    after which the source counts as failed.
    ``name``: the source as the user gave it, for messages.
    """

    def __init__(self, src: Any, block_s: float = 0.5, timeout: float = 10.0,
                 name: str = "") -> None:
        self.src = src
        self.name = str(name)
        self.sfreq = float(src.sfreq)
        self.ch_names = [str(c) for c in src.ch_names]
        self.block_n = max(1, int(self.sfreq * block_s))
        self.timeout = float(timeout)
        self.filled = 0          # dropped samples filled by interpolation
        self.dropped = 0         # samples of the blocks left out
        self.dead: list[str] = []  # channels with no finite sample in the last left out
        self.restarts = 0        # outages before the first block: the signal started anew
        self._t_prev = np.nan    # the timestamp of the last sample read
        self._n_out = 0          # samples handed out
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="nacf-client-reader",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf, n = [], 0
        last = time.monotonic()  # the last usable block (a lossy one does not count)
        try:
            while not self._stop.is_set():
                chunk = self.src.read_chunk(0.5)
                if chunk is None:
                    if self._lost():
                        within = getattr(self.src, "reconnect_s", None)
                        raise SourceLost(
                            "the signal was lost: the source "
                            + (f"{self.name} " if self.name else "")
                            + "vanished and did not come back"
                            + (f" within {within:g} s" if within else "") + ".")
                    break
                if chunk.n_times:
                    x = np.asarray(chunk.samples)
                    at = self._outage(chunk.timestamps)
                    if at is not None:  # the signal before it is not joined to what follows
                        i, gap = at
                        self._interrupted(gap, n + i)
                        buf, n, x = [], 0, x[i:]  # before any block: start anew
                    buf.append(x)
                    n += x.shape[0]
                    if n >= self.block_n:
                        if self._put(np.concatenate(buf)):
                            last = time.monotonic()
                        buf, n = [], 0
                if time.monotonic() - last > self.timeout:
                    raise TimeoutError(f"no {'usable ' if self.dropped else ''}samples "
                                       f"from the source for {self.timeout:g} s"
                                       f"{self.left_out()}.")
            if buf and not self._stop.is_set():  # what the source held at its end
                self._put(np.concatenate(buf), final=True)
        except Exception as e:  # noqa: BLE001 - the headset failed (PortLost, ...)
            self.error = e  # raised by next(), not as this thread's traceback
        finally:
            self._offer(None)  # the end

    def _outage(self, ts: Any) -> tuple[int, float] | None:
        """``(row, seconds)`` of an outage in the timestamps ``ts`` of a chunk (a step of
        more than ``1 / sfreq + GAP_S`` from the sample before; the first once blocks were
        handed out, else the last: the signal starts after it), or ``None``;
        steps back and missing (NaN) stamps are not outages, as in the Epocher."""
        at, step, self._t_prev = timestamp_outages(ts, self._t_prev, self.sfreq)
        if at.size == 0:
            return None
        i = int(at[0] if self._n_out else at[-1])  # the first ends the blocks
        return i, float(step[i]) - 1.0 / self.sfreq

    def _interrupted(self, gap: float, n_before: int) -> None:
        """An outage of ``gap`` seconds after ``n_before`` samples not yet handed out:
        :class:`SignalInterrupted` once blocks were handed out, else logged (the
        caller drops the samples before it)."""
        if self._n_out:
            raise SignalInterrupted(
                "the headset stream was interrupted: no samples for "
                f"{gap:.2f} s after {(self._n_out + n_before) / self.sfreq:.1f} s of signal "
                f"(the headset reconnected?); the signal on either side of the gap is not "
                "one and is not joined into one, so this attempt ends: try again.")
        self.restarts += 1
        logger.warning(
            "the source's signal was interrupted for %.2f s before its first block: "
            "it starts anew after the gap", gap)

    def _lost(self) -> bool:
        """The source says its stream was lost for good (its end is not the signal's)."""
        counters = getattr(self.src, "counters", None)
        extra = getattr(counters, "extra", None)
        return isinstance(extra, dict) and bool(extra.get("lost"))

    def _put(self, raw: np.ndarray, final: bool = False) -> bool:
        """Hand out ``raw`` filled; ``False`` when it is left out (before the first block
        handed out, or the source's last: :class:`SignalInterrupted` between two, whose
        signals would be joined)."""
        block, n = fill_dropped(raw)
        if block is None:
            self.dropped += n
            # channels with no number at all in the block: a dead channel, not a lossy link
            # (every channel without one: the link lost the whole block)
            dead = np.flatnonzero(~np.isfinite(raw).any(axis=0))
            self.dead = ([self.ch_names[c] for c in dead]
                         if dead.size < raw.shape[1] else [])
            if self._n_out and not final:
                raise SignalInterrupted(
                    f"the headset stream was interrupted: a block lost {n} of its "
                    f"{raw.shape[0]} samples after {self._n_out / self.sfreq:.1f} s of signal "
                    + (f"(channel{'s' if len(self.dead) > 1 else ''} "
                       f"{listed(map(repr, self.dead))} sent no finite sample in it)"
                       if self.dead else "(the link lost them)")
                    + ", too many to fill; the signal on either side of it is not one and "
                    "is not joined into one, so this attempt ends: try again.")
            return False
        self.filled += n
        self._n_out += block.shape[0]
        self._offer(block)
        return True

    def left_out(self) -> str:
        """``""``, or what the blocks left out lost, for a message."""
        if not self.dropped:
            return ""
        if self.dead:
            return (f" (blocks were left out, {self.dropped} samples in them: channel"
                    f"{'s' if len(self.dead) > 1 else ''} "
                    f"{listed(map(repr, self.dead))} sent no finite sample in "
                    "them (an electrode not connected? the signal carries numbers only))")
        return (" (blocks that lost more than a quarter of their samples were left out, "
                f"{self.dropped} samples dropped in them: the link loses samples)")

    def _offer(self, item: np.ndarray | None) -> None:
        """Queue ``item`` for the consumer, waiting for room until :meth:`close`."""
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def next(self) -> np.ndarray | None:
        """The next block; ``None`` when the source ended or this was closed."""
        while not self._stop.is_set():
            try:
                b = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if b is None:
                self._q.put(None)  # every later call sees the end too
                if self.error is not None:
                    raise self.error
                return None
            return b
        return None

    def __iter__(self) -> Iterator[np.ndarray]:
        while (b := self.next()) is not None:
            yield b

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (:meth:`next` then returns ``None`` although
        the source may not have ended)."""
        return self._stop.is_set()

    def close(self) -> None:
        """Stop reading (the source itself stays open: its owner closes it)."""
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> Blocks:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _pb() -> Any:
    from nacf_core._proto.nacf.v1 import auth_pb2

    return auth_pb2


def _signal(blocks: Blocks, samples: np.ndarray, device_id: str) -> Any:
    return _pb().Signal(sample_rate_hz=blocks.sfreq, channel_names=blocks.ch_names,
                        samples=samples.tobytes(), device_id=device_id)


def proof_metadata(secret: str, user_id: str, device_id: str, samples: bytes,
                   now: float | None = None) -> tuple[tuple[str, str], ...]:
    """The ``x-device-id``/``-timestamp``/``-proof`` metadata of a call whose signed
    samples are ``samples`` (the first chunk of a stream)."""
    from nacf_core.service import device_proof

    ts = int(time.time() if now is None else now)
    return (("x-device-id", device_id), ("x-device-timestamp", str(ts)),
            ("x-device-proof", device_proof(secret, user_id, device_id, ts, samples)))


def enroll_request(user_id: str, blocks: Blocks, seconds: float, *,
                   update: bool = False) -> Any:
    """The ``EnrollRequest`` of ``user_id`` with the first ``seconds`` of ``blocks`` as
    one signal; ``ValueError`` when the source ends before."""
    need = int(round(seconds * blocks.sfreq))
    got, n = [], 0
    while n < need:
        b = blocks.next()
        if b is None:
            raise ValueError(f"the source ended after {n / blocks.sfreq:.1f} s of the "
                             f"{seconds:g} s to enroll; nothing was sent{blocks.left_out()}.")
        got.append(b)
        n += b.shape[0]
    x = np.ascontiguousarray(np.concatenate(got)[:need], dtype="<f4")
    return _pb().EnrollRequest(user_id=user_id, signals=[_signal(blocks, x, "")],
                               update=update)


def enroll(stub: Any, metadata: Sequence[tuple[str, str]], user_id: str, blocks: Blocks,
           seconds: float, *, update: bool = False, timeout: float = 60.0) -> Any:
    """``Enroll`` ``user_id`` with the first ``seconds`` of ``blocks`` as one signal;
    ``ValueError`` when the source ends before (nothing is sent)."""
    return stub.Enroll(enroll_request(user_id, blocks, seconds, update=update),
                       metadata=tuple(metadata), timeout=timeout)


@dataclass
class StreamResult:
    """An ``AuthenticateStream`` answer, with when it came: ``latency_s`` after the last
    chunk sent, ``wall_s`` from the call's start."""

    response: Any
    latency_s: float
    wall_s: float


def _cancel_on_failure(call: Any, blocks: Blocks, wake: threading.Event) -> None:
    """Wait for ``call`` to end or the headset to fail; then cancel the call and raise
    the headset's error."""
    call.add_done_callback(lambda _: wake.set())
    wake.wait()
    if blocks.error is not None and not call.done():
        call.cancel()
        raise blocks.error


def authenticate_stream(stub: Any, metadata: Sequence[tuple[str, str]], user_id: str,
                        blocks: Blocks, *, device_id: str = "", secret: str | None = None,
                        max_seconds: float = 0.0, timeout: float = 120.0) -> StreamResult:
    """Stream ``blocks`` to ``AuthenticateStream`` for ``user_id`` until the server
    decides; with ``secret``, the device proof of ``device_id`` over the first chunk.
    Blocks that end before the server decides end the signal with ``end_of_signal``
    (the server then decides on what it has); a headset that fails does not: the call is
    cancelled and the headset's error raised."""
    pb = _pb()
    first = blocks.next()
    if first is None:
        raise ValueError("the source ended before its first usable block; nothing was "
                         f"sent{blocks.left_out()}.")
    md = tuple(metadata)
    if secret is not None:
        md += proof_metadata(secret, user_id, device_id, first.tobytes())
    sent_at: list[float] = []
    wake = threading.Event()

    def requests() -> Iterator[Any]:
        yield pb.AuthenticateStreamRequest(start=pb.StreamStart(
            user_id=user_id, max_seconds=max_seconds, sends_end_of_signal=True))
        b = first
        while True:
            sent_at.append(time.perf_counter())
            yield pb.AuthenticateStreamRequest(chunk=_signal(blocks, b, device_id))
            try:
                b = blocks.next()
            except Exception:  # noqa: BLE001 - the caller cancels and raises it
                b = None
            if b is None:
                break
        if blocks.error is None and not blocks.closed:  # the source ended: the signal does
            yield pb.AuthenticateStreamRequest(end_of_signal=True)
            return
        wake.set()  # the call is cancelled, not decided on a stream cut short
        while not wake_done.is_set():
            wake_done.wait(0.2)

    wake_done = threading.Event()
    t0 = time.perf_counter()
    call = stub.AuthenticateStream.future(requests(), metadata=md, timeout=timeout)
    try:
        _cancel_on_failure(call, blocks, wake)
        t1 = time.perf_counter()
        resp = call.result()
    except BaseException:
        # Ctrl-C, SIGTERM: cancelled before the caller closes ``blocks``, which would end
        # the request stream and have the server decide on a stream cut short
        call.cancel()
        raise
    finally:
        wake_done.set()
    # the request thread may send one more chunk after the answer: not counted
    last = max((t for t in sent_at if t <= t1), default=t0)
    return StreamResult(resp, t1 - last, t1 - t0)


def continuous(stub: Any, metadata: Sequence[tuple[str, str]], session_token: str,
               blocks: Blocks, *, device_id: str = "", timeout: float | None = None
               ) -> Iterator[Any]:
    """Stream ``blocks`` to ``ContinuousAuthenticate`` on the session; yield each
    update (``ContinuousAuthenticateResponse``) until the server ends the session or the
    blocks end (with ``end_of_signal``, declared in the start message; the session then
    stays open until it expires). Closing the iterator cancels the call."""
    pb = _pb()
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield pb.ContinuousAuthenticateRequest(start=pb.ContinuousStart(
            session_token=session_token, sends_end_of_signal=True))
        while not done.is_set():
            try:
                b = blocks.next()
            except Exception:  # noqa: BLE001 - raised to the caller below
                b = None
            if b is None:
                break
            yield pb.ContinuousAuthenticateRequest(chunk=_signal(blocks, b, device_id))
        if blocks.error is None and not blocks.closed and not done.is_set():
            # the source ended: so does the signal (a call cancelled, a headset that
            # failed, sends no marker: the server counts it CANCELLED, not OK)
            yield pb.ContinuousAuthenticateRequest(end_of_signal=True)

    import grpc

    call = stub.ContinuousAuthenticate(requests(), metadata=tuple(metadata), timeout=timeout)
    try:
        for update in call:
            yield update
    except grpc.RpcError:
        # a headset that failed ended the stream without end_of_signal: the server
        # answers CANCELLED, and the headset's error is what the caller is told
        if blocks.error is None:
            raise
    finally:
        done.set()
        call.cancel()
    if blocks.error is not None:
        raise blocks.error
