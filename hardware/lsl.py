"""Lab Streaming Layer: an inlet source and an outlet that streams a recording.

Uses ``pylsl`` (its wheel bundles liblsl).

:class:`LslSource` resolves a stream by name and/or type (waiting up to ``timeout``
seconds, a clear :class:`~nacf_core.errors.Unavailable` when none answers), reads the
channel labels, units and nominal rate from the stream's description, and pulls
chunks. Timestamps are mapped to this machine's LSL clock (``pylsl.local_clock()``)
with ``inlet.time_correction()``, refreshed every ``clock_refresh_s`` seconds. A stream
is refused (``ValueError``) before an inlet is opened when its header is unreadable
(liblsl cannot parse a NaN or infinite rate) or its nominal rate is irregular (0), below
1 Hz (liblsl buffers nothing of it) or above ``nacf_core._validation.MAX_SAMPLE_RATE_HZ``
(100 kHz); and once connected,
when its labels name a channel twice or label some channels but not all (the default
names would rename the labelled ones) and no ``montage`` replaces them, or when an EEG
channel states a unit that is not a voltage and no ``units`` replaces them (see Units).

Several streams under one name (muselsl sends a Muse's EEG, PPG, accelerometer and
gyroscope all as ``Muse``, with one ``source_id``): without a ``type``, every stream that
answers within half a second of the first is gathered and the one of type ``EEG`` is
read (several types and none ``EEG``: a ``ValueError`` asking for a type); the stream
read fixes ``type`` and ``source_id`` for reconnects.

Stream vanishing: the inlet is opened with ``recover=False`` so liblsl reports the loss
(``LostError``) instead of hanging. The source then re-resolves the same stream (same
name, type and ``source_id``) for up to ``reconnect_s`` seconds; if it comes back, the
reading goes on (``counters.reconnects`` += 1; the samples sent meanwhile are lost,
and nothing in LSL says how many); if it does not, ``read_chunk`` returns ``None`` (the
end, like a file) and ``counters.extra["lost"]`` is 1. ``reconnect_s=0`` ends at once.

Samples: LSL carries no sample counter, so gaps cannot be detected the way a Cyton's
counter reveals them; ``counters.ok`` counts the samples received, ``counters.dropped``
the rows received with no number in any channel (NaN rows, as the other sources count).
The inlet buffers up to ``max_buflen`` seconds; a consumer that reads through
:class:`~nacf_core.hardware.epoching.EpochStream` keeps it drained. A sample that is no
number of microvolts (sent infinite, or too large for float32 once scaled) is delivered as
NaN, a dropped sample, as a file's would be; a timestamp that is not finite (an outlet
that stamps NaN) is replaced by the arrival time, the chunk's samples evenly spaced
before it (and after the last stamp handed out). Timestamps only go forward: one that
is not after the stamp before it (an outlet whose clock was set back, a stamp out of
place or repeated) is replaced by the stamp before it plus ``1 / sfreq``, until the
outlet's stamps pass the last one handed out again.

Units: channels whose ``unit`` says volts, millivolts or nanovolts (any case, ``V``,
``mV``, ``nV`` or spelt out) are scaled to microvolts; µV, and no unit (or a blank one:
LSL streams often leave it out), are taken as they come. A stream with an EEG channel
(a label :func:`~nacf_core.channels.canonical_name` recognises, after ``montage``) in any
other unit (``counts``, ``a.u.``, a typo) is refused (``ValueError`` naming the channels
and their units): its samples cannot be put in microvolts, and scaled wrongly they would
be enrolled and matched all the same. ``units`` (``lsl:NAME?units=uV``) states the voltage
unit of every channel instead of the stream's own. A channel that is not EEG (an
accelerometer in ``g``) is never used as EEG: its values come as they are, logged.

:func:`stream_recording_to_lsl` pushes a recording to an outlet in real time (the
``nacf simulate --lsl NAME`` mode).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nacf_core._validation import MAX_CHANNELS, MAX_SAMPLE_RATE_HZ, check_finite_positive, listed
from nacf_core.channels import canonical_name, describe_repeated, repeated_channels
from nacf_core.errors import Unavailable

from .base import Chunk, Counters
from .files import Recording, _default_names, check_units, unit_to_uv
from .montages import resolve_montage

__all__ = ["LslSource", "stream_recording_to_lsl", "make_outlet"]

logger = logging.getLogger("nacf.hardware")

_LSL_CONFIG_FILES = ("lsl_api.cfg", "~/lsl_api/lsl_api.cfg", "/etc/lsl_api/lsl_api.cfg")
_configured = False


def _pylsl():
    """pylsl, with liblsl's INFO chatter on stderr turned down to warnings.

    Only when the user has no liblsl configuration of their own (``LSLAPICFG`` or one of
    the files liblsl reads), since that content would take precedence over it.
    """
    global _configured
    import pylsl

    if not _configured:
        _configured = True
        own = os.environ.get("LSLAPICFG") or any(
            os.path.exists(os.path.expanduser(f)) for f in _LSL_CONFIG_FILES
        )
        if not own and hasattr(pylsl, "set_config_content"):
            try:
                pylsl.set_config_content("[log]\nlevel = -1\n")
            except Exception:  # older liblsl: keep its defaults
                pass
    return pylsl


# the slowest stream read: liblsl sizes an inlet's buffer as max_buflen seconds of samples
# at the nominal rate, none below 1/max_buflen Hz (nothing ever arrives), and below that
# pull_chunk can spin past its timeout; no EEG stream is anywhere near 1 Hz
MIN_LSL_RATE_HZ = 1.0

# how long, and for how many streams, a resolve by name looks on after the first answer
_GATHER_S = 0.5
_GATHER_MAX = 64


def _check_timeout(name: str, value: Any) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name!r} must be a finite number >= 0, got {value!r} instead.")
    return v


class LslSource:
    """An LSL stream as a source.

    Parameters
    ----------
    name : str, optional
        Stream name to resolve (``lsl:NAME``).
    type : str, optional
        Stream type (e.g. ``"EEG"``). At least one of ``name`` and ``type``.
    timeout : float
        Seconds to wait for the stream when opening.
    montage : sequence of str or str, optional
        Channel names overriding the stream's labels (needed when it has none: then
        the 8/16-channel default montage, else ``EXG Channel N``).
    units : str, optional
        The voltage unit of every channel (``"uV"``, ``"mV"``, ``"V"``, ``"nV"``),
        overriding the units the stream states: for a stream whose EEG channels state a
        unit that is not a voltage (which is refused otherwise).
    source_id : str, optional
        Resolve only the stream with this ``source_id``.
    reconnect_s : float
        How long to look for a vanished stream before ending (0: end at once).
    max_buflen : int
        Seconds the inlet buffers.
    chunk_s : float
        Largest chunk returned, in seconds of signal.
    clock_refresh_s : float
        How often the clock offset is re-estimated.
    """

    def __init__(
        self,
        name: str | None = None,
        type: str | None = None,
        timeout: float = 5.0,
        *,
        montage: Sequence[str] | str | None = None,
        units: str | None = None,
        source_id: str | None = None,
        reconnect_s: float = 5.0,
        max_buflen: int = 60,
        chunk_s: float = 0.1,
        clock_refresh_s: float = 5.0,
    ) -> None:
        if not name and not type:
            raise ValueError("LslSource needs a stream 'name' or 'type' to resolve, got neither.")
        self.name = name or None
        self.type = type or None
        self.source_id = source_id or None
        self.timeout = _check_timeout("timeout", timeout)
        self.reconnect_s = _check_timeout("reconnect_s", reconnect_s)
        self.max_buflen = int(check_finite_positive("max_buflen", max_buflen))
        self.chunk_s = check_finite_positive("chunk_s", chunk_s)
        self.clock_refresh_s = check_finite_positive("clock_refresh_s", clock_refresh_s)
        self._montage = montage
        self._units_uv = check_units(units, "channel of the stream")
        self.counters = Counters()
        self._inlet = None
        self._info = None
        self._sfreq: float | None = None
        self._ch_names: list[str] | None = None
        self._scale: np.ndarray | None = None
        self._offset = 0.0
        self._offset_at = -math.inf
        self._ended = False
        self._closed = False
        self._warned_stamps = False
        self._warned_back = False
        self._last_stamp = -math.inf  # the last timestamp handed out

    # ------------------------------------------------------------------ resolving
    def _describe(self) -> str:
        parts = []
        if self.name:
            parts.append(f"name {self.name!r}")
        if self.type:
            parts.append(f"type {self.type!r}")
        if self.source_id:
            parts.append(f"source_id {self.source_id!r}")
        return " and ".join(parts)

    def _resolve(self, timeout: float):
        pylsl = _pylsl()
        conds = []
        if self.name:
            conds.append(f"name='{self.name}'")
        if self.type:
            conds.append(f"type='{self.type}'")
        if self.source_id:
            conds.append(f"source_id='{self.source_id}'")
        for c in conds:
            if "'" in c.split("=", 1)[1][1:-1]:
                raise ValueError(f"LSL stream names/types cannot contain a quote, got {c}.")
        pred = " and ".join(conds)
        found = pylsl.resolve_bypred(pred, 1, max(timeout, 0.01))
        if not found:
            return None
        if self.type is None:
            # one device may send several streams under one name (muselsl: EEG, PPG, ACC
            # and GYRO all named 'Muse', one source_id); the first answer may be any of
            # them, so gather every one that answers soon, then prefer the EEG stream
            more = pylsl.resolve_bypred(pred, _GATHER_MAX, _GATHER_S)
            seen = {f.uid() for f in found}
            found += [f for f in more if f.uid() not in seen]
            types = sorted({f.type() for f in found})
            eeg = [f for f in found if f.type().strip().lower() == "eeg"]
            if len(types) > 1:
                if not eeg:
                    raise ValueError(
                        f"LSL streams of several types match {self._describe()} "
                        f"({', '.join(map(repr, types))}) and none is of type 'EEG'; say "
                        f"which to read with a type (lsl:NAME?type=...)."
                    )
                logger.info(
                    "LSL streams of types %s match %s; reading the EEG one "
                    "(lsl:NAME?type=... reads another)", ", ".join(types), self._describe(),
                )
                found = eeg
        if len(found) > 1:
            logger.warning(
                "%d LSL streams match %s; using the one from %s (source_id %r)",
                len(found), self._describe(), found[0].hostname(), found[0].source_id(),
            )
        return found[0]

    def _check_header(self, info) -> float:
        """The resolved stream's nominal rate, checked before an inlet is created.

        pylsl's ``StreamInlet`` fails obscurely on a header liblsl could not parse (a NaN
        or infinite ``nominal_srate`` makes it one), and a huge rate breaks ``pull_chunk``.
        """
        pylsl = _pylsl()
        if info.channel_count() <= 0 or info.channel_format() == pylsl.cf_undefined:
            raise ValueError(
                f"LSL stream {self._describe()} sent a header liblsl could not read (it "
                f"reports name {info.name()!r}, {info.channel_count()} channels); its "
                f"nominal_srate or channel count is probably NaN, infinite or malformed."
            )
        if info.channel_format() == pylsl.cf_string:
            raise ValueError(f"LSL stream {info.name()!r} carries strings, not samples.")
        if info.channel_count() > MAX_CHANNELS:
            raise ValueError(
                f"LSL stream {info.name()!r} has {info.channel_count()} channels; nacf "
                f"reads at most {MAX_CHANNELS} (the gRPC Signal's limit)."
            )
        sfreq = float(info.nominal_srate())
        if sfreq == 0:
            raise ValueError(
                f"LSL stream {info.name()!r} has an irregular rate (nominal_srate "
                f"{sfreq}); nacf needs a regularly sampled EEG stream."
            )
        if not math.isfinite(sfreq) or not MIN_LSL_RATE_HZ <= sfreq <= MAX_SAMPLE_RATE_HZ:
            raise ValueError(
                f"LSL stream {info.name()!r} has an invalid nominal_srate {sfreq:g} Hz; "
                f"nacf needs a finite rate in [{MIN_LSL_RATE_HZ:g}, {MAX_SAMPLE_RATE_HZ:g}] Hz."
            )
        return sfreq

    def _connect(self, info) -> None:
        pylsl = _pylsl()
        sfreq = self._check_header(info)
        inlet = pylsl.StreamInlet(info, max_buflen=self.max_buflen, recover=False)
        try:
            self._open_inlet(inlet, sfreq)
        except BaseException:
            inlet.close_stream()  # refused (a montage that does not fit, a new layout)
            raise

    def _open_inlet(self, inlet, sfreq: float) -> None:
        full = inlet.info(timeout=max(self.timeout, 1.0))
        n_ch = full.channel_count()
        labels = [str(x or "").strip() for x in (full.get_channel_labels() or [])][:n_ch]
        labels += [""] * (n_ch - len(labels))
        if self._montage is not None:
            names = resolve_montage(self._montage, n_ch)
        elif any(labels) and not all(labels):  # the defaults would rename the labelled ones
            blank = [str(i + 1) for i, x in enumerate(labels) if not x]
            raise ValueError(
                f"LSL stream {full.name()!r} labels {n_ch - len(blank)} of its {n_ch} "
                f"channels; channel{'s' if len(blank) > 1 else ''} "
                f"{listed(blank)} {'have' if len(blank) > 1 else 'has'} no "
                f"label. Name every channel in order with a montage "
                f"(lsl:NAME?montage=Fp1,...)."
            )
        elif all(labels):
            names = labels
            repeated = repeated_channels(names)  # T3 and T7 too: one electrode
            if repeated:
                raise ValueError(
                    f"LSL stream {full.name()!r} labels a channel twice: "
                    f"{describe_repeated(names, repeated)}. Name the channels in order "
                    f"with a montage (lsl:NAME?montage=Fp1,...)."
                )
        else:
            names = _default_names(n_ch)
        if self._units_uv is not None:  # stated by the user: the stream's own are not read
            per_uv = [self._units_uv] * n_ch
        else:
            per_uv = self._stream_units(full, names)
        scale = np.array([1.0 if k is None else k for k in per_uv], dtype=np.float64)
        if self._sfreq is not None and (sfreq != self._sfreq or names != self._ch_names):
            raise Unavailable(
                f"LSL stream {self._describe()} came back with a different layout "
                f"({n_ch} channels at {sfreq:g} Hz, was {len(self._ch_names)} at {self._sfreq:g})."
            )
        inlet.open_stream(timeout=max(self.timeout, 1.0))
        self._inlet, self._info = inlet, full
        self.source_id = self.source_id or full.source_id() or None
        self.type = self.type or full.type() or None  # a reconnect resolves the same stream
        self._sfreq, self._ch_names = sfreq, names
        self._scale = None if np.all(scale == 1.0) else scale
        self._chunk_n = max(1, int(round(self.chunk_s * sfreq)))
        self._offset_at = -math.inf
        self._refresh_clock()

    @staticmethod
    def _stream_units(full, names: list[str]) -> list[float | None]:
        """Microvolts per unit of each channel as the stream states it (``None``: no unit,
        taken as µV); ``ValueError`` for an EEG channel in a unit that is not a voltage."""
        units = list(full.get_channel_units() or [])[:len(names)]
        units += [None] * (len(names) - len(units))
        per_uv = [unit_to_uv(u) for u in units]
        unknown = [(n, u) for n, u, k in zip(names, units, per_uv)
                   if k is None and u and u.strip()]
        eeg = [f"{n!r} ({u!r})" for n, u in unknown if canonical_name(n) is not None]
        if eeg:
            raise ValueError(
                f"LSL stream {full.name()!r}: {len(eeg)} EEG channel(s) have a unit that is "
                f"not a voltage: {listed(eeg)}; nacf cannot put their samples "
                f"in microvolts. If the samples are in fact in a voltage unit, state it for "
                f"every channel: lsl:{full.name()}?units=uV (or mV, V, nV). Samples in ADC "
                "counts or arbitrary units must be converted to a voltage by the sender."
            )
        if unknown:
            logger.info(
                "LSL stream %r: %d channel(s) that are not EEG have a unit that is not a "
                "voltage: %s; their values are kept as they come (never used as EEG)",
                full.name(), len(unknown), ", ".join(f"{n!r} ({u!r})" for n, u in unknown[:8]),
            )
        return per_uv

    def _refresh_clock(self) -> None:
        now = time.monotonic()
        if now - self._offset_at < self.clock_refresh_s:
            return
        try:
            self._offset = float(self._inlet.time_correction(timeout=1.0))
            self._offset_at = now
        except Exception as exc:  # pylsl TimeoutError / LostError: keep the last offset
            logger.debug("LSL time_correction failed (%s); keeping %.6f s", exc, self._offset)
            self._offset_at = now - self.clock_refresh_s + 1.0  # retry in a second

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> "LslSource":
        if self._closed:
            raise RuntimeError("this LslSource was closed; create a new one.")
        if self._inlet is not None:
            return self
        info = self._resolve(self.timeout)
        if info is None:
            raise Unavailable(
                f"no LSL stream with {self._describe()} answered within {self.timeout:g} s "
                f"(is the outlet running, and on this network?)."
            )
        self._connect(info)
        logger.info(
            "LSL inlet: %r from %s, %d channels at %g Hz",
            self._info.name(), self._info.hostname(), len(self._ch_names), self._sfreq,
        )
        return self

    def close(self) -> None:
        self._closed = True
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            except Exception:  # already gone
                pass
            self._inlet = None

    def __enter__(self) -> "LslSource":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ properties
    def _need_open(self) -> None:
        if self._sfreq is None:
            raise RuntimeError("LslSource is not open (use it as a context manager).")

    @property
    def sfreq(self) -> float:
        self._need_open()
        return float(self._sfreq)

    @property
    def ch_names(self) -> list[str]:
        self._need_open()
        return list(self._ch_names)

    @property
    def clock_offset(self) -> float:
        """Seconds added to the outlet's timestamps (``time_correction``)."""
        return self._offset

    # ------------------------------------------------------------------ reading
    def read_chunk(self, timeout: float | None = None) -> Chunk | None:
        """Samples that arrived (at most ``chunk_s``), waiting up to ``timeout`` for one.

        Returns an empty chunk on timeout, ``None`` once the stream has vanished for good.
        """
        if self._closed:
            raise RuntimeError("read_chunk() on a closed LslSource.")
        if self._ended:
            return None
        if self._inlet is None:
            self.open()
        pylsl = _pylsl()
        t = 3600.0 if timeout is None else _check_timeout("timeout", timeout)
        try:
            data, ts = self._inlet.pull_chunk(
                timeout=t, max_samples=self._chunk_n, min_samples=1, as_numpy=True,
            )
        except pylsl.util.LostError:
            return self._lost()
        n = len(ts)
        if n == 0:
            return self._empty()
        self._refresh_clock()
        # the stream's own dtype (float32, double64, int16, ...) -> float32 microvolts
        with np.errstate(over="ignore", invalid="ignore"):  # (past float32: inf, below)
            samples = np.array(data, dtype=np.float32, copy=True).reshape(
                n, len(self._ch_names))
            if self._scale is not None:
                samples *= self._scale.astype(np.float32)
        # a value that is no number of microvolts (sent infinite, or too large for float32)
        # is a dropped sample, as a file's would be: never an infinite microvolt value
        samples[np.isinf(samples)] = np.nan
        stamps = np.asarray(ts, np.float64) + self._offset
        bad = ~np.isfinite(stamps)
        if bad.any():  # an outlet that stamps NaN: the arrival time, evenly spaced before
            # it, and after the last stamp handed out (a chunk pulled in two pieces within
            # its own span would otherwise go back in time)
            first = max(_pylsl().local_clock() - (n - 1) / self._sfreq,
                        self._last_stamp + 1.0 / self._sfreq)
            stamps[bad] = (first + np.arange(n) / self._sfreq)[bad]
            if not self._warned_stamps:
                self._warned_stamps = True
                logger.warning("LSL stream %s sent timestamps that are not finite; they are "
                               "replaced by the arrival time", self._describe())
        if stamps[0] <= self._last_stamp or (n > 1 and not (np.diff(stamps) > 0).all()):
            self._monotonize(stamps)
        # a row with no number at all is a dropped sample, counted as the other sources do
        lost = int(np.count_nonzero(np.isnan(samples).all(axis=1)))
        self.counters.ok += n - lost
        self.counters.dropped += lost
        self._last_stamp = float(stamps[-1])
        return Chunk(samples, stamps, self.ch_names, self._sfreq)

    def _monotonize(self, stamps: np.ndarray) -> None:
        """Stamps that are not after the one before (an outlet whose clock stepped back,
        a stamp out of place, one repeated): the one before plus ``1 / sfreq``."""
        step = 1.0 / self._sfreq
        t = self._last_stamp
        for i in range(stamps.shape[0]):
            if not stamps[i] > t:
                stamps[i] = t + step
            t = stamps[i]
        if not self._warned_back:
            self._warned_back = True
            logger.warning("LSL stream %s sent timestamps that go back in time (its clock "
                           "was set back?); they are replaced by the last one + 1/%g s",
                           self._describe(), self._sfreq)

    def _lost(self) -> Chunk | None:
        logger.warning("LSL stream %s vanished", self._describe())
        try:
            self._inlet.close_stream()
        except Exception:
            pass
        self._inlet = None
        deadline = time.monotonic() + self.reconnect_s
        while self.reconnect_s > 0 and time.monotonic() < deadline:
            info = self._resolve(min(1.0, max(0.01, deadline - time.monotonic())))
            if info is not None:
                try:
                    self._connect(info)
                except (Unavailable, ValueError) as exc:  # came back different: give up
                    logger.warning("LSL stream %s is back but unusable: %s", self._describe(), exc)
                    break
                except Exception as exc:
                    # a stale answer from the outlet that just went away (LostError), or a
                    # timeout while connecting: look again until the deadline
                    logger.debug("LSL reconnect attempt failed: %s", exc)
                    self._inlet = None
                    time.sleep(0.1)
                    continue
                self.counters.reconnects += 1
                logger.info(
                    "LSL stream %s is back (reconnect %d)",
                    self._describe(), self.counters.reconnects,
                )
                return self._empty()
        self._ended = True
        self.counters.extra["lost"] = 1
        logger.error(
            "LSL stream %s did not come back within %g s: ending",
            self._describe(), self.reconnect_s,
        )
        return None

    def _empty(self) -> Chunk:
        return Chunk(
            np.empty((0, len(self._ch_names)), np.float32), np.empty(0), self.ch_names, self._sfreq
        )


# ----------------------------------------------------------------------------------------
# outlet
# ----------------------------------------------------------------------------------------


def make_outlet(
    name: str,
    ch_names: Sequence[str],
    sfreq: float,
    *,
    type: str = "EEG",
    source_id: str | None = None,
    chunk_size: int = 0,
):
    """An LSL outlet (float32) whose description names the channels in microvolts."""
    pylsl = _pylsl()
    if not name:
        raise ValueError("'name' must be a non-empty LSL stream name.")
    sfreq = check_finite_positive("sfreq", sfreq)
    names = [str(c) for c in ch_names]
    info = pylsl.StreamInfo(
        name, type, len(names), sfreq, pylsl.cf_float32, source_id or f"nacf-{name}"
    )
    info.set_channel_labels(names)
    info.set_channel_units(["microvolts"] * len(names))
    info.set_channel_types([type.lower() if type else "eeg"] * len(names))
    info.desc().append_child_value("manufacturer", "nacf")
    return pylsl.StreamOutlet(info, chunk_size=chunk_size)


def stream_recording_to_lsl(
    recording: Recording | str,
    name: str,
    *,
    type: str = "EEG",
    source_id: str | None = None,
    speed: float = 1.0,
    chunk_s: float = 0.04,
    loop: bool = False,
    duration_s: float | None = None,
    wait_for_consumer_s: float | None = None,
    stop_event: threading.Event | None = None,
    montage: Sequence[str] | str | None = None,
    linger_s: float = 0.5,
) -> int:
    """Push a recording to an LSL outlet, paced like the device (blocks until done).

    Parameters
    ----------
    recording : Recording or path
    name : str
        LSL stream name (what ``lsl:NAME`` resolves).
    type, source_id : str
        Stream type (default ``"EEG"``) and source id (default ``nacf-NAME``).
    speed : float
        1.0 real time; > 1 faster.
    chunk_s : float
        Seconds of signal per push.
    loop : bool
        Start again at the end (until ``duration_s`` or ``stop_event``).
    duration_s : float, optional
        Stop after this much signal.
    wait_for_consumer_s : float, optional
        Before pushing, wait up to this long for an inlet to connect (samples pushed
        with no inlet connected are lost to late inlets).
    stop_event : threading.Event, optional
        Set it to stop streaming.
    montage : sequence of str or str, optional
        Channel names when ``recording`` is a path.
    linger_s : float
        Seconds the outlet stays up after the last sample, so that connected inlets
        receive the tail (liblsl discards what an inlet has buffered but not yet
        pulled once it notices the outlet is gone).

    Returns
    -------
    int
        Samples pushed. The outlet is destroyed on return, so inlets see the stream
        vanish.
    """
    from .playback import FileSource

    speed = float(speed)
    if not math.isfinite(speed) or speed <= 0:
        raise ValueError(f"'speed' must be a finite number > 0, got {speed!r}.")
    src = FileSource(recording, montage=montage, speed=speed, chunk_s=chunk_s, loop=loop)
    pylsl = _pylsl()
    outlet = make_outlet(name, src.ch_names, src.sfreq, type=type, source_id=source_id)
    limit = None
    if duration_s is not None:
        limit = int(round(check_finite_positive("duration_s", duration_s) * src.sfreq))
    pushed = 0
    clock0: float | None = None
    try:
        if wait_for_consumer_s is not None and not outlet.wait_for_consumers(
            _check_timeout("wait_for_consumer_s", wait_for_consumer_s)
        ):
            logger.warning(
                "no LSL inlet connected to %r within %g s; streaming anyway",
                name, wait_for_consumer_s,
            )
        logger.info("LSL outlet %r: %d channels at %g Hz", name, len(src.ch_names), src.sfreq)
        with src:
            while stop_event is None or not stop_event.is_set():
                chunk = src.read_chunk(timeout=0.2)
                if chunk is None:
                    break
                if chunk.n_times == 0:
                    continue
                x = chunk.samples
                if limit is not None:
                    x = x[: limit - pushed]
                # one timestamp per sample, on the replay's timeline (local LSL clock):
                # pushing faster than the nominal rate with LSL's "last sample" stamp
                # would make the stamps of consecutive chunks overlap
                if clock0 is None:
                    clock0 = pylsl.local_clock() - (x.shape[0] - 1) / (src.sfreq * speed)
                stamps = clock0 + (pushed + np.arange(x.shape[0])) / (src.sfreq * speed)
                outlet.push_chunk(np.ascontiguousarray(x), stamps.tolist())
                pushed += x.shape[0]
                if limit is not None and pushed >= limit:
                    break
        if linger_s:
            time.sleep(_check_timeout("linger_s", linger_s))
    finally:
        del outlet
    return pushed
