"""Build, start and stop the nacf gRPC server.

- ``nacf.v1.AuthService`` (:class:`~nacf_core.server.servicer.AuthServicer`), the
  stock ``grpc.health.v1`` health service (reporting the sidecar's readiness: the
  store answers and the server is not starting or draining) and server reflection.
- Limits: ``max_message_bytes`` (default 16 MiB) both ways — a 4-s 16-channel window
  at 1000 Hz is 256 KiB, an enrollment of a few minutes a few MB; a larger message
  gets ``RESOURCE_EXHAUSTED`` from gRPC before it reaches any handler.
  ``max_workers`` threads serve the unary calls. An open stream (``AuthenticateStream``,
  ``ContinuousAuthenticate``, reflection) holds a thread for its whole life (hours for a
  headset under continuous authentication), so the streams run on threads of their own,
  at most ``max_streams`` (:class:`~nacf_core.server.interceptors.StreamPool`), at most
  ``max_streams_per_client`` of them (default: half) one client's; a stream beyond
  either is answered ``RESOURCE_EXHAUSTED`` at once. A unary call waits for its request
  on its worker thread: at most ``max_uploads_per_client`` calls of one client (default:
  half of ``max_workers``) wait so at once; one beyond them is answered
  ``RESOURCE_EXHAUSTED`` unless one of them ends within ``UPLOAD_WAIT_S`` (see
  ``interceptors.UploadSlots``). gRPC admits
  ``max_concurrent_rpcs`` + ``max_streams`` calls in flight, so the unary calls keep
  ``max_concurrent_rpcs`` of them and their ``max_workers`` threads however many
  streams are open; beyond it gRPC answers ``RESOURCE_EXHAUSTED`` at once (counted by
  the interceptor, see ``AuthInterceptor.watch_concurrency``).
- Transport: TLS when ``tls_cert_file``/``tls_key_file`` are set, mTLS when
  ``tls_client_ca_file`` is set too.  Plaintext only on a loopback address (the log
  says so); anything else is refused at start.
- API keys: without keys (and without mTLS) the server refuses to start unless
  ``allow_open_loopback`` is set and it binds loopback.
- :meth:`NacfServer.stop` (the ``nacf serve`` SIGTERM handler) turns readiness off,
  refuses new calls and lets in-flight calls finish within ``grace_period_s``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nacf_core import __version__
from nacf_core.config import Config, parse_address, store_url_scheme
from nacf_core.errors import FailedPrecondition
from nacf_core.server.interceptors import AuthInterceptor, StreamPool
from nacf_core.server.servicer import SERVICE_NAME, add_to_server
from nacf_core.service import AuthService

__all__ = ["SERVICE_NAME", "BindError", "NacfServer", "build_service", "is_loopback",
           "keepalive_options", "limit_threads"]

log = logging.getLogger("nacf.server")

def limit_threads() -> None:
    """One BLAS/OpenMP/Numba thread per process: scale with processes, not threads.

    Sets the environment for libraries not loaded yet and ``threadpoolctl`` limits
    for those already loaded.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # threadpoolctl comes with scikit-learn; be safe anyway
        pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _key_file(config: Config) -> str | None:
    """The file the template key is read from: ``NACF_TEMPLATE_KEY_FILE`` >
    ``store_key_file`` > ``DATA_DIR/nacf.key``; ``None`` when ``NACF_TEMPLATE_KEY``
    holds the key itself."""
    if os.environ.get("NACF_TEMPLATE_KEY"):
        return None
    return (os.environ.get("NACF_TEMPLATE_KEY_FILE") or config.store_key_file
            or str(Path(config.data_dir) / "nacf.key"))


def _shared_store(url: str) -> bool:
    """A store other processes on other hosts share (PostgreSQL), as ``open_store`` reads
    ``url``: its scheme, case-insensitive, blanks around it ignored; a plain path and a
    ``sqlite://`` URL are a SQLite file, whose key lives in ``data_dir``."""
    return store_url_scheme(url) in ("postgresql", "postgres")


def _store_key(config: Config) -> Any:
    """The template key: env (``NACF_TEMPLATE_KEY[_FILE]``) > ``store_key_file`` >
    ``DATA_DIR/nacf.key`` (created 0600 on first start of the embedded store)."""
    from nacf_core.store import create_key_file, sqlite_path

    if os.environ.get("NACF_TEMPLATE_KEY") or os.environ.get("NACF_TEMPLATE_KEY_FILE"):
        return None  # open_store reads them (nacf_core.store.crypto.load_key)
    path = Path(_key_file(config))
    if config.store_key_file:
        return path
    if not path.exists():
        if _shared_store(config.store_url):
            raise FailedPrecondition(
                "no template key configured for a shared store: set NACF_TEMPLATE_KEY, "
                "NACF_TEMPLATE_KEY_FILE or store_key_file (every replica needs the same key).")
        db = sqlite_path(config.resolved_store_url)
        if db != ":memory:" and os.path.isfile(db) and os.path.getsize(db) > 0:
            # a new key cannot read it: made here, it only stood where the lost one belongs
            raise FailedPrecondition(
                f"the template key file {str(path)!r} is missing, but the store {db!r} "
                "exists, encrypted with that key: restore the key file (or give "
                "store_key_file, NACF_TEMPLATE_KEY_FILE or NACF_TEMPLATE_KEY); a new key "
                "cannot read the store (one never used: delete it to start anew).")
        _make_data_dir(config)
        try:
            create_key_file(path)
            log.info("created a template encryption key", extra={
                "event_type": "key_created", "path": str(path)})
        except FileExistsError:
            pass
        except OSError as exc:  # a read-only data_dir: say which option, and the ways out
            raise FailedPrecondition(
                f"cannot create the template key file {str(path)!r} in option 'data_dir' "
                f"({config.data_dir!r}): {exc.strerror or exc}; make the directory "
                "writable, or give store_key_file, NACF_TEMPLATE_KEY_FILE or "
                "NACF_TEMPLATE_KEY.") from None
    return path


def _make_data_dir(config: Config) -> None:
    """Create ``data_dir`` if missing; an error names the option (``OSError`` alone said
    "[Errno 20] Not a directory: ..." for a path under a file)."""
    try:
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FailedPrecondition(f"option 'data_dir': cannot create the directory "
                                 f"{config.data_dir!r}: {exc.strerror or exc}.") from None


def build_service(config: Config, metrics: Any = None) -> AuthService:
    """Load the model and the pipeline, open the store, and build the domain service."""
    from nacf_core.metrics import METRICS, InstrumentedKernels
    from nacf_core.model import Model, default_model
    from nacf_core.pipeline import Pipeline
    from nacf_core.store import open_store

    mt = METRICS if metrics is None else metrics
    # the model first: one that cannot be loaded leaves nothing behind (no data
    # directory, key file or store created, no schema migrated)
    model = Model.load(config.model_path) if config.model_path else default_model(16)
    # every kernel call of the pipeline (band-pass, artifacts, quality) is timed in
    # nacfauth_kernel_duration_seconds{kernel, backend}
    pipeline = Pipeline(model, backend=config.kernel_backend,
                        instrument=lambda mod, name: InstrumentedKernels(mod, name, mt))
    pad = _make_pad(model) if config.presentation_attack_detection else None
    if not model.sequential:  # (Model.load accepts none) every AuthenticateStream
        # decides with them: the server started and failed each INVALID_ARGUMENT
        raise FailedPrecondition(
            f"model file {config.model_path!r} has no sequential-test parameters (refit it "
            "with `nacf train`): AuthenticateStream could not decide.")
    window_s = float(model.window_s)
    if config.stream_max_seconds < window_s:  # every stream would be FAILED_PRECONDITION
        raise FailedPrecondition(
            f"option 'stream_max_seconds' ({config.stream_max_seconds:g} s) is below one "
            f"window of the model ({window_s:g} s): no AuthenticateStream could be "
            f"decided; give at least {window_s:g}.")
    _make_data_dir(config)
    store = open_store(config.resolved_store_url, _store_key(config))
    try:
        return AuthService(store, pipeline, config, metrics=metrics, pad=pad)
    except BaseException:
        store.close()
        raise


def _make_pad(model: Any) -> Any:
    """The model's presentation-attack detector. One that cannot be loaded is refused:
    serving without it (as an ``ImportError`` here once did, without a word) accepted
    replays while the configuration said they were refused. So is a model whose windows
    are shorter than the signal PAD judges: every ContinuousAuthenticate window, and an
    Authenticate probe that short once it matched, failed ``INVALID_ARGUMENT``."""
    try:
        from nacf_core.pad import MIN_SECONDS, PresentationAttackDetector
    except ImportError as exc:
        raise FailedPrecondition(
            "option 'presentation_attack_detection' is on but presentation-attack "
            f"detection cannot be loaded ({exc}); repair the installation, or turn the "
            "option off (--no-presentation-attack-detection) to serve without it.") from None
    if float(model.window_s) < MIN_SECONDS:
        raise FailedPrecondition(
            f"option 'presentation_attack_detection' is on but the model has "
            f"{float(model.window_s):g} s windows: presentation-attack detection judges "
            f"at least {MIN_SECONDS:g} s of signal (every ContinuousAuthenticate window, "
            "every probe); serve a model of longer windows, or turn the option off "
            "(--no-presentation-attack-detection).")
    return PresentationAttackDetector(list(model.ch_names))


#: the largest certificate, key or CA bundle file read
MAX_PEM_BYTES = 1 << 20
#: a certificate (or the last valid client CA) expiring within this many days is
#: warned about at start (``tls_cert_expiring``)
CERT_EXPIRY_WARNING_DAYS = 14


def _dates(cert: Any) -> str:
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    return (f"valid from {cert.not_valid_before_utc.strftime(fmt)} to "
            f"{cert.not_valid_after_utc.strftime(fmt)}")


def _check_validity(certs: list, option: str, path: str, what: str) -> None:
    """Refuse a certificate file none of whose ``certs`` is valid now (``ValueError``
    naming the option, the file and the dates); warn (``tls_cert_expiring``) when the
    last of the valid ones expires within :data:`CERT_EXPIRY_WARNING_DAYS`."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    valid = [c for c in certs if c.not_valid_before_utc <= now <= c.not_valid_after_utc]
    if not valid:
        c = certs[0] if len(certs) == 1 else max(certs, key=lambda c: c.not_valid_after_utc)
        why = (f"expired on {c.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
               if c.not_valid_after_utc < now else
               f"is not valid before {c.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
        which = "its certificate" if len(certs) == 1 else \
            f"none of its {len(certs)} certificates is valid now; the latest"
        raise ValueError(f"option {option!r}: {what} {path!r}: {which} {why} ({_dates(c)}); "
                         f"clients would fail every TLS handshake: renew it.")
    last = max(valid, key=lambda c: c.not_valid_after_utc)
    left = last.not_valid_after_utc - now
    if left < dt.timedelta(days=CERT_EXPIRY_WARNING_DAYS):
        days = left.total_seconds() / 86400
        log.warning("%s %s (option %r) expires on %s, in %.1f days: renew it (clients fail "
                    "every TLS handshake from then)", what, path, option,
                    f"{last.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC", days,
                    extra={"event_type": "tls_cert_expiring", "option": option,
                           "file": path, "not_after": last.not_valid_after_utc.isoformat(),
                           "days_left": round(days, 1)})


def read_tls_files(config: Config) -> tuple[bytes, bytes, bytes | None]:
    """``(key, certificate chain, client CA or None)`` PEM bytes, checked: gRPC reports an
    unusable certificate or key only as a port it cannot bind. ``ValueError`` naming the
    option and the file: not a regular file (or over 1 MiB), not PEM, an encrypted key,
    a key that does not belong to the first certificate, a key gRPC's TLS cannot use, a
    first certificate expired or not yet valid, a client CA file of which no certificate
    is valid now. One expiring within 14 days is logged as ``tls_cert_expiring``."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    from nacf_core.config import read_regular_file
    from nacf_core.errors import InvalidArgument

    def read(path: str, option: str, what: str) -> bytes:
        try:
            return read_regular_file(path, what, MAX_PEM_BYTES)
        except InvalidArgument as exc:  # missing, unreadable, a directory: name the option
            raise ValueError(f"option {option!r}: {exc}") from None

    def certs(path: str, option: str, what: str) -> tuple[bytes, list]:
        data = read(path, option, what)
        try:
            return data, x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError(f"option {option!r}: {what} {path!r} is not valid PEM: expected "
                             f"one or more '-----BEGIN CERTIFICATE-----' blocks.") from None

    cert_pem, chain = certs(config.tls_cert_file, "tls_cert_file", "TLS certificate file")
    # the server's own certificate only: an expired intermediate may be served on
    # purpose (a cross-signature old clients need, which new ones do not follow)
    _check_validity(chain[:1], "tls_cert_file", config.tls_cert_file, "TLS certificate file")
    path = config.tls_key_file
    key_pem = read(path, "tls_key_file", "TLS private key file")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # encrypted
        raise ValueError(f"option 'tls_key_file': TLS private key file {path!r} is "
                         f"encrypted; expected an unencrypted PEM private key.") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"option 'tls_key_file': TLS private key file {path!r} is not a "
                         f"valid PEM private key: expected a '-----BEGIN ... PRIVATE "
                         f"KEY-----' block.") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        match = (key.public_key().public_bytes(*spki)
                 == chain[0].public_key().public_bytes(*spki))
    except (ValueError, UnsupportedAlgorithm):  # a key type we cannot compare: gRPC checks
        match = True
    if not match:
        raise ValueError(f"option 'tls_key_file': the private key in {path!r} does not "
                         f"belong to the first certificate in {config.tls_cert_file!r}.")
    ca_pem = None
    if config.tls_client_ca_file:
        ca_pem, cas = certs(config.tls_client_ca_file, "tls_client_ca_file",
                            "TLS client CA file")
        # a bundle may hold an old CA beside its successor: refused only when no CA in
        # it is valid now (for a single CA: when it is out of its dates)
        _check_validity(cas, "tls_client_ca_file", config.tls_client_ca_file,
                        "TLS client CA file")
    if not _grpc_takes(key_pem, cert_pem, ca_pem):
        raise ValueError(
            f"option 'tls_key_file': gRPC's TLS library cannot use the private key in "
            f"{path!r} with the certificate in {config.tls_cert_file!r} (a key type or "
            f"curve TLS does not offer, e.g. DSA or ECDSA on secp256k1): use an RSA (2048 "
            f"bits or more) or ECDSA P-256/P-384 key.")
    return key_pem, cert_pem, ca_pem


def _grpc_takes(key_pem: bytes, cert_pem: bytes, ca_pem: bytes | None) -> bool:
    """Whether gRPC can serve TLS with these files: a throwaway server binds a free
    loopback port with them. ``True`` too when no plaintext port binds either (no
    loopback here: the credentials are not shown to be at fault, the real bind reports)."""
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                        require_client_auth=ca_pem is not None)
    for secure in (True, False):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        try:
            port = (server.add_secure_port("localhost:0", creds) if secure
                    else server.add_insecure_port("localhost:0"))
        except RuntimeError:
            port = 0
        finally:
            server.stop(None)
        if port:
            return secure
    return True


#: a connection quiet for this long is pinged (HTTP/2 PING) by the server; grpcio's
#: default is 2 hours, so a client that vanished without a FIN or RST (a laptop that
#: slept, a NAT that dropped its mapping) held its calls, and their threads, that long
KEEPALIVE_TIME_MS = 60_000
#: a ping not acknowledged within this closes the connection and cancels its calls
KEEPALIVE_TIMEOUT_MS = 20_000
#: the most often a client may ping a connection that carries no data (and one without
#: calls: keepalive_permit_without_calls); a client pinging more often gets a GOAWAY
#: ``too_many_pings`` after ``grpc.http2.max_ping_strikes`` (2) bad pings. 10 s is the
#: shortest keepalive grpc-go and grpc-java clients allow themselves.
MIN_CLIENT_PING_INTERVAL_MS = 10_000


def keepalive_options() -> list[tuple[str, int]]:
    """The gRPC server's keepalive: it pings a connection quiet for
    :data:`KEEPALIVE_TIME_MS` (with calls or without) and closes it when the ping is not
    answered within :data:`KEEPALIVE_TIMEOUT_MS` (80 s in all), so a dead client's calls
    are cancelled and give their threads back; clients' own keepalive pings are accepted
    every :data:`MIN_CLIENT_PING_INTERVAL_MS`, with calls or without."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # any ping of the server's (its flow-control probes too) unanswered for as long
        # closes the connection: a keepalive ping is not sent while another ping is out,
        # so with a probe out first only this bound held, grpcio's 1 minute
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # the server pings idle connections too, and clients accept pings
        ("grpc.keepalive_permit_without_calls", 1),
        # pings without data are not limited to 2 (grpcio's default), after which the
        # server stopped pinging a quiet call and a client gone later was never noticed
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
    ]


class BindError(OSError):
    """An address of the server's that cannot be bound; ``option`` names its option
    (``grpc_address``, ``metrics_address``), ``address`` the value."""

    def __init__(self, option: str, address: str, message: str) -> None:
        super().__init__(message)
        self.option = option
        self.address = address


class NacfServer:
    """The gRPC server with its sidecar.

    Parameters
    ----------
    config : Config
    service : AuthService, optional
        Built from ``config`` when omitted (and closed by :meth:`stop`).
    metrics : nacf_core.metrics.Metrics, optional
        Default: the process-wide ``METRICS``.
    sidecar : bool
        Start the metrics/health HTTP sidecar on ``config.metrics_address``.
    """

    def __init__(self, config: Config, service: AuthService | None = None, *,
                 metrics: Any = None, sidecar: bool = True) -> None:
        self.config = config
        host, _ = parse_address("grpc_address", config.grpc_address)
        self.host = host
        self.loopback = is_loopback(host)
        if not config.tls and not self.loopback:
            raise FailedPrecondition(
                f"refusing plaintext gRPC on {config.grpc_address}: plaintext is allowed on "
                "loopback only; set tls_cert_file and tls_key_file (and tls_client_ca_file "
                "for mTLS) or bind 127.0.0.1.")
        # the TLS files read and checked now, before anything is opened
        self._tls = read_tls_files(config) if config.tls else None
        mtls = bool(config.tls_client_ca_file)
        self.open_mode = False
        if not config.api_keys and not mtls:
            if not config.allow_open_loopback:
                where = (f"the keys file {config.api_keys_file!r} (option 'api_keys_file') "
                         "holds no key and NACF_API_KEYS gives none: add keys to either"
                         if config.api_keys_file else "set NACF_API_KEYS or api_keys_file")
                raise FailedPrecondition(
                    f"no API keys configured: {where} (or tls_client_ca_file for mTLS); to "
                    "run without keys on loopback only, pass --allow-open-loopback.")
            if not self.loopback:
                raise FailedPrecondition(
                    "--allow-open-loopback runs without API keys and only on a loopback "
                    f"address, but grpc_address is {config.grpc_address}.")
            self.open_mode = True
        if metrics is None:
            from nacf_core.metrics import METRICS as metrics
        self.metrics = metrics
        self._own_service = service is None
        self.service = service if service is not None else build_service(config, metrics)
        self.sidecar = None
        if sidecar and config.metrics_address:
            from nacf_core.sidecar import Sidecar

            self.sidecar = Sidecar(config.metrics_address, registry=metrics.registry,
                                   checks={"store": self.service.store.ping},
                                   metrics=metrics)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._streams: StreamPool | None = None
        self._interceptor: AuthInterceptor | None = None
        self.port = 0
        self._stop = threading.Event()
        # held while the health loop sets what it read, and while stop() starts draining
        self._health_lock = threading.Lock()
        self._health_thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # ------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    def ready(self) -> bool:
        """What ``/health/ready`` and ``grpc.health.v1`` report."""
        if self._stop.is_set():
            return False
        if self.sidecar is not None:
            return self.sidecar.readiness()[0]
        return self.service.ready()

    def start(self) -> NacfServer:
        cfg = self.config
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
            *keepalive_options(),
        ]
        self._streams = StreamPool(cfg.max_streams, cfg.streams_per_client)
        icp = self._interceptor = AuthInterceptor(
            cfg.api_keys, self.service, self.metrics, open_mode=self.open_mode,
            mtls=bool(cfg.tls_client_ca_file), streams=self._streams,
            uploads_per_client=cfg.uploads_per_client)
        self._executor = futures.ThreadPoolExecutor(max_workers=cfg.max_workers,
                                                    thread_name_prefix="nacf-grpc")
        server = grpc.server(
            self._executor,
            interceptors=[icp], options=opts,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs + cfg.max_streams)
        if not icp.watch_concurrency(server):
            log.warning("calls refused at max_concurrent_rpcs will not be counted in "
                        "nacfauth_auth_requests_total: this grpcio (%s) does not expose "
                        "its count of calls in flight as the versions nacf knows do",
                        grpc.__version__, extra={"event_type": "grpc_busy_uncounted"})
        add_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if cfg.tls:
            key_pem, cert_pem, ca_pem = self._tls
            creds = grpc.ssl_server_credentials(
                [(key_pem, cert_pem)], root_certificates=ca_pem,
                require_client_auth=bool(cfg.tls_client_ca_file))
        else:
            creds = None
        try:
            self.port = (server.add_secure_port(cfg.grpc_address, creds) if cfg.tls
                         else server.add_insecure_port(cfg.grpc_address))
        except RuntimeError:  # grpcio raises when the port cannot be bound
            self.port = 0
        if not self.port:
            server.stop(0)
            raise BindError("grpc_address", cfg.grpc_address,
                            f"cannot bind gRPC on {cfg.grpc_address}: address in use "
                            "(another nacf serve? use --reuse-port to share it on purpose) "
                            "or not available.")
        self._set_health(False)
        # the gauges read from the store, before the first scrape can come (the health
        # loop refreshes them every 2 s from then on): after a restart the active
        # sessions read 0 until then
        self.service.refresh_gauges()
        server.start()
        self.server = server
        if self.sidecar is not None:
            try:
                self.sidecar.start()
            except OSError as exc:  # a port in use, a host that does not resolve
                server.stop(0)
                self.server = None
                raise BindError("metrics_address", cfg.metrics_address,
                                f"cannot serve metrics on {cfg.metrics_address} (option "
                                f"'metrics_address', --metrics-address): "
                                f"{exc.strerror or exc}.") from None
            self.sidecar.set_ready(True)
        self._set_health(self.ready())
        self._health_thread = threading.Thread(target=self._health_loop,
                                               name="nacf-health", daemon=True)
        self._health_thread.start()
        threading.Thread(target=self._maintenance_loop, name="nacf-maintenance",
                         daemon=True).start()
        try:
            self.metrics.set_build_info(__version__, cfg.kernel_backend,
                                        self.service.model_version)
        except Exception:
            log.exception("build info")
        self._export_model_and_users()
        transport = ("mTLS" if cfg.tls_client_ca_file else "TLS") if cfg.tls else \
            "PLAINTEXT (loopback only)"
        log.info(f"gRPC listening on {self.address} with {transport}"
                 + ("; OPEN MODE: no API key required (loopback only)" if self.open_mode
                    else ""),
                 extra={"event_type": "server_started", "address": self.address,
                        "transport": transport, "open_mode": self.open_mode,
                        "max_message_bytes": cfg.max_message_bytes,
                        "max_concurrent_rpcs": cfg.max_concurrent_rpcs,
                        "max_workers": cfg.max_workers, "max_streams": cfg.max_streams,
                        "max_streams_per_client": cfg.streams_per_client,
                        "max_uploads_per_client": cfg.uploads_per_client,
                        "require_device_proof": cfg.require_device_proof,
                        "model_version": self.service.model_version})
        if not cfg.tls:
            log.warning("plaintext gRPC on loopback %s: use TLS for anything else",
                        self.address, extra={"event_type": "plaintext_loopback"})
        self._warn_other_models()
        self._warn_readable_secrets()
        return self

    def _warn_readable_secrets(self) -> None:
        """One warning per secret file other local users can read (group or other
        permission bits): the template key decrypts every stored template, the keys file
        holds the API keys, the TLS key is the server's identity, the SQLite store holds
        the audit trail and session hashes. A warning, not a
        refusal: mounted secrets are often 0444 inside a container no one else uses."""
        from nacf_core.store import sqlite_path

        cfg = self.config
        # the embedded store: audit trail, session hashes, encrypted templates (a file a
        # nacf of before made 0644, or one copied in, keeps its mode)
        db = None if _shared_store(cfg.store_url) else sqlite_path(cfg.resolved_store_url)
        for what, path in (("template key file", _key_file(cfg)),
                           ("api_keys_file", cfg.api_keys_file),
                           ("tls_key_file", cfg.tls_key_file),
                           ("SQLite store file", None if db == ":memory:" else db)):
            if not path:
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue
            if mode & 0o077:
                log.warning("%s %s can be read by other users (mode %04o): chmod 600 it",
                            what, path, mode & 0o777,
                            extra={"event_type": "secret_file_readable", "file": str(path),
                                   "mode": f"{mode & 0o777:04o}"})

    def _warn_other_models(self) -> None:
        """One warning at start when active users were enrolled under another model than
        the one served: Authenticate refuses them (FAILED_PRECONDITION, re-enroll) and
        Identify cannot search them, so after a model change the operator learns here
        how many must re-enroll (``nacf store stats`` lists them per model version)."""
        mine = self.service.model_version
        try:
            counts = self.service.store.count_users_by_model()
        except Exception as exc:  # a store that cannot answer now: the readiness probe's case
            log.warning("could not count the users enrolled under another model: %s", exc,
                        extra={"event_type": "users_of_other_model_unknown"})
            return
        other = {m: n for m, n in counts.items() if m != mine}
        if other:
            log.warning("%d active user(s) were enrolled under another model than %s: they "
                        "cannot authenticate or be identified until re-enrolled (Enroll "
                        "with update=true)", sum(other.values()), mine,
                        extra={"event_type": "users_of_other_model", "model_version": mine,
                               "users": sum(other.values()),
                               "users_by_model_version": other})

    def _export_model_and_users(self) -> None:
        """``nacfauth_model_accuracy`` from the model's calibration record (balanced
        accuracy of a one-window decision at the calibrated threshold, measured by
        cross-fitting on the training subjects) and ``nacfauth_daily_active_users`` from
        the store, so every replica on a shared store reports the same count."""
        model = getattr(getattr(self.service.rec, "pipeline", None), "model", None)
        calibration = (getattr(model, "info", None) or {}).get("calibration")
        if calibration:
            try:
                self.metrics.set_model_accuracy_from(self.service.model_version, calibration)
            except ValueError:
                log.warning("the model's calibration record cannot give an accuracy",
                            extra={"event_type": "model_accuracy_unavailable"})
        store = self.service.store
        self.metrics.use_daily_active_users_from(lambda: store.stats().active_users_today)

    def _set_health(self, ok: bool) -> None:
        st = health_pb2.HealthCheckResponse.SERVING if ok else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", st)
        self.health.set(SERVICE_NAME, st)

    def _health_loop(self) -> None:
        while not self._stop.wait(2.0):
            try:
                ok = self.ready()
            except Exception:
                log.exception("health refresh failed")
                ok = False
            with self._health_lock:
                # a drain begun while the readiness was read (a store ping: up to 2 s)
                # set NOT_SERVING: what was read before it must not say SERVING again
                if not self._stop.is_set():
                    self._set_health(ok)
            # a failed gauge refresh (logged, and counted in nacfauth_store_errors_total)
            # is not a readiness verdict: grpc.health.v1 says what /health/ready says
            try:
                self.service.refresh_gauges()
            except Exception:
                log.exception("gauge refresh failed",
                              extra={"event_type": "maintenance_failed"})

    def _maintenance_loop(self) -> None:
        """Session expiry and the retention purges, on a thread of their own: a backlog
        (the first purge after an upgrade: 32 s of batches for 2.3 M audit rows on
        SQLite) held the health loop, so grpc.health.v1 and the gauges went stale for as
        long. A failed round (logged, counted in nacfauth_store_errors_total) is no
        readiness verdict either."""
        while not self._stop.wait(2.0):
            try:
                self.service.maintenance()
            except Exception:
                log.exception("maintenance failed", extra={"event_type": "maintenance_failed"})

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped."""
        return self._stopped.wait(timeout)

    def reload_api_keys(self, env: Any = None) -> tuple[int, int]:
        """Re-read the API keys (``api_keys_file`` and ``NACF_API_KEYS`` from ``env``,
        default ``os.environ``) and swap them in at once: a call already authorised
        goes on, the next one is checked against the new keys. What ``nacf serve`` does
        on SIGHUP, so keys rotate without a restart. Returns ``(keys before, keys
        now)``.

        Raises ``ValueError`` and changes nothing when the file cannot be read or
        parsed (the message names it, as at start-up) or would leave no key while keys
        are in use: without mTLS every call would be refused; with mTLS a client
        certificate alone would carry every scope, each key's holder becoming admin by
        leaving its key out. A server without keys (open on loopback, mTLS alone) may
        reload none."""
        from nacf_core.config import load_api_keys

        env = os.environ if env is None else env
        keys = load_api_keys(self.config.api_keys_file, env.get("NACF_API_KEYS"))
        before = len(self.config.api_keys)
        if not keys and (before or not (self.open_mode or self.config.tls_client_ca_file)):
            raise ValueError(
                f"the keys file {self.config.api_keys_file or '(none)'} and NACF_API_KEYS "
                "hold no key, which would "
                + ("admit every client certificate alone with every scope"
                   if self.config.tls_client_ca_file else "refuse every call")
                + f"; the {before} key(s) in use are kept.")
        if self._interceptor is not None:
            self._interceptor.set_api_keys(keys)
            if keys and self.open_mode:
                # started open on loopback, keys configured since: they are required
                # from now on (a caller without one must not keep every scope)
                self._interceptor.open_mode = False
        if keys and self.open_mode:
            self.open_mode = False
            log.warning("API keys configured: calls without a key are refused from now on",
                        extra={"event_type": "api_keys_reload"})
        elif keys and not self.config.api_keys and self.config.tls_client_ca_file:
            log.warning("API keys configured: a client certificate alone no longer admits a "
                        "call; every call needs a key from now on",
                        extra={"event_type": "api_keys_reload"})
        self.config.api_keys = keys
        return before, len(keys)

    def stop(self, grace: float | None = None) -> None:
        """Drain: not ready, refuse new calls, let in-flight ones finish, then close."""
        if self._stop.is_set():
            self._stopped.wait()
            return
        with self._health_lock:
            self._stop.set()
            self._set_health(False)
        g = self.config.grace_period_s if grace is None else grace
        log.info("draining", extra={"event_type": "server_draining", "grace_s": g})
        if self.sidecar is not None:
            self.sidecar.set_ready(False)
        handlers_done = True
        if self.server is not None:
            self.server.stop(g).wait()
            # gRPC cancels the calls still running after the grace period but does not
            # wait for their handlers, which may still be inside the store: closing it
            # under them could tear a transaction (or crash in the SQLite module)
            handlers_done = self._wait_for_handlers(max(5.0, g))
        if self._interceptor is not None:
            self._interceptor.close()
        if self.sidecar is not None:
            self.sidecar.stop()
        if not handlers_done:
            log.warning("handlers still running %.0f s after the grace period: the store "
                        "is left open for them (the process exit closes it)", max(5.0, g),
                        extra={"event_type": "server_stop_handlers_running"})
        elif self._own_service:
            try:
                self.service.store.close()
            except Exception:
                log.exception("closing the store")
        log.info("stopped", extra={"event_type": "server_stopped"})
        self._stopped.set()

    def _wait_for_handlers(self, timeout_s: float) -> bool:
        """Wait until the handlers of the gRPC pool and the stream pool have returned (at
        most ``timeout_s``)."""
        done = threading.Event()

        def shutdown() -> None:
            for pool in (self._executor, self._streams):
                if pool is not None:
                    pool.shutdown(wait=True)
            done.set()

        threading.Thread(target=shutdown, name="nacf-stop", daemon=True).start()
        return done.wait(timeout_s)

    def __enter__(self) -> NacfServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0)
