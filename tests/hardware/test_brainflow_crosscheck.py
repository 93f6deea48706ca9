"""Cross-check with an independent decoder: BrainFlow's own Cyton driver reads the
simulator's pty, and its microvolts must equal nacf's for the same packets."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

# BrainFlow is a test-only dependency (the dev extra; on Python 3.11 it needs
# setuptools<81 for pkg_resources). Not skipped when missing: CI installs it.
from brainflow.board_shim import BoardIds, BoardShim, BrainFlowInputParams
from nacf_core.hardware.cyton import GainTracker, uv_per_count
from nacf_core.hardware.files import read_recording
from nacf_core.hardware.framing import Framer
from nacf_core.hardware.simulator import SimulatedCyton

DEMO = Path(__file__).resolve().parents[2] / "nacf_core" / "data" / "demo" / "S022R07.npz"


@pytest.mark.parametrize("daisy", [False, True], ids=["cyton", "cyton-daisy"])
def test_brainflow_reads_the_same_microvolts(daisy):
    rec = read_recording(DEMO, stop_s=10)
    board = BoardIds.CYTON_DAISY_BOARD if daisy else BoardIds.CYTON_BOARD
    config = "x3040110X"  # channel 3 at gain 8: both sides must track it
    BoardShim.disable_board_logger()
    with SimulatedCyton(rec, daisy=daisy, realtime=True, speed=1.0, capture=True) as sim:
        params = BrainFlowInputParams()
        params.serial_port = sim.port
        shim = BoardShim(board, params)
        shim.prepare_session()
        try:
            shim.config_board(config)
            shim.start_stream()
            time.sleep(1.2)
            shim.stop_stream()
            data = shim.get_board_data()
        finally:
            shim.release_session()
        sent = bytes(sim.sent)
        assert sim.gains.gains[2] == 8
    eeg = BoardShim.get_eeg_channels(board)
    pkg = BoardShim.get_package_num_channel(board)
    bf_uv = data[eeg].T            # (n_samples, n_channels), float64
    bf_counter = data[pkg].astype(int)
    assert bf_uv.shape[0] > (100 if daisy else 200)

    # nacf decodes exactly the bytes the simulator sent
    gains = GainTracker(16 if daisy else 8)
    gains.apply(config)
    framer = Framer(daisy=daisy, gains=gains)
    out = framer.feed(sent)
    assert framer.counters.corrupt == 0 and framer.counters.dropped == 0
    # align on the sample counter sequence
    ours = out.counters.tolist()
    theirs = bf_counter.tolist()
    k = next(i for i in range(len(ours)) if ours[i:i + 8] == theirs[:8])
    n = min(len(theirs), len(ours) - k)
    assert n > 0.9 * len(theirs)
    assert ours[k:k + n] == theirs[:n]
    nacf = out.samples[k:k + n].astype(np.float64)
    bf = bf_uv[:n]
    # the same ADS1299 counts (BrainFlow: double; nacf: float32 µV)
    scales = gains.scales()
    np.testing.assert_array_equal(np.rint(nacf / scales), np.rint(bf / scales))
    np.testing.assert_allclose(nacf, bf, rtol=1e-6, atol=1e-4)
    assert scales[2] == pytest.approx(uv_per_count(8))
    assert np.abs(bf).max() > 1.0  # real EEG, not zeros
