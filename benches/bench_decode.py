"""Batch decoding of Cyton packets: the compiled (Numba) decoder against pure NumPy.

Run: ``python -m pytest benches/bench_decode.py --benchmark-only``.

One group: 1 000 000 packets (33 MB, about 67 minutes of a Cyton at 250 Hz) as an
``(n_packets, 33)`` uint8 array, decoded to sample counters, microvolts (float32) and
accelerometer g. ``numba`` is :func:`nacf_core.hardware.cyton.decode_packets` (one
thread), ``numpy`` :func:`~nacf_core.hardware.cyton.decode_packets_numpy` (baseline).
Both results are checked equal outside the timed call. Target: ≥ 5 million packets/s on
one core for the compiled decoder (asserted on the median; ``packets_per_s`` is in
``extra_info``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tag
from nacf_core.hardware.cyton import decode_packets, decode_packets_numpy, encode_packets

N_PACKETS = 1_000_000
TARGET_PPS = 5_000_000
IMPLS = {"numba": decode_packets, "numpy": decode_packets_numpy}


@pytest.fixture(scope="module")
def packets() -> np.ndarray:
    """Realistic packets: EEG-sized counts, accelerometer every 10th packet, all end bytes."""
    rng = np.random.default_rng(0)
    counts = rng.normal(0, 2000, (N_PACKETS, 8)).astype(np.int64)  # ~±45 µV
    counts[:, 3] += 1_500_000  # a DC offset as a Cyton shows
    accel = np.zeros((N_PACKETS, 3), np.int64)
    accel[::10] = rng.integers(-8000, 8000, (len(accel[::10]), 3))
    ends = np.where(np.arange(N_PACKETS) % 10 == 0, 0xC0, 0xC0 + np.arange(N_PACKETS) % 7)
    return encode_packets(np.arange(N_PACKETS), counts, accel=accel, end_byte=ends)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_decode(benchmark, packets, impl):
    fn = IMPLS[impl]
    fn(packets[:10])  # warm-up (Numba compiles on first call, then loads from cache)
    tag(benchmark, f"cyton decode {N_PACKETS} packets", impl, baseline=(impl == "numpy"),
        target=None if impl == "numpy" else "≥5M packets/s", n_items=N_PACKETS,
        item="packet")
    counters, uv, accel = benchmark(fn, packets)
    ref = decode_packets_numpy(packets)
    np.testing.assert_array_equal(counters, ref[0])
    np.testing.assert_array_equal(uv, ref[1])
    np.testing.assert_array_equal(accel, ref[2])
    if benchmark.stats is not None:  # None with --benchmark-disable
        pps = N_PACKETS / benchmark.stats.stats.median
        benchmark.extra_info["packets_per_s"] = round(pps)
        if impl == "numba":
            assert pps >= TARGET_PPS, f"{pps / 1e6:.1f} M packets/s < 5 M packets/s"
