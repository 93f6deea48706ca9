"""Guards of the kernels: shapes that do not fit, and the instruction-set dispatch.

First part: the compiled kernels' entry points refuse arguments whose shapes do not fit
together.

The Cython loops run with bounds checking off, and ``nacf_core.pad`` (and anything
holding ``kernel_module()``) calls them directly, past the public layer's validation:
a state, an output or a scratch buffer of the wrong shape made them read or write past
the end of an array (a segfault, or garbage returned as a result).  Each entry point
now checks its arguments' shapes once per call and raises ``ValueError`` naming what
does not fit.  Each case runs in a child process, so a crash fails the case instead of
ending the test run.  Then the backends' functions (Cython and Numba) do the same,
and last the dispatch: a variant forced by NACF_KERNEL_ISA that this CPU cannot run,
or no variant built, is a clear refusal (never a SIGILL or a traceback), and every
variant this CPU runs gives the same results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_PRELUDE = """
import numpy as np
from nacf_core.kernels import _cy_filter, _cy_match, _cy_quality
F = _cy_filter.kernel_module()
Q = _cy_quality.kernel_module()
M = _cy_match.kernel_module()
sos = np.array([[0.2, 0.4, 0.2, 1.0, -0.3, 0.1]] * 4)
def f64(*shape):
    return np.zeros(shape)
def f32(*shape):
    return np.zeros(shape, np.float32)
def call(fn, *args):
    try:
        fn(*args)
    except ValueError as exc:
        print("REFUSED:", exc)
    else:
        print("ACCEPTED")
"""

# (id, the call): every one of them has arguments that do not fit together.
CASES = [
    # sosfilt: x (channels, times) channel-major, z (sections, 2, channels)
    ("sosfilt state of more channels than x",
     "call(F.sosfilt_f64, sos, f64(8, 1000), f64(8, 1000), f64(4, 2, 4000), f64(4, 2, 16),"
     " f64(16, 16), False)"),
    ("sosfilt time-major state of more channels than x",
     "call(F.sosfilt_f64, sos, f64(1000, 8), f64(1000, 8), f64(4, 2, 100000), f64(4, 2, 16),"
     " f64(1, 16), True)"),
    ("sosfilt state of fewer sections than sos",
     "call(F.sosfilt_f64, sos, f64(8, 100), f64(8, 100), f64(1, 2, 8), f64(4, 2, 16),"
     " f64(16, 16), False)"),
    ("sosfilt sos of 3 columns",
     "call(F.sosfilt_f64, f64(4, 3), f64(8, 100), f64(8, 100), f64(4, 2, 8), f64(4, 2, 16),"
     " f64(16, 16), False)"),
    ("sosfilt output shorter than x",
     "call(F.sosfilt_f32, sos.astype(np.float32), f32(8, 100000), f32(8, 10), f32(4, 2, 8),"
     " f32(4, 2, 16), f32(16, 16), False)"),
    ("sosfilt channel block scratch too small",
     "call(F.sosfilt_f64, sos, f64(8, 100), f64(8, 100), f64(4, 2, 8), f64(1, 2, 16),"
     " f64(16, 16), False)"),
    ("sosfilt tile of fewer rows than a time tile",
     "call(F.sosfilt_f64, sos, f64(8, 100), f64(8, 100), f64(4, 2, 8), f64(4, 2, 16),"
     " f64(1, 16), False)"),
    ("sosfilt block not a multiple of 16 lanes",
     "call(F.sosfilt_f64, sos, f64(8, 100), f64(8, 100), f64(4, 2, 8), f64(4, 2, 8),"
     " f64(16, 8), False)"),
    # sosfiltfilt_f64 (pad.py's zero-phase band-pass)
    ("sosfiltfilt padlen longer than the signal",
     "call(F.sosfiltfilt_f64, sos, f64(4, 2), f64(8, 10), 100000, f64(8, 10))"),
    ("sosfiltfilt negative padlen",
     "call(F.sosfiltfilt_f64, sos, f64(4, 2), f64(8, 10), -100000, f64(8, 10))"),
    ("sosfiltfilt output smaller than x",
     "call(F.sosfiltfilt_f64, sos, f64(4, 2), f64(64, 1000), 30, f64(1, 10))"),
    ("sosfiltfilt zi of fewer sections than sos",
     "call(F.sosfiltfilt_f64, sos, f64(1, 2), f64(8, 100), 30, f64(8, 100))"),
    # artifacts / quality
    ("detect output smaller than the epochs",
     "call(Q.detect_into, f64(100, 64, 50), np.zeros((1, 1), np.int8), 1e5, 0.0, 0.5,"
     " 500.0, 200.0)"),
    ("quality reason smaller than the epochs",
     "call(Q.quality_into, f64(100, 64, 50), np.zeros((1, 1), np.int8), f64(4, 50), 1.0,"
     " 0.5, 2.0, 200.0, 500.0, f64(100, 64), f64(100))"),
    ("quality tables shorter than an epoch",
     "call(Q.quality_into, f64(10, 8, 5000), np.zeros((10, 8), np.int8), f64(4, 5), 1.0,"
     " 0.5, 2.0, 200.0, 500.0, f64(10, 8), f64(10))"),
    ("quality per-channel output too small",
     "call(Q.quality_into, f64(100, 64, 50), np.zeros((100, 64), np.int8), f64(4, 50), 1.0,"
     " 0.5, 2.0, 200.0, 500.0, f64(1, 1), f64(100))"),
    ("quality per-epoch output too small",
     "call(Q.quality_into, f64(100, 64, 50), np.zeros((100, 64), np.int8), f64(4, 50), 1.0,"
     " 0.5, 2.0, 200.0, 500.0, f64(100, 64), f64(1))"),
    # matching
    ("cosine templates of another dimension",
     "call(M.cosine_scores_into, f32(1, 100000), f32(10, 2), f32(1, 10), 4)"),
    ("cosine batch templates of another dimension",
     "call(M.cosine_scores_into, f32(5, 100000), f32(10, 2), f32(5, 10), 4)"),
    ("cosine output of the wrong shape",
     "call(M.cosine_scores_into, f32(1, 8), f32(100000, 8), f32(1, 1), 4)"),
    ("top_k templates of another dimension",
     "call(M.top_k_into, f32(1, 4), f32(10000, 2000), f32(1, 3), np.zeros((1, 3), np.int64),"
     " f32(2048), 2048, 4)"),
    ("top_k k larger than the templates",
     "call(M.top_k_into, f32(1, 4), f32(10, 4), f32(1, 50), np.zeros((1, 50), np.int64),"
     " f32(2048), 2048, 4)"),
    ("top_k heaps of another shape",
     "call(M.top_k_into, f32(5, 4), f32(10, 4), f32(5, 3), np.zeros((1, 3), np.int64),"
     " f32(2048 * 5), 2048, 4)"),
    ("top_k scratch smaller than a block",
     "call(M.top_k_into, f32(5, 4), f32(100000, 4), f32(5, 3), np.zeros((5, 3), np.int64),"
     " f32(1), 2048, 4)"),
    ("top_k block of no rows",
     "call(M.top_k_into, f32(1, 4), f32(10, 4), f32(1, 3), np.zeros((1, 3), np.int64),"
     " f32(16), 0, 4)"),
]


@pytest.mark.parametrize("call", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_compiled_kernels_refuse_arguments_that_do_not_fit(call):
    code = _PRELUDE + textwrap.dedent(call) + "\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=os.environ.copy())
    assert out.returncode == 0, f"the kernel crashed (exit {out.returncode}): {out.stderr[-800:]}"
    assert out.stdout.startswith("REFUSED:"), out.stdout + out.stderr[-800:]


def test_compiled_kernels_still_accept_arguments_that_fit():
    """The checks refuse nothing the backends pass: one valid call of each entry point."""
    code = _PRELUDE + textwrap.dedent("""
        call(F.sosfilt_f64, sos, f64(8, 100), f64(8, 100), f64(4, 2, 8), f64(4, 2, 16),
             f64(16, 16), False)
        call(F.sosfilt_f32, sos.astype(np.float32), f32(100, 8), f32(100, 8), f32(4, 2, 8),
             f32(4, 2, 16), f32(1, 16), True)
        call(F.sosfiltfilt_f64, sos, f64(4, 2), f64(8, 100), 30, f64(8, 100))
        call(Q.detect_into, f64(3, 4, 50), np.zeros((3, 4), np.int8), 1e5, 0.0, 0.5, 500.0,
             200.0)
        call(Q.quality_into, f64(3, 4, 50), np.zeros((3, 4), np.int8), f64(4, 50), 1.0, 0.5,
             2.0, 200.0, 500.0, f64(3, 4), f64(3))
        call(M.cosine_scores_into, f32(5, 8), f32(10, 8), f32(5, 10), 4)
        call(M.top_k_into, f32(5, 4), f32(10, 4), f32(5, 3), np.zeros((5, 3), np.int64),
             f32(2048 * 5), 2048, 4)
        call(M.top_k_into, f32(1, 4), f32(10, 4), f32(1, 10), np.zeros((1, 10), np.int64),
             f32(2048), 2048, 4)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.split() == ["ACCEPTED"] * 8, out.stdout


# ------------------------------------------------------------------ the backends' functions
BACKENDS = [pytest.param("numba", marks=pytest.mark.numba_kernels), "cython"]


def _sos():
    return np.array([[0.2, 0.4, 0.2, 1.0, -0.3, 0.1]] * 4)


def _bad_backend_calls():
    from nacf_core.kernels import ArtifactLimits

    x = np.ones((8, 100))
    epochs = np.ones((3, 4, 50))
    unit = np.eye(10, 4, dtype=np.float32)
    return {
        "sosfilt zi of fewer sections than sos":
            lambda k: k.sosfilt(_sos(), x, -1, np.zeros((1, 8, 2))),
        "sosfilt zi of more channels than x":
            lambda k: k.sosfilt(_sos(), x, -1, np.zeros((4, 4000, 2))),
        "sosfilt time-major zi of another layout":
            lambda k: k.sosfilt(_sos(), x.T.copy(), 0, np.zeros((4, 8, 2))),
        "sosfilt sos of 3 columns": lambda k: k.sosfilt(np.ones((4, 3)), x),
        "sosfilt sos of no section": lambda k: k.sosfilt(np.ones((0, 6)), x),
        "sosfilt 1-D x": lambda k: k.sosfilt(_sos(), np.ones(100)),
        "detect 2-D epochs": lambda k: k.detect_artifacts(x, 250.0, ArtifactLimits()),
        "quality reason of another shape":
            lambda k: k.quality(epochs, 250.0, np.zeros((1, 1), np.int8)),
        "top_k k larger than the templates": lambda k: k.top_k(unit[:2], unit, 11),
        "top_k negative k": lambda k: k.top_k(unit[:2], unit, -1),
        "top_k templates of another dimension":
            lambda k: k.top_k(unit[:2], np.ones((10, 3), np.float32), 2),
        "cosine templates of another dimension":
            lambda k: k.cosine_scores(unit[:2], np.ones((10, 3), np.float32)),
    }


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", list(_bad_backend_calls()))
def test_backend_kernels_refuse_arguments_that_do_not_fit(name, case):
    """``nacf_core.kernels.backend(name)`` functions (which do not validate values) still
    refuse shapes that do not fit together, in both compiled backends alike: the Numba
    kernels read past the arrays as well (NaN filter output, garbage quality scores,
    uninitialised top-k entries)."""
    from nacf_core.kernels import backend

    with pytest.raises(ValueError):
        _bad_backend_calls()[case](backend(name))


# ------------------------------------------------------------------ ISA dispatch
def test_forcing_a_variant_this_cpu_cannot_run_is_a_value_error_naming_what_it_lacks(
        monkeypatch):
    """NACF_KERNEL_ISA=avx512 on a CPU with AVX2 and FMA but no AVX-512 raised a
    RuntimeError, which ``nacf serve`` did not report (a traceback instead of 'cannot
    start'), and said the CPU lacked AVX2 and FMA3 too; it is a ValueError naming only
    the missing features and the variants the CPU runs."""
    from nacf_core.kernels import _cpu

    monkeypatch.setattr(_cpu, "cpu_features", lambda: {"AVX2": True, "FMA3": True})
    monkeypatch.setenv("NACF_KERNEL_ISA", "avx512")
    with pytest.raises(ValueError) as exc:
        _cpu.load_variant("_cy_sosfilt")
    msg = str(exc.value)
    assert "NACF_KERNEL_ISA=avx512" in msg and "AVX512F" in msg and "AVX512DQ" in msg, msg
    assert "AVX2" not in msg.replace("avx2", "") and "FMA3" not in msg, msg
    assert "baseline, avx2" in msg, msg


def test_serve_refuses_a_forced_variant_this_cpu_cannot_run_without_a_traceback(tmp_path):
    """``nacf serve`` with NACF_KERNEL_ISA naming a variant this CPU cannot run says it
    cannot start, in one line, and exits 2 (no SIGILL, no traceback).  On a CPU that runs
    every variant, the child process is told its CPU has only SSE4.2 (``cpu_features``
    replaced before ``nacf serve`` starts), so the test runs on every machine."""
    from nacf_core.kernels import _cpu

    missing = [v for v in _cpu.VARIANTS if v not in _cpu.supported_variants()]
    prelude = ""
    if not missing:
        missing = [v for v in _cpu.VARIANTS if v != "baseline"]
        prelude = ("from nacf_core.kernels import _cpu; "
                   "_cpu.cpu_features = lambda: {'SSE42': True}; ")
    assert missing, _cpu.VARIANTS
    env = {**os.environ, "NACF_KERNEL_ISA": missing[-1],
           "NACF_API_KEYS": "test-key-0123456789"}
    code = prelude + "import sys; from nacf_core.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "serve", "--data-dir",
                          str(tmp_path), "--grpc-address", "127.0.0.1:0",
                          "--metrics-address", ""],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-1500:]
    assert "Traceback" not in out.stderr, out.stderr[-1500:]
    assert f"nacf serve: NACF_KERNEL_ISA={missing[-1]}" in out.stderr, out.stderr[-1500:]


_EVERY_FAMILY = """
import sys
import numpy as np
from nacf_core import artifacts, dsp, matching
from nacf_core.kernels import _cy_filter, _cy_match, _cy_quality
rng = np.random.default_rng(3)
out = {"isa": np.array([_cy_filter.ISA, _cy_quality.ISA, _cy_match.ISA])}
sos = dsp.bandpass_sos(1.0, 40.0, 250.0, 4)
for dt in (np.float32, np.float64):
    x = (rng.normal(scale=50.0, size=(37, 700)) + 3e4).astype(dt)
    zi = dsp.steady_state_zi(sos.astype(dt), x)
    out[f"y_cm_{dt.__name__}"], out[f"zf_cm_{dt.__name__}"] = dsp.sosfilt(
        sos.astype(dt), x, zi=zi, backend="cython")
    xt = np.ascontiguousarray(x.T)
    out[f"y_tm_{dt.__name__}"] = dsp.sosfilt(sos.astype(dt), xt, axis=0, backend="cython")
    ep = (rng.normal(scale=40.0, size=(5, 19, 500))).astype(dt)
    ep[0, 3] = 0.0
    ep[1, 4, 100] = np.nan
    ep[2, 5, 200:] += 900.0
    out[f"reason_{dt.__name__}"] = artifacts.detect_artifacts(ep, 250.0, backend="cython")
    out[f"quality_{dt.__name__}"] = artifacts.quality(ep, 250.0, backend="cython")[0]
p = matching.normalize_rows(rng.normal(size=(6, 40)))
t = matching.normalize_rows(rng.normal(size=(3000, 40)))
out["scores"] = matching.cosine_scores(p, t, backend="cython")
out["top_i"], out["top_s"] = matching.top_k(p, t, 7, backend="cython")
out["top1_i"], out["top1_s"] = matching.top_k(p[:1], t, 7, backend="cython")
np.savez(sys.argv[1], **out)
"""


def test_every_variant_forced_by_the_environment_gives_the_same_results(tmp_path):
    """NACF_KERNEL_ISA set to each variant this CPU runs: the public layer (dsp,
    artifacts, matching on the Cython backend) uses that variant and gives what the
    others give: filters and artifact codes identical, quality and scores within
    float32 / FMA rounding."""
    from nacf_core.kernels import _cpu

    runs = {}
    for isa in _cpu.supported_variants():
        path = tmp_path / f"{isa}.npz"
        env = {**os.environ, "NACF_KERNEL_ISA": isa}
        out = subprocess.run([sys.executable, "-c", _EVERY_FAMILY, str(path)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-1500:]
        runs[isa] = dict(np.load(path))
        assert runs[isa].pop("isa").tolist() == [isa] * 3
    base = runs.pop("baseline")
    for isa, got in runs.items():
        for key, want in base.items():
            if key.startswith(("y_", "zf_", "reason_", "top_i", "top1_i")):
                np.testing.assert_array_equal(got[key], want, err_msg=f"{isa} {key}")
            else:
                np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{isa} {key}")


_UNBUILT = """
import sys
from importlib.abc import MetaPathFinder

class Unbuilt(MetaPathFinder):  # the compiled variants are missing (not built)
    def find_spec(self, name, path, target=None):
        if name.startswith("nacf_core.kernels._cy_") and name.rsplit("_", 1)[1] in (
                "baseline", "avx2", "avx512"):
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Unbuilt())
from nacf_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_without_built_cython_kernels_says_so_without_a_traceback(tmp_path):
    """With the Cython backend (the default) and no compiled variant built, ``nacf
    serve`` died with an ImportError traceback; it says it cannot start, why, and what
    to do (build, or another backend), and exits 2."""
    env = {**os.environ, "NACF_API_KEYS": "test-key-0123456789"}
    env.pop("NACF_KERNEL_BACKEND", None)
    env.pop("NACF_KERNEL_ISA", None)
    out = subprocess.run([sys.executable, "-c", _UNBUILT, "serve", "--data-dir", str(tmp_path),
                          "--grpc-address", "127.0.0.1:0", "--metrics-address", ""],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-1500:]
    assert "Traceback" not in out.stderr, out.stderr[-1500:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("nacf serve: no built variant of nacf_core.kernels._cy_"), line
    assert "pip install -e ." in line and "NACF_KERNEL_BACKEND=numba" in line, line
