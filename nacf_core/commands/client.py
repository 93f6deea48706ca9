"""``nacf client``: the headset side of a running ``nacf serve``, from the command line.

Reads a headset (or any SOURCE) on this machine and calls the server:

- ``enroll``: the first ``--seconds`` of the source become the user's template;
- ``register-device``: binds a headset to the user and keeps its secret in a file
  (created 0600; shown once by the server, so the file is prepared before the call);
- ``authenticate``: streams the source to ``AuthenticateStream`` with the device proof
  (HMAC of the secret) until the server decides; with ``--continuous``, then keeps the
  session verified with ``ContinuousAuthenticate`` while the headset streams.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import stat
import sys
import time
from collections.abc import Iterator
from typing import Any

from nacf_core.commands._args import (address, finite_float, metadata_value, non_empty,
                                      stdout_reader_gone)
from nacf_core.commands._signals import interrupts_held, terminations_interrupt

__all__ = ["register", "run"]

_EPILOG = """\
SOURCE is one of:
  cyton:PORT[?montage=Fp1,Fp2,...]     OpenBCI Cyton, 8 channels, 250 Hz
  cyton-daisy:PORT                     OpenBCI Cyton+Daisy, 16 channels, 125 Hz
  lsl:NAME[?type=EEG&units=uV]         a Lab Streaming Layer stream (units: the voltage
                                       unit of every channel, instead of the stream's)
  file:PATH[?speed=N&units=uV]         a recording replayed as a live source (units: EDF/BDF,
                                       the voltage unit of every signal, instead of the header's)
The API key: --api-key-file FILE (its first line), else NACF_API_KEY, else the first
key of NACF_API_KEYS. A key or secret file that others can open is refused (chmod 600).
TLS: --tls-ca (the server's CA; without it plaintext), and --tls-cert/--tls-key for a
client certificate (mTLS).
Exit status: 0 accepted (or done), 1 rejected (or the server ended the session),
2 an error (an option, the source, the server's refusal), 130 interrupted.
"""

_MAX_SMALL_FILE = 4096  # an API key or a device secret file
_MAX_PEM_FILE = 1 << 20  # a TLS certificate (chain) or key, as nacf serve reads them
# a headset's id: the device proof carries it in x-device-id metadata, so one that is not
# ASCII could be bound (the server takes any printable id) but never authenticate
_DEVICE_ID = metadata_value("device id", "the device proof carries it in gRPC metadata")

#: the client's keepalive while a call is open: a ping when nothing came for this long,
#: and the connection ends when it is not answered within KEEPALIVE_TIMEOUT_MS (a server
#: gone without closing it: its machine asleep, a NAT that dropped the mapping); nacf
#: serve accepts a client's pings every 10 s or more rarely
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", type=address(), default="127.0.0.1:50051",
                        metavar="HOST:PORT", help="nacf serve's gRPC address "
                                                  "(default 127.0.0.1:50051)")
    common.add_argument("--api-key-file", default=None, metavar="FILE",
                        help="file whose first line is the API key (default: NACF_API_KEY, "
                             "else the first key of NACF_API_KEYS)")
    common.add_argument("--tls-ca", default=None, metavar="FILE",
                        help="CA certificate (PEM) of the server: connect over TLS")
    common.add_argument("--tls-cert", default=None, metavar="FILE",
                        help="client certificate (PEM) for mTLS, with --tls-key")
    common.add_argument("--tls-key", default=None, metavar="FILE",
                        help="client private key (PEM) for mTLS, with --tls-cert")
    common.add_argument("--timeout", type=finite_float(0.1, 3600.0), default=60.0,
                        metavar="S", help="deadline of each call in seconds (default 60; "
                                          "--continuous streams have none)")
    common.add_argument("--verbose", action="store_true",
                        help="show nacf's JSON-lines INFO log on stderr (default: warnings "
                             "only)")
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--source", required=True, type=non_empty("SOURCE"),
                        help="SOURCE (see below)")
    source.add_argument("--montage", default=None,
                        help="channel names in order, comma-separated, or a preset "
                             "(ultracortex-8, ultracortex-16)")
    source.add_argument("--source-timeout", type=finite_float(0.1, 3600.0), default=10.0,
                        metavar="S", help="give up after S seconds without a sample "
                                          "(default 10)")

    p = subparsers.add_parser(
        "client", help="enroll, register a headset and authenticate from a source "
                       "against a running nacf serve",
        description=__doc__, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    kw = {"epilog": _EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}

    e = sub.add_parser("enroll", parents=[common, source], help="enroll a user from a source",
                       description="Enroll USER from the first --seconds of SOURCE.", **kw)
    e.add_argument("--user", required=True, type=non_empty("user id"))
    e.add_argument("--seconds", type=finite_float(4.0, 600.0), default=60.0,
                   help="seconds of signal to enroll with, 4-600 (default 60)")
    e.add_argument("--update", action="store_true",
                   help="replace the template of an enrolled user (needs the admin scope)")
    e.set_defaults(func=run)

    r = sub.add_parser("register-device", parents=[common],
                       help="bind a headset to a user and keep its secret in a file",
                       description="Bind --device-id to --user; write its secret to "
                                   "--secret-file (created 0600).", **kw)
    r.add_argument("--user", required=True, type=non_empty("user id"))
    r.add_argument("--device-id", required=True, type=_DEVICE_ID)
    r.add_argument("--secret-file", required=True, type=non_empty("file name"),
                   help="where the device secret goes (refused if it exists, unless --rotate)")
    r.add_argument("--rotate", action="store_true",
                   help="issue a new secret for a bound headset (ends the sessions it opened)")
    r.set_defaults(func=run)

    a = sub.add_parser("authenticate", parents=[common, source],
                       help="authenticate a user from a source (AuthenticateStream)",
                       description="Stream SOURCE to AuthenticateStream as --user until the "
                                   "server decides.", **kw)
    a.add_argument("--user", required=True, type=non_empty("user id"))
    a.add_argument("--device-id", default=None, type=_DEVICE_ID,
                   help="the headset's device id (with --secret-file: the device proof)")
    a.add_argument("--secret-file", default=None,
                   help="the headset's secret (from register-device): send the device proof")
    a.add_argument("--max-seconds", type=finite_float(0.0, 3600.0), default=0.0,
                   help="most signal seconds before the server decides (0: its own limit)")
    a.add_argument("--continuous", action="store_true",
                   help="once accepted, keep the session verified (ContinuousAuthenticate) "
                        "until the server ends it, the source ends or Ctrl-C")
    a.add_argument("--token-file", default=None,
                   help="write the session token there (created 0600) when accepted")
    a.set_defaults(func=run)


def _read_small(path: str, what: str) -> str:
    """The first line of a small text file (an API key, a device secret) that only its
    owner may open (refused otherwise, as ssh refuses a private key others can read)."""
    from nacf_core.config import read_text_file

    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} is not a file.")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ValueError(f"{what} {path!r} is open to other users (mode {mode:04o}); make it "
                         f"private: chmod 600 {shlex.quote(path)}.")
    # regular, at most _MAX_SMALL_FILE bytes, UTF-8 (InvalidArgument, a NacfError, says so)
    text = read_text_file(path, what, _MAX_SMALL_FILE)
    line = text.splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise ValueError(f"{what} {path!r} is empty.")
    return line


def _api_key(args: argparse.Namespace) -> str | None:
    """The API key, checked as nacf serve checks its keys (what gRPC metadata carries):
    one it cannot carry is said now, not at the first call after the source was read."""
    from nacf_core.config import check_api_key

    if args.api_key_file is not None:  # '' too: an unset variable, refused (not a file)
        key = _read_small(args.api_key_file, "--api-key-file")
        check_api_key(key, f"--api-key-file {args.api_key_file!r}: the key")
        return key
    key = os.environ.get("NACF_API_KEY", "").strip()
    if key:
        check_api_key(key, "NACF_API_KEY")
        return key
    keys = [k.strip() for k in os.environ.get("NACF_API_KEYS", "").split(",") if k.strip()]
    if keys:
        check_api_key(keys[0], "NACF_API_KEYS: its first key")
    return keys[0] if keys else None


def _channel(args: argparse.Namespace):
    import grpc

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together (a client certificate and "
                         "its key).")
    options = [("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
               ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
               # a flow-control probe out first holds the keepalive ping back: the same
               # bound for any ping (grpcio's is a minute)
               ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
               ("grpc.http2.max_pings_without_data", 0)]
    if args.tls_ca is None and args.tls_cert is None:
        return grpc.insecure_channel(args.server, options=options)

    def pem(path: str | None, option: str, what: str) -> bytes | None:
        return None if path is None else _read_pem(path, option, what)

    ca = pem(args.tls_ca, "--tls-ca", "certificate")
    cert = pem(args.tls_cert, "--tls-cert", "certificate")
    key = pem(args.tls_key, "--tls-key", "private key")
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                         certificate_chain=cert)
    return grpc.secure_channel(args.server, creds, options=options)


def _read_pem(path: str, option: str, what: str) -> bytes:
    """The PEM bytes of a TLS file (``what``: ``"certificate"`` or ``"private key"``),
    checked: gRPC takes anything and reports a file that is not PEM only as a server it
    cannot reach. ``ValueError`` naming the option: not a regular file (a FIFO, a device,
    a directory; never read, so never blocked on), over 1 MiB, or not PEM of that kind."""
    from nacf_core.config import read_regular_file
    from nacf_core.errors import InvalidArgument

    try:
        data = read_regular_file(path, f"{option} file", _MAX_PEM_FILE)
    except InvalidArgument as e:  # "cannot read --tls-ca file '...': ...", "... is a FIFO"
        raise ValueError(str(e)) from None
    if what == "certificate":
        from cryptography import x509

        try:
            x509.load_pem_x509_certificates(data)
            return data
        except ValueError:
            block = "one or more '-----BEGIN CERTIFICATE-----' blocks"
    else:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        try:
            serialization.load_pem_private_key(data, password=None)
            return data
        except TypeError:
            raise ValueError(f"{option} {path!r} is an encrypted private key; expected an "
                             "unencrypted PEM private key.") from None
        except (ValueError, UnsupportedAlgorithm):
            block = "a '-----BEGIN ... PRIVATE KEY-----' block"
    raise ValueError(f"{option} {path!r} is not a PEM {what}: expected {block}.")


def _check_server(channel, args: argparse.Namespace) -> None:
    """The server answers its health check (the address, TLS) before the source is read:
    a wrong address or CA must not cost the wearer the seconds of an enrollment first."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=min(args.timeout, 10.0))
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = ""
            if (args.tls_ca is None and args.tls_cert is None
                    and "Socket closed" in (e.details() or "")):
                hint = (" It closed the connection, as a server with TLS closes a plaintext "
                        "one: give its CA with --tls-ca.")
            raise ValueError(f"cannot reach nacf serve at {args.server} ({e.code().name}: "
                             f"{e.details()}).{hint}") from None
        return  # it answered (a proxy without the health service): the calls will tell
    if r.status != health_pb2.HealthCheckResponse.SERVING:
        raise ValueError(f"nacf serve at {args.server} is not serving (health "
                         f"{health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)}: "
                         "starting or shutting down).")


def run(args: argparse.Namespace) -> int:
    import logging

    import grpc

    from nacf_core.errors import NacfError

    nacf_log = logging.getLogger("nacf")
    level = nacf_log.level
    if not args.verbose:  # the decisions stay readable
        nacf_log.setLevel(max(nacf_log.getEffectiveLevel(), logging.WARNING))

    # SIGTERM: unwind like Ctrl-C (the source is closed)
    with terminations_interrupt(hup=False):
        try:
            key = _api_key(args)
            md = (("x-api-key", key),) if key else ()
            with _channel(args) as channel:
                from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg

                _check_server(channel, args)
                stub = pbg.AuthServiceStub(channel)
                return _ACTIONS[args.action](args, stub, md)
        except grpc.RpcError as e:
            if (e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    and e.details() == "Deadline Exceeded"):
                # gRPC's own words for the deadline this client set (the server's say why)
                print(f"nacf client {args.action}: no answer within --timeout "
                      f"{args.timeout:g} s (DEADLINE_EXCEEDED); give a longer --timeout.",
                      file=sys.stderr)
                return 2
            print(f"nacf client {args.action}: the server answered {e.code().name}: "
                  f"{e.details()}", file=sys.stderr)
            return 2
        except (ValueError, TypeError, OSError, NacfError, TimeoutError) as e:
            if isinstance(e, BrokenPipeError) and stdout_reader_gone():
                raise  # the output's reader went away: main() ends this as SIGPIPE would
            print(f"nacf client {args.action}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"nacf client {args.action}: interrupted.", file=sys.stderr)
            return 130
        finally:
            nacf_log.setLevel(level)


@contextlib.contextmanager
def _blocks(args: argparse.Namespace) -> Iterator[Any]:
    """The source opened (a Cyton's session started, an LSL stream resolved), then read
    as blocks; on leaving, the reader stops before the source closes."""
    from nacf_core.client import Blocks
    from nacf_core.hardware.sources import open_source

    with open_source(args.source, montage=args.montage) as src, \
            Blocks(src, timeout=args.source_timeout, name=args.source) as blocks:
        yield blocks


def _enroll(args: argparse.Namespace, stub, md) -> int:
    from nacf_core.client import enroll_request

    t0 = time.perf_counter()
    with _blocks(args) as blocks:  # the source is read, then closed before the call
        _check_model(args, stub, md, blocks)
        req = enroll_request(args.user, blocks, args.seconds, update=args.update)
    # once the call is sent the server enrolls the user whatever becomes of the call: a
    # first interrupt waits for its answer, a second stops at once and says what to check
    with interrupts_held(f"nacf client enroll: waiting for the server's answer to Enroll "
                          f"(it enrolls {args.user!r} all the same once it has the signal); "
                          "Ctrl-C again to stop now.", again=True) as held:
        if held:  # before the call: nothing was sent
            raise KeyboardInterrupt
        call = stub.Enroll.future(req, metadata=md, timeout=args.timeout)
        try:
            r = call.result()
        except KeyboardInterrupt:
            if not call.cancel():  # it had ended: its answer (or its error) stands
                r = call.result()
            else:
                print(f"nacf client enroll: interrupted once Enroll was sent: the server may "
                      f"have enrolled {args.user!r} all the same. To know: GetUser (an "
                      "admin key), or this enroll again: ALREADY_EXISTS means it was.",
                      file=sys.stderr, flush=True)
                raise
    reasons = sorted({e.reason for e in r.rejected})
    print(f"enrolled {r.user_id}: template v{r.template_version}, {r.epochs_used} epochs "
          f"used, {r.epochs_rejected} rejected{' (' + ', '.join(reasons) + ')' if reasons else ''}"
          f", quality {r.quality:.2f}, model {r.model_version}, "
          f"{(time.perf_counter() - t0):.1f} s", flush=True)
    if held:
        raise KeyboardInterrupt
    return 0


def _check_model(args: argparse.Namespace, stub, md, blocks) -> None:
    """The source's rate and channels checked against the server's model (``GetModel``)
    before its seconds are recorded, not learnt from ``Enroll``'s refusal after them; a
    server without ``GetModel`` (older) leaves it to ``Enroll``."""
    import grpc

    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core.channels import pick

    try:
        m = stub.GetModel(pb.GetModelRequest(), metadata=md, timeout=min(args.timeout, 10.0))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return
        raise
    if not m.min_sample_rate_hz <= blocks.sfreq <= m.max_sample_rate_hz:
        raise ValueError(f"the source's rate, {blocks.sfreq:g} Hz, is outside the "
                         f"{m.min_sample_rate_hz:g}-{m.max_sample_rate_hz:g} Hz the server "
                         "takes; nothing was recorded.")
    try:
        pick(blocks.ch_names, list(m.channel_names))
    except ValueError as e:  # InvalidArgument: what is missing, what the source has
        raise ValueError(f"the source cannot be enrolled with this server's model "
                         f"({m.model_version}): {e} Nothing was recorded (--montage names "
                         "the source's channels).") from None


def _register_device(args: argparse.Namespace, stub, md) -> int:
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core.config import CompleteOrNothing

    _not_read_here(args, "--secret-file", "the device secret", ("--api-key-file",))
    if os.path.isdir(args.secret_file):  # not "exists ... or --rotate": neither would do
        raise IsADirectoryError(f"--secret-file {args.secret_file!r} is a directory, not a "
                                "file name.")
    # one run at a time writes a secret file: two at once both called the server, and
    # the file kept the last one's secret, the other's headset (or, two rotations of one,
    # the secret the server kept) bound to a secret nobody holds. Held until the secret
    # is in the file; the second run stops here, before any call
    with _secret_file_lock(args.secret_file), \
            _reserved(args.secret_file, args.rotate) as reserved:
        # the file is prepared before the call: the server shows the secret once, so a
        # file that cannot be written must stop this before the server issues it; and an
        # interrupt once the call is sent waits for the secret to be in the file (the
        # server binds the headset all the same: a secret dropped would leave it bound to
        # one nobody holds)
        with interrupts_held(f"nacf client register-device: stopping once the secret is "
                              f"in {args.secret_file} (the server issues it all the "
                              "same).") as held, \
                CompleteOrNothing(args.secret_file, what="--secret-file", mode=0o600) as fh:
            if held:  # before the call: nothing was sent
                raise KeyboardInterrupt
            r = stub.RegisterDevice(pb.RegisterDeviceRequest(user_id=args.user,
                                                             device_id=args.device_id,
                                                             rotate=args.rotate),
                                    metadata=md, timeout=args.timeout)
            fh.write(r.device_secret + "\n")
        reserved.clear()  # the secret is in the file: it stays
    print(f"headset {r.device_id} "
          + ("rotated (a new secret; the sessions opened with the old one ended)"
             if r.rotated else "registered" + (" (it was not bound to the user: nothing "
                                                "to rotate)" if args.rotate else ""))
          + f" for {r.user_id}; its secret is in {args.secret_file} (keep it on the "
          "headset's machine only)", flush=True)
    if held:
        raise KeyboardInterrupt
    return 0


@contextlib.contextmanager
def _secret_file_lock(path: str) -> Iterator[None]:
    """An exclusive lock on ``path`` for this run (``flock`` on a hidden lock file beside
    it, removed on leaving); ``ValueError`` at once when another run holds it."""
    import fcntl

    folder, name = os.path.split(os.path.abspath(path))
    lock = os.path.join(folder, f".{name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise OSError(e.errno, f"cannot write {path!r}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"--secret-file {path!r} is being written by another nacf "
                             f"client register-device (it holds {lock!r}); nothing was "
                             "sent: let it end, then look at the file.") from None
        try:  # the lock file of a run that ended as this one opened it: take a new one
            same = os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(lock)  # while held: a run waiting on this one sees it gone
        except OSError:
            pass
        os.close(fd)


@contextlib.contextmanager
def _reserved(path: str, rotate: bool) -> Iterator[list[os.stat_result]]:
    """Without ``rotate``, ``path`` created empty (0600, ``O_EXCL``: refused if it exists,
    whoever made it) until the secret replaces it; removed unless the block cleared the
    list it yields. With ``rotate``, nothing (the file is replaced)."""
    if rotate:
        yield []
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValueError(f"--secret-file {path!r} exists: it may hold the secret of a bound "
                         "headset (shown once); give another file, or --rotate to issue a "
                         "new secret in its place.") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"--secret-file {path!r} is a directory, not a file "
                                "name.") from None
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path!r}: {e.strerror}") from None
    try:
        held = [os.fstat(fd)]
    finally:
        os.close(fd)
    try:
        yield held
    finally:
        if held:  # not replaced by the secret: ours still, removed
            try:
                if os.path.samestat(os.stat(path), held[0]):
                    os.unlink(path)
            except OSError:
                pass


def _not_read_here(args: argparse.Namespace, option: str, what: str,
                   inputs: tuple[str, ...]) -> None:
    """``ValueError`` when the file ``option`` writes is one of the files ``inputs`` this
    run reads (a key, a secret shown once): ``what`` would replace what it holds."""
    path = getattr(args, option[2:].replace("-", "_"))
    for other in inputs:
        given = getattr(args, other[2:].replace("-", "_"), None)
        try:
            same = given is not None and os.path.samefile(path, given)
        except (OSError, ValueError):  # one of them is not there (or no name at all)
            same = False
        if same:
            raise ValueError(f"{option} {path!r} is the {other}: {what} would replace what "
                             "it holds; give another file.")


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix)) if unix > 0 else "-"


def _authenticate(args: argparse.Namespace, stub, md) -> int:
    from nacf_core.config import CompleteOrNothing

    secret = None
    if args.secret_file is not None:
        if not args.device_id:
            raise ValueError("--secret-file needs --device-id (the proof signs the headset's "
                             "id).")
        secret = _read_small(args.secret_file, "--secret-file")
    if args.token_file is not None:
        _not_read_here(args, "--token-file", "the session token",
                       ("--secret-file", "--api-key-file"))
    # the token file is prepared before the call: one that cannot be written stops this
    # before a session opens (not after, with the session open and its token lost)
    token = (CompleteOrNothing(args.token_file, what="--token-file", mode=0o600)
             if args.token_file is not None else None)
    try:
        return _authenticate_with(args, stub, md, secret, token)
    finally:
        if token is not None:
            token.discard()  # not accepted (or failed): no file; an accept's stays


def _authenticate_with(args: argparse.Namespace, stub, md, secret: str | None, token) -> int:
    from nacf_core.client import authenticate_stream, continuous

    with _blocks(args) as blocks:
        res = authenticate_stream(stub, md, args.user, blocks,
                                  device_id=args.device_id or "", secret=secret,
                                  max_seconds=args.max_seconds, timeout=args.timeout)
        r = res.response
        print(f"{'ACCEPT' if r.accepted else 'REJECT'} {args.user}: score {r.score:+.3f} "
              f"(threshold {r.threshold:+.3f}) after {r.seconds_used:.1f} s of signal, "
              f"quality {r.quality:.2f}, decision {res.latency_s * 1e3:.1f} ms after the last "
              f"chunk" + (f"; session open until {_when(r.session_expires_at_unix)}"
                          if r.accepted else "")
              + (f"; reasons: {'; '.join(r.reasons)}" if r.reasons and not r.accepted else "")
              + (f" ({blocks.filled} dropped samples interpolated)" if blocks.filled else ""),
              flush=True)
        if not r.accepted:
            return 1
        if token is not None:
            with token as fh:
                fh.write(r.session_token + "\n")
        if not args.continuous:
            return 0
        ended = False
        until = r.session_expires_at_unix
        try:
            for u in continuous(stub, md, r.session_token, blocks,
                                device_id=args.device_id or ""):
                state = u.State.Name(u.state)
                print(f"{state} score {u.score:+.3f} (threshold {u.threshold:+.3f}), quality "
                      f"{u.quality:.2f}, {u.seconds_streamed:.0f} s streamed"
                      + (f", session until {_when(u.session_expires_at_unix)}"
                         if state == "VERIFIED" else "")
                      + (f": {u.reason}" if u.reason else ""), flush=True)
                ended = state == "ENDED"
                if state == "VERIFIED":
                    until = u.session_expires_at_unix
        except Exception as e:
            if e is not blocks.error:
                raise
            # the headset failed (its stream lost, its port gone): not the signal's end
            print(f"nacf client {args.action}: --continuous stopped: {e} The session stays "
                  f"open until {_when(until)} (it expires unless verified).", file=sys.stderr)
            return 2
        if ended:
            return 1
        print("the source ended: the session stays open until it expires", flush=True)
        return 0


_ACTIONS = {"enroll": _enroll, "register-device": _register_device,
            "authenticate": _authenticate}
