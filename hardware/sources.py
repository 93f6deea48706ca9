"""Open any source from a SOURCE string.

====================================  ==================================================
SOURCE                                what it opens
====================================  ==================================================
``cyton:PORT``                        an OpenBCI Cyton on a serial port (8 channels,
                                      250 Hz): :class:`~.serial_reader.CytonReader`
``cyton-daisy:PORT``                  a Cyton+Daisy (16 channels, 125 Hz)
``lsl:NAME``                          a Lab Streaming Layer stream by name:
                                      :class:`~.lsl.LslSource`
``file:PATH``                         a recording replayed as a live source (EDF,
                                      OpenBCI GUI text, BrainFlow CSV, nacf ``.npz``):
                                      :class:`~.playback.FileSource`
====================================  ==================================================

Options follow the first ``?`` (a target cannot contain one) as ``key=value`` pairs
joined by ``&``; an empty option (``X?``, ``&&``, a trailing ``&``), a second ``?``, an
option given twice and control characters (NUL, newline, ...) in the target or a value
are refused with a ``ValueError``:

- ``montage=Fp1,Fp2,...`` (every source; or a preset such as ``ultracortex-8``): the
  channel names in order. The ``montage`` argument of :func:`open_source` (the CLI's
  ``--montage``) wins over the one in the string.
- ``speed=N`` (``file:``): ``1`` real time, ``4`` four times faster, ``0`` as fast as
  the consumer reads.
- ``timeout=S`` (``cyton``, ``cyton-daisy``: the handshake timeout; ``lsl``: how long
  to look for the stream).
- ``type=T`` (``lsl``): the stream's type, when several streams share the name (a
  Muse through muselsl: ``EEG``, ``PPG``, ``ACC``, ``GYRO``); without it, the ``EEG``
  one.
- ``units=U`` (``lsl``, ``file``: EDF/BDF): the voltage unit of every channel (``uV``,
  ``mV``, ``V``, ``nV``), instead of the units the stream or the file header states;
  needed for a stream or file whose EEG channels state a unit that is not a voltage
  (``counts``), which is refused otherwise.

Every source is a context manager with ``.sfreq``, ``.ch_names``,
``.read_chunk(timeout) -> Chunk | None`` and ``.counters``.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SourceSpec", "parse_source", "open_source", "KINDS"]

KINDS = ("cyton", "cyton-daisy", "lsl", "file")
_OPTIONS = {
    "cyton": ("montage", "timeout"),
    "cyton-daisy": ("montage", "timeout"),
    "lsl": ("montage", "timeout", "type", "units"),
    "file": ("montage", "speed", "units"),
}


@dataclass(frozen=True)
class SourceSpec:
    """A parsed SOURCE string."""

    kind: str
    target: str
    options: dict[str, str] = field(default_factory=dict)


def parse_source(spec: str) -> SourceSpec:
    """Parse ``KIND:TARGET[?key=value&...]``.

    The target ends at the first ``?``.

    Raises
    ------
    ValueError
        Unknown kind, empty target, a control character in the target or a value, a
        malformed option list (empty, a second ``?``, an item that is not ``key=value``,
        an option given twice) or an option the kind does not take.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"Invalid value for the 'source' parameter. Expected KIND:TARGET with KIND one of "
            f"{', '.join(KINDS)} (e.g. cyton:/dev/ttyUSB0, lsl:MyStream, file:rec.edf), "
            f"but got {spec!r} instead."
        )
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(
            f"Invalid source kind {kind!r} in {spec!r}. Allowed kinds are "
            f"{', '.join(KINDS)}."
        )
    target, sep, query = rest.partition("?")
    target = target.strip()
    if not target:
        what = "port" if "cyton" in kind else kind
        raise ValueError(f"The source {spec!r} names no {what} target.")
    _check_no_control(spec, "target", target)
    options: dict[str, str] = {}
    if sep:
        syntax = "options follow a single '?' as key=value pairs joined by '&'"
        if "?" in query:
            raise ValueError(f"The source {spec!r} has more than one '?': {syntax}.")
        for item in query.split("&"):
            if not item.strip():
                raise ValueError(
                    f"The source {spec!r} has an empty option (a stray '?' or '&'): {syntax}."
                )
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or key not in _OPTIONS[kind]:
                raise ValueError(
                    f"Invalid option {item!r} in the source {spec!r}. Options for {kind}: "
                    f"{', '.join(k + '=...' for k in _OPTIONS[kind])}."
                )
            if key in options:
                raise ValueError(f"Option {key!r} is given twice in the source {spec!r}.")
            value = value.strip()
            _check_no_control(spec, f"option {key!r}", value)
            options[key] = value
    return SourceSpec(kind, target, options)


def _check_no_control(spec: str, what: str, text: str) -> None:
    bad = [c for c in text if unicodedata.category(c) == "Cc"]
    if bad:
        raise ValueError(
            f"The {what} of the source {spec!r} contains a control character ({bad[0]!r})."
        )


def _float(spec: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"Option {key!r} of the source {spec!r} must be a number, got {value!r}."
        ) from None


def open_source(spec: str, montage: Sequence[str] | str | None = None) -> Any:
    """Open the source a SOURCE string names (not yet entered: use ``with``).

    Parameters
    ----------
    spec : str
        See the module docstring.
    montage : str or sequence of str, optional
        Channel names in order; overrides ``?montage=``.

    Returns
    -------
    source
        A context manager with ``sfreq``, ``ch_names``, ``read_chunk(timeout)`` and
        ``counters``. For ``cyton``/``cyton-daisy`` the serial session starts on
        ``__enter__``.
    """
    s = parse_source(spec)
    mont = montage if montage is not None else s.options.get("montage")
    if s.kind in ("cyton", "cyton-daisy"):
        from .serial_reader import CytonReader

        kw = {}
        if "timeout" in s.options:
            v = _float(spec, "timeout", s.options["timeout"])
            if not (math.isfinite(v) and v > 0):
                raise ValueError(
                    f"Option 'timeout' of the source {spec!r} must be a finite number of "
                    f"seconds > 0, got {s.options['timeout']!r}."
                )
            kw["handshake_timeout"] = v
        return CytonReader(s.target, daisy=s.kind == "cyton-daisy", montage=mont, **kw)
    if s.kind == "lsl":
        from .lsl import LslSource

        kw = {}
        if "timeout" in s.options:
            kw["timeout"] = _float(spec, "timeout", s.options["timeout"])
        if "type" in s.options:
            if not s.options["type"]:
                raise ValueError(f"Option 'type' of the source {spec!r} is empty.")
            kw["type"] = s.options["type"]
        if "units" in s.options:
            kw["units"] = s.options["units"]
        return LslSource(s.target, montage=mont, **kw)
    from .playback import FileSource

    kw = {}
    if "speed" in s.options:
        kw["speed"] = _float(spec, "speed", s.options["speed"])
    if "units" in s.options:
        kw["units"] = s.options["units"]
    return FileSource(s.target, montage=mont, **kw)

