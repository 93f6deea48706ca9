"""Generated hostile serial byte streams: what a Cyton (or a Cyton+Daisy) behind a flaky
dongle can send, against the framer (``framing.Framer``) and the serial source
(``serial_reader.CytonReader``).

A board streams packets whose channel 1 carries a serial number unique in the test (so
every sample that comes out can be traced to the one packet it came from); the stream is
damaged as a radio link or a USB port damages it: packets dropped, truncated, sent
twice (alone or as a block), with a wrong header or end byte, random garbage or the
board's reset text (``...$$$``) between packets, the counter restarting at 0, the
accelerometer or other aux footers (end bytes 0xC0-0xC6). It is fed in pieces cut at
any byte.

Properties (the guarantees of ``framing``'s module docstring, read as a user would):

- never an exception but the documented ones (``SerialSourceError`` and its kinds from
  the reader; nothing from the framer), never a hang (every wait is bounded by the
  source's own time-outs; no test here measures time);
- every sample that comes out is a packet that was sent intact, with its exact
  microvolts (finite, within the ADS1299's range) and its own counter; no packet comes
  out twice and none out of order;
- the packets lost between two delivered ones of a sequence are there as NaN rows, one
  per lost packet, and counted (``dropped``), the delivered ones too (``ok``);
- a run of three intact packets that nothing overlaps is delivered;
- feeding the stream in pieces gives what feeding it at once gives.

The serial source is driven through a fake pyserial port (``FakePort``) whose board
answers the handshake (or does not, or with junk, or with the dongle's "board is off"
text) and whose reads return the stream in pieces, empty, or fail as pyserial fails
(``SerialException``, ``OSError``, ``termios.error``).
"""

from __future__ import annotations

import errno
import termios
import time

import numpy as np
import pytest
import serial
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nacf_core.hardware.base import Chunk
from nacf_core.hardware.cyton import decode_packets_numpy, encode_packets, uv_per_count
from nacf_core.hardware.framing import Framer
from nacf_core.hardware.serial_reader import CytonReader, PortBusy, PortLost, SerialSourceError

FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
READER_FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                       suppress_health_check=[HealthCheck.too_slow,
                                              HealthCheck.filter_too_much])
RESET_TEXT = (b"OpenBCI V3 8-16 channel\nOn Board ADS1299 Device ID: 0x3E\n"
              b"LIS3DH Device ID: 0x33\nFirmware: v3.1.2\n$$$")
UV_MAX = np.float32(2**23 * uv_per_count(24))  # full scale at gain 24 (187.5 mV)
ACTIONS = ["keep"] * 12 + ["drop", "drop", "truncate", "bad_header", "bad_end", "repeat",
                           "repeat_block", "garbage", "reset_text"]


# ----------------------------------------------------------------------------------
# the board and its damaged stream
# ----------------------------------------------------------------------------------


@st.composite
def board_streams(draw, daisy: bool = False, first_id: int = 0):
    """A damaged byte stream and what it holds.

    Returns (data, truth, intact, runs, starts): ``truth`` maps each packet's serial
    number (channel 1 carries 2 * it + 1) to (counter, uv (8,), accel (3,)) of the packet as
    sent; ``intact`` is the set of serial numbers sent intact at least once (nothing
    overlapping them); ``runs`` lists runs of three intact packets with consecutive
    counters, adjacent in the stream, sent for the first time; ``starts`` the offsets
    of the packets sent intact.
    """
    n = draw(st.integers(1, 70), label="packets")
    c0 = 0 if daisy and draw(st.booleans()) else draw(st.integers(0, 255))
    counts = np.zeros((n, 8), np.int64)
    # channel 1 carries the serial number as 2 * id + 1: odd, so no byte of it is 0xA0,
    # which the body rewrite below would change (id 160 became 161: a 'duplicate')
    counts[:, 0] = 2 * (first_id + np.arange(n)) + 1
    raw = np.frombuffer(draw(st.binary(min_size=21 * n, max_size=21 * n)), np.uint8)
    raw = raw.reshape(n, 7, 3).astype(np.int64)
    rest = (raw[:, :, 0] << 16) | (raw[:, :, 1] << 8) | raw[:, :, 2]
    counts[:, 1:] = np.where(rest >= 2**23, rest - 2**24, rest)
    counts[counts == 0xA0A0A0] += 1
    ends = np.array(draw(st.lists(st.sampled_from([0xC0, 0xC0, 0xC0, 0xC1, 0xC3, 0xC6]),
                                  min_size=n, max_size=n)), np.int64)
    aux = np.frombuffer(draw(st.binary(min_size=6 * n, max_size=6 * n)),
                        np.uint8).reshape(n, 6)
    actions = draw(st.lists(st.sampled_from(ACTIONS), min_size=n, max_size=n), label="acts")
    counters = np.empty(n, np.int64)
    c = c0
    for i in range(n):
        if actions[i] == "restart" and i:
            c = 0  # the board was told 'b' again: its counter starts over
        counters[i] = c & 0xFF
        c += 1
    packets = encode_packets(counters, counts, aux=aux, end_byte=ends)
    # no header byte inside a packet's data: garbage and damage make the only frames
    # that are not packets (an accidental frame whose counter fits the sequence cannot
    # be told from a packet without a checksum: the documented limit)
    body = packets[:, 2:32]
    body[body == 0xA0] = 0xA1
    cnt, sent, uv, accel = decode_packets_numpy(packets, return_counts=True)
    assert np.array_equal(sent[:, 0], counts[:, 0]), "a serial number was rewritten"
    truth = {first_id + i: (int(cnt[i]), uv[i], accel[i]) for i in range(n)}
    out = bytearray()
    placed = []
    for i in range(n):
        act = actions[i]
        p = bytearray(packets[i].tobytes())
        if act == "garbage":
            out += draw(st.binary(min_size=1, max_size=40), label="garbage")
        elif act == "reset_text":
            out += RESET_TEXT
        if act == "drop":
            continue
        if act == "truncate":
            p = p[: draw(st.integers(1, 32), label="cut")]
        elif act == "bad_header":
            p[0] = draw(st.integers(0, 255).filter(lambda b: b != 0xA0), label="header")
        elif act == "bad_end":
            p[32] = draw(st.integers(0, 255).filter(lambda b: not 0xC0 <= b <= 0xC6),
                         label="end")
        # (serial number, offset, sent intact, sent for the first time)
        placed.append((first_id + i, len(out), act in ("keep", "garbage", "reset_text",
                                                        "repeat", "repeat_block"), True))
        out += p
        if act == "repeat":
            placed.append((first_id + i, len(out), True, False))
            out += p
        elif act == "repeat_block" and i >= 1:
            k = draw(st.integers(1, min(i, 4)), label="block")
            for j in range(i - k, i + 1):
                placed.append((first_id + j, len(out), True, False))
                out += packets[j].tobytes()
    intact = {sid for sid, _, ok, _ in placed if ok}  # sent intact at least once
    runs = []
    for k in range(len(placed) - 2):
        trio = placed[k:k + 3]
        if all(ok and first for _, _, ok, first in trio) \
                and all(b[1] - a[1] == 33 for a, b in zip(trio, trio[1:])) \
                and all(truth[b[0]][0] == (truth[a[0]][0] + 1) & 0xFF and b[0] == a[0] + 1
                        for a, b in zip(trio, trio[1:])):
            runs.append([t[0] for t in trio])
    starts = {t[1] for t in placed if t[2]}
    return bytes(out), truth, intact, runs, starts


def _valid_windows(data: bytes) -> list[int]:
    a = np.frombuffer(data, np.uint8)
    if a.size < 33:
        return []
    ok = (a[:-32] == 0xA0) & (a[32:] >= 0xC0) & (a[32:] <= 0xC6)
    return np.flatnonzero(ok).tolist()


def _feed(framer: Framer, data: bytes, cuts: list[int]):
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    parts = [framer.feed(data[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    if not parts:
        parts = [framer.feed(b"")]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return cat("samples"), cat("counters"), cat("accel"), cat("new_sequence")


def _serial_number(uv_ch1: float) -> int:
    return int(round(float(uv_ch1) / uv_per_count(24)))


def _board_id(uv_ch1: float) -> int:
    """The serial number ``board_streams`` gave the packet (channel 1: 2 * id + 1)."""
    return (_serial_number(uv_ch1) - 1) // 2


# ----------------------------------------------------------------------------------
# the framer
# ----------------------------------------------------------------------------------


@FUZZ
@given(board_streams(), st.lists(st.integers(0, 3000), max_size=12), st.booleans())
def test_a_damaged_cyton_stream_gives_only_real_samples_and_reports_the_lost_ones(
        stream, cuts, byte_by_byte):
    data, truth, intact, runs, starts = stream
    # the precondition of the framing guarantees: every frame in the stream is a packet
    # sent intact, none made by chance (in garbage, or a truncated packet's header with
    # a byte of the next packet 32 bytes on that happens to be an end byte: without a
    # checksum such a frame whose counter fits cannot be told from a packet)
    assume(all(s in starts for s in _valid_windows(data)))
    f = Framer()
    if byte_by_byte:
        cuts = list(range(len(data)))
    x, cnt, acc, newseq = _feed(f, data, cuts)
    assert f.buffered < 33 * 3
    whole = Framer(compiled=True)
    w = whole.feed(data)
    assert np.array_equal(w.samples, x, equal_nan=True)
    assert np.array_equal(w.counters, cnt) and np.array_equal(w.new_sequence, newseq)
    assert whole.counters.as_dict() == f.counters.as_dict()

    fin = np.isfinite(x).all(axis=1)
    assert (np.isnan(x[~fin])).all(), "a row is either a sample or a dropped one"
    assert np.abs(x[fin]).max(initial=0) <= UV_MAX
    ids = [_board_id(v) for v in x[fin, 0]]
    # every sample is a packet sent intact, with its exact values, counter and accel
    for row, c, a, sid in zip(x[fin], cnt[fin], acc[fin], ids):
        assert sid in intact, f"packet {sid} was never sent intact, yet delivered"
        t_cnt, t_uv, t_acc = truth[sid]
        assert c == t_cnt and np.array_equal(row, t_uv)
        assert np.array_equal(a, t_acc, equal_nan=True)
    # none twice, none out of order within a sequence
    assert len(ids) == len(set(ids)), f"duplicated samples: {ids}"
    seq = np.cumsum(newseq)[fin]
    for a, b, sa, sb in zip(ids, ids[1:], seq, seq[1:]):
        assert sa != sb or b > a, f"reordered samples in a sequence: {ids}"
    # the packets lost between two delivered ones of a sequence are NaN rows, counted
    rows = np.flatnonzero(fin)
    for a, b in zip(rows, rows[1:]):
        if not newseq[a + 1:b + 1].any():
            sa, sb = _board_id(x[a, 0]), _board_id(x[b, 0])
            assert b - a - 1 == sb - sa - 1, f"{b - a - 1} NaN rows for {sb - sa - 1} lost"
            assert ((cnt[a + 1:b + 1] - cnt[a:b]) % 256 == 1).all()
    assert f.counters.ok == int(fin.sum()) and f.counters.dropped == int((~fin).sum())
    # a run of three intact packets is delivered (but the stream's last three, which
    # nothing after them confirms yet)
    last = max(truth)
    for run in runs:
        if run[-1] <= last - 3:
            assert set(run) <= set(ids), f"run {run} not delivered ({ids})"


@st.composite
def daisy_streams(draw):
    return draw(board_streams(daisy=True))


@FUZZ
@given(daisy_streams(), st.lists(st.integers(0, 3000), max_size=12))
def test_a_damaged_daisy_stream_pairs_only_real_halves(stream, cuts):
    data, truth, intact, runs, starts = stream
    assume(all(s in starts for s in _valid_windows(data)))
    f = Framer(daisy=True)
    x, cnt, acc, newseq = _feed(f, data, cuts)
    assert f.buffered < 33 * 3 and x.shape[1] == 16
    fin = np.isfinite(x).all(axis=1)
    assert np.isnan(x[~fin]).all()
    assert np.abs(x[fin]).max(initial=0) <= UV_MAX
    odd_ids = [_board_id(v) for v in x[fin, 0]]
    for row, c, sid in zip(x[fin], cnt[fin], odd_ids):
        # channels 1-8: the odd packet n + 1; 9-16: the even packet n just before it
        assert sid in intact and sid - 1 in intact, (sid, sorted(intact))
        c_odd, uv_odd, _ = truth[sid]
        c_even, uv_even, _ = truth[sid - 1]
        assert c == c_even and c_even % 2 == 0 and c_odd == c_even + 1
        assert np.array_equal(row[:8], uv_odd) and np.array_equal(row[8:], uv_even)
    assert len(odd_ids) == len(set(odd_ids)), f"duplicated samples: {odd_ids}"
    seq = np.cumsum(newseq)[fin]
    for a, b, sa, sb in zip(odd_ids, odd_ids[1:], seq, seq[1:]):
        assert sa != sb or b > a, f"reordered samples in a sequence: {odd_ids}"
    rows = np.flatnonzero(fin)
    for a, b in zip(rows, rows[1:]):
        if not newseq[a + 1:b + 1].any():
            sa, sb = odd_ids[list(rows).index(a)], odd_ids[list(rows).index(b)]
            assert 2 * (b - a) == sb - sa, f"{b - a - 1} NaN rows for {sb - sa} packets"
    assert f.counters.ok == int(fin.sum()) and f.counters.dropped == int((~fin).sum())


# ----------------------------------------------------------------------------------
# the serial source, over a fake pyserial port
# ----------------------------------------------------------------------------------

FAILURES = {
    "serial": lambda: serial.SerialException(
        "device reports readiness to read but returned no data (device disconnected or "
        "multiple access on port?)"),
    "eio": lambda: OSError(errno.EIO, "Input/output error"),
    "termios": lambda: termios.error(errno.EIO, "Input/output error"),
}
HANDSHAKES = ["ok"] * 5 + ["silent", "junk", "junk_prompt", "dongle_only", "dies", "gone"]


class FakePort:
    """A pyserial ``Serial`` with a scripted board behind it.

    ``handshake``: how the board answers ``v`` (``ok``: the banner; ``silent``: never;
    ``junk``: random bytes; ``junk_prompt``: junk ending in ``$$$``; ``dongle_only``:
    the dongle's "failed to poll Host"; ``dies``: the port fails at the first write).
    ``script``: what reads return once ``b`` was sent: bytes, ``b""`` (a read that
    timed out) or the name of a failure in ``FAILURES`` (raised by that read, and by
    every call after it: the device is gone).
    """

    def __init__(self, handshake: str, script: list, daisy: bool = False,
                 junk: bytes = b""):
        self.handshake = handshake
        self.script = list(script)
        self.daisy = daisy
        self.junk = junk
        self.pending = bytearray()
        self.streaming = False
        self.dead: BaseException | None = None
        self.timeout = 0.05
        self.written = bytearray()

    def _check(self):
        if self.dead is not None:
            raise self.dead

    def write(self, data: bytes) -> int:
        self._check()
        if self.handshake == "dies":
            self.dead = serial.SerialException("write failed: [Errno 5] Input/output error")
            raise self.dead
        self.written += data
        for ch in bytes(data).decode("ascii", "replace"):
            if ch == "v":
                self.streaming = False
                self.pending += {
                    "ok": RESET_TEXT.replace(b"Firmware", b"On Daisy ADS1299 Device ID: "
                                             b"0x3E\nFirmware") if self.daisy else RESET_TEXT,
                    "silent": b"",
                    "junk": self.junk.replace(b"$", b"#"),
                    "junk_prompt": self.junk + b"$$$",
                    "dongle_only": b"Failure: Communications timeout - Device failed to "
                                   b"poll Host$$$",
                }[self.handshake]
            elif ch == "d" and self.handshake == "ok":
                self.pending += b"updating channel settings to default$$$"
            elif ch == "b":
                self.streaming = True
            elif ch == "s":
                self.streaming = False
        return len(data)

    def flush(self) -> None:
        self._check()

    def close(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        self._check()
        self.pending.clear()

    def _next(self):
        while self.streaming and not self.pending and self.script:
            item = self.script.pop(0)
            if isinstance(item, str):
                self.dead = FAILURES[item]()
                raise self.dead
            if not item:
                return False  # this read times out
            self.pending += item
        return True

    @property
    def in_waiting(self) -> int:
        self._check()
        return len(self.pending)

    @property
    def exhausted(self) -> bool:
        return self.dead is not None or not (self.pending or self.script)

    def read(self, size: int = 1) -> bytes:
        self._check()
        if not self._next() or not self.pending:
            time.sleep(0.001)  # a read that times out (briefly: no test here waits)
        out = bytes(self.pending[:size])
        del self.pending[:size]
        return out


@st.composite
def sessions(draw):
    """Connections of a reader: each a FakePort (its handshake and its read script)."""
    daisy = draw(st.booleans(), label="daisy")
    ports = []
    first_id = 1
    for _ in range(draw(st.integers(1, 3), label="connections")):
        handshake = draw(st.sampled_from(HANDSHAKES), label="handshake")
        if handshake == "gone":
            ports.append("gone")
            continue
        data, truth, intact, _, starts = draw(board_streams(daisy=daisy, first_id=first_id))
        first_id += len(truth) + 1
        cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        script = []
        for piece in pieces:
            script.append(piece)
            if draw(st.booleans()):
                script.append(b"")
        if draw(st.booleans()):
            script.insert(draw(st.integers(0, len(script))),
                          draw(st.sampled_from(sorted(FAILURES))))
        junk = draw(st.binary(max_size=60), label="junk")
        ports.append((FakePort(handshake, script, daisy=daisy, junk=junk),
                      data, truth, intact, starts))
    return daisy, ports


@READER_FUZZ
@given(sessions())
def test_the_serial_source_reads_a_hostile_board_without_inventing_samples(session):
    daisy, ports = session
    for p in ports:
        if p != "gone":
            assume(all(s in p[4] for s in _valid_windows(p[1])))
    queue = list(ports)
    truth, intact = {}, set()
    for p in ports:
        if p != "gone":
            truth.update(p[2])
            intact |= p[3]

    def open_port():
        if not queue:
            raise SerialSourceError("fake port: gone for good")
        p = queue.pop(0)
        if p == "gone":
            raise SerialSourceError("fake port: not there")
        return p[0]

    r = CytonReader("/dev/ttyFAKE0", daisy=daisy, handshake_timeout=0.02,
                    reconnect_timeout=0.2)
    r._open_port = open_port
    chunks = []
    while True:  # as a user retries: each open works or fails with a SerialSourceError
        head = queue[0] if queue else None
        try:
            r.open()
            break
        except SerialSourceError:
            assert head is not None and (head == "gone" or head[0].handshake != "ok"), \
                "a board that answers the handshake could not be opened"
            if not queue:
                return
    try:
        idle = 0
        for _ in range(300):  # every read ends within its time-out; PortLost ends all
            c = r.read_chunk(0.01)
            assert c is not None
            chunks.append(c)
            idle = 0 if c.n_times else idle + 1
            # the board has nothing more to say, on this port and on any to come
            if idle >= 3 and (r._ser is None or r._ser.exhausted) and not queue:
                break
            if idle >= 3 and r._ser is not None and r._ser.exhausted:
                break  # a port that stays: nothing will make the reader move on
    except SerialSourceError:  # PortLost: the port vanished and did not come back
        pass
    finally:
        r.close()
    n_ch = 16 if daisy else 8
    x = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros((0, n_ch))
    ts = np.concatenate([c.timestamps for c in chunks]) if chunks else np.zeros(0)
    assert x.dtype == np.float32 and x.shape[1] == n_ch and ts.shape == (x.shape[0],)
    assert np.isfinite(ts).all() and (np.diff(ts) > 0).all(), "time went backwards"
    fin = np.isfinite(x).all(axis=1)
    assert np.isnan(x[~fin]).all()
    ids = [_board_id(v) for v in x[fin, 0]]
    for row, sid in zip(x[fin], ids):
        assert sid in intact
        if daisy:
            assert np.array_equal(row[:8], truth[sid][1])
            assert np.array_equal(row[8:], truth[sid - 1][1])
        else:
            assert np.array_equal(row, truth[sid][1])
    assert ids == sorted(set(ids)), f"duplicated or reordered samples: {ids}"
    assert r.counters.ok == int(fin.sum()) and r.counters.dropped == int((~fin).sum())


def test_timestamps_go_forward_at_a_new_sequence_after_samples_came_fast():
    """Stamps count on from the first sample at the nominal rate; a backlog read at
    once (or a board whose crystal runs fast) puts them ahead of the clock, and the
    next sequence (a reconnect, a resync) was anchored at the clock: time went back
    (by 10 s here), in a recording's timestamp column too."""
    def stream(first_id, n):
        counts = np.zeros((n, 8), np.int64)
        counts[:, 0] = first_id + np.arange(n)
        return encode_packets(np.arange(n) & 0xFF, counts).tobytes()

    ports = [FakePort("ok", [stream(0, 2500), "serial"]), FakePort("ok", [stream(5000, 50)])]
    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, reconnect_timeout=5)
    r._open_port = lambda: ports.pop(0)
    ts = []
    with r:
        while len(ts) < 2548:
            ts.extend(r.read_chunk(0.05).timestamps)
    assert r.counters.reconnects == 1
    assert np.all(np.diff(ts) > 0), np.diff(ts).min()


def test_a_board_that_resets_mid_stream_is_started_again():
    """A Cyton that resets (a brown-out: its battery sagging, a loose switch) prints its
    banner ('...$$$') and stops streaming, while the dongle keeps the port open: the
    reader returned empty chunks for ever (nacf record: 'no samples for 10 s'), and a
    gain set before would not be on the board any more. After ``stall_timeout``
    seconds without a byte the session is started again (handshake, settings, 'b')."""
    def stream(first_id, n):
        counts = np.zeros((n, 8), np.int64)
        counts[:, 0] = first_id + np.arange(n)
        return encode_packets(np.arange(n) & 0xFF, counts).tobytes()

    ports = [FakePort("ok", [stream(0, 100), RESET_TEXT]), FakePort("ok", [stream(500, 100)])]
    opened = list(ports)
    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=0.1)
    r._open_port = lambda: ports.pop(0)
    rows = []
    with r:
        for _ in range(400):
            c = r.read_chunk(0.02)
            rows.extend(_serial_number(v) for v in c.samples[:, 0] if np.isfinite(v))
            if rows and rows[-1] >= 597:  # the last one waits for a packet after it
                break
    assert r.counters.reconnects == 1 and opened[1].written.count(b"b") == 1
    assert rows[:100] == list(range(100)) and len(rows) >= 198
    assert rows[100:] == list(range(500, 500 + len(rows) - 100))


def test_a_board_that_never_streams_is_a_port_lost_after_reconnect_timeout():
    """A board that answers every handshake but never sends a packet after 'b' (a
    firmware stuck after its banner): each stall restarted the session, each restart
    counted as a successful reconnect and began the time-out again, so the reader
    returned empty chunks for ever and never raised PortLost. The outage now lasts from
    the last sample received until samples come again: after ``reconnect_timeout`` of
    restarts that bring no sample, PortLost says so."""
    made = []

    def open_port():
        made.append(FakePort("ok", []))
        return made[-1]

    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=0.05,
                    reconnect_timeout=0.3)
    r._open_port = open_port
    with r:
        end = time.monotonic() + 10
        with pytest.raises(PortLost, match=r"no sample .*within 0.3 s.*restarted \d+ "
                                           r"time"):
            while time.monotonic() < end:
                assert r.read_chunk(0.02).samples.shape[0] == 0
    assert len(made) >= 2  # it did restart the session before giving up


def test_a_board_that_streams_again_after_a_restart_starts_a_new_outage_clock():
    """The outage clock of the test above ends with the first sample: a board that
    resets now and then, streaming in between, is restarted each time and never lost."""
    def stream(first_id, n):
        counts = np.zeros((n, 8), np.int64)
        counts[:, 0] = first_id + np.arange(n)
        return encode_packets(np.arange(n) & 0xFF, counts).tobytes()

    ports = [FakePort("ok", [stream(100 * i, 50), RESET_TEXT]) for i in range(10)]
    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=0.05,
                    reconnect_timeout=0.4)  # each outage ~0.1 s, all of them >= 1 s
    r._open_port = lambda: ports.pop(0)
    rows = 0
    with r:
        while ports:
            c = r.read_chunk(0.02)
            rows += int(np.isfinite(c.samples[:, 0]).sum())
    assert r.counters.reconnects == 9 and rows >= 9 * 50 - 1


def test_close_from_another_thread_waits_for_the_read_in_progress():
    """A client's reader thread inside ``read_chunk`` (a slow read, a reconnect's
    handshake) while the owner closes the reader (nacf demo's stream decided, the
    client's Blocks gave up waiting for its thread): close() closed the port under the
    read, which then went on with a closed file descriptor — whose number the process
    may have reused for something else (a socket, gRPC's epoll: the demo was once killed
    by 'epoll_wait error: Bad file descriptor'). close() now waits for the read in
    progress; the port is used by one thread at a time and closed once, after it."""
    import threading

    events = []

    class SlowPort(FakePort):
        def read(self, size: int = 1) -> bytes:
            if self.streaming:
                events.append("read-start")
                time.sleep(0.3)
                events.append("read-end")
            return super().read(size)

        def close(self) -> None:
            events.append("close")

    port = SlowPort("ok", [b""] * 1000)
    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=60)
    r._open_port = lambda: port
    r.open()
    t = threading.Thread(target=r.read_chunk, args=(0.2,))
    t.start()
    while "read-start" not in events:
        time.sleep(0.005)
    r.close()
    t.join(5)
    assert not t.is_alive()
    assert events.count("close") == 1
    assert events.index("close") > events.index("read-end"), events


def test_timestamps_go_forward_at_a_resync_inside_a_chunk():
    """A new sequence (a resync after a long loss) in the middle of a chunk was anchored
    no earlier than the last stamp of the chunk before, not than the rows of its own
    chunk before it: after samples came faster than the nominal rate (a backlog read at
    once), the rows before the resync ran ahead of the clock, and the stamps went back
    there (by seconds here), inside one chunk."""
    def stream(first_id, counters):
        counts = np.zeros((len(counters), 8), np.int64)
        counts[:, 0] = first_id + np.arange(len(counters))
        return encode_packets(np.asarray(counters) & 0xFF, counts).tobytes()

    # 2500 packets at once, then 1000 more in sequence and, in the same read, a long
    # loss (200 counters: more than max_gap) and a new sequence
    backlog = stream(0, np.arange(2500))
    more = stream(2500, np.arange(2500, 3500)) + stream(5000, np.arange(3700, 3760))
    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=60)
    r._open_port = lambda: FakePort("ok", [backlog, more])
    ts = []
    with r:
        while len(ts) < 3558:
            ts.extend(r.read_chunk(0.05).timestamps)
    assert r.framer.counters.extra["resyncs"] == 1
    assert np.all(np.diff(ts) > 0), np.diff(ts).min()


def test_a_reader_opened_before_an_epoch_stream_enters_it_is_not_opened_twice():
    """Open a reader to set the gains (send_command needs an open port), then hand it to
    an EpochStream, which enters its source: open() ran the whole session again on a
    second port handle while the first stayed open; on a real port the exclusive lock
    then refused the reader its own port ('busy: another program has it open'), as a
    LslSource or FileSource would never do. open() on an open reader now keeps its
    session."""
    from nacf_core.hardware.epoching import Epocher, EpochStream

    counts = np.zeros((600, 8), np.int64)
    counts[:, 0] = np.arange(600)
    data = encode_packets(np.arange(600) & 0xFF, counts).tobytes()
    opened = []

    def open_port():
        if opened and not opened[-1].dead:
            raise PortBusy("serial port '/dev/ttyFAKE0' is busy: another program has it")
        opened.append(FakePort("ok", [data[i:i + 330] for i in range(0, len(data), 330)]))
        return opened[-1]

    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=60)
    r._open_port = open_port
    r.open()
    r.send_command("x1060110X")
    with EpochStream(r, Epocher(250.0, 8, 1.0), poll_s=0.02) as stream:
        assert stream.get(5).data.shape == (8, 250)
    assert len(opened) == 1 and r.counters.reconnects == 0
    assert not r.connected


def test_read_chunk_takes_the_timeouts_every_source_takes():
    """Every source reads ``read_chunk(timeout)``, ``None`` waiting as long as needed (a
    FileSource, an LslSource): a CytonReader failed with a TypeError on None, and took a
    NaN or negative timeout for 0. None now waits for samples; NaN, infinite and
    negative timeouts are refused naming the parameter, as FileSource refuses them."""
    counts = np.zeros((50, 8), np.int64)
    counts[:, 0] = np.arange(50)
    data = encode_packets(np.arange(50), counts).tobytes()
    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=60)
    r._open_port = lambda: FakePort("ok", [b"", b"", data])
    with r:
        c = r.read_chunk(None)
        assert c.n_times > 0 and _serial_number(c.samples[0, 0]) == 0
        for bad in (float("nan"), float("inf"), -1.0):
            with pytest.raises(ValueError, match="'timeout' must be None or a finite"):
                r.read_chunk(bad)


def test_an_outage_shows_in_the_timestamps_when_they_ran_ahead_of_the_clock():
    """Stamps count on at the nominal rate; a board whose clock runs fast (the ADS1299's
    oscillator is good to about 0.5 %: 18 s an hour) puts them ahead of the local clock,
    and the next sequence was anchored just after the last stamp: the reconnect's
    outage (or the 128+ packets a resync lost) left no step in the timestamps, so no
    consumer (Epocher, a recording's timestamp column) could see the gap. A new sequence
    now starts at least the outage after the last stamp: the time since the last
    samples for a restart, (max_gap + 1) packets for a resync."""
    from nacf_core.hardware.epoching import Epocher

    def stream(first_id, counters):
        counts = np.zeros((len(counters), 8), np.int64)
        counts[:, 0] = first_id + np.arange(len(counters))
        return encode_packets(np.asarray(counters) & 0xFF, counts).tobytes()

    # 10 s of samples at once (ahead of the clock), a resync after 200 lost counters,
    # then the port fails and comes back 0.4 s later with a new sequence, 5 packets a read
    # (its first samples may have been taken up to 5 / 250 s before they were read)
    ports = [FakePort("ok", [stream(0, np.arange(2500)),
                             stream(5000, np.arange(2700, 2800)), "serial"]),
             FakePort("ok", [stream(9000 + k, np.arange(k, k + 5)) for k in range(0, 100, 5)])]

    def open_port():
        if len(ports) == 1:
            time.sleep(0.4)
        return ports.pop(0)

    r = CytonReader("/dev/ttyFAKE0", handshake_timeout=0.02, stall_timeout=60)
    r._open_port = open_port
    ts, ids = [], []
    with r:
        while len(ts) < 2500 + 100 + 98:
            c = r.read_chunk(0.05)
            ts.extend(c.timestamps)
            ids.extend(_serial_number(v) for v in c.samples[:, 0])
    ts, ids = np.array(ts), np.array(ids)
    assert r.counters.reconnects == 1 and r.framer.counters.extra["resyncs"] == 1
    step = np.diff(ts)
    resync, restart = np.flatnonzero(ids == 5000)[0], np.flatnonzero(ids == 9000)[0]
    assert step[resync - 1] >= 128 / 250 and step[restart - 1] >= 0.4 - 5 / 250
    others = np.delete(step, [resync - 1, restart - 1])
    np.testing.assert_allclose(others, 1 / 250, atol=1e-6)
    ep = Epocher(250.0, 8, 1.0)  # the gaps are seen downstream
    ep.push_epochs(Chunk(np.zeros((len(ts), 8), np.float32), ts, [], 250.0))
    assert ep.n_gaps == 2
