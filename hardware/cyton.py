"""OpenBCI Cyton / Cyton+Daisy: the 33-byte packet codec and the channel-gain tracker.

Packet (OpenBCI "Cyton Data Format", firmware v2/v3), 33 bytes:

====== ======= ==========================================================
byte   size    content
====== ======= ==========================================================
0      1       header ``0xA0``
1      1       sample counter, 0-255, wraps
2-25   8 x 3   channels 1-8, 24-bit big-endian two's complement (ADS1299 counts)
26-31  6       aux: with end byte ``0xC0``, accelerometer X, Y, Z as 16-bit
               big-endian two's complement; other end bytes carry other aux data
32     1       end byte ``0xC0``-``0xC6`` (``0xC0`` = standard with accelerometer)
====== ======= ==========================================================

Scale: ``4.5 / gain / (2**23 - 1)`` volts per count (ADS1299 Vref 4.5 V), so
0.022351744455 µV per count at the default gain 24. The gain of each channel changes
with the ``x (ch) (power) (gain) (input) (bias) (srb2) (srb1) X`` channel-settings
command and returns to 24 with ``d`` (defaults) and ``v`` (soft reset);
:class:`GainTracker` follows those commands. Accelerometer: ``0.002 / 2**4`` g per
count, decoded only when the end byte is ``0xC0`` (NaN otherwise).

Daisy (Cyton+Daisy, 16 channels): the board still sends one 8-channel packet per
sample tick at 250 Hz. Packets with an **odd** sample counter carry the Cyton's
channels 1-8, packets with an **even** counter the Daisy's channels 9-16 (each the
average of the chip's last two samples, so both halves of a pair cover the same
ticks). nacf pairs an even packet ``n`` with the odd packet ``n + 1`` after it (254
pairs with 255, 0 with 1) into one 16-channel sample labelled with counter ``n``, so a
Cyton+Daisy delivers 125 samples/s. This is the pairing BrainFlow's
``CYTON_DAISY_BOARD`` driver uses (it emits a row on each odd packet with the even
packet before it) and OpenBCI's own Python library used; the cross-check test
compares both. When either half of a pair is missing, the whole 16-channel sample is
a dropped (NaN) sample. The counter starts at 0 on ``b``, so the first pair is 0/1.

Batch decoding (:func:`decode_packets`) runs a compiled Numba kernel over an
``(n_packets, 33)`` uint8 array; :func:`decode_packets_numpy` is the pure NumPy
reference (test oracle and benchmark baseline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from nacf_core.kernels._numba import jit

from nacf_core._validation import check_array, check_int_range, check_option

__all__ = [
    "PACKET_SIZE",
    "HEADER",
    "END_BYTES",
    "END_STANDARD",
    "GAINS",
    "DEFAULT_GAIN",
    "ACCEL_G_PER_COUNT",
    "SAMPLE_RATE",
    "DAISY_SAMPLE_RATE",
    "COUNT_MIN",
    "COUNT_MAX",
    "DAISY_CHANNEL_KEYS",
    "uv_per_count",
    "Packet",
    "encode_packet",
    "encode_packets",
    "decode_packet",
    "decode_packets",
    "decode_packets_numpy",
    "GainTracker",
]

PACKET_SIZE = 33
HEADER = 0xA0
END_STANDARD = 0xC0
END_BYTES = tuple(range(0xC0, 0xC7))
GAINS = (1, 2, 4, 6, 8, 12, 24)  # ADS1299 PGA settings, command codes '0'..'6'
DEFAULT_GAIN = 24
VREF = 4.5
ACCEL_G_PER_COUNT = 0.002 / 2**4
SAMPLE_RATE = 250.0
DAISY_SAMPLE_RATE = 125.0
COUNT_MAX = 2**23 - 1   # 0x7FFFFF
COUNT_MIN = -(2**23)    # 0x800000
# Channel keys of the x...X command: Cyton 1-8, Daisy 9-16.
CYTON_CHANNEL_KEYS = "12345678"
DAISY_CHANNEL_KEYS = "QWERTYUI"


def uv_per_count(gain: float = DEFAULT_GAIN) -> float:
    """Microvolts per ADS1299 count at ``gain``: ``4.5 / gain / (2**23 - 1) * 1e6``."""
    return VREF / float(gain) / COUNT_MAX * 1e6


@dataclass(frozen=True)
class Packet:
    """One decoded packet.

    Attributes
    ----------
    counter : int
        Sample counter, 0-255.
    counts : ndarray, shape (8,), int32
        Raw ADS1299 counts.
    uv : ndarray, shape (8,), float64
        Microvolts at the gains given to :func:`decode_packet`.
    accel : ndarray, shape (3,), float64
        g; NaN unless ``end_byte == 0xC0``.
    aux : bytes
        The 6 raw aux bytes.
    end_byte : int
    """

    counter: int
    counts: np.ndarray
    uv: np.ndarray
    accel: np.ndarray
    aux: bytes
    end_byte: int


# ----------------------------------------------------------------------------------
# encoder
# ----------------------------------------------------------------------------------


def encode_packets(
    counters: np.ndarray,
    counts: np.ndarray,
    *,
    accel: np.ndarray | None = None,
    aux: np.ndarray | None = None,
    end_byte: int | np.ndarray = END_STANDARD,
) -> np.ndarray:
    """Encode packets.

    Parameters
    ----------
    counters : ndarray, shape (n_packets,), int
        Sample counters (taken mod 256).
    counts : ndarray, shape (n_packets, 8), int
        ADS1299 counts, each in ``[-2**23, 2**23 - 1]``.
    accel : ndarray, shape (n_packets, 3), int, optional
        Accelerometer counts (16-bit signed) for the aux bytes. Exclusive with ``aux``.
    aux : ndarray, shape (n_packets, 6), uint8, optional
        Raw aux bytes. Default zeros.
    end_byte : int or ndarray, shape (n_packets,)
        ``0xC0``-``0xC6``.

    Returns
    -------
    packets : ndarray, shape (n_packets, 33), uint8
    """
    counters = np.asarray(counters)
    counts = np.asarray(counts, dtype=np.int64)
    n = counters.shape[0]
    if counters.ndim != 1 or counts.shape != (n, 8):
        raise ValueError(
            f"'counts' must have shape (n_packets, 8) with n_packets = len(counters) = {n}, "
            f"got {counts.shape}."
        )
    if counts.size and (counts.min() < COUNT_MIN or counts.max() > COUNT_MAX):
        raise ValueError(
            f"'counts' must lie in [{COUNT_MIN}, {COUNT_MAX}] (24-bit signed), got values "
            f"in [{counts.min()}, {counts.max()}]."
        )
    ends = np.broadcast_to(np.asarray(end_byte, dtype=np.int64), (n,))
    if ends.size and (ends.min() < 0xC0 or ends.max() > 0xC6):
        raise ValueError(f"'end_byte' must be in 0xC0-0xC6, got {np.unique(ends)}.")
    out = np.zeros((n, PACKET_SIZE), dtype=np.uint8)
    out[:, 0] = HEADER
    out[:, 1] = (counters.astype(np.int64) & 0xFF).astype(np.uint8)
    u = counts & 0xFFFFFF
    ch = np.empty((n, 8, 3), dtype=np.uint8)
    ch[:, :, 0] = (u >> 16) & 0xFF
    ch[:, :, 1] = (u >> 8) & 0xFF
    ch[:, :, 2] = u & 0xFF
    out[:, 2:26] = ch.reshape(n, 24)
    if accel is not None and aux is not None:
        raise ValueError("Give at most one of 'accel' and 'aux'.")
    if accel is not None:
        a = np.asarray(accel, dtype=np.int64)
        if a.shape != (n, 3):
            raise ValueError(f"'accel' must have shape ({n}, 3), got {a.shape}.")
        if a.size and (a.min() < -(2**15) or a.max() > 2**15 - 1):
            raise ValueError("'accel' counts must be 16-bit signed.")
        a = a & 0xFFFF
        out[:, 26:32:2] = (a >> 8).astype(np.uint8)
        out[:, 27:32:2] = (a & 0xFF).astype(np.uint8)
    elif aux is not None:
        out[:, 26:32] = np.asarray(aux, dtype=np.uint8).reshape(n, 6)
    out[:, 32] = ends.astype(np.uint8)
    return out


def encode_packet(
    counter: int,
    counts,
    *,
    accel=None,
    aux: bytes | None = None,
    end_byte: int = END_STANDARD,
) -> bytes:
    """Encode one packet; see :func:`encode_packets`. Returns 33 bytes."""
    acc = None if accel is None else np.asarray(accel).reshape(1, 3)
    ax = None if aux is None else np.frombuffer(bytes(aux), dtype=np.uint8).reshape(1, 6)
    return encode_packets(
        np.array([counter]), np.asarray(counts).reshape(1, 8), accel=acc, aux=ax,
        end_byte=end_byte,
    ).tobytes()


# ----------------------------------------------------------------------------------
# decoder
# ----------------------------------------------------------------------------------


def _gain_scales(gains, n: int = 8) -> np.ndarray:
    g = np.full(n, DEFAULT_GAIN, dtype=np.float64) if gains is None else np.asarray(
        gains, dtype=np.float64
    )
    if g.shape != (n,):
        raise ValueError(f"'gains' must have shape ({n},), got {g.shape}.")
    bad = [x for x in g.tolist() if x not in GAINS]
    if bad:
        raise ValueError(
            f"Invalid value for the 'gains' parameter. Allowed values are {GAINS}, "
            f"but got {bad} instead."
        )
    return VREF / g / COUNT_MAX * 1e6


def decode_packet(packet: bytes, gains=None) -> Packet:
    """Decode one 33-byte packet (no framing checks beyond length, header and end byte).

    Raises
    ------
    ValueError
        Not 33 bytes, no ``0xA0`` header, or an end byte outside ``0xC0``-``0xC6``.
    """
    b = bytes(packet)
    if len(b) != PACKET_SIZE:
        raise ValueError(f"'packet' must be {PACKET_SIZE} bytes, got {len(b)}.")
    if b[0] != HEADER:
        raise ValueError(f"'packet' must start with the header 0xA0, got 0x{b[0]:02X}.")
    if not 0xC0 <= b[32] <= 0xC6:
        raise ValueError(f"'packet' must end with a byte in 0xC0-0xC6, got 0x{b[32]:02X}.")
    arr = np.frombuffer(b, dtype=np.uint8).reshape(1, PACKET_SIZE)
    counters, counts, uv, accel = decode_packets_numpy(arr, gains, return_counts=True)
    uv64 = counts[0] * _gain_scales(gains)  # float64 for the single-packet API
    acc = accel[0].astype(np.float64)
    if b[32] == END_STANDARD:
        a = np.frombuffer(b[26:32], dtype=">i2").astype(np.float64)
        acc = a * ACCEL_G_PER_COUNT
    return Packet(int(counters[0]), counts[0], uv64, acc, b[26:32], b[32])


def decode_packets_numpy(packets: np.ndarray, gains=None, *, return_counts: bool = False):
    """Pure NumPy batch decoder (reference and benchmark baseline).

    Parameters
    ----------
    packets : ndarray, shape (n_packets, 33), uint8
        Framed packets (header and end byte are not checked here).
    gains : array-like, shape (8,), optional
        Gain of each channel (default 24).

    Returns
    -------
    counters : ndarray, shape (n_packets,), uint8
    uv : ndarray, shape (n_packets, 8), float32
        Microvolts.
    accel : ndarray, shape (n_packets, 3), float32
        g; NaN where the end byte is not ``0xC0``.
    (counts : ndarray, shape (n_packets, 8), int32, before ``uv`` when ``return_counts``)
    """
    p = np.asarray(packets)
    scale = _gain_scales(gains)
    ch = p[:, 2:26].reshape(-1, 8, 3).astype(np.int32)
    counts = (ch[:, :, 0] << 16) | (ch[:, :, 1] << 8) | ch[:, :, 2]
    counts = np.where(counts >= 0x800000, counts - 0x1000000, counts).astype(np.int32)
    uv = (counts * scale).astype(np.float32)
    a = p[:, 26:32].reshape(-1, 3, 2).astype(np.int32)
    acc = (a[:, :, 0] << 8) | a[:, :, 1]
    acc = np.where(acc >= 0x8000, acc - 0x10000, acc)
    accel = np.where(
        (p[:, 32] == END_STANDARD)[:, None], acc * ACCEL_G_PER_COUNT, np.nan
    ).astype(np.float32)
    if return_counts:
        return p[:, 1].copy(), counts, uv, accel
    return p[:, 1].copy(), uv, accel


@jit
def _decode_kernel(packets, scale, counters, uv, accel):  # pragma: no cover - compiled
    n = packets.shape[0]
    nan = np.float32(np.nan)
    for i in range(n):
        counters[i] = packets[i, 1]
        for c in range(8):
            j = 2 + 3 * c
            v = (np.int32(packets[i, j]) << 16) | (np.int32(packets[i, j + 1]) << 8) | np.int32(
                packets[i, j + 2])
            if v >= 0x800000:
                v -= 0x1000000
            uv[i, c] = np.float32(v * scale[c])
        if packets[i, 32] == 0xC0:
            for k in range(3):
                j = 26 + 2 * k
                a = (np.int32(packets[i, j]) << 8) | np.int32(packets[i, j + 1])
                if a >= 0x8000:
                    a -= 0x10000
                accel[i, k] = np.float32(a * 0.000125)
        else:
            for k in range(3):
                accel[i, k] = nan


def decode_packets(packets: np.ndarray, gains=None):
    """Compiled batch decoder (Numba); same results as :func:`decode_packets_numpy`.

    Parameters
    ----------
    packets : ndarray, shape (n_packets, 33), uint8, C-contiguous
    gains : array-like, shape (8,), optional

    Returns
    -------
    counters : ndarray, shape (n_packets,), uint8
    uv : ndarray, shape (n_packets, 8), float32
    accel : ndarray, shape (n_packets, 3), float32
    """
    check_array("packets", packets, ndim=2, dtypes=(np.uint8,), c_contiguous=True,
                shape=(None, PACKET_SIZE))
    scale = _gain_scales(gains)
    n = packets.shape[0]
    counters = np.empty(n, dtype=np.uint8)
    uv = np.empty((n, 8), dtype=np.float32)
    accel = np.empty((n, 3), dtype=np.float32)
    if n:
        _decode_kernel(packets, scale, counters, uv, accel)
    return counters, uv, accel


# ----------------------------------------------------------------------------------
# gains
# ----------------------------------------------------------------------------------

_X_COMMAND = re.compile(r"x(.)(.)(.)(.)(.)(.)(.)X")


class GainTracker:
    """Follow the channel gains set by commands sent to the board.

    ``x CH POWER GAIN INPUT BIAS SRB2 SRB1 X`` sets channel ``CH`` (``1``-``8`` on the
    Cyton, ``Q W E R T Y U I`` for Daisy channels 9-16) to gain ``GAINS[int(GAIN)]``;
    ``d`` (defaults) and ``v`` (soft reset) return every channel to 24.

    Parameters
    ----------
    n_channels : int
        8 (Cyton) or 16 (Cyton+Daisy).
    """

    def __init__(self, n_channels: int = 8):
        self.n_channels = check_option("n_channels", n_channels, (8, 16))
        self.gains = np.full(n_channels, DEFAULT_GAIN, dtype=np.int64)

    def reset(self) -> None:
        self.gains[:] = DEFAULT_GAIN

    def apply(self, command: str | bytes) -> None:
        """Update the gains from a command string as sent to the board.

        Raises
        ------
        ValueError
            A malformed ``x...X`` command (unknown channel or gain code).
        """
        text = command.decode("ascii", "replace") if isinstance(command, bytes) else command
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "x":
                m = _X_COMMAND.match(text, i)
                if m is None:
                    raise ValueError(
                        f"Invalid channel-settings command {text[i:i + 9]!r}: expected "
                        "'x' + channel + 6 setting digits + 'X' (9 characters)."
                    )
                self._set(m.group(1), m.group(3))
                i = m.end()
                continue
            if ch in ("d", "v"):
                self.reset()
            i += 1

    def _set(self, key: str, gain_code: str) -> None:
        keys = CYTON_CHANNEL_KEYS + (DAISY_CHANNEL_KEYS if self.n_channels == 16 else "")
        if key not in keys:
            raise ValueError(
                f"Invalid channel {key!r} in an x...X command. Allowed values are "
                f"{', '.join(keys)}, but got {key!r} instead."
            )
        if gain_code not in "0123456" or len(gain_code) != 1:
            raise ValueError(
                f"Invalid gain code {gain_code!r} in an x...X command. Allowed values are "
                f"0-6 (gains {GAINS}), but got {gain_code!r} instead."
            )
        self.gains[keys.index(key)] = GAINS[int(gain_code)]

    def scales(self) -> np.ndarray:
        """µV per count of each channel, shape (n_channels,)."""
        return VREF / self.gains.astype(np.float64) / COUNT_MAX * 1e6


def check_gain_code(gain: int) -> str:
    """The command digit for ``gain`` (e.g. 24 -> ``'6'``)."""
    check_int_range("gain", gain, 1, 24)
    check_option("gain", int(gain), GAINS)
    return str(GAINS.index(int(gain)))
