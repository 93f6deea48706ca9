"""Several replicas on one PostgreSQL store: what one process keeps in memory follows
what another one changed."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from _server_support import eeg, make_pipeline, signal_block
from prometheus_client import CollectorRegistry

from nacf_core import pad as pad_mod
from nacf_core.config import Config
from nacf_core.errors import NotFound
from nacf_core.metrics import Metrics
from nacf_core.pad import PresentationAttackDetector
from nacf_core.service import AuthService
from nacf_core.store import open_store

PG_DSN = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def replicas(tmp_path, model_path):
    """Two services on one PostgreSQL schema, each with its own store object, as two
    `nacf serve` processes have. Only ``b`` runs PAD: its prepared PAD histories live in
    a process-wide cache, which ``a``'s DeleteUser would empty in this one test process
    (in production ``a`` is another process and cannot)."""
    schema = f"nacf_t_{uuid.uuid4().hex[:12]}"
    url = f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}"
    stores, out = [], []
    try:
        for pad in (False, True):
            store = open_store(url, bytes(range(32)))
            stores.append(store)
            pipe = make_pipeline(model_path)
            cfg = Config(data_dir=str(tmp_path), rate_limit_per_s=1000, rate_limit_burst=1000,
                         require_device_proof=False)
            out.append(AuthService(store, pipe, cfg, metrics=Metrics(CollectorRegistry()),
                                   pad=PresentationAttackDetector(list(pipe.model.ch_names))
                                   if pad else None))
        yield tuple(out)
    finally:
        for store in stores:
            store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.postgres
def test_a_user_deleted_or_re_enrolled_on_another_replica_leaves_no_biometric_data_here(
        replicas):
    """DeleteUser on replica A dropped only A's copies: replica B kept the user's decoded
    template, its gallery row, its prepared PAD history and its decrypted fingerprints,
    until a call for that user on B, or for ever (B saw NOT_FOUND and kept them all the
    same). So did it after a deletion and a re-enrollment of the id with another
    person's EEG. B's maintenance round now drops them; another user's stay."""
    a, b = replicas
    for user, subject in (("gone", 1), ("again", 2), ("stays", 3)):
        b.enroll(user, [signal_block(eeg(subject, 3, 0, 40))])
        assert b.authenticate(user, signal_block(eeg(subject, 3, 44, 8))).accepted
    b.identify(signal_block(eeg(1, 3, 52, 8)))

    def held(user):
        g = b._gallery_state
        fps = [e for e in b.store._fp_plain.values() if e[0] == user]
        return (user in b._templates, g is not None and user in g[0],
                any(k[0] == user for k in pad_mod._SLABS._d), bool(fps))

    def old_fingerprints(user):  # plaintexts of rows the store no longer has
        live = {r[0] for r in b.store._run(lambda tx: tx.query(
            "SELECT id FROM pad_fingerprints WHERE user_id = ?", (user,)), write=False)}
        return [rid for rid, e in b.store._fp_plain.items() if e[0] == user and rid not in live]

    for user in ("gone", "again", "stays"):
        assert held(user) == (True, True, True, True)
    a.delete_user("gone")
    a.delete_user("again")
    a.enroll("again", [signal_block(eeg(4, 3, 0, 40))])  # the id again, another person
    b.maintenance(force=True)

    assert held("gone") == (False, False, False, False)
    g = b._gallery_state
    assert "again" not in b._templates and (g is None or "again" not in g[0])
    assert not any(k[0] == "again" for k in pad_mod._SLABS._d)
    assert old_fingerprints("again") == []
    assert held("stays") == (True, True, True, True)
    # and B answers from the store as it is
    assert not b.authenticate("again", signal_block(eeg(2, 3, 60, 8))).accepted
    assert b.authenticate("again", signal_block(eeg(4, 3, 44, 8))).accepted
    assert [u for u, _ in b.identify(signal_block(eeg(4, 3, 52, 8))).candidates] == ["again"]
    assert b.authenticate("stays", signal_block(eeg(3, 3, 60, 8))).accepted


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def pad_replicas(request, tmp_path, model_path):
    """Two services with PAD on one store, each with its own store object, as two
    `nacf serve` processes have: on one SQLite file, or on one PostgreSQL schema."""
    schema = f"nacf_t_{uuid.uuid4().hex[:12]}"
    url = (f"sqlite:///{tmp_path / 'n.db'}" if request.param == "sqlite"
           else f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}")
    stores, out = [], []
    try:
        for _ in range(2):
            store = open_store(url, bytes(range(32)))
            stores.append(store)
            pipe = make_pipeline(model_path)
            cfg = Config(data_dir=str(tmp_path), rate_limit_per_s=1000, rate_limit_burst=1000,
                         require_device_proof=False)
            out.append(AuthService(store, pipe, cfg, metrics=Metrics(CollectorRegistry()),
                                   pad=PresentationAttackDetector(list(pipe.model.ch_names))))
        yield tuple(out)
    finally:
        for store in stores:
            store.close()
        if request.param != "sqlite":
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _chunks(x, seconds=0.5):
    n = int(seconds * 160)
    return [signal_block(x[i:i + n]) for i in range(0, x.shape[0], n)]


def test_a_recording_replayed_on_a_stream_to_another_replica_ends_the_session(pad_replicas):
    """A stolen session token and the wearer's recorded ContinuousAuthenticate signal,
    replayed on a new stream that reaches another replica (two `nacf serve` on one store,
    as deploy/k8s runs them; a client reconnecting lands on either): the replay history
    of the session's streamed windows was kept in each process, so the other replica
    started with none, verified every replayed window and renewed the session. The
    history is now kept in the store: the other replica ends the session (``replay``)."""
    a, b = pad_replicas
    a.enroll("rr1", [signal_block(eeg(1, 3, 0, 40))])
    win = a.rec.window_s
    s = a.store.create_session("rr1", 600)
    recorded = eeg(1, 7, 0, 3 * win)
    first = list(a.continuous(s.token, _chunks(recorded)))
    assert [u.state for u in first] == ["verified"] * 3, first
    again = list(b.continuous(s.token, _chunks(recorded)))  # replayed, on replica B
    assert (again[-1].state, again[-1].reason) == ("ended", "replay"), again
    assert [u.state for u in again[:-1]] == [], again  # its first window already
    for svc in (a, b):
        v = svc.validate_session(s.token)
        assert (v.valid, v.reason) == (False, "replay")
    # new signal streamed on another session, alternating replicas, is verified
    s2 = a.store.create_session("rr1", 600)
    for i, svc in enumerate((b, a, b)):
        ups = list(svc.continuous(s2.token, _chunks(eeg(1, 7, 20 + i * 3 * win, 3 * win))))
        assert [u.state for u in ups] == ["verified"] * 3, (i, ups)


def test_delete_user_answered_not_found_here_drops_what_this_replica_held(pad_replicas):
    """A DeleteUser that reaches replica B after replica A deleted the user (a retry
    through the load balancer, two admins) is NOT_FOUND; B kept the user's decoded
    template, gallery row and prepared PAD history all the same, until its maintenance
    round, though the admin had just been told the user is gone. It drops them now,
    and the store object's decrypted fingerprints of it."""
    a, b = pad_replicas
    b.enroll("gone", [signal_block(eeg(1, 3, 0, 40))])
    assert b.authenticate("gone", signal_block(eeg(1, 3, 44, 8))).accepted
    b.identify(signal_block(eeg(1, 3, 52, 8)))
    a.delete_user("gone")
    with pytest.raises(NotFound):
        b.delete_user("gone")
    g = b._gallery_state
    assert "gone" not in b._templates and (g is None or "gone" not in g[0])
    assert not any(k[0] == "gone" for k in pad_mod._SLABS._d)
    assert not [e for e in b.store._fp_plain.values() if e[0] == "gone"]


@pytest.mark.postgres
def test_one_device_proof_sent_to_two_replicas_at_once_is_accepted_once(replicas):
    """The same proof (a request duplicated by a proxy, or replayed by someone who saw it)
    reaching two replicas at once: both verify it, both record its nonce in the shared
    store; exactly one call is decided and opens a session, the other is refused as a
    replay, audited and counted there. Repeated over several proofs, started together."""
    import threading
    import time

    from nacf_core.errors import Unauthenticated
    from nacf_core.service import DeviceProof, device_proof

    a, b = replicas
    for s in (a, b):
        s.config.require_device_proof = True
    a.enroll("n1", [signal_block(eeg(1, 3, 0, 40))])
    secret = a.register_device("n1", "hs-n1")
    for i in range(4):
        blk = signal_block(eeg(1, 3, 44 + 8 * i, 8))
        ts = int(time.time())
        proof = DeviceProof("hs-n1", str(ts), device_proof(secret, "n1", "hs-n1", ts, blk.raw))
        go = threading.Barrier(2)
        out: list = [None, None]

        def run(k, svc):
            go.wait()
            try:
                out[k] = svc.authenticate("n1", blk, proof)
            except Exception as e:  # noqa: BLE001 - compared below
                out[k] = e

        threads = [threading.Thread(target=run, args=(k, s)) for k, s in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        won = [r for r in out if not isinstance(r, Exception)]
        lost = [r for r in out if isinstance(r, Exception)]
        assert len(won) == 1 and won[0].accepted and won[0].session_token, out
        assert len(lost) == 1 and isinstance(lost[0], Unauthenticated), out
        assert "replay" in str(lost[0])
    counts = [s.metrics.registry.get_sample_value(
        "nacfauth_failed_auth_attempts_total", {"reason": "device_proof_replayed"}) or 0
        for s in (a, b)]
    assert sum(counts) == 4, counts
    assert a.store.count_active_sessions() == 4
