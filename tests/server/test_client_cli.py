"""``nacf client`` and ``nacf_core.client``: the headset side, against a real server.

The server is ``nacf serve``'s (in-process, loopback, SQLite, the shipped model, the
device proof required); the headsets are the package's demo recordings (real EEG of
held-out subjects) replayed as ``file:`` sources, and pieces of them."""

from __future__ import annotations

import os
import shlex
import stat
import threading
import time

import numpy as np
import pytest

from nacf_core.cli import build_parser
from nacf_core.client import Blocks, fill_dropped
from nacf_core.hardware.base import Chunk
from nacf_core.hardware.files import read_recording, write_npz

KEY = "client-test-key-0123456789"
DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "nacf_core", "data", "demo")


def demo(name: str) -> str:
    return os.path.abspath(os.path.join(DEMO, f"{name}.npz"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from nacf_core.config import SCOPES, Config
    from nacf_core.server.app import NacfServer

    d = tmp_path_factory.mktemp("client-server")
    srv = NacfServer(Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(d),
                            api_keys={KEY: frozenset(SCOPES)},
                            require_device_proof=True)).start()
    yield srv
    srv.stop(grace=2.0)


def client(server, *args: str, key: str | None = KEY) -> int:
    extra = ["--api-key-file", _key_file(key)] if key is not None else []
    action, rest = args[0], list(args[1:])
    # the parsed command run as main() runs it, without main()'s logging set-up (its
    # handler would keep pytest's captured stderr after the test)
    ns = build_parser().parse_args(["client", action, "--server", server.address, *extra,
                                    *rest])
    return int(ns.func(ns))


_KEYS: dict[str, str] = {}


def _key_file(key: str) -> str:
    if key not in _KEYS:
        import tempfile

        fd, path = tempfile.mkstemp(prefix="nacf-key-")
        os.write(fd, (key + "\n").encode())
        os.close(fd)
        _KEYS[key] = path
    return _KEYS[key]


def source(path: str, speed: float = 0) -> str:
    return f"file:{path}?speed={speed:g}"


@pytest.fixture(scope="module")
def enrolled(server, tmp_path_factory):
    """S021 and S022 enrolled from their R03 recordings, each with a headset whose
    secret is in a file."""
    d = tmp_path_factory.mktemp("secrets")
    secrets = {}
    for user in ("S021", "S022"):
        assert client(server, "enroll", "--user", user, "--source",
                      source(demo(f"{user}R03"))) == 0
        secrets[user] = str(d / f"{user}.secret")
        assert client(server, "register-device", "--user", user, "--device-id",
                      f"hs-{user}", "--secret-file", secrets[user]) == 0
    return secrets


def _piece(tmp_path, name: str, parts: list[tuple[str, float, float]]) -> str:
    """An .npz of pieces ``(recording, start s, end s)`` of demo recordings, end to end."""
    xs = []
    for rec_name, a, b in parts:
        rec = read_recording(demo(rec_name))
        xs.append(rec.data[int(a * rec.sfreq):int(b * rec.sfreq)])
    return str(write_npz(tmp_path / f"{name}.npz", np.concatenate(xs), rec.sfreq,
                         rec.ch_names))


def test_enroll_register_and_authenticate_a_genuine_wearer_and_an_impostor(
        server, enrolled, tmp_path, capsys):
    capsys.readouterr()
    secret = enrolled["S021"]
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert len(open(secret).read().strip()) >= 32
    token = tmp_path / "token"
    genuine = _piece(tmp_path, "g", [("S021R07", 0, 20)])
    assert client(server, "authenticate", "--user", "S021", "--device-id", "hs-S021",
                  "--secret-file", secret, "--source", source(genuine),
                  "--token-file", str(token)) == 0
    out = capsys.readouterr().out
    assert out.startswith("ACCEPT S021: score +"), out
    assert "session open until " in out
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600
    # the token is a live session of S021
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    stub = server_stub(server)
    v = stub.ValidateSession(pb.ValidateSessionRequest(session_token=token.read_text().strip()),
                             metadata=(("x-api-key", KEY),))
    assert v.valid and v.user_id == "S021"
    # someone else wearing S021's headset
    impostor = _piece(tmp_path, "i", [("S022R07", 0, 20)])
    assert client(server, "authenticate", "--user", "S021", "--device-id", "hs-S021",
                  "--secret-file", secret, "--source", source(impostor)) == 1
    out = capsys.readouterr().out
    assert out.startswith("REJECT S021: score "), out
    assert "below threshold" in out


def server_stub(server):
    import grpc

    from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg

    return pbg.AuthServiceStub(grpc.insecure_channel(server.address))


def test_a_wrong_secret_or_no_key_is_the_servers_refusal_with_status_2(
        server, enrolled, tmp_path, capsys):
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-secret-of-this-headset\n")
    wrong.chmod(0o600)
    probe = _piece(tmp_path, "p", [("S021R07", 20, 30)])
    assert client(server, "authenticate", "--user", "S021", "--device-id", "hs-S021",
                  "--secret-file", str(wrong), "--source", source(probe)) == 2
    err = capsys.readouterr().err
    assert "nacf client authenticate: the server answered UNAUTHENTICATED: device proof" in err
    # without the proof the server (which requires it) refuses too
    assert client(server, "authenticate", "--user", "S021", "--source", source(probe)) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    os.environ.pop("NACF_API_KEY", None)
    env = os.environ.pop("NACF_API_KEYS", None)
    try:
        assert client(server, "enroll", "--user", "nokey", "--source",
                      source(demo("S023R03")), key=None) == 2
    finally:
        if env is not None:
            os.environ["NACF_API_KEYS"] = env
    assert "UNAUTHENTICATED: missing API key" in capsys.readouterr().err


def test_register_device_never_overwrites_a_secret_and_rotate_replaces_it(
        server, enrolled, tmp_path, capsys):
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    md = (("x-api-key", KEY),)
    assert client(server, "enroll", "--user", "S023", "--source",
                  source(demo("S023R03"))) == 0
    secret = tmp_path / "S023.secret"
    secret.write_text("a secret kept from before\n")
    capsys.readouterr()
    # the file exists: refused before any call, the headset is not bound
    assert client(server, "register-device", "--user", "S023", "--device-id", "hs-S023",
                  "--secret-file", str(secret)) == 2
    assert "exists" in capsys.readouterr().err
    assert secret.read_text() == "a secret kept from before\n"
    user = server_stub(server).GetUser(pb.GetUserRequest(user_id="S023"), metadata=md).user
    assert list(user.device_ids) == []
    secret.unlink()
    assert client(server, "register-device", "--user", "S023", "--device-id", "hs-S023",
                  "--secret-file", str(secret)) == 0
    old = secret.read_text().strip()
    assert client(server, "register-device", "--user", "S023", "--device-id", "hs-S023",
                  "--secret-file", str(secret), "--rotate") == 0
    new = secret.read_text().strip()
    assert new and new != old and stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    # a folder that cannot take the file: refused before the server issues a secret
    assert client(server, "register-device", "--user", "S023", "--device-id", "hs-other",
                  "--secret-file", str(tmp_path / "missing-dir" / "s")) == 2
    user = server_stub(server).GetUser(pb.GetUserRequest(user_id="S023"), metadata=md).user
    assert list(user.device_ids) == ["hs-S023"]
    # the old secret no longer signs, the new one does
    old_file = tmp_path / "old.secret"
    old_file.write_text(old)
    old_file.chmod(0o600)
    probe = _piece(tmp_path, "p3", [("S023R07", 0, 20)])
    assert client(server, "authenticate", "--user", "S023", "--device-id", "hs-S023",
                  "--secret-file", str(old_file), "--source", source(probe)) == 2
    assert client(server, "authenticate", "--user", "S023", "--device-id", "hs-S023",
                  "--secret-file", str(secret), "--source", source(probe)) == 0


def test_register_device_refusal_names_the_existing_file(server, enrolled, tmp_path, capsys):
    secret = tmp_path / "kept.secret"
    secret.write_text("kept\n")
    capsys.readouterr()
    assert client(server, "register-device", "--user", "S022", "--device-id", "hs-x",
                  "--secret-file", str(secret)) == 2
    err = capsys.readouterr().err
    assert f"--secret-file {str(secret)!r} exists" in err, err
    assert "--rotate" in err


def test_continuous_keeps_the_session_verified_until_the_wearer_changes(
        server, enrolled, tmp_path, capsys):
    capsys.readouterr()
    # the owner for 24 s, then someone else puts the headset on (8x real time: a
    # headset's pace; blocks it sent while the server decided are not scored again)
    swap = _piece(tmp_path, "swap", [("S022R07", 0, 24), ("S021R07", 30, 54)])
    rc = client(server, "authenticate", "--user", "S022", "--device-id", "hs-S022",
                "--secret-file", enrolled["S022"], "--source", source(swap, 8), "--continuous")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("ACCEPT S022"), out
    assert any(ln.startswith("VERIFIED score +") for ln in lines[1:]), out
    assert lines[-1].startswith("ENDED ") and lines[-1].endswith(": wearer_changed"), out
    assert rc == 1
    # the genuine wearer to the end of the recording: the session stays open
    genuine = _piece(tmp_path, "stay", [("S022R07", 24, 60)])
    assert client(server, "authenticate", "--user", "S022", "--device-id", "hs-S022",
                  "--secret-file", enrolled["S022"], "--source", source(genuine, 8),
                  "--continuous") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "the source ended: the session stays open until it expires"
    assert "ENDED" not in out


@pytest.mark.parametrize("args, said", [
    (["--secret-file", "x"], "--secret-file needs --device-id"),
    (["--device-id", "d", "--secret-file", "/nonexistent/secret"],
     "--secret-file '/nonexistent/secret' is not a file"),
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
])
def test_wrong_options_say_what_was_expected(server, args, said, capsys):
    capsys.readouterr()
    assert client(server, "authenticate", "--user", "u", "--source",
                  source(demo("S021R07")), *args) == 2
    assert said in capsys.readouterr().err


def test_a_source_that_ends_before_the_enrollment_length_sends_nothing(
        server, tmp_path, capsys):
    short = _piece(tmp_path, "short", [("S024R03", 0, 10)])
    capsys.readouterr()
    assert client(server, "enroll", "--user", "short", "--source", source(short),
                  "--seconds", "30") == 2
    assert "the source ended after 10.0 s of the 30 s to enroll; nothing was sent" in \
        capsys.readouterr().err
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    users = server_stub(server).ListUsers(pb.ListUsersRequest(), metadata=(("x-api-key", KEY),))
    assert "short" not in [u.user_id for u in users.users]


# ------------------------------------------------------------------- the block reader
class _Src:
    """A source of given chunks, then an end (``None``) or an error."""

    sfreq = 100.0
    ch_names = ["a", "b"]

    def __init__(self, chunks, end: BaseException | None = None, empty_after=False):
        self.chunks = list(chunks)
        self.end = end
        self.empty_after = empty_after

    def read_chunk(self, timeout):
        if self.chunks:
            x = self.chunks.pop(0)
            return Chunk(x, np.arange(len(x)) / 100.0, self.ch_names, self.sfreq)
        if self.empty_after:
            time.sleep(0.01)
            return Chunk(np.empty((0, 2), "f4"), np.empty(0), self.ch_names, self.sfreq)
        if self.end is not None:
            raise self.end
        return None


def test_fill_dropped_interpolates_short_gaps_and_drops_a_block_that_lost_a_quarter():
    x = np.arange(20, dtype="f4").reshape(10, 2)
    y = x.copy()
    y[3:5] = np.nan
    out, n = fill_dropped(y)
    assert n == 2 and out.dtype == np.dtype("<f4") and np.allclose(out, x)
    y[3:6] = np.nan  # 3 of 10 rows: more than a quarter
    assert fill_dropped(y) == (None, 3)


def test_blocks_hand_out_half_seconds_the_tail_and_the_sources_error():
    x = np.ones((30, 2), "f4")
    with Blocks(_Src([x, x, x])) as b:  # 90 samples: a 50-sample block, then the tail
        got = list(b)
    assert [g.shape[0] for g in got] == [60, 30]
    with Blocks(_Src([x, x], end=OSError("serial port vanished"))) as b:
        assert b.next().shape[0] == 60
        with pytest.raises(OSError, match="serial port vanished"):
            b.next()
        with pytest.raises(OSError):  # and again: the end is final
            b.next()
    nan = x.copy()
    nan[:20] = np.nan
    with Blocks(_Src([nan, nan, x])) as b:
        assert [g.shape[0] for g in b] == [30]  # the lossy block is left out
        assert b.dropped == 40


class _Stamped(_Src):
    """A source of given ``(samples, first timestamp)`` chunks stamped at its rate."""

    def read_chunk(self, timeout):
        if self.chunks:
            x, t0 = self.chunks.pop(0)
            return Chunk(x, t0 + np.arange(len(x)) / self.sfreq, self.ch_names, self.sfreq)
        return None


def test_blocks_do_not_join_the_signal_across_an_outage_in_the_timestamps():
    """A reconnect's outage (the source's timestamps jump, no NaN rows for it) was
    joined into a block as if the signal were continuous, and the server windowed the
    signal before and after it as one; now the blocks end there with SignalInterrupted
    (an attempt streaming them is cancelled), and one before the first block only makes
    the signal start after it. Jitter up to 1 / sfreq + 0.25 s is no outage."""
    from nacf_core.client import SignalInterrupted

    x = np.ones((60, 2), "f4")
    with Blocks(_Stamped([(x, 0.0), (2 * x, 0.6 + 0.2), (3 * x, 5.0)])) as b:
        assert b.next().shape[0] == 60
        assert b.next().shape[0] == 60  # 0.2 s late: jitter, the same signal
        with pytest.raises(SignalInterrupted, match=r"interrupted: no samples for 3\.\d\d s "
                                                    r"after 1\.2 s of signal"):
            b.next()
        with pytest.raises(SignalInterrupted):  # and the end is final
            b.next()
    y = np.ones((30, 2), "f4")
    late = np.concatenate([np.full((20, 2), 4, "f4"), np.full((40, 2), 5, "f4")])
    stamps = np.concatenate([0.3 + np.arange(20) / 100, 9.0 + np.arange(40) / 100])

    class Src(_Stamped):
        def read_chunk(self, timeout):
            if len(self.chunks) == 1:  # the outage inside a chunk
                self.chunks.pop()
                return Chunk(late, stamps, self.ch_names, self.sfreq)
            return super().read_chunk(timeout)

    with Blocks(Src([(y, 0.0), None])) as b:  # 50 samples, then 40 after an outage
        got = list(b)
    assert [g.shape[0] for g in got] == [40] and (got[0] == 5).all()
    assert b.restarts == 1


def test_a_block_left_out_between_two_ends_the_blocks_not_joins_them():
    """A block that lost more than a quarter of its samples (a Cyton's long resync, a
    file's outage read as NaN rows) was left out between two blocks handed out, and the
    server joined the signal on either side of it as one; now the blocks end there with
    SignalInterrupted. Left out before the first block or as the source's last, nothing
    is joined: as before."""
    from nacf_core.client import SignalInterrupted

    x = np.ones((60, 2), "f4")
    lossy = x.copy()
    lossy[:30] = np.nan
    with Blocks(_Src([x, lossy, x])) as b:
        assert b.next().shape[0] == 60
        with pytest.raises(SignalInterrupted, match=r"interrupted: a block lost 30 of its 60 "
                                                    r"samples after 0\.6 s of signal \(the "
                                                    r"link lost them\), too many to fill"):
            b.next()
    dead = x.copy()
    dead[:, 1] = np.nan
    with Blocks(_Src([x, dead, x])) as b:
        b.next()
        with pytest.raises(SignalInterrupted, match=r"channel 'b' sent no finite sample"):
            b.next()
    with Blocks(_Src([x, x[:20], lossy[:20]])) as b:  # the source's last: nothing after it
        assert [g.shape[0] for g in b] == [60]
        assert b.dropped == 20


def test_blocks_left_out_for_a_channel_that_is_never_a_number_name_that_channel():
    """A source with one channel NaN throughout (an LSL electrode not connected, a file
    whose column is empty) had every block left out, and the message blamed the link
    ('the link loses samples'), never the channel; it now names the channel."""
    x = np.ones((60, 2), "f4")
    x[:, 1] = np.nan
    with Blocks(_Src([x, x], empty_after=True), timeout=0.3) as b:
        with pytest.raises(TimeoutError, match=r"no usable samples.*channel 'b' sent no "
                                               r"finite sample in them"):
            b.next()
    y = np.ones((60, 2), "f4")
    y[:30] = np.nan  # the link lost rows: every channel has numbers in the block
    z = np.full((60, 2), np.nan, "f4")  # the link lost a whole block: no channel is to blame
    with Blocks(_Src([y, z]), timeout=0.3) as b:
        assert b.next() is None
        assert "the link loses samples" in b.left_out() and "channel" not in b.left_out()


def test_blocks_give_up_on_a_silent_source():
    t0 = time.monotonic()
    with Blocks(_Src([], empty_after=True), timeout=0.3) as b:
        with pytest.raises(TimeoutError, match="no samples from the source for 0.3 s"):
            b.next()
    assert time.monotonic() - t0 < 5


def test_blocks_close_while_the_consumer_is_away_does_not_hang():
    x = np.ones((60, 2), "f4")
    b = Blocks(_Src([x] * 200))  # more than its queue holds
    time.sleep(0.2)
    t = threading.Thread(target=b.close)
    t.start()
    t.join(5)
    assert not t.is_alive()


# ------------------------------------------------------------------ live sources
@pytest.fixture(scope="module")
def s024(server, tmp_path_factory):
    """S024 enrolled from its R03 recording, with a headset whose secret is in a file."""
    secret = str(tmp_path_factory.mktemp("s024") / "S024.secret")
    assert client(server, "enroll", "--user", "S024", "--source",
                  source(demo("S024R03"))) == 0
    assert client(server, "register-device", "--user", "S024", "--device-id", "hs-S024",
                  "--secret-file", secret) == 0
    return secret


def test_an_lsl_stream_is_opened_before_it_is_read(server, s024, tmp_path, capsys):
    # an LSL source has no rate or channels until it is opened (entered)
    from nacf_core.hardware.lsl import stream_recording_to_lsl

    name = f"nacf-client-{os.getpid()}-{time.monotonic_ns()}"
    stop = threading.Event()
    rec = read_recording(_piece(tmp_path, "lsl", [("S024R07", 0, 20)]))
    out = threading.Thread(target=stream_recording_to_lsl, args=(rec, name),
                           kwargs={"speed": 8.0, "wait_for_consumer_s": 20,
                                   "stop_event": stop}, daemon=True)
    out.start()
    capsys.readouterr()
    try:
        rc = client(server, "authenticate", "--user", "S024", "--device-id", "hs-S024",
                    "--secret-file", s024, "--source", f"lsl:{name}?timeout=15")
    finally:
        stop.set()
        out.join(10)
    assert capsys.readouterr().out.startswith("ACCEPT S024: score +")
    assert rc == 0


def test_a_cyton_port_is_opened_once_by_the_source_not_by_the_block_reader(
        server, s024, tmp_path, monkeypatch, capsys):
    # the block reader read a Cyton before its session was started: read_chunk opened
    # the port from the reader's thread while the source opened it too (PortBusy, or two
    # handshakes at once on one port)
    from nacf_core.hardware.serial_reader import CytonReader
    from nacf_core.hardware.simulator import SimulatedCyton

    opened = []
    real = CytonReader._open_port

    def open_port(self):
        opened.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(CytonReader, "_open_port", open_port)
    probe = _piece(tmp_path, "cyton", [("S024R07", 30, 60)])
    capsys.readouterr()
    with SimulatedCyton(probe, daisy=True, speed=8.0, loop=False) as sim:
        rc = client(server, "authenticate", "--user", "S024", "--device-id", "hs-S024",
                    "--secret-file", s024, "--source", f"cyton-daisy:{sim.port}")
    captured = capsys.readouterr()
    assert opened == [threading.current_thread().name], opened
    assert captured.out.startswith("ACCEPT S024: score +"), captured
    assert rc == 0


def test_a_headset_that_reconnects_mid_attempt_ends_it_and_nothing_is_decided(
        server, s024, tmp_path, capsys):
    # the Cyton reader reconnects after the port vanished for a second and its
    # timestamps jump; the client joined the signal before and after the outage and the
    # server decided on windows spanning it. Now the call is cancelled, and says why
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    from nacf_core.hardware.simulator import Faults, SimulatedCyton

    stub = server_stub(server)
    md = (("x-api-key", KEY),)
    before = stub.GetStats(pb.GetStatsRequest(), metadata=md).auth_attempts_today
    probe = _piece(tmp_path, "cyton-reconnect", [("S024R07", 30, 60)])
    capsys.readouterr()
    with SimulatedCyton(probe, daisy=True, speed=8.0, loop=False,
                        faults=Faults(disconnect_after=1.0, disconnect_for=1.0)) as sim:
        rc = client(server, "authenticate", "--user", "S024", "--device-id", "hs-S024",
                    "--secret-file", s024, "--source", f"cyton-daisy:{sim.port}")
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert not captured.out, captured
    assert "nacf client authenticate: the headset stream was interrupted: no samples for" \
        in captured.err, captured
    time.sleep(0.5)  # the server's side of the cancelled call
    assert stub.GetStats(pb.GetStatsRequest(), metadata=md).auth_attempts_today == before


def test_a_recording_made_across_a_reconnect_is_not_authenticated_as_one_signal(
        server, s024, tmp_path, capsys):
    # a nacf record CSV whose timestamps jump 2 s (a reconnect) replayed through file:
    # was sent as one continuous signal (and accepted); its outage is now dropped samples,
    # a block left out between two, and the attempt ends there, nothing decided
    rec = read_recording(_piece(tmp_path, "csv-reconnect", [("S024R07", 30, 50)]))
    t = 1_700_000_000.0 + np.arange(rec.n_times) / rec.sfreq
    t[int(2 * rec.sfreq):] += 2.0
    p = tmp_path / "reconnect.csv"
    with open(p, "w") as fh:
        fh.write("timestamp," + ",".join(rec.ch_names) + "\n")
        np.savetxt(fh, np.column_stack([t, rec.data]), delimiter=",", fmt="%.6f")
    capsys.readouterr()
    rc = client(server, "authenticate", "--user", "S024", "--device-id", "hs-S024",
                "--secret-file", s024, "--source", source(str(p)))
    captured = capsys.readouterr()
    assert rc == 2 and not captured.out, captured
    assert "the headset stream was interrupted: a block lost" in captured.err, captured
    rc = client(server, "enroll", "--user", "gap-enroll", "--seconds", "8", "--source",
                source(str(p)))
    captured = capsys.readouterr()
    assert rc == 2 and "nacf client enroll: the headset stream was interrupted" \
        in captured.err, captured
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb
    users = server_stub(server).ListUsers(pb.ListUsersRequest(), metadata=(("x-api-key", KEY),))
    assert "gap-enroll" not in [u.user_id for u in users.users]


def test_blocks_give_up_on_a_source_whose_every_block_is_left_out():
    # a link that loses a third of every block streams on, but nothing usable comes: the
    # source counts as silent (it used to count as alive for ever: a hang, no message)
    lossy = np.ones((60, 2), "f4")
    lossy[::3] = np.nan

    class Lossy(_Src):
        def read_chunk(self, timeout):
            time.sleep(0.01)
            return Chunk(lossy.copy(), np.arange(60) / 100.0, self.ch_names, self.sfreq)

    got: list = []

    def consume(b):
        try:
            got.append(b.next())
        except TimeoutError as e:
            got.append(e)

    with Blocks(Lossy([]), timeout=0.3) as b:
        t = threading.Thread(target=consume, args=(b,), daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive(), "next() still waiting on a source that sends only lossy blocks"
    assert isinstance(got[0], TimeoutError), got
    assert "no usable samples from the source for 0.3 s" in str(got[0])
    assert "lost more than a quarter of their samples" in str(got[0])


def test_a_source_whose_every_block_is_left_out_says_so(server, tmp_path, capsys):
    rec = read_recording(demo("S021R07"))
    x = rec.data[:int(10 * rec.sfreq)].copy()
    x[::3] = np.nan  # a third of the samples dropped, evenly
    lossy = str(write_npz(tmp_path / "lossy.npz", x, rec.sfreq, rec.ch_names))
    capsys.readouterr()
    assert client(server, "authenticate", "--user", "S021", "--source", source(lossy)) == 2
    err = capsys.readouterr().err
    assert "the source ended before its first usable block; nothing was sent" in err, err
    assert f"{int(np.isnan(x).any(axis=1).sum())} samples" in err, err
    assert "lost more than a quarter of their samples" in err, err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_cannot_be_reached_is_said_before_the_source_is_read(tmp_path, capsys):
    # no server there: said at once, not after the wearer gave the enrollment's seconds
    capsys.readouterr()
    addr = f"127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    ns = build_parser().parse_args(["client", "enroll", "--server", addr, "--api-key-file",
                                    _key_file(KEY), "--user", "u", "--seconds", "20",
                                    "--source", source(demo("S021R03"), 1)])
    assert ns.func(ns) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert f"nacf client enroll: cannot reach nacf serve at {addr} (UNAVAILABLE:" in err, err


def _pem_pair(tmp_path) -> tuple:
    """A self-signed certificate and its key (PEM files)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
         .public_key(k.public_key()).serial_number(1).not_valid_before(now)
         .not_valid_after(now + dt.timedelta(days=1)).sign(k, hashes.SHA256()))
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert, key


@pytest.mark.parametrize("option", ["--tls-ca", "--tls-cert", "--tls-key"])
@pytest.mark.parametrize("what", ["fifo", "dev_zero", "directory", "garbage", "missing"])
def test_tls_files_that_are_not_pem_files_are_refused_at_once(
        tmp_path, capsys, raised_without_blocking, option, what):
    """A FIFO given as --tls-ca (or --tls-cert, --tls-key) blocked the client forever,
    /dev/zero was read until memory ran out, and a file that is not PEM was reported as
    'cannot reach nacf serve at ...' (after gRPC's own log lines): they are refused before
    any connection, naming the option and saying what was expected."""
    path = {"fifo": tmp_path / "fifo", "dev_zero": "/dev/zero", "directory": tmp_path,
            "garbage": tmp_path / "garbage", "missing": tmp_path / "missing"}[what]
    if what == "fifo":
        os.mkfifo(path)
    if what == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    cert, key = _pem_pair(tmp_path)
    pair = {"--tls-cert": ["--tls-key", str(key)], "--tls-key": ["--tls-cert", str(cert)],
            "--tls-ca": []}[option]
    addr = f"127.0.0.1:{_free_port()}"
    ns = build_parser().parse_args(["client", "enroll", "--server", addr, "--api-key-file",
                                    _key_file(KEY), "--user", "u", "--source",
                                    source(demo("S021R03")), option, str(path), *pair])
    capsys.readouterr()
    rc = []
    assert raised_without_blocking(lambda: rc.append(ns.func(ns))) is None
    assert rc == [2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nacf client enroll: "), err
    assert f"{option} file {str(path)!r}" in err[0] or f"{option} {str(path)!r}" in err[0], err
    assert "cannot reach" not in err[0]


def test_tls_files_that_are_pem_pass_the_check(tmp_path):
    from nacf_core.commands.client import _read_pem

    cert, key = _pem_pair(tmp_path)
    assert _read_pem(str(cert), "--tls-ca", "certificate") == cert.read_bytes()
    assert _read_pem(str(key), "--tls-key", "private key") == key.read_bytes()
    with pytest.raises(ValueError, match="--tls-key .* is not a PEM private key"):
        _read_pem(str(cert), "--tls-key", "private key")
    with pytest.raises(ValueError, match="--tls-ca .* is not a PEM certificate"):
        _read_pem(str(key), "--tls-ca", "certificate")


def test_an_interrupt_during_register_device_still_keeps_the_secret_the_server_issued(
        server, enrolled, tmp_path, monkeypatch, capsys):
    # SIGTERM (as Ctrl-C) while RegisterDevice is in flight: the server binds the headset
    # and issues its secret all the same, shown once; the client used to drop the file
    # and the secret with it (the headset bound to a secret nobody holds: --rotate, an
    # admin's, was the only way back)
    import signal

    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    svc = server.service
    real = svc.bind_device  # what RegisterDevice calls
    issued = []

    def slow(*a, **kw):
        time.sleep(1.0)
        out = real(*a, **kw)
        issued.append(out[0])  # the secret
        return out

    monkeypatch.setattr(svc, "bind_device", slow)
    assert client(server, "enroll", "--user", "S025", "--source",
                  source(_piece(tmp_path, "e25", [("S022R03", 0, 60)]))) == 0
    secret = tmp_path / "S025.secret"
    timer = threading.Timer(0.4, os.kill, (os.getpid(), signal.SIGTERM))
    capsys.readouterr()
    timer.start()
    try:
        rc = client(server, "register-device", "--user", "S025", "--device-id", "hs-S025",
                    "--secret-file", str(secret))
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "interrupted" in err
    t0 = time.monotonic()
    while not issued and time.monotonic() - t0 < 10:  # the server's call goes on
        time.sleep(0.05)
    user = server_stub(server).GetUser(pb.GetUserRequest(user_id="S025"),
                                       metadata=(("x-api-key", KEY),)).user
    assert list(user.device_ids) == ["hs-S025"]
    assert secret.read_text() == issued[0] + "\n"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_a_token_file_that_cannot_be_written_stops_authenticate_before_a_session_opens(
        server, enrolled, tmp_path, capsys):
    # it used to be found after the accept: exit 2 with the session open, its token lost
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    md = (("x-api-key", KEY),)
    before = server_stub(server).GetStats(pb.GetStatsRequest(), metadata=md)
    capsys.readouterr()
    probe = _piece(tmp_path, "t", [("S021R07", 54, 60)])
    assert client(server, "authenticate", "--user", "S021", "--device-id", "hs-S021",
                  "--secret-file", enrolled["S021"], "--source", source(probe),
                  "--token-file", str(tmp_path / "missing-dir" / "token")) == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert "missing-dir" in captured.err and "No such file or directory" in captured.err
    after = server_stub(server).GetStats(pb.GetStatsRequest(), metadata=md)
    assert after.auth_attempts_today == before.auth_attempts_today
    assert after.active_sessions == before.active_sessions
    # a rejected attempt leaves no token file, nor a piece of one
    token = tmp_path / "token"
    impostor = _piece(tmp_path, "ti", [("S023R07", 40, 60)])
    assert client(server, "authenticate", "--user", "S021", "--device-id", "hs-S021",
                  "--secret-file", enrolled["S021"], "--source", source(impostor),
                  "--token-file", str(token)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz", "ti.npz"]


def test_an_empty_token_file_name_stops_authenticate_before_a_session_opens(
        server, enrolled, tmp_path, monkeypatch, capsys):
    """--token-file '' was taken for a file to write: a part file went into the parent of
    the working directory, the session opened, and once accepted the token could not be
    put at '': exit 2 with the session open and its token lost."""
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    md = (("x-api-key", KEY),)
    before = server_stub(server).GetStats(pb.GetStatsRequest(), metadata=md)
    probe = _piece(tmp_path, "t", [("S021R07", 54, 60)])
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    capsys.readouterr()
    assert client(server, "authenticate", "--user", "S021", "--device-id", "hs-S021",
                  "--secret-file", enrolled["S021"], "--source", source(probe),
                  "--token-file", "") == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert "--token-file '' is an empty file name" in captured.err, captured.err
    after = server_stub(server).GetStats(pb.GetStatsRequest(), metadata=md)
    assert after.auth_attempts_today == before.auth_attempts_today
    assert after.active_sessions == before.active_sessions
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cwd", "t.npz"]


def test_an_interrupt_while_the_server_decides_cancels_the_call(server, s024):
    # Ctrl-C while AuthenticateStream waits for a decision: the call must be cancelled
    # before the block reader stops. It was not: closing the reader ended the request
    # stream (a half-close), and the server, which decides on a stream that ends, decided
    # on the stream cut short (a failed attempt counted towards the lockout) before the
    # channel's close cancelled the call
    import signal

    import grpc

    from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
    from nacf_core.client import authenticate_stream

    rec = read_recording(demo("S024R07"))
    noisy = rec.data[:int(6 * rec.sfreq)] + np.random.default_rng(0).normal(
        0, 400, (int(6 * rec.sfreq), rec.data.shape[1]))  # windows the quality gate rejects

    class Src:
        sfreq, ch_names = rec.sfreq, rec.ch_names

        def __init__(self):
            self.left = [noisy[i:i + 40].astype("f4") for i in range(0, len(noisy), 40)]

        def read_chunk(self, timeout):
            if self.left:
                x = self.left.pop(0)
                return Chunk(x, np.zeros(len(x)), self.ch_names, self.sfreq)
            time.sleep(0.05)  # a headset that went quiet: the server waits for more
            return Chunk(np.empty((0, len(self.ch_names)), "f4"), np.empty(0),
                         self.ch_names, self.sfreq)

    events: list[str] = []

    class Call:  # the real call, its cancel() noted
        def __init__(self, call):
            self._call = call

        def cancel(self):
            events.append("cancelled")
            return self._call.cancel()

        def __getattr__(self, name):
            return getattr(self._call, name)

    class Stub:
        def __init__(self, channel):
            real = pbg.AuthServiceStub(channel).AuthenticateStream

            def future(requests, **kw):
                def noted():
                    yield from requests
                    events.append("stream ended")
                return Call(real.future(noted(), **kw))

            self.AuthenticateStream = type("M", (), {"future": staticmethod(future)})

    md = (("x-api-key", KEY),)
    secret = open(s024).read().strip()
    with grpc.insecure_channel(server.address) as channel:
        timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
        blocks = Blocks(Src(), timeout=60)
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                authenticate_stream(Stub(channel), md, "S024", blocks, device_id="hs-S024",
                                    secret=secret)
        finally:
            timer.cancel()
            blocks.close()
        t0 = time.monotonic()
        while "stream ended" not in events and time.monotonic() - t0 < 5:
            time.sleep(0.05)
    assert events[:1] == ["cancelled"], events


def test_continuous_ends_when_the_server_stops_answering(server, tmp_path, monkeypatch):
    # a server gone without closing the connection (its machine asleep, a NAT that
    # dropped the mapping): the client's keepalive pings go unanswered and the call ends
    # with a message. Without them --continuous waited for the next update for ever
    import sys

    from nacf_core.commands import client as client_cmd

    sys.path.insert(0, os.path.dirname(__file__))
    from test_keepalive import _Proxy

    monkeypatch.setattr(client_cmd, "KEEPALIVE_TIME_MS", 10_000)  # nacf serve's floor
    monkeypatch.setattr(client_cmd, "KEEPALIVE_TIMEOUT_MS", 1_000)
    secret = str(tmp_path / "k.secret")
    assert client(server, "enroll", "--user", "S021k", "--source",
                  source(demo("S021R03"))) == 0
    assert client(server, "register-device", "--user", "S021k", "--device-id", "hs-S021k",
                  "--secret-file", secret) == 0
    proxy = _Proxy(int(server.address.rsplit(":", 1)[1]))
    got: list[int] = []
    ns = build_parser().parse_args([
        "client", "authenticate", "--server", f"127.0.0.1:{proxy.port}", "--api-key-file",
        _key_file(KEY), "--user", "S021k", "--device-id", "hs-S021k", "--secret-file", secret,
        "--source", source(demo("S021R07"), 2), "--continuous"])
    t = threading.Thread(target=lambda: got.append(ns.func(ns)), daemon=True)
    try:
        t.start()
        time.sleep(5)  # accepted after 4 s of signal (2 s at speed 2), then continuous
        assert t.is_alive()
        proxy.freeze()  # nothing reaches the client any more, nor the server
        t.join(25)
        assert not t.is_alive(), "--continuous still waiting on a server that went silent"
    finally:
        proxy.close()
        t.join(10)
    assert got == [2]


@pytest.mark.parametrize("device_id", ["casque-é", "hs\u20111"])  # a non-breaking hyphen
def test_a_device_id_the_proofs_metadata_cannot_carry_is_refused_before_it_is_bound(
        server, enrolled, tmp_path, device_id, capsys):
    # the server binds any printable id, but the device proof carries it in x-device-id
    # metadata (printable ASCII only): such a headset could never
    # authenticate (gRPC refused the call: "the server answered INTERNAL: Invalid
    # metadata"), and its secret was of no use
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    secret = tmp_path / "s.secret"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        client(server, "register-device", "--user", "S022", "--device-id", device_id,
               "--secret-file", str(secret))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device-id: expected printable ASCII (the device proof carries it " \
           "in gRPC metadata)" in err, err
    assert not secret.exists()
    user = server_stub(server).GetUser(pb.GetUserRequest(user_id="S022"),
                                       metadata=(("x-api-key", KEY),)).user
    assert device_id not in user.device_ids
    # authenticate, which sends it with the proof, says the same
    secret.write_text("x\n")
    with pytest.raises(SystemExit) as exc:
        client(server, "authenticate", "--user", "S022", "--device-id", device_id,
               "--secret-file", str(secret), "--source", source(demo("S022R07")))
    assert exc.value.code == 2
    assert "argument --device-id: expected printable ASCII" in capsys.readouterr().err


def test_an_api_key_that_metadata_cannot_carry_is_said_before_the_source_is_read(
        server, tmp_path, capsys):
    # gRPC's client refused it at the first call, after the enrollment's seconds were
    # read: "the server answered INTERNAL: Invalid metadata"; the key is never shown
    bad = tmp_path / "key"
    bad.write_text("clé-0123456789abcdef\n")
    bad.chmod(0o600)
    capsys.readouterr()
    t0 = time.monotonic()
    ns = build_parser().parse_args(["client", "enroll", "--server", server.address,
                                    "--api-key-file", str(bad), "--user", "u", "--seconds",
                                    "20", "--source", source(demo("S021R03"), 1)])
    assert ns.func(ns) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert f"nacf client enroll: --api-key-file {str(bad)!r}: the key must be printable " \
           "ASCII" in err, err
    assert "clé" not in err


@pytest.mark.parametrize("rotate", [False, True])
def test_two_register_device_runs_on_one_secret_file_do_not_both_call(
        server, enrolled, tmp_path, monkeypatch, rotate, capsys):
    # two runs writing one --secret-file at once: both called RegisterDevice, and the
    # file kept the secret of whichever wrote it last, the other headset (or, rotating
    # one headset twice, the secret the server kept) left with a secret nobody holds.
    # The second now stops before any call, the first's secret stays in the file
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    user = f"S026{'r' if rotate else ''}"
    assert client(server, "enroll", "--user", user, "--source",
                  source(_piece(tmp_path, "e26", [("S023R03", 0, 60)]))) == 0
    secret = tmp_path / "shared.secret"
    a, b = f"hs-{user}-a", f"hs-{user}-b"
    if rotate:
        assert client(server, "register-device", "--user", user, "--device-id", a,
                      "--secret-file", str(secret)) == 0
    svc = server.service
    real = svc.bind_device
    calls, in_call, issued = [], threading.Event(), []

    def slow(*a, **kw):
        calls.append(a)
        in_call.set()
        time.sleep(1.0)
        out = real(*a, **kw)
        issued.append(out[0])
        return out

    monkeypatch.setattr(svc, "bind_device", slow)
    rot = ["--rotate"] if rotate else []
    got: list[int] = []
    first = threading.Thread(target=lambda: got.append(client(
        server, "register-device", "--user", user, "--device-id", a, "--secret-file",
        str(secret), *rot)))
    capsys.readouterr()
    first.start()
    try:
        assert in_call.wait(10)
        rc = client(server, "register-device", "--user", user, "--device-id",
                    a if rotate else b, "--secret-file", str(secret), *rot)
    finally:
        first.join(20)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"--secret-file {str(secret)!r} is being written by another nacf client " \
           "register-device" in err, err
    assert len(calls) == 1  # the second never called
    assert got == [0]
    assert secret.read_text() == issued[0] + "\n"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    u = server_stub(server).GetUser(pb.GetUserRequest(user_id=user),
                                    metadata=(("x-api-key", KEY),)).user
    assert list(u.device_ids) == [a]
    # nothing left beside it (the lock, a piece of a file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e26.npz", "shared.secret"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_secret_or_key_file_other_users_can_open_is_refused(
        server, enrolled, tmp_path, mode, capsys):
    # as ssh refuses a private key others can read: the headset's secret (or the API
    # key) in a file other users can read was used without a word
    secret = tmp_path / "open.secret"
    secret.write_text(open(enrolled["S021"]).read())
    os.chmod(secret, mode)
    probe = _piece(tmp_path, "pm", [("S021R07", 0, 10)])
    capsys.readouterr()
    assert client(server, "authenticate", "--user", "S021", "--device-id", "hs-S021",
                  "--secret-file", str(secret), "--source", source(probe)) == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert f"--secret-file {str(secret)!r} is open to other users (mode {mode:04o}); " \
           f"make it private: chmod 600 {shlex.quote(str(secret))}." in captured.err, captured.err
    key = tmp_path / "open.key"
    key.write_text(KEY + "\n")
    os.chmod(key, mode)
    ns = build_parser().parse_args(["client", "enroll", "--server", server.address,
                                    "--api-key-file", str(key), "--user", "u", "--source",
                                    source(probe)])
    assert ns.func(ns) == 2
    assert f"--api-key-file {str(key)!r} is open to other users (mode {mode:04o}); " \
           f"make it private: chmod 600 {shlex.quote(str(key))}." in capsys.readouterr().err


def test_blocks_say_a_stream_that_was_lost_is_not_an_end():
    # an LSL source whose stream vanished for good returns None from read_chunk, as a
    # file does at its end, with counters.extra["lost"] = 1: the block reader took it for
    # the end of the signal (the server then decided on a stream cut short)
    from nacf_core.client import SourceLost
    from nacf_core.hardware.base import Counters

    class Vanishing(_Src):
        counters = Counters()

        def read_chunk(self, timeout):
            c = super().read_chunk(timeout)
            if c is None:
                self.counters.extra["lost"] = 1
            return c

    x = np.ones((60, 2), "f4")
    with Blocks(Vanishing([x]), name="lsl:eeg") as b:
        assert b.next().shape[0] == 60
        with pytest.raises(SourceLost, match="the signal was lost: the source lsl:eeg "
                                             "vanished and did not come back"):
            b.next()
    with Blocks(_Src([x])) as b:  # a file's end stays an end
        assert [g.shape[0] for g in b] == [60]


def _lsl_outlet(rec, name: str, speed: float) -> tuple[threading.Thread, threading.Event]:
    from nacf_core.hardware.lsl import stream_recording_to_lsl

    stop = threading.Event()
    t = threading.Thread(target=stream_recording_to_lsl, args=(rec, name),
                         kwargs={"speed": speed, "wait_for_consumer_s": 20,
                                 "stop_event": stop, "linger_s": 0.0}, daemon=True)
    t.start()
    return t, stop


def test_an_lsl_stream_lost_while_the_server_decides_is_an_error_not_an_end(
        server, s024, tmp_path, capsys):
    # the outlet dies 2 s into the attempt: the client ended the request stream as if the
    # signal had ended, and the server decided on 2 s (a reject, counted towards the
    # lockout). It is an error now: the call is cancelled, exit 2, saying the stream was lost
    name = f"nacf-lost-{os.getpid()}-{time.monotonic_ns()}"
    rec = read_recording(_piece(tmp_path, "lost", [("S024R07", 28, 30)]))
    out, stop = _lsl_outlet(rec, name, 1.0)
    capsys.readouterr()
    try:
        rc = client(server, "authenticate", "--user", "S024", "--device-id", "hs-S024",
                    "--secret-file", s024, "--source", f"lsl:{name}?timeout=15")
    finally:
        stop.set()
        out.join(10)
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert f"nacf client authenticate: the signal was lost: the source lsl:{name}?timeout=15 " \
           "vanished and did not come back" in captured.err, captured.err
    assert rc == 2


def test_an_lsl_stream_lost_during_continuous_says_the_signal_was_lost(
        server, s024, tmp_path, capsys):
    # accepted, then the outlet dies: --continuous said "the source ended: the session
    # stays open until it expires" and exit 0, as at the end of a file
    name = f"nacf-lostc-{os.getpid()}-{time.monotonic_ns()}"
    rec = read_recording(_piece(tmp_path, "lostc", [("S024R07", 20, 28)]))
    out, stop = _lsl_outlet(rec, name, 2.0)
    capsys.readouterr()
    try:
        rc = client(server, "authenticate", "--user", "S024", "--device-id", "hs-S024",
                    "--secret-file", s024, "--source", f"lsl:{name}?timeout=15",
                    "--continuous")
    finally:
        stop.set()
        out.join(10)
    captured = capsys.readouterr()
    assert captured.out.startswith("ACCEPT S024"), captured
    assert "the source ended" not in captured.out, captured.out
    assert "nacf client authenticate: --continuous stopped: the signal was lost: the source " \
           f"lsl:{name}?timeout=15 vanished and did not come back" in captured.err, captured.err
    assert "The session stays open until " in captured.err, captured.err
    assert rc == 2


def _slow_enroll(server, monkeypatch, signals: int):
    """The server's Enroll sends this process ``signals`` SIGINTs (Ctrl-C) once it has the
    request, 0.3 s apart, then enrolls a second later; the results go in the list."""
    import signal

    svc = server.service
    real = svc.enroll
    done: list = []

    def slow(*a, **kw):
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
        time.sleep(1.0)
        out = real(*a, **kw)
        done.append(out)
        return out

    monkeypatch.setattr(svc, "enroll", slow)
    return done


def _wait_for(done: list) -> None:
    t0 = time.monotonic()
    while not done and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    assert done, "the server's Enroll did not end"


def test_ctrl_c_once_enroll_is_sent_waits_for_the_answer(
        server, tmp_path, monkeypatch, capsys):
    # Ctrl-C while Enroll was in flight: the client said "interrupted" and the server
    # enrolled the user all the same (it goes on once it has the signal). The client now
    # waits for the answer, says it, and exits 130
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    done = _slow_enroll(server, monkeypatch, 1)
    capsys.readouterr()
    rc = client(server, "enroll", "--user", "S027", "--source",
                source(_piece(tmp_path, "e27", [("S021R03", 0, 60)])))
    _wait_for(done)
    captured = capsys.readouterr()
    assert rc == 130, captured
    assert captured.out.startswith("enrolled S027: template v1"), captured
    assert "nacf client enroll: waiting for the server's answer to Enroll" in captured.err
    user = server_stub(server).GetUser(pb.GetUserRequest(user_id="S027"),
                                       metadata=(("x-api-key", KEY),)).user
    assert user.template_version == 1


def test_ctrl_c_twice_once_enroll_is_sent_says_the_user_may_be_enrolled(
        server, tmp_path, monkeypatch, capsys):
    # a second Ctrl-C stops at once, saying the server may have enrolled the user all the
    # same and how to find out (it does here)
    import signal

    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    done = _slow_enroll(server, monkeypatch, 2)
    armed = [True]

    def interrupt(signum, frame):  # a signal after the client returned is not the test's
        if armed[0]:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, interrupt)
    capsys.readouterr()
    try:
        rc = client(server, "enroll", "--user", "S028", "--source",
                    source(_piece(tmp_path, "e28", [("S022R03", 0, 60)])))
        armed[0] = False
        _wait_for(done)
    finally:
        signal.signal(signal.SIGINT, old)
    captured = capsys.readouterr()
    assert rc == 130, captured
    assert captured.out == "", captured
    assert "nacf client enroll: interrupted once Enroll was sent: the server may have " \
           "enrolled 'S028' all the same" in captured.err, captured.err
    assert "GetUser" in captured.err and "ALREADY_EXISTS" in captured.err, captured.err
    user = server_stub(server).GetUser(pb.GetUserRequest(user_id="S028"),
                                       metadata=(("x-api-key", KEY),)).user
    assert user.template_version == 1


@pytest.mark.parametrize("kind", ["channels", "rate"])
def test_enroll_checks_the_sources_channels_and_rate_before_recording(
        server, tmp_path, monkeypatch, kind, capsys):
    # the model's channels and the rates the server takes were checked by the server only:
    # enroll recorded its --seconds (60 by default, of a live headset) before learning
    # that the source lacks channels or runs at a rate the server refuses
    rec = read_recording(demo("S023R07"))
    if kind == "channels":  # the first 8 of the model's 16 channels
        path = write_npz(tmp_path / "c8.npz", rec.data[:, :8], rec.sfreq, rec.ch_names[:8])
        said = (f"the source cannot be enrolled with this server's model "
                f"({server.service.model_version}): The signal lacks 8 of the 16 channels "
                "the model needs: missing ")
    else:
        path = write_npz(tmp_path / "r100.npz", rec.data, 100.0, rec.ch_names)
        said = ("the source's rate, 100 Hz, is outside the 125-1000 Hz the server takes; "
                "nothing was recorded")
    calls = []
    real = server.service.enroll
    monkeypatch.setattr(server.service, "enroll",
                        lambda *a, **kw: calls.append(a) or real(*a, **kw))
    capsys.readouterr()
    assert client(server, "enroll", "--user", f"S023{kind}", "--source", source(str(path)),
                  "--seconds", "20") == 2
    err = capsys.readouterr().err
    assert f"nacf client enroll: {said}" in err, err
    assert calls == []  # refused before the call


def test_get_model_says_what_a_signal_must_be(server):
    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    m = server.service.rec.model
    r = server_stub(server).GetModel(pb.GetModelRequest(), metadata=(("x-api-key", KEY),))
    assert r.model_version == server.service.model_version
    assert list(r.channel_names) == list(m.ch_names)
    assert (r.min_sample_rate_hz, r.max_sample_rate_hz) == (125.0, 1000.0)
    assert r.window_seconds == m.window_s


def test_register_device_to_a_directory_says_it_is_one(server, enrolled, tmp_path, capsys):
    # a --secret-file that names a directory was said to exist and "may hold the secret
    # of a bound headset ... or --rotate", which then said it is a directory
    capsys.readouterr()
    assert client(server, "register-device", "--user", "S022", "--device-id", "hs-dir",
                  "--secret-file", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"--secret-file {str(tmp_path)!r} is a directory, not a file name" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("same_as", ["--secret-file", "--api-key-file"])
def test_a_token_file_that_is_the_secret_or_key_file_is_refused_before_any_call(
        server, enrolled, tmp_path, capsys, same_as):
    # `--token-file` naming the secret file (or the API key file) replaced the headset's
    # secret, which the server shows once, with the session token on an accept: the
    # headset could never authenticate again until an admin rotated its secret
    import shutil

    from nacf_core._proto.nacf.v1 import auth_pb2 as pb

    md = (("x-api-key", KEY),)
    secret = tmp_path / "S021.secret"
    shutil.copy(enrolled["S021"], secret)
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    for f in (secret, key):
        f.chmod(0o600)
    kept = {f: f.read_text() for f in (secret, key)}
    token = secret if same_as == "--secret-file" else key
    before = server_stub(server).GetStats(pb.GetStatsRequest(), metadata=md)
    start = 0 if same_as == "--secret-file" else 20  # (a probe seen before is a replay)
    probe = _piece(tmp_path, "t", [("S021R07", start, start + 20)])
    capsys.readouterr()
    assert client(server, "authenticate", "--api-key-file", str(key), "--user", "S021",
                  "--device-id", "hs-S021", "--secret-file", str(secret),
                  "--source", source(probe), "--token-file", str(token), key=None) == 2
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert (f"--token-file {str(token)!r} is the {same_as}: the session token would "
            "replace what it holds; give another file.") in captured.err, captured.err
    assert {f: f.read_text() for f in (secret, key)} == kept
    after = server_stub(server).GetStats(pb.GetStatsRequest(), metadata=md)
    assert after.auth_attempts_today == before.auth_attempts_today


def test_register_device_refuses_a_secret_file_that_is_the_api_key_file(
        server, enrolled, tmp_path, capsys):
    # with --rotate, the API key file named as --secret-file was replaced by the secret
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    capsys.readouterr()
    assert client(server, "register-device", "--api-key-file", str(key), "--user", "S022",
                  "--device-id", "hs-S022-b", "--secret-file", str(key), "--rotate",
                  key=None) == 2
    captured = capsys.readouterr()
    assert (f"--secret-file {str(key)!r} is the --api-key-file: the device secret would "
            "replace what it holds; give another file.") in captured.err, captured.err
    assert key.read_text() == KEY + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_the_clients_own_deadline_is_said_as_its_timeout_not_as_the_servers_answer(
        server, enrolled, tmp_path, capsys):
    # --timeout passed while the source was still streaming: "the server answered
    # DEADLINE_EXCEEDED: Deadline Exceeded", as if the server had refused the call
    probe = _piece(tmp_path, "d", [("S022R07", 30, 50)])
    capsys.readouterr()
    assert client(server, "authenticate", "--user", "S022", "--device-id", "hs-S022",
                  "--secret-file", enrolled["S022"], "--source", source(probe, speed=1),
                  "--timeout", "3") == 2  # (3 s: the health check must pass first, loaded)
    err = capsys.readouterr().err
    assert "the server answered" not in err, err
    assert ("nacf client authenticate: no answer within --timeout 3 s (DEADLINE_EXCEEDED); "
            "give a longer --timeout.") in err, err


def test_output_closed_by_its_reader_ends_as_sigpipe_would(server, enrolled, tmp_path):
    # `nacf client enroll ... | head -0`: "nacf client enroll: [Errno 32] Broken pipe",
    # exit 2, as if the call had failed; the user was enrolled all the same
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "nacf_core.cli", "client", "enroll", "--server",
         server.address, "--api-key-file", _key_file(KEY), "--user", "piped", "--source",
         source(demo("S023R03"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # its reader went away before the line
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Broken pipe" not in err and "Traceback" not in err, err[-2000:]
    assert proc.returncode == 128 + signal.SIGPIPE, (proc.returncode, err[-2000:])


def test_plaintext_to_a_server_with_tls_says_to_give_its_ca(tmp_path, capsys):
    # a client without --tls-ca against a server with TLS was told only "cannot reach
    # nacf serve at ... (UNAVAILABLE: ... Socket closed)": nothing about TLS
    from nacf_core.config import SCOPES, Config
    from nacf_core.server.app import NacfServer

    cert, key = _pem_pair(tmp_path)
    key.chmod(0o600)
    srv = NacfServer(Config(grpc_address="127.0.0.1:0", metrics_address="",
                            data_dir=str(tmp_path), api_keys={KEY: frozenset(SCOPES)},
                            tls_cert_file=str(cert), tls_key_file=str(key))).start()
    try:
        capsys.readouterr()
        ns = build_parser().parse_args(["client", "enroll", "--server", srv.address,
                                        "--api-key-file", _key_file(KEY), "--user", "u",
                                        "--source", source(demo("S021R03"))])
        assert ns.func(ns) == 2
    finally:
        srv.stop(grace=0)
    err = capsys.readouterr().err
    assert f"nacf client enroll: cannot reach nacf serve at {srv.address} (UNAVAILABLE:" in err
    assert ("It closed the connection, as a server with TLS closes a plaintext one: give "
            "its CA with --tls-ca.") in err, err
