"""Generated model files that pass the checksum (as a hand-edited or foreign file would,
its digest recomputed): a model file either loads, and then works (enrollment and
verification on real EEG give finite scores and thresholds, or refuse with nacf's own
errors), or is refused with ``InvalidArgument``; never another exception at load, and
never a model that loads and then fails with an unrelated one (a ZeroDivisionError, a
LinAlgError, NaN scores) on the first signal.

The mutations start from the shipped 16-channel model: one to three of its metadata
fields or arrays replaced by hostile values (0, negatives, 1e-300, 1e300, NaN, huge
integers, booleans, strings, null, nested objects; a tangent reference that is not
positive definite, projection components scaled to nothing, thresholds out of range)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacf_core.errors import InvalidArgument, NacfError
from nacf_core.model import Model
from nacf_core.pipeline import Pipeline

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
SHIPPED = Model.load(__import__("nacf_core").__path__[0] + "/data/models/eegmmidb-16ch.npz")
META, ARRAYS = SHIPPED._payload()
META = json.loads(META)

HOSTILE = [0, -1, 1, 2, 0.5, 1e-300, 1e300, -1e300, 10 ** 400, True, False, None, "", "4",
           "Fp1", [], [1, 2], {}, {"a": 1}, 3.0, 160.0, 1e-9, 0.999999, 1000, 100001, 20.0,
           40.0, 79.9, 80.0]
SCALARS = ["sfreq", "window_s", "hop_s", "filter_order", "min_quality", "min_enroll_epochs",
           "shrinkage", "tangent_eps", "projection_reg", "target_fmr", "name", "format_version"]
LIMITS = list(META["artifact_limits"])
SEQ = list(META["sequential"])
ELECTRODES = ["Fp1", "Fp2", "F3", "F4", "F7", "F8", "C3", "C4", "T7", "T8", "P3", "P4", "P7",
              "P8", "O1", "O2", "Cz", "Fz", "Pz", "Oz", "AF3", "FC5"]


@pytest.fixture(scope="module")
def eeg16(shared_data):
    from nacf_core.hardware.files import read_recording

    rec = read_recording(shared_data / "eegmmidb" / "S003" / "S003R03.edf", stop_s=50)
    names = [c.rstrip(".").upper() for c in rec.ch_names]
    idx = [names.index(c.upper()) for c in ELECTRODES]  # 16 of the model plus 6 more
    return np.ascontiguousarray(rec.data[:, idx], np.float32), rec.sfreq


def _bytes(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    digest = Model._digest(meta_bytes, arrays)
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(meta_bytes, np.uint8),
             checksum=np.frombuffer(digest.encode(), np.uint8), **arrays)
    return buf.getvalue()


@st.composite
def damaged(draw):
    meta = json.loads(json.dumps(META))
    arrays = {k: v.copy() for k, v in ARRAYS.items()}
    hostile = st.one_of(st.sampled_from(HOSTILE),
                        st.floats(allow_nan=False, allow_infinity=False))
    factors = st.sampled_from([0.0, 1e-6, 0.1, 0.5, 0.9, 0.99, 1.01, 1.1, 2.0, 10.0, 1e6, -1.0])

    def nudged(old):
        """Mostly the old value scaled (often still within its range, at an edge of it),
        else a hostile one."""
        if isinstance(old, (int, float)) and not isinstance(old, bool) and draw(st.booleans()):
            v = old * draw(factors)
            return int(v) if isinstance(old, int) else v
        return draw(hostile)
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["scalar", "scalar", "limit", "band", "seq", "channels",
                                     "array", "array", "array"]))
        if what == "scalar":
            key = draw(st.sampled_from(SCALARS))
            meta[key] = nudged(meta[key])
        elif what == "limit":
            key = draw(st.sampled_from(LIMITS))
            meta["artifact_limits"][key] = nudged(meta["artifact_limits"][key])
        elif what == "band":
            i = draw(st.integers(0, 1))
            meta["band"][i] = nudged(meta["band"][i])
        elif what == "seq":
            key = draw(st.sampled_from(SEQ))
            old = meta["sequential"][key]
            if isinstance(old, list) and draw(st.booleans()):
                i = draw(st.integers(0, len(old) - 1))
                old[i] = nudged(old[i])
            elif isinstance(old, list) and draw(st.booleans()):
                meta["sequential"][key] = old[: draw(st.integers(0, len(old)))]
            else:
                meta["sequential"][key] = nudged(old)
        elif what == "channels":
            how = draw(st.sampled_from(["shuffle", "rename", "drop"]))
            ch = meta["ch_names"]
            if how == "shuffle":
                meta["ch_names"] = draw(st.permutations(ch))
            elif how == "rename":
                ch[draw(st.integers(0, len(ch) - 1))] = draw(st.sampled_from(ELECTRODES))
            else:
                meta["ch_names"] = ch[:-1]
        else:
            name = draw(st.sampled_from(sorted(arrays)))
            a = arrays[name]
            how = draw(st.sampled_from(["scale", "one", "transpose", "cut", "negate_diag"]))
            if how == "scale":
                arrays[name] = a * draw(st.sampled_from([0.0, 1e-200, 1e-60, 1e60, 1e200, -1.0]))
            elif how == "one":
                a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(
                    [0.0, 1e300, -1e300, 2.0, -2.0, 1e-300]))
            elif how == "transpose" and a.ndim == 2:
                arrays[name] = np.ascontiguousarray(a.T[:, : max(a.shape[0] - 1, 1)])
            elif how == "cut":
                arrays[name] = np.ascontiguousarray(a[: max(a.shape[0] - 1, 1)])
            elif how == "negate_diag" and a.ndim == 2 and a.shape[0] == a.shape[1]:
                a[np.diag_indices(a.shape[0])] *= -1
    return _bytes(meta, arrays)


def test_the_rebuilt_shipped_model_loads_and_works(eeg16):
    model = Model.from_bytes(_bytes(META, ARRAYS))
    assert model.version == SHIPPED.version
    _works(model, *eeg16)


def _works(model: Model, x: np.ndarray, sfreq: float) -> None:
    pipe = Pipeline(model)
    n = int(30 * sfreq)
    try:
        template = pipe.enroll([(x[:n], sfreq, ELECTRODES)])
    except NacfError:  # too few good windows under these limits, say: said, not crashed
        return
    assert np.all(np.isfinite(template.embedding))
    d = pipe.verify(x[n:], sfreq, ELECTRODES, template)
    assert math.isfinite(d.score) and -1.0 - 1e-9 <= d.score <= 1.0 + 1e-9, d.score
    assert math.isfinite(d.threshold), d.threshold


@FUZZ
@given(data=damaged())
def test_a_model_file_loads_and_works_or_is_refused_with_invalid_argument(eeg16, data):
    try:
        model = Model.from_bytes(data)
    except InvalidArgument as exc:
        assert str(exc)
        return
    _works(model, *eeg16)
