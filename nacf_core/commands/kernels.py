"""``nacf kernels``: what the kernel backends are built for, and how fast they run.

``nacf kernels info``
    The backends (cython, numba, reference): whether each imports, which compiled
    modules are built, whether Numba's on-disk cache holds each jitted kernel; the
    CPU's SIMD features and the instruction-set variant the Cython build uses.
``nacf kernels bench``
    Runs the kernel benchmarks (``benches/bench_sosfilt.py``, ``bench_artifacts.py``,
    ``bench_topk.py``) through pytest-benchmark with ``--benchmark-json`` and prints one
    comparison table: per case, each implementation's median, its speed-up over the
    case's baseline, the target and whether it is met (the convention is in
    ``benches/conftest.py``).  ``--from-json`` prints the table of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from nacf_core.commands._args import check_output_path, finite_float, non_empty

__all__ = ["register", "collect_info", "format_table", "BENCH_FILES"]

BENCH_FILES = ("bench_sosfilt.py", "bench_artifacts.py", "bench_topk.py")
#: the largest pytest-benchmark JSON read (a full run of the three files is ~100 kB)
MAX_BENCH_JSON_BYTES = 16 << 20


def _path_arg(what: str):
    """A ``Path`` from a non-empty name (:func:`non_empty`)."""
    check = non_empty(what)

    def parse(text: str) -> Path:
        return Path(check(text))

    parse.__name__ = what
    return parse

def register(subparsers) -> None:
    p = subparsers.add_parser("kernels", help="kernel backends: build info and benchmarks",
                              description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kernels_command", metavar="{info,bench}", required=True)
    info = sub.add_parser("info", help="backends, build/JIT-cache state, CPU SIMD features")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_run_info)
    bench = sub.add_parser("bench", help="run the kernel benchmarks and print the table")
    # '' (a variable that was not set) is no expression: pytest took it as no -k at all
    bench.add_argument("-k", dest="keyword", default=None,
                       type=non_empty("pytest -k expression"),
                       help="only benchmarks matching this pytest -k expression")
    # '' (a variable that was not set) is no name: as Path('') it was the working directory
    file_name, folder_name = _path_arg("file name"), _path_arg("folder name")
    bench.add_argument("--benches", type=folder_name, default=None,
                       help="folder holding the bench_*.py files (default: ./benches, "
                            "else the source tree's benches/)")
    bench.add_argument("--json", dest="json_out", type=file_name, default=None,
                       help="also keep pytest-benchmark's JSON here")
    bench.add_argument("--from-json", type=file_name, default=None,
                       help="do not run: print the table of this pytest-benchmark JSON "
                            "(only --check goes with it)")
    bench.add_argument("--max-time", type=finite_float(0.0, 3600.0, lo_open=True), default=None,
                       help="seconds per benchmark (pytest-benchmark --benchmark-max-time)")
    bench.add_argument("--cpu-time", action="store_true",
                       help="time with time.process_time (steadier on a busy machine; "
                            "counts every thread's CPU time)")
    bench.add_argument("--check", action="store_true",
                       help="exit with status 1 when a target is not met")
    bench.set_defaults(func=_run_bench)


# ----------------------------------------------------------------------------- info
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _numba_cache_state(module) -> dict[str, bool]:
    """For each jitted kernel of ``module``: is there an on-disk Numba cache index?
    (Helpers inlined into their callers, ``inline="always"``, have none of their own.)"""
    from numba.core.caching import _CacheLocator  # noqa: F401  (numba present)

    src = Path(module.__file__)
    dirs = [src.parent / "__pycache__"]
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    if cache_dir:
        dirs.append(Path(cache_dir))
    indexes = [p.name for d in dirs if d.is_dir() for p in d.rglob("*.nbi")]
    stem = src.stem
    state = {}
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if (callable(obj) and hasattr(obj, "py_func")
                and getattr(obj, "__module__", "") == module.__name__
                and getattr(obj, "options", {}).get("inline") != "always"):
            state[name] = any(i.startswith(f"{stem}.{name}-") for i in indexes)
    return state


def collect_info() -> dict:
    """Everything ``nacf kernels info`` prints, as a dict."""
    import importlib
    import importlib.machinery
    import importlib.util

    import numpy as np

    from nacf_core import __version__, kernels
    from nacf_core.kernels import _cpu

    feats = _cpu.cpu_features()
    wanted = ("SSE42", "AVX", "F16C", "FMA3", "AVX2", "AVX512F", "AVX512CD", "AVX512BW",
              "AVX512DQ", "AVX512VL", "AVX512_VNNI", "AVX512_BF16")
    info: dict = {
        "nacf": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cpu": {
            "model": _cpu_model(),
            "simd": [f for f in wanted if feats.get(f)],
            "isa_variants_supported": _cpu.supported_variants(),
            "NACF_KERNEL_ISA": os.environ.get("NACF_KERNEL_ISA") or None,
        },
        "default_backend": None,
        "backends": {},
    }
    try:
        info["default_backend"] = kernels.default_backend_name()
    except ValueError as exc:
        info["default_backend"] = f"invalid: {exc}"

    pkg_dir = Path(kernels.__file__).parent
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    built = sorted({p.name.split(".", 1)[0] for p in pkg_dir.iterdir()
                    if p.name.endswith(suffixes)})
    for name in kernels.BACKENDS:
        entry: dict = {"module": kernels._MODULES[name]}
        try:
            kernels.backend(name)
            entry["imports"] = True
        except Exception as exc:  # report, do not fail: this is a diagnostic command
            entry["imports"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
        if name == "cython":
            entry["compiled_modules"] = built
            bases = sorted({m.rsplit("_", 1)[0] for m in built
                            if m.rsplit("_", 1)[-1] in _cpu.VARIANTS})
            chosen = {}
            for base in bases:
                try:
                    chosen[base] = _cpu.load_variant(base).__name__.rsplit("_", 1)[1]
                except Exception as exc:
                    chosen[base] = f"unavailable ({exc})"
            entry["isa_chosen"] = chosen
        elif name == "numba":
            try:
                import numba

                entry["numba"] = numba.__version__
                cached = {}
                for mod_name in sorted(p.stem for p in pkg_dir.glob("_nb_*.py")):
                    mod = importlib.import_module(f"nacf_core.kernels.{mod_name}")
                    for fn, ok in _numba_cache_state(mod).items():
                        cached[f"{mod_name}.{fn}"] = ok
                entry["jit_cached"] = cached
            except Exception as exc:
                entry["numba_error"] = f"{type(exc).__name__}: {exc}"
        else:
            import scipy

            entry["scipy"] = scipy.__version__
        info["backends"][name] = entry
    return info


def _run_info(args) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cpu = info["cpu"]
    print(f"nacf {info['nacf']} (Python {info['python']}, NumPy {info['numpy']})")
    print(f"CPU: {cpu['model']}")
    print(f"  SIMD features: {' '.join(cpu['simd']) or 'none detected'}")
    print(f"  ISA variants this CPU runs: {', '.join(cpu['isa_variants_supported'])}"
          + (f" (forced: NACF_KERNEL_ISA={cpu['NACF_KERNEL_ISA']})"
             if cpu["NACF_KERNEL_ISA"] else ""))
    print(f"Default backend: {info['default_backend']} (NACF_KERNEL_BACKEND)")
    print("Backends:")
    for name, entry in info["backends"].items():
        state = "ok" if entry["imports"] else f"NOT AVAILABLE - {entry.get('error')}"
        print(f"  {name:<9} {state}")
        if name == "cython":
            print(f"    built: {len(entry['compiled_modules'])} compiled modules"
                  + (f" ({', '.join(entry['compiled_modules'])})" if entry["compiled_modules"] else
                     " - run `pip install -e .` to build"))
            for base, isa in entry["isa_chosen"].items():
                print(f"    {base}: ISA variant in use: {isa}")
        elif name == "numba":
            if "numba_error" in entry:
                print(f"    {entry['numba_error']}")
            else:
                cached = entry["jit_cached"]
                n_ok = sum(cached.values())
                print(f"    Numba {entry['numba']}; JIT cache: {n_ok} of {len(cached)} kernels "
                      "compiled and cached on disk (the rest compile on first call)")
                for fn, ok in cached.items():
                    print(f"      {'cached ' if ok else 'not yet'}  {fn}")
        else:
            print(f"    SciPy {entry['scipy']} (test oracle and benchmark baseline)")
    return 0


# ----------------------------------------------------------------------------- bench
def _find_benches(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [
        Path.cwd() / "benches",
        Path(__file__).resolve().parents[2] / "benches",
    ]
    for c in candidates:
        if c is not None and (c / BENCH_FILES[0]).is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    raise SystemExit(f"nacf kernels bench: no benchmark folder with {BENCH_FILES[0]} found "
                     f"(looked in {where}); run it from the source tree or pass --benches.")


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e9:.0f} ns"


def _target_factor(target: str | None) -> float | None:
    if not target:
        return None
    m = re.search(r"(?:≥|>=)\s*([0-9]*\.?[0-9]+)\s*[×x]", target)
    return float(m.group(1)) if m else None


def table_rows(data: dict) -> list[dict]:
    """One row per benchmark, grouped, with speed-up and target verdicts."""
    groups: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(b.get("group") or b["name"], []).append(b)
    rows = []
    for group, items in groups.items():
        base = next((b for b in items if b.get("extra_info", {}).get("baseline")), None)
        base_median = base["stats"]["median"] if base else None
        for b in sorted(items, key=lambda b: (not b.get("extra_info", {}).get("baseline"),
                                             b["stats"]["median"])):
            extra = b.get("extra_info", {})
            median = b["stats"]["median"]
            speedup = base_median / median if base_median and median > 0 else None
            n_items = extra.get("n_items")
            per_item = median / n_items if n_items else None
            target = extra.get("target")
            met = None
            if "target_per_item_s" in extra and per_item is not None:
                met = per_item <= float(extra["target_per_item_s"])
            elif "target_ratio" in extra and speedup is not None:
                met = speedup >= float(extra["target_ratio"])
            elif _target_factor(target) is not None and speedup is not None:
                met = speedup >= _target_factor(target)
            rows.append({
                "group": group,
                "impl": extra.get("impl", b["name"]),
                "baseline": bool(extra.get("baseline")),
                "median": median,
                "speedup": speedup,
                "per_item": per_item,
                "item": extra.get("per_item", "item"),
                "target": target,
                "met": met,
            })
    return rows


def format_table(data: dict) -> str:
    """A Markdown table (one line per benchmark) plus the machine it ran on."""
    lines = ["| case | impl | median | vs baseline | per item | target | met |",
             "|---|---|---:|---:|---:|---|---|"]
    last = None
    for r in table_rows(data):
        case = r["group"] if r["group"] != last else ""
        last = r["group"]
        speed = "baseline" if r["baseline"] else (f"{r['speedup']:.2f}×" if r["speedup"] else "")
        per = f"{_fmt_time(r['per_item'])}/{r['item']}" if r["per_item"] is not None else ""
        met = "" if r["met"] is None else ("met" if r["met"] else "NOT met")
        lines.append(f"| {case} | {r['impl']} | {_fmt_time(r['median'])} | {speed} | {per} | "
                     f"{r['target'] or ''} | {met} |")
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {})
    brand = cpu.get("brand_raw") or mi.get("processor") or "unknown CPU"
    lines.append("")
    lines.append(f"Machine: {brand}, {cpu.get('count', '?')} cores, Python "
                 f"{mi.get('python_version', '?')}; run {data.get('datetime', '?')}.")
    return "\n".join(lines)


class BenchJSONError(ValueError):
    """A file that is not pytest-benchmark's ``--benchmark-json`` output."""


def load_bench_json(path: Path) -> dict:
    """Read and check a pytest-benchmark JSON file (a regular file, UTF-8, at most
    :data:`MAX_BENCH_JSON_BYTES`, the shape :func:`table_rows` reads).

    Raises
    ------
    BenchJSONError
        Saying what is wrong and what was expected.
    """
    from nacf_core.config import read_regular_file
    from nacf_core.errors import InvalidArgument

    try:
        raw = read_regular_file(path, "benchmark JSON", MAX_BENCH_JSON_BYTES)
    except InvalidArgument as exc:
        raise BenchJSONError(str(exc)) from None
    want = ("expected pytest-benchmark's --benchmark-json output: an object whose "
            "'benchmarks' list holds objects with a 'name' and 'stats' with a 'median'")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise BenchJSONError(f"benchmark JSON {str(path)!r} is not UTF-8 text (byte "
                             f"{exc.start}); {want}.") from None
    except (ValueError, RecursionError) as exc:
        raise BenchJSONError(f"benchmark JSON {str(path)!r} is not valid JSON "
                             f"({str(exc)[:100]}); {want}.") from None
    problem = _bench_json_problem(data)
    if problem:
        raise BenchJSONError(f"benchmark JSON {str(path)!r} {problem}; {want}.")
    return data


def _bench_json_problem(data) -> str | None:
    """What keeps ``data`` from being a report :func:`table_rows` can read (None: nothing)."""
    def number(x) -> bool:  # finite, and not an int too large for a float (NaN fails too)
        return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < 1e300

    if not isinstance(data, dict):
        return f"holds a JSON {type(data).__name__}, not an object"
    benches = data.get("benchmarks")
    if not isinstance(benches, list) or not benches:
        return "has no non-empty 'benchmarks' list"
    for i, b in enumerate(benches):
        stats = b.get("stats") if isinstance(b, dict) else None
        extra = b.get("extra_info", {}) if isinstance(b, dict) else None
        ok = (isinstance(b, dict) and isinstance(b.get("name"), str)
              and isinstance(b.get("group") or "", str)
              and isinstance(stats, dict) and number(stats.get("median"))
              and stats["median"] >= 0 and isinstance(extra, dict)
              and all(number(extra[k]) and extra[k] >= 0
                      for k in ("n_items", "target_per_item_s", "target_ratio")
                      if k in extra and not (k == "n_items" and extra[k] is None))
              and isinstance(extra.get("target") or "", str))
        if not ok:
            return f"has a malformed entry benchmarks[{i}]"
    mi = data.get("machine_info", {})
    if not isinstance(mi, dict) or not isinstance(mi.get("cpu", {}), dict):
        return "has a malformed 'machine_info'"
    return None


def _run_bench(args) -> int:
    if args.from_json:
        # an option of a run would be ignored without a word (no --json copy written,
        # every case printed despite -k): refuse it
        given = [name for name, value in (("--json", args.json_out), ("-k", args.keyword),
                                          ("--max-time", args.max_time),
                                          ("--cpu-time", args.cpu_time),
                                          ("--benches", args.benches)) if value]
        if given:
            print(f"nacf kernels bench: {', '.join(given)} apply to a run of the benchmarks; "
                  "--from-json prints an earlier run's table (only --check goes with it).",
                  file=sys.stderr)
            return 2
        try:
            data = load_bench_json(args.from_json)
        except BenchJSONError as exc:
            print(f"nacf kernels bench: {exc}", file=sys.stderr)
            return 2
    else:
        try:
            check_output_path("--json", args.json_out and str(args.json_out))
        except ValueError as exc:  # before the run, not after it
            print(f"nacf kernels bench: {exc}", file=sys.stderr)
            return 2
        # absolute: pytest runs in the benches' parent folder, not in ours
        benches = _find_benches(args.benches).resolve()
        files = [str(benches / f) for f in BENCH_FILES if (benches / f).is_file()]
        missing = [f for f in BENCH_FILES if not (benches / f).is_file()]
        if missing:
            print(f"note: not found, skipped: {', '.join(missing)}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            out = args.json_out.resolve() if args.json_out else Path(tmp) / "bench.json"
            cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-only", "-q",
                   "-p", "no:cacheprovider", f"--benchmark-json={out}",
                   f"--rootdir={benches}", "--benchmark-columns=median"]
            if args.keyword:
                cmd += ["-k", args.keyword]
            if args.max_time is not None:
                cmd += [f"--benchmark-max-time={args.max_time}"]
            if args.cpu_time:
                cmd += ["--benchmark-timer=time.process_time"]
            print("running: " + " ".join(cmd), file=sys.stderr)
            proc = subprocess.run(cmd, cwd=benches.parent, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0 or not Path(out).is_file():
                sys.stderr.write(proc.stdout[-5000:])
                print(f"nacf kernels bench: pytest exited with {proc.returncode}", file=sys.stderr)
                return proc.returncode or 1
            try:
                data = load_bench_json(Path(out))
            except BenchJSONError as exc:
                print(f"nacf kernels bench: {exc}", file=sys.stderr)
                return 1
    print(format_table(data))
    if args.check and any(r["met"] is False for r in table_rows(data)):
        return 1
    return 0
