"""Robust framing of a Cyton byte stream: resynchronisation, dropped samples, forged frames.

The Cyton packet (see :mod:`nacf_core.hardware.cyton`) has no checksum: a header byte
``0xA0`` with a byte in ``0xC0``-``0xC6`` 32 bytes later can occur by chance in garbage
or inside real data, so a syntactically valid *frame* is not proof of a packet. The
framer uses the 8-bit sample counter as the check.

Rules (``max_gap`` default 127, ``relock`` default 3), applied at each position of the
byte stream in order:

1. A byte that does not start a frame (no ``0xA0``, or no valid end byte 32 bytes
   later: garbage, a truncated packet, a wrong end byte) is skipped and counted
   (``garbage_bytes``; a ``0xA0`` without a valid end byte also counts one ``corrupt``
   frame).
2. **In sequence**: a frame whose counter is the last accepted counter + 1 (mod 256)
   is accepted, unless it is a truncated packet: a frame with the counter after it
   (or the one after that) starts inside it, the byte after it is not a header
   (``0xA0``), and that inner frame ends on a valid end byte. Then the frame's end
   byte was a chance byte of the next packet: it is discarded (``corrupt``), and the
   next packet is found where it starts. (When such an inner frame exists, the
   decision waits for the bytes after the frame; otherwise it needs none.)
3. **After a gap**: a frame whose counter is ahead by 2 to ``max_gap + 1`` is accepted
   only if the next 33 bytes are a frame with the following counter (the packet after
   it confirms it); the missing counters become dropped samples (NaN rows, counted in
   ``dropped``).
4. **Locking**: before the first packet (and after :meth:`Framer.reset`, e.g. on a
   reconnect) a frame is accepted if the next frame follows it with the next counter.
   While locked, a frame that does not fit (counter more than 15 behind the last one,
   or more than ``max_gap + 1`` ahead) is accepted only as the start of ``relock``
   contiguous frames with consecutive counters (a new sequence: counted in
   ``extra["resyncs"]``; the unknown gap is not filled with NaN rows).
5. **Copies and late packets**: a frame accepted by rules 2-4 that is a byte-for-byte
   copy of one of the last 16 packets accepted (a link that sends a packet, or a block
   of the last few, again), or a relock chain holding such a copy, is discarded
   (``corrupt``, and ``extra["duplicates"]``): no sample is delivered twice. A frame
   whose counter is the last one or up to 15 behind it and is no such copy is a late
   packet (one lost the first time, in a block sent again): its slot has passed (it
   was delivered as a NaN row, or came before the sequence locked), so it is discarded
   (``corrupt``, and ``extra["late"]``): no sample comes out after a newer one. (A flat
   signal, every channel railed, can repeat a packet exactly 256 packets later, and a
   loss of more than ``max_gap`` packets can land on a counter up to 15 behind the last
   one, whose frames are then discarded until the counter passes it: such a loss may
   be read as continuing the sequence, the ambiguity an 8-bit counter leaves.)
6. Any other frame is a forged or corrupt frame: discarded, counted in ``corrupt``, and
   scanning continues at the next byte (not 33 bytes later, so a real packet that
   starts inside a forged frame is still found).

Guarantees (tested in ``tests/hardware/test_framing.py`` with hypothesis-generated
streams):

- Every packet that no injected byte overlaps is decoded with its exact values,
  provided the framer can place it by the rules above: it carries the next counter, or
  it follows a gap of at most ``max_gap`` packets (or starts the stream) and the next
  packet follows it directly. Injected bytes must not themselves form a frame whose
  counter fits the sequence (without a checksum no reader can tell such a forgery
  from a packet).
- A forged or corrupt frame whose counter does not fit the sequence is discarded and
  counted.
- It never raises on any input and never stalls: bytes are held back only while fewer
  than ``33 * relock`` bytes are available to decide, and feeding a stream in pieces
  of any size gives exactly the same output as feeding it at once.
- The timeline stays true: between two accepted packets of one sequence there is one
  NaN row per missing counter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nacf_core.kernels._numba import jit

from nacf_core._validation import check_int_range

from .base import Counters
from .cyton import PACKET_SIZE, GainTracker, decode_packets, decode_packets_numpy

__all__ = ["Framer", "Frames", "scan_frames"]

_STAT_CORRUPT, _STAT_GARBAGE, _STAT_RESYNC, _STAT_DUPLICATE, _STAT_LATE = 0, 1, 2, 3, 4
_HISTORY = 16  # accepted packets a frame is compared with (rule 5)
_COMPILED_MIN_BYTES = 1 << 16


@jit
def _scan_kernel(buf, n, last, max_gap, relock, starts, gaps, stats, hist,
                 n_hist, seq_len):  # pragma: no cover
    # The one compiled loop (helpers are inlined: the Numba shim compiles lazily, so
    # jitted functions cannot call each other).
    p = 0
    k = 0
    while True:
        if p + 33 > n:
            break
        if buf[p] != 0xA0:
            stats[1] += 1
            p += 1
            continue
        e = buf[p + 32]
        if e < 0xC0 or e > 0xC6:
            stats[0] += 1
            stats[1] += 1
            p += 1
            continue
        c = np.int64(buf[p + 1])
        # how many frames must follow this one with consecutive counters, and the gap
        need = 2
        gap = 0
        if last >= 0:
            d = (c - last) & 0xFF
            if d == 1:
                need = 1
                # a truncated packet: the next packet (or the one after it) starts
                # inside this frame, and no header follows the frame (rule 2)
                cut = 0
                if p + 33 < n and buf[p + 33] == 0xA0:
                    top = p + 2  # a header follows: the common case, nothing to check
                else:
                    top = p + 33
                for q in range(p + 2, top):
                    if buf[q] != 0xA0:
                        continue
                    dq = (np.int64(buf[q + 1]) - c) & 0xFF if q + 1 < n else 1
                    if dq < 1 or dq > 2:  # the next packet, or the one after it
                        continue
                    if p + 33 >= n or q + 32 >= n:
                        cut = -2  # decided by bytes still to come
                        break
                    e3 = buf[q + 32]
                    if e3 >= 0xC0 and e3 <= 0xC6:
                        cut = 1
                        break
                if cut == -2:
                    break
                if cut == 1:
                    stats[0] += 1
                    stats[1] += 1
                    p += 1
                    continue
            elif d >= 2 and d <= max_gap + 1:
                gap = d - 1
            elif ((last - c) & 0xFF) < hist.shape[0]:
                # a counter the sequence has passed (rule 5): a late packet, sent again
                need = 1
                gap = -2
            else:
                need = relock
                gap = -1
        # chain check: need - 1 following frames with consecutive counters
        r = 1
        q = p
        cc = c
        for _ in range(need - 1):
            q += 33
            if q + 33 > n:
                r = -2
                break
            e2 = buf[q + 32]
            if (buf[q] != 0xA0 or e2 < 0xC0 or e2 > 0xC6
                    or np.int64(buf[q + 1]) != ((cc + 1) & 0xFF)):
                r = 0
                break
            cc = (cc + 1) & 0xFF
        if r == -2:
            break
        if r == 1:
            # no copy of a packet already accepted (a link that sends the last few
            # packets again): each frame of the chain (the frame alone when in sequence
            # or after a gap) is compared with the last _HISTORY packets accepted,
            # newest first (this call's, then the earlier calls' in ``hist``), those
            # with its counter in full
            # (a frame ahead of the sequence can only copy a packet of another
            # sequence: checked while one is among the last _HISTORY accepted)
            n_check = need if gap < 0 else (1 if seq_len < hist.shape[0] else 0)
            for m in range(n_check):
                qq = p + 33 * m
                cq = buf[qq + 1]
                seen = 0
                jj = k - 1
                while r == 1 and jj >= 0 and seen < hist.shape[0]:
                    s0 = starts[jj]
                    if buf[s0 + 1] == cq:
                        same = True
                        for b in range(2, 33):
                            if buf[s0 + b] != buf[qq + b]:
                                same = False
                                break
                        if same:
                            r = 0
                    jj -= 1
                    seen += 1
                jj = n_hist - 1
                while r == 1 and jj >= 0 and seen < hist.shape[0]:
                    if hist[jj, 1] == cq:
                        same = True
                        for b in range(2, 33):
                            if hist[jj, b] != buf[qq + b]:
                                same = False
                                break
                        if same:
                            r = 0
                    jj -= 1
                    seen += 1
                if r == 0:
                    if m == 0:
                        stats[3] += 1
                    break
            if r == 1 and gap == -2:  # late, not a copy: its slot has passed
                stats[4] += 1
                r = 0
        if r == 1:
            starts[k] = p
            gaps[k] = gap
            if gap < 0:
                stats[2] += 1
            seq_len = 1 if gap < 0 or last < 0 else seq_len + 1
            k += 1
            last = c
            p += 33
        else:
            stats[0] += 1
            stats[1] += 1
            p += 1
    return k, p, last


def scan_frames(buf: np.ndarray, last: int = -1, max_gap: int = 127, relock: int = 3,
                compiled: bool = True, history: np.ndarray | None = None,
                seq_len: int = 0):
    """Find the packets in a byte buffer by the rules of the module docstring.

    Parameters
    ----------
    buf : ndarray, shape (n_bytes,), uint8
    last : int
        Counter of the last accepted packet before ``buf``; -1 when not locked.
    history : ndarray, shape (n, 33), uint8, optional
        The packets accepted before ``buf``, oldest first (the last 16 are used: rule 5).
    seq_len : int
        Packets accepted since the current sequence started (0: unknown).

    Returns
    -------
    starts : ndarray, shape (n_packets,), int64
        Offsets of the accepted packets.
    gaps : ndarray, shape (n_packets,), int64
        Missing counters before each packet (-1: a new sequence, gap unknown).
    consumed : int
        Bytes decided; the rest must be kept and scanned again with more data.
    last : int
        Counter of the last accepted packet (-1 if still unlocked).
    stats : ndarray, shape (5,), int64
        corrupt frames, skipped bytes, resyncs, copies of accepted packets discarded,
        late packets discarded (rule 5).

    ``compiled=False`` runs the same function as plain Python (identical results; no
    Numba start-up, which costs about a second on the first call in a process).
    """
    n = buf.shape[0]
    cap = n // PACKET_SIZE + 1
    starts = np.empty(cap, dtype=np.int64)
    gaps = np.empty(cap, dtype=np.int64)
    stats = np.zeros(5, dtype=np.int64)
    if history is None:
        history = np.zeros((0, PACKET_SIZE), np.uint8)
    hist = np.zeros((_HISTORY, PACKET_SIZE), np.uint8)
    n_hist = min(len(history), _HISTORY)
    if n_hist:
        hist[:n_hist] = history[len(history) - n_hist:]
    if compiled:
        k, p, last = _scan_kernel(buf, n, int(last), int(max_gap), int(relock), starts, gaps,
                                  stats, hist, n_hist, int(seq_len))
    else:
        k, p, last = _scan_kernel.py_func(buf.tobytes(), n, int(last), int(max_gap),
                                          int(relock), starts, gaps, stats, hist, n_hist,
                                          int(seq_len))
    return starts[:k], gaps[:k], int(p), int(last), stats


@dataclass
class Frames:
    """What one :meth:`Framer.feed` call produced.

    Attributes
    ----------
    samples : ndarray, shape (n_times, n_channels), float32
        Microvolts; NaN rows are dropped samples.
    counters : ndarray, shape (n_times,), int64
        Sample counter of each row (for Cyton+Daisy, the even (first) counter of the pair).
    accel : ndarray, shape (n_times, 3), float32
        g; NaN where the packet carried no accelerometer data.
    new_sequence : ndarray, shape (n_times,), bool
        True where a row starts a new sequence (first lock, or a resync after a gap
        too long to count).
    """

    samples: np.ndarray
    counters: np.ndarray
    accel: np.ndarray
    new_sequence: np.ndarray

    @property
    def n_times(self) -> int:
        return int(self.samples.shape[0])


class Framer:
    """Incremental framer and decoder for a Cyton or Cyton+Daisy byte stream.

    Parameters
    ----------
    daisy : bool
        Pair even/odd packets into 16-channel samples (see :mod:`.cyton`).
    gains : GainTracker, optional
        The gains in effect (shared with the serial session that sends commands).
    counters : Counters, optional
        Updated in place: ``ok`` (samples delivered), ``dropped`` (NaN rows),
        ``corrupt``, ``garbage_bytes``, ``extra["resyncs"]``, ``extra["duplicates"]``.
    max_gap, relock : int
        See the module docstring.
    compiled : bool or None
        Use the Numba kernels (True), the identical plain Python/NumPy path (False),
        or (None, default) Numba only for feeds of 64 KiB or more: a live device
        delivers a few hundred bytes at a time, where Numba's start-up (about a
        second on the first call in a process) would only delay the first chunk.
    """

    def __init__(
        self,
        daisy: bool = False,
        gains: GainTracker | None = None,
        counters: Counters | None = None,
        max_gap: int = 127,
        relock: int = 3,
        compiled: bool | None = None,
    ):
        self.daisy = bool(daisy)
        self.compiled = compiled
        self.n_channels = 16 if self.daisy else 8
        self.gains = gains if gains is not None else GainTracker(self.n_channels)
        if self.gains.n_channels != self.n_channels:
            raise ValueError(
                f"'gains' tracks {self.gains.n_channels} channels, expected {self.n_channels}."
            )
        self.counters = counters if counters is not None else Counters()
        self.counters.extra.setdefault("resyncs", 0)
        self.counters.extra.setdefault("duplicates", 0)
        self.counters.extra.setdefault("late", 0)
        self.max_gap = check_int_range("max_gap", max_gap, 0, 253)
        self.relock = check_int_range("relock", relock, 2, 16)
        self._buf = np.zeros(0, dtype=np.uint8)
        self._last = -1
        self._pending = None  # daisy: (counter, uv(8), accel(3)) of an even packet
        self._new_seq = False  # daisy: a sequence started and no row has marked it yet
        self._history = np.zeros((0, PACKET_SIZE), np.uint8)  # last accepted packets
        self._seq_len = 0  # packets accepted since the sequence started

    def reset(self) -> None:
        """Forget the sequence (after a reconnect); buffered bytes are dropped and counted."""
        self.counters.garbage_bytes += int(self._buf.size)
        self._buf = np.zeros(0, dtype=np.uint8)
        self._last = -1
        self._pending = None
        self._new_seq = False
        self._history = np.zeros((0, PACKET_SIZE), np.uint8)
        self._seq_len = 0

    flush = reset

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for more data (always < 33 * relock)."""
        return int(self._buf.size)

    def feed(self, data: bytes | bytearray | memoryview | np.ndarray) -> Frames:
        """Add bytes and return the samples they completed."""
        new = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(
            data, np.ndarray) else data.astype(np.uint8, copy=False).ravel()
        buf = np.concatenate([self._buf, new]) if self._buf.size else new
        was_unlocked = self._last < 0
        fast = self.compiled if self.compiled is not None else buf.size >= _COMPILED_MIN_BYTES
        self._fast = bool(fast)
        starts, gaps, consumed, last, stats = scan_frames(
            buf, self._last, self.max_gap, self.relock, compiled=self._fast,
            history=self._history, seq_len=self._seq_len,
        )
        self._buf = buf[consumed:].copy()
        self._last = last
        self.counters.corrupt += int(stats[_STAT_CORRUPT])
        self.counters.garbage_bytes += int(stats[_STAT_GARBAGE])
        self.counters.extra["resyncs"] += int(stats[_STAT_RESYNC])
        self.counters.extra["duplicates"] += int(stats[_STAT_DUPLICATE])
        self.counters.extra["late"] += int(stats[_STAT_LATE])
        if starts.size == 0:
            return self._empty()
        idx = starts[:, None] + np.arange(PACKET_SIZE)[None, :]
        packets = np.ascontiguousarray(buf[idx])
        self._history = np.concatenate([self._history, packets[-_HISTORY:]])[-_HISTORY:]
        new_seq = np.flatnonzero(gaps < 0)
        if new_seq.size:
            self._seq_len = int(len(gaps) - new_seq[-1])
        else:
            self._seq_len = len(gaps) if was_unlocked else self._seq_len + len(gaps)
        return self._decode(packets, gaps, was_unlocked)

    def _empty(self) -> Frames:
        return Frames(
            np.zeros((0, self.n_channels), np.float32), np.zeros(0, np.int64),
            np.zeros((0, 3), np.float32), np.zeros(0, bool),
        )

    def _decode(self, packets: np.ndarray, gaps: np.ndarray, was_unlocked: bool) -> Frames:
        decode = decode_packets if self._fast else decode_packets_numpy
        cnt, uv, accel = decode(packets, self.gains.gains[:8])
        if self.daisy:
            _, uv_d, _ = decode(packets, self.gains.gains[8:])
        # Expand to the full packet timeline: NaN slots for missing counters.
        g = np.where(gaps > 0, gaps, 0)
        slot = np.arange(len(gaps)) + np.cumsum(g)
        n_slots = int(slot[-1]) + 1 if len(slot) else 0
        counters = np.empty(n_slots, np.int64)
        counters[slot] = cnt
        newseq = np.zeros(n_slots, bool)
        newseq[slot[gaps < 0]] = True
        if was_unlocked:
            newseq[slot[0]] = True
        # counters of the NaN slots: count back from each accepted packet
        filled = np.zeros(n_slots, bool)
        filled[slot] = True
        if not filled.all():
            pos = np.flatnonzero(~filled)
            nxt = np.searchsorted(slot, pos)
            counters[pos] = (cnt[nxt].astype(np.int64) - (slot[nxt] - pos)) & 0xFF
        if not self.daisy:
            out = np.full((n_slots, 8), np.nan, np.float32)
            out[slot] = uv
            acc = np.full((n_slots, 3), np.nan, np.float32)
            acc[slot] = accel
            self.counters.ok += int(len(slot))
            self.counters.dropped += int(n_slots - len(slot))
            return Frames(out, counters, acc, newseq)
        return self._pair(slot, n_slots, counters, uv, uv_d, accel, newseq)

    def _pair(self, slot, n_slots, counters, uv_c, uv_d, accel, newseq) -> Frames:
        """Pair even (Daisy) and odd (Cyton) packet slots into 16-channel rows.

        An even packet ``n`` (channels 9-16) and the odd packet ``n + 1`` after it
        (channels 1-8) make one sample, labelled with the even counter ``n``. The first
        row after the start of a sequence is marked ``new_sequence``, also when the
        sequence starts on an odd packet, which has no partner and makes no row.
        """
        valid = np.zeros(n_slots, bool)
        valid[slot] = True
        c_uv = np.full((n_slots, 8), np.nan, np.float32)
        c_uv[slot] = uv_c
        d_uv = np.full((n_slots, 8), np.nan, np.float32)
        d_uv[slot] = uv_d
        acc = np.full((n_slots, 3), np.nan, np.float32)
        acc[slot] = accel
        rows, rcnt, racc, rnew = [], [], [], []
        pending = self._pending
        new_seq = self._new_seq
        for i in range(n_slots):
            c = int(counters[i])
            if newseq[i]:
                pending = None
                new_seq = True
            if c % 2 == 0:  # even: the Daisy half, wait for the odd packet after it
                pending = (c, d_uv[i] if valid[i] else None, acc[i])
                continue
            # odd: the Cyton half; pair with the even packet just before it
            if pending is None or ((pending[0] + 1) & 0xFF) != c:
                if not newseq[i]:
                    self.counters.extra["unpaired"] = self.counters.extra.get("unpaired", 0) + 1
                pending = None
                continue
            daisy = pending[1]
            row = np.full(16, np.nan, np.float32)
            if daisy is not None and valid[i]:
                row[:8] = c_uv[i]
                row[8:] = daisy
                self.counters.ok += 1
            else:
                self.counters.dropped += 1
            a = acc[i] if np.isfinite(acc[i]).all() else pending[2]
            rows.append(row)
            rcnt.append(pending[0])
            racc.append(a)
            rnew.append(new_seq)
            new_seq = False
            pending = None
        self._pending = pending
        self._new_seq = new_seq
        if not rows:
            return self._empty()
        return Frames(np.array(rows, np.float32), np.array(rcnt, np.int64),
                      np.array(racc, np.float32), np.array(rnew, bool))
