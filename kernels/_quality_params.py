"""Constants of the quality score and the tables the compiled quality kernels share.

The formula (documented in :func:`nacf_core.artifacts.quality`) is the same in every
backend; its constants live here, once.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = [
    "LINE_FREQS",
    "FLAT_RMS_UV",
    "GOOD_RMS_UV",
    "GOOD_P2P_UV",
    "MAX_P2P_UV",
    "line_window",
    "line_tables",
]

#: Mains frequencies whose power the line-noise term measures (Hz).  A frequency at or
#: above Nyquist is skipped.
LINE_FREQS = (50.0, 60.0)
#: RMS (µV) at or under which the flatness term is 0 ...
FLAT_RMS_UV = 0.5
#: ... and from which it is 1 (linear in between).
GOOD_RMS_UV = 2.0
#: Peak-to-peak amplitude (µV) up to which the range term is 1 ...
GOOD_P2P_UV = 200.0
#: ... and from which it is 0 (linear in between).
MAX_P2P_UV = 500.0


def line_window(n_times: int) -> np.ndarray:
    """The half-sample-shifted Hann window ``sin(pi (n + 1/2) / N) ** 2``, float64 ``(N,)``.

    Unlike ``numpy.hanning`` it has no zero end-points, so it is usable for N = 1 and 2
    (its sum is N / 2 for N >= 2 and 1 for N = 1).
    """
    n = np.arange(n_times, dtype=np.float64)
    return np.sin(np.pi * (n + 0.5) / max(n_times, 1)) ** 2


@lru_cache(maxsize=32)
def line_tables(n_times: int, sfreq: float) -> tuple[np.ndarray, float]:
    """Windowed DFT tables for the line frequencies below Nyquist.

    Cached per ``(n_times, sfreq)`` (a stream uses one window length), read-only.

    Returns
    -------
    tables : ndarray, shape (2 * n_freqs, n_times), float64, C-contiguous
        Rows ``2 f`` and ``2 f + 1`` hold ``w[n] cos(2 pi f n / sfreq)`` and
        ``w[n] sin(2 pi f n / sfreq)`` for each line frequency ``f < sfreq / 2``.
    norm : float
        ``2 / sum(w) ** 2``: ``norm * |X_f| ** 2`` is the variance a sinusoid at ``f``
        contributes (0 when ``n_times == 0``).
    """
    freqs = [f for f in LINE_FREQS if f < sfreq / 2.0]
    w = line_window(n_times)
    n = np.arange(n_times, dtype=np.float64)
    tables = np.empty((2 * len(freqs), n_times), dtype=np.float64)
    for i, f in enumerate(freqs):
        phase = 2.0 * math.pi * f * n / sfreq
        tables[2 * i] = w * np.cos(phase)
        tables[2 * i + 1] = w * np.sin(phase)
    wsum = float(w.sum())
    norm = 2.0 / (wsum * wsum) if wsum > 0 else 0.0
    tables.setflags(write=False)
    return tables, norm
