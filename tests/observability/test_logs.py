"""nacf_core.logs: JSON lines with the guide's fields; arrays never logged."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest

from nacf_core import logs


@pytest.fixture
def stream():
    s = io.StringIO()
    root = logging.getLogger()
    old_level, old_nacf = root.level, logging.getLogger("nacf").level
    handler = logs.configure("DEBUG", stream=s)
    yield s
    root.removeHandler(handler)
    root.setLevel(old_level)
    logging.getLogger("nacf").setLevel(old_nacf)
    logging.captureWarnings(False)


def lines(s: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in s.getvalue().splitlines()]


def test_audit_event_writes_one_json_line_with_the_guide_fields(stream):
    log = logging.getLogger("nacf.test")
    logs.audit_event(log, "auth_attempt", user_id="alice", success=False,
                     confidence=np.float32(0.42), duration_ms=4.25,
                     peer="ipv4:127.0.0.1:5555", method="Authenticate",
                     reasons=["score_below_threshold"])
    log.warning("plain message %d", 3)
    rows = lines(stream)
    assert len(rows) == 2
    a = rows[0]
    assert a["event_type"] == "auth_attempt" and a["user_id"] == "alice"
    assert a["success"] is False and a["confidence"] == pytest.approx(0.42)
    assert a["duration_ms"] == 4.25 and a["peer"] == "ipv4:127.0.0.1:5555"
    assert a["level"] == "INFO" and a["logger"] == "nacf.test" and a["service"] == "nacf"
    assert a["timestamp"].endswith("Z") and "T" in a["timestamp"]
    assert rows[1]["message"] == "plain message 3" and rows[1]["event_type"] == "log"


@pytest.mark.parametrize("value", [
    np.zeros((4, 16), dtype=np.float32),
    np.zeros(1),
    b"\x00" * 64,
    bytearray(8),
    memoryview(b"abc"),
    [0.1] * 64,
    {"nested": {"emb": np.ones(8)}},
    [[1.0] * 32],
])
def test_audit_event_refuses_array_like_values(stream, value):
    with pytest.raises(TypeError, match="never be logged"):
        logs.audit_event(logging.getLogger("nacf.test"), "enrollment", user_id="x",
                         data=value)
    assert stream.getvalue() == ""


def test_formatter_redacts_arrays_passed_directly(stream):
    log = logging.getLogger("nacf.test")
    secret = np.arange(10, dtype=np.float64) + 12345.678
    log.info("probe %s", secret, extra={"template": secret.tobytes(),
                                        "emb": secret.tolist() * 2})
    (row,) = lines(stream)
    text = stream.getvalue()
    assert "12345.678" not in text and "12346.678" not in text
    assert set(row["redacted_fields"]) == {"message", "template", "emb"}
    assert row["message"].startswith("probe <redacted ndarray shape (10,)>")


def test_short_lists_and_scalars_are_fine(stream):
    logs.audit_event(logging.getLogger("nacf.test"), "enrollment", epochs_used=12,
                     epochs_rejected={"flatline": 2}, quality=np.float64(0.8),
                     channels=["Fp1", "Fp2"], top_scores=[0.9, 0.4])
    (row,) = lines(stream)
    assert row["epochs_rejected"] == {"flatline": 2} and row["top_scores"] == [0.9, 0.4]
    assert "redacted_fields" not in row


def test_exception_is_one_line(stream):
    log = logging.getLogger("nacf.test")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    (row,) = lines(stream)
    assert "RuntimeError: boom" in row["exception"] and row["level"] == "ERROR"


def test_configure_replaces_its_own_handler_and_validates_level():
    s1, s2 = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    old, old_nacf = root.level, logging.getLogger("nacf").level
    try:
        logs.configure("INFO", stream=s1)
        h = logs.configure("INFO", stream=s2)
        logging.getLogger("nacf.test").info("once")
        assert s1.getvalue() == "" and len(s2.getvalue().splitlines()) == 1
        with pytest.raises(ValueError, match="'level'"):
            logs.configure("LOUD")
    finally:
        root.removeHandler(h)
        root.setLevel(old)
        logging.getLogger("nacf").setLevel(old_nacf)
        logging.captureWarnings(False)


def test_field_clashing_with_record_attribute_is_refused(stream):
    with pytest.raises(TypeError, match="clashes"):
        logs.audit_event(logging.getLogger("nacf.test"), "x", name="bob")


def test_a_device_proof_is_not_in_the_repr_of_the_proof_metadata():
    """DeviceProof (the x-device-* metadata as received) showed the HMAC proof in its
    repr, so any message, traceback or log line formatting one carried it; the proof is
    left out now, as a session token from AuthResult and a device secret from
    DeviceRecord are."""
    from nacf_core.service import DeviceProof, device_proof

    proof = device_proof("s3cret-device", "alice", "hs-1", 1_790_000_000, b"\x00" * 64)
    p = DeviceProof("hs-1", "1790000000", proof)
    assert proof not in repr(p) and proof not in str(p)
    assert "hs-1" in repr(p) and "1790000000" in repr(p)  # the rest is still shown
    assert p.proof == proof and p.present


def test_arrays_nested_in_message_arguments_are_redacted(stream):
    """An array inside a dict or a list given as a '%' argument of the message (a dict of
    per-user embeddings, a list of dicts holding bytes) was written as its repr, its
    numbers or bytes in the line; only a top-level argument was checked."""
    log = logging.getLogger("nacf.test")
    emb = np.arange(5, dtype=np.float64) + 12345.5
    log.info("got %(x)s", {"x": {"emb": emb}})
    log.info("got %s and %s", [{"tpl": emb.tobytes()}], ({"e": emb},))
    log.info("plain %s %d %s", {"a": 1}, 3, ["Fp1"])
    rows = lines(stream)
    text = stream.getvalue()
    assert "12345.5" not in text and "12346.5" not in text and "\\\\x00" not in text
    assert [r.get("redacted_fields") for r in rows] == [["message"], ["message"], None]
    assert "<redacted ndarray shape (5,)>" in rows[0]["message"]
    assert "<redacted bytes of length 40>" in rows[1]["message"]
    assert rows[2]["message"] == "plain {'a': 1} 3 ['Fp1']"


def test_a_self_referencing_argument_does_not_break_the_line(stream):
    d: dict = {}
    d["self"] = d
    logging.getLogger("nacf.test").info("loop %s", [d])
    (row,) = lines(stream)
    assert row["message"].startswith("loop ")
