import json

import numpy as np
import pytest

from nacf_core.cli import main
from nacf_core.errors import InvalidArgument
from nacf_core.evaluation import ManifestRow, evaluate, read_manifest

SUBJECTS = ["S001", "S002", "S003", "S004", "S005", "S006"]
FAST = {"inner_folds": 2}


@pytest.fixture(scope="module")
def manifest(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("manifest")
    lines = ["subject,recording,role,path,start_s,stop_s"]
    for s in SUBJECTS:
        for run, role in (("R03", "enroll"), ("R07", "probe")):
            lines.append(f"{s},{run},{role},{shared_data}/eegmmidb/{s}/{s}{run}.edf,0,40")
    p = d / "small.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


PROGRESS: list = []  # the report fixture's progress calls (done, total, stage)


@pytest.fixture(scope="module")
def report(manifest):
    return evaluate(manifest, folds=3, splits=1, channels=["Fp1", "Fp2", "C3", "C4", "P7",
                                                          "P8", "O1", "O2"],
                    train_params=FAST, adapt=True,
                    progress=lambda *call: PROGRESS.append(call))


def test_report_keys_and_ranges(report):
    s, f, q = report["single"], report["fused"], report["sequential"]
    for key in ("eer", "fnmr_at_fmr_0.01", "fnmr_at_fmr_0.001", "fta_rate"):
        assert 0.0 <= s[key] <= 1.0
    for key in ("eer", "fnmr_at_fmr_0.01", "fnmr_at_fmr_0.001"):
        assert 0.0 <= f[key] <= 1.0
    # 6 subjects x 40 s: 19 windows (2-s hop) per probe; 2 other subjects per fold
    assert s["n_genuine"] == 6 * 19
    assert s["n_impostor"] == 6 * 19 * 1
    assert f["mean_seconds"] == 12.0
    assert f["n_genuine"] == 6 * 3  # 10 non-overlapping windows -> 3 groups of 3
    assert 0.0 <= q["fmr"] <= 1.0 and 0.0 <= q["fnmr"] <= 1.0
    assert 4.0 <= q["mean_seconds"] <= 20.0
    c = report["calibrated"]["single"]
    assert c["fnmr_ci_low"] <= c["fnmr"] <= c["fnmr_ci_high"]
    assert report["setup"]["channels"] == ["Fp1", "Fp2", "C3", "C4", "P7", "P8", "O1", "O2"]
    assert "eer" in report["adaptation"]


def test_better_than_chance(report):
    # Even 8 channels and 4 training subjects separate people far better than chance.
    assert report["single"]["eer"] < 0.35
    g, i = report["_scores"]["single"]
    assert np.median(g) > np.median(i)


def test_cli_writes_json_and_det(manifest, tmp_path, capsys):
    js, det = tmp_path / "r.json", tmp_path / "det.png"
    rc = main(["evaluate", str(manifest), "--folds", "2", "--splits", "1", "--channels",
               "Fp1,Fp2,C3,C4,P7,P8,O1,O2", "--json", str(js), "--det", str(det),
               "--no-progress", "--model", "none"])
    assert rc == 1  # --model none: not a file
    assert "cannot read model file" in capsys.readouterr().err
    from nacf_core.commands import evaluate as cmd

    r = cmd.format_report  # the text report is built from the same JSON
    rc = main(["evaluate", str(manifest), "--folds", "3", "--splits", "1", "--channels",
               "Fp1,Fp2,C3,C4,P7,P8,O1,O2", "--json", str(js), "--det", str(det)])
    assert rc == 0
    out = capsys.readouterr()
    assert "evaluate [" in out.err  # the progress bar
    data = json.loads(js.read_text())
    for key in ("eer", "fnmr_at_fmr_0.01", "fnmr_at_fmr_0.001", "fta_rate", "n_genuine",
                "n_impostor"):
        assert key in data["single"]
    assert {"eer", "mean_seconds"} <= set(data["fused"])
    assert {"fmr", "fnmr", "mean_seconds"} <= set(data["sequential"])
    assert det.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "EER" in out.out and callable(r)



@pytest.mark.parametrize("option", ["--json", "--det"])
@pytest.mark.parametrize("where", ["missing_dir/out.png", "a_dir.png"])
def test_cli_refuses_an_output_path_it_cannot_write_before_evaluating(manifest, tmp_path,
                                                                      capsys, option, where):
    """The report was computed, then writing it raised a traceback (a missing directory,
    a directory given as the file): the path is checked first, and named."""
    (tmp_path / "a_dir.png").mkdir()
    out = tmp_path / where
    rc = main(["evaluate", str(manifest), "--folds", "3", "--splits", "1", "--channels",
               "Fp1,Fp2,C3,C4,P7,P8,O1,O2", option, str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"nacf evaluate: {option} {str(out)!r}" in err

def test_shipped_model_refuses_its_training_subjects(manifest):
    from nacf_core.model import default_model

    with pytest.raises(InvalidArgument, match="flatter"):
        evaluate(manifest, model=default_model(8))


@pytest.mark.parametrize("stop_s, match", [
    (8, r"probe recordings of at least 12 s \(3 windows of 4 s\); the longest probe "
        r"here is 8\.0 s"),
    (None, "no probe recording"),
])
def test_probes_too_short_for_the_fused_figures_are_named(tmp_path, stop_s, match):
    """Probes of 8 s (no group of 3 windows to fuse) or no probe row at all failed with
    numpy's "need at least one array to concatenate"."""
    from pathlib import Path

    from nacf_core.model import default_model

    demo = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"
    lines = ["subject,recording,role,path,start_s,stop_s"]
    for s in ("S021", "S022"):
        lines.append(f"{s},R03,enroll,{demo / (s + 'R03.npz')},,")
        if stop_s is not None:
            lines.append(f"{s},R07,probe,{demo / (s + 'R07.npz')},0,{stop_s}")
    p = tmp_path / "m.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidArgument, match=match):
        evaluate(p, model=default_model(8))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's 'Mean of empty slice' too
def test_cli_json_report_is_strict_json(tmp_path, capsys):
    """With probes of 12 s no sequential test of a genuine probe ends, so its FNMR is NaN:
    --json wrote the bare token NaN, which is not JSON (jq, JavaScript and Go refuse
    the file); an undefined figure is null (and numpy's 'Mean of empty slice' warnings no
    longer reach the operator's terminal)."""
    from pathlib import Path

    from nacf_core.model import default_model_path

    demo = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"
    lines = ["subject,recording,role,path,start_s,stop_s"]
    for s in ("S021", "S022"):
        lines.append(f"{s},R03,enroll,{demo / (s + 'R03.npz')},,")
        lines.append(f"{s},R07,probe,{demo / (s + 'R07.npz')},0,12")
    m, js = tmp_path / "m.csv", tmp_path / "r.json"
    m.write_text("\n".join(lines) + "\n")
    assert main(["evaluate", str(m), "--model", str(default_model_path(8)), "--json", str(js),
                 "--no-progress"]) == 0
    capsys.readouterr()

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    data = json.loads(js.read_text(), parse_constant=refuse)
    assert data["sequential"]["fnmr"] is None
    assert data["sequential"]["mean_seconds_genuine"] is None
    assert 0.0 <= data["single"]["eer"] <= 1.0


def test_a_subject_probed_but_never_enrolled_is_named_before_reading(tmp_path):
    """A subject with probe rows and no enroll row failed only when its fold was scored,
    after every recording was read and the folds' models fitted (or earlier with another
    error: too few subjects to calibrate); it is named before anything is read (these
    recordings do not even exist)."""
    lines = ["subject,recording,role,path"]
    for s in ("S1", "S2", "S3", "S4"):
        lines.append(f"{s},R1,enroll,{s}R1.edf")
        lines.append(f"{s},R2,probe,{s}R2.edf")
    lines += ["S5,R2,probe,S5R2.edf", "S6,R2,probe,S6R2.edf"]
    p = tmp_path / "m.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidArgument, match=r"subject\(s\) S5, S6 have probe recordings "
                                              r"but no enroll recording"):
        evaluate(p, folds=2)


def test_manifest_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("subject,recording,role\nS1,R1,enroll\n")
    with pytest.raises(InvalidArgument, match="lacks path"):
        read_manifest(p)
    p.write_text("subject,recording,role,path\nS1,R1,train,a.edf\n")
    with pytest.raises(InvalidArgument, match="line 2: role"):
        read_manifest(p)
    p.write_text("subject,recording,role,path\nS1,R1,enroll,a.edf\nS1,R1,probe,a.edf\n")
    with pytest.raises(InvalidArgument, match="same recording"):
        read_manifest(p)
    p.write_text("subject,recording,role,path,start_s\nS1,R1,enroll,a.edf,x\n")
    with pytest.raises(InvalidArgument, match="start_s must be a number"):
        read_manifest(p)
    p.write_text("subject,recording,role,path\nS1,R1,enroll,sub/a.edf\n")
    assert read_manifest(p)[0].path == tmp_path / "sub" / "a.edf"


@pytest.mark.parametrize("body,match", [
    # one file as a subject's enrollment and its probe, under two recording labels: the
    # genuine scores compare a recording with itself (the check was on labels only)
    ("S1,R1,enroll,a.edf\nS1,R2,probe,./a.edf\n",
     r"subject S1 enrolls and probes on the same recording file .*a\.edf"),
    ("S1,R1,enroll,a.edf,0,30\nS1,R2,probe,sub/../a.edf,30,60\n",
     r"subject S1 enrolls and probes on the same recording file"),
    # one file as two people: its impostor scores are genuine ones
    ("S1,R1,enroll,a.edf\nS2,R1,probe,a.edf\n", r"file .*a\.edf.* subjects S1 and S2"),
    # the same row twice: its comparisons counted twice
    ("S1,R1,enroll,a.edf\nS1,R2,probe,b.edf\nS1,R3,probe,b.edf\n",
     r"line 4 repeats line 3 \(subject S1, probe, .*b\.edf"),
    # overlapping ranges of one file: the windows they share counted twice
    ("S1,R1,enroll,a.edf\nS1,R2,probe,b.edf,,\nS1,R2b,probe,b.edf,0,30\n",
     r"line 4: subject S1's probe range 0-30 s of .*b\.edf.* overlaps line 3's \(the "
     r"whole file\)"),
    ("S1,R1,enroll,a.edf\nS1,R2,probe,b.edf,0,60\nS1,R2b,probe,b.edf,30,\n",
     r"line 4: subject S1's probe range 30 s-end of .*b\.edf.* overlaps line 3's "
     r"\(0-60 s\)"),
])
def test_manifest_same_file_twice(tmp_path, body, match):
    p = tmp_path / "m.csv"
    p.write_text("subject,recording,role,path,start_s,stop_s\n" + body)
    with pytest.raises(InvalidArgument, match=match):
        read_manifest(p)


def test_manifest_row_with_more_fields_than_the_header_is_refused(tmp_path):
    """A time range given on a row whose header has no start_s,stop_s columns was dropped
    without a word (the csv module files extra fields under None): the whole recording
    was used instead of the range asked for."""
    p = tmp_path / "m.csv"
    p.write_text("subject,recording,role,path\nS1,R1,enroll,a.edf\nS1,R2,probe,b.edf,0,30\n")
    with pytest.raises(InvalidArgument, match=r"line 3 has 6 fields, but the header names "
                                              r"4 \(subject,recording,role,path\)"):
        read_manifest(p)


def test_manifest_header_with_spaces_after_the_commas(tmp_path):
    """Values were stripped of spaces, the header's names were not: 'subject, recording,
    role, path' (as typed by hand) was refused as lacking the three columns it has."""
    p = tmp_path / "m.csv"
    p.write_text("subject, recording, role, path, start_s, stop_s\n"
                 "S1, R1, enroll, a.edf, 0, 30\n")
    assert read_manifest(p) == [ManifestRow("S1", "R1", "enroll", tmp_path / "a.edf", 0, 30)]


def test_manifest_same_file_in_disjoint_ranges_of_one_role_is_allowed(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("subject,recording,role,path,start_s,stop_s\n"
                 "S1,R1,enroll,a.edf,,\nS1,R2a,probe,b.edf,0,30\nS1,R2b,probe,b.edf,30,60\n")
    assert len(read_manifest(p)) == 3


@pytest.mark.parametrize("body,match", [
    (b"subject,recording,role,path,start_s\nS1,R1,enroll,a.edf,nan\n", "start_s must be"),
    (b"subject,recording,role,path,start_s\nS1,R1,enroll,a.edf,-1\n", "start_s must be"),
    (b"subject,recording,role,path,stop_s\nS1,R1,enroll,a.edf,inf\n", "stop_s must be"),
    (b"subject,recording,role,path,start_s,stop_s\nS1,R1,enroll,a.edf,5,2\n", "after start_s"),
    (b"subject,recording,role,path\nS1,R1,enroll,a\xff.edf\n", "not UTF-8"),
    (b"subject,recording,role,path\nS1,R1,enroll,a.edf\x00\n", "control character"),
    # rows without a subject were pooled as one person: their windows, of several
    # people, scored as genuine comparisons
    (b"subject,recording,role,path\n,R1,enroll,a.edf\n ,R2,probe,b.edf\n",
     r"line 2: the subject is empty; name the person the recording is of"),
    # no recording labels: "enrolls and probes on the same recording(s) ;"
    (b"subject,recording,role,path\nS1,,enroll,a.edf\nS1,,probe,b.edf\n",
     r"line 2: the recording is empty; label it \(e\.g\. the run or session\)"),
])
def test_manifest_damaged_or_absurd(tmp_path, body, match):
    p = tmp_path / "m.csv"
    p.write_bytes(body)
    with pytest.raises(InvalidArgument, match=match):
        read_manifest(p)


def test_manifest_must_be_a_regular_file(special_path, raised_without_blocking):
    exc = raised_without_blocking(lambda: read_manifest(special_path))
    assert isinstance(exc, InvalidArgument) and "expected a regular file" in str(exc)


def test_adaptation_impostors_face_the_adapted_templates(tmp_path):
    """With --adapt, a subject's template adapted after its owner's accepts, but impostor
    probes were scored against the enrollment templates only, so the 'adaptation' EER
    paired adapted genuine scores with unadapted impostor ones (R03->R04, 16 ch: 0.50 %
    reported, 0.64 % with impostors facing the adapted templates). Group ``a`` of a probe
    now meets every other template as it stood after that subject's own first ``a``
    groups."""
    from pathlib import Path

    from nacf_core.evaluation import FUSED_WINDOWS, _score_fold, _SplitScores, load_blocks
    from nacf_core.model import default_model
    from nacf_core.pipeline import Pipeline

    demo = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"
    subjects = ["S021", "S022", "S023"]
    lines = ["subject,recording,role,path"]
    for s in subjects:
        lines.append(f"{s},R03,enroll,{demo / (s + 'R03.npz')}")
        lines.append(f"{s},R07,probe,{demo / (s + 'R07.npz')}")
    p = tmp_path / "m.csv"
    p.write_text("\n".join(lines) + "\n")
    blocks = load_blocks(read_manifest(p))
    pipe = Pipeline(default_model(16))
    sc = _SplitScores()
    _score_fold(pipe, blocks, sc, adapt=True)

    # the expected scores, step by step
    tpl = {b.subject: pipe.enroll([(b.samples, b.sfreq, b.ch_names)])
           for b in blocks if b.role == "enroll"}
    groups = {}
    for b in blocks:
        if b.role == "probe":
            ws = pipe.windows(b.samples, b.sfreq, b.ch_names, hop_s=pipe.model.window_s)
            groups[b.subject] = [ws.select(slice(a, a + FUSED_WINDOWS))
                                 for a in range(0, ws.n_windows - FUSED_WINDOWS + 1,
                                                FUSED_WINDOWS)]
    states = {}
    for s in subjects:
        t = tpl[s]
        states[s] = [t]
        for g in groups[s]:
            t = pipe.adapt(t, pipe.decide(g, t))
            states[s].append(t)
    assert all(states[s][-1].n_updates > 0 for s in subjects)  # adaptation happened
    want_g, want_i, enrolled_i = [], [], []
    for s in subjects:
        for a, g in enumerate(groups[s]):
            want_g.append(pipe.decide(g, states[s][a]).score)
            for o in subjects:
                if o != s:
                    want_i.append(pipe.decide(g, states[o][min(a, len(states[o]) - 1)]).score)
                    enrolled_i.append(pipe.decide(g, tpl[o]).score)
    np.testing.assert_allclose(sc.adapt_g, want_g)
    assert not np.allclose(want_i, enrolled_i)  # the adapted templates score differently
    np.testing.assert_allclose(sc.adapt_i, want_i)


@pytest.mark.parametrize("n, folds, match", [
    (4, 2, r"2-fold evaluation over subjects needs at least 8 subjects .* has 4; add "
           r"subjects, or evaluate a fitted model on these with --model"),
    (6, 2, r"2-fold evaluation over subjects needs at least 8 subjects .* has 6; use "
           r"--folds 3"),
    (7, 2, r"has 7; use --folds 3"),
    (9, 5, r"5-fold evaluation over subjects needs at least 10 subjects .* has 9; use "
           r"--folds 2 to 4"),
])
def test_folds_that_leave_too_few_subjects_to_fit_a_model_are_refused_before_reading(
        tmp_path, n, folds, match):
    """Each fold's model is calibrated by cross-fitting over its training subjects, which
    needs 4 of them. With 4 subjects, ``--folds 2`` (what the error for the default 4
    folds advised) read every recording, then failed "calibration needs at least 4
    subjects (2 folds of 2), got 2", for a manifest of 4. The folds are now checked
    against both needs before anything is read (these recordings do not exist)."""
    lines = ["subject,recording,role,path"]
    for k in range(n):
        lines += [f"S{k},R1,enroll,S{k}R1.edf", f"S{k},R2,probe,S{k}R2.edf"]
    p = tmp_path / "m.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidArgument, match=match):
        evaluate(p, folds=folds)


def test_cli_folds_that_leave_too_few_subjects_are_named(tmp_path, capsys):
    lines = ["subject,recording,role,path"]
    for k in range(6):
        lines += [f"S{k},R1,enroll,S{k}R1.edf", f"S{k},R2,probe,S{k}R2.edf"]
    p = tmp_path / "m.csv"
    p.write_text("\n".join(lines) + "\n")
    assert main(["evaluate", str(p), "--no-progress"]) == 1  # 4 folds of 6: use 3
    assert "has 6; use --folds 3." in capsys.readouterr().err
    assert main(["evaluate", str(p), "--folds", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "has 6; use --folds 3." in err and "cannot read" not in err


def _demo_manifest(tmp_path, rows):
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"
    lines = ["subject,recording,role,path,start_s,stop_s"]
    for s, run, role, start, stop in rows:
        lines.append(f"{s},{run},{role},{demo / (s + run + '.npz')},{start},{stop}")
    p = tmp_path / "m.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_a_subject_that_cannot_enroll_is_named(tmp_path):
    """A subject whose enroll recordings hold fewer good windows than enrollment needs
    stopped the evaluation with the pipeline's "enrollment needs at least 10 good 4-s
    windows ...; got 4 of 4.", naming no subject or recording in a manifest of many."""
    from nacf_core.errors import FailedPrecondition
    from nacf_core.model import default_model

    p = _demo_manifest(tmp_path, [
        row for s in ("S021", "S022", "S023")
        for row in ((s, "R03", "enroll", 0, 10 if s == "S023" else ""),
                    (s, "R07", "probe", 0, 12))])
    with pytest.raises(FailedPrecondition, match=r"subject S023 cannot enroll on recording "
                                                 r"R03: enrollment needs at least 10 good "
                                                 r"4-s windows .* got 4 of 4"):
        evaluate(p, model=default_model(8))


def test_a_recording_the_pipeline_refuses_is_named(tmp_path, capsys):
    """A probe (or enroll) recording the pipeline refuses (shorter than a window, lacking
    the model's channels, ...) stopped the evaluation with "nacf evaluate: the signal is too
    short: 3.000 s, but one window needs 4 s.": which of the manifest's recordings, it
    did not say."""
    from nacf_core.model import Model, default_model_path

    p = _demo_manifest(tmp_path, [
        ("S021", "R03", "enroll", "", ""), ("S022", "R03", "enroll", "", ""),
        ("S021", "R07", "probe", 0, 20), ("S022", "R07", "probe", 0, 3)])
    assert main(["evaluate", str(p), "--model", str(default_model_path(8)),
                 "--no-progress"]) == 1
    assert ("nacf evaluate: subject S022, probe recording R07: the signal is too short: "
            "3.000 s, but one window needs 4 s.") in capsys.readouterr().err
    p = _demo_manifest(tmp_path, [
        ("S021", "R03", "enroll", "", ""), ("S022", "R03", "enroll", 0, 2),
        ("S021", "R07", "probe", 0, 20), ("S022", "R07", "probe", 0, 20)])
    with pytest.raises(InvalidArgument, match=r"^subject S022, enroll recording R03: the "
                                              r"signal is too short: 2\.000 s"):
        evaluate(p, model=Model.load(default_model_path(8)))



def test_k_fold_names_a_subject_that_cannot_enroll_before_fitting(shared_data, tmp_path,
                                                                  monkeypatch):
    """In the k-fold the enrollment failed when the subject's fold was scored, after that
    fold's model (and those of the folds before it) had been fitted: minutes of work on
    the real manifests. The windows the gate accepts are known from the features, before
    any fit."""
    import nacf_core.evaluation as ev
    from nacf_core.errors import FailedPrecondition

    def never(*a, **k):
        raise AssertionError("a model was fitted")

    monkeypatch.setattr(ev, "fit_model_from_features", never)
    lines = ["subject,recording,role,path,start_s,stop_s"]
    for k in range(1, 9):
        s = f"S{k:03d}"
        lines.append(f"{s},R03,enroll,{shared_data}/eegmmidb/{s}/{s}R03.edf,0,"
                     f"{10 if k == 5 else 24}")
        lines.append(f"{s},R07,probe,{shared_data}/eegmmidb/{s}/{s}R07.edf,0,12")
    p = tmp_path / "m.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(FailedPrecondition, match=r"subject S005 cannot enroll on recording "
                                                 r"R03: enrollment needs at least 10 good "
                                                 r".* got 4 of 4"):
        evaluate(p, folds=4, splits=1, channels=["Fp1", "Fp2", "C3", "C4"])


def test_sequential_tests_start_only_where_the_probe_leaves_them_their_longest_duration():
    """Sequential tests ran one after the other along a probe, and the last ones, started
    where fewer windows than the test's maximum remained, were counted only if they
    decided early: a quick reject counted, a hesitant test (likelier to err, and longer)
    was dropped, which flattered the sequential FMR, FNMR and mean seconds (R03->R07,
    16 ch: 0.32 / 0.77 %, 6.0 s genuine; 0.37 / 0.87 %, 6.2 s with every test given
    room). A test now starts only where the probe can hold its full length."""
    from pathlib import Path

    from nacf_core.evaluation import _sequential, _SplitScores
    from nacf_core.hardware.files import read_recording
    from nacf_core.model import default_model
    from nacf_core.pipeline import Pipeline, Windows
    from nacf_core.sequential import SequentialTest

    demo = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"
    pipe = Pipeline(default_model(8))
    templates = {}
    for s in ("S021", "S022"):
        rec = read_recording(demo / f"{s}R03.npz")
        templates[s] = pipe.enroll([(rec.data, rec.sfreq, list(rec.ch_names))])
    n, room = 7, SequentialTest(pipe.model).max_windows
    # every window points away from S022's template: against it each test rejects at its
    # first window
    emb = np.repeat(-templates["S022"].embedding[None, :], n, axis=0).astype(np.float32)
    ws = Windows(emb, np.ones(n), np.ones(n, dtype=bool), [""] * n, n * 4.0,
                 np.arange(n) * 4.0, 4.0)
    out = _SplitScores()
    _sequential(pipe, ws, templates, ["S021", "S022"], 0, "S021", out)
    # tests start at windows 0, 1 and 2 only (7 windows, 5 at most per test)
    assert out.seq["i_acc"] == [False] * (n - room + 1)
    assert out.seq["i_sec"] == [4.0] * (n - room + 1)
    assert 1 <= len(out.seq["g_acc"]) <= n - room + 1


def test_a_fixed_model_on_one_subject_is_refused_before_reading(tmp_path, capsys):
    """``--model`` on a manifest of one subject read and scored every recording, then
    failed "'impostor' must hold at least one score, got none.": an impostor comparison
    needs another subject's template, which is now said before anything is read (these
    recordings do not exist)."""
    from nacf_core.model import default_model_path

    p = tmp_path / "m.csv"
    p.write_text("subject,recording,role,path\nS9,R1,enroll,S9R1.edf\nS9,R2,probe,S9R2.edf\n")
    assert main(["evaluate", str(p), "--model", str(default_model_path(8)),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "needs at least 2 subjects" in err and "has 1 (S9)" in err, err


def test_progress_ends_at_its_total(report, tmp_path):
    """The progress bar of nacf evaluate counted a features step per recording and two
    steps per fit that it never made: it stopped at 50 % with --model, and short of 100 %
    in the k-fold, when the report came."""
    from nacf_core.model import default_model

    done, total, _ = PROGRESS[-1]
    assert done == total and [d for d, _, _ in PROGRESS] == list(range(1, total + 1))
    calls = []
    p = _demo_manifest(tmp_path, [("S021", "R03", "enroll", "", ""),
                                  ("S022", "R03", "enroll", "", ""),
                                  ("S021", "R07", "probe", 0, 12),
                                  ("S022", "R07", "probe", 0, 12)])
    evaluate(p, model=default_model(8), progress=lambda *call: calls.append(call))
    assert [(d, t) for d, t, _ in calls] == [(k, 5) for k in range(1, 6)]
