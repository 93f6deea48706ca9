"""Wrong input to the ``nacf`` command line: a one-line error saying what was expected and a
non-zero exit, never a traceback, a hang or unbounded memory (files that are FIFOs or
devices are refused before anything reads them)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest

from nacf_core.cli import main
from nacf_core.store import create_key_file

DEMO = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"


def _argparse_error(capsys, argv: list[str]) -> str:
    """Run ``argv``, expect argparse's exit 2, return the error line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    return err.strip().splitlines()[-1]


def _no_nacf_env(monkeypatch):
    for var in list(os.environ):
        if var.startswith("NACF_"):
            monkeypatch.delenv(var)


# ----------------------------------------------------------------------- key files
def test_store_key_file_must_be_a_regular_file(tmp_path, special_path, raised_without_blocking,
                                               capsys):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    rc = []
    exc = raised_without_blocking(lambda: rc.append(main(
        ["store", "stats", "--store-url", url, "--key-file", str(special_path)])))
    assert exc is None and rc == [1]
    err = capsys.readouterr().err
    assert f"Template key file {str(special_path)!r} is" in err
    assert "expected a regular file" in err


def test_template_key_file_env_must_be_a_regular_file(tmp_path, special_path, monkeypatch,
                                                      raised_without_blocking):
    from nacf_core.errors import FailedPrecondition
    from nacf_core.store import load_key

    _no_nacf_env(monkeypatch)
    monkeypatch.setenv("NACF_TEMPLATE_KEY_FILE", str(special_path))
    exc = raised_without_blocking(lambda: load_key(None))
    assert isinstance(exc, FailedPrecondition) and "expected a regular file" in str(exc)


def test_key_file_size_is_capped(tmp_path):
    from nacf_core.errors import FailedPrecondition
    from nacf_core.store import load_key

    big = tmp_path / "big.key"
    big.write_bytes(b"A" * 5000)
    with pytest.raises(FailedPrecondition, match="larger than the limit of 4096 bytes"):
        load_key(big)
    good = tmp_path / "good.key"
    made = create_key_file(good)
    assert load_key(good) == made


def test_serve_store_key_file_must_be_a_regular_file(tmp_path, special_path, monkeypatch,
                                                     raised_without_blocking, capsys):
    rc = []
    exc = raised_without_blocking(lambda: rc.append(_serve(
        monkeypatch, tmp_path, "--store-key-file", str(special_path))))
    assert exc is None and rc == [2]
    assert "expected a regular file" in capsys.readouterr().err


# ----------------------------------------------------------------------- kernels bench
@pytest.mark.parametrize("body, match", [
    (None, "No such file"),
    (b"\xd5\xff\x00binary", "is not UTF-8 text"),
    (b"", "is not valid JSON"),
    (b"[1, 2, 3]", "holds a JSON list, not an object"),
    (b'{"not": "a bench"}', "has no non-empty 'benchmarks' list"),
    (b'{"benchmarks": [{"name": "a", "stats": {}}]}', r"malformed entry benchmarks\[0\]"),
    ((b'{"benchmarks": [{"name": "a", "stats": {"median": 1}, "extra_info": '
      b'{"n_items": "many"}}]}'), r"malformed entry benchmarks\[0\]"),
])
def test_bench_from_json_refuses_what_is_not_a_benchmark_report(tmp_path, capsys, body, match):
    path = tmp_path / "b.json"
    if body is not None:
        path.write_bytes(body)
    assert main(["kernels", "bench", "--from-json", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.startswith("nacf kernels bench: ") and len(err.strip().splitlines()) == 1
    assert re.search(match, err)
    if body is not None:
        assert "expected pytest-benchmark's --benchmark-json output" in err


def test_bench_from_json_must_be_a_regular_file(special_path, raised_without_blocking,
                                                capsys):
    rc = []
    exc = raised_without_blocking(lambda: rc.append(main(
        ["kernels", "bench", "--from-json", str(special_path)])))
    assert exc is None and rc == [2]
    assert "expected a regular file" in capsys.readouterr().err


def test_kernels_without_action_is_a_usage_error_on_stderr(capsys):
    err = _argparse_error(capsys, ["kernels"])
    assert "required" in err and "{info,bench}" in err


@pytest.mark.parametrize("option", ["--from-json", "--json", "--benches"])
def test_bench_refuses_an_empty_path(capsys, option):
    """'' (a variable that was not set) was Path('') = '.', the working directory:
    '--from-json ""' said "benchmark JSON '.' is a directory", '--benches ""' looked for
    the benches in the working directory; an empty name is an argparse error naming it."""
    err = _argparse_error(capsys, ["kernels", "bench", option, ""])
    assert err.endswith(f"argument {option}: expected a non-empty file name, got ''") or \
        err.endswith(f"argument {option}: expected a non-empty folder name, got ''"), err


@pytest.mark.parametrize("keyword", ["", "  "])
def test_bench_refuses_an_empty_keyword_instead_of_running_every_benchmark(
        capsys, monkeypatch, keyword):
    """'-k ""' (a variable that was not set) was taken as no -k at all: the whole
    benchmark suite ran (minutes) instead of the selection meant; it is an argparse
    error naming the option, before any benchmark starts."""
    from nacf_core.commands import kernels as kernels_cmd

    def no_run(*args, **kwargs):
        raise AssertionError(f"the benchmarks were started: {args[0]}")

    monkeypatch.setattr(kernels_cmd.subprocess, "run", no_run)
    err = _argparse_error(capsys, ["kernels", "bench", "-k", keyword])
    assert err.endswith(f"argument -k: expected a non-empty pytest -k expression, "
                        f"got {keyword!r}"), err


@pytest.mark.parametrize("extra, named", [
    (["--json", "{out}"], "--json"), (["-k", "sosfilt"], "-k"),
    (["--max-time", "0.5"], "--max-time"), (["--cpu-time"], "--cpu-time"),
    (["--benches", "{dir}"], "--benches"),
])
def test_bench_from_json_refuses_the_options_of_a_run(tmp_path, capsys, extra, named):
    """--from-json prints an earlier run's table; with an option that only a run uses
    (--json, -k, --max-time, --cpu-time, --benches) the option was ignored without a
    word: '--from-json a.json --json b.json' wrote no b.json, '-k sosfilt' printed every
    case. Such a command line is refused, naming the option, and nothing is written."""
    from nacf_core.commands.kernels import BENCH_FILES

    report = tmp_path / "a.json"
    report.write_text(json.dumps({"machine_info": {}, "benchmarks": [
        {"name": "test_x[scipy]", "group": "g", "stats": {"median": 1e-5}}]}))
    bench_dir = tmp_path / "benches"
    bench_dir.mkdir()
    for name in BENCH_FILES:
        (bench_dir / name).write_text("")
    out = tmp_path / "b.json"
    argv = [a.format(out=out, dir=bench_dir) for a in extra]
    assert main(["kernels", "bench", "--from-json", str(report), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert named in captured.err and "--from-json" in captured.err, captured.err
    assert not out.exists()


def test_bench_refuses_a_json_path_that_cannot_be_created_before_running(capsys, monkeypatch):
    """'--json /proc/x.json': the folder exists and, for root, passes os.access, but no
    file can be made there; the benchmarks ran for minutes and then could not write
    their report. The path is now tried (a new file made and removed) before the run."""
    from nacf_core.commands import kernels as kernels_cmd

    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")

    def no_run(*args, **kwargs):
        raise AssertionError(f"the benchmarks were started: {args[0]}")

    monkeypatch.setattr(kernels_cmd.subprocess, "run", no_run)
    assert main(["kernels", "bench", "--json", "/proc/nacf-bench.json"]) == 2
    err = capsys.readouterr().err
    assert "--json '/proc/nacf-bench.json'" in err and "Traceback" not in err, err


def test_bench_max_time_must_be_positive(capsys):
    err = _argparse_error(capsys, ["kernels", "bench", "--max-time", "nan"])
    assert "argument --max-time: expected a finite number" in err


# ----------------------------------------------------------------------- train
@pytest.mark.parametrize("value", ["1e6", "-250", "nan", "1e12", "inf", "124", "abc"])
def test_train_sfreq_must_be_in_the_pipelines_range(capsys, value):
    err = _argparse_error(capsys, ["train", "m.csv", "--out", "m.npz", "--sfreq", value])
    assert err == (f"nacf train: error: argument --sfreq: expected a finite number in "
                   f"[125, 1000], got {value!r}")


def test_train_sfreq_in_range_is_accepted():
    from nacf_core.cli import build_parser

    args = build_parser().parse_args(["train", "m.csv", "--out", "m.npz", "--sfreq", "250"])
    assert args.sfreq == 250.0


@pytest.mark.parametrize("value", ["0", "1", "2", "-0.1", "nan", "inf", "abc", "0.5", "0.6",
                                   "0.999"])
def test_train_fmr_must_be_a_rate(capsys, value):
    """--fmr outside (0, 1) failed only after every recording was read and its features
    computed (the calibration refused it, naming 'target_fmr'); one in [0.5, 1) did too,
    the sequential test's fit refusing it as "'alpha' and 'beta' must be in (0, 0.5)"."""
    err = _argparse_error(capsys, ["train", "m.csv", "--out", "m.npz", "--fmr", value])
    assert err == (f"nacf train: error: argument --fmr: expected a finite number in (0, 0.5), "
                   f"got {value!r}")


def test_train_fmr_in_range_is_accepted():
    from nacf_core.cli import build_parser

    args = build_parser().parse_args(["train", "m.csv", "--out", "m.npz", "--fmr", "1e-4"])
    assert args.fmr == 1e-4


@pytest.mark.parametrize("where", ["missing_dir/m.npz", "a_dir"])
def test_train_refuses_an_output_path_it_cannot_write_before_reading(tmp_path, capsys, where):
    """--out was first tried after the whole fit (minutes to hours on a real manifest),
    and a directory there left a stray 'a_dir.tmp' model beside it: it is checked before
    any recording is read (this manifest's recording does not even exist)."""
    (tmp_path / "a_dir").mkdir()
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\nS1,R1,enroll,nowhere.edf\n")
    out = tmp_path / where
    assert main(["train", str(m), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nowhere.edf" not in err
    assert f"nacf train: --out {str(out)!r}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "m.csv"]


@pytest.mark.parametrize("argv, match", [
    (["--out", "m.npz", "--name", "a\tb"], "--name 'a\\tb': a model name must be printable"),
    (["--out", "x" * 150 + ".npz"], "the --out file name (the default --name) 'xxxx"),
])
def test_train_refuses_a_model_name_the_file_cannot_hold(tmp_path, capsys, argv, match):
    """A name with a tab, or a default name (the --out stem) over 128 characters, was
    written into a model that Model.load then refused: it is refused before reading."""
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\nS1,R1,enroll,nowhere.edf\n")
    argv = [a if a.startswith("-") or "\t" in a else str(tmp_path / a) for a in argv]
    assert main(["train", str(m), *argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert match in err and "nowhere.edf" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("channels, match", [
    ("Fp1,ECG", "channel 'ECG' is not an EEG electrode name"),
    ("Fp1,FP1,O2", "channels named twice"),
    ("Fp1", "a model needs at least 2 channels"),
])
def test_train_and_evaluate_check_channels_before_reading(tmp_path, capsys, command,
                                                          channels, match):
    """--channels naming no electrode, one twice, or one only was refused after every
    recording of the manifest had been read (these do not even exist)."""
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n" + "".join(
        f"S{i},R1,enroll,nowhere{i}.edf\nS{i},R2,probe,elsewhere{i}.edf\n"
        for i in range(8)))
    argv = ["--out", str(tmp_path / "m.npz")] if command == "train" else []
    assert main([command, str(m), *argv, "--channels", channels, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert match in err and "nowhere" not in err


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_refuse_an_unknown_backend_before_reading(tmp_path, capsys,
                                                                     command):
    """--backend took any word and was first used when the pipeline was built, after
    every recording had been read: 'nacf train: Invalid value for the 'backend' parameter'
    (a Python parameter) minutes into a real manifest; it is an argparse choice now."""
    argv = ["--out", str(tmp_path / "m.npz")] if command == "train" else []
    err = _argparse_error(capsys, [command, "m.csv", *argv, "--backend", "cyton"])
    assert err == (f"nacf {command}: error: argument --backend: invalid choice: 'cyton' "
                   "(choose from 'cython', 'numba', 'reference')")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_check_nacf_kernel_backend_before_reading(tmp_path, capsys,
                                                                     monkeypatch, command):
    """Without --backend, a wrong NACF_KERNEL_BACKEND was found after every recording had
    been read (these do not even exist)."""
    monkeypatch.setenv("NACF_KERNEL_BACKEND", "cyton")
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n" + "".join(
        f"S{i},R1,enroll,nowhere{i}.edf\nS{i},R2,probe,elsewhere{i}.edf\n"
        for i in range(8)))
    argv = ["--out", str(tmp_path / "m.npz")] if command == "train" else []
    assert main([command, str(m), *argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "NACF_KERNEL_BACKEND" in err and "'cyton'" in err and "nowhere" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("target", ["recording", "manifest"])
def test_train_out_must_not_be_one_of_its_inputs(tmp_path, capsys, target):
    """--out naming one of the manifest's recordings (an .npz, like a model) or the
    manifest itself was overwritten by the model once the fit ended."""
    import shutil

    rec = tmp_path / "S021R07.npz"
    shutil.copy(DEMO / "S021R07.npz", rec)
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n" + "".join(
        f"{s},R03,enroll,{DEMO / (s + 'R03.npz')}\n"
        f"{s},R07,probe,{rec if s == 'S021' else DEMO / (s + 'R07.npz')}\n"
        for s in ("S021", "S022", "S023", "S024")))
    before = {p: p.read_bytes() for p in (rec, m)}
    out = rec if target == "recording" else m
    assert main(["train", str(m), "--out", str(out), "--channels",
                 "Fp1,Fp2,C3,C4,P7,P8,O1,O2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"--out {str(out)!r} is the {target} " in err
    assert {p: p.read_bytes() for p in (rec, m)} == before


@pytest.mark.parametrize("option, target", [("--json", "manifest"), ("--det", "recording")])
def test_evaluate_outputs_must_not_be_its_inputs(tmp_path, capsys, option, target):
    """--json or --det naming the manifest or one of its recordings overwrote it with
    the report once the evaluation ended."""
    import shutil

    from nacf_core.model import default_model_path

    rec = tmp_path / "S021R07.npz"
    shutil.copy(DEMO / "S021R07.npz", rec)
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n"
                 f"S021,R03,enroll,{DEMO / 'S021R03.npz'}\nS021,R07,probe,{rec}\n"
                 f"S022,R03,enroll,{DEMO / 'S022R03.npz'}\n"
                 f"S022,R07,probe,{DEMO / 'S022R07.npz'}\n")
    before = {p: p.read_bytes() for p in (rec, m)}
    out = rec if target == "recording" else m
    assert main(["evaluate", str(m), "--model", str(default_model_path(8)), option, str(out),
                 "--no-progress"]) == 1
    assert f"{option} {str(out)!r} is the {target} " in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (rec, m)} == before


@pytest.mark.parametrize("option, name, limit", [("--json", "r.json", 1000),
                                                   ("--det", "r.png", 10000)])
def test_evaluate_output_that_fails_to_write_keeps_the_old_file(tmp_path, option, name,
                                                                  limit):
    """--json and --det were written in place: a full disk (here the file-size limit)
    or a Ctrl-C while writing left the file cut short, an earlier report of that name
    lost, with exit 1 and the report printed as if all was well but that file."""
    from _fsize import run_with_file_size_limit

    from nacf_core.model import default_model_path

    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n" + "".join(
        f"{s},R03,enroll,{DEMO / (s + 'R03.npz')}\n{s},R07,probe,{DEMO / (s + 'R07.npz')}\n"
        for s in ("S021", "S022")))
    out = tmp_path / name
    out.write_bytes(b"the earlier report\n")
    proc = run_with_file_size_limit(
        "import matplotlib.pyplot\nfrom nacf_core.cli import main",
        "sys.exit(main(['evaluate', sys.argv[1], '--model', sys.argv[2], sys.argv[3], "
        "sys.argv[4], '--no-progress']))",
        limit, str(m), str(default_model_path(8)), option, str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"nacf evaluate: {option} {str(out)!r}: cannot write it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == b"the earlier report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.csv", name])


def test_evaluate_refuses_a_det_format_it_cannot_draw_before_evaluating(tmp_path, capsys,
                                                                         monkeypatch):
    """--det r.jgp (a typo) was found unwritable only once the evaluation had run (minutes
    on a full manifest) and its report had been printed."""
    import nacf_core.evaluation
    from nacf_core.model import default_model_path

    def evaluate(*a, **k):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(nacf_core.evaluation, "evaluate", evaluate)
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n"
                 f"S021,R03,enroll,{DEMO / 'S021R03.npz'}\n"
                 f"S021,R07,probe,{DEMO / 'S021R07.npz'}\n")
    out = tmp_path / "r.jgp"
    assert main(["evaluate", str(m), "--model", str(default_model_path(8)), "--det",
                 str(out), "--no-progress"]) == 1
    std, err = capsys.readouterr()
    assert std == "" and "Traceback" not in err
    assert f"--det {str(out)!r}: cannot draw a 'jgp' file; expected one of " in err, err
    assert "png" in err and not out.exists()


@pytest.mark.parametrize("option", ["--json", "--det"])
def test_evaluate_refuses_an_empty_output_name_before_evaluating(tmp_path, capsys,
                                                                  monkeypatch, option):
    """--json '' or --det '' was taken for no output at all: the evaluation ran (minutes
    on a full manifest) and ended with exit 0 and no report file."""
    import nacf_core.evaluation

    def evaluate(*a, **k):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(nacf_core.evaluation, "evaluate", evaluate)
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n"
                 f"S021,R03,enroll,{DEMO / 'S021R03.npz'}\n"
                 f"S021,R07,probe,{DEMO / 'S021R07.npz'}\n")
    assert main(["evaluate", str(m), option, "", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"nacf evaluate: {option} '' is an empty file name; expected a file to write" in err


def test_train_refuses_an_empty_out_name(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\nS1,R1,enroll,nowhere.edf\n")
    assert main(["train", str(m), "--out", "", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "nacf train: --out '' is an empty file name; expected a file to write" in err


@pytest.mark.parametrize("argv, match", [
    (["train", "m.csv", "--out", "m.npz", "--name", ""],
     "argument --name: expected a non-empty model name, got ''"),
    (["train", "m.csv", "--out", "m.npz", "--channels", ""],
     "argument --channels: expected comma-separated channel names, got ''"),
    (["train", "m.csv", "--out", "m.npz", "--channels", ","],
     "argument --channels: expected comma-separated channel names, got ',' (an empty name)"),
    (["evaluate", "m.csv", "--channels", " "],
     "argument --channels: expected comma-separated channel names, got ' '"),
    (["evaluate", "m.csv", "--channels", "Fp1,,C3"],
     "argument --channels: expected comma-separated channel names, got 'Fp1,,C3' (an empty "
     "name)"),
    (["simulate", "--port-dir", "", "--seconds", "0.1"],
     "argument --port-dir: expected a non-empty directory name, got ''"),
    (["simulate", "", "--seconds", "0.1"],
     "argument recording: expected a non-empty recording file name, got ''"),
])
def test_an_empty_value_is_not_taken_for_the_option_left_out(capsys, argv, match):
    """train --name '' named the model after --out, --channels '' (or ',') fitted or
    evaluated the default 16 channels, simulate --port-dir '' put the port in a temporary
    folder: each as if the option had been left out, without a word."""
    assert match in _argparse_error(capsys, argv)


# ----------------------------------------------------------------------- demo
@pytest.mark.parametrize("argv, match", [
    (["--grpc-address", "bogus"], "argument --grpc-address: expected HOST:PORT"),
    (["--metrics-address", "127.0.0.1:70000"],
     "argument --metrics-address: expected HOST:PORT with a host and a port in [0, 65535]"),
    (["--keep-running", "-1"], "argument --keep-running: expected a finite number in [0, "),
    (["--keep-running", "nan"], "argument --keep-running: expected a finite number in [0, "),
])
def test_demo_refuses_bad_options_before_starting(capsys, argv, match):
    assert match in _argparse_error(capsys, ["demo", *argv])


# ----------------------------------------------------------------------- simulate
@pytest.mark.parametrize("speed", ["0", "-1", "nan", "inf"])
@pytest.mark.parametrize("lsl", [[], ["--lsl", "nacf-test-speed"]])
def test_simulate_refuses_a_speed_that_is_not_a_pace(capsys, speed, lsl):
    # with --lsl a speed of 0 or less was a traceback (exit 1) after 'lsl:NAME' was
    # printed as the stream to read; on the pty the simulator's own message (exit 2)
    assert ("argument --speed: expected a finite number > 0, got "
            in _argparse_error(capsys, ["simulate", *lsl, "--speed", speed, "--seconds",
                                        "0.1"]))


@pytest.mark.parametrize("option", [["--faults", "drop=0.5"], ["--daisy"],
                                    ["--port-dir", "."]])
def test_simulate_refuses_pty_options_with_lsl(capsys, option):
    # they shape the simulated board on a pty; with --lsl they were ignored without a
    # word: a test of a reader's fault handling streamed a clean signal
    assert main(["simulate", "--lsl", "nacf-test-pty-options", *option, "--seconds",
                 "0.1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert (f"nacf simulate: {option[0]} is for the simulated Cyton on a pty; --lsl pushes "
            "the recording as it is" in err), err


@pytest.mark.parametrize("argv, match", [
    (["--seconds", "-1"], "argument --seconds: expected a finite number in (0, "),
    (["--seconds", "nan"], "argument --seconds: expected a finite number in (0, "),
    # (--seconds: a regression that falls back to a pty must not run until Ctrl-C)
    (["--lsl", "", "--seconds", "0.1"],
     "argument --lsl: expected a non-empty LSL stream name, got ''"),
])
def test_simulate_refuses_bad_options(capsys, argv, match):
    assert match in _argparse_error(capsys, ["simulate", *argv])


def test_simulate_port_dir_must_be_a_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["simulate", "--port-dir", str(f), "--seconds", "0.1"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err and out == ""
    assert f"--port-dir {str(f)!r} is not an existing directory" in err


# ----------------------------------------------------------------------- evaluate
def test_evaluate_says_how_many_subjects_it_needs_and_has(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n"
                 f"S021,R03,enroll,{DEMO / 'S021R03.npz'}\n"
                 f"S021,R07,probe,{DEMO / 'S021R07.npz'}\n")
    assert main(["evaluate", str(m), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "needs at least 8 subjects (2 test subjects per fold, 4 others to fit" in err
    assert "has 1" in err and "'folds' must be in [2, 0]" not in err


@pytest.mark.parametrize("argv, match", [
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--folds", "1"], "argument --folds: expected an integer >= 2, got '1'"),
    (["--splits", "0"], "argument --splits: expected an integer in [1, 100], got '0'"),
])
def test_evaluate_names_the_bad_option(capsys, argv, match):
    assert match in _argparse_error(capsys, ["evaluate", "m.csv", *argv])


# ----------------------------------------------------------------------- serve / store
def _serve(monkeypatch, tmp_path, *argv) -> int:
    """``nacf serve`` in-process on a free loopback port: only for arguments that make it
    fail before it listens (else it would run until a signal)."""
    monkeypatch.setattr("nacf_core.server.app.limit_threads", lambda: None)
    _no_nacf_env(monkeypatch)
    monkeypatch.setenv("NACF_API_KEYS", "test-key-0123456789")
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return main(["serve", "--grpc-address", "127.0.0.1:0", "--metrics-address", "",
                 "--data-dir", str(data), *argv])


def _pem_cert_and_key(tmp_path, curve=None) -> tuple[Path, Path, Path]:
    """A self-signed certificate, its key (on ``curve``, default P-256) and another key
    (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key_pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    key = ec.generate_private_key(curve or ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    paths = tmp_path / "srv.pem", tmp_path / "srv.key", tmp_path / "other.key"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key_pem(key))
    paths[2].write_bytes(key_pem(other))
    return paths


def test_serve_tls_garbage_is_not_valid_pem(tmp_path, monkeypatch, capsys):
    cert, _, other = _pem_cert_and_key(tmp_path)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(bytes(range(256)) * 4)
    assert _serve(monkeypatch, tmp_path, "--tls-cert", str(garbage), "--tls-key",
                  str(garbage)) == 2
    err = capsys.readouterr().err
    assert f"TLS certificate file {str(garbage)!r} is not valid PEM" in err
    assert "cannot bind" not in err
    assert _serve(monkeypatch, tmp_path, "--tls-cert", str(cert), "--tls-key",
                  str(garbage)) == 2
    err = capsys.readouterr().err
    assert f"TLS private key file {str(garbage)!r} is not a valid PEM private key" in err
    assert _serve(monkeypatch, tmp_path, "--tls-cert", str(cert), "--tls-key",
                  str(other)) == 2
    assert "does not belong to the first certificate" in capsys.readouterr().err


def test_serve_tls_key_grpc_cannot_use_is_named_not_taken_for_a_port_in_use(
        tmp_path, monkeypatch, capsys):
    """A certificate and key that match but that gRPC's TLS library cannot use (an ECDSA
    key on secp256k1, a bitcoin-style curve TLS does not offer) passed the file checks,
    and gRPC refused them only as a port it could not bind: 'cannot bind gRPC on ...:
    address in use (another nacf serve? ...)', after the model and the store were loaded.
    They are now refused with the files' options and names, before anything is opened."""
    from cryptography.hazmat.primitives.asymmetric import ec

    cert, key, _ = _pem_cert_and_key(tmp_path, ec.SECP256K1())
    assert _serve(monkeypatch, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)) == 2
    err = capsys.readouterr().err
    assert "cannot bind" not in err and "address in use" not in err, err
    assert "option 'tls_key_file'" in err and str(cert) in err and str(key) in err, err
    assert not (tmp_path / "data" / "nacf.db").exists()  # refused before the store


def test_serve_tls_files_that_match_pass_the_check(tmp_path):
    from nacf_core.config import Config
    from nacf_core.server.app import read_tls_files

    cert, key, _ = _pem_cert_and_key(tmp_path)
    k, c, ca = read_tls_files(Config(tls_cert_file=str(cert), tls_key_file=str(key),
                                     tls_client_ca_file=str(cert)))
    assert k == key.read_bytes() and c == cert.read_bytes() == ca


@pytest.mark.parametrize("which", ["dev_zero", "file"])
def test_serve_data_dir_must_be_a_directory(tmp_path, monkeypatch, capsys, which):
    path = "/dev/zero"
    if which == "file":
        path = str(tmp_path / "f")
        Path(path).write_text("x")
    assert _serve(monkeypatch, tmp_path, "--data-dir", path) == 2
    err = capsys.readouterr().err
    assert f"option 'data_dir' must be a directory, but {path!r} is a" in err
    assert "File exists" not in err


def test_sqlite_store_path_must_be_a_database_file(tmp_path, monkeypatch, capsys,
                                                   raised_without_blocking):
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    key = tmp_path / "k"
    create_key_file(key)
    rc = []
    exc = raised_without_blocking(lambda: rc.append(main(
        ["store", "migrate", "--store-url", f"sqlite:///{fifo}", "--key-file", str(key)])))
    assert exc is None and rc == [1]
    assert f"SQLite store {str(fifo)!r} is a FIFO; expected a database file" in \
        capsys.readouterr().err
    exc = raised_without_blocking(lambda: rc.append(_serve(
        monkeypatch, tmp_path, "--store-url", f"sqlite:///{tmp_path}",
        "--store-key-file", str(key))))
    assert exc is None and rc[-1] == 2
    assert "is a directory; expected a database file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "fifo.db", "k"]


def test_store_url_dev_zero_is_refused(tmp_path, capsys):
    key = tmp_path / "k"
    create_key_file(key)
    assert main(["store", "migrate", "--store-url", "sqlite:////dev/zero",
                 "--key-file", str(key)]) == 1
    assert "'/dev/zero' is a character device" in capsys.readouterr().err
    assert not Path("/dev/zero-wlock").exists()


def test_store_stats_json_is_unchanged_for_good_input(tmp_path, capsys):
    key = tmp_path / "k"
    create_key_file(key)
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert main(["store", "migrate", "--store-url", url, "--key-file", str(key)]) == 0
    capsys.readouterr()
    assert main(["store", "stats", "--store-url", url, "--key-file", str(key)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "total_active_users" in out and out["users_by_model_version"] == {}


def test_serve_data_dir_that_cannot_be_created_is_named(tmp_path, monkeypatch, capsys):
    """A --data-dir under a regular file was reported as '[Errno 20] Not a directory:
    ...', naming neither the option nor what was wrong with it; nothing is created."""
    f = tmp_path / "f"
    f.write_text("x")
    path = str(f / "data")
    assert _serve(monkeypatch, tmp_path, "--data-dir", path) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"nacf serve: option 'data_dir': cannot create the directory {path!r}: "
                   "Not a directory.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "f"]


def _as_unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run without the capabilities that let root write anywhere (root ignores
    a directory's mode), so that a mode-0555 directory refuses it as it would a user."""
    import shutil

    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: cannot make a directory unwritable")
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *argv]


def test_serve_data_dir_not_writable_is_named(tmp_path):
    """A read-only --data-dir without a key file gave '[Errno 13] Permission denied:
    '.../nacf.key'': now the option, the file and the ways out are named; nothing is
    written."""
    import subprocess
    import sys

    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NACF_")}
    env["NACF_API_KEYS"] = "test-key-0123456789"
    r = subprocess.run(_as_unprivileged(
        [sys.executable, "-m", "nacf_core.cli", "serve", "--grpc-address", "127.0.0.1:0",
         "--metrics-address", "", "--data-dir", str(data)]),
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    key = str(data / "nacf.key")
    assert (f"nacf serve: cannot create the template key file {key!r} in option 'data_dir' "
            f"({str(data)!r}): Permission denied; make the directory writable, or give "
            "store_key_file, NACF_TEMPLATE_KEY_FILE or NACF_TEMPLATE_KEY.") in r.stderr
    assert list(data.iterdir()) == []


@pytest.mark.parametrize("model", ["missing", "garbage", "directory"])
def test_serve_with_a_bad_model_writes_nothing(tmp_path, monkeypatch, capsys, model):
    """A --model that cannot be loaded stops nacf serve before the store is touched: it
    created the data directory, a new template key and an empty SQLite store (or
    migrated a PostgreSQL schema) first, then refused the model."""
    path = tmp_path / "model.npz"
    if model == "garbage":
        path.write_bytes(b"not a model" * 100)
    elif model == "directory":
        path.mkdir()
    fresh = tmp_path / "fresh"
    assert _serve(monkeypatch, tmp_path, "--data-dir", str(fresh), "--model", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("nacf serve: ") and "model file" in err, err
    assert not fresh.exists()


def test_serve_refuses_a_stream_bound_below_the_models_window(tmp_path, monkeypatch, capsys):
    """stream_max_seconds below one window of the model leaves no AuthenticateStream
    that could be decided: the server started and answered every stream
    FAILED_PRECONDITION ("raise it"). It is refused at start, naming the option and the
    window, with nothing written."""
    def start(self):
        raise AssertionError("nacf serve started")

    monkeypatch.setattr("nacf_core.server.app.NacfServer.start", start)
    conf = tmp_path / "nacf.toml"
    conf.write_text("stream_max_seconds = 3.5\n")
    fresh = tmp_path / "fresh"
    assert _serve(monkeypatch, tmp_path, "--data-dir", str(fresh), "--config", str(conf)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("nacf serve: option 'stream_max_seconds' (3.5 s) is below one window of "
                   "the model (4 s): no AuthenticateStream could be decided; give at least 4.")
    assert not fresh.exists()


def test_serve_refuses_a_model_without_sequential_test_parameters(tmp_path, monkeypatch,
                                                                  capsys):
    """A model file without the sequential test's parameters (a model built and saved
    in Python, which Model.load accepts) started a server that answered every
    AuthenticateStream INVALID_ARGUMENT ("the model has no sequential-test parameters"),
    blaming the client for the server's model. It is refused at start, naming the file
    and the way out, with nothing written."""
    from nacf_core.model import Model, default_model_path

    def start(self):
        raise AssertionError("nacf serve started")

    monkeypatch.setattr("nacf_core.server.app.NacfServer.start", start)
    m = Model.load(default_model_path(16))
    m.sequential, m.checksum = {}, ""
    path = m.save(tmp_path / "no-sequential.npz")
    fresh = tmp_path / "fresh"
    assert _serve(monkeypatch, tmp_path, "--data-dir", str(fresh), "--model", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"nacf serve: model file {str(path)!r} has no sequential-test parameters "
                   "(refit it with `nacf train`): AuthenticateStream could not decide.")
    assert not fresh.exists()


def test_serve_names_a_keys_file_that_holds_no_key(tmp_path, monkeypatch, capsys):
    """A keys file of comments only (the keys not pasted in yet) was answered "no API
    keys configured: set NACF_API_KEYS or api_keys_file", though api_keys_file was set:
    the message names the file and says it holds no key."""
    keys = tmp_path / "keys"
    keys.write_text("# key                scopes\n\n")
    monkeypatch.setattr("nacf_core.server.app.limit_threads", lambda: None)
    _no_nacf_env(monkeypatch)
    assert main(["serve", "--grpc-address", "127.0.0.1:0", "--metrics-address", "",
                 "--data-dir", str(tmp_path / "data"), "--api-keys-file", str(keys)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"nacf serve: no API keys configured: the keys file {str(keys)!r} "
                          "(option 'api_keys_file') holds no key and NACF_API_KEYS gives "
                          "none"), err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("which", ["tls_cert_file", "tls_key_file", "tls_client_ca_file"])
def test_serve_tls_file_that_cannot_be_read_names_its_option(tmp_path, monkeypatch, capsys,
                                                             which):
    """A TLS file that is missing (or unreadable, or a directory) was reported as "cannot
    read TLS private key file '...'" without the option, unlike a file that is no PEM."""
    cert, key, _ = _pem_cert_and_key(tmp_path)
    files = {"tls_cert_file": str(cert), "tls_key_file": str(key),
             "tls_client_ca_file": str(cert)}
    files[which] = str(tmp_path / "missing.pem")
    flags = {"tls_cert_file": "--tls-cert", "tls_key_file": "--tls-key",
             "tls_client_ca_file": "--tls-client-ca"}
    argv = [a for k, v in files.items() for a in (flags[k], v)]
    assert _serve(monkeypatch, tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"nacf serve: option {which!r}: cannot read TLS "), err
    assert err.endswith(f"{files[which]!r}: No such file or directory."), err
    files[which] = str(tmp_path)
    argv = [a for k, v in files.items() for a in (flags[k], v)]
    assert _serve(monkeypatch, tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"nacf serve: option {which!r}: TLS "), err
    assert "is a directory; expected a regular file" in err


@pytest.mark.parametrize("url", ["postgresql://nacf:secretpw@[::1/nacf",
                                 "postgresql://nacf:secretpw@[nope]:5432/nacf"])
def test_a_store_url_that_does_not_parse_is_named(tmp_path, monkeypatch, capsys, url):
    """A store URL Python cannot split (a bracket left open, brackets around a name) was
    answered with the bare 'Invalid IPv6 URL' (nacf store) or 'nacf serve: Invalid IPv6
    URL': it now says the store URL is not valid, and never shows its password."""
    key = tmp_path / "k"
    create_key_file(key)
    assert main(["store", "migrate", "--store-url", url, "--key-file", str(key)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nacf store: error: the store URL is not valid: "), err
    assert _serve(monkeypatch, tmp_path, "--store-url", url, "--store-key-file", str(key)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(
        "nacf serve: the store URL is not valid: "), err
    assert "secretpw" not in err


def _model_failing_after_load(tmp_path, kind: str) -> Path:
    """The shipped 8-channel model edited as ``kind`` (checksum recomputed): each loaded,
    then failed when the pipeline was built."""
    import io

    import numpy as np

    from nacf_core.model import Model, default_model

    payload, arrs = default_model(8)._payload()
    meta = json.loads(payload)
    if kind == "band":  # LinAlgError 'Singular matrix' (the filter's initial state)
        meta["band"] = [1e-9, 40.0]
    else:  # ZeroDivisionError from the embedding kernel
        arrs["projection_components"] = np.zeros_like(arrs["projection_components"])
    mb = json.dumps(meta).encode()
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(mb, np.uint8),
             checksum=np.frombuffer(Model._digest(mb, arrs).encode(), np.uint8), **arrs)
    path = tmp_path / f"{kind}.npz"
    path.write_bytes(buf.getvalue())
    return path


_FAILING_AFTER_LOAD = {"band": r"field 'band\[0\]' must be a finite number in \[0.01, 80\)",
                       "projection": "projection_components must have linearly independent"}


@pytest.mark.parametrize("kind", sorted(_FAILING_AFTER_LOAD))
def test_serve_names_the_field_of_a_model_that_cannot_run(tmp_path, monkeypatch, capsys, kind):
    """nacf serve said only 'Singular matrix' (band) or ended in a ZeroDivisionError
    traceback (projection) for these models, naming neither the file nor the field."""
    path = _model_failing_after_load(tmp_path, kind)
    fresh = tmp_path / "fresh"
    assert _serve(monkeypatch, tmp_path, "--data-dir", str(fresh), "--model", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"nacf serve: model file {str(path)!r} is invalid"), err
    assert re.search(_FAILING_AFTER_LOAD[kind], err), err
    assert not fresh.exists()


@pytest.mark.parametrize("kind", sorted(_FAILING_AFTER_LOAD))
def test_evaluate_names_the_field_of_a_model_that_cannot_run(tmp_path, capsys, kind):
    """nacf evaluate --model said only 'Singular matrix' (band) or ended in a
    ZeroDivisionError traceback (projection), after reading every recording."""
    path = _model_failing_after_load(tmp_path, kind)
    m = tmp_path / "m.csv"
    m.write_text("subject,recording,role,path\n"
                 f"S021,R03,enroll,{DEMO / 'S021R03.npz'}\n"
                 f"S021,R07,probe,{DEMO / 'S021R07.npz'}\n")
    assert main(["evaluate", str(m), "--model", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"nacf evaluate: model file {str(path)!r} is invalid"), err
    assert re.search(_FAILING_AFTER_LOAD[kind], err[0]), err


def test_a_store_in_a_directory_that_cannot_be_written_is_named(tmp_path):
    """A store file that can be written, in a directory that cannot (a read-only mount,
    mode 0555): SQLite cannot make its -wal and -shm files there, and the open failed
    'attempt to write a readonly database', of a file that is writable. The directory
    is named now, and why it must be writable."""
    import subprocess
    import sys

    data = tmp_path / "ro"
    data.mkdir()
    key = tmp_path / "k"
    url = f"sqlite:///{data / 'n.db'}"
    from nacf_core.cli import main

    assert main(["store", "new-key", str(key)]) == 0
    assert main(["store", "migrate", "--store-url", url, "--key-file", str(key)]) == 0
    data.chmod(0o555)
    try:
        r = subprocess.run(_as_unprivileged(
            [sys.executable, "-m", "nacf_core.cli", "store", "stats", "--store-url", url,
             "--key-file", str(key)]), capture_output=True, text=True, timeout=120,
            check=False)
    finally:
        data.chmod(0o755)
    assert r.returncode == 1, r.stderr
    assert (f"its directory {str(data)!r} cannot be written: SQLite keeps its -wal and "
            "-shm files beside the database") in r.stderr, r.stderr


# ----------------------------------------------------------------------- output closed
def test_output_closed_by_its_reader_ends_without_a_traceback(tmp_path):
    # `nacf kernels info | head -1`: the next line met a closed pipe and the command ended
    # with a BrokenPipeError traceback (and another at exit, flushing what was buffered)
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING",
                             "kernels", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # its reader went away before the first line
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    assert "Exception ignored" not in err, err[-3000:]
    assert proc.returncode == 128 + signal.SIGPIPE, (proc.returncode, err[-2000:])
