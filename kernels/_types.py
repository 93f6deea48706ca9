"""Types shared by every kernel backend."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["ArtifactReason", "ArtifactLimits"]


class ArtifactReason(IntEnum):
    """Why an (epoch, channel) was rejected. Where several apply, the lowest wins."""

    OK = 0
    NON_FINITE = 1
    RAILED = 2
    FLAT = 3
    PEAK_TO_PEAK = 4
    JUMP = 5


@dataclass(frozen=True)
class ArtifactLimits:
    """Thresholds of the artifact detector, in microvolts.

    Attributes
    ----------
    rail_uv : float
        A sample with ``abs(x) >= rail_uv`` is railed.  The Cyton's ADS1299 rails at
        ±187 500 µV (4.5 V / gain 24); the default flags a channel slightly inside.
    rail_fraction : float
        Fraction of railed samples in an epoch-channel that makes it RAILED (at least
        one sample always).  Default 0: one clipped sample is enough, because on the
        real recordings a channel that touches the rail does so in short full-scale
        excursions (5 samples in a 4 s epoch) that wreck the whole epoch after
        filtering.
    flat_uv : float
        Standard deviation under which an epoch-channel is FLAT.
    peak_to_peak_uv : float
        Peak-to-peak amplitude over which it is PEAK_TO_PEAK.
    jump_uv : float
        Largest absolute sample-to-sample difference over which it is JUMP.

    Notes
    -----
    The defaults suit epochs bandpassed to about 1-40 Hz (the checks after RAILED
    expect bandpassed data; RAILED expects the raw signal, see
    :mod:`nacf_core.artifacts`).  On the real Cyton recordings in
    ``shared/data/openbci`` (4 s epochs, 1-40 Hz, 250 Hz) clean EEG has a median
    standard deviation of 18-26 µV (10th percentile 8 µV: far above ``flat_uv``), a
    median peak-to-peak of 120-190 µV (blinks and alpha reach 300-400 µV, so 500 µV
    keeps them and rejects movement and electrode pops of thousands of µV), and a
    median largest sample-to-sample step of 20-50 µV (90th percentile 60-100 µV on
    clean files, hundreds on the files with loose electrodes).  ``jump_uv`` is per
    sample: at 1000 Hz the same slope gives steps four times smaller than at 250 Hz.
    Zeroed channels have a standard deviation of exactly 0; railed ones sit at
    -187 500.02 µV.
    """

    rail_uv: float = 187_000.0
    rail_fraction: float = 0.0
    flat_uv: float = 0.5
    peak_to_peak_uv: float = 500.0
    jump_uv: float = 200.0
