"""Configuration of the nacf server: one flat table of options.

Every option has a default, a TOML key (the field name, at the top level of the file
or under a ``[nacf]`` table), an environment variable (``NACF_`` + the field name in
upper case, e.g. ``NACF_GRPC_ADDRESS``) and, for the common ones, a ``nacf serve``
flag.  Precedence, lowest first: defaults, the TOML file (``--config FILE`` or
``NACF_CONFIG``), environment variables, command-line flags.

``NACF_API_KEYS`` is special: a comma-separated list of keys that carry every scope.
A keys file (``api_keys_file``) gives each key its scopes, one per line::

    # key                          scopes
    3f0c...e1                      authenticate
    9ab2...77                      authenticate,enroll,admin

(TOML is accepted too: ``[keys] "<key>" = ["authenticate", "enroll"]``.)
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["OPTION_HELP", "SCOPES", "Config", "load_api_keys", "load_config", "parse_address"]

SCOPES = ("authenticate", "enroll", "admin")

#: One line of documentation per option (``nacf serve --help`` prints these).
OPTION_HELP: dict[str, str] = {
    "grpc_address": "HOST:PORT the gRPC server listens on",
    "metrics_address": "HOST:PORT of the Prometheus/health sidecar (empty: no sidecar)",
    "data_dir": "directory of the embedded SQLite store and its key file",
    "store_url": "store URL: sqlite:///PATH.db or postgresql://... (default: SQLite in data_dir)",
    "store_key_file": "file holding the template-encryption key (NACF_TEMPLATE_KEY or "
                      "NACF_TEMPLATE_KEY_FILE win; default: DATA_DIR/nacf.key, created 0600 "
                      "if missing)",
    "model_path": "model file (default: the shipped model for the montage)",
    "kernel_backend": "kernel backend: cython, numba or reference",
    "reuse_port": "SO_REUSEPORT: several nacf serve processes on one host share grpc_address "
                  "(scale with processes; give each its own metrics_address)",
    "max_workers": "gRPC worker threads",
    "max_concurrent_rpcs": "in-flight RPC bound; beyond it calls get RESOURCE_EXHAUSTED at once",
    "max_message_bytes": "maximum gRPC message size, both directions (bytes)",
    "grace_period_s": "SIGTERM: seconds in-flight calls get to finish",
    "tls_cert_file": "server certificate (PEM); with tls_key_file enables TLS",
    "tls_key_file": "server private key (PEM)",
    "tls_client_ca_file": "CA (PEM) for client certificates: enables mTLS (a verified client "
                          "certificate carries every scope)",
    "api_keys_file": "keys file: one key per line followed by its scopes",
    "allow_open_loopback": "run without API keys, only when bound to loopback",
    "require_device_proof": "Authenticate requires the x-device-* proof metadata",
    "presentation_attack_detection": "reject replayed and non-physiological probes "
                                     "(nacf_core.pad) after a biometric accept",
    "proof_max_skew_s": "device proof: maximum |now - x-device-timestamp| in seconds",
    "lockout_threshold": "consecutive failed authentications that lock a user",
    "lockout_seconds": "how long a lockout lasts (UnlockUser lifts it)",
    "rate_limit_per_s": "token bucket per client: tokens per second",
    "rate_limit_burst": "token bucket per client: capacity",
    "rate_limit_lease": "token bucket: most tokens a process takes from the shared bucket in "
                        "one store transaction and hands out itself (at most a tenth of the "
                        "burst, held at most 0.5 s; 1: a store write per request)",
    "session_ttl_s": "session lifetime after a successful authentication (seconds)",
    "stream_max_seconds": "AuthenticateStream: most signal seconds before a decision",
    "continuous_mismatch_windows": "ContinuousAuthenticate: consecutive non-matching windows "
                                   "that end the session (wearer changed)",
    "signal_loss_s": "ContinuousAuthenticate: seconds without a usable window (or without "
                     "data) that end the session (signal lost)",
    "audit_retention_days": "audit rows older than this are purged",
    "purge_interval_s": "how often the retention purge and session expiry run",
    "identify_max_k": "largest top_k Identify accepts",
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
        for name in ("max_workers", "max_concurrent_rpcs", "lockout_threshold",
                     "continuous_mismatch_windows", "identify_max_k", "rate_limit_lease"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"option {name!r} must be an integer >= 1, got {v!r}.")
        if not isinstance(self.max_message_bytes, int) or not (
                64 * 1024 <= self.max_message_bytes <= 1024 ** 3):
            raise ValueError("option 'max_message_bytes' must be an integer in "
                             f"[65536, 1073741824], got {self.max_message_bytes!r}.")
        for name in ("grace_period_s", "proof_max_skew_s", "lockout_seconds",
                     "rate_limit_per_s", "rate_limit_burst", "session_ttl_s",
                     "stream_max_seconds", "signal_loss_s", "audit_retention_days",
                     "purge_interval_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ValueError(f"option {name!r} must be a finite number > 0, got {v!r}.")
        if self.kernel_backend not in ("cython", "numba", "reference"):
            raise ValueError("option 'kernel_backend' must be one of 'cython', 'numba', "
                             f"'reference', got {self.kernel_backend!r}.")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("options 'tls_cert_file' and 'tls_key_file' go together; "
                             "got only one of them.")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("option 'tls_client_ca_file' (mTLS) needs 'tls_cert_file' and "
                             "'tls_key_file'.")
        for key, scopes in self.api_keys.items():
            bad = set(scopes) - set(SCOPES)
            if bad:
                raise ValueError(f"API key scopes must be among {', '.join(SCOPES)}; got "
                                 f"{', '.join(sorted(bad))}.")
        return self

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
    """``"HOST:PORT"`` → ``(host, port)``; IPv6 as ``[::1]:50051``. Port 0: any free port."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"option {name!r} must be HOST:PORT, got {value!r}.")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"option {name!r} must be HOST:PORT with an integer port, "
                         f"got {value!r}.") from None
    if not 0 <= p <= 65535 or not host:
        raise ValueError(f"option {name!r} must be HOST:PORT with a host and a port in "
                         f"[0, 65535], got {value!r}.")
    return host, p


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"option {name!r} must be a boolean (true/false), got {raw!r}.")
    if kind is int:
        if isinstance(raw, bool):
            raise ValueError(f"option {name!r} must be an integer, got {raw!r}.")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"option {name!r} must be an integer, got {raw!r}.") from None
    if kind is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"option {name!r} must be a number, got {raw!r}.") from None
    if not isinstance(raw, (str, int, float)):
        raise ValueError(f"option {name!r} must be a string, got {raw!r}.")
    return str(raw)


_KINDS = {f.name: {"bool": bool, "int": int, "float": float}.get(f.type, str)
          for f in fields(Config) if f.name != "api_keys"}


def load_api_keys(path: str | os.PathLike | None = None,
                  env: str | None = None) -> dict[str, frozenset[str]]:
    """Keys from ``NACF_API_KEYS`` (every scope) and from a keys file."""
    keys: dict[str, frozenset[str]] = {}
    for k in (env or "").split(","):
        if k.strip():
            keys[k.strip()] = frozenset(SCOPES)
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"option 'api_keys_file': cannot read {str(p)!r}: {e}") from None
        if p.suffix == ".toml":
            data = tomllib.loads(text).get("keys", {})
            items = [(k, v if isinstance(v, list) else str(v).split(",")) for k, v in data.items()]
        else:
            items = []
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split(None, 1)
                if len(parts) != 2:
                    raise ValueError(f"{p}:{n}: expected '<key> <scope>[,<scope>...]', "
                                     f"got {line!r}.")
                items.append((parts[0], parts[1].replace(" ", "").split(",")))
        for k, scopes in items:
            s = frozenset(x.strip() for x in scopes if x.strip())
            bad = s - set(SCOPES)
            if bad or not s:
                raise ValueError(f"{p}: key {k[:4]}...: scopes must be among "
                                 f"{', '.join(SCOPES)}, got {sorted(s)}.")
            keys[k] = keys.get(k, frozenset()) | s
    return keys


def load_config(path: str | os.PathLike | None = None, *, env: dict[str, str] | None = None,
                **overrides: Any) -> Config:
    """Defaults < TOML file < environment < ``overrides`` (``None`` values ignored)."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    path = path or env.get("NACF_CONFIG") or None
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"--config: cannot read {str(path)!r}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"--config: {str(path)!r} is not valid TOML: {e}") from None
        data = {**data, **data.pop("nacf", {})} if isinstance(data.get("nacf"), dict) else data
        for k, v in data.items():
            if k not in _KINDS:
                raise ValueError(f"{path}: unknown option {k!r}; known options: "
                                 f"{', '.join(sorted(_KINDS))}.")
            values[k] = _coerce(k, v, _KINDS[k])
    for k, kind in _KINDS.items():
        ev = env.get("NACF_" + k.upper())
        if ev is not None and ev != "":
            values[k] = _coerce(k, ev, kind)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in _KINDS:
            raise ValueError(f"unknown option {k!r}.")
        values[k] = _coerce(k, v, _KINDS[k])
    values["api_keys"] = load_api_keys(values.get("api_keys_file"), env.get("NACF_API_KEYS"))
    return Config(**values)
