"""Small slices of the real Cyton recordings for the filter tests (read in place)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Recordings with the large DC offsets (and a railed / zeroed channel) a Cyton delivers.
CYTON_FILES = [
    "openbci/gui/OpenBCI-sampleData-1-blinks-jawClench-alpha.txt",
    "openbci/gui/OpenBCI-RAW-2016-07-27_14-10-53.txt",
    "openbci/gui/SDconverted-2014-10-22_16-27-06.txt",
    "openbci/cyton-eyes/OpenBCI-RAW-EyesOpen.txt",
    "openbci/brainflow-csv/EyesSubject2Session1.csv",
]


def load_cyton(shared_data: Path, rel: str, seconds: float = 12.0):
    """``(data (n_times, n_channels) float64 µV, sfreq)``: the first ``seconds`` of a file.

    Leading all-zero rows (a BrainFlow header sample) are dropped.
    """
    from nacf_core.hardware.files import read_recording

    rec = read_recording(shared_data / rel)
    data = np.asarray(rec.data, dtype=np.float64)
    data = data[np.isfinite(data).all(axis=1)]
    nonzero = np.flatnonzero(np.any(data != 0, axis=1))
    data = data[nonzero[0]:] if nonzero.size else data
    n = min(len(data), int(seconds * rec.sfreq))
    return np.ascontiguousarray(data[:n]), float(rec.sfreq)
