"""Configuration of the nacf server: one flat table of options.

Every option has a default, a TOML key (the field name, at the top level of the file
or under a ``[nacf]`` table), an environment variable (``NACF_`` + the field name in
upper case, e.g. ``NACF_GRPC_ADDRESS``) and a ``nacf serve`` flag.  Precedence, lowest
first: defaults, the TOML file (``--config FILE`` or ``NACF_CONFIG``), environment
variables, command-line flags.

``NACF_API_KEYS`` is special: a comma-separated list of keys that carry every scope.
A keys file (``api_keys_file``) gives each key its scopes, one per line::

    # key                          scopes
    3f0c...e1                      authenticate
    9ab2...77                      authenticate,enroll,admin   # ops

(A line starting with ``#`` is a comment, and so is the rest of a line from a ``#`` after
the key; a ``#`` within a key is the key's.)  (TOML is accepted too:
``[keys] "<key>" = ["authenticate", "enroll"]``.)  A key is printable ASCII without
leading or trailing spaces: gRPC metadata carries nothing else.

Every value from outside is checked and refused with a ``ValueError`` that names the
file or the environment variable and the option: in the file, a value of the option's
TOML type (a boolean, a number, a string; not a quoted number, nor ``0`` for ``false``);
an integer option takes an integer (or an integral float in TOML) in its range (at most
``2**31 - 1``), a number option a finite number in ``(0, 1e9]`` (``rate_limit_burst``
and ``proof_max_skew_s`` at least 1; never a boolean), a file or directory name no
leading or trailing whitespace.  The config and keys files must be regular files of at
most :data:`MAX_FILE_BYTES` of UTF-8 text.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nacf_core.errors import InvalidArgument

__all__ = ["MAX_FILE_BYTES", "OPTION_HELP", "SCOPES", "CompleteOrNothing", "Config",
           "check_api_key", "file_kind", "fsync_dir", "load_api_keys", "load_config",
           "parse_address", "read_regular_file", "read_text_file", "short_repr"]

SCOPES = ("authenticate", "enroll", "admin")

#: Largest config or keys file read (bytes).
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Largest value of an integer option (a C ``int``, as gRPC's options are).
_INT_MAX = 2 ** 31 - 1
#: Largest value of a number option: 1e9 s is 31 years, below ``threading.TIMEOUT_MAX``.
_FLOAT_MAX = 1e9
#: ``{option: (lowest, highest)}`` of the integer options.
_INT_RANGES: dict[str, tuple[int, int]] = {
    **{name: (1, _INT_MAX) for name in (
        "max_workers", "max_concurrent_rpcs", "max_streams", "lockout_threshold",
        "continuous_mismatch_windows",
        "identify_max_k", "rate_limit_lease")},
    "max_streams_per_client": (0, _INT_MAX),
    "max_uploads_per_client": (0, _INT_MAX),
    "max_message_bytes": (64 * 1024, 1024 ** 3),
}
#: The number options; each in ``(0, _FLOAT_MAX]``, or ``[lowest, _FLOAT_MAX]`` when
#: :data:`_FLOAT_LOWEST` gives one (``_FLOAT_HIGHEST`` for a lower top).
_FLOAT_OPTIONS = ("grace_period_s", "proof_max_skew_s", "lockout_seconds", "rate_limit_per_s",
                  "rate_limit_burst", "session_ttl_s", "session_max_age_s", "stream_max_seconds",
                  "signal_loss_s",
                  "audit_retention_days", "purge_interval_s")
#: ``{option: lowest}`` of the number options a smaller positive value would break: a
#: request takes one whole token, so a bucket of less than one never admits any; a device
#: proof's timestamp is whole seconds, so a fresh one is up to 1 s behind the server.
_FLOAT_LOWEST: dict[str, float] = {"rate_limit_burst": 1.0, "proof_max_skew_s": 1.0}
#: ``{option: highest}`` of the number options a larger value would let one call hold the
#: server: an AuthenticateStream keeps a stream thread and its signal for up to
#: stream_max_seconds (+ signal_loss_s) while its client sends; a sign-in decides in
#: seconds (the thresholds are calibrated for up to 5 windows, 20 s), so 10 minutes, 30
#: times the default, is past any use, and a typo (20000 for 20) is refused.
_FLOAT_HIGHEST: dict[str, float] = {"stream_max_seconds": 600.0}
#: Longest API key (gRPC refuses metadata over 8 KiB by default).
_MAX_KEY_LENGTH = 4096

#: One line of documentation per option (``nacf serve --help`` prints these).
OPTION_HELP: dict[str, str] = {
    "grpc_address": "HOST:PORT the gRPC server listens on",
    "metrics_address": "HOST:PORT of the Prometheus/health sidecar (empty: no sidecar)",
    "data_dir": "directory of the embedded SQLite store and its key file",
    "store_url": "store URL: sqlite:///PATH.db or postgresql://... (default: SQLite in data_dir)",
    "store_key_file": "file holding the template-encryption key (NACF_TEMPLATE_KEY or "
                      "NACF_TEMPLATE_KEY_FILE win; default: DATA_DIR/nacf.key, created 0600 "
                      "if missing)",
    "model_path": "model file (default: the shipped 16-channel model, eegmmidb-16ch)",
    "kernel_backend": "kernel backend: cython, numba or reference",
    "reuse_port": "SO_REUSEPORT: several nacf serve processes on one host share grpc_address "
                  "(scale with processes; give each its own metrics_address)",
    "max_workers": "gRPC worker threads of the unary calls (open streams never take them)",
    "max_concurrent_rpcs": "in-flight RPC bound beside the open streams; beyond it calls get "
                           "RESOURCE_EXHAUSTED at once",
    "max_streams": "most open streams (AuthenticateStream, ContinuousAuthenticate, "
                   "reflection), each on a thread of its own; beyond it a stream gets "
                   "RESOURCE_EXHAUSTED at once",
    "max_streams_per_client": "most open streams of one client (API key; client "
                              "certificate; address in open mode): beyond it its stream "
                              "gets RESOURCE_EXHAUSTED at once; 0: half of max_streams, "
                              "rounded up",
    "max_uploads_per_client": "most unary calls of one client (API key; client certificate; "
                              "address in open mode) holding a worker thread while their "
                              "request is on its way: beyond it a call gets "
                              "RESOURCE_EXHAUSTED before its request is read, unless one of "
                              "them ends within 0.25 s; 0: half of max_workers, rounded up",
    "max_message_bytes": "maximum gRPC message size, both directions (bytes)",
    "grace_period_s": "SIGTERM: seconds in-flight calls get to finish",
    "tls_cert_file": "server certificate (PEM); with tls_key_file enables TLS",
    "tls_key_file": "server private key (PEM)",
    "tls_client_ca_file": "CA (PEM) for client certificates: enables mTLS (a verified client "
                          "certificate carries every scope while no API key is configured; "
                          "with keys, each call needs its key and gets its scopes)",
    "api_keys_file": "keys file: one key per line followed by its scopes",
    "allow_open_loopback": "run without API keys, only when bound to loopback",
    "require_device_proof": "Authenticate requires the x-device-* proof metadata",
    "presentation_attack_detection": "reject replayed and non-physiological probes "
                                     "(nacf_core.pad) after a biometric accept (Enroll "
                                     "refuses non-physiological signals either way)",
    "proof_max_skew_s": "device proof: maximum |now - x-device-timestamp| in seconds "
                        "(at least 1: the timestamp is whole seconds)",
    "lockout_threshold": "consecutive failed authentications that lock a user",
    "lockout_seconds": "how long a lockout lasts (UnlockUser lifts it)",
    "rate_limit_per_s": "token bucket per client: tokens per second",
    "rate_limit_burst": "token bucket per client: capacity",
    "rate_limit_lease": "token bucket: most tokens a process takes from the shared bucket in "
                        "one store transaction and hands out itself (at most a tenth of the "
                        "burst, held at most 0.5 s; 1: a store write per request)",
    "session_ttl_s": "seconds a session lasts from its opening, or from the last window a "
                     "ContinuousAuthenticate stream verified (each renews it, up to "
                     "session_max_age_s)",
    "session_max_age_s": "longest a session lasts from its opening, however often "
                         "ContinuousAuthenticate renews it (seconds; NIST SP 800-63B: 12 h)",
    "stream_max_seconds": "AuthenticateStream: most signal seconds before a decision (at "
                          "least one window of the model: 4 s for the shipped one; at "
                          "most 600, 10 minutes: a sign-in decides in seconds, and a "
                          "stream holds a thread and its signal that long; 60 at most "
                          "for a headset at another rate than the model's)",
    "continuous_mismatch_windows": "ContinuousAuthenticate: consecutive non-matching windows "
                                   "that end the session (wearer changed)",
    "signal_loss_s": "ContinuousAuthenticate: seconds without a usable window (or without "
                     "data, or beyond a window's time) that end the session (signal "
                     "lost); AuthenticateStream: seconds without a message, or beyond "
                     "real time, that end it (DEADLINE_EXCEEDED, as a missing start "
                     "message in either stream)",
    "audit_retention_days": "audit rows, and sessions that ended, older than this are purged",
    "purge_interval_s": "how often the retention purge runs (sessions expire every 30 s, "
                        "or every purge_interval_s if shorter)",
    "identify_max_k": "largest top_k Identify accepts (and its default, 5, when smaller)",
}


@dataclass
class Config:
    """Every option of the server; see :data:`OPTION_HELP`."""

    grpc_address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:9464"
    data_dir: str = "."
    store_url: str = ""
    store_key_file: str = ""
    model_path: str = ""
    kernel_backend: str = "cython"
    reuse_port: bool = False
    max_workers: int = 8
    max_concurrent_rpcs: int = 64
    max_streams: int = 16
    max_streams_per_client: int = 0
    max_uploads_per_client: int = 0
    max_message_bytes: int = 16 * 1024 * 1024
    grace_period_s: float = 10.0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    api_keys_file: str = ""
    allow_open_loopback: bool = False
    require_device_proof: bool = True
    presentation_attack_detection: bool = True
    proof_max_skew_s: float = 60.0
    lockout_threshold: int = 5
    lockout_seconds: float = 900.0
    rate_limit_per_s: float = 20.0
    rate_limit_burst: float = 40.0
    rate_limit_lease: int = 32
    session_ttl_s: float = 900.0
    session_max_age_s: float = 43200.0
    stream_max_seconds: float = 20.0
    continuous_mismatch_windows: int = 2
    signal_loss_s: float = 10.0
    audit_retention_days: float = 90.0
    purge_interval_s: float = 3600.0
    identify_max_k: int = 100
    #: ``{key: frozenset(scopes)}``; from NACF_API_KEYS and the keys file (not a TOML key).
    api_keys: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------
    def validate(self) -> Config:
        """Raise ``ValueError`` naming the option when a value is out of range."""
        parse_address("grpc_address", self.grpc_address)
        if self.metrics_address:
            parse_address("metrics_address", self.metrics_address)
        for name in (*_INT_RANGES, *_FLOAT_OPTIONS):
            _check_range(name, getattr(self, name), f"option {name!r}")
        _check_backend(self.kernel_backend, "option 'kernel_backend'")
        if self.session_max_age_s < self.session_ttl_s:
            raise ValueError(f"option 'session_max_age_s' ({self.session_max_age_s:g} s) "
                             f"is below 'session_ttl_s' ({self.session_ttl_s:g} s): a "
                             "session would outlive its maximum age; raise it.")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("options 'tls_cert_file' and 'tls_key_file' go together; "
                             "got only one of them.")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("option 'tls_client_ca_file' (mTLS) needs 'tls_cert_file' and "
                             "'tls_key_file'.")
        for n, (key, scopes) in enumerate(self.api_keys.items(), 1):
            check_api_key(key, f"API key #{n}")
            bad = set(scopes) - set(SCOPES)
            if bad:
                raise ValueError(f"API key scopes must be among {', '.join(SCOPES)}; got "
                                 f"{', '.join(sorted(bad))}.")
        return self

    @property
    def streams_per_client(self) -> int:
        """The streams one client may hold open: ``max_streams_per_client``, or half of
        ``max_streams`` rounded up when it is 0; never more than ``max_streams``."""
        n = self.max_streams_per_client or (self.max_streams + 1) // 2
        return min(n, self.max_streams)

    @property
    def uploads_per_client(self) -> int:
        """The unary calls of one client that may wait for their request on a worker
        thread at once: ``max_uploads_per_client``, or half of ``max_workers`` rounded up
        when it is 0; never more than ``max_workers``."""
        n = self.max_uploads_per_client or (self.max_workers + 1) // 2
        return min(n, self.max_workers)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(Path(self.data_dir) / 'nacf.db').resolve()}"

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------
def parse_address(name: str, value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``; IPv6 as ``[::1]:50051``. Port 0: any free port.

    Refused with a ``ValueError`` naming ``name``: what gRPC would read otherwise or
    cannot bind (an IPv6 address without brackets, which gRPC takes whole with port 443;
    brackets around anything but an IPv6 address; spaces; a port that is not decimal
    digits in [0, 65535]).
    """
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"option {name!r} must be HOST:PORT, got {short_repr(value)}.")
    host, _, port = value.rpartition(":")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise ValueError(f"option {name!r} must be HOST:PORT with a port in [0, 65535] "
                         f"(decimal digits), got {short_repr(value)}.")
    if host.startswith("[") or host.endswith("]") or "[" in host or "]" in host:
        inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"option {name!r}: brackets hold an IPv6 address only "
                             f"([::1]:{port}), got {short_repr(value)}.") from None
        host = inner
    elif ":" in host:
        raise ValueError(f"option {name!r}: an IPv6 host goes in brackets: "
                         f"'[{host}]:{port}', got {short_repr(value)}.")
    if not host:
        raise ValueError(f"option {name!r} must be HOST:PORT with a host and a port in "
                         f"[0, 65535], got {short_repr(value)}.")
    if any(c.isspace() for c in host):
        raise ValueError(f"option {name!r}: the host must not contain spaces, got "
                         f"{short_repr(value)}.")
    return host, int(port)


def file_kind(mode: int) -> str:
    """What an ``os.stat`` mode is, for an error message: ``"a regular file"``,
    ``"a directory"``, ``"a FIFO"``, ``"a character device"``, ``"a block device"`` or
    ``"a special file"``."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def read_regular_file(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, refusing anything else.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        Names the file in the error, e.g. ``"model file"``.
    max_bytes : int
        Largest size accepted: a bigger file is refused, never read.

    Returns
    -------
    bytes

    Raises
    ------
    InvalidArgument
        The file cannot be opened, is not a regular file (a directory, a FIFO, a device
        such as ``/dev/zero``) or is bigger than ``max_bytes``.  The file is opened
        non-blocking, so a FIFO without a writer does not block.
    """
    shown = repr(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) \
        else repr(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, TypeError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise InvalidArgument(f"cannot read {what} {shown}: {reason}.") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"{what} {shown} is {file_kind(mode)}; expected a regular "
                                  "file.")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # one byte past the limit tells "too large"
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {shown}: {exc.strerror or exc}.") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise InvalidArgument(f"{what} {shown} is larger than the limit of {max_bytes} bytes.")
    return data


def read_text_file(path: str | os.PathLike, what: str, max_bytes: int) -> str:
    """:func:`read_regular_file` decoded as UTF-8 (a byte-order mark is dropped);
    ``InvalidArgument`` naming the first byte that is not."""
    data = read_regular_file(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what} {os.fsdecode(path)!r} is not UTF-8 text (byte "
                              f"{exc.start}: {data[exc.start:exc.start + 1]!r}).") from None


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries to disk, so a file just created or renamed there survives
    a power cut (best effort: some file systems refuse to open or fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CompleteOrNothing:
    """A file that becomes ``path`` only if its ``with`` block ends without an error.

    It is written under a hidden name of its own beside ``path`` (two writers of one
    path never share it), flushed to disk, then renamed over ``path`` and the folder's
    entry flushed; on an error or an interruption it is removed, and ``path`` keeps what
    it held. ``binary`` opens it for bytes, else for text (``newline=""``); ``what``
    names ``path`` in the refusal of a directory or an empty name (``"--out"``);
    ``mode``: its permission bits before the umask (``0o600`` for a secret).
    """

    def __init__(self, path: str | os.PathLike, *, binary: bool = False,
                 what: str = "path", mode: int = 0o666) -> None:
        self.path = os.fspath(path)
        if not self.path:  # not the working directory's parent's entry of it
            raise FileNotFoundError(f"{what} '' is an empty file name; expected a file "
                                    "to write.")
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"{what} {self.path!r} is a directory, not a file name.")
        folder, name = os.path.split(os.path.abspath(self.path))
        self.folder = folder
        for _ in range(16):
            self.tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.part")
            try:  # mode 0666 less the umask, as open(path, "w") would create it
                fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OSError(exc.errno, f"cannot write {self.path!r}: {exc.strerror}") \
                    from None
            break
        else:  # pragma: no cover - 16 collisions of 48 random bits
            raise FileExistsError(f"cannot create a temporary file beside {self.path!r}.")
        self.fh = open(fd, "wb") if binary else open(fd, "w", newline="")
        self._finished = False  # renamed to path, or dropped

    def __enter__(self) -> Any:
        return self.fh

    def discard(self) -> None:
        """Drop the file unless its ``with`` block has made it ``path`` already (then
        nothing happens); ``path`` keeps what it held, and a ``with`` block ending after
        this leaves it alone."""
        if not self._finished:
            self._finished = True
            self._discard()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            if exc_type is None:
                self.fh.flush()
                os.fsync(self.fh.fileno())
                self.fh.close()
                os.replace(self.tmp, self.path)
                fsync_dir(self.folder)
                return
        except BaseException:
            self._discard()
            raise
        self._discard()

    def _discard(self) -> None:
        try:
            self.fh.close()
        except OSError:  # the full disk again: the file goes anyway
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _read_toml_or_text(path: str | os.PathLike, what: str, toml: bool) -> Any:
    """A config or keys file as text, or parsed as TOML when ``toml``."""
    text = read_text_file(path, what, MAX_FILE_BYTES)
    shown = repr(os.fsdecode(path))
    if not toml:
        return text
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {shown} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} {shown} is not valid TOML: nested too deeply.") from None


def short_repr(value: Any) -> str:
    """``repr(value)``, shortened for an error message."""
    r = repr(value)
    return r if len(r) <= 60 else r[:50] + f"... ({len(r)} chars)"


def _check_range(name: str, value: Any, label: str, raw: Any = None) -> None:
    """Refuse a value of an integer or number option outside its range.

    ``label`` names the option (and where it came from), ``raw`` the value as given
    (default ``value``) for the message.
    """
    shown = short_repr(value if raw is None else raw)
    if name in _INT_RANGES:
        lo, hi = _INT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{label} must be an integer in [{lo}, {hi}], got {shown}.")
    elif name in _FLOAT_OPTIONS:
        lowest = _FLOAT_LOWEST.get(name)
        highest = _FLOAT_HIGHEST.get(name, _FLOAT_MAX)
        # comparisons, not float(): an int beyond the float range must not overflow
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not (0 < value if lowest is None else lowest <= value) \
                or not value <= highest:
            within = f"(0, {highest:g}]" if lowest is None else \
                f"[{lowest:g}, {highest:g}]"
            raise ValueError(f"{label} must be a finite number in {within}, got {shown}.")


def _check_backend(value: Any, label: str) -> None:
    if value not in ("cython", "numba", "reference"):
        raise ValueError(f"{label} must be one of 'cython', 'numba', 'reference', got "
                         f"{short_repr(value)}.")


def check_api_key(key: Any, label: str) -> None:
    """Refuse an API key gRPC metadata cannot carry; the message never shows the key."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{label} is empty or not a string.")
    if len(key) > _MAX_KEY_LENGTH:
        raise ValueError(f"{label} is {len(key)} characters long; at most {_MAX_KEY_LENGTH} "
                         "are allowed.")
    if not all(" " <= c <= "~" for c in key) or key != key.strip():
        raise ValueError(f"{label} must be printable ASCII (gRPC metadata carries nothing "
                         "else) without leading or trailing spaces; it holds a control or "
                         "non-ASCII character or starts or ends with a space.")


#: The options that name a file or a directory.
_PATH_OPTIONS = frozenset({"data_dir", "store_key_file", "model_path", "tls_cert_file",
                           "tls_key_file", "tls_client_ca_file", "api_keys_file"})
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _coerce(name: str, raw: Any, kind: type, label: str | None = None) -> Any:
    """``raw`` as the type of option ``name``, checked; ``label`` says where it came from."""
    label = label or f"option {name!r}"
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower() if isinstance(raw, (str, int)) else None
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):  # not "": a blank value is no "false"
            return False
        raise ValueError(f"{label} must be a boolean (true/false), got {short_repr(raw)}.")
    if kind is int:
        if isinstance(raw, float) and raw.is_integer():  # False for 3.9, inf and nan
            value = int(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and _INT_TEXT.fullmatch(raw.strip()):
            s = raw.strip()
            # longer than any allowed value: out of range, without parsing all the digits
            value = int(s) if len(s) <= 20 else (-1 if s[0] == "-" else 1) * (_INT_MAX + 1)
        else:
            raise ValueError(f"{label} must be an integer, got {short_repr(raw)}.")
        _check_range(name, value, label, raw)
        return value
    if kind is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"{label} must be a number, got {short_repr(raw)}.")
        if isinstance(raw, str):
            try:
                value: int | float = float(raw.strip())
            except ValueError:
                raise ValueError(f"{label} must be a number, got {short_repr(raw)}.") from None
        else:
            value = raw
        _check_range(name, value, label, raw)
        return float(value)
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"{label} must be a string, got {short_repr(raw)}.")
    if isinstance(raw, str) and _CONTROL.search(raw):
        raise ValueError(f"{label} must not contain control characters, got {short_repr(raw)}.")
    value = str(raw)
    if name in _PATH_OPTIONS and value != value.strip():
        # kept, a stray space names another file, or another directory: data_dir's would
        # be made in the working directory, a new empty store and key apart from the users
        raise ValueError(f"{label} has leading or trailing whitespace, got "
                         f"{short_repr(raw)}: a file or directory name keeps it, so this "
                         "names another one; remove it.")
    # what Config.validate checks, here too so that the message says where it came from
    if name in ("grpc_address", "metrics_address") and (value or name == "grpc_address"):
        try:
            parse_address(name, value)
        except ValueError as exc:  # its messages begin "option '<name>'"
            raise ValueError(str(exc).replace(f"option {name!r}", label, 1)) from None
    if name == "kernel_backend":
        _check_backend(value, label)
    if name == "store_url":
        _check_store_url(value, label)
    return value


def _check_toml_type(name: str, raw: Any, kind: type, label: str) -> None:
    """Refuse a TOML value of another type than option ``name``'s: TOML has types, so a
    quoted number, a number for a boolean (``require_device_proof = 0``) or for a file
    name is a mistake, not text to parse as an environment variable's is. (An integer
    option takes an integral float too; its value is checked by :func:`_coerce`.)"""
    if kind is bool:
        ok, want = isinstance(raw, bool), "a boolean"
    elif kind in (int, float):
        ok = isinstance(raw, (int, float)) and not isinstance(raw, bool)
        want = "an integer" if kind is int else "a number"
    else:
        ok, want = isinstance(raw, str), "a string"
    if not ok:
        how = "in quotes" if kind is str else "unquoted"
        raise ValueError(f"{label} must be {want}, got {short_repr(raw)} (a TOML "
                         f"{_toml_type(raw)}; write {want} {how}).")


def _toml_type(value: Any) -> str:
    for kind, shown in ((bool, "boolean"), (int, "integer"), (float, "float"),
                        (str, "string"), (list, "array"), (dict, "table")):
        if isinstance(value, kind):
            return shown
    return "date or time"


_KINDS = {f.name: {"bool": bool, "int": int, "float": float}.get(f.type, str)
          for f in fields(Config) if f.name != "api_keys"}


def load_api_keys(path: str | os.PathLike | None = None,
                  env: str | None = None) -> dict[str, frozenset[str]]:
    """Keys from ``NACF_API_KEYS`` (every scope) and from a keys file.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The keys file (``api_keys_file``): text, or TOML when it ends in ``.toml``.
    env : str, optional
        The value of ``NACF_API_KEYS``: comma-separated keys.

    Returns
    -------
    dict of str to frozenset of str
        ``{key: scopes}``.

    Raises
    ------
    ValueError
        A file that cannot be read or parsed, a key gRPC metadata cannot carry, scopes
        outside :data:`SCOPES`, a key given twice (in the file, or in the file and the
        variable); the message names the file (and line) or the variable.
    """
    keys: dict[str, frozenset[str]] = {}
    env_keys = [k.strip() for k in (env or "").split(",") if k.strip()]
    for n, k in enumerate(env_keys, 1):
        check_api_key(k, f"NACF_API_KEYS: key #{n} of {len(env_keys)}")
        keys[k] = frozenset(SCOPES)
    if not path:
        return keys
    p = Path(path)
    what = "keys file (option 'api_keys_file')"
    items: list[tuple[str, str, Any, str]] = []  # (where, key, scopes, shown as "on ...")
    if p.suffix == ".toml":
        doc = _read_toml_or_text(p, what, toml=True)
        others = [k for k in doc if k != "keys"]
        if others:  # a misspelt [keys] would give no key at all, without a word
            tables = [k for k in others if isinstance(doc[k], dict)]
            # a top-level entry may be a key put outside [keys]: never shown
            got = (f"a table [{tables[0]}]" if tables else f"{len(others)} top-level "
                   f"entr{'y' if len(others) == 1 else 'ies'} outside it (not shown: "
                   "it may be a key)")
            raise ValueError(f"{what} {str(p)!r}: expected only a [keys] table of "
                             f"\"<key>\" = [\"<scope>\", ...], got {got}.")
        data = doc.get("keys", {})
        if not isinstance(data, dict):
            raise ValueError(f"{what} {str(p)!r}: 'keys' must be a table of "
                             f"\"<key>\" = [\"<scope>\", ...], got {type(data).__name__}.")
        for n, (k, v) in enumerate(data.items(), 1):
            where = f"{p}: key #{n} of [keys]"
            if isinstance(v, str):
                v = v.split(",")
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"{where}: scopes must be a list of strings or a "
                                 f"comma-separated string, got {short_repr(v)}.")
            items.append((where, k, v, f"as key #{n} of [keys]"))
    else:
        text = _read_toml_or_text(p, what, toml=False)
        for n, line in enumerate(text.splitlines(), 1):
            # a comment: a line starting with '#', or what follows the key from a '#' on
            # (a key may hold '#': it is printable ASCII, as NACF_API_KEYS takes it)
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            scopes = parts[1].split("#", 1)[0].strip() if len(parts) == 2 else ""
            if not scopes:  # a key alone: never shown (a message may reach the log)
                raise ValueError(f"{p}:{n}: expected '<key> <scope>[,<scope>...]', got "
                                 f"key {parts[0][:4]}... without scopes.")
            items.append((f"{p}:{n}", parts[0], scopes.replace(" ", "").split(","),
                          f"on line {n}"))
    # a key given twice is refused, not given the union of its scopes: a later line meant
    # to narrow a key (or a key of NACF_API_KEYS, which has every scope) would not
    first: dict[str, str] = dict.fromkeys(keys, "in NACF_API_KEYS (every scope)")
    for where, k, scopes, place in items:
        check_api_key(k, f"{where}: the key")
        if k in first:
            raise ValueError(f"{where}: key {k[:4]}... is given {first[k]} already; give "
                             "each key once, with all its scopes.")
        first[k] = place
        s = frozenset(x.strip() for x in scopes if x.strip())
        bad = s - set(SCOPES)
        if bad or not s:
            raise ValueError(f"{where}: key {k[:4]}...: scopes must be among "
                             f"{', '.join(SCOPES)}, got {sorted(s)}.")
        keys[k] = s
    return keys


#: NACF_ variables that are not options but are read by nacf itself
_OTHER_VARIABLES = frozenset({"NACF_CONFIG", "NACF_API_KEYS", "NACF_TEMPLATE_KEY",
                              "NACF_TEMPLATE_KEY_FILE", "NACF_KERNEL_ISA"})


def _warn_misspelt_variables(env: dict[str, str]) -> None:
    """Log a warning for each ``NACF_`` variable that is no option but looks like one
    (``NACF_RATE_LIMIT`` for ``NACF_RATE_LIMIT_PER_S``, ``NACF_SESSION_TTL`` for
    ``NACF_SESSION_TTL_S``): it would be ignored without a word. Variables that
    resemble no option are left alone (other tools share the prefix)."""
    known = {"NACF_" + k.upper() for k in _KINDS}
    for var in sorted(env):
        if not var.startswith("NACF_") or var in known or var in _OTHER_VARIABLES:
            continue
        near = difflib.get_close_matches(var, sorted(known | _OTHER_VARIABLES), n=1,
                                         cutoff=0.75)
        if near:
            logging.getLogger("nacf.config").warning(
                "environment variable %s is not a nacf option and is ignored; did you mean "
                "%s? (nacf serve --help lists every option and its variable)", var, near[0])


def store_url_scheme(url: str) -> str:
    """The scheme of a store URL, lower case, blanks around the URL ignored; ``""`` for a
    plain path (a SQLite file)."""
    url = (url or "").strip()
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _check_store_url(value: str, where: str) -> None:
    """An empty store URL given on purpose is refused: left out, store_url is the local
    SQLite store in data_dir, and a replica given an empty one (a deployment that fills
    NACF_STORE_URL from a secret with no value) would quietly keep users, lockouts and
    sessions of its own, apart from the others'."""
    if not value.strip():
        raise ValueError(f"{where} is empty: leave it out (unset) for the local SQLite store "
                         "in data_dir, or give the store's URL (sqlite:///PATH.db or "
                         "postgresql://...); an empty URL is refused so that a replica "
                         "missing its shared store's URL does not start on a store of its "
                         "own.")
    scheme = store_url_scheme(value)
    if scheme and scheme not in ("sqlite", "postgresql", "postgres"):
        # refused here, before a data directory or a key file is made for it
        raise ValueError(f"{where} {value!r} has the scheme {scheme!r}: expected "
                         "sqlite:///PATH.db, postgresql://user@host:port/dbname, or a "
                         "plain path to a SQLite file.")


def load_config(path: str | os.PathLike | None = None, *, env: dict[str, str] | None = None,
                **overrides: Any) -> Config:
    """Defaults < TOML file < environment < ``overrides`` (``None`` values ignored).

    Parameters
    ----------
    path : str or os.PathLike, optional
        The TOML file (``--config``); default ``NACF_CONFIG``.
    env : dict of str to str, optional
        The environment (default ``os.environ``): ``NACF_<OPTION>`` and ``NACF_API_KEYS``.
        An empty variable is unset, but ``NACF_METRICS_ADDRESS=`` turns the sidecar off
        (as ``metrics_address = ""`` and ``--metrics-address ''`` do) and an empty
        ``NACF_STORE_URL`` (or ``store_url``) is refused.
    **overrides
        Option values (the command-line flags).

    Returns
    -------
    Config

    Raises
    ------
    ValueError
        A wrong value, naming the option and where it came from (the file, the
        environment variable), or a file that cannot be read or parsed.
    """
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    what = "config file (--config)" if path else "config file (NACF_CONFIG)"
    path = path or env.get("NACF_CONFIG") or None
    if path:
        data = _read_toml_or_text(path, what, toml=True)
        if isinstance(data.get("nacf"), dict):
            nested = data.pop("nacf")
            both = sorted(set(data) & set(nested))
            if both:
                raise ValueError(f"{path}: option {both[0]!r} is given both at the top level "
                                 "and under [nacf]; give it once.")
            data = {**data, **nested}
        for k, v in data.items():
            if k not in _KINDS:
                raise ValueError(f"{path}: unknown option {k!r}; known options: "
                                 f"{', '.join(sorted(_KINDS))}.")
            _check_toml_type(k, v, _KINDS[k], f"{path}: option {k!r}")
            values[k] = _coerce(k, v, _KINDS[k], f"{path}: option {k!r}")
    for k, kind in _KINDS.items():
        var = "NACF_" + k.upper()
        ev = env.get(var)
        # empty: unset (the default), but for the two options whose empty value is not
        # their default: an empty NACF_METRICS_ADDRESS turns the sidecar off, as '' does in
        # the file and the flag, and an empty NACF_STORE_URL is refused as '' is there (the
        # kernels too read an empty NACF_KERNEL_BACKEND as unset)
        if ev is not None and (ev != "" or k in ("metrics_address", "store_url")):
            values[k] = _coerce(k, ev, kind, f"environment variable {var} (option {k!r})")
    _warn_misspelt_variables(env)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in _KINDS:
            raise ValueError(f"unknown option {k!r}.")
        values[k] = _coerce(k, v, _KINDS[k])
    values["api_keys"] = load_api_keys(values.get("api_keys_file"), env.get("NACF_API_KEYS"))
    return Config(**values)
