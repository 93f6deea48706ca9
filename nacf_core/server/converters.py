"""Protobuf ⇄ domain conversions (only this module and the servicer import ``_proto``).

``Signal.samples`` becomes a zero-copy, read-only ``numpy.frombuffer(samples, '<f4')``
view reshaped to ``(n_times, n_channels)``.  Validation here is about the wire format;
the pipeline validates the signal itself (rate range 125–1000 Hz, channel set, length).

Decisions:

- ``sample_rate_hz`` must be finite and in ``(0, 100000]``: anything else is not a
  plausible EEG rate and is refused here (``INVALID_ARGUMENT``); the pipeline then
  refuses rates outside the model's supported range with its own message.
- Any NaN or ±inf sample is refused: dropped samples must not be sent as NaN over the
  wire (a headset reader marks them; the client drops or interpolates them).
- Any |sample| above 1e6 µV (1 V) is refused: that is float64 (or big-endian) data
  read as float32, not EEG.
- ``channel_names`` must be non-empty, unique, each at most 64 characters, and at
  most 256 of them.
"""

from __future__ import annotations

import numpy as np

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._validation import MAX_CHANNELS, MAX_SAMPLE_RATE_HZ
from nacf_core.errors import InvalidArgument
from nacf_core.service import (
    AuthResult,
    ContinuousUpdate,
    EnrollResult,
    IdentifyResult,
    SessionInfo,
    SignalBlock,
    UserInfo,
)

__all__ = [
    "MAX_ABS_UV",
    "MAX_CHANNELS",
    "MAX_REASONS_BYTES",
    "MAX_SAMPLE_RATE_HZ",
    "auth_response",
    "block_to_signal",
    "continuous_response",
    "enroll_response",
    "identify_response",
    "session_response",
    "signal_to_block",
    "user_message",
]

#: Largest |sample| accepted, in µV: 1 V, far beyond any EEG amplifier's range (a
#: Cyton rails at ±187 500 µV), so only a wrong dtype, byte order or unit gets here.
MAX_ABS_UV = 1e6
_MAX_CH_NAME = 64
#: Most bytes of an answer's ``reasons`` (Authenticate, AuthenticateStream, Identify):
#: the distinct reasons of its rejected windows, one per window for a signal whose bad
#: channels change from window to window, grow with the signal (a stream's up to
#: ``stream_max_seconds``) past any ``max_message_bytes`` (64 KiB at least); cut to this,
#: an answer always fits (a few hundred bytes besides).
MAX_REASONS_BYTES = 16 * 1024


def _bounded_reasons(reasons: list[str], keep_last: bool = False) -> list[str]:
    """``reasons``, or as many of the first as fit in :data:`MAX_REASONS_BYTES` and a
    note of how many were left out (then the last, with ``keep_last``)."""
    if len(reasons) <= 16 and sum(map(len, reasons)) <= MAX_REASONS_BYTES // 4:
        return reasons  # 4 bytes a character at most: fits (the usual case, no encoding)
    sizes = [len(r.encode("utf-8", "replace")) for r in reasons]
    if sum(sizes) <= MAX_REASONS_BYTES:
        return reasons
    tail = reasons[-1:] if keep_last else []
    room = MAX_REASONS_BYTES - (sizes[-1] if keep_last else 0) - 64
    n = 0
    while n < len(reasons) - len(tail) and sizes[n] <= room:
        room -= sizes[n]
        n += 1
    left = len(reasons) - len(tail) - n
    return [*reasons[:n], f"... {left} more reasons left out", *tail]


def signal_to_block(sig: pb.Signal, name: str = "signal") -> SignalBlock:
    """Validate a ``Signal`` and view it as a :class:`SignalBlock` without copying."""
    if sig is None or sig.ByteSize() == 0:
        raise InvalidArgument(f"{name!r} is missing or empty.")
    sr = float(sig.sample_rate_hz)
    if not np.isfinite(sr) or sr <= 0 or sr > MAX_SAMPLE_RATE_HZ:
        raise InvalidArgument(
            f"{name}.sample_rate_hz must be a finite number in (0, {MAX_SAMPLE_RATE_HZ:g}] "
            f"Hz, got {sr!r}.")
    names = tuple(sig.channel_names)
    n_ch = len(names)
    if n_ch == 0:
        raise InvalidArgument(f"{name}.channel_names must list the channels, got none.")
    if n_ch > MAX_CHANNELS:
        raise InvalidArgument(f"{name}.channel_names: at most {MAX_CHANNELS} channels, got "
                              f"{n_ch}.")
    if len(set(names)) != n_ch:
        dup = sorted({c for c in names if names.count(c) > 1})
        raise InvalidArgument(f"{name}.channel_names must be unique; repeated: "
                              f"{', '.join(dup[:5])}.")
    for c in names:
        if not c or len(c) > _MAX_CH_NAME:
            raise InvalidArgument(f"{name}.channel_names: each name must have 1 to "
                                  f"{_MAX_CH_NAME} characters, got {c[:80]!r}.")
    raw = sig.samples
    nbytes = len(raw)
    if nbytes == 0:
        raise InvalidArgument(f"{name}.samples is empty: expected little-endian float32 "
                              f"(n_times, {n_ch}) row-major.")
    row = 4 * n_ch
    if nbytes % row:
        raise InvalidArgument(
            f"{name}.samples has {nbytes} bytes, not a multiple of 4 × n_channels = {row} "
            f"(little-endian float32, row-major (n_times, {n_ch})): wrong dtype or length.")
    x = np.frombuffer(raw, dtype="<f4").reshape(nbytes // row, n_ch)
    amax = float(np.max(np.abs(x)))  # NaN if any NaN; one pass, no temporary mask
    if not np.isfinite(amax):
        finite = np.isfinite(x)
        bad = int(x.size - np.count_nonzero(finite))
        r, c = np.argwhere(~finite)[0]
        raise InvalidArgument(
            f"{name}.samples holds {bad} non-finite value(s) (NaN or inf), the first at "
            f"sample {int(r)}, channel {names[int(c)]!r}; send finite microvolts.")
    if amax > MAX_ABS_UV:
        raise InvalidArgument(
            f"{name}.samples reaches {amax:.3g}, beyond ±{MAX_ABS_UV:g} µV (1 V) that no EEG "
            "amplifier delivers: wrong dtype (float64 sent as float32?), byte order or "
            "units.")
    dev = sig.device_id
    if len(dev) > 128:
        raise InvalidArgument(f"{name}.device_id is longer than 128 characters.")
    return SignalBlock(x, sr, names, dev, raw)


def block_to_signal(samples: np.ndarray, sfreq: float, ch_names, device_id: str = ""
                    ) -> pb.Signal:
    """Build a ``Signal`` from ``samples`` (n_times, n_channels) µV (for clients/tests)."""
    data = np.ascontiguousarray(samples, dtype="<f4")
    return pb.Signal(sample_rate_hz=float(sfreq), channel_names=list(ch_names),
                     samples=data.tobytes(), device_id=device_id)


def enroll_response(r: EnrollResult) -> pb.EnrollResponse:
    return pb.EnrollResponse(
        user_id=r.user_id, template_version=r.template_version, epochs_used=r.epochs_used,
        epochs_rejected=len(r.rejected),
        rejected=[pb.RejectedEpoch(signal_index=e.signal_index, epoch_index=e.epoch_index,
                                   reason=e.reason) for e in r.rejected],
        quality=r.quality, model_version=r.model_version)


def auth_response(r: AuthResult) -> pb.AuthenticateResponse:
    return pb.AuthenticateResponse(
        accepted=r.accepted, score=r.score, threshold=r.threshold,
        session_token=r.session_token, quality=r.quality,
        reasons=_bounded_reasons(list(r.reasons), keep_last=True),
        model_version=r.model_version, seconds_used=r.seconds_used,
        windows_used=r.windows_used, session_expires_at_unix=r.session_expires_at)


def identify_response(r: IdentifyResult) -> pb.IdentifyResponse:
    return pb.IdentifyResponse(
        candidates=[pb.Candidate(user_id=u, score=s, above_threshold=s >= r.threshold)
                    for u, s in r.candidates],
        threshold=r.threshold, quality=r.quality, model_version=r.model_version,
        reasons=_bounded_reasons(list(r.reasons)))


def user_message(u: UserInfo) -> pb.User:
    return pb.User(user_id=u.user_id, template_version=u.template_version,
                   created_at_unix=u.created_at, updated_at_unix=u.updated_at,
                   model_version=u.model_version, locked=u.locked,
                   locked_until_unix=u.locked_until,
                   consecutive_failures=u.consecutive_failures, device_ids=u.device_ids)


def session_response(s: SessionInfo) -> pb.ValidateSessionResponse:
    return pb.ValidateSessionResponse(valid=s.valid, user_id=s.user_id,
                                      expires_at_unix=s.expires_at,
                                      last_verified_unix=s.last_verified, reason=s.reason)


_STATES = {"verified": pb.ContinuousAuthenticateResponse.VERIFIED,
           "uncertain": pb.ContinuousAuthenticateResponse.UNCERTAIN,
           "ended": pb.ContinuousAuthenticateResponse.ENDED}


def continuous_response(u: ContinuousUpdate) -> pb.ContinuousAuthenticateResponse:
    return pb.ContinuousAuthenticateResponse(
        state=_STATES[u.state], score=u.score, threshold=u.threshold, quality=u.quality,
        reason=u.reason, session_expires_at_unix=u.session_expires_at,
        seconds_streamed=u.seconds_streamed)
