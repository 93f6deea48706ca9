"""DeleteUser leaves nothing of the user in the service's memory."""

from __future__ import annotations

import numpy as np
import pytest
from _server_support import CH16, SFREQ, eeg, make_pipeline, signal_block
from prometheus_client import CollectorRegistry

from nacf_core import pad as pad_mod
from nacf_core.config import Config
from nacf_core.errors import NotFound
from nacf_core.metrics import Metrics
from nacf_core.pad import PresentationAttackDetector
from nacf_core.service import AuthService
from nacf_core.store import open_store


@pytest.fixture
def svc(tmp_path, model_path):
    """An ``AuthService`` on SQLite with PAD, as ``nacf serve`` runs it (no device proof)."""
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    pipe = make_pipeline(model_path)
    yield AuthService(store, pipe, Config(data_dir=str(tmp_path), require_device_proof=False),
                      metrics=Metrics(CollectorRegistry()),
                      pad=PresentationAttackDetector(list(pipe.model.ch_names)))
    store.close()


def test_delete_user_drops_its_template_gallery_row_and_pad_history_from_memory(svc):
    """Biometric data of a deleted user must not outlive its rows: the decoded template
    (kept for Authenticate), the row of Identify's gallery and the prepared PAD history
    (spectra of its fingerprints) are dropped at once, and another user's stay."""
    for user, subject in (("gone", 1), ("stays", 2)):
        svc.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
        r = svc.authenticate(user, signal_block(eeg(subject, 3, 44, 8)))
        assert r.accepted, r
    svc.identify(signal_block(eeg(1, 3, 52, 8)))

    def held(user):
        slabs = [k for k in pad_mod._SLABS._d if k[0] == user]
        return (user in svc._templates, user in svc._gallery_state[0], bool(slabs))

    assert held("gone") == held("stays") == (True, True, True)
    svc.delete_user("gone")
    assert held("gone") == (False, False, False)
    assert held("stays") == (True, True, True)
    ids, matrix = svc._gallery_state[0], svc._gallery_state[2]
    assert ids == ["stays"] and matrix.shape[0] == 1
    assert [u for u, _ in svc.identify(signal_block(eeg(2, 3, 52, 8))).candidates] == [
        "stays"]


def test_an_authentication_racing_delete_user_leaves_nothing_of_the_user_in_memory(svc):
    """An Authenticate that read the user before a DeleteUser decodes its template and
    prepares its PAD history after DeleteUser dropped them; its write then finds the
    user gone (NOT_FOUND), and what it put back is dropped as well."""
    svc.enroll("gone", [signal_block(eeg(1, 3, 0, 40))])
    assert svc.authenticate("gone", signal_block(eeg(1, 3, 44, 8))).accepted
    read = svc.store.get_auth_state

    def read_then_deleted(*args, **kwargs):
        state = read(*args, **kwargs)
        svc.delete_user("gone")  # a concurrent DeleteUser, right after the read
        return state

    svc.store.get_auth_state = read_then_deleted
    with pytest.raises(NotFound):
        svc.authenticate("gone", signal_block(eeg(1, 3, 52, 8)))
    assert "gone" not in svc._templates
    assert not [k for k in pad_mod._SLABS._d if k[0] == "gone"]


def test_delete_user_drops_its_fingerprints_from_the_prepared_fingerprint_cache(svc):
    """Besides each user's slab, PAD keeps every fingerprint it compared with, prepared
    (its spectra), in a process-wide cache keyed by the fingerprint's plaintext bytes:
    DeleteUser left them all there (biometric data, until 64 MB of others evicted
    them)."""
    for user, subject in (("gone", 1), ("stays", 2)):
        svc.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
        for start in (44, 52):
            assert svc.authenticate(user, signal_block(eeg(subject, 3, start, 8))).accepted
    fps = {u: {fp for _, fp in svc.store.get_fingerprints(u)} for u in ("gone", "stays")}

    def prepared(user):
        return {k[0] for k in pad_mod._STORED._d} & fps[user]

    assert prepared("gone") and prepared("stays")
    svc.delete_user("gone")
    assert prepared("gone") == set()
    assert prepared("stays")  # the others stay


def test_a_continuous_stream_racing_delete_user_leaves_nothing_of_the_user_in_memory(svc):
    """A ContinuousAuthenticate window checked for presentation attacks just after a
    DeleteUser (which dropped the user's prepared fingerprints) put them back in PAD's
    process-wide cache, tagged with the user: the stream then found the session gone
    and ended, but nothing dropped them (the maintenance sweep looks for users by their
    slabs, and a stream keeps none), so the user's stored history and the stream's
    windows stayed there until 64 MB of others evicted them. The stream now drops what
    the process keeps of a user it finds deleted, as Authenticate does."""
    svc.enroll("gone", [signal_block(eeg(1, 3, 0, 40))])
    token = svc.store.create_session("gone", 60).token
    fps = {fp for _, fp in svc.store.get_fingerprints("gone")}
    check = svc.pad.check
    first = [True]

    def delete_then_check(*a, **k):  # DeleteUser lands between the window and its PAD
        if first[0]:
            first[0] = False
            svc.delete_user("gone")
        return check(*a, **k)

    svc.pad.check = delete_then_check
    x = eeg(1, 3, 44, 12)
    updates = list(svc.continuous(token, (signal_block(x[i:i + 80])
                                          for i in range(0, x.shape[0], 80))))
    assert updates[-1].state == "ended" and updates[-1].reason == "user_deleted"
    assert not first[0]
    left = [k[0] for k, e in pad_mod._STORED._d.items() if e.owner == "gone"]
    assert not left and not fps & {k[0] for k in pad_mod._STORED._d}
    # the same race on a stream its client closes after that window: the stream never
    # learns of the deletion, and the maintenance round drops what it put back
    svc.enroll("gone2", [signal_block(eeg(2, 3, 0, 40))])
    token = svc.store.create_session("gone2", 60).token
    first[0] = True
    svc.pad.check = lambda *a, **k: (first[0] and (first.__setitem__(0, False) or
                                                   svc.delete_user("gone2")), check(*a, **k))[1]
    x = eeg(2, 3, 44, 4)
    updates = list(svc.continuous(token, iter([signal_block(x)])))
    assert not first[0] and len(updates) == 1 and updates[0].state != "ended"
    assert [k for k, e in pad_mod._STORED._d.items() if e.owner == "gone2"]
    svc._forget_changed_elsewhere()
    assert not [k for k, e in pad_mod._STORED._d.items() if e.owner == "gone2"]


def test_the_sweep_looks_up_only_user_ids_of_the_process_wide_pad_caches(svc):
    """PAD's prepared-history caches are process-wide: a history kept under a key that is
    no user id (another detector's in the process, a tool's, test_pad's ints) made the
    maintenance sweep's template_stamps read fail (TypeError, so UNAVAILABLE) at every
    round, and no deleted user was dropped any more. Only user ids are looked up."""
    svc.enroll("held", [signal_block(eeg(1, 3, 0, 40))])
    fps = [fp for _, fp in svc.store.get_fingerprints("held")]
    svc.identify(signal_block(eeg(1, 3, 44, 8)))  # "held" now in the gallery
    probe = pad_mod.fingerprint(eeg(2, 3, 44, 8), SFREQ, CH16)
    pad_mod._replay_score(probe, fps, False, owner=12345)  # another history's key
    assert 12345 in svc.pad.history_keys()
    try:
        svc.store.delete_user("held")  # deleted by another replica
        assert svc._forget_changed_elsewhere() == 1
        assert "held" not in svc._gallery_state[0]
    finally:
        pad_mod._STORED.forget(12345)


def test_two_users_deleted_at_once_both_leave_identifys_gallery(svc, monkeypatch):
    """Dropping a deleted user's gallery row read the gallery, cut the row out and wrote
    the result back, unguarded: two DeleteUsers at once (an admin tool deleting in
    parallel) each cut their own row from the same gallery, and the last write put the
    other's row back, an embedding of a deleted user held in memory until the next
    Identify or the maintenance round. The cut is now made under a lock: the other
    DeleteUser's drop waits for it and cuts from its result."""
    import threading

    for user, subject in (("x", 1), ("y", 2), ("stays", 3)):
        svc.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
    svc.identify(signal_block(eeg(3, 3, 52, 8)))
    assert svc._gallery_state[0] == ["stays", "x", "y"]
    delete = np.delete
    other = []

    def delete_while_another_drops(*args, **kwargs):
        if not other:  # the other DeleteUser drops "y" while "x" is being cut out
            other.append(threading.Thread(target=svc._forget, args=("y",)))
            other[0].start()
            other[0].join(1.0)  # it completes here unless it has to wait for this cut
        return delete(*args, **kwargs)

    monkeypatch.setattr(np, "delete", delete_while_another_drops)
    svc._forget("x")
    other[0].join(30)
    assert not other[0].is_alive()
    ids, matrix = svc._gallery_state[0], svc._gallery_state[2]
    assert ids == ["stays"] and matrix.shape[0] == 1


def test_an_identify_that_read_the_store_before_a_delete_user_does_not_put_its_row_back(
        svc):
    """An Identify whose store read came before a DeleteUser's, and whose gallery was
    kept after DeleteUser dropped the user's row, put that row back: a deleted user's
    embedding in memory until the next Identify or the maintenance round. The gallery it
    keeps now leaves out the users dropped since it read the store; the call itself
    answers from what it read (the user existed then)."""
    for user, subject in (("gone", 1), ("stays", 2)):
        svc.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
    read = svc.store.read_gallery

    def read_then_deleted(*args, **kwargs):
        out = read(*args, **kwargs)
        svc.delete_user("gone")  # a concurrent DeleteUser, right after the read
        return out

    svc.store.read_gallery = read_then_deleted
    r = svc.identify(signal_block(eeg(1, 3, 52, 8)))
    assert [u for u, _ in r.candidates] == ["gone"]
    g = svc._gallery_state
    assert g[0] == ["stays"] and g[2].shape[0] == 1 and len(g[1]) == 1
    svc.store.read_gallery = read
    assert [u for u, _ in svc.identify(signal_block(eeg(2, 3, 52, 8))).candidates] == [
        "stays"]
    assert svc.identify(signal_block(eeg(1, 3, 60, 8))).candidates == []


def test_a_gallery_read_before_more_deletions_than_are_remembered_is_not_kept(svc):
    """The service remembers the last rows it dropped (a bounded number): a gallery built
    from a store read made before more deletions than that is not kept at all, so it
    cannot put back a row it no longer knows was dropped."""
    import collections

    for user, subject in (("a", 1), ("b", 2), ("stays", 3)):
        svc.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
    svc.identify(signal_block(eeg(3, 3, 52, 8)))
    svc.enroll("new", [signal_block(eeg(4, 3, 0, 40))])  # so the next call rebuilds
    svc._gallery_cut = collections.deque(maxlen=1)
    read = svc.store.read_gallery

    def read_then_deleted(*args, **kwargs):
        out = read(*args, **kwargs)
        svc.delete_user("a")
        svc.delete_user("b")
        return out

    svc.store.read_gallery = read_then_deleted
    svc.identify(signal_block(eeg(3, 3, 52, 8)))
    assert svc._gallery_state[0] == ["stays"]  # the gallery as the drops left it
    svc.store.read_gallery = read
    svc.identify(signal_block(eeg(3, 3, 52, 8)))
    assert svc._gallery_state[0] == ["new", "stays"]


def test_an_identify_racing_delete_user_leaves_no_pad_history_of_the_user(svc):
    """With PAD on, Identify judges its probe against each matched user's stored history,
    which PAD prepares and keeps by user; a DeleteUser between Identify's read of that
    history and its check dropped the prepared history before the check kept it again:
    a deleted user's spectra in memory until the maintenance round. It is dropped."""
    svc.enroll("gone", [signal_block(eeg(1, 3, 0, 40))])
    read = svc.store.get_fingerprints

    def read_then_deleted(user_id):
        out = read(user_id)
        svc.delete_user(user_id)  # a concurrent DeleteUser, right after the read
        return out

    svc.store.get_fingerprints = read_then_deleted
    r = svc.identify(signal_block(eeg(1, 3, 52, 8)))
    assert [u for u, _ in r.candidates] == ["gone"]
    assert not [k for k in pad_mod._SLABS._d if k[0] == "gone"]


@pytest.mark.parametrize("with_pad", [True, False], ids=["pad-on", "pad-off"])
def test_delete_user_drops_the_fingerprints_enroll_compared_its_signals_with(
        tmp_path, model_path, with_pad):
    """Enroll with several signals compares their fingerprints with one another (a copy
    of one is refused, PAD on or off); that comparison prepared them in PAD's
    process-wide cache tagged with no user, so DeleteUser (or, with PAD off, nothing at
    all) dropped them: a deleted user's fingerprints stayed in memory until 64 MB of
    others evicted them."""
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}", bytes(range(32)))
    pipe = make_pipeline(model_path)
    det = PresentationAttackDetector(list(pipe.model.ch_names)) if with_pad else None
    svc = AuthService(store, pipe, Config(data_dir=str(tmp_path), require_device_proof=False),
                      metrics=Metrics(CollectorRegistry()), pad=det)
    try:
        blocks = [signal_block(eeg(1, 3, 0, 30)), signal_block(eeg(1, 3, 30, 30))]
        fdet = det or svc._physiology_detector()
        fps = {fp for _, fp in fdet.block_fingerprints(blocks)}
        svc.enroll("gone", blocks)
        svc.delete_user("gone")
        assert not fps & {k[0] for k in pad_mod._STORED._d}
    finally:
        store.close()
