"""Identify (1:N) in process, as the enrolled users grow.

Run: ``python -m pytest benches/bench_identify.py --benchmark-only``

Groups ``Identify N=<N> users`` (N = 2 000 and 10 000; SQLite in a temporary
directory, templates encrypted at rest as ``nacf serve`` stores them): one
``AuthService.identify`` of a real 4-s, 16-channel EEGMMIDB probe, the whole call (the
probe's windows, the store read of every template of the served model, the lockout
read, the gallery, ``top_k``):

- ``decode every template`` (baseline): the gallery dropped before each call, so every
  template is fetched, decrypted and decoded again, as every call did before the gallery
  was kept;
- ``gallery kept``: the service's own path (the store lists every template's stamp;
  only templates written since the last call are fetched, decrypted and decoded).

The templates are the real ones of 16 enrolled subjects (S001–S016), repeated under
synthetic user ids to reach N. Each benchmark checks that both paths give the same
candidates.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import tag

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NACF_SHARED_DATA", ROOT.parent / "shared" / "data")) / "eegmmidb"
CH16 = ["Fp1.", "Fp2.", "F3..", "F4..", "F7..", "F8..", "C3..", "C4..", "T7..", "T8..",
        "P3..", "P4..", "P7..", "P8..", "O1..", "O2.."]
SFREQ = 160.0
SIZES = (2_000, 10_000)
ROUNDS = {2_000: 20, 10_000: 6}


def _read(subject: int, run: int, seconds: float) -> np.ndarray:
    from nacf_core.hardware.files import read_recording

    rec = read_recording(DATA / f"S{subject:03d}" / f"S{subject:03d}R{run:02d}.edf")
    idx = [rec.ch_names.index(c) for c in CH16]
    return np.ascontiguousarray(rec.data[: int(seconds * SFREQ), idx], dtype=np.float32)


def _block(x: np.ndarray):
    from nacf_core.service import SignalBlock

    x = np.ascontiguousarray(x, dtype="<f4")
    return SignalBlock(samples=x, sfreq=SFREQ, ch_names=tuple(CH16), raw=x.tobytes())


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """An ``AuthService`` as ``nacf serve`` builds it, and a function growing its users."""
    from nacf_core.config import Config
    from nacf_core.server.app import build_service

    d = tmp_path_factory.mktemp("identify")
    svc = build_service(Config(data_dir=str(d)))
    for s in range(1, 17):
        svc.enroll(f"S{s:03d}", [_block(_read(s, 3, 60))])
    blobs = [(r.blob, r.model_version) for r in svc.store.iter_templates()]
    state = {"n": len(blobs)}

    def grow(n: int) -> None:
        for i in range(state["n"], n):
            blob, version = blobs[i % len(blobs)]
            svc.store.put_template(f"u{i:06d}", blob, version)
        state["n"] = max(n, state["n"])

    yield svc, grow
    svc.store.close()


@pytest.mark.parametrize("kept", [False, True], ids=["decode every template", "gallery kept"])
@pytest.mark.parametrize("n", SIZES)
def test_identify(benchmark, service, n, kept):
    svc, grow = service
    grow(n)
    probe = _block(_read(1, 4, 4))
    expected = svc.identify(probe, top_k=5)

    def setup():
        svc._gallery_state = None

    tag(benchmark, f"Identify N={n} users", "gallery kept" if kept else
        "decode every template", baseline=not kept, n_items=n, item="user")
    r = benchmark.pedantic(svc.identify, args=(probe,), kwargs={"top_k": 5}, setup=None
                           if kept else setup, rounds=ROUNDS[n], warmup_rounds=1)
    assert r.candidates == expected.candidates
