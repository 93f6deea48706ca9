"""``nacf demo`` end to end: server, simulated headset over a pty, enroll, authenticate."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from nacf_core.commands.demo import demo_people


def _signal_demo_at(tmp_path, prefix: str, signum: int, *args: str, **popen):
    """Run ``nacf demo --people 2 ARGS`` with its own TMPDIR, send ``signum`` once a line
    of its output starts with ``prefix``; return ``(returncode, stdout, stderr, the
    TMPDIR's entries left)``."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
         "--people", "2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(prefix):
                break
        if not (seen and seen[-1].startswith(prefix)):  # it ended first: say how
            _, err = proc.communicate(timeout=60)
            raise AssertionError(f"nacf demo ended (status {proc.returncode}) before "
                                 f"{prefix!r}; stdout: {''.join(seen)!r}; stderr: "
                                 f"{err[-3000:]!r}")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, "".join(seen) + out, err, sorted(os.listdir(tmp))


def test_demo_people_are_the_shipped_held_out_subjects():
    people = demo_people(4)
    assert [p[0] for p in people] == ["S021", "S022", "S023", "S024"]
    with pytest.raises(ValueError, match="'--people' must be in"):
        demo_people(9)


def test_demo_runs_end_to_end_and_stops_cleanly():
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython")
    proc = subprocess.run(
        [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
         "--people", "2", "--speed", "10"],
        capture_output=True, text=True, timeout=240, env=env)
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    assert re.search(r"enrolled S021: template v1, \d+ epochs used", out), out
    assert re.search(r"enrolled S022: template v1", out), out
    decisions = re.findall(
        r"(genuine |impostor) claim=(S\d+) wearer=(S\d+): (ACCEPT|REJECT) score ([+-][\d.]+) "
        r"\(threshold ([+-][\d.]+)\) after (\d+) s of signal, decision ([\d.]+) ms", out)
    assert len(decisions) == 4, out
    for kind, claim, wearer, verdict, score, thr, secs, ms in decisions:
        assert (kind.strip() == "genuine") == (claim == wearer)
        # the printed verdict is the score against the threshold or the sequential test's
        assert int(secs) > 0 and float(ms) >= 0
    assert "metrics: http://127.0.0.1:" in out
    assert "nacf demo: stopped cleanly" in out


@pytest.mark.parametrize("stage", ["== enrollment", "== authentication"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_demo_stopped_by_sigterm_stops_the_server_and_leaves_no_files(tmp_path, stage,
                                                                      signum):
    # SIGTERM (`kill`, a CI job's timeout) or SIGHUP (its terminal closed: it was killed,
    # its store and template key left in TMPDIR) at any stage: the server stops, the
    # temporary store, its template key and the simulator's port go, and the demo says so
    # and exits non-zero, as on Ctrl-C
    code, _, err, left = _signal_demo_at(
        tmp_path, stage, signum, "--speed", "1",
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # (as nohup would not)
    assert code == 130, (code, err[-2000:])
    assert "nacf demo: interrupted" in err and "Traceback" not in err, err[-2000:]
    assert left == []


def test_demo_without_a_pseudo_terminal_says_so_and_stops_the_server(tmp_path):
    # a container without /dev/pts (os.openpty fails): the simulated headset cannot
    # exist; the demo said so with a traceback
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = ("import errno, os, sys\n"
            "def no_pty():\n"
            "    raise OSError(errno.ENOENT, 'No such file or directory')\n"
            "os.openpty = no_pty\n"
            "from nacf_core.cli import main\n"
            "sys.exit(main(['--log-level', 'WARNING', 'demo', '--people', '2']))\n")
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert ("nacf demo: the simulated headset failed: [Errno 2] No such file or directory"
            in proc.stderr), proc.stderr[-2000:]
    assert "nacf demo: stopped cleanly" in proc.stdout
    assert sorted(os.listdir(tmp)) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_keeping_the_server_up_is_a_clean_stop(tmp_path, signum):
    # --keep-running S says "(Ctrl-C stops)": the way to end the wait, after the attempts
    # were made and printed, is the demo's normal end, not an interruption
    code, out, err, left = _signal_demo_at(
        tmp_path, "keeping the server up for 600 s", signum, "--speed", "10",
        "--keep-running", "600", preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                  signal.SIG_DFL))
    assert "(Ctrl-C stops)" in out
    assert code == 0, (code, err[-2000:])
    assert "nacf demo: stopped cleanly" in out and "interrupted" not in err, (out, err)
    assert left == []


def test_demo_on_a_port_in_use_names_its_own_option(tmp_path):
    # the refusal told the demo's user to "use --reuse-port", an option of nacf serve that
    # nacf demo does not have
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp_path))
        proc = subprocess.run(
            [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
             "--people", "2", "--grpc-address", addr],
            capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--reuse-port" not in proc.stderr and "Traceback" not in proc.stderr
    assert (f"nacf demo: cannot start the server: --grpc-address {addr} is in use or not "
            "available: give another HOST:PORT, or leave the option out for a free port"
            in proc.stderr), proc.stderr[-2000:]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("after", [0, 300])
def test_a_headset_lost_while_streaming_says_so_and_stops_the_server(tmp_path, after):
    # the serial reader raised in the demo's reader thread (the pty vanished for longer
    # than reconnect_timeout: PortLost) before the first block or AFTER samples: the thread
    # died with a traceback and put nothing more, so before the first block the demo
    # waited for it for ever, and after it the server ended the silent stream
    # (DEADLINE_EXCEEDED, 'no message for 10 s'), which the demo reported instead
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = ("import sys\n"
            "from nacf_core.hardware import serial_reader as sr\n"
            "read = sr.CytonReader.read_chunk\n"
            "got = [0]\n"
            "def lost(self, timeout=1.0):\n"
            f"    if got[0] >= {after}:\n"
            "        raise sr.PortLost(f'serial port {self.port!r} vanished and did not '\n"
            "                          'come back within 30 s.')\n"
            "    chunk = read(self, timeout)\n"
            "    got[0] += chunk.n_times\n"
            "    return chunk\n"
            "sr.CytonReader.read_chunk = lost\n"
            "from nacf_core.cli import main\n"
            "sys.exit(main(['--log-level', 'WARNING', 'demo', '--people', '2', "
            "'--speed', '2']))\n")
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"nacf demo: the simulated headset failed: serial port '[^']+' "
                     r"vanished and did not come back within 30 s\.", proc.stderr), \
        proc.stderr[-2000:]
    assert "DEADLINE_EXCEEDED" not in proc.stderr
    assert "nacf demo: stopped cleanly" in proc.stdout
    assert sorted(os.listdir(tmp)) == []


def test_sigterm_inside_an_exec_of_a_string_still_exits_130(tmp_path):
    # the SIGTERM test once ended by SIGINT (-2) after "interrupted": right after the
    # "== authentication" line the demo imports the client and the serial reader, whose
    # dataclasses exec() strings, and under `python -m` CPython exits by SIGINT, whatever
    # status was asked for, once a KeyboardInterrupt (the demo's SIGTERM handler raises
    # one) ended an exec() of a string, even one caught and handled. Here the signal comes
    # while such an exec() runs, every time
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from nacf_core.commands import demo\n"
        "def _run_demo(*args, **kwargs):\n"
        "    exec('import os, signal, time\\nos.kill(os.getpid(), signal.SIGTERM)\\n'\n"
        "         'for _ in range(500):\\n    time.sleep(0.01)\\n', {})\n"
        "    raise AssertionError('SIGTERM did not interrupt the demo')\n"
        "demo._run_demo = _run_demo\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
         "--people", "2"], capture_output=True, text=True, timeout=240, env=env)
    assert "nacf demo: interrupted" in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert sorted(os.listdir(tmp)) == []


def test_demo_whose_output_is_closed_stops_the_server_without_a_traceback(tmp_path):
    # `nacf demo | head -1`: the next line met a closed pipe; the BrokenPipeError (an
    # OSError) was reported as "the simulated headset failed: [Errno 32] Broken pipe",
    # and "stopped cleanly" then ended the demo with a traceback
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
         "--people", "2", "--speed", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().startswith("nacf demo: server on ")
        proc.stdout.close()  # what `head -1` does once it has its line
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err and "Broken pipe" not in err, err[-3000:]
    assert "headset failed" not in err, err[-2000:]
    assert proc.returncode == 128 + signal.SIGPIPE, (proc.returncode, err[-2000:])
    assert sorted(os.listdir(tmp)) == []


def test_demo_on_an_address_that_is_not_loopback_names_its_own_option(tmp_path):
    # the refusal of plaintext gRPC off loopback told the demo's user to "set tls_cert_file
    # and tls_key_file", options of nacf serve that nacf demo does not have
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
         "--people", "2", "--grpc-address", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tls_cert_file" not in proc.stderr and "Traceback" not in proc.stderr
    assert ("nacf demo: '--grpc-address' must be a loopback address (the demo serves "
            "plaintext gRPC: it has no TLS), got '0.0.0.0:0'." in proc.stderr), proc.stderr
    assert os.listdir(tmp_path) == []


def test_sigterm_while_the_server_stops_lets_it_stop(tmp_path):
    # a SIGTERM (or Ctrl-C) that came while the demo stopped its server interrupted the
    # stop half way: grpc's serving thread then failed with a traceback ("ValueError:
    # server must be started and not shutting down"). Here it comes inside the stop
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, signal, sys, time\n"
        "from nacf_core.commands import demo\n"
        "from nacf_core.server.app import NacfServer\n"
        "demo._run_demo = lambda *args, **kwargs: True\n"
        "stop = NacfServer.stop\n"
        "def stop_under_sigterm(self, *args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.5)\n"
        "    stop(self, *args, **kwargs)\n"
        "    print('server stopped', file=sys.stderr, flush=True)\n"
        "NacfServer.stop = stop_under_sigterm\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
         "--people", "2"], capture_output=True, text=True, timeout=240, env=env)
    assert "server stopped" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "nacf demo: interrupted" in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert sorted(os.listdir(tmp)) == []


def test_sigterm_before_the_server_starts_is_said_and_exits_130(tmp_path):
    # the demo took SIGTERM as an interrupt only from the server's start on: one that came
    # while it loaded (a second of imports) killed it without a word (-15), and a Ctrl-C
    # then ended it with 130 but said nothing
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, signal, time\n"
        "from nacf_core.commands import demo\n"
        "people = demo.demo_people\n"
        "def people_under_sigterm(n):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.5)\n"
        "    return people(n)\n"
        "demo.demo_people = people_under_sigterm\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, NACF_KERNEL_BACKEND="cython", TMPDIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "nacf_core.cli", "--log-level", "WARNING", "demo",
         "--people", "2"], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "nacf demo: interrupted" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp)) == []
