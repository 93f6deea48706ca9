"""Generated hostile LSL streams: whatever an outlet sends (samples that are NaN, infinite
or too large for float32, any sample format but strings, timestamps that go backwards,
jump or repeat, any rate, missing, repeated or odd channel labels, unit strings),
:class:`LslSource` either delivers chunks of float32 microvolts with the stream's
channel count and one finite timestamp per sample (time never going back), never an
infinite sample (a value it cannot hold is a dropped sample: NaN, as a file's would be),
or refuses the stream with a ``ValueError`` that names it; never another exception, nor
a hang (pytest-timeout).

The outlet lives in this process (pylsl), as in ``test_lsl.py``."""

from __future__ import annotations

import math
import time
import uuid

import numpy as np
import pylsl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacf_core.hardware.lsl import LslSource

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
FORMATS = {"float32": pylsl.cf_float32, "double64": pylsl.cf_double64,
           "int16": pylsl.cf_int16, "int32": pylsl.cf_int32, "int8": pylsl.cf_int8}
HOSTILE = [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 3.5e38, 1e300, -1e300,
           1e-45, 0.0, -0.0, 32767.0, -32768.0, 2.0 ** 31, 250.0]
LABELS = ["Fp1", "Fp2", "C3", "C4", "Cz", "O1", "", " ", "Fp1", "T3", "T7", "EXG 1", "a,b",
          "Cz\n", "x" * 300, "Accel X", "µ", "\x7f"]
UNITS = ["", "uV", "µV", "microvolts", "mV", "V", "nV", "counts", "a.u.", "g", "uv ", "MV",
         "Volts", "\u00b5v", "x" * 100]


def _check_chunk(c, n_ch: int) -> None:
    assert c.samples.dtype == np.float32 and c.samples.ndim == 2, c.samples.dtype
    assert c.samples.shape[1] == n_ch == len(c.ch_names)
    assert c.timestamps.shape == (c.samples.shape[0],)
    assert np.isfinite(c.timestamps).all(), c.timestamps
    assert not np.isinf(c.samples).any(), "an infinite sample was delivered"


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.data())
def test_a_hostile_stream_is_read_as_finite_chunks_or_refused_with_a_value_error(data):
    fmt = data.draw(st.sampled_from(sorted(FORMATS)), label="format")
    n_ch = data.draw(st.integers(1, 6), label="channels")
    rate = data.draw(st.sampled_from([250.0, 1.0, 0.001, 1e-300, 100000.0, 100001.0,
                                      125.5, 0.0]), label="rate")
    labels = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(LABELS), min_size=n_ch,
                                                     max_size=n_ch)), label="labels")
    units = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(UNITS), min_size=n_ch,
                                                    max_size=n_ch)), label="units")
    n = data.draw(st.integers(1, 40), label="samples")
    values = np.array(data.draw(st.lists(st.one_of(st.sampled_from(HOSTILE),
                                                   st.floats(-1e6, 1e6)),
                                         min_size=n * n_ch, max_size=n * n_ch),
                                label="values"), dtype=np.float64).reshape(n, n_ch)
    stamps = data.draw(st.sampled_from(["none", "decreasing", "repeated", "jump", "zero",
                                        "negative", "huge", "nan"]), label="timestamps")
    name = f"nacf-fuzz-{uuid.uuid4().hex[:10]}"
    info = pylsl.StreamInfo(name, "EEG", n_ch, rate, FORMATS[fmt], f"sid-{name}")
    if labels is not None:
        info.set_channel_labels(labels)
    if units is not None:
        info.set_channel_units(units)
    outlet = pylsl.StreamOutlet(info)
    try:
        try:
            src = LslSource(name=name, type="EEG", timeout=10, reconnect_s=0).open()
        except ValueError as exc:
            assert name in str(exc), str(exc)
            return
        try:
            assert src.ch_names and len(src.ch_names) == n_ch
            assert math.isfinite(src.sfreq) and src.sfreq > 0
            assert outlet.wait_for_consumers(10)
            now = pylsl.local_clock()
            ts = {"none": None, "decreasing": [now - k for k in range(n)],
                  "repeated": [now] * n, "jump": [now + (1e6 if k % 2 else 0) for k in range(n)],
                  "zero": [0.0] * n, "negative": [-1e9 - k for k in range(n)],
                  "huge": [1e300] * n, "nan": [float("nan")] * n}[stamps]
            with np.errstate(invalid="ignore", over="ignore"):
                sent = values.astype(np.float32) if fmt == "float32" else values
            if fmt.startswith("int"):
                info_dtype = {"int8": np.int8, "int16": np.int16, "int32": np.int32}[fmt]
                lim = np.iinfo(info_dtype)
                sent = np.clip(np.nan_to_num(values, nan=0, posinf=lim.max, neginf=lim.min),
                               lim.min, lim.max).astype(info_dtype)
            if ts is None:
                outlet.push_chunk(np.ascontiguousarray(sent))
            else:
                outlet.push_chunk(np.ascontiguousarray(sent), ts)
            got, t0, stamps = 0, time.monotonic(), []
            while got < n and time.monotonic() - t0 < 10:
                c = src.read_chunk(timeout=0.5)
                assert c is not None
                _check_chunk(c, n_ch)
                got += c.n_times
                stamps.append(c.timestamps)
            assert got == n, f"{got} of {n} samples arrived"
            # time never goes back (strictly forward where float64 can tell the step)
            assert (np.diff(np.concatenate(stamps)) >= 0).all(), stamps
        finally:
            src.close()
    finally:
        del outlet
