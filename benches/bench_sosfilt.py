"""sosfilt: Cython and Numba against scipy.signal.sosfilt (the baseline, same run).

A 4th-order Butterworth band-pass 1-40 Hz at 250 Hz (4 sections).  Groups follow the
table convention of ``benches/conftest.py``; ``nacf kernels bench`` prints them.

Run: ``python -m pytest benches/bench_sosfilt.py --benchmark-only``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from conftest import tag
from nacf_core import kernels

SFREQ = 250.0
SOS = signal.butter(4, [1.0, 40.0], btype="band", fs=SFREQ, output="sos")
IMPLS = ["scipy", "cython", "numba"]

# (shape, dtype, axis, target for the compiled backends)
CASES = [
    ((8, 500), np.float32, -1, None),
    ((8, 500), np.float64, -1, None),
    ((16, 500), np.float32, -1, None),
    ((16, 500), np.float64, -1, "≥3× scipy"),
    ((16, 15_000), np.float32, -1, None),
    ((16, 15_000), np.float64, -1, None),
    ((64, 15_000), np.float32, -1, "≥3× scipy"),
    ((64, 15_000), np.float64, -1, None),
    ((15_000, 64), np.float32, 0, "≥8× scipy"),
    ((15_000, 64), np.float64, 0, None),
]


def _impl(name):
    if name == "scipy":
        return lambda sos, x, axis, zi=None: signal.sosfilt(sos, x, axis=axis, zi=zi)
    mod = kernels.backend(name)
    return mod.sosfilt


def _case_id(case):
    shape, dtype, axis, _ = case
    return f"{shape[0]}x{shape[1]}-{np.dtype(dtype).name}-axis{axis}"


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def case(request):
    shape, dtype, axis, target = request.param
    rng = np.random.default_rng(0)
    x = np.ascontiguousarray(rng.normal(scale=30.0, size=shape) + 20_000.0, dtype=dtype)
    sos = SOS.astype(dtype)
    expected = signal.sosfilt(sos, x, axis=axis)
    group = f"sosfilt {shape} {np.dtype(dtype).name} axis={axis}"
    return dict(x=x, sos=sos, axis=axis, expected=expected, group=group, target=target)


@pytest.mark.parametrize("impl", IMPLS)
def test_sosfilt(benchmark, case, impl):
    fn = _impl(impl)
    sos, x, axis = case["sos"], case["x"], case["axis"]
    y = fn(sos, x, axis)  # warm-up (Numba compiles or loads its cache) and check
    np.testing.assert_allclose(y, case["expected"], rtol=0,
                               atol=1e-6 * 20_000 if x.dtype == np.float64 else 0.5)
    tag(benchmark, case["group"], impl, baseline=impl == "scipy",
        target=None if impl == "scipy" else case["target"])
    benchmark(fn, sos, x, axis)


# ----------------------------------------------------------------------------- server case
N_STREAMS, N_CH, N_T = 1_000, 8, 250
SERVER_GROUP = "server: 1000 streams × 8 ch × 250 samples float32 (time-major, state per stream)"


@pytest.fixture(scope="module")
def server():
    """1 000 streams, each a (250, 8) float32 chunk with its own carried state.

    The batch is one time-major (250, 8000) array: stream ``i`` is columns
    ``8 i : 8 i + 8`` and its state ``zi[:, :, 8 i : 8 i + 8]``; one call filters all.
    """
    rng = np.random.default_rng(1)
    sos = SOS.astype(np.float32)
    chunks = [np.ascontiguousarray(rng.normal(scale=30.0, size=(N_T, N_CH))
                                   + rng.uniform(-60_000, 60_000, N_CH), dtype=np.float32)
              for _ in range(N_STREAMS)]
    zis = [np.ascontiguousarray(signal.sosfilt_zi(SOS)[:, :, None] * c[:1], dtype=np.float32)
           for c in chunks]
    batch = np.ascontiguousarray(np.concatenate(chunks, axis=1))
    zi = np.ascontiguousarray(np.concatenate(zis, axis=2))
    expected = np.concatenate([signal.sosfilt(sos, c, axis=0, zi=z)[0]
                               for c, z in zip(chunks, zis)], axis=1)
    return dict(sos=sos, chunks=chunks, zis=zis, batch=batch, zi=zi, expected=expected)


def _check_server(y, server):
    scale = np.abs(server["batch"]).max()
    np.testing.assert_allclose(y, server["expected"], rtol=0, atol=2e-5 * scale)


def _server_tag(benchmark, impl, baseline=False):
    tag(benchmark, SERVER_GROUP, impl, baseline=baseline, n_items=N_STREAMS, item="chunk",
        target=None if baseline or impl.startswith("scipy") else "≤4 µs/chunk")
    if not (baseline or impl.startswith("scipy")):
        benchmark.extra_info["target_per_item_s"] = 4e-6


def test_server_scipy_per_stream(benchmark, server):
    sos, chunks, zis = server["sos"], server["chunks"], server["zis"]

    def run():
        return [signal.sosfilt(sos, c, axis=0, zi=z) for c, z in zip(chunks, zis)]

    _check_server(np.concatenate([y for y, _ in run()], axis=1), server)
    _server_tag(benchmark, "scipy per stream", baseline=True)
    benchmark(run)


def test_server_scipy_stacked(benchmark, server):
    sos, batch, zi = server["sos"], server["batch"], server["zi"]
    _check_server(signal.sosfilt(sos, batch, axis=0, zi=zi)[0], server)
    _server_tag(benchmark, "scipy stacked")
    benchmark(signal.sosfilt, sos, batch, 0, zi)


@pytest.mark.parametrize("impl", ["cython", "numba"])
def test_server_batch(benchmark, server, impl):
    fn = kernels.backend(impl).sosfilt
    sos, batch, zi = server["sos"], server["batch"], server["zi"]
    y, zf = fn(sos, batch, 0, zi)
    _check_server(y, server)
    np.testing.assert_allclose(zf, signal.sosfilt(sos, batch, axis=0, zi=zi)[1], rtol=0,
                               atol=2e-5 * np.abs(batch).max())
    _server_tag(benchmark, impl)
    benchmark(fn, sos, batch, 0, zi)
