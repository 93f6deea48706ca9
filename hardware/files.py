"""Read EEG recordings from files: EDF/EDF+/BDF, OpenBCI GUI text, BrainFlow CSV, nacf ``.npz``.

Every reader returns a :class:`Recording`: samples in microvolts, time-major
``(n_times, n_channels)``, the sampling rate and the channel names the file brings.

Formats (detected from the content, the extension only breaks ties):

- **EDF / EDF+ / BDF** through MNE (``mne.io.read_raw_edf`` / ``read_raw_bdf``). MNE
  reads the PhysioNet EEGMMIDB files, whose headers are slightly non-compliant (labels
  padded with dots, a record layout some strict readers refuse). Each signal is scaled
  to microvolts by its physical dimension (``uV``, ``µV``, ``mV``, ``V``, ``nV``, in any
  case, spelt out, UTF-8 or Latin-1: MNE alone knows ``uV``, ``µV`` and ``mV`` and takes
  any other for volts); a signal with no unit keeps the file's numbers as microvolts
  (logged); an EEG signal in a unit that is not a voltage (``counts``) is refused unless
  ``units=`` (``file:PATH?units=uV``) states the unit of every signal; a signal that is
  not EEG in such a unit keeps its numbers (logged). The EDF+ annotation channel is not
  a signal and becomes :attr:`Recording.annotations`. In a file mixing sampling rates
  (MNE would upsample everything to the highest), only the signals at the EEG channels'
  rate are kept. Labels are kept as the file writes them (``Fp1.``);
  :mod:`nacf_core.channels` maps them to canonical names. A time range is read without
  loading the rest of the file.
- **OpenBCI GUI text**, every variant the GUI and its tools wrote:

  ============================  ==========================================================
  variant                       recognised by
  ============================  ==========================================================
  GUI v6 (``Raw EXG Data``)     ``%Number of channels``, ``%Sample Rate``, a column-name
                                row ``Sample Index, EXG Channel 0, ...``
  GUI v5                        ``%Number of channels``, ``%Sample Rate``, ``%Board``; the
                                GUI writes one all-zero placeholder row first: dropped
  GUI v4 / sample data          ``%Sample Rate``, last columns a clock time and a POSIX
                                time in milliseconds
  GUI v1-v3 raw (2014-2017)     ``%Sample Rate``, index, channels, 3 accelerometer columns,
                                optionally a clock time
  SD-card log (``SDconverted``) ``%OBCI Data Log``; no rate in the file, the Cyton's
                                default 250 Hz is assumed (override with ``sfreq=``)
  ============================  ==========================================================

  The number of EEG channels comes from ``%Number of channels`` (or the ``EXG Channel``
  column names); without either, from the column count (8 for a Cyton, 16 for a
  Cyton+Daisy). A truncated last line (the GUI was stopped mid-write) is dropped and
  counted in :attr:`Recording.skipped_rows`; a malformed line anywhere else is an error.
- **BrainFlow CSV** (``DataFilter.write_file``): tab- or comma-separated, no header, one
  row per sample with BrainFlow's board layout: 24 columns for a Cyton (package
  counter, 8 EEG in µV, 3 accelerometer, ..., timestamp at column 22, marker), 32 for a
  Cyton+Daisy (16 EEG, timestamp at column 30). The sampling rate is the board's
  nominal rate (Cyton 250 Hz, Cyton+Daisy 125 Hz); the host timestamps are checked
  against it and a large disagreement is logged (they are host receipt times, jittered
  by USB batching, so they are not used as the rate). A truncated last line (the writer
  stopped mid-line) is dropped and counted in :attr:`Recording.skipped_rows`; a line of
  another length anywhere else is an error naming it. Leading rows whose EEG channels
  are all exactly 0 (the board's first packet, sent before its first conversion) are
  left out and counted in :attr:`Recording.skipped_rows`.
- **nacf record CSV** (what ``nacf record`` writes): a header ``timestamp,<channel
  names>``, one row per sample, microvolts, an empty field for a dropped sample (read
  as NaN). The rate is estimated from the timestamps (span over samples) and snapped to
  a common rate (125, 250, 500, ... Hz) within 1 %; when the timestamps jump over a gap
  (a step more than 3 times the median: a reconnect), from the steps between rows
  without the gaps (logged: a gap lowers the span, and a 256 Hz stream with a 2 %
  gap would snap to 250 Hz); failing both, the median step; ``sfreq=`` overrides it.
  A gap (a step of more than ``1 / sfreq + GAP_S``, 0.25 s, the Epocher's rule) is read
  as NaN rows, dropped samples on the rate's grid (at most 20 s of them per gap; counted
  in ``Recording.extra["timestamp_gaps"]``), so the signal on either side of a reconnect
  is never replayed or windowed as one; a file whose gaps would add more rows than it
  has, beyond one gap's 20 s (timestamps in another unit), is refused.
- **nacf ``.npz``** (:func:`write_npz`): a NumPy ``.npz`` archive with ``data`` float32
  ``(n_times, n_channels)`` µV, ``sfreq`` (scalar), ``ch_names`` (1-D str array) and
  optionally ``start_time`` (POSIX seconds, UTC, scalar). No array may exceed 2 GiB
  uncompressed (checked from the archive directory and the ``.npy`` header before
  anything is decompressed); object (pickled) arrays are refused.

Every reader refuses what it cannot read in full with a ``ValueError`` that names the
file and what was expected: a sampling rate outside 1 Hz-100 kHz (stated, or estimated
from timestamps), an OpenBCI channel count outside 1-256, a recording without samples or
channels, an empty or repeated channel name, text that is not UTF-8 (nacf CSV), an
EDF/BDF cut short before its first complete data record (one cut later is read up to
its last complete record, with a warning), an infinite sample (its row and channel
named; NaN is a dropped sample and is kept).

Sample counters (OpenBCI sample index, BrainFlow package number) count 0-255 and wrap.
The readers keep the rows as the file has them (no NaN rows are inserted for counter
gaps, because some files have reordered counters); the number of samples the counter
says are missing is reported in :attr:`Recording.counter_gaps`.

Channel names: OpenBCI and BrainFlow files carry none. ``montage`` names the channels
in order; without it, the default (Ultracortex) montage of
:mod:`nacf_core.hardware.montages` for 8 or 16 channels, else ``EXG Channel N``. A
``montage`` passed for a file that brings its own labels (EDF, ``.npz``) renames them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import re
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nacf_core._validation import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE_HZ,
    check_finite_positive,
    check_option,
    listed,
    npy_data_bytes,
)

from .base import GAP_S
from .montages import default_montage, resolve_montage

__all__ = [
    "Annotation",
    "Recording",
    "FORMATS",
    "detect_format",
    "read_recording",
    "write_npz",
]

logger = logging.getLogger("nacf.hardware")

FORMATS = ("edf", "bdf", "openbci", "brainflow", "npz", "nacf-csv")

# rates a timestamp-derived estimate snaps to (within 1 %)
_COMMON_RATES = (125.0, 128.0, 160.0, 200.0, 250.0, 256.0, 500.0, 512.0, 1000.0, 1024.0, 2048.0)

# BrainFlow board layouts (BoardShim.get_*_channels for CYTON_BOARD / CYTON_DAISY_BOARD).
_BRAINFLOW_LAYOUTS = {
    24: {"board": "cyton", "eeg": slice(1, 9), "timestamp": 22, "sfreq": 250.0},
    32: {"board": "cyton-daisy", "eeg": slice(1, 17), "timestamp": 30, "sfreq": 125.0},
}
_CYTON_DEFAULT_SFREQ = 250.0

# Bounds on what a file may state: the maxima every input shares (MAX_SAMPLE_RATE_HZ,
# MAX_CHANNELS). No EEG device samples slower than 1 Hz: a lower rate is a damaged header
# or timestamps in the wrong unit (milliseconds read as seconds).
_MIN_SFREQ_HZ = 1.0
# Largest array an .npz may hold, uncompressed: deflate expands zeros ~1000-fold.
_NPZ_MAX_ARRAY_BYTES = 2 * 1024**3


class Annotation(NamedTuple):
    """An EDF+ annotation: onset and duration in seconds from the file start."""

    onset: float
    duration: float
    description: str


@dataclass(frozen=True)
class Recording:
    """A recording read from a file.

    Attributes
    ----------
    data : ndarray, shape (n_times, n_channels), float64
        Microvolts, time-major.
    sfreq : float
        Sampling rate in Hz.
    ch_names : list of str
        As the file writes them (EDF labels unmodified, e.g. ``Fp1.``), or the montage.
    path : Path or None
    start_time : datetime or None
        Wall-clock time of the first sample of ``data`` (UTC), when the file says.
    annotations : tuple of Annotation
        EDF+ annotations (onsets relative to the first sample of ``data``).
    format : str
        One of :data:`FORMATS`.
    counter_gaps : int
        Samples the file's sample counter says are missing (not filled in).
    skipped_rows : int
        Placeholder or truncated rows the reader left out.
    """

    data: np.ndarray = field(repr=False)
    sfreq: float
    ch_names: list[str] = field(repr=False)
    path: Path | None = None
    start_time: _dt.datetime | None = None
    annotations: tuple[Annotation, ...] = ()
    format: str = ""
    counter_gaps: int = 0
    skipped_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Recording({self.format or 'array'}, {self.n_times} samples x {self.n_channels} "
            f"channels at {self.sfreq:g} Hz, path={str(self.path)!r})"
        )

    @property
    def n_times(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[1])

    @property
    def duration(self) -> float:
        """Seconds of signal."""
        return self.n_times / self.sfreq


# --------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """Which reader a file needs, from its first bytes (and its extension for ties).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The content matches no supported format.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recording {str(p)!r} does not exist or is not a file.")
    with open(p, "rb") as fh:
        head = fh.read(4096)
    if not head:
        raise ValueError(f"recording {str(p)!r} is empty.")
    if head.startswith(b"PK\x03\x04"):
        return "npz"
    if head.startswith(b"\xffBIOSEMI"):
        return "bdf"
    if head[:8] == b"0       " and len(head) >= 256:
        return "edf"
    try:
        if b"\x00" in head:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "NUL byte")
        # the 4 KB read may end inside a multi-byte character: decode whole lines only
        cut = head.rfind(b"\n") if len(head) == 4096 else -1
        text = (head[: cut + 1] if cut > 0 else head).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"recording {str(p)!r}: unknown binary format (first bytes {head[:8]!r}); "
            f"supported formats are {', '.join(FORMATS)}."
        ) from None
    first = text.lstrip("\ufeff").lstrip()
    if first.startswith("%"):
        return "openbci"
    line = first.splitlines()[0] if first else ""
    if re.match(r"^\s*sample index\s*,", line, re.IGNORECASE):
        return "openbci"
    if re.match(r"^\s*timestamp\s*,", line, re.IGNORECASE):
        return "nacf-csv"
    sep = "\t" if "\t" in line else ","
    fields = [f.strip() for f in line.split(sep)]
    if len(fields) in _BRAINFLOW_LAYOUTS and all(_is_number(f) for f in fields):
        return "brainflow"
    raise ValueError(
        f"recording {str(p)!r}: cannot tell the format from its first line {line[:80]!r}; "
        f"supported formats are EDF/EDF+/BDF, OpenBCI GUI text (starts with '%'), "
        f"BrainFlow CSV (24 or 32 numeric columns), nacf .npz and nacf record CSV "
        f"(header 'timestamp,<channels>')."
    )


def read_recording(
    path: str | os.PathLike,
    montage: Sequence[str] | str | None = None,
    *,
    start_s: float | None = None,
    stop_s: float | None = None,
    format: str | None = None,
    sfreq: float | None = None,
    units: str | None = None,
) -> Recording:
    """Read a recording from a file.

    Parameters
    ----------
    path : str or PathLike
    montage : sequence of str or str, optional
        Channel names in order (a comma-separated string or a preset such as
        ``ultracortex-8``, see :mod:`nacf_core.hardware.montages`). Names the channels
        of files that carry none (OpenBCI, BrainFlow); renames the others.
    start_s, stop_s : float, optional
        Time range in seconds from the first sample; ``stop_s`` past the end is an
        error. For EDF only that range is read from disk.
    format : str, optional
        Force a reader (one of :data:`FORMATS`) instead of detecting it.
    sfreq : float, optional
        Sampling rate for files that do not state one (OpenBCI SD-card logs, BrainFlow
        CSV), 1 to 100 000 Hz; ignored with a warning if the file states a different one.
    units : str, optional
        EDF/BDF only: the voltage unit of every signal (``"uV"``, ``"mV"``, ``"V"``,
        ``"nV"``), instead of the physical dimensions the header states; for a file whose
        EEG signals state a unit that is not a voltage (``counts``), which is refused
        otherwise. The other formats are in microvolts by definition: refused there.

    Returns
    -------
    Recording
        ``data`` shape (n_times, n_channels), float64, microvolts.
    """
    p = Path(path)
    fmt = detect_format(p) if format is None else check_option("format", format, FORMATS)
    if sfreq is not None:
        sfreq = check_finite_positive("sfreq", sfreq)
        if not _MIN_SFREQ_HZ <= sfreq <= MAX_SAMPLE_RATE_HZ:
            raise ValueError(
                f"'sfreq' must be from {_MIN_SFREQ_HZ:g} to {MAX_SAMPLE_RATE_HZ:g} Hz, "
                f"got {sfreq!r}."
            )
    start_s, stop_s = _check_range(start_s, stop_s)
    units_uv = check_units(units)
    if units_uv is not None and fmt not in ("edf", "bdf"):
        raise ValueError(
            f"'units' applies to EDF and BDF files, whose header states a unit per signal; "
            f"{str(p)!r} is a {fmt} file, whose samples are microvolts: leave 'units' out."
        )
    if fmt in ("edf", "bdf"):
        rec = _read_edf(p, fmt, start_s, stop_s, units_uv, montage)
    else:
        if fmt == "openbci":
            rec = _read_openbci(p, sfreq)
        elif fmt == "brainflow":
            rec = _read_brainflow(p, sfreq)
        elif fmt == "nacf-csv":
            rec = _read_nacf_csv(p, sfreq)
        else:
            rec = _read_npz(p)
        _refuse_infinite(rec, f"{fmt} file {str(p)!r}")
        rec = _slice(rec, start_s, stop_s)
    if montage is not None:
        names = resolve_montage(montage, rec.n_channels)
    elif fmt in ("openbci", "brainflow"):
        names = _default_names(rec.n_channels)
    else:
        names = None
    if names is not None:
        rec = _replace(rec, ch_names=names)
    logger.debug(
        "read %s (%s): %d samples x %d channels at %g Hz",
        p, fmt, rec.n_times, rec.n_channels, rec.sfreq,
    )
    return rec


def _refuse_infinite(rec: Recording, where: str) -> None:
    """An infinite sample (a float overflow written out as ``1e400``, an ``inf``) is
    nothing a headset measured, unlike NaN (a dropped sample, which consumers fill)."""
    bad = np.isinf(rec.data)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            f"{where}: {int(bad.sum())} infinite sample(s), the first at sample row {row + 1}, "
            f"channel {col + 1}: expected finite microvolts (NaN marks a dropped sample).")


def write_npz(
    path: str | os.PathLike,
    data: np.ndarray,
    sfreq: float,
    ch_names: Sequence[str],
    start_time: _dt.datetime | float | None = None,
) -> Path:
    """Write the nacf ``.npz`` recording format (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
    data : ndarray, shape (n_times, n_channels)
        Microvolts; stored as float32.
    sfreq : float
    ch_names : sequence of str, length n_channels
    start_time : datetime or float, optional
        Time of the first sample (a datetime, or POSIX seconds UTC).

    Returns
    -------
    Path
        The path written (NumPy appends ``.npz`` if missing).
    """
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"'data' must be 2-D (n_times, n_channels), got shape {data.shape}.")
    sfreq = check_finite_positive("sfreq", sfreq)
    names = [str(n) for n in ch_names]
    if len(names) != data.shape[1]:
        raise ValueError(
            f"'ch_names' must have one name per channel ({data.shape[1]}), got {len(names)}."
        )
    arrays: dict[str, Any] = {
        "data": np.ascontiguousarray(data, dtype=np.float32),
        "sfreq": np.float64(sfreq),
        "ch_names": np.array(names, dtype=str),
    }
    if start_time is not None:
        if isinstance(start_time, _dt.datetime):
            if start_time.tzinfo is None:
                start_time = start_time.replace(tzinfo=_dt.timezone.utc)
            start_time = start_time.timestamp()
        arrays["start_time"] = np.float64(check_finite_positive("start_time", start_time))
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_name(p.name + ".npz")
    np.savez_compressed(p, **arrays)
    return p


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _check_file_sfreq(sfreq: float, where: str, got: str | None = None) -> float:
    """The sampling rate a file states (or implies): in [``_MIN_SFREQ_HZ``, ``MAX_SAMPLE_RATE_HZ``].

    ``where`` names the file (``"OpenBCI file '/path'"``); ``got`` is what the file
    says, when that is clearer than the number (``"'0 Hz'"``).
    """
    if not (math.isfinite(sfreq) and _MIN_SFREQ_HZ <= sfreq <= MAX_SAMPLE_RATE_HZ):
        raise ValueError(
            f"{where}: the sampling rate must be a number of Hz from {_MIN_SFREQ_HZ:g} to "
            f"{MAX_SAMPLE_RATE_HZ:g}, got {got if got is not None else repr(sfreq)}."
        )
    return float(sfreq)


def _check_names(names: list[str], where: str) -> list[str]:
    """Channel names a file brings: none empty, none repeated."""
    if any(not n for n in names):
        raise ValueError(f"{where}: a channel name is empty ({', '.join(map(repr, names))}).")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(
            f"{where}: channel names must be unique; repeated: {', '.join(map(repr, dup[:5]))}."
        )
    return names


def _check_range(start_s: Any, stop_s: Any) -> tuple[float | None, float | None]:
    if start_s is not None:
        start_s = float(start_s)
        if not math.isfinite(start_s) or start_s < 0:
            raise ValueError(f"'start_s' must be a finite number >= 0, got {start_s!r} instead.")
    if stop_s is not None:
        stop_s = check_finite_positive("stop_s", stop_s)
        if start_s is not None and stop_s <= start_s:
            raise ValueError(f"'stop_s' ({stop_s}) must be greater than 'start_s' ({start_s}).")
    return start_s, stop_s


def _range_to_samples(
    start_s: float | None, stop_s: float | None, sfreq: float, n_times: int, path: Path
) -> tuple[int, int]:
    start = 0 if start_s is None else int(round(start_s * sfreq))
    stop = n_times if stop_s is None else int(round(stop_s * sfreq))
    if stop > n_times:
        raise ValueError(
            f"'stop_s' ({stop_s} s) is past the end of {str(path)!r} "
            f"({n_times / sfreq:.3f} s, {n_times} samples at {sfreq:g} Hz)."
        )
    if start >= stop:
        raise ValueError(
            f"'start_s' ({start_s} s) leaves no samples in {str(path)!r} "
            f"({n_times / sfreq:.3f} s long)."
        )
    return start, stop


def _replace(rec: Recording, **changes: Any) -> Recording:
    from dataclasses import replace

    return replace(rec, **changes)


def _slice(rec: Recording, start_s: float | None, stop_s: float | None) -> Recording:
    if start_s is None and stop_s is None:
        return rec
    start, stop = _range_to_samples(start_s, stop_s, rec.sfreq, rec.n_times, rec.path)
    start_time = rec.start_time
    if start_time is not None and start:
        start_time = start_time + _dt.timedelta(seconds=start / rec.sfreq)
    return _replace(rec, data=rec.data[start:stop], start_time=start_time)


def _default_names(n_channels: int) -> list[str]:
    """The default (Ultracortex) montage for 8 or 16 channels, else ``EXG Channel N``."""
    if n_channels in (8, 16):
        return default_montage(n_channels)
    return [f"EXG Channel {i}" for i in range(n_channels)]


def _counter_gaps(counter: np.ndarray) -> int:
    """Missing samples according to a 0-255 wrapping counter (only forward gaps < 128)."""
    if counter.size < 2:
        return 0
    step = np.mod(np.diff(np.round(counter).astype(np.int64)), 256)
    missing = step[(step > 1) & (step < 128)] - 1
    return int(missing.sum())


# --------------------------------------------------------------------------------------
# EDF / BDF (MNE)
# --------------------------------------------------------------------------------------


def _edf_signal_rates(path: Path) -> list[tuple[str, float]]:
    """``(label, samples per second)`` of every signal, from the EDF/BDF header itself."""
    with open(path, "rb") as fh:
        fixed = fh.read(256)
        try:
            ns = int(fixed[252:256].decode("ascii").strip())
            record_s = float(fixed[244:252].decode("ascii").strip())
        except ValueError:
            return []  # MNE will say what is wrong
        if ns <= 0:
            kind = "BDF" if fixed.startswith(b"\xff") else "EDF"
            raise ValueError(
                f"cannot read {kind} file {str(path)!r}: the header declares {ns} signals "
                f"(bytes 252-255); expected at least 1."
            )
        sig = fh.read(256 * ns)
    if len(sig) < 256 * ns:
        return []
    labels = [sig[i * 16 : (i + 1) * 16].decode("latin-1").strip() for i in range(ns)]
    off = ns * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)
    out = []
    for i in range(ns):
        try:
            n = int(sig[off + i * 8 : off + (i + 1) * 8].decode("ascii").strip())
        except ValueError:
            return []
        out.append((labels[i], n / record_s if record_s > 0 else float("nan")))
    return out


def _edf_check_size(path: Path, fmt: str) -> None:
    """Refuse an EDF/BDF cut short before its first complete data record, and log one
    cut later (MNE reads the complete records, with a line at INFO level).

    MNE's own errors for such a file are ``could not convert string to float: ''`` (a
    cut in the header) and ``list index out of range`` (no complete record).
    """
    where = f"cannot read {fmt.upper()} file {str(path)!r}"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fixed = fh.read(256)
        try:
            ns = int(fixed[252:256].decode("ascii").strip())
        except ValueError:
            ns = None
        if len(fixed) < 256 or ns is None or ns <= 0:
            if len(fixed) < 256:
                raise ValueError(
                    f"{where}: the header is cut short: the file has {size} bytes, an "
                    f"{fmt.upper()} header has 256 bytes and 256 more per signal."
                )
            return  # the signal count: _edf_signal_rates or MNE say what is wrong
        header = 256 + 256 * ns
        if size < header:
            raise ValueError(
                f"{where}: the header is cut short: the file has {size} bytes, the header of "
                f"its {ns} signals {header} (256 + 256 per signal)."
            )
        sig = fh.read(256 * ns)
    try:
        per_record = sum(int(sig[ns * 216 + i * 8 : ns * 216 + (i + 1) * 8]) for i in range(ns))
        declared = int(fixed[236:244].decode("ascii").strip())
        record_s = float(fixed[244:252].decode("ascii").strip())
    except ValueError:
        return  # MNE will say what is wrong
    record_bytes = per_record * (3 if fmt == "bdf" else 2)
    if record_bytes <= 0:
        return
    complete = (size - header) // record_bytes
    if complete == 0:
        raise ValueError(
            f"{where}: it holds no complete data record ({size - header} bytes after the "
            f"header; a record of its {ns} signals is {record_bytes} bytes): the file is "
            f"cut short or empty."
        )
    if 0 < complete < declared:
        logger.warning(
            "%s is cut short: its header declares %d data records, the file holds %d "
            "(%g of %g s); reading those", path, declared, complete, complete * record_s,
            declared * record_s,
        )


def _edf_check_scaling(path: Path, fmt: str, exclude: list[str]) -> None:
    """Refuse a signal whose physical or digital minimum or maximum is not a finite
    number, or whose digital (or physical) minimum equals its maximum: MNE scales samples
    by ``(pmax - pmin) / (dmax - dmin)`` and would read such a channel as NaN or infinite
    (or as one constant value) throughout, without a word."""
    with open(path, "rb") as fh:
        fixed = fh.read(256)
        try:
            ns = int(fixed[252:256].decode("ascii").strip())
        except ValueError:
            return  # MNE will say what is wrong
        sig = fh.read(256 * ns) if ns > 0 else b""
    if ns <= 0 or len(sig) < 256 * ns:
        return
    skip = set(exclude)

    def field(offset: int, i: int) -> str:
        return sig[ns * offset + i * 8 : ns * offset + (i + 1) * 8].decode("latin-1").strip()

    for i in range(ns):
        label = sig[i * 16 : (i + 1) * 16].decode("latin-1").strip()
        if label in skip or "annotations" in label.lower():
            continue
        values = {}
        for name, off in (("physical minimum", 104), ("physical maximum", 112),
                          ("digital minimum", 120), ("digital maximum", 128)):
            text = field(off, i)
            try:
                values[name] = float(text)
            except ValueError:
                values[name] = math.nan
            if not math.isfinite(values[name]):
                raise ValueError(
                    f"cannot read {fmt.upper()} file {str(path)!r}: signal {i + 1} "
                    f"({label!r}) has {name} {text!r}; expected a finite number."
                )
        for kind in ("digital", "physical"):  # physical: every sample the same value
            if values[f"{kind} minimum"] == values[f"{kind} maximum"]:
                raise ValueError(
                    f"cannot read {fmt.upper()} file {str(path)!r}: signal {i + 1} "
                    f"({label!r}) has {kind} minimum = maximum "
                    f"({values[f'{kind} minimum']:g}), so its samples cannot be scaled; "
                    f"expected them to differ."
                )


_TAL_ONSET = re.compile(rb"^\s*([+-]\d+(?:\.\d*)?)\x14")


def _edf_check_continuous(path: Path, fmt: str) -> None:
    """Refuse an EDF+D/BDF+D file whose data records do not follow each other.

    MNE reads the records of a discontinuous file one after the other, its gaps closed
    without a word; each record's first annotation (its time-keeping TAL) says when it
    starts. Most EDF+D files have no gap: those are read.
    """
    with open(path, "rb") as fh:
        fixed = fh.read(256)
        if not fixed[192:197].upper().endswith(b"+D"):  # 'EDF+D', 'BDF+D'
            return
        try:
            ns = int(fixed[252:256].decode("ascii").strip())
            record_s = float(fixed[244:252].decode("ascii").strip())
            sig = fh.read(256 * ns)
            labels = [sig[i * 16 : (i + 1) * 16].decode("latin-1").strip() for i in range(ns)]
            nsamp = [int(sig[ns * 216 + i * 8 : ns * 216 + (i + 1) * 8]) for i in range(ns)]
        except (ValueError, IndexError):
            return  # the other checks, or MNE, say what is wrong
        ann = [i for i, lab in enumerate(labels) if "annotations" in lab.lower()]
        width = 3 if fmt == "bdf" else 2
        record_bytes = sum(nsamp) * width
        if not ann or record_bytes <= 0 or not math.isfinite(record_s) or record_s <= 0:
            return
        at = sum(nsamp[: ann[0]]) * width
        size = path.stat().st_size - (256 + 256 * ns)
        onsets = []
        for k in range(size // record_bytes):
            fh.seek(256 + 256 * ns + k * record_bytes + at)
            m = _TAL_ONSET.match(fh.read(min(nsamp[ann[0]] * width, 64)))
            if m is None:
                return  # no time-keeping annotation: nothing to check against
            onsets.append(float(m.group(1)))
    gaps = [(k, onsets[k] - (onsets[k - 1] + record_s)) for k in range(1, len(onsets))]
    gaps = [(k, g) for k, g in gaps if abs(g) > 1e-6 * max(1.0, record_s)]
    if gaps:
        k, g = gaps[0]
        total = sum(x for _, x in gaps)
        raise ValueError(
            f"{fmt.upper()} file {str(path)!r} is discontinuous ({fmt.upper()}+D): data "
            f"record {k + 1} starts at {onsets[k]:g} s, {abs(g):g} s "
            f"{'after' if g > 0 else 'before'} record {k} ends "
            f"({len(gaps)} gap{'s' if len(gaps) > 1 else ''}, {total:g} s in all); nacf "
            f"reads a recording as one continuous signal, and read across its gaps its "
            f"windows would join signal that is not continuous. Export each continuous "
            f"part to a file of its own (EDF+C)."
        )


def _edf_check_repeated(path: Path, fmt: str, exclude: list[str]) -> None:
    """Refuse signals that label one EEG electrode twice (``Fp1`` and ``Fp1``, ``T3``
    and ``T7``): MNE renames exact duplicates ``Fp1-0``, ``Fp1-1``, which name no
    electrode, and which of two is the electrode is not known. Labels that are not EEG
    may repeat (MNE's renaming is harmless there)."""
    from nacf_core.channels import canonical_name

    skip = set(exclude)
    groups: dict[str, list[tuple[int, str]]] = {}
    for i, (label, _) in enumerate(_edf_signal_rates(path)):
        name = canonical_name(label)
        if name is not None and label not in skip and "annotations" not in label.lower():
            groups.setdefault(name, []).append((i + 1, label))
    twice = {n: g for n, g in groups.items() if len(g) > 1}
    if not twice:
        return
    parts = []
    for name, g in list(twice.items())[:5]:
        nums = ", ".join(str(i) for i, _ in g[:-1]) + f" and {g[-1][0]}"
        labels = sorted({lab for _, lab in g})
        how = "" if labels == [name] else (
            " (labelled " + ", ".join(repr(lab) for _, lab in g[:-1])
            + f" and {g[-1][1]!r})")
        parts.append(f"signals {nums} are both {name}{how}")
    raise ValueError(
        f"{fmt.upper()} file {str(path)!r} labels one electrode twice: {'; '.join(parts)}; "
        f"which of them is the electrode is not known. Name the signals in order with a "
        f"montage (file:PATH?montage=Fp1,..., or --montage)."
    )


def _edf_exclude_other_rates(path: Path) -> tuple[list[str], float | None]:
    """Signals to leave out so that every kept one has the EEG channels' rate.

    MNE upsamples every signal of a mixed-rate file to the highest rate; EEG recorded
    at 256 Hz next to a 512 Hz auxiliary signal would come out at 512 Hz. The rate kept
    is the most common one among the channels :func:`nacf_core.channels.canonical_name`
    recognises as EEG (among all signals if none is recognised; ties: the higher).
    """
    from collections import Counter

    from nacf_core.channels import canonical_name

    rates = [(lab, r) for lab, r in _edf_signal_rates(path) if "annotations" not in lab.lower()]
    if len({r for _, r in rates}) <= 1:
        return [], None
    eeg = [r for lab, r in rates if canonical_name(lab) is not None]
    counts = Counter(eeg or [r for _, r in rates])
    target = max(counts, key=lambda r: (counts[r], r))
    return [lab for lab, r in rates if r != target], target


# microvolts per unit of a channel's physical dimension (EDF/BDF header, LSL channel unit),
# compared case-folded: both micro signs (U+00B5, U+03BC) fold to U+03BC
_UV_PER_UNIT = {
    **dict.fromkeys(("uv", "\u03bcv", "microv", "microvolt", "microvolts"), 1.0),
    **dict.fromkeys(("mv", "millivolt", "millivolts"), 1e3),
    **dict.fromkeys(("v", "volt", "volts"), 1e6),
    **dict.fromkeys(("nv", "nanovolt", "nanovolts"), 1e-3),
}


def check_units(units: Any, of: str = "signal") -> float | None:
    """Microvolts per unit of a ``units`` option (``None``: the units the source states);
    ``of``: what it is the unit of every one of, for the message."""
    if units is None:
        return None
    per_uv = unit_to_uv(units) if isinstance(units, str) else None
    if per_uv is None:
        raise ValueError(
            f"'units' must be one voltage unit, the unit of every {of}: uV (or µV), mV, V "
            f"or nV, in any case or spelt out (microvolts), got {units!r} instead.")
    return per_uv


def unit_to_uv(unit: str | None) -> float | None:
    """Microvolts per ``unit`` (``"uV"``, ``"µV"``, ``"mV"``, ``"V"``, ``"nV"``, spelt out
    or in any case); ``None`` for no unit or one that is not a voltage."""
    if not unit:
        return None
    return _UV_PER_UNIT.get(unit.strip().casefold())


def _edf_dimensions(path: Path) -> list[tuple[str, str, str]]:
    """``(label, dimension, dimension as MNE reads it)`` of every signal: the label and
    MNE's dimension decoded as MNE does (Latin-1), the dimension as the writer most
    likely meant it (UTF-8 if it decodes, else Latin-1)."""
    with open(path, "rb") as fh:
        fixed = fh.read(256)
        try:
            ns = int(fixed[252:256].decode("ascii").strip())
        except ValueError:
            return []
        sig = fh.read(256 * ns) if ns > 0 else b""
    if ns <= 0 or len(sig) < 256 * ns:
        return []
    out = []
    for i in range(ns):
        label = sig[i * 16 : (i + 1) * 16].strip().decode("latin-1")
        raw = sig[ns * 96 + i * 8 : ns * 96 + (i + 1) * 8].strip()
        try:
            dim = raw.decode("utf-8")
        except UnicodeDecodeError:
            dim = raw.decode("latin-1")
        out.append((label, dim, raw.decode("latin-1")))
    return out


def _edf_uv_scale(
    path: Path, fmt: str, raw: Any, exclude: list[str], units_uv: float | None = None,
    names: list[str] | None = None,
) -> np.ndarray:
    """What turns each of MNE's channels into microvolts.

    MNE reads a physical dimension of exactly ``uV``/``µV`` (Latin-1) as 1e-6 V and ``mV``
    as 1e-3 V, and every other one (``uv``, ``UV``, UTF-8 ``µV``, ``nV``, none) as volts,
    so multiplying by 1e6 made those channels a million (``nV``: a billion) times too
    large. Here each channel is scaled by the unit its header states (``units_uv``, the
    microvolts per unit the caller states for every signal, replaces it); one with no
    unit keeps the numbers the file states, taken as microvolts (logged), as does a
    signal that is not EEG in a unit that is not a voltage (a status or temperature
    channel; logged). An EEG signal (by its label, or by its name in ``names``, the
    montage it is read under) in a unit that is not a voltage (``counts``) is a
    ``ValueError`` naming it: its samples cannot be put in microvolts. ``1e6`` for every
    channel whose unit MNE read right.
    """
    from nacf_core.channels import canonical_name

    n = len(raw.ch_names)
    dims = [
        d for d in _edf_dimensions(path)
        if d[0] not in exclude and d[0] not in ("EDF Annotations", "BDF Annotations")
    ]
    scale = np.full(n, 1e6)
    if len(dims) != n:  # not the layout MNE read: leave its scaling
        if units_uv is not None:
            logger.warning("%s: cannot match the header's signals to MNE's channels; "
                           "'units' is not applied", path)
        return scale
    types = raw.get_channel_types()
    no_unit, not_eeg, refused = [], [], []
    for k, ((label, dim, mne_dim), kind) in enumerate(zip(dims, types)):
        if kind == "stim":  # MNE keeps a status channel's numbers as they are
            mne_v = 1.0
        elif mne_dim in ("\u03bcV", "\u00b5V", "\x83\xcaV", "uV"):
            mne_v = 1e-6
        elif mne_dim == "mV":
            mne_v = 1e-3
        else:
            mne_v = 1.0
        if units_uv is not None and kind != "stim":
            uv = units_uv
        else:
            uv = unit_to_uv(dim)
            if uv is None and mne_dim == "\x83\xcaV":  # Shift-JIS micro sign, as MNE takes it
                uv = 1.0
        if uv is None:
            uv = 1.0
            if kind == "stim":
                pass
            elif not dim:
                no_unit.append(f"{label!r}")
            elif canonical_name(label) is not None or (
                    names is not None and canonical_name(names[k]) is not None):
                refused.append(f"{label!r} ({dim!r})")
            else:
                not_eeg.append(f"{label!r} ({dim!r})")
        scale[k] = uv * {1e-6: 1e6, 1e-3: 1e3}.get(mne_v, 1.0)
    if refused:
        raise ValueError(
            f"{fmt.upper()} file {str(path)!r}: {len(refused)} EEG signal(s) have a physical "
            f"dimension that is not a voltage: {listed(refused)}; nacf cannot "
            f"put their samples in microvolts. If the samples are in fact in a voltage unit, "
            f"state it for every signal: file:{path}?units=uV as a SOURCE, units='uV' to "
            f"read_recording, --units uV to nacf simulate (or mV, V, nV); a nacf train or "
            f"nacf evaluate manifest cannot state it: convert such a file to microvolts "
            f"(write_npz). Samples in ADC counts or arbitrary units must be converted to a "
            f"voltage first."
        )
    if no_unit:
        logger.warning(
            "%s: %d signal(s) state no unit: %s; their numbers are taken as microvolts",
            path, len(no_unit), ", ".join(no_unit[:8]),
        )
    if not_eeg:
        logger.info(
            "%s: %d signal(s) that are not EEG have a unit that is not a voltage: %s; their "
            "numbers are kept as the file states them (never used as EEG)",
            path, len(not_eeg), ", ".join(not_eeg[:8]),
        )
    return scale


def _read_edf(
    path: Path, fmt: str, start_s: float | None, stop_s: float | None,
    units_uv: float | None = None, montage: Sequence[str] | str | None = None,
) -> Recording:
    import mne

    reader = mne.io.read_raw_edf if fmt == "edf" else mne.io.read_raw_bdf
    exclude, target = _edf_exclude_other_rates(path)
    _edf_check_size(path, fmt)
    _edf_check_scaling(path, fmt, exclude)
    if montage is None:
        _edf_check_repeated(path, fmt, exclude)
    _edf_check_continuous(path, fmt)
    if exclude:
        logger.info(
            "%s mixes sampling rates: keeping the %g Hz signals, leaving out %s",
            path, target, ", ".join(exclude),
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = reader(path, preload=False, verbose=False, exclude=exclude)
    except Exception as exc:  # MNE raises ValueError/RuntimeError/... for corrupt headers
        raise ValueError(f"cannot read {fmt.upper()} file {str(path)!r}: {exc}") from exc
    for w in caught:
        logger.info("%s: %s", path, w.message)
    if not raw.ch_names:  # an events file exported apart from its signals
        raise ValueError(
            f"{fmt.upper()} file {str(path)!r} holds no signal besides its annotations; "
            f"expected at least one EEG signal."
        )
    sfreq = _check_file_sfreq(float(raw.info["sfreq"]), f"{fmt.upper()} file {str(path)!r}")
    start, stop = _range_to_samples(start_s, stop_s, sfreq, raw.n_times, path)
    # the names the signals will be read under decide which are EEG (a montage renames)
    names = resolve_montage(montage, len(raw.ch_names)) if montage is not None else None
    scale = _edf_uv_scale(path, fmt, raw, exclude, units_uv, names)  # may refuse: first
    try:
        data = raw.get_data(start=start, stop=stop)  # volts, (n_channels, n_times)
    except Exception as exc:
        raise ValueError(f"cannot read samples from {str(path)!r}: {exc}") from exc
    data = np.ascontiguousarray(data.T * (1e6 if np.all(scale == 1e6) else scale),
                                dtype=np.float64)
    t0 = start / sfreq
    t1 = stop / sfreq
    annotations = tuple(
        Annotation(float(a["onset"]) - t0, float(a["duration"]), str(a["description"]))
        for a in raw.annotations
        if t0 <= float(a["onset"]) < t1
    )
    meas = raw.info.get("meas_date")
    start_time = meas + _dt.timedelta(seconds=t0) if meas is not None else None
    return Recording(
        data=data,
        sfreq=sfreq,
        ch_names=list(raw.ch_names),
        path=path,
        start_time=start_time,
        annotations=annotations,
        format=fmt,
    )


# --------------------------------------------------------------------------------------
# OpenBCI GUI text
# --------------------------------------------------------------------------------------

_RATE_RE = re.compile(r"^%\s*sample\s*rate\s*=(.*)$", re.IGNORECASE)
_NCH_RE = re.compile(r"^%\s*number\s*of\s*channels\s*=(.*)$", re.IGNORECASE)
_BOARD_RE = re.compile(r"^%\s*board\s*=\s*(.+)$", re.IGNORECASE)


def _read_openbci(path: Path, sfreq_override: float | None) -> Recording:
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    header: list[str] = []
    col_names: list[str] | None = None
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if not s or s.startswith("%"):
            if s:
                header.append(s)
            i += 1
            continue
        if s[0].isalpha():  # v6 column-name row
            col_names = [c.strip() for c in s.split(",")]
            i += 1
            continue
        break
    body_at = [k for k in range(i, len(lines)) if lines[k].strip()]  # 0-based file lines
    body = [lines[k] for k in body_at]
    if not body:
        raise ValueError(f"OpenBCI file {str(path)!r} has a header but no samples.")

    sfreq = n_ch = board = None
    for h in header:
        if m := _RATE_RE.match(h):
            sfreq = _openbci_header_value(path, h, sfreq, _openbci_rate(path, h, m.group(1)))
        elif m := _NCH_RE.match(h):
            n_ch = _openbci_header_value(path, h, n_ch, _openbci_n_channels(path, h, m.group(1)))
        elif m := _BOARD_RE.match(h):
            board = m.group(1).strip()
    if col_names is not None:
        exg = [c for c in col_names if c.lower().startswith("exg channel")]
        if exg:
            if n_ch is not None and n_ch != len(exg):
                raise ValueError(
                    f"OpenBCI file {str(path)!r}: header says {n_ch} channels but the column "
                    f"row names {len(exg)} EXG channels."
                )
            n_ch = len(exg)
    if sfreq is None:
        if sfreq_override is not None:
            sfreq = sfreq_override
        else:
            sfreq = _CYTON_DEFAULT_SFREQ
            logger.info(
                "%s states no sampling rate (SD-card log): assuming the Cyton default %g Hz",
                path, sfreq,
            )
    elif sfreq_override is not None and sfreq_override != sfreq:
        logger.warning(
            "%s states %g Hz; ignoring sfreq=%g", path, sfreq, sfreq_override
        )

    sep = "\t" if "\t" in body[0] and "," not in body[0] else ","
    if n_ch is None:
        n_ch = _infer_openbci_channels(path, body, sep)
    need = 1 + n_ch
    # drop a truncated last line (the GUI stopped mid-write)
    skipped = 0
    ref_fields = body[1 if len(body) > 1 else 0].count(sep) + 1
    if len(body) > 1 and body[-1].count(sep) + 1 < ref_fields:
        body = body[:-1]
        skipped += 1
        logger.info("%s: dropped a truncated last line", path)
    try:
        arr = np.loadtxt(body, delimiter=sep, usecols=range(need), dtype=np.float64, ndmin=2)
    except ValueError as exc:
        bad = _first_bad_line(body, sep, need)
        why = re.sub(r" at row \d+, column \d+\.?$", "", str(exc))  # numpy's data row
        raise ValueError(
            f"OpenBCI file {str(path)!r}: malformed sample line {body_at[bad[0]] + 1}: "
            f"{bad[1][:100]!r} (expected a sample index and {n_ch} numbers separated by "
            f"{sep!r}): {why}"
        ) from None
    # GUI v5 writes an all-zero placeholder row before the first sample
    lead = 0
    if board is not None:
        while lead < arr.shape[0] - 1 and not np.any(arr[lead]) and _all_zero_line(body[lead], sep):
            lead += 1
    if lead:
        arr = arr[lead:]
        body = body[lead:]
        skipped += lead
    counter = arr[:, 0]
    data = np.ascontiguousarray(arr[:, 1:need])
    start_time = _openbci_start_time(body[0], sep, need)
    return Recording(
        data=data,
        sfreq=float(sfreq),
        ch_names=[f"EXG Channel {k}" for k in range(n_ch)],
        path=path,
        start_time=start_time,
        format="openbci",
        counter_gaps=_counter_gaps(counter),
        skipped_rows=skipped,
        extra={"board": board} if board else {},
    )


def _openbci_rate(path: Path, line: str, value: str) -> float:
    """``%Sample Rate = 250.0 Hz``: see :func:`_check_file_sfreq`."""
    value = re.sub(r"\s*hz\s*$", "", value.strip(), flags=re.IGNORECASE)
    try:
        sfreq = float(value)
    except ValueError:
        sfreq = math.nan
    return _check_file_sfreq(sfreq, f"OpenBCI file {str(path)!r}", got=repr(line[:80]))


def _openbci_n_channels(path: Path, line: str, value: str) -> int:
    """``%Number of channels = 8``: an integer from 1 to ``MAX_CHANNELS``."""
    try:
        n_ch = int(value.strip())
    except ValueError:
        n_ch = 0
    if not 1 <= n_ch <= MAX_CHANNELS:
        raise ValueError(
            f"OpenBCI file {str(path)!r}: '%Number of channels' must be an integer from 1 to "
            f"{MAX_CHANNELS}, got {line[:80]!r}."
        )
    return n_ch


def _openbci_header_value(path: Path, line: str, old: Any, new: Any) -> Any:
    """A header field stated again must say the same."""
    if old is not None and old != new:
        raise ValueError(
            f"OpenBCI file {str(path)!r}: the header contradicts itself, {line[:80]!r} after "
            f"a line that said {old:g}."
        )
    return new


def _all_zero_line(line: str, sep: str) -> bool:
    try:
        return all(float(f) == 0.0 for f in line.split(sep) if f.strip())
    except ValueError:
        return False


def _infer_openbci_channels(path: Path, body: list[str], sep: str) -> int:
    fields = [f.strip() for f in body[0].split(sep)]
    numeric = 0
    for f in fields[1:]:
        if ":" in f or not _is_number(f):
            break
        numeric += 1
    # trailing POSIX-ms timestamp column in GUI v4 sample-data files
    if numeric and float(fields[numeric]) > 1e11:
        numeric -= 1
    for n_ch, extra in ((16, 3), (8, 3), (16, 0), (8, 0)):
        if numeric == n_ch + extra:
            return n_ch
    raise ValueError(
        f"OpenBCI file {str(path)!r}: cannot infer the number of channels from "
        f"{numeric} numeric columns after the sample index (expected 8 or 16 channels, "
        f"optionally followed by 3 accelerometer columns) and the header has no "
        f"'%Number of channels'."
    )


def _first_bad_line(body: list[str], sep: str, need: int) -> tuple[int, str]:
    for k, ln in enumerate(body):
        parts = ln.split(sep)
        if len(parts) < need or not all(_is_number(p) for p in parts[:need]):
            return k, ln
    return 0, body[0]


def _openbci_start_time(line: str, sep: str, need: int) -> _dt.datetime | None:
    """POSIX-ms timestamp column (GUI v4-v6), if any."""
    for f in line.split(sep)[need:]:
        f = f.strip()
        if f.isdigit() and 1e12 <= int(f) < 1e14:
            return _dt.datetime.fromtimestamp(int(f) / 1000.0, tz=_dt.timezone.utc)
    return None


# --------------------------------------------------------------------------------------
# BrainFlow CSV
# --------------------------------------------------------------------------------------


def _read_brainflow(path: Path, sfreq_override: float | None) -> Recording:
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    sep = "\t" if "\t" in first else ","
    n_cols = len(first.rstrip("\r\n").split(sep))
    layout = _BRAINFLOW_LAYOUTS.get(n_cols)
    if layout is None:
        raise ValueError(
            f"BrainFlow CSV {str(path)!r} has {n_cols} columns; supported layouts are "
            f"24 (Cyton) and 32 (Cyton+Daisy)."
        )
    # a last line with fewer fields (the writer stopped mid-line) is dropped, as in
    # OpenBCI GUI files; a short line anywhere else is an error naming it
    n_rows, last_n = 0, n_cols
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                n_rows += 1
                last_n = line.rstrip("\r\n").count(sep) + 1
    truncated = n_rows > 1 and last_n < n_cols
    try:
        arr = np.loadtxt(path, delimiter=sep, dtype=np.float64, ndmin=2,
                         max_rows=n_rows - 1 if truncated else None)
    except ValueError as exc:
        bad = (_csv_field_count_error(path, n_cols, sep=sep, header=False)
               or _csv_first_non_number(path, None, sep))
        raise ValueError(f"BrainFlow CSV {str(path)!r} is malformed: {bad or exc}") from None
    if truncated:
        logger.info("%s: dropped a truncated last line (%d of %d fields)", path, last_n,
                    n_cols)
    # the Cyton's first packet after 'b' comes before the ADS1299's first conversion:
    # every EEG channel exactly 0. As a sample it is a step of the channels' whole DC
    # offset (10-25 mV) that rings through the first epoch: left out, like the GUI's
    # placeholder row
    nonzero = np.flatnonzero(np.any(arr[:, layout["eeg"]] != 0, axis=1))
    lead = int(nonzero[0]) if nonzero.size else 0
    if lead:
        arr = arr[lead:]
        logger.info("%s: left out %d leading row(s) with every EEG channel at 0", path, lead)
    data = np.ascontiguousarray(arr[:, layout["eeg"]])
    ts = arr[:, layout["timestamp"]]
    sfreq = float(sfreq_override) if sfreq_override is not None else layout["sfreq"]
    if ts.size > 1 and ts[-1] > ts[0]:
        est = (ts.size - 1) / (ts[-1] - ts[0])
        if abs(est - sfreq) > 0.1 * sfreq:
            logger.warning(
                "%s: host timestamps span %.1f s for %d samples (%.1f Hz) but the %s "
                "samples at %g Hz; using %g Hz (samples were probably lost)",
                path, ts[-1] - ts[0], ts.size, est, layout["board"], sfreq, sfreq,
            )
    start_time = None
    if ts.size and 1e9 <= ts[0] < 1e11:
        start_time = _dt.datetime.fromtimestamp(float(ts[0]), tz=_dt.timezone.utc)
    return Recording(
        data=data,
        sfreq=sfreq,
        ch_names=[f"EXG Channel {k}" for k in range(data.shape[1])],
        path=path,
        start_time=start_time,
        format="brainflow",
        counter_gaps=_counter_gaps(arr[:, 0]),
        skipped_rows=lead + int(truncated),
        extra={"board": layout["board"]},
    )


# --------------------------------------------------------------------------------------
# nacf .npz
# --------------------------------------------------------------------------------------


# what zipfile, zlib and numpy's .npy parser raise on a damaged archive or header
_NPZ_ERRORS = (
    zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, TypeError, SyntaxError,
    tokenize.TokenError, NotImplementedError, RuntimeError, struct.error,
)
# POSIX seconds a .npz 'start_time' may hold: 1970 up to 1e11 s (year 5138)
_MAX_START_TIME = 1e11


def _read_npz(path: Path) -> Recording:
    where = f"nacf .npz recording {str(path)!r}"
    try:
        zf = zipfile.ZipFile(path)
    except _NPZ_ERRORS as exc:
        raise ValueError(f"{where} is corrupt: {exc}") from None
    with zf:
        members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        missing = {"data", "sfreq", "ch_names"} - set(members)
        if missing:
            raise ValueError(
                f"{where} lacks the key(s) {', '.join(sorted(missing))} "
                f"(it has {', '.join(members) or 'none'})."
            )
        data = _npz_array(zf, members["data"], where)
        sfreq = _npz_number(_npz_array(zf, members["sfreq"], where), "sfreq", where)
        ch_names = _npz_array(zf, members["ch_names"], where)
        start = None
        if "start_time" in members:
            start = _npz_number(_npz_array(zf, members["start_time"], where), "start_time", where)
    if ch_names.ndim != 1 or ch_names.dtype.kind != "U":
        raise ValueError(
            f"{where}: 'ch_names' must be a 1-D array of strings, got shape {ch_names.shape} "
            f"and dtype {ch_names.dtype}."
        )
    names = _check_names([str(n) for n in ch_names], where)
    if data.ndim != 2 or data.shape[1] != len(names):
        raise ValueError(
            f"{where}: 'data' must have shape (n_times, {len(names)}) to match 'ch_names', "
            f"got {data.shape}."
        )
    if not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"{where}: 'data' must be floating point, got {data.dtype}.")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{where} has no samples or no channels (shape {data.shape}).")
    sfreq = _check_file_sfreq(sfreq, where)
    start_time = None
    if start is not None:
        if not (math.isfinite(start) and 0 <= start < _MAX_START_TIME):
            raise ValueError(
                f"{where}: 'start_time' must be POSIX seconds (UTC) in [0, "
                f"{_MAX_START_TIME:g}), got {start!r}."
            )
        start_time = _dt.datetime.fromtimestamp(start, tz=_dt.timezone.utc)
    return Recording(
        data=np.ascontiguousarray(data, dtype=np.float64),
        sfreq=sfreq,
        ch_names=names,
        path=path,
        start_time=start_time,
        format="npz",
    )


def _npz_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    """One array of an .npz, its size checked from the zip directory and the .npy header.

    The uncompressed size (``info.file_size``, which also caps what zipfile inflates) must
    be at most ``_NPZ_MAX_ARRAY_BYTES`` and agree with the shape and dtype the header
    declares, so nothing is allocated or inflated on the word of a damaged file.
    """
    key = info.filename[:-4]
    if info.file_size > _NPZ_MAX_ARRAY_BYTES:
        raise ValueError(
            f"{where}: {key!r} is {info.file_size} bytes uncompressed, more than the "
            f"{_NPZ_MAX_ARRAY_BYTES} bytes (2 GiB) this reader loads."
        )
    try:
        with zf.open(info) as fh:
            nbytes = npy_data_bytes(fh, f"{where}: {key!r}")
            header_len = fh.tell()
    except _NPZ_ERRORS as exc:
        raise ValueError(f"{where} is corrupt: cannot read {key!r} ({exc}).") from None
    if header_len + nbytes != info.file_size:
        raise ValueError(
            f"{where} is corrupt: {key!r} declares {nbytes} bytes of data but holds "
            f"{info.file_size - header_len} bytes."
        )
    try:
        with zf.open(info) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise ValueError(f"{where} is corrupt: cannot read {key!r} ({exc}).") from None


def _npz_number(arr: np.ndarray, key: str, where: str) -> float:
    """A scalar entry (``sfreq``, ``start_time``): one real number."""
    if arr.size != 1 or arr.ndim > 1 or arr.dtype.kind not in "iuf":
        raise ValueError(
            f"{where}: {key!r} must be a single real number, got an array of shape "
            f"{arr.shape} and dtype {arr.dtype}."
        )
    return float(arr.reshape(()))


# --------------------------------------------------------------------------------------
# nacf record CSV
# --------------------------------------------------------------------------------------


def _read_nacf_csv(path: Path, sfreq_override: float | None) -> Recording:
    where = f"nacf CSV {str(path)!r}"

    def _num(v: str) -> float:
        v = v.strip()
        return float(v) if v else math.nan

    try:
        with open(path, encoding="utf-8") as fh:
            header = [h.strip() for h in fh.readline().rstrip("\r\n").split(",")]
            names = _check_names(header[1:], where) if len(header) > 1 else []
            if not names:
                raise ValueError(f"{where}: the header names no channel after 'timestamp'.")
            try:  # every column: a value beyond the header's fields is an error, not dropped
                arr = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2, converters=_num)
            except UnicodeDecodeError:
                raise
            except ValueError as exc:
                why = (_csv_field_count_error(path, len(header))
                       or _csv_first_non_number(path, header) or exc)
                raise ValueError(f"{where} is malformed: {why}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text: {_first_non_utf8(path)}.") from None
    if arr.shape[0] == 0:
        raise ValueError(f"{where} has a header but no samples.")
    if arr.shape[1] != len(header):
        raise ValueError(f"{where} is malformed: {_csv_field_count_error(path, len(header))}")
    ts = arr[:, 0]
    if sfreq_override is not None:
        sfreq = float(sfreq_override)
    else:
        back = np.flatnonzero(np.diff(ts) < 0)
        if back.size:  # joined recordings, a clock set back: the span says nothing
            k = int(back[0]) + 1  # the row that goes back; its line is k + 2
            raise ValueError(
                f"{where}: the timestamp on line {k + 2} ({ts[k]:.6f}) is before the one on "
                f"line {k + 1} ({ts[k - 1]:.6f}); the timestamps of a nacf CSV only go "
                f"forward (two recordings joined? a clock set back?), and the sampling rate "
                f"comes from them. Split the file, or pass sfreq= to read it at a known rate."
            )
        if arr.shape[0] < 2 or not ts[-1] > ts[0]:
            raise ValueError(
                f"{where}: cannot estimate the sampling rate from "
                f"{arr.shape[0]} timestamp(s); pass sfreq=."
            )
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            est = float((ts.size - 1) / (ts[-1] - ts[0]))
            sfreq, gap_s = _nacf_csv_rate(ts, est)
        if gap_s > 0:
            logger.warning(
                "%s: the timestamps span %.3f s for %d samples (%.2f Hz), but the rows are "
                "%g Hz apart: the recording has gaps (%.3f s in all; samples lost, not in "
                "the file); using %g Hz", path, ts[-1] - ts[0], ts.size, est, sfreq, gap_s,
                sfreq,
            )
        if sfreq is None:
            sfreq = round(est, 2)
        sfreq = _check_file_sfreq(
            sfreq, where, got=f"{est:g} Hz from {ts.size} timestamps {ts[0]:g} to {ts[-1]:g} s"
        )
    start_time = None
    if 1e9 <= ts[0] < 1e11:  # POSIX seconds (other clocks, e.g. LSL's, are not dates)
        start_time = _dt.datetime.fromtimestamp(float(ts[0]), tz=_dt.timezone.utc)
    data = arr[:, 1:]
    # an infinite sample is named by its row in the file, before any gap is filled
    _refuse_infinite(Recording(data=data, sfreq=float(sfreq), ch_names=names),
                     f"nacf-csv file {str(path)!r}")
    data, n_gaps = _fill_timestamp_gaps(data, ts, float(sfreq), where)
    return Recording(
        data=np.ascontiguousarray(data),
        sfreq=float(sfreq),
        ch_names=names,
        path=path,
        start_time=start_time,
        format="nacf-csv",
        extra={"timestamp_gaps": n_gaps} if n_gaps else {},
    )


# a gap is filled with at most this many seconds of NaN rows: the longest window a model
# may have (nacf_core.model.MAX_WINDOW_S), so every window that touches it is rejected, as
# the Epocher fills at most one window
_MAX_GAP_FILL_S = 20.0


def _fill_timestamp_gaps(data: np.ndarray, ts: np.ndarray, sfreq: float,
                         where: str) -> tuple[np.ndarray, int]:
    """``data`` with NaN rows (dropped samples) where the timestamps ``ts`` jump over an
    outage, and how many outages: a step of more than ``1 / sfreq + GAP_S`` (the
    Epocher's rule) and of more than ``_GAP_STEPS`` times the median step (so a file
    read at a stated ``sfreq`` whose stamps are in another unit is not all gaps) gets
    ``round(step * sfreq) - 1`` rows, at most ``_MAX_GAP_FILL_S`` of them. The signal on
    either side of a reconnect is not one, and replayed or windowed as one it would be
    spliced. A file whose gaps would add more rows than it has, beyond one gap's most, is
    refused: a small file of far-apart rows is not hours of NaN."""
    if ts.size < 2:
        return data, 0
    step = np.diff(ts)
    with np.errstate(invalid="ignore"):
        pos = step[np.isfinite(step) & (step > 0)]
        if pos.size == 0:
            return data, 0
        limit = max(1.0 / sfreq + GAP_S, _GAP_STEPS * float(np.median(pos)))
        at = np.flatnonzero(step > limit)
    if at.size == 0:
        return data, 0
    most = int(round(_MAX_GAP_FILL_S * sfreq))
    fill = np.minimum(np.round(step[at] * sfreq) - 1, most).astype(np.int64)
    total = int(fill.sum())
    if total > data.shape[0] + most:
        raise ValueError(
            f"{where}: its timestamps jump over {at.size} gaps ({float(step[at].sum()):g} s "
            f"in all) between its {data.shape[0]} rows at {sfreq:g} Hz: more gap than "
            "signal, not a recording nacf can replay (the gaps would be "
            f"{total} rows of dropped samples). Check the timestamp column's unit.")
    logger.warning(
        "%s: the timestamps jump over %d gap(s) (a reconnect: samples lost, not in the "
        "file), %.3f s in all; filled with %d rows of dropped samples (NaN), at most "
        "%g s each, so the signal on either side of a gap is not joined", where, at.size,
        float((step[at] - 1.0 / sfreq).sum()), total, _MAX_GAP_FILL_S)
    parts, begin = [], 0
    for i, k in zip(at.tolist(), fill.tolist()):
        parts += [data[begin:i + 1], np.full((k, data.shape[1]), np.nan, data.dtype)]
        begin = i + 1
    return np.concatenate(parts + [data[begin:]]), int(at.size)


# a step between rows longer than this many times the median step is a gap (a reconnect)
_GAP_STEPS = 3.0


def _nacf_csv_rate(ts: np.ndarray, span_est: float) -> tuple[float | None, float]:
    """The common rate the timestamps of a nacf CSV give, and the seconds of gaps.

    The rows are ``1 / sfreq`` apart except across a gap (a reconnect: the samples lost
    are not in the file), which lowers the span over samples: a 256 Hz stream away for
    1.5 s in 60 s spans 249.8 Hz, within 1 % of 250. So when a step is more than
    ``_GAP_STEPS`` times the median step, the rate comes from the steps without the gaps.
    Else from the span over samples (no gap: 0.0 s), then from the median step; ``None``
    if none is within 1 % of a common rate.
    """
    steps = np.diff(ts)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    if steps.size == 0:
        return _snap_rate(span_est), 0.0
    med = float(np.median(steps))
    gaps = steps > _GAP_STEPS * med
    if gaps.any():
        regular = steps[~gaps]
        sfreq = _snap_rate(float(regular.size / regular.sum()))
        if sfreq is not None:
            return sfreq, float((steps[gaps] - 1.0 / sfreq).sum())
    sfreq = _snap_rate(span_est)
    if sfreq is not None:
        return sfreq, 0.0
    sfreq = _snap_rate(1.0 / med)
    if sfreq is not None:
        return sfreq, max(0.0, float(ts[-1] - ts[0] - (ts.size - 1) / sfreq))
    return None, 0.0


def _snap_rate(est: float) -> float | None:
    """The common rate within 1 % of ``est``, or None."""
    if not math.isfinite(est):
        return None
    near = min(_COMMON_RATES, key=lambda r: abs(r - est))
    return near if abs(near - est) <= 0.01 * near else None


def _csv_field_count_error(
    path: Path, n_fields: int, *, sep: str = ",", header: bool = True
) -> str | None:
    """The first row whose field count is not the header's (nacf CSV) or the first
    row's (BrainFlow CSV, ``header=False``), as an error message."""
    with open(path, encoding="utf-8", errors="strict" if header else "replace") as fh:
        if header:
            fh.readline()
        for k, line in enumerate(fh, start=2 if header else 1):
            n = line.rstrip("\r\n").count(sep) + 1
            if line.strip() and n != n_fields:
                what = (f"(the timestamp and the {n_fields - 1} channels the header names)"
                        if header else "(the BrainFlow board layout of the first row)")
                return f"line {k} has {n} fields; every row must have {n_fields} {what}."
    return None


def _csv_first_non_number(path: Path, header: list[str] | None,
                          sep: str = ",") -> str | None:
    """The first field that is no number, by its line and column, as an error message
    (numpy names a 0-based row of the data, not the file's line): a nacf CSV (its
    ``header``: the timestamp, then channels) or, ``header=None``, a BrainFlow CSV."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        if header is not None:
            fh.readline()
        for k, line in enumerate(fh, start=1 if header is None else 2):
            for j, v in enumerate(line.rstrip("\r\n").split(sep)):
                v = v.strip()
                if not v or _is_number(v):
                    continue
                if header is None:
                    return f"line {k}, column {j + 1}: {v!r} is not a number."
                what = "the timestamp" if j == 0 else f"channel {header[j]!r}"
                expected = ("seconds" if j == 0
                            else "microvolts, or an empty field for a dropped sample")
                return f"line {k}, {what}: {v!r} is not a number (expected {expected})."
    return None


def _first_non_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 is, for the error message."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return f"byte {raw[exc.start]:#04x} at offset {exc.start} (line {line})"
    return "the file changed while it was read"
