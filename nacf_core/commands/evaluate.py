"""``nacf evaluate MANIFEST``: accuracy of the product's pipeline on real recordings.

See :mod:`nacf_core.evaluation` and ``EVALUATION.md`` for the protocol.
"""

from __future__ import annotations

import argparse
import json
import sys

from nacf_core.commands._args import (channel_list, check_not_an_input, check_output_path,
                                      int_range, non_empty)
from nacf_core.kernels import BACKENDS, default_backend_name

__all__ = ["format_report", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="accuracy (EER, FNMR at FMR, FTA) on a manifest of recordings",
        description="Evaluate recognition accuracy on MANIFEST (CSV: subject,recording,role,"
                    "path[,start_s,stop_s]; paths relative to the manifest). Open set: k-fold "
                    "over subjects, a model fitted and calibrated per fold on the other "
                    "subjects, repeated over --splits random fold assignments.")
    p.add_argument("manifest", help="manifest CSV")
    p.add_argument("--channels", default=None, type=channel_list,
                   help="comma-separated channel names (default: the 16-channel montage "
                        "Fp1,Fp2,F3,F4,F7,F8,C3,C4,T7,T8,P3,P4,P7,P8,O1,O2); 'all' = every "
                        "EEG channel of the first recording")
    p.add_argument("--folds", type=int_range(2), default=4,
                   help="k of the k-fold over subjects (4); every fold needs 2 test subjects and 4 "
                        "others to fit its model")
    # bounded: each split is k fits, minutes on 2 cores (a typo's 10**22 ran for ever)
    p.add_argument("--splits", type=int_range(1, 100), default=3,
                   help="random fold assignments to average over (3; at most 100)")
    # '' (a variable that was not set) is refused: taken as no model, the k-fold ran
    p.add_argument("--model", default=None, type=non_empty("file name"),
                   help="evaluate this fitted model file on every subject (no k-fold); it "
                        "must not have been fitted on them")
    p.add_argument("--adapt", action="store_true",
                   help="also measure template adaptation (probes in time order)")
    p.add_argument("--json", dest="json_path", default=None, help="write the report as JSON")
    p.add_argument("--det", dest="det_path", default=None, help="write a DET curve PNG")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="kernel backend (default: NACF_KERNEL_BACKEND, else cython)")
    p.add_argument("--seed", type=int_range(0), default=0,
                   help="seed of the fold assignments (0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _channels(arg, manifest):
    if arg is None:
        return None
    if arg.strip().lower() == "all":
        from nacf_core.channels import canonical_name
        from nacf_core.evaluation import read_manifest
        from nacf_core.hardware.files import read_recording

        first = read_manifest(manifest)[0]
        rec = read_recording(first.path, stop_s=1.0)
        return [c for c in (canonical_name(n) for n in rec.ch_names) if c is not None]
    return [c.strip() for c in arg.split(",") if c.strip()]


def format_report(r: dict) -> str:
    s, f, q = r["single"], r["fused"], r["sequential"]
    su = r["setup"]

    def pct(x):
        return f"{x * 100:6.2f} %"

    def rng(d, k):
        v = d.get(k + "_range")
        return f"  [{v[0] * 100:.2f}–{v[1] * 100:.2f}]" if v else ""

    lines = [
        f"manifest   {r['manifest']}",
        f"channels   {len(su['channels'])}: {','.join(su['channels'])}",
        f"protocol   {su['n_subjects']} subjects, "
        + (f"{su['folds']}-fold x {su['splits']} split(s), " if su["folds"]
           else f"fixed model {su['model']}, ") +
        f"{su['window_s']:g}-s windows, hop {su['hop_s']:g} s, band {su['band'][0]:g}–"
        f"{su['band'][1]:g} Hz, {su['sfreq']:g} Hz",
        "",
        f"single window ({s['n_genuine']} genuine, {s['n_impostor']} impostor comparisons)",
        f"  EER              {pct(s['eer'])}{rng(s, 'eer')}",
        f"  FNMR @ FMR 1%    {pct(s['fnmr_at_fmr_0.01'])}{rng(s, 'fnmr_at_fmr_0.01')}",
        f"  FNMR @ FMR 0.1%  {pct(s['fnmr_at_fmr_0.001'])}{rng(s, 'fnmr_at_fmr_0.001')}",
        f"  FTA rate         {pct(s['fta_rate'])}",
        f"fused, {su['fused_windows']} windows = {f['mean_seconds']:g} s "
        f"({f['n_genuine']} genuine, {f['n_impostor']} impostor)",
        f"  EER              {pct(f['eer'])}{rng(f, 'eer')}",
        f"  FNMR @ FMR 1%    {pct(f['fnmr_at_fmr_0.01'])}{rng(f, 'fnmr_at_fmr_0.01')}",
        f"  FNMR @ FMR 0.1%  {pct(f['fnmr_at_fmr_0.001'])}{rng(f, 'fnmr_at_fmr_0.001')}",
        f"sequential (calibrated thresholds, target FMR {su['target_fmr']:g})",
        f"  FMR {pct(q['fmr'])}   FNMR {pct(q['fnmr'])}   mean {q['mean_seconds']:.1f} s "
        f"(genuine {q['mean_seconds_genuine']:.1f} s, impostor {q['mean_seconds_impostor']:.1f} s)",
    ]
    for k in ("single", "fused"):
        c = r["calibrated"][k]
        lines.append(f"calibrated threshold, {k}: FMR {pct(c['fmr'])}  FNMR {pct(c['fnmr'])} "
                     f"(95% CI over subjects {c['fnmr_ci_low'] * 100:.1f}–"
                     f"{c['fnmr_ci_high'] * 100:.1f} %)")
    if "adaptation" in r:
        a = r["adaptation"]
        lines.append(f"template adaptation (fused, time order): EER {pct(a['eer'])} "
                     f"(without {pct(a['eer_without'])})")
    return "\n".join(lines)


def _check_det_format(path) -> None:
    """``ValueError`` when --det names a file format matplotlib cannot draw (its suffix;
    none: PNG), before the evaluation rather than after it."""
    if not path:
        return
    from pathlib import Path

    fmt = Path(path).suffix[1:].lower()
    if not fmt:
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    known = sorted(Figure().canvas.get_supported_filetypes())
    if fmt not in known:
        raise ValueError(f"--det {path!r}: cannot draw a {fmt!r} file; expected one of "
                         f"{', '.join(known)} (the file name's suffix).")


def _json_ready(obj):
    """``obj`` with NumPy numbers as Python ones and every non-finite float (a rate with
    no comparison behind it is NaN) as None: ``NaN`` and ``Infinity`` are not JSON."""
    import math

    if hasattr(obj, "tolist") and callable(obj.tolist):  # a NumPy scalar or array
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run(args: argparse.Namespace) -> int:
    from nacf_core.commands._progress import ProgressBar
    from nacf_core.config import CompleteOrNothing
    from nacf_core.errors import NacfError
    from nacf_core.evaluation import evaluate, plot_det, read_manifest
    from nacf_core.model import Model

    bar = ProgressBar("evaluate", enabled=not args.no_progress)
    try:
        rows = read_manifest(args.manifest)
        for option, path in (("--json", args.json_path), ("--det", args.det_path)):
            check_output_path(option, path)  # before the evaluation, not after it
            check_not_an_input(option, path, args.manifest, rows)
        _check_det_format(args.det_path)
        backend = args.backend or default_backend_name()  # a bad NACF_KERNEL_BACKEND too
        model = Model.load(args.model) if args.model else None
        report = evaluate(args.manifest, channels=_channels(args.channels, args.manifest),
                          folds=args.folds, splits=args.splits, model=model,
                          backend=backend, seed=args.seed, adapt=args.adapt,
                          progress=bar)
    except (ValueError, TypeError, OSError, NacfError) as exc:
        bar.close()
        print(f"nacf evaluate: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(format_report(report))
    option = "--det"
    try:
        if args.det_path:
            plot_det(report, args.det_path,
                     title=f"{len(report['setup']['channels'])} ch, {report['manifest']}")
            print(f"DET curve written to {args.det_path}")
        option = "--json"
        if args.json_path:
            out = _json_ready({k: v for k, v in report.items() if not k.startswith("_")})
            with CompleteOrNothing(args.json_path, what="--json") as fh:  # whole, or as was
                json.dump(out, fh, indent=2, allow_nan=False)
                fh.write("\n")
            print(f"report written to {args.json_path}")
    except (OSError, ValueError) as exc:  # ValueError: a --det format matplotlib lacks
        path = args.det_path if option == "--det" else args.json_path
        print(f"nacf evaluate: {option} {path!r}: cannot write it: {exc}", file=sys.stderr)
        return 1
    return 0

