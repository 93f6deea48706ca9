"""``nacf simulate``: a virtual OpenBCI Cyton on a pseudo-terminal (or an LSL outlet)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nacf_core.commands._args import finite_float, non_empty

__all__ = ["register", "run", "default_recording"]

_EPILOG = """\
The simulated board answers v (soft reset, banner ending in $$$), d, x...X, b and s like
the Cyton firmware and streams 250 packets/s built from a real recording (resampled to
250 Hz, or 125 Hz with --daisy). Open the printed port with any Cyton reader, e.g.
  nacf record --source cyton:PORT --seconds 10 --out rec.csv
Faults: --faults "garbage=0.01,drop=0.01,railed=3,disconnect=5:1.5,seed=1"
(probabilities per packet; railed channel index from 0; disconnect after 5 s of
streaming for 1.5 s).
"""


def default_recording() -> Path:
    """The first demo recording shipped with the package."""
    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    files = sorted(demo.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no demo recordings in {demo}; pass a RECORDING path.")
    return files[0]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate", help="simulated OpenBCI Cyton on a pty (or an LSL stream)",
        description="Simulate an OpenBCI Cyton (or Cyton+Daisy) on a pseudo-terminal.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recording", nargs="?", default=None,
                   type=non_empty("recording file name"),
                   help="EDF, OpenBCI GUI text, BrainFlow CSV or .npz file "
                        "(default: the first shipped demo recording)")
    p.add_argument("--units", default=None,
                   help="EDF/BDF: the voltage unit of every signal (uV, mV, V, nV) instead "
                        "of the header's (for EEG signals in a unit that is not a voltage)")
    p.add_argument("--daisy", action="store_true", help="simulate a Cyton+Daisy (16 channels)")
    p.add_argument("--faults", default="", help="faults to inject (see below)")
    p.add_argument("--speed", type=finite_float(0.0, lo_open=True), default=None,
                   help="pace factor (default 1 = real time, 250 packets/s)")
    p.add_argument("--fast", action="store_true",
                   help="no pacing: stream as fast as the reader reads (not with --speed)")
    p.add_argument("--no-loop", action="store_true",
                   help="stop streaming at the end of the recording instead of starting over")
    p.add_argument("--seconds", type=finite_float(0.0, 1e9, lo_open=True), default=None,
                   help="exit after this many seconds (default: until Ctrl-C)")
    p.add_argument("--port-dir", default=None, type=non_empty("directory name"),
                   help="directory for the port symlink (default: a temporary directory)")
    p.add_argument("--lsl", metavar="NAME", type=non_empty("LSL stream name"), default=None,
                   help="push the recording to an LSL outlet NAME instead of a pty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nacf_core.hardware.files import read_recording

    try:
        path = Path(args.recording) if args.recording else default_recording()
        recording = read_recording(path, units=args.units)
    except (OSError, ValueError) as exc:
        print(f"nacf simulate: {exc}", file=sys.stderr)
        return 2
    if args.fast and args.speed is not None:  # never ignored without a word
        print("nacf simulate: --speed paces the stream and --fast does not pace it: leave "
              "out one or the other.", file=sys.stderr)
        return 2
    speed = 1.0 if args.speed is None else args.speed
    if args.lsl is not None:
        for option, given in (("--faults", args.faults), ("--daisy", args.daisy),
                              ("--port-dir", args.port_dir is not None)):
            if given:  # never ignored without a word
                print(f"nacf simulate: {option} is for the simulated Cyton on a pty; --lsl "
                      f"pushes the recording as it is: leave out one or the other.",
                      file=sys.stderr)
                return 2
        return _run_lsl(args, recording, speed)
    return _run_pty(args, recording, speed, path)


def _run_pty(args: argparse.Namespace, recording, speed: float, path: Path) -> int:
    from nacf_core.commands._signals import terminations_interrupt

    # SIGTERM, SIGHUP: leave the with-block, remove the port; from before the port exists:
    # a SIGTERM once it is made (a script that stops this as soon as it has read the port)
    # removes it too; SIGHUP (its terminal closed) as well, unless ignored (nohup nacf
    # simulate)
    with terminations_interrupt():
        return _serve_pty(args, recording, speed, path)


def _serve_pty(args: argparse.Namespace, recording, speed: float, path: Path) -> int:
    from nacf_core.hardware.simulator import Faults, SimulatedCyton

    try:
        if args.port_dir is not None and not Path(args.port_dir).is_dir():
            raise ValueError(f"--port-dir {args.port_dir!r} is not an existing directory.")
        faults = Faults.parse(args.faults)
        sim = SimulatedCyton(
            recording, daisy=args.daisy, faults=faults, realtime=not args.fast,
            speed=speed, loop=not args.no_loop, port_dir=args.port_dir,
        )
    except (TypeError, ValueError) as exc:
        print(f"nacf simulate: {exc}", file=sys.stderr)
        return 2
    try:
        sim.start()
    except OSError as exc:  # the pty or the port symlink (e.g. --port-dir not writable)
        sim.close()
        print(f"nacf simulate: cannot create the port {sim.port!r}: "
              f"{exc.strerror or exc}.", file=sys.stderr)
        return 2
    except BaseException:  # Ctrl-C, SIGTERM: the port goes with it
        sim.close()
        raise
    with sim:
        try:  # from the port's line on, Ctrl-C or SIGTERM is the simulation's end
            print(sim.port, flush=True)
            print(
                f"# simulated {'Cyton+Daisy' if args.daisy else 'Cyton'} from {path.name}: "
                f"channels {','.join(sim.ch_names)} at {sim.sfreq:g} Hz",
                file=sys.stderr, flush=True,
            )
            _wait(args.seconds)
        except KeyboardInterrupt:
            pass
        print(f"# stats: {sim.stats}", file=sys.stderr)
    return 0


def _run_lsl(args: argparse.Namespace, recording, speed: float) -> int:
    from nacf_core.errors import NacfError
    from nacf_core.hardware.lsl import stream_recording_to_lsl

    print(f"lsl:{args.lsl}", flush=True)
    speed = 1000.0 if args.fast else speed
    try:
        n = stream_recording_to_lsl(
            recording, args.lsl, speed=speed, loop=not args.no_loop,
            duration_s=None if args.seconds is None else args.seconds * speed,
        )
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError, NacfError) as exc:  # e.g. --seconds x --speed past 1e308
        print(f"nacf simulate: {exc}", file=sys.stderr)
        return 2
    print(f"# pushed {n} samples to the LSL outlet {args.lsl!r}", file=sys.stderr)
    return 0


def _wait(seconds: float | None) -> None:
    end = None if seconds is None else time.monotonic() + seconds
    while end is None or time.monotonic() < end:
        time.sleep(0.2 if end is None else max(0.0, min(0.2, end - time.monotonic())))
