"""The Cyton codec against hand-built packets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacf_core.hardware.cyton import (
    ACCEL_G_PER_COUNT,
    GainTracker,
    decode_packet,
    decode_packets,
    decode_packets_numpy,
    encode_packet,
    encode_packets,
    uv_per_count,
)
from nacf_core.hardware.framing import Framer

UV = 0.022351744455  # µV per count at gain 24, as OpenBCI documents it


def hand_packet(counter: int, ch_bytes: list[bytes], aux: bytes = bytes(6), end: int = 0xC0):
    assert len(ch_bytes) == 8 and all(len(b) == 3 for b in ch_bytes)
    return bytes([0xA0, counter]) + b"".join(ch_bytes) + aux + bytes([end])


def test_scale_constant():
    assert uv_per_count() == pytest.approx(UV, rel=1e-10)
    assert uv_per_count(1) == pytest.approx(4.5 / (2**23 - 1) * 1e6, rel=1e-12)
    assert ACCEL_G_PER_COUNT == 0.002 / 16


@pytest.mark.parametrize(
    "raw, count",
    [(b"\x7f\xff\xff", 2**23 - 1), (b"\x80\x00\x00", -(2**23)), (b"\x00\x00\x01", 1),
     (b"\xff\xff\xff", -1)],
)
def test_every_channel_at_extremes(raw, count):
    pkt = hand_packet(7, [raw] * 8)
    p = decode_packet(pkt)
    assert p.counter == 7
    assert p.counts.tolist() == [count] * 8
    np.testing.assert_allclose(p.uv, count * UV, rtol=1e-9)
    # one channel at a time, the others at zero: no channel leaks into another
    for ch in range(8):
        chans = [b"\x00\x00\x00"] * 8
        chans[ch] = raw
        q = decode_packet(hand_packet(200, chans))
        expect = [0] * 8
        expect[ch] = count
        assert q.counts.tolist() == expect
    arr = np.frombuffer(pkt, np.uint8).reshape(1, 33).copy()
    _, uv, _ = decode_packets(arr)
    np.testing.assert_allclose(uv[0], np.float32(count * UV), rtol=1e-6)


@pytest.mark.parametrize("end", range(0xC0, 0xC7))
def test_every_end_byte(end):
    aux = bytes([0x00, 0x10, 0xFF, 0xF0, 0x7F, 0xFF])  # 16, -16, 32767
    pkt = hand_packet(1, [b"\x00\x00\x02"] * 8, aux, end)
    p = decode_packet(pkt)
    assert p.end_byte == end and p.aux == aux
    assert p.counts.tolist() == [2] * 8
    if end == 0xC0:
        np.testing.assert_allclose(p.accel, np.array([16, -16, 32767]) * 0.002 / 16)
    else:
        assert np.isnan(p.accel).all()
    c, uv, acc = decode_packets(np.frombuffer(pkt, np.uint8).reshape(1, 33).copy())
    assert np.isnan(acc).all() == (end != 0xC0)


@pytest.mark.parametrize(
    "bad", [bytes(32), b"\xa1" + bytes(31) + b"\xc0", b"\xa0" + bytes(31) + b"\xc7"]
)
def test_decode_packet_rejects_malformed(bad):
    with pytest.raises(ValueError, match="packet"):
        decode_packet(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255),
                          st.lists(st.integers(-(2**23), 2**23 - 1), min_size=8, max_size=8),
                          st.lists(st.integers(-(2**15), 2**15 - 1), min_size=3, max_size=3),
                          st.integers(0xC0, 0xC6)), max_size=40))
def test_encode_decode_roundtrip_and_backends_agree(rows):
    n = len(rows)
    counters = np.array([r[0] for r in rows], dtype=np.int64)
    counts = np.array([r[1] for r in rows], dtype=np.int64).reshape(n, 8)
    accel = np.array([r[2] for r in rows], dtype=np.int64).reshape(n, 3)
    ends = np.array([r[3] for r in rows], dtype=np.int64)
    pk = encode_packets(counters, counts, accel=accel, end_byte=ends)
    c1, uv1, a1 = decode_packets(pk)
    c2, k2, uv2, a2 = decode_packets_numpy(pk, return_counts=True)
    assert np.array_equal(c1, counters.astype(np.uint8))
    assert np.array_equal(k2, counts)
    assert np.array_equal(uv1, uv2)
    assert np.array_equal(a1, a2, equal_nan=True)
    np.testing.assert_allclose(uv1, counts * UV, rtol=1e-6, atol=1e-6)
    std = ends == 0xC0
    np.testing.assert_allclose(a1[std], accel[std] * 0.002 / 16, rtol=1e-6)
    assert np.isnan(a1[~std]).all()
    for i in range(n):
        assert encode_packet(int(counters[i]), counts[i], accel=accel[i], end_byte=int(ends[i])) \
            == pk[i].tobytes()


def test_encoder_rejects_out_of_range():
    with pytest.raises(ValueError, match="24-bit"):
        encode_packets(np.array([0]), np.full((1, 8), 2**23))
    with pytest.raises(ValueError, match="end_byte"):
        encode_packets(np.array([0]), np.zeros((1, 8)), end_byte=0xC7)
    with pytest.raises(ValueError, match="shape"):
        encode_packets(np.array([0, 1]), np.zeros((1, 8)))


def test_gain_tracking():
    g = GainTracker(8)
    assert g.gains.tolist() == [24] * 8
    g.apply("x1030110X")            # channel 1 -> gain code 3 = 6
    g.apply(b"x8000000X")           # channel 8 -> gain 1
    assert g.gains.tolist() == [6, 24, 24, 24, 24, 24, 24, 1]
    assert g.scales()[0] == pytest.approx(4.5 / 6 / (2**23 - 1) * 1e6)
    g.apply("d")
    assert g.gains.tolist() == [24] * 8
    g.apply("x2050110Xx3010110X")   # two commands in one write
    assert g.gains[1:3].tolist() == [12, 2]
    g.apply("v")
    assert g.gains.tolist() == [24] * 8
    d = GainTracker(16)
    d.apply("xQ020110X")            # Daisy channel 9 -> gain 4
    assert d.gains[8] == 4
    with pytest.raises(ValueError, match="channel"):
        g.apply("xQ020110X")        # no Daisy channels on an 8-channel board
    with pytest.raises(ValueError, match="gain code"):
        g.apply("x1090110X")
    with pytest.raises(ValueError, match="9 characters"):
        g.apply("x10X")
    with pytest.raises(ValueError, match="n_channels"):
        GainTracker(4)


def test_gains_change_decoding():
    counts = np.full((1, 8), 1000)
    pk = encode_packets(np.array([0]), counts)
    gains = [1, 2, 4, 6, 8, 12, 24, 24]
    _, uv, _ = decode_packets(pk, gains)
    np.testing.assert_allclose(uv[0], 1000 * 4.5 / np.array(gains) / (2**23 - 1) * 1e6, rtol=1e-6)
    with pytest.raises(ValueError, match="gains"):
        decode_packets(pk, [3] * 8)


def _daisy_stream(first_counter: int, n_pairs: int, rng):
    counters = (first_counter + np.arange(2 * n_pairs)) & 0xFF
    counts = rng.integers(-(2**20), 2**20, (2 * n_pairs, 8))
    return counters, counts, encode_packets(counters, counts)


def test_daisy_pairing():
    rng = np.random.default_rng(1)
    counters, counts, pk = _daisy_stream(250, 6, rng)  # 250/251 252/253 254/255 0/1 2/3 4/5
    f = Framer(daisy=True)
    out = f.feed(pk.tobytes())
    # even counter n (Daisy channels 9-16) + odd counter n+1 (Cyton channels 1-8)
    assert out.counters.tolist() == [250, 252, 254, 0, 2, 4]
    expect = np.hstack([counts[1::2], counts[0::2]]) * UV
    np.testing.assert_allclose(out.samples, expect, rtol=1e-6)
    assert f.counters.ok == 6 and f.counters.dropped == 0


def test_daisy_pairing_starts_on_even_and_drops_half_pairs():
    rng = np.random.default_rng(2)
    counters, counts, pk = _daisy_stream(9, 5, rng)  # 9 | 10 11 | 12 13 ...: starts on odd
    keep = np.ones(10, bool)
    keep[5] = False  # drop counter 14 (the Daisy half of the pair 14/15)
    f = Framer(daisy=True)
    out = f.feed(pk[keep].tobytes())
    # 9 has no even partner; pairs 10/11, 12/13, (14 missing)/15 -> NaN row, 16/17
    assert out.counters.tolist() == [10, 12, 14, 16]
    assert np.isnan(out.samples[2]).all()
    assert np.isfinite(out.samples[[0, 1, 3]]).all()
    np.testing.assert_allclose(out.samples[3], np.r_[counts[8], counts[7]] * UV, rtol=1e-6)
    assert f.counters.dropped == 1 and f.counters.ok == 3


def test_daisy_new_sequence_on_an_odd_packet_marks_the_first_pair():
    """A sequence that locks (or relocks) on an odd packet (its even partner lost) must
    still mark its first 16-channel row as a new sequence: the serial reader anchors the
    timestamps there (before, the flag was lost with the unpaired packet, and a reader
    whose first lock fell on an odd packet stamped its samples from 0.0, in 1970)."""
    rng = np.random.default_rng(3)
    _, _, pk = _daisy_stream(1, 10, rng)  # 1 | 2 3 | 4 5 ...: locks on odd counter 1
    for pieces in ([pk.tobytes()], [pk[:1].tobytes(), pk[1:].tobytes()]):
        f = Framer(daisy=True)
        outs = [f.feed(p) for p in pieces]
        new = np.concatenate([o.new_sequence for o in outs])
        counters = np.concatenate([o.counters for o in outs])
        assert counters.tolist()[:2] == [2, 4]
        assert new.tolist() == [True] + [False] * (len(new) - 1)
    # a resync (gap beyond max_gap) onto an odd packet, mid-stream
    counters = np.r_[np.arange(0, 20), np.arange(201, 231)] & 0xFF
    pk = encode_packets(counters, rng.integers(-(2**20), 2**20, (len(counters), 8)))
    f = Framer(daisy=True)
    out = f.feed(pk.tobytes())
    assert f.counters.extra["resyncs"] == 1
    k = out.counters.tolist().index(202)
    assert out.new_sequence.tolist() == [i in (0, k) for i in range(out.n_times)]
