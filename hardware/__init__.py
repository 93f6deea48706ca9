"""Devices and recordings: every source yields time-major ``(n_times, n_channels)``
chunks in microvolts, with timestamps, channel names, the sampling rate and counters
of what went wrong.

Modules (imported on demand, so that ``import nacf_core.hardware`` stays light):
``cyton`` (packet codec), ``framing``, ``serial_reader`` (``CytonReader``), ``lsl``
(``LslSource``, ``stream_recording_to_lsl``), ``files`` (``read_recording``),
``playback`` (``FileSource``), ``epoching`` (``Epocher``, ``EpochStream``), ``simulator``
(``SimulatedCyton``), ``sources`` (``open_source``), ``montages``.
"""

from .base import Chunk, Counters

__all__ = ["Chunk", "Counters"]
