"""``nacf train MANIFEST``: fit and calibrate a population model for a montage."""

from __future__ import annotations

import argparse
import sys

from nacf_core.commands._args import (channel_list, check_not_an_input, check_output_path,
                                      finite_float, non_empty)
from nacf_core.kernels import BACKENDS, default_backend_name

__all__ = ["register", "run"]

_ATTRIBUTION = {
    "eegmmidb": (
        "Fitted on the PhysioNet EEG Motor Movement/Imagery Dataset v1.0.0 (Open Data "
        "Commons Attribution License v1.0). Schalk G., McFarland D.J., Hinterberger T., "
        "Birbaumer N., Wolpaw J.R. BCI2000: A General-Purpose Brain-Computer Interface "
        "(BCI) System. IEEE Trans. Biomed. Eng. 51(6):1034-1043, 2004. Goldberger A. et al. "
        "PhysioBank, PhysioToolkit, and PhysioNet. Circulation 101(23):e215-e220, 2000."
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="fit and calibrate a population model on a manifest",
        description="Fit the population model (tangent space, within-subject whitening) "
                    "on every subject of MANIFEST and calibrate its thresholds to --fmr by "
                    "cross-fitting over those subjects (every subject needs enroll and probe "
                    "recordings). Evaluate it on OTHER subjects (nacf evaluate --model).")
    p.add_argument("manifest", help="manifest CSV (subject,recording,role,path[,start_s,stop_s])")
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.add_argument("--name", default=None, type=non_empty("model name"),
                   help="model name (default: the file stem)")
    p.add_argument("--channels", default=None, type=channel_list,
                   help="comma-separated channel names (default: the 16-channel montage)")
    # below 0.5: it is also the sequential test's alpha (Wald's bounds need alpha < 0.5)
    p.add_argument("--fmr", type=finite_float(0.0, 0.5, lo_open=True, hi_open=True),
                   default=None,
                   help="target false-match rate of the thresholds, in (0, 0.5) "
                        "(default 0.001)")
    p.add_argument("--sfreq", type=_sfreq, default=None, metavar="HZ",
                   help="working rate in Hz, within the pipeline's 125-1000 Hz "
                        "(default: the first recording's)")
    p.add_argument("--attribution", default=None,
                   help="attribution text stored in the model (or 'eegmmidb')")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="kernel backend (default: NACF_KERNEL_BACKEND, else cython)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _sfreq(text: str) -> float:
    """The model's working rate: every block is resampled to it, so it must be a rate the
    pipeline supports (a huge one would make the resampled signal huge)."""
    from nacf_core.pipeline import MAX_SFREQ, MIN_SFREQ

    return finite_float(MIN_SFREQ, MAX_SFREQ)(text)


def _model_name(args: argparse.Namespace) -> str:
    """--name, else the --out file's stem: a name the model file can hold (``ValueError``
    naming the option otherwise, before any recording is read)."""
    from pathlib import Path

    from nacf_core.model import MAX_NAME_CHARS, is_text

    name = args.name or Path(args.out).stem
    if not is_text(name, MAX_NAME_CHARS):
        source = "--name" if args.name else "the --out file name (the default --name)"
        raise ValueError(f"{source} {name!r}: a model name must be printable and 1 to "
                         f"{MAX_NAME_CHARS} characters long.")
    return name


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nacf_core.channels import MONTAGE_16
    from nacf_core.commands._progress import ProgressBar
    from nacf_core.errors import NacfError
    from nacf_core.evaluation import load_blocks, read_manifest
    from nacf_core.training import fit_model, model_channels

    bar = ProgressBar("train", enabled=not args.no_progress)
    try:
        check_output_path("--out", args.out)  # before the fit, not after it
        name = _model_name(args)
        rows = read_manifest(args.manifest)
        check_not_an_input("--out", args.out, args.manifest, rows)
        chans = ([c.strip() for c in args.channels.split(",") if c.strip()]
                 if args.channels else list(MONTAGE_16))
        model_channels(chans)  # before reading the recordings
        backend = args.backend or default_backend_name()  # a bad NACF_KERNEL_BACKEND too
        params = {}
        if args.fmr is not None:
            params["target_fmr"] = args.fmr
        total = 2 * len(rows) + 4
        done = [0]

        def tick(stage: str) -> None:
            done[0] += 1
            bar(done[0], total, stage)

        blocks = load_blocks(rows, progress=lambda: tick("reading"))
        info = {"manifest": Path(args.manifest).name}
        if args.attribution:
            info["attribution"] = _ATTRIBUTION.get(args.attribution, args.attribution)
        model = fit_model(blocks, ch_names=chans, name=name, sfreq=args.sfreq,
                          backend=backend, info=info, progress=tick, **params)
        model.save(args.out)
    except (ValueError, TypeError, OSError, NacfError) as exc:
        bar.close()
        print(f"nacf train: {exc}", file=sys.stderr)
        return 1
    bar.close()
    c1 = model.info["calibration"]["1"]
    print(f"model {model.version}: {model.n_channels} channels at {model.sfreq:g} Hz, "
          f"embedding dimension {model.embedding_dim}, "
          f"{len(model.info['training']['subjects'])} subjects")
    for n, c in sorted(model.info["calibration"].items(), key=lambda kv: int(kv[0])):
        print(f"  {n} window(s): threshold {c['threshold']:.4f} at target FMR "
              f"{c['target_fmr']:g}; cross-fitted FMR {c['fmr'] * 100:.2f} %, FNMR "
              f"{c['fnmr'] * 100:.1f} % (95% CI {c['fnmr_ci'][0] * 100:.1f}–"
              f"{c['fnmr_ci'][1] * 100:.1f} %), {c['n_impostor']} impostor comparisons")
    del c1
    print(f"written to {args.out}")
    return 0
