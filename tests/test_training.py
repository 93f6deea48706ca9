"""Fitting a model (``nacf train``) on the shipped demo recordings (4 subjects, 60 s each)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacf_core.hardware.files import read_recording

from nacf_core.errors import InvalidArgument
from nacf_core.training import Block, fit_model

DEMO = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"
SUBJECTS = ["S021", "S022", "S023", "S024"]
CH8 = ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]


def _blocks(probe_s: float | None = None, probes: bool = True) -> list[Block]:
    out = []
    for s in SUBJECTS:
        for run, role in (("R03", "enroll"), ("R07", "probe")):
            if role == "probe" and not probes:
                continue
            rec = read_recording(DEMO / f"{s}{run}.npz",
                                 stop_s=probe_s if role == "probe" else None)
            out.append(Block(s, role, rec.data, rec.sfreq, list(rec.ch_names), run))
    return out


def test_probes_shorter_than_the_longest_fusion_are_named():
    """Probes of 16 s give no run of 5 consecutive 4-s windows, the longest fusion the
    thresholds are calibrated for: the fit failed with "'impostor' must hold at least
    one score, got none", which says nothing about the manifest."""
    with pytest.raises(InvalidArgument, match=r"probe recordings of at least 20 s \(5 "
                                              r"windows of 4 s\).*the longest probe here "
                                              r"gives 4 window\(s\)"):
        fit_model(_blocks(probe_s=16.0), ch_names=CH8, name="short")


def test_no_probe_recording_is_named():
    with pytest.raises(InvalidArgument, match="no probe recording"):
        fit_model(_blocks(probes=False), ch_names=CH8, name="enroll-only")


def test_probes_long_enough_fit():
    m = fit_model(_blocks(probe_s=20.0), ch_names=CH8, name="ok")
    assert m.max_windows == 5 and m.info["training"]["subjects"] == SUBJECTS


@pytest.mark.parametrize("params, match", [
    ({"target_fmr": 0.5}, r"'target_fmr' must be in \(0, 0\.5\), got 0\.5"),
    ({"target_fmr": 0.0}, r"'target_fmr' must be in \(0, 0\.5\), got 0\.0"),
    ({"beta": 0.7}, r"'beta' must be in \(0, 0\.5\), got 0\.7"),
])
def test_error_targets_outside_the_sequential_test_s_range_are_refused_first(params, match):
    """A target FMR in [0.5, 1) (or a beta outside (0, 0.5)) went through the whole front
    end and the cross-fitting, then failed in the sequential test's fit with "'alpha' and
    'beta' must be in (0, 0.5)", naming neither parameter given."""
    blocks = _blocks(probe_s=20.0)
    blocks[0] = Block("S021", "enroll", None, 160.0, CH8)  # never reached
    with pytest.raises(InvalidArgument, match=match):
        fit_model(blocks, ch_names=CH8, name="bad", **params)


@pytest.mark.parametrize("params, match", [
    ({"window_s": 30.0, "hop_s": 15.0}, r"'window_s' must be a finite number in \[1, 20\]"),
    ({"hop_s": 6.0}, r"'hop_s' must be a finite number in \[0.5, 4\]"),
])
def test_windows_a_model_cannot_hold_are_refused_first(params, match):
    """window_s=30 went through the whole front end and the fit, and the model then could
    not be saved (or, before the bounds, loaded with windows nacf serve cannot decide)."""
    blocks = _blocks(probe_s=20.0)
    blocks[0] = Block("S021", "enroll", None, 160.0, CH8)  # never reached
    with pytest.raises(InvalidArgument, match=match):
        fit_model(blocks, ch_names=CH8, name="bad", **params)


def test_a_recording_the_front_end_refuses_is_named():
    """A block the front end refuses failed the fit with "the signal is too short: 2.000
    s, but one window needs 4 s.", naming none of the manifest's recordings."""
    blocks = _blocks(probe_s=20.0)
    blocks[3] = Block("S022", "probe", blocks[3].samples[:320], 160.0, blocks[3].ch_names,
                      "R07")
    with pytest.raises(InvalidArgument, match=r"^subject S022, probe recording R07: the "
                                              r"signal is too short: 2\.000 s"):
        fit_model(blocks, ch_names=CH8, name="short")


def test_no_enroll_recording_is_named():
    """Probe recordings only (every role 'probe'): the fit failed saying the probes must be
    at least 20 s long, "the longest probe here gives 15 window(s)", when what lacked was
    an enroll recording to build the templates the probes are scored against."""
    blocks = [Block(b.subject, "probe", b.samples, b.sfreq, b.ch_names, b.recording)
              for b in _blocks()]
    with pytest.raises(InvalidArgument, match=r"no subject has both an enroll and a probe "
                                              r"recording \(4 have probes only\)"):
        fit_model(blocks, ch_names=CH8, name="probe-only")
