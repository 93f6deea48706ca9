"""Generated sequences of store calls against a model of what each should leave, on
SQLite and PostgreSQL (hypothesis.stateful): enrolments, deletions, device bindings,
sessions opened, ended, renewed and swept, failures counted, reset and lifted,
authentications finished, token buckets, proof nonces, stream windows and the purges,
interleaved in any order while a clock advances.

After every step: no row is left of a user that is gone (sessions, devices, templates,
PAD fingerprints, stream windows, lockouts, proof nonces of its devices), no stream
window of a purged session; the active-sessions count, the lockout state of every user,
the users locked now, each user's template version and the ListUsers pages (each user
once, in order) are the model's."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nacf_core.errors import AlreadyExists, FailedPrecondition, NotFound

SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    derandomize=True, suppress_health_check=list(HealthCheck))
T0 = 1_790_000_000.0
USERS = ["alice", "bob", "carol"]
DEVICES = ["hs-1", "hs-2", "hs-3"]
MAX_FAILURES, LOCK_S = 3, 50.0
RATE, BURST = 0.5, 3.0
KEEP = 2
WIPE = ("session_windows", "device_nonces", "pad_fingerprints", "sessions", "devices",
        "lockouts", "templates", "users", "auth_attempts", "rate_buckets")


class Sess:
    def __init__(self, token, user, created, expires, device):
        self.token, self.user, self.device = token, user, device
        self.created, self.expires = created, expires
        self.ended_at: float | None = None
        self.gone = False  # row deleted (its user deleted, or purged)
        self.windows = 0


class StoreModel(RuleBasedStateMachine):
    store = None  # set by the test

    def __init__(self):
        super().__init__()
        s = self.store
        s._run(lambda tx: [tx.execute(f"DELETE FROM {t}") for t in WIPE])
        self.t = T0
        self.users: dict[str, int] = {}           # user -> template version
        self.devices: dict[str, str] = {}         # device -> user
        self.sessions: list[Sess] = []
        self.lock: dict[str, list] = {}           # user -> [failures, locked_until]
        self.nonces: dict[tuple, float] = {}      # (device, nonce) -> expires_at
        self.bucket: list | None = None           # [tokens, updated_at]
        self.attempts: list[float] = []           # audit rows' ts

    # ------------------------------------------------------------------ helpers
    def _active(self, s: Sess) -> bool:
        return not s.gone and s.ended_at is None and s.expires > self.t

    def _failure(self, user: str, max_failures: int, lock_s: float) -> tuple:
        f, until = self.lock.get(user, [0, None])
        if until is not None and until <= self.t:
            f, until = 0, None
        f += 1
        if f >= max_failures and until is None:
            until = self.t + lock_s
        self.lock[user] = [f, until]
        return f, until

    def _drop_user(self, user: str) -> int:
        ended = 0
        for s in self.sessions:
            if s.user == user and not s.gone:
                ended += s.ended_at is None
                s.gone = True
        for d in [d for d, u in self.devices.items() if u == user]:
            del self.devices[d]
            for k in [k for k in self.nonces if k[0] == d]:
                del self.nonces[k]
        self.lock.pop(user, None)
        del self.users[user]
        return ended

    def _sess(self, i: int) -> Sess:
        return self.sessions[i % len(self.sessions)]

    # ------------------------------------------------------------------ rules
    @rule(dt=st.sampled_from([0.5, 1.0, 7.0, 30.0, 120.0]))
    def tick(self, dt):
        self.t += dt

    @rule(user=st.sampled_from(USERS), create_only=st.booleans())
    def put_template(self, user, create_only):
        if create_only and user in self.users:
            with pytest.raises(AlreadyExists):
                self.store.put_template(user, b"tmpl", "m-1", create_only=True, now=self.t)
            return
        v = self.store.put_template(user, b"tmpl-" + user.encode(), "m-1",
                                    enroll_fingerprints=[b"enroll-fp"],
                                    create_only=create_only, now=self.t)
        assert v == self.users.get(user, 0) + 1
        self.users[user] = v

    @rule(user=st.sampled_from(USERS))
    def delete_user(self, user):
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.delete_user(user, now=self.t)
            return
        ended = self.store.delete_user(user, now=self.t)
        assert len(ended) == self._drop_user(user)

    @rule(user=st.sampled_from(USERS), device=st.sampled_from(DEVICES))
    def register_device(self, user, device):
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.register_device(user, device, "s" * 20, now=self.t)
        elif self.devices.get(device, user) != user:
            with pytest.raises(AlreadyExists):
                self.store.register_device(user, device, "s" * 20, now=self.t)
        else:
            rec = self.store.register_device(user, device, "s" * 20, now=self.t)
            assert rec.replaced == (device in self.devices)
            self.devices[device] = user

    @rule(user=st.sampled_from(USERS), ttl=st.sampled_from([5.0, 60.0, 600.0]),
          device=st.sampled_from([None, *DEVICES]))
    def create_session(self, user, ttl, device):
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.create_session(user, ttl, device_id=device, now=self.t)
            return
        s = self.store.create_session(user, ttl, device_id=device, now=self.t)
        self.sessions.append(Sess(s.token, user, self.t, self.t + ttl, device))

    @precondition(lambda self: self.sessions)
    @rule(i=st.integers(0, 100))
    def end_session(self, i):
        s = self._sess(i)
        if s.gone:
            with pytest.raises(NotFound):
                self.store.end_session(s.token, now=self.t)
            return
        got = self.store.end_session(s.token, now=self.t)
        if s.ended_at is None:
            s.ended_at = self.t if s.expires > self.t else s.expires
        assert got.ended_at == s.ended_at

    @precondition(lambda self: self.sessions)
    @rule(i=st.integers(0, 100), ttl=st.sampled_from([5.0, 60.0, 900.0]),
          max_age=st.sampled_from([None, 100.0, 1000.0]))
    def renew_session(self, i, ttl, max_age):
        s = self._sess(i)
        if s.gone:
            with pytest.raises(NotFound):
                self.store.renew_session(s.token, ttl, max_age_s=max_age, now=self.t)
            return
        if not self._active(s):
            with pytest.raises(FailedPrecondition):
                self.store.renew_session(s.token, ttl, max_age_s=max_age, now=self.t)
            return
        new = self.t + ttl if max_age is None else min(self.t + ttl, s.created + max_age)
        s.expires = max(s.expires, new)
        got = self.store.renew_session(s.token, ttl, max_age_s=max_age, now=self.t)
        assert got.expires_at == s.expires

    @rule(user=st.sampled_from(USERS), device=st.sampled_from([None, *DEVICES]))
    def end_user_sessions(self, user, device):
        ended = self.store.end_user_sessions(user, "admin", device_id=device, now=self.t)
        want = [s for s in self.sessions if s.user == user and self._active(s)
                and (device is None or s.device == device)]
        for s in want:
            s.ended_at = self.t
        assert sorted(e.session_id for e in ended) == sorted(
            self.store.get_session(s.token).session_id for s in want)

    @rule()
    def expire_sessions(self):
        got = self.store.expire_sessions(now=self.t)
        n = 0
        for s in self.sessions:
            if not s.gone and s.ended_at is None and s.expires <= self.t:
                s.ended_at = s.expires
                n += 1
        assert len(got) == n

    @rule(older=st.sampled_from([0.0, 10.0, 100.0, 1000.0]))
    def purge_sessions(self, older):
        cut = self.t - older
        n = 0
        for s in self.sessions:
            if not s.gone and s.ended_at is not None and s.ended_at < cut:
                s.gone = True
                n += 1
        assert self.store.purge_sessions(cut) == n

    @precondition(lambda self: self.sessions)
    @rule(i=st.integers(0, 100))
    def add_session_window(self, i):
        s = self._sess(i)
        sid = __import__("hashlib").sha256(s.token.encode()).hexdigest()
        got = self.store.add_session_window(sid, s.user, b"window", keep=KEEP, now=self.t)
        if self._active(s):
            assert got is not None
            s.windows = min(KEEP, s.windows + 1)
        else:
            assert got is None

    @rule(user=st.sampled_from(USERS))
    def register_failure(self, user):
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.register_failure(user, MAX_FAILURES, LOCK_S, now=self.t)
            return
        got = self.store.register_failure(user, MAX_FAILURES, LOCK_S, now=self.t)
        assert got == self._failure(user, MAX_FAILURES, LOCK_S)

    @rule(user=st.sampled_from(USERS))
    def reset_failures(self, user):
        self.store.reset_failures(user)
        if user in self.lock:
            self.lock[user][0] = 0

    @rule(user=st.sampled_from(USERS))
    def unlock_user(self, user):
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.unlock_user(user)
            return
        got = self.store.unlock_user(user)
        f, until = self.lock.pop(user, [0, None])
        assert (got.failures, got.locked_until) == (f, until)

    @rule(user=st.sampled_from(USERS), accepted=st.booleans(),
          device=st.sampled_from([None, *DEVICES]), probe=st.booleans())
    def finish_authentication(self, user, accepted, device, probe):
        call = lambda: self.store.finish_authentication(  # noqa: E731
            user, accepted, score=0.5, reason="r", peer="p", method="Authenticate",
            duration_s=0.01, session_ttl_s=60.0, device_id=device,
            max_failures=MAX_FAILURES, lock_seconds=LOCK_S,
            probe_fingerprint=b"probe" if probe else None, now=self.t)
        if user not in self.users:
            with pytest.raises(NotFound):
                call()
            return
        out = call()
        self.attempts.append(self.t)
        f, until = self.lock.get(user, [0, None])
        if accepted and until is not None and until > self.t:
            assert out.locked and out.session is None and (out.failures, out.locked_until) \
                == (f, until)
        elif accepted:
            if user in self.lock:
                self.lock[user][0] = 0
            assert out.session is not None and not out.locked
            self.sessions.append(Sess(out.session.token, user, self.t, self.t + 60.0, device))
        else:
            assert (out.failures, out.locked_until) == self._failure(user, MAX_FAILURES,
                                                                     LOCK_S)

    @rule(want=st.integers(1, 3), back=st.sampled_from([0.0, 1.0]))
    def take_tokens(self, want, back):
        tokens, updated = self.bucket or [BURST, self.t]
        tokens = min(BURST, tokens + max(0.0, self.t - updated) * RATE + back)
        got = min(want, math.floor(tokens)) if tokens >= 1.0 else 0
        self.bucket = [tokens - got, self.t]
        assert self.store.take_tokens("client", RATE, BURST, want, back, now=self.t) == got

    @rule()
    def purge_rate_buckets(self):
        n = self.store.purge_rate_buckets(RATE, BURST, now=self.t)
        if self.bucket is not None:
            t = self.t - self.store.rate_bucket_idle_s
            tokens, updated = self.bucket
            if updated <= t and tokens + (t - updated) * RATE >= BURST:
                self.bucket = None
                assert n == 1
                return
        assert n == 0

    @rule(device=st.sampled_from(DEVICES), nonce=st.sampled_from(["n1", "n2"]),
          ttl=st.sampled_from([1.0, 60.0]))
    def use_nonce(self, device, nonce, ttl):
        if device not in self.devices:
            return  # the service asks only for a registered device
        for k in [k for k, e in self.nonces.items() if e <= self.t]:
            del self.nonces[k]
        fresh = (device, nonce) not in self.nonces
        if fresh:
            self.nonces[(device, nonce)] = self.t + ttl
        assert self.store.use_nonce(device, nonce, self.t + ttl, now=self.t) == fresh

    @rule(older=st.sampled_from([0.0, 60.0]))
    def purge_attempts(self, older):
        cut = self.t - older
        n = sum(ts < cut for ts in self.attempts)
        self.attempts = [ts for ts in self.attempts if ts >= cut]
        assert self.store.purge_attempts(cut) == n

    # ------------------------------------------------------------------ invariants
    @invariant()
    def no_orphan_rows(self):
        def fn(tx):
            out = {}
            for table in ("templates", "devices", "sessions", "pad_fingerprints",
                          "lockouts", "session_windows"):
                out[table] = tx.query(f"SELECT user_id FROM {table} WHERE user_id NOT IN "
                                      "(SELECT user_id FROM users)")
            out["windows of purged sessions"] = tx.query(
                "SELECT session_id FROM session_windows WHERE session_id NOT IN (SELECT "
                "token_hash FROM sessions)")
            out["nonces"] = tx.query("SELECT device_id FROM device_nonces WHERE device_id "
                                     "NOT IN (SELECT device_id FROM devices)")
            out["windows"] = tx.query("SELECT COUNT(*) FROM session_windows")
            return out
        got = self.store._run(fn, write=False)
        n_windows = got.pop("windows")[0][0]
        assert all(not rows for rows in got.values()), got
        assert n_windows == sum(s.windows for s in self.sessions if not s.gone)

    @invariant()
    def sessions_counted_as_the_model(self):
        want = sum(self._active(s) for s in self.sessions)
        assert self.store.count_active_sessions(self.t) == want

    @invariant()
    def lockouts_as_the_model(self):
        for u in USERS:
            got = self.store.get_lockout(u)
            f, until = self.lock.get(u, [0, None])
            assert (got.failures, got.locked_until) == (f, until), u
        assert self.store.locked_user_ids(self.t) == {
            u for u, (_, until) in self.lock.items() if until is not None and until > self.t}

    @invariant()
    def users_listed_once_in_pages(self):
        seen, token = [], ""
        while True:
            page = self.store.list_users(page_size=1, page_token=token)
            seen += [(u.user_id, u.template_version) for u in page.users]
            token = page.next_page_token
            if not token:
                break
        assert seen == sorted(self.users.items())


def test_store_calls_in_any_order_leave_what_the_model_says(module_store):
    StoreModel.store = module_store
    run_state_machine_as_test(StoreModel, settings=SETTINGS)
