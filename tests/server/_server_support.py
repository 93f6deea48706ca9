"""Shared helpers of the server tests: real EEG slices, a pipeline, a client."""

from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("NACF_SHARED_DATA", ROOT.parent / "shared" / "data"))
#: The model's 16-channel montage, as the EEGMMIDB EDF files label it.
CH16 = ["Fp1.", "Fp2.", "F3..", "F4..", "F7..", "F8..", "C3..", "C4..", "T7..", "T8..",
        "P3..", "P4..", "P7..", "P8..", "O1..", "O2.."]
#: Subjects the test model is fitted on (the tests enroll others: open set).
TRAIN_SUBJECTS = range(11, 21)
SFREQ = 160.0


@functools.cache
def eeg(subject: int, run: int, start_s: float = 0.0, seconds: float = 40.0) -> np.ndarray:
    """float32 (n_times, 16) µV from EEGMMIDB (read in place)."""
    from nacf_core.hardware.files import read_recording

    rec = read_recording(DATA / "eegmmidb" / f"S{subject:03d}" / f"S{subject:03d}R{run:02d}.edf")
    idx = [rec.ch_names.index(c) for c in CH16]
    a, b = int(start_s * rec.sfreq), int((start_s + seconds) * rec.sfreq)
    return np.ascontiguousarray(rec.data[a:b, idx], dtype=np.float32)


def fit_test_model(path: Path) -> Path:
    """Fit a real model (``nacf_core.training.fit_model``) on EEGMMIDB S011–S020, 60 s
    of R03 (enroll) and R07 (probe) each, and save it to ``path`` (about 6 s)."""
    from nacf_core.training import Block, fit_model

    names = [c.rstrip(".") for c in CH16]
    blocks = [Block(f"S{s:03d}", role, eeg(s, run, 0, 60), SFREQ, list(CH16))
              for s in TRAIN_SUBJECTS for run, role in ((3, "enroll"), (7, "probe"))]
    fit_model(blocks, ch_names=names, name="test-16ch").save(path)
    return path


def make_pipeline(model_path: Path | str):
    from nacf_core.model import Model
    from nacf_core.pipeline import Pipeline

    return Pipeline(Model.load(model_path))


def proof_md(secret: str, user_id: str, device_id: str, samples: bytes,
             ts: int | None = None) -> list[tuple[str, str]]:
    from nacf_core.service import device_proof

    ts = int(time.time()) if ts is None else ts
    return [("x-device-id", device_id), ("x-device-timestamp", str(ts)),
            ("x-device-proof", device_proof(secret, user_id, device_id, ts, samples))]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def signal_block(x: np.ndarray, device_id: str = ""):
    """``x`` (n_times, 16) as the service's ``SignalBlock``, as the converter builds it."""
    from nacf_core.service import SignalBlock

    x = np.ascontiguousarray(x, dtype="<f4")
    return SignalBlock(samples=x, sfreq=SFREQ, ch_names=tuple(CH16), device_id=device_id,
                       raw=x.tobytes())


def sqlite_service(tmp_path: Path, model_path: Path | str, **config):
    """An ``AuthService`` on a new SQLite store in ``tmp_path``, with the rate limit out
    of the way (``config`` overrides any ``Config`` field); close its ``store`` after."""
    from prometheus_client import CollectorRegistry

    from nacf_core.config import Config
    from nacf_core.metrics import Metrics
    from nacf_core.service import AuthService
    from nacf_core.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    cfg = Config(**{"data_dir": str(tmp_path), "rate_limit_per_s": 1000,
                    "rate_limit_burst": 1000, **config})
    return AuthService(store, make_pipeline(model_path), cfg,
                       metrics=Metrics(CollectorRegistry()))


class StatusRecorder:
    """What a fake grpc.ServicerContext needs of a call's status: ``set_code`` and
    ``abort`` record it (``abort`` raises, as grpcio's does), ``code`` reads it."""

    _code = None

    def code(self):
        return self._code

    def set_code(self, code) -> None:
        self._code = code

    def abort(self, code, details):
        self._code = code
        raise Exception(details)


def auth_requests(server, method: str, status: str, user_type: str = "api_key") -> float:
    """``nacfauth_auth_requests_total`` of a running ``NacfServer`` for one label set."""
    v = server.metrics.registry.get_sample_value(
        "nacfauth_auth_requests_total",
        {"method": method, "status": status, "user_type": user_type})
    return v or 0.0


def wait_in_flight(server, n: int, timeout: float = 20.0) -> None:
    """Wait until gRPC counts ``n`` calls in flight (``active_rpc_count``, what it
    compares with ``maximum_concurrent_rpcs``; the interceptor reads the same number):
    a held call holds its slot only once the server has taken it in, and gives it back
    only once the server has ended it, neither at a fixed time after the client's side
    did (a fixed sleep guessed it, too short on a loaded machine)."""
    import time

    st = server._interceptor._grpc_state
    assert st is not None, "this grpcio's count of calls in flight is not found"
    t0 = time.monotonic()
    while st.active_rpc_count != n and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    assert st.active_rpc_count == n, (st.active_rpc_count, n)
