"""Generated command lines: every ``nacf`` subcommand given its real options with at least
one hostile value (a negative, NaN, infinite or huge number, an empty string, a path that
does not exist, is a directory, a FIFO or ``/dev/zero``, a file of garbage, a malformed
address or SOURCE, an unknown option; valid values beside it, an option repeated) ends
with a non-zero exit and a one-line error on stderr that starts with ``nacf``: argparse's
usage error, or the command's own refusal. Never a traceback (an exception out of
``main``), never a hang (pytest-timeout), and never the long work the command would do
with good options: the entry points of that work (the server listening, the pty, the
LSL outlet, the fit, the evaluation, the benchmark run, an RPC) are replaced by a
sentinel that fails the example when it is reached, so a hostile value must be refused
before them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacf_core.cli import main

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
DEMO = Path(__file__).resolve().parents[1] / "nacf_core" / "data" / "demo"
NPZ = str(DEMO / "S021R07.npz")

# hostile values shared by the commands
NUMBERS = ["-1", "0", "-0", "nan", "-nan", "inf", "-inf", "1e309", "1e300", "-1e300",
           "99999999999999999999999", "abc", "", " ", "1,5", "0x10", "1e-320"]
# not a number >= 0 at all, whatever the option's range
BAD = ["-1", "nan", "-nan", "inf", "-inf", "1e309", "-1e300", "abc", "", " ", "1,5", "0x10",
       "-1e-320"]
POSITIVE_INTS = ["-1", "0", "-5", "1.5", "nan", "inf", "abc", "", "99999999999999999999999"]
ADDRESSES = ["host:99999", "127.0.0.1:-1", "127.0.0.1", ":", "", "x:y", "[::1", "::1:5",
             "127.0.0.1:65536", "1.2.3.4:5:6", " :80", "host:port", "127.0.0.1:1e3"]
PATHS = ["{missing}", "{missing_dir}/f", "{dir}", "{fifo}", "/dev/zero", "", "{garbage}",
         "{empty}"]
OUT_PATHS = ["{missing_dir}/out", "{dir}", "{file}/below", ""]
SOURCES = ["lsl:", "file:", "cyton:", "cyton-daisy:", "x:y", "nokind", "", ":", "file:{npz}?",
           "file:{npz}?speed=-1", "file:{npz}?speed=nan", "file:{npz}?speed=abc",
           "file:{npz}?speed=1&speed=2", "file:{npz}?bogus=1", "file:{npz}??speed=1",
           "file:{npz}?speed=1&", "file:{missing}", "file:{dir}", "file:{fifo}",
           "file:{garbage}", "file:{empty}", "file:/dev/zero", "lsl:x?timeout=-1",
           "lsl:x?timeout=nan", "lsl:x?type=", "lsl:x?units=counts", "lsl:x'y?timeout=0.1",
           "lsl:x?speed=1", "cyton:{missing}?timeout=0.2", "cyton:{dir}?timeout=0.2",
           "cyton:/dev/null?timeout=-1", "file:{npz}?montage=Fp1", "file:\x01{npz}",
           "file:{npz}?montage=Fp1,Fp1,C3,C4,P7,P8,O1,O2,F3,F4,F7,F8,T7,T8,P3,P4,Cz,Pz,Oz,Fz"]
MONTAGES = ["", ",", "Fp1", "Fp1,Fp1", "ultracortex-99", "x" * 300, "Fp1,,C3"]


class Reached(Exception):
    """The long work a hostile command line must never get to."""


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "adir").mkdir()
    os.mkfifo(d / "fifo")
    (d / "garbage").write_bytes(bytes(range(256)) * 8)
    (d / "empty").write_bytes(b"")
    (d / "file").write_text("x\n")
    from nacf_core.store import create_key_file

    create_key_file(d / "key")
    create_key_file(d / "key2")
    manifest = d / "m.csv"
    manifest.write_text("subject,recording,role,path\n" + "".join(
        f"{s},R03,enroll,{DEMO / (s + 'R03.npz')}\n{s},R07,probe,{DEMO / (s + 'R07.npz')}\n"
        for s in ("S021", "S022", "S023", "S024")))
    return SimpleNamespace(
        root=d, missing=str(d / "missing"), missing_dir=str(d / "nodir"), dir=str(d / "adir"),
        fifo=str(d / "fifo"), garbage=str(d / "garbage"), empty=str(d / "empty"),
        file=str(d / "file"), key=str(d / "key"), key2=str(d / "key2"), npz=NPZ,
        manifest=str(manifest), db=f"sqlite:///{d / 'n.db'}", out=str(d / "out.csv"))


def _fill(value: str, p: SimpleNamespace) -> str:
    return value.format(**vars(p)) if "{" in value else value


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    """Every entry point of a command's long work raises :class:`Reached`; no NACF_
    variable from the caller's environment; the working directory a scratch one."""
    import nacf_core.commands.client as client_cmd
    import nacf_core.commands.demo as demo_cmd
    import nacf_core.commands.kernels as kernels_cmd
    import nacf_core.evaluation as evaluation
    import nacf_core.hardware.lsl as lsl
    import nacf_core.hardware.simulator as simulator
    import nacf_core.server.app as app

    def reached(what):
        def fn(*a, **k):
            raise Reached(what)
        return fn

    monkeypatch.setattr(app.NacfServer, "start", reached("nacf serve started"))
    monkeypatch.setattr(app, "limit_threads", lambda: None)
    monkeypatch.setattr(demo_cmd, "_serve_demo", reached("nacf demo started its server"))
    monkeypatch.setattr(simulator.SimulatedCyton, "start", reached("the pty was opened"))
    monkeypatch.setattr(lsl, "make_outlet", reached("the LSL outlet was made"))
    monkeypatch.setattr(evaluation, "load_blocks", reached("the recordings were read"))
    # evaluate() itself runs: it checks the channels and the splits before reading
    monkeypatch.setattr(kernels_cmd.subprocess, "run", reached("the benchmarks ran"))
    monkeypatch.setattr(client_cmd, "_check_server", lambda channel, args: None)

    class Stub:
        def __init__(self, channel):
            pass

        def __getattr__(self, name):
            rpc = reached(f"the RPC {name} was called")
            rpc.future = rpc
            return rpc

    from nacf_core._proto.nacf.v1 import auth_pb2_grpc

    monkeypatch.setattr(auth_pb2_grpc, "AuthServiceStub", Stub)
    for var in list(os.environ):
        if var.startswith("NACF_") or var.startswith("LSL"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def _refused(argv: list[str], capsys) -> str:
    """Run ``argv``; it must end non-zero with one error line; return that line."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse (2), or a message (Python prints it, exit 1)
        rc = exc.code
        if isinstance(rc, str):
            print(rc, file=sys.stderr)
            rc = 1
    except Reached as exc:
        raise AssertionError(f"{argv!r} was not refused: {exc}") from None
    out, err = capsys.readouterr()
    assert rc not in (0, None), f"{argv!r} exited 0:\n{out}\n{err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("{")]
    assert lines, f"{argv!r} exited {rc} without a word on stderr (stdout: {out!r})"
    if rc == 2 and lines[-1].startswith("nacf") and ": error: " in lines[-1]:
        return lines[-1]  # argparse: usage, then the error line
    assert len(lines) == 1 and lines[0].startswith("nacf"), f"{argv!r}:\n{err}"
    return lines[0]


def _argv(data, p, options: dict, required: set, positional: list | None = None,
          prefix: list | None = None) -> list[str]:
    """A command line of ``options`` (name -> (valid values, hostile values); a flag has
    ``None`` for its values), the ``required`` ones always there, at least one option
    hostile; sometimes an option repeated (the hostile value last) or an unknown one."""
    names = sorted(options)
    bad = data.draw(st.sampled_from([n for n in names if options[n][1]]), label="hostile")
    argv: list[str] = list(prefix or [])
    for name in names:
        valid, hostile = options[name]
        if name != bad and (valid == [] or (name not in required
                                            and not data.draw(st.booleans()))):
            continue
        if valid is None:  # a flag
            argv.append(name)
            continue
        values = hostile if name == bad else valid
        v = _fill(data.draw(st.sampled_from(values), label=name), p)
        if name.startswith("-"):
            if name == bad and data.draw(st.booleans()):  # repeated: the hostile one last
                argv += [name, _fill(valid[0], p)] if valid else []
            argv += [name, v] if not name.endswith("=") else [name + v]
        else:
            argv.append(v)
    for v in positional or []:
        argv.append(_fill(v, p))
    if data.draw(st.integers(0, 5)) == 0:
        argv.insert(data.draw(st.integers(len(prefix or []), len(argv))),
                    data.draw(st.sampled_from(["--bogus", "--seconds=", "-x", "--=1"])))
    return argv


# --------------------------------------------------------------------------- record
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_record_refuses_hostile_options(paths, guarded, capsys, data):
    opts = {
        "--source": (["file:{npz}?speed=0"], SOURCES),
        "--seconds": (["0.1"], NUMBERS + ["1e10"]),
        "--out": (["{out}"], OUT_PATHS),
        "--montage": ([], MONTAGES),
        "--timeout": (["10"], BAD + ["0"]),
    }
    argv = _argv(data, paths, opts, {"--source", "--seconds", "--out"}, prefix=["record"])
    _refused(argv, capsys)
    assert not any(p.name.endswith(".part") for p in paths.root.rglob("*"))


# --------------------------------------------------------------------------- simulate
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_simulate_refuses_hostile_options(paths, guarded, capsys, data):
    lsl = data.draw(st.booleans(), label="lsl")
    opts = {
        "recording": (["{npz}"], PATHS),
        "--speed": (["2", "1e300"], BAD + ["0"]),
        # how long the simulator runs: any time above 0, a tiny one exits at once
        "--seconds": (["0.1", "1e-320"], [v for v in NUMBERS if v != "1e-320"] + ["1e10"]),
        "--faults": ([] if lsl else ["drop=0.1,seed=1"],
                     ["x", "drop=2", "drop=-1", "drop=nan", "garbage=inf", "railed=99",
                      "railed=-1", "disconnect=-1", "disconnect=5:-1", "disconnect=nan",
                      "seed=abc", "seed=-1", "disconnects=-1", "=", "drop", "drop=0.1,x=1"]),
        "--port-dir": ([] if lsl else ["{dir}"], ["{missing}", "{file}", "{fifo}", ""]),
        "--lsl": (["nacf-fuzz-never"] if lsl else [], ["", " ", "\t"]),
    }
    _refused(_argv(data, paths, opts, {"--lsl"} if lsl else set(), prefix=["simulate"]),
             capsys)


def test_simulate_refuses_fast_with_speed(paths, guarded, capsys):
    assert "--speed paces the stream" in _refused(
        ["simulate", NPZ, "--fast", "--speed", "2"], capsys)


# --------------------------------------------------------------------------- demo
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_demo_refuses_hostile_options(paths, guarded, capsys, data):
    opts = {
        "--people": (["2", "4"], POSITIVE_INTS + ["1", "5", "1000"]),
        "--speed": (["4", "50"], NUMBERS + ["51", "1e9"]),
        "--grpc-address": (["127.0.0.1:0"], ADDRESSES),
        "--metrics-address": (["127.0.0.1:0", ""], [a for a in ADDRESSES if a]),
        "--keep-running": (["0", "1"], BAD + ["1e10"]),
        "--server-logs": (None, None),
    }
    _refused(_argv(data, paths, opts, set(), prefix=["demo"]), capsys)


# --------------------------------------------------------------------------- serve
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_serve_refuses_hostile_options(paths, guarded, capsys, monkeypatch, data):
    monkeypatch.setenv("NACF_API_KEYS", "test-key-0123456789")
    ints = POSITIVE_INTS
    floats = BAD
    opts = {
        # an empty file is an empty TOML document: no option set, every default stands
        "--config": ([], [v for v in PATHS if v != "{empty}"]),
        "--grpc-address": (["127.0.0.1:0"], ADDRESSES),
        "--metrics-address": ([""], [a for a in ADDRESSES if a]),
        "--data-dir": (["{root}"], ["{file}", "{fifo}", "/dev/zero", "{file}/below", ""]),
        "--store-url": ([], ["", "sqlite://", "sqlite:///", "sqlite:///{dir}",
                             "sqlite:///{missing_dir}/x.db", "sqlite:///{fifo}",
                             "sqlite:///{garbage}", "mysql://x/y", "postgresql://x:99999/db",
                             "sqlite:nacf.db", "sqlite:////dev/zero"]),
        "--store-key-file": (["{key}"], PATHS),
        "--model": ([], PATHS + ["{npz}"]),
        "--kernel-backend": ([], ["cyton", "", "CYTHON"]),
        # an empty keys file is no key from it (all of its keys revoked), not an error:
        # the environment's keys stand
        "--api-keys-file": ([], [v for v in PATHS if v != "{empty}"]),
        "--tls-cert": ([], PATHS),
        "--tls-key": ([], PATHS),
        "--tls-client-ca": ([], PATHS),
        "--max-workers": (["4"], ints),
        "--max-concurrent-rpcs": (["8"], ints),
        "--max-streams": (["8"], ints),
        "--max-streams-per-client": (["0"], ["-1", "nan", "abc", ""]),
        "--max-message-bytes": (["4194304"], ints),
        "--grace-period": (["1"], floats),
        "--lockout-threshold": (["5"], ints),
        "--lockout-seconds": (["60"], floats),
        "--rate-limit": (["5"], floats),
        "--rate-burst": (["10"], floats + ["0.5"]),
        "--rate-lease": (["1"], ints),
        "--session-ttl": (["60"], floats),
        "--session-max-age": (["3600"], floats),
        "--audit-retention-days": (["30"], floats),
        "--purge-interval": (["60"], floats),
        "--proof-max-skew": (["30"], floats + ["0.5"]),
        "--stream-max-seconds": (["30"], floats + ["601"]),
        "--signal-loss": (["5"], floats),
        "--continuous-mismatch-windows": (["3"], ints),
        "--identify-max-k": (["10"], ints),
        "--reuse-port": (None, None),
        "--no-require-device-proof": (None, None),
    }
    _refused(_argv(data, paths, opts, {"--grpc-address", "--metrics-address", "--data-dir"},
                   prefix=["serve"]), capsys)


# --------------------------------------------------------------------------- client
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_client_refuses_hostile_options(paths, guarded, capsys, monkeypatch, data):
    monkeypatch.setenv("NACF_API_KEY", "test-key-0123456789")
    action = data.draw(st.sampled_from(["enroll", "register-device", "authenticate"]))
    opts = {
        "--server": (["127.0.0.1:1"], ADDRESSES),
        "--api-key-file": ([], PATHS),
        "--tls-ca": ([], PATHS),
        "--tls-cert": ([], PATHS),
        "--tls-key": ([], PATHS),
        "--timeout": (["5"], NUMBERS + ["0.01", "3601"]),
        "--user": (["u1"], ["", " ", "\t"]),
    }
    if action != "register-device":
        opts.update({
            "--source": (["file:{npz}?speed=0"], SOURCES),
            "--montage": ([], MONTAGES),
            "--source-timeout": (["5"], NUMBERS + ["0.01", "3601"]),
        })
    if action == "enroll":
        opts["--seconds"] = (["4"], NUMBERS + ["3.9", "601"])
    if action == "register-device":
        opts.update({
            "--device-id": (["d1"], ["", " ", "dé", "a\nb", "\x00"]),
            "--secret-file": (["{root}/secret-new"],
                              ["", "{file}", "{dir}", "{missing_dir}/s", "{fifo}", "/dev/zero"]),
        })
    if action == "authenticate":
        opts.update({
            "--device-id": (["d1"], ["", " ", "dé", "a\nb"]),
            "--secret-file": ([], PATHS),
            "--max-seconds": (["0", "10"], BAD + ["3601"]),
            "--token-file": ([], ["{dir}", "{missing_dir}/t", "{file}/below", ""]),
        })
    required = {"--user", "--source", "--device-id", "--secret-file"} - (
        {"--device-id", "--secret-file"} if action == "authenticate" else set())
    _refused(_argv(data, paths, opts, required & set(opts), prefix=["client", action]),
             capsys)
    assert not (paths.root / "secret-new").exists()


# --------------------------------------------------------------------------- train
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_train_refuses_hostile_options(paths, guarded, capsys, data):
    opts = {
        "manifest": (["{manifest}"], PATHS + ["{npz}"]),
        "--out": (["{root}/model.npz"], OUT_PATHS + ["{manifest}", "{npz}"]),
        "--name": ([], ["", " ", "a\tb", "x" * 200, "\x00"]),
        "--channels": ([], [",", "Fp1", "Fp1,Fp1", "Fp1,ECG", "x" * 50, "Fp1,,", "T3,T7"]),
        # any target in (0, 0.5): a tiny one is the strictest threshold the impostor
        # scores allow (calibration.threshold_at_fmr), not an error
        "--fmr": (["0.01", "1e-320"], [v for v in NUMBERS if v != "1e-320"] + ["0.5", "1"]),
        "--sfreq": (["250"], NUMBERS + ["124", "1001"]),
        "--backend": (["cython", "numba"], ["cyton", "", "CYTHON"]),
        "--attribution": (["eegmmidb", "x"], []),
        "--no-progress": (None, None),
    }
    _refused(_argv(data, paths, opts, {"--out"}, prefix=["train"]), capsys)
    assert not (paths.root / "model.npz").exists()


# --------------------------------------------------------------------------- evaluate
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_evaluate_refuses_hostile_options(paths, guarded, capsys, monkeypatch, data):
    opts = {
        "manifest": (["{manifest}"], PATHS + ["{npz}"]),
        "--channels": ([], [",", "Fp1", "Fp1,Fp1", "Fp1,ECG", "Fp1,,", "T3,T7"]),
        "--folds": (["2"], POSITIVE_INTS + ["1"]),
        "--splits": (["1"], POSITIVE_INTS),
        "--model": ([], PATHS + ["{npz}", "{manifest}"]),
        "--json": (["{root}/r.json"], OUT_PATHS + ["{manifest}", "{npz}"]),
        "--det": (["{root}/r.png"], OUT_PATHS + ["{manifest}", "{root}/r.jgp"]),
        "--backend": (["cython"], ["cyton", ""]),
        "--seed": (["0", "7"], ["-1", "nan", "abc", "", "1.5"]),
        "--adapt": (None, None),
        "--no-progress": (None, None),
    }
    _refused(_argv(data, paths, opts, set(), prefix=["evaluate"]), capsys)


# --------------------------------------------------------------------------- store
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_store_refuses_hostile_options(paths, guarded, capsys, data):
    action = data.draw(st.sampled_from(["new-key", "migrate", "rotate-key", "stats",
                                        "purge-attempts"]))
    if action == "new-key":
        opts = {"path": ([], ["", "{file}", "{dir}", "{missing_dir}/k", "{fifo}",
                              "/dev/zero", "{file}/below"])}
    else:
        opts = {
            "--store-url": (["{db}"], ["", "sqlite://", "sqlite:///", "sqlite:///{dir}",
                                       "sqlite:///{missing_dir}/x.db", "sqlite:///{fifo}",
                                       "sqlite:///{garbage}", "mysql://x/y",
                                       "postgresql://x:99999/db", "sqlite:nacf.db",
                                       "sqlite:////dev/zero", "postgresql://127.0.0.1:1/x"]),
            "--key-file": (["{key}"], PATHS),
        }
        if action == "rotate-key":
            opts["--new-key-file"] = (["{key2}"], PATHS)
        if action == "purge-attempts":
            opts["--older-than-days"] = (["30"], BAD + ["1e7"])
    required = {"--store-url", "--new-key-file", "--older-than-days"} & set(opts)
    _refused(_argv(data, paths, opts, required, prefix=["store", action]), capsys)


# --------------------------------------------------------------------------- kernels
@pytest.mark.timeout(120)
@FUZZ
@given(data=st.data())
def test_kernels_bench_refuses_hostile_options(paths, guarded, capsys, data):
    opts = {
        "--from-json": ([], PATHS + ["{npz}", "{manifest}"]),
        "--json": ([], OUT_PATHS),
        "--benches": ([], ["{missing}", "{dir}", "{file}", "{fifo}", ""]),
        # any time above 0 is valid: pytest-benchmark still runs its minimum rounds
        "--max-time": (["0.1", "1e-320"], [v for v in NUMBERS if v != "1e-320"] + ["3601"]),
        "-k": (["sosfilt"], ["", " "]),  # '' (an unset variable) selected every case
        "--cpu-time": (None, None),
        "--check": (None, None),
    }
    _refused(_argv(data, paths, opts, set(), prefix=["kernels", "bench"]), capsys)


@pytest.mark.parametrize("argv", [[], ["--log-level", "TRACE"], ["bogus"], ["client"],
                                  ["store"], ["kernels"], ["client", "enroll"],
                                  ["kernels", "info", "--json=1"], ["--version=1"]])
def test_no_command_or_a_wrong_one_is_refused(paths, guarded, capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    assert err or argv == []  # (no command: the help, on stdout)


def test_an_empty_api_key_file_name_is_refused_not_taken_as_no_file(paths, guarded, capsys,
                                                                     monkeypatch):
    """``--api-key-file ''`` (a variable that was not set) was taken as no option: the
    call went out with NACF_API_KEY's key, or none, where --tls-ca '' and --secret-file ''
    are refused. Found by the generated command lines with fresh randomness."""
    monkeypatch.setenv("NACF_API_KEY", "fallback-key-0123456789")
    line = _refused(["client", "register-device", "--api-key-file", "", "--device-id", "d1",
                     "--secret-file", f"{paths.root}/secret-empty-key", "--user", "u1"],
                    capsys)
    assert "--api-key-file ''" in line, line


@pytest.mark.parametrize("option", ["--config", "--store-key-file", "--model",
                                    "--api-keys-file", "--tls-cert", "--tls-key",
                                    "--tls-client-ca"])
def test_serve_refuses_an_empty_file_name_instead_of_falling_back(paths, guarded, capsys,
                                                                  monkeypatch, option):
    """A file option given as '' (a variable that was not set) counted as not given, and
    a flag overrides the file and the environment: the server started on the shipped
    model, a key file created in the data directory, without the file's API keys or TLS
    files, where an empty --store-url is refused. Found by the generated command lines
    with fresh randomness."""
    monkeypatch.setenv("NACF_API_KEYS", "test-key-0123456789")
    line = _refused(["serve", "--data-dir", str(paths.root), "--grpc-address", "127.0.0.1:0",
                     "--metrics-address", "", option, ""], capsys)
    assert option in line and "''" in line, line


@pytest.mark.parametrize("extra", [["--channels", "Fp1"], ["--channels", "T3,T7"]])
def test_evaluate_refuses_what_evaluate_checks_before_reading(paths, guarded, capsys, extra):
    """``evaluate()`` checks the channels and the splits before it reads a recording; the
    guard stood in for the whole of it, so such a refusal counted as the work reached
    (a generated example with fresh randomness: ``--channels Fp1``)."""
    line = _refused(["evaluate", *extra, "--folds", "2", paths.manifest], capsys)
    # the channels, not the 4 subjects too few for 2 folds (each fold's model needs 4)
    assert line.startswith("nacf evaluate: ") and "channel" in line, line


def test_evaluate_refuses_a_number_of_splits_it_would_never_finish(paths, guarded, capsys):
    """``--splits`` had no upper bound: 99999999999999999999999 (a generated example with
    fresh randomness) began reading the recordings for as many rounds of k fits, each
    round minutes long; it is at most 100."""
    line = _refused(["evaluate", "--splits", "99999999999999999999999", "--folds", "2",
                     paths.manifest], capsys)
    assert "--splits" in line and "[1, 100]" in line, line


@pytest.mark.parametrize("seconds", ["1e-320", "0.003"])
def test_record_refuses_seconds_that_hold_no_sample(paths, guarded, capsys, seconds):
    """``--seconds`` under half a sample period wrote a CSV of no row and exited 0 ("wrote
    0 samples"): a recording of nothing, said as done (a generated example with fresh
    randomness: 1e-320). It is refused, and no file is written."""
    out = paths.root / f"none-{seconds}.csv"
    line = _refused(["record", "--out", str(out), "--seconds", seconds, "--source",
                     f"file:{NPZ}?speed=0"], capsys)
    assert "seconds" in line and "sample" in line, line
    assert not out.exists()


@pytest.mark.parametrize("speed", ["1e-320", "0.01", "0.5"])
def test_demo_refuses_a_pace_slower_than_real_time(paths, guarded, capsys, speed):
    """``--speed`` took any pace above 0: at 1e-320 (a generated example with fresh
    randomness) the simulated headset never sent a sample and the demo failed after its
    block timeout; below real time a stream can take longer than the server allows one
    (stream_max_seconds of signal within signal_loss_s more of wall time), and the demo
    failed after minutes. It is refused at once."""
    line = _refused(["demo", "--speed", speed], capsys)
    assert "--speed" in line and "[1, 50]" in line, line


def test_evaluate_refuses_an_empty_model_file_name(paths, guarded, capsys):
    """``--model ''`` (a variable that was not set) counted as no model: instead of
    scoring the model it named on every subject, evaluate ran the k-fold protocol,
    fitting its own models for minutes (a generated example with fresh randomness)."""
    line = _refused(["evaluate", "--folds", "2", "--model", "", paths.manifest], capsys)
    assert "--model" in line and "''" in line, line


def test_store_refuses_an_empty_key_file_name(paths, guarded, capsys, monkeypatch):
    """``nacf store ... --key-file ''`` (a variable that was not set) counted as no
    option: the command went on with NACF_TEMPLATE_KEY[_FILE]'s key instead of the file
    it was meant to name (found while checking the empty file names the generated
    command lines turned up)."""
    monkeypatch.setenv("NACF_TEMPLATE_KEY_FILE", paths.key)
    db = f"sqlite:///{paths.root / 'empty-key.db'}"
    assert main(["store", "migrate", "--store-url", db, "--key-file", paths.key]) == 0
    capsys.readouterr()
    line = _refused(["store", "stats", "--store-url", db, "--key-file", ""], capsys)
    assert "--key-file" in line and "''" in line, line


def test_serve_refuses_an_empty_data_dir(paths, guarded, capsys, monkeypatch):
    """``--data-dir ''`` (a variable that was not set) overrode the file's and the
    environment's data_dir with the working directory: the server started on a new,
    empty SQLite store and a new key there, apart from the users it was meant to serve
    (a generated example with fresh randomness)."""
    monkeypatch.setenv("NACF_API_KEYS", "test-key-0123456789")
    monkeypatch.setenv("NACF_DATA_DIR", str(paths.root))
    line = _refused(["serve", "--data-dir", "", "--grpc-address", "127.0.0.1:0",
                     "--metrics-address", ""], capsys)
    assert "--data-dir" in line and "''" in line, line
