"""JSON-lines logging on stderr, and the audit-event helper.

:func:`configure` (called by the ``nacf`` CLI entry point) installs one handler on the
root logger that writes each record as one JSON object per line with the monitoring
guide's fields::

    {"timestamp": "2026-11-26T20:08:42.123Z", "level": "INFO", "logger": "nacf.server",
     "message": "authentication attempt", "service": "nacf", "event_type": "auth_attempt",
     "user_id": "alice", "success": true, "confidence": 0.91, "duration_ms": 4.2,
     "ip_address": "127.0.0.1", "peer": "ipv4:127.0.0.1:50122", "method": "Authenticate"}

Any ``extra=`` field is added as a key. Use :func:`audit_event` for the guide's
events (``auth_attempt``, ``security_event``, ``enrollment``, ...).

Biometric data never reaches a log. The formatter redacts array-like values (numpy
arrays, bytes-like objects, sequences of more than :data:`MAX_NUMERIC_SEQUENCE`
numbers, anything exposing ``__array__`` or the buffer protocol) wherever they appear:
in ``extra`` fields and in the message's ``%`` arguments, also nested in dicts, lists,
tuples and sets; the line then carries ``"redacted_fields": [...]``. :func:`audit_event`
goes further and raises ``TypeError`` for such a value, so a mistake fails in tests.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "configure",
    "JsonFormatter",
    "audit_event",
    "is_array_like",
    "MAX_NUMERIC_SEQUENCE",
]

#: A list/tuple/set with more numbers than this is treated as an array (a signal or
#: an embedding) and never logged.
MAX_NUMERIC_SEQUENCE = 16

# Attributes every LogRecord has; anything else came through ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}
_HANDLER_MARK = "_nacf_json_handler"


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<redacted {type(value).__name__} shape {tuple(shape)}>"
    try:
        return f"<redacted {type(value).__name__} of length {len(value)}>"
    except TypeError:
        return f"<redacted {type(value).__name__}>"


def is_array_like(value: Any) -> bool:
    """True for values that may carry a signal, an embedding or a template.

    numpy arrays (any size), ``bytes``/``bytearray``/``memoryview``, objects with
    ``__array__``, ``__array_interface__`` or the buffer protocol, and lists, tuples
    or sets holding more than :data:`MAX_NUMERIC_SEQUENCE` numbers. Scalars (including
    numpy scalars), strings and short lists are not.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return False
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        numbers = sum(1 for v in value if _is_number(v))
        return numbers > MAX_NUMERIC_SEQUENCE or any(is_array_like(v) for v in value
                                                     if not _is_number(v))
    if isinstance(value, Mapping):
        return False  # its values are checked one by one
    mod = type(value).__module__ or ""
    if mod.startswith("numpy") and getattr(value, "ndim", 1) == 0:
        return False  # a numpy scalar
    if hasattr(value, "__array__") or hasattr(value, "__array_interface__"):
        return True
    try:
        memoryview(value)
    except TypeError:
        return False
    return True


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    mod = type(v).__module__ or ""
    return mod.startswith("numpy") and getattr(v, "ndim", None) == 0


def _jsonable(value: Any, path: str, redacted: list[str]) -> Any:
    """Convert to JSON-safe values, redacting array-likes (recording their path)."""
    if is_array_like(value):
        redacted.append(path)
        return _describe(value)
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if _is_number(value):  # numpy scalar
        return _jsonable(value.item(), path, redacted)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{path}.{k}", redacted) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v, f"{path}[{i}]", redacted) for i, v in enumerate(value)]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    return str(value)


def _redact_arg(value: Any, found: list[bool], seen: tuple[int, ...]) -> Any:
    """A message argument with every array-like in it, also nested in dicts, lists,
    tuples and sets, replaced by its description (``found`` gets an entry for each);
    the value itself when it holds none (its own ``%d`` or ``str`` formatting kept)."""
    if is_array_like(value):
        found.append(True)
        return _describe(value)
    if not isinstance(value, (Mapping, list, tuple, set, frozenset)) or id(value) in seen:
        return value  # (a container holding itself: its repr says '...' there)
    seen = (*seen, id(value))
    before = len(found)
    if isinstance(value, Mapping):
        out: Any = {k: _redact_arg(v, found, seen) for k, v in value.items()}
    else:
        out = [_redact_arg(v, found, seen) for v in value]
        if isinstance(value, tuple):
            out = tuple(out)
    return out if len(found) > before else value


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object (no newline inside).

    Parameters
    ----------
    service : str
        Value of the ``service`` field (default ``"nacf"``).
    """

    def __init__(self, service: str = "nacf") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        redacted: list[str] = []
        msg = self._message(record, redacted)
        ts = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
        out: dict[str, Any] = {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": msg,
            "service": self.service,
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_") or key in out:
                continue
            out[key] = _jsonable(value, key, redacted)
        out.setdefault("event_type", "log")
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        if redacted:
            out["redacted_fields"] = redacted
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def _message(record: logging.LogRecord, redacted: list[str]) -> str:
        args = record.args
        if args:
            found: list[bool] = []
            if isinstance(args, Mapping):
                args = {k: _redact_arg(v, found, ()) for k, v in args.items()}
            else:
                args = tuple(_redact_arg(a, found, ()) for a in args)
            if found:
                redacted.append("message")
        msg = str(record.msg)
        if is_array_like(record.msg):
            redacted.append("message")
            msg = _describe(record.msg)
        try:
            return msg % args if args else msg
        except (TypeError, ValueError):
            return f"{msg} {args!r}"


def configure(level: str | int = "INFO", stream=None, service: str = "nacf") -> logging.Handler:
    """Send every log record to ``stream`` (default stderr) as JSON lines.

    Installs one handler on the root logger (replacing the one a previous call
    installed; other handlers are left alone) and sets the root level.

    Parameters
    ----------
    level : str or int
        ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL`` (or a number).
    stream : file-like, optional
        Where to write (default ``sys.stderr``).
    service : str
        The ``service`` field of every line.

    Returns
    -------
    handler : logging.Handler
        The installed handler.
    """
    if isinstance(level, str):
        lvl = logging.getLevelName(level.upper())
        if not isinstance(lvl, int):
            raise ValueError(
                "Invalid value for the 'level' parameter. Allowed values are 'DEBUG', "
                f"'INFO', 'WARNING', 'ERROR', 'CRITICAL', but got {level!r} instead."
            )
    else:
        lvl = int(level)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_MARK, False):
            root.removeHandler(h)
            h.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(lvl)
    logging.getLogger("nacf").setLevel(lvl)
    logging.captureWarnings(True)
    return handler


def audit_event(logger: logging.Logger, event_type: str, message: str | None = None, *,
                level: int = logging.INFO, **fields: Any) -> None:
    """Log one audit event with the guide's fields.

    Parameters
    ----------
    logger : logging.Logger
        e.g. ``logging.getLogger("nacf.server")``.
    event_type : str
        ``auth_attempt``, ``security_event``, ``enrollment``, ``session``,
        ``performance``, ...
    message : str, optional
        Human-readable text (default: ``event_type`` with spaces).
    level : int
        Log level (default INFO).
    **fields
        ``user_id``, ``success``, ``confidence``, ``duration_ms``, ``peer`` or
        ``ip_address``, ``method``, ``reason``, ``severity``, ... Values must be
        scalars, strings, short lists or dicts of those.

    Raises
    ------
    TypeError
        If a field holds an array-like value (a signal, an embedding or a template
        must never be logged), or if a field name clashes with a LogRecord attribute.
    """
    if not isinstance(event_type, str) or not event_type:
        raise TypeError(f"'event_type' must be a non-empty str, got {event_type!r} instead.")
    for key, value in fields.items():
        _refuse_arrays(key, value)
        if key in _RECORD_ATTRS:
            raise TypeError(
                f"audit field {key!r} clashes with a logging.LogRecord attribute; rename it."
            )
    logger.log(level, message or event_type.replace("_", " "),
               extra={"event_type": event_type, **fields})


def _refuse_arrays(path: str, value: Any) -> None:
    if is_array_like(value):
        raise TypeError(
            f"audit field {path!r} holds an array-like value ({_describe(value)}); "
            "signals, embeddings and templates must never be logged."
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            _refuse_arrays(f"{path}.{k}", v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            _refuse_arrays(f"{path}[{i}]", v)
