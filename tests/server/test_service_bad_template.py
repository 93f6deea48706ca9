"""One stored template that does not decrypt or decode (a row under another key, an
altered ciphertext, bytes that are no template): Identify leaves it out and answers from
the others, logging and counting it once per write of it; that user's 1:1 calls answer
FAILED_PRECONDITION saying to re-enroll; Enroll with update=true repairs it; GetUser and
ListUsers keep working. On both store backends."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from _server_support import eeg, make_pipeline, signal_block
from prometheus_client import CollectorRegistry

from nacf_core.config import Config
from nacf_core.errors import FailedPrecondition
from nacf_core.metrics import Metrics
from nacf_core.service import AuthService
from nacf_core.store import open_store
from nacf_core.store.crypto import Cipher

PG_DSN = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CORRUPTIONS = ("altered", "other_key", "undecodable")


def _service(store, pipeline, tmp_path) -> AuthService:
    cfg = Config(data_dir=str(tmp_path), rate_limit_per_s=1000, rate_limit_burst=1000,
                 require_device_proof=False)
    return AuthService(store, pipeline, cfg, metrics=Metrics(CollectorRegistry()))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def svc(request, tmp_path, model_path):
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'n.db'}"
    else:
        schema = f"nacf_t_{uuid.uuid4().hex[:12]}"
        url = f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}"
    store = open_store(url, bytes(range(32)))
    try:
        yield _service(store, make_pipeline(model_path), tmp_path)
    finally:
        store.close()
        if schema is not None:
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _corrupt(svc, user: str, how: str) -> None:
    """Damage ``user``'s stored template as ``how`` says, behind the service's back."""
    store = svc.store
    if how == "undecodable":  # decrypts, but the bytes are no template
        store.put_template(user, b"not a template", svc.model_version)
        return
    uid, ver, mv, kid, ct = store._run(lambda tx: tx.one(
        "SELECT user_id, version, model_version, key_id, ciphertext FROM templates "
        "WHERE user_id = ?", (user,)))
    if how == "altered":  # one bit flipped (bit rot), in the nonce: a new stamp
        ct = bytearray(bytes(ct))
        ct[5] ^= 1
        ct = bytes(ct)
    else:  # the right plaintext and row, under a key that is not the store's
        blob = store.get_template(user).blob
        kid, ct = Cipher(os.urandom(32)).encrypt(blob, Cipher.aad("template", uid, ver, mv))
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET key_id = ?, ciphertext = ? WHERE user_id = ?", (kid, ct, user)))


def _unreadable_lines(caplog) -> list:
    return [r for r in caplog.records if getattr(r, "event_type", "") == "template_unreadable"]


def _store_errors(svc, op: str) -> float:
    return svc.metrics.registry.get_sample_value(
        "nacfauth_store_errors_total", {"operation": op}) or 0.0


def _ids(result) -> list[str]:
    return [u for u, _ in result.candidates]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_identify_leaves_out_an_unreadable_template_once_per_write(svc, how, caplog):
    """Before: every Identify, for every caller, failed with the bad row's error
    (FAILED_PRECONDITION naming another user's id for a row that does not decrypt,
    INVALID_ARGUMENT for one that does not decode). Now the row is left out, one ERROR
    line and one count in nacfauth_store_errors_total{operation="read_gallery"} say so,
    the row is not read again until it is rewritten, and Enroll with update=true brings
    the user back."""
    svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))])
    svc.enroll("c", [signal_block(eeg(3, 3, 0, 40))])
    probe_a, probe_c = signal_block(eeg(1, 3, 44, 8)), signal_block(eeg(3, 3, 44, 8))
    assert _ids(svc.identify(probe_a)) == ["a"]  # the gallery kept, with a's row
    _corrupt(svc, "a", how)

    decode = svc.rec.template_from_bytes
    decoded = []
    svc.rec.template_from_bytes = lambda b: decoded.append(b) or decode(b)
    with caplog.at_level("INFO", logger="nacf.service"):
        assert _ids(svc.identify(probe_a)) == []
        assert _ids(svc.identify(probe_c)) == ["c"]
        assert _ids(svc.identify(probe_c)) == ["c"]
    (line,) = _unreadable_lines(caplog)  # once, not once per call
    assert line.levelname == "ERROR" and line.user_id == "a"
    assert "re-enroll" in line.getMessage() + line.error
    assert len(decoded) == (1 if how == "undecodable" else 0)  # not read again
    assert _store_errors(svc, "read_gallery") == 1.0

    # a process that starts with the row damaged (a restart, another replica)
    other = _service(svc.store, svc.rec.pipeline, svc.config.data_dir)
    caplog.clear()
    with caplog.at_level("INFO", logger="nacf.service"):
        assert _ids(other.identify(probe_c)) == ["c"]
    assert [r.user_id for r in _unreadable_lines(caplog)] == ["a"]
    assert _store_errors(other, "read_gallery") == 1.0

    svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))], update=True)  # the repair
    caplog.clear()
    with caplog.at_level("INFO", logger="nacf.service"):
        assert _ids(svc.identify(probe_a)) == ["a"]
        assert _ids(other.identify(probe_a)) == ["a"]
    assert _unreadable_lines(caplog) == []
    assert _store_errors(svc, "read_gallery") == 1.0


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_one_to_one_calls_of_that_user_say_to_re_enroll(svc, how, caplog):
    """Before: Authenticate, AuthenticateStream and ContinuousAuthenticate answered the
    store's FAILED_PRECONDITION ("failed authentication: the ciphertext was altered",
    unlogged and uncounted; for a row under another key, "configure the key this store was
    written with", wrong for one row) or, for a template that does not decode,
    INVALID_ARGUMENT ("template data is not a nacf template"), as if the request were at
    fault. Now each answers FAILED_PRECONDITION saying the stored template cannot be read
    and to re-enroll, logged as template_unreadable and counted; GetUser and ListUsers
    keep working, and Enroll with update=true repairs the user."""
    svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.authenticate("a", signal_block(eeg(1, 3, 44, 8))).session_token
    assert token
    _corrupt(svc, "a", how)
    probe = signal_block(eeg(1, 3, 44, 8))
    calls = [lambda: svc.authenticate("a", probe),
             lambda: svc.authenticate_stream("a", iter([probe])),
             lambda: list(svc.continuous(token, iter([probe])))]
    for call in calls:
        caplog.clear()
        with caplog.at_level("INFO", logger="nacf.service"):
            with pytest.raises(FailedPrecondition) as ei:
                call()
        assert ei.value.code == "FAILED_PRECONDITION"
        msg = str(ei.value)
        assert "'a'" in msg and "cannot be read" in msg
        assert "re-enroll the user (Enroll with update=true)" in msg
        if how == "other_key":
            assert "configure the key" not in msg  # the store's key is the right one
        (line,) = _unreadable_lines(caplog)
        assert line.levelname == "ERROR" and line.user_id == "a"
    assert _store_errors(svc, "get_auth_state") == 2.0
    assert _store_errors(svc, "get_template") == 1.0

    assert svc.get_user("a").user_id == "a"
    assert [u.user_id for u in svc.list_users()[0]] == ["a"]
    svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))], update=True)
    assert svc.authenticate("a", probe).accepted
