"""``nacf serve``: the gRPC authentication server and its metrics/health sidecar."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
import time

__all__ = ["register", "run"]

log = logging.getLogger("nacf.serve")

_EPILOG = """\
Every option can also come from a TOML file (--config FILE, or NACF_CONFIG; the keys
are the option names listed at the end, not the flags' spelling: e.g. rate_limit_per_s = 5
for --rate-limit 5) and from the environment (NACF_ + the
option name in upper case, e.g. NACF_GRPC_ADDRESS; an empty one counts as unset, but
NACF_METRICS_ADDRESS= turns the sidecar off and an empty NACF_STORE_URL is refused).
Precedence: defaults < file < environment < flags.

API keys: NACF_API_KEYS=key1,key2 (every scope) or --api-keys-file FILE with one
'<key> <scope>[,<scope>...]' line per key; scopes are authenticate, enroll, admin.
Without keys the server refuses to start unless --allow-open-loopback is given and it
binds a loopback address. The grpc.health.v1 service needs no key.

Embedded default: a SQLite store (DATA_DIR/nacf.db) with its key file
(DATA_DIR/nacf.key, created 0600; NACF_TEMPLATE_KEY or NACF_TEMPLATE_KEY_FILE override
it), the shipped 16-channel model, the Cython kernels. SIGTERM/SIGINT drain in-flight
calls for --grace-period seconds, then exit.

All options (TOML key / environment variable):
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from nacf_core.commands._args import non_empty
    from nacf_core.config import OPTION_HELP, Config

    d = Config()
    # a file option given as '' (a variable that was not set) is refused, as an empty
    # --store-url is: counted as not given, the flag overrode the file and the environment
    # (the shipped model, a key file made in DATA_DIR, no API keys file, no TLS; with
    # --data-dir, a new empty store in the working directory)
    file_name = non_empty("file name")
    epilog = _EPILOG + "\n".join(
        f"  {k:<28} NACF_{k.upper():<34} {v} (default: {getattr(d, k)!r})"
        for k, v in OPTION_HELP.items())
    p = subparsers.add_parser(
        "serve", help="run the gRPC authentication server and the metrics sidecar",
        description="Run the nacf gRPC authentication server (nacf.v1.AuthService, "
                    "grpc.health.v1, reflection) and the Prometheus/health sidecar.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", type=file_name, help="TOML configuration file")
    p.add_argument("--grpc-address", metavar="HOST:PORT",
                   help=f"gRPC listen address (default {d.grpc_address})")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help=f"sidecar /metrics and /health* address (default {d.metrics_address}; "
                        "'' disables it)")
    p.add_argument("--data-dir", metavar="DIR", type=non_empty("directory name"),
                   help="directory of the embedded SQLite store and key (default: .)")
    p.add_argument("--store-url", metavar="URL",
                   help="sqlite:///PATH.db or postgresql://USER@HOST:PORT/DB[?schema=S] "
                        "(default: SQLite in DATA_DIR)")
    p.add_argument("--store-key-file", metavar="FILE", type=file_name,
                   help="template-encryption key file (default DATA_DIR/nacf.key)")
    p.add_argument("--model", dest="model_path", metavar="FILE", type=file_name,
                   help="model file (default: the shipped model)")
    p.add_argument("--kernel-backend", choices=["cython", "numba", "reference"],
                   help=f"compute kernels (default {d.kernel_backend})")
    p.add_argument("--api-keys-file", metavar="FILE", type=file_name,
                   help="API keys with scopes")
    p.add_argument("--allow-open-loopback", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="run without API keys (loopback addresses only; default: off)")
    p.add_argument("--require-device-proof", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="Authenticate needs the x-device-id/-timestamp/-proof metadata "
                        "(default: required)")
    p.add_argument("--presentation-attack-detection", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="reject replayed and non-physiological probes (default: on)")
    p.add_argument("--tls-cert", dest="tls_cert_file", metavar="FILE", type=file_name,
                   help="server certificate (PEM)")
    p.add_argument("--tls-key", dest="tls_key_file", metavar="FILE", type=file_name,
                   help="server private key (PEM)")
    p.add_argument("--tls-client-ca", dest="tls_client_ca_file", metavar="FILE", type=file_name,
                   help="CA of client certificates: enables mTLS")
    p.add_argument("--reuse-port", action=argparse.BooleanOptionalAction, default=None,
                   help="let several nacf serve processes share --grpc-address "
                        "(SO_REUSEPORT; each needs its own --metrics-address; default: off)")
    p.add_argument("--max-workers", type=int, metavar="N",
                   help=f"worker threads of the unary calls (default {d.max_workers})")
    p.add_argument("--max-concurrent-rpcs", type=int, metavar="N",
                   help=f"in-flight bound beside the open streams (default "
                        f"{d.max_concurrent_rpcs})")
    p.add_argument("--max-streams", type=int, metavar="N",
                   help=f"most open streams, each on a thread of its own (default "
                        f"{d.max_streams})")
    p.add_argument("--max-streams-per-client", type=int, metavar="N",
                   help="most open streams of one client (API key, client certificate, or "
                        "address in open mode); 0: half of --max-streams, rounded up "
                        f"(default {d.max_streams_per_client})")
    p.add_argument("--max-uploads-per-client", type=int, metavar="N",
                   help="most unary calls of one client waiting on a worker thread for "
                        "their request; 0: half of --max-workers, rounded up "
                        f"(default {d.max_uploads_per_client})")
    p.add_argument("--max-message-bytes", type=int, metavar="N",
                   help=f"gRPC message size limit (default {d.max_message_bytes})")
    p.add_argument("--grace-period", dest="grace_period_s", type=float, metavar="S",
                   help=f"SIGTERM drain time in seconds (default {d.grace_period_s:g})")
    p.add_argument("--lockout-threshold", type=int, metavar="N",
                   help=f"failures before lockout (default {d.lockout_threshold})")
    p.add_argument("--lockout-seconds", type=float, metavar="S",
                   help=f"lockout duration (default {d.lockout_seconds:g})")
    p.add_argument("--rate-limit", dest="rate_limit_per_s", type=float, metavar="R",
                   help=f"per-client requests/s (default {d.rate_limit_per_s:g})")
    p.add_argument("--rate-burst", dest="rate_limit_burst", type=float, metavar="N",
                   help=f"per-client burst, at least 1 (default {d.rate_limit_burst:g})")
    p.add_argument("--rate-lease", dest="rate_limit_lease", type=int, metavar="N",
                   help=f"tokens taken from the shared bucket at a time (default "
                        f"{d.rate_limit_lease}; 1: a store write per request)")
    p.add_argument("--session-ttl", dest="session_ttl_s", type=float, metavar="S",
                   help="session lifetime from its opening; each window ContinuousAuthenticate "
                        f"verifies renews it (default {d.session_ttl_s:g})")
    p.add_argument("--session-max-age", dest="session_max_age_s", type=float, metavar="S",
                   help=f"longest a session lasts however often it is renewed (default "
                        f"{d.session_max_age_s:g})")
    p.add_argument("--audit-retention-days", type=float, metavar="D",
                   help=f"audit retention (default {d.audit_retention_days:g})")
    p.add_argument("--purge-interval", dest="purge_interval_s", type=float, metavar="S",
                   help=f"how often the retention purge runs (default "
                        f"{d.purge_interval_s:g})")
    p.add_argument("--proof-max-skew", dest="proof_max_skew_s", type=float, metavar="S",
                   help=f"device proof: most seconds the x-device-timestamp may be off the "
                        f"server clock, at least 1 (default {d.proof_max_skew_s:g})")
    p.add_argument("--stream-max-seconds", type=float, metavar="S",
                   help=f"AuthenticateStream: most signal seconds before a decision, at most "
                        f"600 (default {d.stream_max_seconds:g})")
    p.add_argument("--signal-loss", dest="signal_loss_s", type=float, metavar="S",
                   help=f"streams: seconds without a usable window or message that end them "
                        f"(default {d.signal_loss_s:g})")
    p.add_argument("--continuous-mismatch-windows", type=int, metavar="N",
                   help=f"ContinuousAuthenticate: non-matching windows in a row that end it "
                        f"(default {d.continuous_mismatch_windows})")
    p.add_argument("--identify-max-k", type=int, metavar="N",
                   help=f"largest top_k of Identify (default {d.identify_max_k})")
    p.set_defaults(func=run)


_FLAG_KEYS = ("grpc_address", "metrics_address", "data_dir", "store_url", "store_key_file",
              "model_path", "kernel_backend", "api_keys_file", "allow_open_loopback",
              "require_device_proof", "presentation_attack_detection", "tls_cert_file",
              "tls_key_file", "tls_client_ca_file",
              "reuse_port", "max_workers", "max_concurrent_rpcs", "max_streams",
              "max_streams_per_client", "max_uploads_per_client", "max_message_bytes",
              "grace_period_s",
              "lockout_threshold", "lockout_seconds", "rate_limit_per_s", "rate_limit_burst",
              "rate_limit_lease", "session_ttl_s", "session_max_age_s",
              "audit_retention_days", "purge_interval_s", "proof_max_skew_s",
              "stream_max_seconds", "signal_loss_s", "continuous_mismatch_windows",
              "identify_max_k")


def _check_data_dir(path: str) -> None:
    """``data_dir`` must be a directory, or not exist yet (it is created)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing: created on start (which reports its errors)
        return
    if not stat.S_ISDIR(mode):
        from nacf_core.config import file_kind

        raise ValueError(f"option 'data_dir' must be a directory, but {path!r} is "
                         f"{file_kind(mode)}.")


def run(args: argparse.Namespace) -> int:
    # The handlers only note the signal; this thread acts on it. A handler runs in this
    # thread at an arbitrary point, also inside another handler: one that takes a lock
    # (threading.Event.set does) while the code or the handler it interrupted holds that
    # lock waits for itself, and each further signal nests another handler until a
    # RecursionError ends the process (reproduced outside nacf: a handler calling
    # Event.set, SIGHUPs every 0.5 ms, the main thread in Event.clear).
    got: list[int] = []

    def _note(signum, frame):
        got.append(signum)  # one C call, no lock

    # SIGHUP from the start: a key reload asked for while the server starts (the model,
    # the store) is done once it listens; its default action killed the process
    # (SIGTERM and SIGINT keep theirs until then: there is nothing to drain yet)
    main = threading.current_thread() is threading.main_thread()  # (signals: main only)
    hup_before = signal.signal(signal.SIGHUP, _note) if main else None
    server = 2
    try:
        server = _start(args)
    finally:
        if main and isinstance(server, int):  # not started: SIGHUP as before
            signal.signal(signal.SIGHUP, hup_before)
    if isinstance(server, int):
        return server
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _note)
    try:
        # One line on stdout that scripts can wait for.
        sc = f" metrics http://{server.sidecar.url.split('//', 1)[1]}" if server.sidecar else ""
        print(f"nacf serve: listening on {server.address}{sc}", flush=True)
        stop = None
        while stop is None:
            time.sleep(0.1)  # a signal cuts it short (its handler runs, then it resumes)
            reload = False
            while got:  # every signal noted since the last round, once
                signum = got.pop(0)
                if signum == signal.SIGHUP:
                    reload = True
                elif stop is None:
                    stop = signal.Signals(signum).name
            if reload and stop is None:  # re-read the API keys (rotation)
                _reload_keys(server)
        log.info("signal %s: draining", stop, extra={"event_type": "signal", "signal": stop})
        server.stop()
    finally:
        # drained (or failed): a late SIGHUP (a key reload), SIGTERM or SIGINT must not
        # turn the exit into a death by signal. Python puts its own handlers back to
        # SIG_DFL when the interpreter finalises (a SIGHUP then killed the process, exit
        # -1); ignored signals stay ignored
        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
    return 0


def _start(args: argparse.Namespace):
    """The started :class:`NacfServer`, or 2 after saying why it cannot start."""
    from nacf_core.server.app import limit_threads

    limit_threads()  # before numpy/numba spin up their pools
    from nacf_core.config import load_config
    from nacf_core.errors import NacfError
    from nacf_core.server.app import NacfServer

    try:
        config = load_config(args.config,
                             **{k: getattr(args, k, None) for k in _FLAG_KEYS})
        _check_data_dir(config.data_dir)
        server = NacfServer(config)  # (it checks the TLS files first)
    # ImportError: the kernel backend chosen is not built (kernels/_cpu.load_variant)
    except (NacfError, ValueError, OSError, ImportError) as e:
        log.error("nacf serve cannot start: %s", e, extra={"event_type": "startup_failed"})
        print(f"nacf serve: {e}", file=sys.stderr)
        return 2
    try:
        server.start()
    except (NacfError, ValueError, OSError) as e:
        log.error("nacf serve cannot start: %s", e, extra={"event_type": "startup_failed"})
        print(f"nacf serve: {e}", file=sys.stderr)
        server.stop(0)
        return 2
    return server


def _reload_keys(server) -> None:
    """SIGHUP: swap in the API keys as they are now; a bad file changes nothing."""
    try:
        before, now = server.reload_api_keys()
    except (ValueError, OSError) as e:
        log.error("API keys not reloaded: %s", e, extra={"event_type": "api_keys_reload",
                                                         "success": False})
        return
    log.info("API keys reloaded: %d key(s), %d before", now, before,
             extra={"event_type": "api_keys_reload", "success": True, "keys": now,
                    "keys_before": before})
