"""What every source delivers downstream."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Chunk", "Counters", "GAP_S", "timestamp_outages"]

#: A step between consecutive timestamps longer than ``1 / sfreq + GAP_S`` seconds is an
#: outage the source did not fill with NaN rows (a reconnect, a resync after a long loss,
#: an LSL stream that came back); shorter steps are clock jitter. One rule for every
#: consumer: the Epocher, the client's blocks, the nacf CSV reader.
GAP_S = 0.25


def timestamp_outages(ts: np.ndarray, t_prev: float, sfreq: float,
                      gap_s: float = GAP_S) -> tuple[np.ndarray, np.ndarray, float]:
    """``(at, step, t_last)`` for a chunk's timestamps ``ts``: the rows whose step from the
    sample before (``t_prev`` for the first: the last stamp of the chunk before, NaN for
    none) is longer than ``1 / sfreq + gap_s``, an outage (:data:`GAP_S`); every row's
    step; and the stamp to pass as ``t_prev`` with the next chunk (``ts``' last, or
    ``t_prev`` when that is NaN). Steps back and NaN stamps are no outage."""
    ts = np.asarray(ts, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0), t_prev
    prev = np.concatenate([[t_prev], ts[:-1]])
    with np.errstate(invalid="ignore"):
        step = ts - prev
        at = np.flatnonzero(step > 1.0 / sfreq + gap_s)
    return at, step, float(ts[-1]) if np.isfinite(ts[-1]) else t_prev


@dataclass
class Chunk:
    """A block of samples from a source.

    Attributes
    ----------
    samples : ndarray, shape (n_times, n_channels), float32
        Microvolts, time-major. A dropped sample is a row of NaN, so the timeline stays true.
    timestamps : ndarray, shape (n_times,), float64
        Seconds (the source's clock, mapped to the local clock where the source allows).
    ch_names : list of str
    sfreq : float
        Nominal sampling rate in Hz.
    """

    samples: np.ndarray
    timestamps: np.ndarray
    ch_names: list[str]
    sfreq: float

    @property
    def n_times(self) -> int:
        return int(self.samples.shape[0])


@dataclass
class Counters:
    """What went right and wrong at a source. Every anomaly is counted."""

    ok: int = 0            # packets/samples decoded and delivered
    corrupt: int = 0       # frames discarded (bad end byte, forged, truncated)
    dropped: int = 0       # samples missing from the sequence (delivered as NaN rows)
    garbage_bytes: int = 0  # bytes skipped while resynchronising
    reconnects: int = 0
    overflow: int = 0      # samples lost because a consumer was too slow (if the source drops)
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d
