"""``nacf demo``: the main job, end to end on one machine.

1. Starts ``nacf serve``'s server in-process on SQLite in a temporary directory, with
   a fresh API key and the device proof required.
2. Enrolls the demo people over gRPC from the recordings the package ships (EEGMMIDB
   subjects S021-S024, run R03: real EEG, see ``nacf_core/data/demo/ATTRIBUTION.md``),
   and registers a headset (``device_id``) to each.
3. For every person, a genuine attempt (the person wears their own headset) and an
   impostor attempt (someone else wears it): a simulated Cyton+Daisy streams the
   wearer's later recording (run R07) over a pseudo-terminal, nacf's serial reader
   decodes it, and the chunks go to ``AuthenticateStream`` with the device proof.
4. Prints each decision with its score, threshold, the seconds of signal used and the
   latency, then the metrics URL, and stops cleanly.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nacf_core.commands._args import address, finite_float, stdout_to_devnull
from nacf_core.commands._signals import interrupts_held, terminations_interrupt

__all__ = ["register", "run", "demo_people"]

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the end-to-end demo (server, simulated headset, enroll, authenticate)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=int, default=4, metavar="N",
                   help="how many of the shipped demo people to use, 2-4 (default 4)")
    p.add_argument("--speed", type=float, default=4.0, metavar="X",
                   help="pace of the simulated headset, 1 = real time (1-50, default 4)")
    p.add_argument("--grpc-address", type=address(), default="127.0.0.1:0", metavar="HOST:PORT",
                   help="gRPC address of the demo server, on loopback (default: a free "
                        "loopback port)")
    p.add_argument("--metrics-address", type=address(allow_empty=True),
                   default="127.0.0.1:0", metavar="HOST:PORT",
                   help="metrics/health sidecar address (default: a free loopback port; "
                        "'' disables it)")
    p.add_argument("--keep-running", type=finite_float(0.0, 1e9), default=0.0, metavar="S",
                   help="keep the server up S seconds after the attempts, to scrape /metrics")
    p.add_argument("--server-logs", action="store_true",
                   help="show the server's JSON-lines INFO log on stderr (default: warnings "
                        "only, so the decisions stay readable)")
    p.set_defaults(func=run)


def demo_people(n: int) -> list[tuple[str, Path, Path]]:
    """``(subject, enroll_recording, probe_recording)`` for the first ``n`` shipped people."""
    subjects = sorted({p.name[:4] for p in DEMO_DIR.glob("S*R03.npz")})
    people = [(s, DEMO_DIR / f"{s}R03.npz", DEMO_DIR / f"{s}R07.npz") for s in subjects
              if (DEMO_DIR / f"{s}R07.npz").exists()]
    if len(people) < 2:
        raise FileNotFoundError(f"the demo recordings are missing from {DEMO_DIR}")
    if not 2 <= n <= len(people):
        raise ValueError(f"'--people' must be in [2, {len(people)}], got {n}.")
    return people[:n]


def run(args: argparse.Namespace) -> int:
    import signal

    # SIGTERM, SIGHUP: unwind like Ctrl-C, so the server stops and the temporary files go;
    # once only: a second one must not cut that clean-up short. From the start (the
    # imports take a second): an interrupt then is said too; SIGHUP (the terminal closed)
    # unless ignored (nohup nacf demo)
    with terminations_interrupt(once=True):
        try:
            return _checked_demo(args)
        except KeyboardInterrupt:
            print("nacf demo: interrupted; the server was stopped and its temporary store "
                  "removed.", file=sys.stderr)
            return 130
        except _OutputClosed:  # as a program killed by SIGPIPE, which Python ignores
            return 128 + signal.SIGPIPE


def _checked_demo(args: argparse.Namespace) -> int:
    """The options checked, then :func:`_serve_demo`."""
    import logging

    from nacf_core.config import parse_address
    from nacf_core.server.app import is_loopback, limit_threads

    limit_threads()
    try:
        people = demo_people(args.people)
        # not below real time: a stream then takes longer than the server allows one
        # (stream_max_seconds of signal within signal_loss_s more), and near 0 the
        # headset sends nothing; the demo failed after minutes instead of at once
        if not (1 <= args.speed <= 50):
            raise ValueError(f"'--speed' must be in [1, 50], got {args.speed}.")
        if not is_loopback(parse_address("grpc_address", args.grpc_address)[0]):
            raise ValueError(f"'--grpc-address' must be a loopback address (the demo serves "
                             f"plaintext gRPC: it has no TLS), got {args.grpc_address!r}.")
    except (ValueError, FileNotFoundError) as e:
        print(f"nacf demo: {e}", file=sys.stderr)
        return 2

    if not args.server_logs:
        nacf_log = logging.getLogger("nacf")
        nacf_log.setLevel(max(nacf_log.getEffectiveLevel(), logging.WARNING))
    return _serve_demo(args, people)


def _serve_demo(args: argparse.Namespace, people) -> int:
    """Steps 1-4 in a temporary directory that goes with the server when they end."""
    import secrets
    import tempfile

    import grpc

    from nacf_core.config import SCOPES, Config
    from nacf_core.errors import NacfError
    from nacf_core.server.app import BindError, NacfServer

    with tempfile.TemporaryDirectory(prefix="nacf-demo-") as tmp:
        api_key = secrets.token_urlsafe(24)
        try:
            config = Config(grpc_address=args.grpc_address,
                            metrics_address=args.metrics_address, data_dir=tmp,
                            api_keys={api_key: frozenset(SCOPES)}, require_device_proof=True)
            server = NacfServer(config).start()
        except BindError as e:  # the demo's own options, not nacf serve's advice
            print(f"nacf demo: cannot start the server: --{e.option.replace('_', '-')} "
                  f"{e.address} is in use or not available: give another HOST:PORT, or "
                  f"leave the option out for a free port.", file=sys.stderr)
            return 2
        except (NacfError, OSError, ValueError) as e:
            print(f"nacf demo: cannot start the server: {e}", file=sys.stderr)
            return 2
        metrics_url = f"{server.sidecar.url}/metrics" if server.sidecar else "(no sidecar)"
        out = _Printer()
        channel = None
        try:  # from here on the server is stopped, whatever ends the demo
            out(f"nacf demo: server on {server.address} (SQLite in {tmp}), "
                f"model {server.service.model_version}, metrics {metrics_url}")
            channel = grpc.insecure_channel(server.address)
            ok = _run_demo(grpc, channel, api_key, people, args.speed, out)
            out(f"metrics: {metrics_url}")
            if args.keep_running > 0:
                try:  # from the line on: a Ctrl-C right after it ends the wait too
                    out(f"keeping the server up for {args.keep_running:g} s (Ctrl-C stops)")
                    time.sleep(args.keep_running)
                except KeyboardInterrupt:  # as offered: the end of the wait, not a failure
                    pass
        except grpc.RpcError as e:
            print(f"nacf demo: {e.code().name}: {e.details()}", file=sys.stderr)
            ok = False
        except (OSError, NacfError, RuntimeError) as e:  # the pty, the serial reader
            print(f"nacf demo: the simulated headset failed: {e}", file=sys.stderr)
            ok = False
        finally:
            # a Ctrl-C or SIGTERM now waits for the server to stop: one that cut the stop
            # short left grpc's serving thread failing with a traceback
            with interrupts_held("nacf demo: stopping the server first.") as held:
                if channel is not None:
                    channel.close()
                server.stop(grace=5.0)
            if held:
                raise KeyboardInterrupt
        out("nacf demo: stopped cleanly")
        return 0 if ok else 1


class _OutputClosed(Exception):
    """The demo's standard output was closed by its reader (``nacf demo | head``)."""


class _Printer:
    def __call__(self, line: str) -> None:
        try:
            print(line, flush=True)
        except BrokenPipeError:
            # nothing more can be shown: the demo stops (the server, its files)
            stdout_to_devnull()
            raise _OutputClosed from None


def _run_demo(grpc, channel, api_key: str, people, speed: float, out) -> bool:
    import numpy as np

    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pb_grpc
    from nacf_core.hardware.files import read_recording

    stub = pb_grpc.AuthServiceStub(channel)
    md = (("x-api-key", api_key),)
    device_secret: dict[str, str] = {}

    out("\n== enrollment over gRPC (run R03, 60 s each) ==")
    for subject, enroll_path, _ in people:
        rec = read_recording(enroll_path)
        sig = pb.Signal(sample_rate_hz=float(rec.sfreq), channel_names=list(rec.ch_names),
                        samples=np.ascontiguousarray(rec.data, dtype="<f4").tobytes())
        t0 = time.perf_counter()
        resp = stub.Enroll(pb.EnrollRequest(user_id=subject, signals=[sig]), metadata=md,
                           timeout=60)
        ms = (time.perf_counter() - t0) * 1e3
        dev = stub.RegisterDevice(pb.RegisterDeviceRequest(user_id=subject,
                                                           device_id=f"cyton-{subject}"),
                                  metadata=md, timeout=10)
        device_secret[subject] = dev.device_secret
        out(f"enrolled {subject}: template v{resp.template_version}, "
            f"{resp.epochs_used} epochs used, {resp.epochs_rejected} rejected, "
            f"quality {resp.quality:.2f}, {ms:.0f} ms; headset {dev.device_id} registered")

    out(f"\n== authentication: simulated Cyton+Daisy on a pty -> serial reader -> "
        f"AuthenticateStream (pace {speed:g}x real time) ==")
    n_ok = n_total = 0
    for i, (claim, _, _) in enumerate(people):
        impostor = people[(i + 1) % len(people)]
        for wearer, probe_path in ((claim, people[i][2]), (impostor[0], impostor[2])):
            genuine = wearer == claim
            resp, latency_ms, wall_s, n_filled = _stream_attempt(
                stub, md, claim, f"cyton-{claim}", device_secret[claim], probe_path, speed)
            correct = resp.accepted == genuine
            n_ok += correct
            n_total += 1
            kind = "genuine " if genuine else "impostor"
            out(f"{kind} claim={claim} wearer={wearer}: "
                f"{'ACCEPT' if resp.accepted else 'REJECT'} score {resp.score:+.3f} "
                f"(threshold {resp.threshold:+.3f}) after {resp.seconds_used:.0f} s of signal, "
                f"decision {latency_ms:.1f} ms after the last chunk, {wall_s:.1f} s wall "
                f"[{'correct' if correct else 'WRONG'}]"
                + (" session opened" if resp.session_token else "")
                + (f" ({n_filled} dropped samples interpolated by the client)" if n_filled
                   else ""))
    stats = stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=10)
    out(f"\n{n_ok}/{n_total} decisions correct; store stats: {stats.total_users} users, "
        f"{stats.auth_attempts_today} attempts today, success rate "
        f"{stats.success_rate_today:.1f} %, {stats.active_sessions} active sessions")
    return True


def _stream_attempt(stub, md, claim: str, device_id: str, secret: str, probe_path: Path,
                    speed: float):
    """Stream one recording through the simulated headset; return (response, latency ms,
    wall s, dropped samples the client interpolated)."""
    from nacf_core.client import Blocks, authenticate_stream
    from nacf_core.hardware.serial_reader import CytonReader
    from nacf_core.hardware.simulator import SimulatedCyton
    from nacf_core.metrics import METRICS

    with SimulatedCyton(probe_path, daisy=True, realtime=True, speed=speed, loop=False) as sim, \
            CytonReader(sim.port, daisy=True) as reader:
        try:
            with Blocks(reader) as blocks:  # half-second blocks
                try:
                    r = authenticate_stream(stub, md, claim, blocks, device_id=device_id,
                                            secret=secret, timeout=120)
                except ValueError:  # (a headset that failed raised its own error)
                    raise RuntimeError(
                        f"the simulated headset streamed nothing from {probe_path}") from None
        finally:
            METRICS.observe_device_counters(f"demo:{probe_path.stem}", reader.counters)
    return r.response, r.latency_s * 1e3, r.wall_s, blocks.filled
