"""What a reply grows with (the signal's windows, the enrolled users) never makes gRPC
fail it on its own terms: a reply or an error message too large for the wire is cut to
fit, or refused with a status that says why and is counted as its client sees it."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from _server_support import CH16, SFREQ, auth_requests, eeg, signal_block, sqlite_service

from nacf_core._proto.nacf.v1 import auth_pb2 as pb
from nacf_core._proto.nacf.v1 import auth_pb2_grpc as pbg
from nacf_core.server.app import NacfServer
from nacf_core.server.converters import block_to_signal

KEY = "key-admin-0123456789"
MD = (("x-api-key", KEY),)


def _serve(tmp_path, model_path, **config):
    svc = sqlite_service(tmp_path, model_path, grpc_address="127.0.0.1:0",
                         metrics_address="", api_keys={KEY: frozenset(
                             {"authenticate", "enroll", "admin"})}, **config)
    server = NacfServer(svc.config, svc, metrics=svc.metrics, sidecar=False).start()
    chan = grpc.insecure_channel(server.address, options=[
        ("grpc.max_send_message_length", 64 << 20)])
    return svc, server, chan, pbg.AuthServiceStub(chan)


def _counted(server, method, status, n, timeout=10.0):
    """Wait for the interceptor's count (a moment after the answer) to reach ``n``."""
    t0 = time.monotonic()
    while auth_requests(server, method, status) < n and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return auth_requests(server, method, status)


def _railed_here_and_there(seconds: int) -> np.ndarray:
    """``seconds`` of real EEG with a few channels at full scale in each 2-s stretch, a
    different few each time (a headset whose electrodes keep losing contact): every
    window is rejected, each for its own channels."""
    rng = np.random.default_rng(0)
    x = np.concatenate([eeg(1, 3, 0, 60)] * (seconds // 60 + 1))[: int(seconds * SFREQ)].copy()
    seg = int(2 * SFREQ)
    for k in range(seconds // 2):
        x[k * seg:(k + 1) * seg, rng.random(16) < 0.2] = 200_000.0
    return x


def test_a_refusal_listing_every_rejected_window_reaches_its_client(tmp_path, model_path):
    """Identify and Enroll refuse a signal none of whose windows passed the quality gate
    with a message listing the distinct rejection reasons; 25 minutes of a headset whose
    electrodes keep losing contact has ~700 of them (over 20 kB). A status message that long
    is over what a gRPC client takes in trailing metadata (16 KiB): the client got
    RESOURCE_EXHAUSTED "Stream removed (received metadata size exceeds hard limit)",
    saying nothing of its signal, while the server counted FAILED_PRECONDITION. Every
    status message is now cut to a size any client takes, saying how much was left
    out."""
    svc, server, chan, stub = _serve(tmp_path, model_path, max_message_bytes=32 << 20)
    try:
        s = block_to_signal(_railed_here_and_there(1500), SFREQ, CH16)
        for method, call in (
                ("Identify", lambda: stub.Identify(pb.IdentifyRequest(signal=s), metadata=MD,
                                                   timeout=60)),
                ("Enroll", lambda: stub.Enroll(pb.EnrollRequest(user_id="u", signals=[s]),
                                               metadata=MD, timeout=60))):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (
                method, e.value.code(), e.value.details()[:200])
            msg = e.value.details()
            assert "railed on" in msg and len(msg.encode()) <= 8192, (method, len(msg))
            assert "more characters left out" in msg, msg[-300:]
            assert _counted(server, method, "FAILED_PRECONDITION", 1) == 1
    finally:
        chan.close()
        server.stop(0)
        svc.store.close()


def test_identify_matching_more_users_than_a_response_holds_is_resource_exhausted(
        tmp_path, model_path):
    """Identify answers every user among the top_k best that the signal matches; with
    identify_max_k raised and many matching users (one person enrolled under many ids,
    a population of look-alike templates) the answer outgrew max_message_bytes: gRPC
    refused to send it (RESOURCE_EXHAUSTED "Sent message larger than max", which said
    nothing of why) and the call was counted OK. It is now RESOURCE_EXHAUSTED saying how
    many candidates matched and what to do (a smaller top_k, a larger max_message_bytes),
    and counted so; a top_k whose answer fits is answered as before."""
    limit = 64 * 1024
    svc, server, chan, stub = _serve(tmp_path, model_path, max_message_bytes=limit,
                                     identify_max_k=1000, presentation_attack_detection=False)
    try:
        svc.enroll("seed", [signal_block(eeg(1, 3, 0, 40))])
        blob = svc.store.get_template("seed").blob
        for i in range(500):  # ~140 bytes each in a response: 70 kB
            svc.store.put_template(f"{i:04d}-" + "x" * 123, blob, svc.model_version)
        s = block_to_signal(eeg(1, 3, 40, 6), SFREQ, CH16)
        few = stub.Identify(pb.IdentifyRequest(signal=s, top_k=100), metadata=MD, timeout=60)
        assert len(few.candidates) == 100  # the same template: everyone matches
        with pytest.raises(grpc.RpcError) as e:
            stub.Identify(pb.IdentifyRequest(signal=s, top_k=1000), metadata=MD, timeout=60)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        msg = e.value.details()
        assert "501 matching candidates" in msg and f"max_message_bytes ({limit}" in msg, msg
        assert "top_k" in msg, msg
        assert _counted(server, "Identify", "RESOURCE_EXHAUSTED", 1) == 1
        assert auth_requests(server, "Identify", "OK") == 1
    finally:
        chan.close()
        server.stop(0)
        svc.store.close()



def test_reasons_of_an_answer_are_cut_to_what_every_response_holds(model_path):
    """The reasons of an Authenticate/AuthenticateStream or Identify answer are the
    distinct reasons its windows were rejected for, one per window for a headset whose
    electrodes keep losing contact (its channels differ from window to window). An
    AuthenticateStream of 1 900 s of such signal (stream_max_seconds raised) answered
    32 kB of them; twice that length is over max_message_bytes at its lowest (64 KiB):
    gRPC refused to send the answer ("Sent message larger than max", counted OK), an
    accept's session token with it. They are now cut to MAX_REASONS_BYTES, saying how
    many were left out and keeping the last (the sequential test's note)."""
    from _server_support import make_pipeline

    from nacf_core.server import converters as cv
    from nacf_core.service import AuthResult, IdentifyResult

    p = make_pipeline(model_path)
    w = p.windows(_railed_here_and_there(1200), SFREQ, list(CH16))
    distinct = sorted({r for r in w.reasons if r})
    many = [f"1 window(s): {r}" for r in distinct] * 6  # ~ 4 000 s of such signal
    assert sum(len(r) for r in many) > 64 * 1024
    last = "sequential test undecided after 0 window(s) (4000.0 s): fused-score decision"
    a = cv.auth_response(AuthResult(True, 0.9, 0.5, 0.7, [*many, last], "m", 4000.0, 0,
                                    "t" * 43, 1e9))
    i = cv.identify_response(IdentifyResult([], 0.5, 0.7, "m", many))
    for reasons in (list(a.reasons), list(i.reasons)):
        assert sum(len(r.encode()) for r in reasons) <= cv.MAX_REASONS_BYTES + 100, (
            sum(len(r.encode()) for r in reasons))
        assert "left out" in " ".join(reasons[-2:]), reasons[-2:]
    assert a.session_token == "t" * 43 and a.reasons[-1] == last
    assert a.reasons[0] == many[0] and i.reasons[0] == many[0]
    # a few reasons are as they were
    assert list(cv.auth_response(AuthResult(False, 0.1, 0.5, 0.7, many[:3], "m", 4.0, 1,
                                            "", 0.0)).reasons) == many[:3]
