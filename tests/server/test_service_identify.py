"""Identify's gallery: kept between calls, rebuilt only where the store changed."""

from __future__ import annotations

import numpy as np
import pytest
from _server_support import eeg, make_pipeline, signal_block
from prometheus_client import CollectorRegistry

from nacf_core.config import Config
from nacf_core.metrics import Metrics
from nacf_core.service import AuthService
from nacf_core.store import open_store


@pytest.fixture
def svc(tmp_path, model_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    yield AuthService(store, make_pipeline(model_path), Config(data_dir=str(tmp_path)),
                      metrics=Metrics(CollectorRegistry()))
    store.close()


def test_identify_decodes_only_changed_templates_and_follows_every_change(svc):
    """Every Identify reads the store; a template is decoded again only when its bytes
    changed, and the gallery always equals decoding every template afresh: after an
    update, a deletion, and a re-enrollment of a deleted user id with another person's
    EEG (whose template version starts again at 1)."""
    decode = svc.rec.template_from_bytes
    decoded = []
    svc.rec.template_from_bytes = lambda b: decoded.append(b) or decode(b)

    def same_as_fresh():
        recs = list(svc.store.iter_templates(model_version=svc.model_version))
        ids, matrix = svc._gallery()
        assert ids == [r.user_id for r in recs]
        assert np.array_equal(matrix, np.stack([decode(r.blob).embedding for r in recs]))

    for user, subject in (("a", 1), ("b", 2), ("c", 3)):
        svc.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
    probe = signal_block(eeg(1, 3, 44, 8))  # subject 1, not in its enrollment
    assert [u for u, _ in svc.identify(probe).candidates] == ["a"]
    assert len(decoded) == 3
    svc.identify(probe)
    assert len(decoded) == 3  # nothing changed, nothing decoded

    svc.enroll("a", [signal_block(eeg(2, 3, 0, 40))], update=True)  # now subject 2's EEG
    assert "a" not in [u for u, _ in svc.identify(probe).candidates]
    assert len(decoded) == 4
    same_as_fresh()

    svc.delete_user("b")
    svc.identify(probe)
    assert len(decoded) == 4
    same_as_fresh()

    svc.enroll("b", [signal_block(eeg(1, 3, 0, 40))])  # the id again, subject 1's EEG
    assert svc.store.get_user("b").template_version == 1
    assert [u for u, _ in svc.identify(probe).candidates] == ["b"]
    assert len(decoded) == 5
    same_as_fresh()

    for user in ("a", "b", "c"):
        svc.delete_user(user)
    assert svc.identify(probe).candidates == []


def test_gallery_keeps_no_row_once_the_store_lists_nobody(svc):
    """Users deleted behind the service's back (another replica, `nacf` on the store,
    or a DeleteUser racing a gallery rebuild) drop out of the gallery kept in memory,
    the last of them too: their embeddings (biometric data) are not kept until the next
    enrollment."""
    svc.enroll("a", [signal_block(eeg(1, 3, 0, 40))])
    probe = signal_block(eeg(1, 3, 44, 8))
    assert [u for u, _ in svc.identify(probe).candidates] == ["a"]
    assert svc._gallery_state[0] == ["a"]
    svc.store.delete_user("a")  # not through this service
    assert svc.identify(probe).candidates == []
    assert svc._gallery_state is None or svc._gallery_state[0] == []


def test_identify_logs_how_many_locked_users_it_left_out_of_this_gallery(svc, caplog):
    """The identification line's locked_left_out counted every locked user in the store,
    also those the gallery did not hold anyway (enrolled under another model): an
    operator read users left out that were not. It counts those left out of this call."""
    import logging
    import time

    blob = None
    for user, subject in (("a", 1), ("b", 2)):
        svc.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
        blob = svc.store.get_template(user).blob
    svc.store.put_template("old", blob, "another-model")  # not in this model's gallery
    for user in ("a", "old"):
        svc.store.register_failure(user, 1, 3600, now=time.time())
    assert svc.store.locked_user_ids(now=time.time()) == {"a", "old"}

    def left_out():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nacf"):
            svc.identify(signal_block(eeg(2, 3, 44, 8)))
        return [r.locked_left_out for r in caplog.records
                if getattr(r, "event_type", "") == "identify"]

    assert left_out() == [1]  # "a"; "old" was never in the gallery
    svc.store.register_failure("b", 1, 3600, now=time.time())
    assert left_out() == [2]  # nobody left to score: both left out


@pytest.fixture
def pad_svc(tmp_path, model_path):
    """An ``AuthService`` with presentation-attack detection on, as ``nacf serve`` runs."""
    from nacf_core.pad import PresentationAttackDetector

    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    pipe = make_pipeline(model_path)
    yield AuthService(store, pipe, Config(data_dir=str(tmp_path), require_device_proof=False),
                      metrics=Metrics(CollectorRegistry()),
                      pad=PresentationAttackDetector(list(pipe.model.ch_names)))
    store.close()


def test_identify_names_no_one_for_a_replayed_recording(pad_svc, caplog):
    """Presentation-attack detection judged Authenticate's probes only: a piece of a
    user's enrollment recording played back to Identify, which Authenticate refuses as
    a replay, was answered with that user's id, so an app asking "who is this?" took a
    recording for its wearer. Identify now judges its probe as Authenticate does, against
    the stored history of each user it matches: a replay matches no one, its reason says
    why, and it is a security event (logged, counted). A fresh signal of the same person
    is still identified."""
    svc = pad_svc
    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    svc.enroll("u2", [signal_block(eeg(2, 3, 0, 40))])
    fresh = svc.identify(signal_block(eeg(1, 3, 44, 8)), top_k=2)
    assert [u for u, _ in fresh.candidates] == ["u1"]
    reg = svc.metrics.registry
    labels = {"activity_type": "replay", "severity": "high"}
    before = reg.get_sample_value("nacfauth_suspicious_activities_total", labels) or 0.0
    caplog.clear()  # the fresh Identify's line too, when an earlier test set INFO
    with caplog.at_level("INFO", logger="nacf.service"):
        r = svc.identify(signal_block(eeg(1, 3, 12, 4)), top_k=2, peer="ipv4:10.0.0.7:5000")
    assert r.candidates == []
    assert "pad: replay_of_enrollment" in r.reasons, r.reasons
    assert reg.get_sample_value("nacfauth_suspicious_activities_total", labels) == before + 1
    (ev,) = [x for x in caplog.records if getattr(x, "event_type", "") == "security_event"]
    assert (ev.security_event_type, ev.method, ev.ip_address) == (
        "replay", "Identify", "10.0.0.7")
    (line,) = [x for x in caplog.records if getattr(x, "event_type", "") == "identify"]
    assert (line.success, line.reason, line.match) == (False, "presentation_attack", None)


def test_identify_and_list_users_take_a_numpy_integer_as_the_integer_it_is(svc):
    """The domain API refused a NumPy integer for Identify's top_k and ListUsers'
    page_size ("'top_k' must be an integer, got np.int64(1)": a message that contradicts
    itself), where nacf's own checks (check_int_range) take one; a bool stays refused."""
    from nacf_core.errors import InvalidArgument

    svc.enroll("u1", [signal_block(eeg(1, 3, 0, 40))])
    svc.enroll("u2", [signal_block(eeg(2, 3, 0, 40))])
    r = svc.identify(signal_block(eeg(1, 3, 44, 8)), np.int64(1))
    assert [u for u, _ in r.candidates] == ["u1"]
    users, token = svc.list_users(np.int32(1))
    assert [u.user_id for u in users] == ["u1"] and token
    for bad in (True, np.bool_(True), 1.0):
        with pytest.raises(InvalidArgument, match="must be an integer"):
            svc.identify(signal_block(eeg(1, 3, 44, 8)), bad)
        with pytest.raises(InvalidArgument, match="must be an integer"):
            svc.list_users(bad)
