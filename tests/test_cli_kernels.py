"""``nacf kernels info`` and ``nacf kernels bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nacf_core.cli import main
from nacf_core.commands import kernels as cmd

ROOT = Path(__file__).resolve().parents[1]


def test_info_lists_backends_build_state_and_cpu(capsys):
    assert main(["kernels", "info"]) == 0
    out = capsys.readouterr().out
    for name in ("cython", "numba", "reference"):
        assert f"  {name}" in out
    assert "SIMD features:" in out and "ISA variant in use:" in out
    assert "_cy_sosfilt" in out and "JIT cache:" in out


def test_info_json_matches_the_cpu():
    from nacf_core.kernels import _cpu, _cy_filter

    info = cmd.collect_info()
    assert info["cpu"]["isa_variants_supported"] == _cpu.supported_variants()
    cy = info["backends"]["cython"]
    assert cy["imports"] is True
    assert cy["isa_chosen"]["_cy_sosfilt"] == _cy_filter.ISA
    assert {f"_cy_sosfilt_{v}" for v in _cpu.supported_variants()} <= set(cy["compiled_modules"])
    nb = info["backends"]["numba"]
    assert "_nb_filter._filter_time_major" in nb["jit_cached"]
    feats = _cpu.cpu_features()
    assert ("AVX2" in info["cpu"]["simd"]) == bool(feats.get("AVX2"))


def test_info_reports_numba_cache(tmp_path, monkeypatch):
    """A fresh cache dir holds nothing; after one call the filter kernel is cached."""
    code = (
        "import json, numpy as np\n"
        "from nacf_core.commands.kernels import collect_info\n"
        "from nacf_core.kernels import _nb_filter, _ref_filter\n"
        "before = collect_info()['backends']['numba']['jit_cached']\n"
        "sos = _ref_filter.bandpass_sos(1, 40, 250, 2)\n"
        "_nb_filter.sosfilt(sos, np.zeros((20, 3)), 0)\n"
        "after = collect_info()['backends']['numba']['jit_cached']\n"
        "print(json.dumps([before, after]))\n"
    )
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    key = "_nb_filter._filter_time_major"
    assert after[key] is True
    assert before[key] in (True, False)  # may already be cached next to the source


SAMPLE = {
    "datetime": "2026-11-26T20:00:00",
    "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11"},
    "benchmarks": [
        {"name": "a", "group": "sosfilt X", "stats": {"median": 30e-6},
         "extra_info": {"impl": "scipy", "baseline": True}},
        {"name": "b", "group": "sosfilt X", "stats": {"median": 10e-6},
         "extra_info": {"impl": "cython", "target": "≥3× scipy"}},
        {"name": "c", "group": "sosfilt X", "stats": {"median": 15e-6},
         "extra_info": {"impl": "numba", "target": "≥3× scipy"}},
        {"name": "d", "group": "server", "stats": {"median": 48e-3},
         "extra_info": {"impl": "scipy per stream", "baseline": True, "n_items": 1000,
                        "per_item": "chunk"}},
        {"name": "e", "group": "server", "stats": {"median": 3.5e-3},
         "extra_info": {"impl": "cython", "n_items": 1000, "per_item": "chunk",
                        "target": "≤4 µs/chunk", "target_per_item_s": 4e-6}},
        {"name": "f", "group": "server", "stats": {"median": 4.5e-3},
         "extra_info": {"impl": "numba", "n_items": 1000, "per_item": "chunk",
                        "target": "≤4 µs/chunk", "target_per_item_s": 4e-6}},
    ],
}


def test_table_speedups_and_verdicts():
    rows = {(r["group"], r["impl"]): r for r in cmd.table_rows(SAMPLE)}
    assert rows[("sosfilt X", "cython")]["speedup"] == pytest.approx(3.0)
    assert rows[("sosfilt X", "cython")]["met"] is True
    assert rows[("sosfilt X", "numba")]["met"] is False
    assert rows[("sosfilt X", "scipy")]["met"] is None
    assert rows[("server", "cython")]["per_item"] == pytest.approx(3.5e-6)
    assert rows[("server", "cython")]["met"] is True
    assert rows[("server", "numba")]["met"] is False
    text = cmd.format_table(SAMPLE)
    assert "| sosfilt X | scipy | 30.0 µs | baseline |" in text
    assert "3.00×" in text and "NOT met" in text and "3.5 µs/chunk" in text
    assert "Machine: Test CPU, 2 cores" in text


def test_bench_from_json_and_check(tmp_path, capsys):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(SAMPLE))
    assert main(["kernels", "bench", "--from-json", str(path)]) == 0
    assert "| server | scipy per stream |" in capsys.readouterr().out
    assert main(["kernels", "bench", "--from-json", str(path), "--check"]) == 1


def test_bench_runs_the_real_benchmarks(tmp_path, capsys):
    """One small real case end to end through pytest-benchmark (short max time)."""
    out_json = tmp_path / "run.json"
    code = main(["kernels", "bench", "--benches", str(ROOT / "benches"),
                 "-k", "test_sosfilt and 8x500-float64", "--max-time", "0.05",
                 "--json", str(out_json)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| sosfilt (8, 500) float64 axis=-1 | scipy |" in out
    assert "| cython |" in out and "| numba |" in out
    data = json.loads(out_json.read_text())
    assert {b["extra_info"]["impl"] for b in data["benchmarks"]} == {"scipy", "cython", "numba"}


def test_bench_json_and_benches_relative_to_the_current_folder(tmp_path, monkeypatch,
                                                              capsys):
    """pytest ran in the benches' parent folder and was handed --json and --benches as
    given: a relative --json was written there (into the source tree), then looked for
    here, and the run failed with 'pytest exited with 0'; a relative --benches named
    no file at all."""
    import shutil

    (tmp_path / "work").mkdir()
    shutil.copytree(ROOT / "benches", tmp_path / "src" / "benches")
    monkeypatch.chdir(tmp_path / "work")
    code = main(["kernels", "bench", "--benches", "../src/benches",
                 "-k", "test_sosfilt and 8x500-float64", "--max-time", "0.05",
                 "--json", "run.json"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert "| sosfilt (8, 500) float64 axis=-1 | scipy |" in capsys.readouterr().out
    assert json.loads((tmp_path / "work" / "run.json").read_text())["benchmarks"]
    assert not (tmp_path / "src" / "run.json").exists()


def test_bench_refuses_a_json_path_it_cannot_write_before_running(tmp_path, capsys):
    code = main(["kernels", "bench", "--benches", str(ROOT / "benches"), "-k", "nothing",
                 "--json", str(tmp_path / "missing" / "run.json")])
    err = capsys.readouterr().err
    assert code == 2 and "--json" in err and "does not exist" in err
    assert "running:" not in err


def test_bench_without_benches_folder_says_where_it_looked(tmp_path):
    with pytest.raises(SystemExit, match="no benchmark folder"):
        main(["kernels", "bench", "--benches", str(tmp_path)])
