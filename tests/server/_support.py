"""Shared helpers of the server tests: real EEG slices, a pipeline, a client."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("NACF_SHARED_DATA", ROOT.parent / "shared" / "data"))
#: The standard 16-channel montage, as the EEGMMIDB EDF files label it.
CH16 = ["Fp1.", "Fp2.", "F3..", "F4..", "F7..", "F8..", "C3..", "C4..", "Cz..", "T7..",
        "T8..", "P3..", "P4..", "Pz..", "O1..", "O2.."]
SFREQ = 160.0


@functools.lru_cache(maxsize=None)
def eeg(subject: int, run: int, start_s: float = 0.0, seconds: float = 40.0) -> np.ndarray:
    """float32 (n_times, 16) µV from EEGMMIDB (read in place)."""
    from nacf_core.hardware.files import read_recording

    rec = read_recording(DATA / "eegmmidb" / f"S{subject:03d}" / f"S{subject:03d}R{run:02d}.edf")
    idx = [rec.ch_names.index(c) for c in CH16]
    a, b = int(start_s * rec.sfreq), int((start_s + seconds) * rec.sfreq)
    return np.ascontiguousarray(rec.data[a:b, idx], dtype=np.float32)


def make_pipeline():
    """The real pipeline with the shipped model when it is there, else the scaffold."""
    try:
        from nacf_core.model import default_model
        from nacf_core.pipeline import Pipeline

        return Pipeline(default_model(16))
    except Exception:  # noqa: BLE001 - the model has not landed yet
        sys.path.insert(0, str(Path(__file__).parent))
        from _fakes import FakePipeline

        return FakePipeline()


def proof_md(secret: str, user_id: str, device_id: str, samples: bytes,
             ts: int | None = None) -> list[tuple[str, str]]:
    from nacf_core.service import device_proof

    ts = int(time.time()) if ts is None else ts
    return [("x-device-id", device_id), ("x-device-timestamp", str(ts)),
            ("x-device-proof", device_proof(secret, user_id, device_id, ts, samples))]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()
