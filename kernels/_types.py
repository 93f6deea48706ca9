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
        Fraction of railed samples in an epoch-channel that makes it RAILED.
    flat_uv : float
        Standard deviation under which an epoch-channel is FLAT.
    peak_to_peak_uv : float
        Peak-to-peak amplitude over which it is PEAK_TO_PEAK.
    jump_uv : float
        Largest absolute sample-to-sample difference over which it is JUMP.
    """

    rail_uv: float = 187_000.0
    rail_fraction: float = 0.01
    flat_uv: float = 0.5
    peak_to_peak_uv: float = 500.0
    jump_uv: float = 200.0
