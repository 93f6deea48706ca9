"""Generated sequences of store calls against a model of what each should leave, on
SQLite and PostgreSQL (hypothesis.stateful): enrolments, deletions, device bindings,
sessions opened, ended, renewed and swept, failures counted, reset and lifted,
authentications finished, token buckets, proof nonces, stream windows and the purges,
interleaved in any order while a clock advances; ids at the store's limits (256
characters, 4-byte UTF-8); and two calls at once on two threads (DeleteUser racing a
write for the same user, the same call twice), whose results must be those of one order.
The rules check their own preconditions (no ``@precondition``): after a race the model's
state depends on which call won, and hypothesis needs its draws not to.

After every step: no row is left of a user that is gone (sessions, devices, templates,
PAD fingerprints, stream windows, lockouts, proof nonces of its devices), no stream
window of a purged session; the active-sessions count, the lockout state of every user,
the users locked now, each user's template version and the ListUsers pages (each user
once, in order) are the model's."""

from __future__ import annotations

import math
import os
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from nacf_core.errors import AlreadyExists, FailedPrecondition, NotFound

SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    derandomize=True, suppress_health_check=list(HealthCheck))
if int(os.environ.get("NACF_FUZZ_EXAMPLES", "0") or 0) > 0:  # opt-in, see tests/conftest.py
    SETTINGS = settings(SETTINGS, derandomize=False, database=None,
                        max_examples=SETTINGS.max_examples * int(os.environ["NACF_FUZZ_EXAMPLES"]))
T0 = 1_790_000_000.0
#: ids at the store's limits too: non-ASCII (a 4-byte UTF-8 character; ordering by code
#: point and by UTF-8 byte agree), 256 characters (the most the store takes; 1 024 bytes)
USERS = ["alice", "bob", "Ω-😀", "é" * 3 + "😀" * 253]
DEVICES = ["hs-1", "hs-😀", "d" * 256]
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

    @rule(i=st.integers(0, 100))
    def end_session(self, i):
        if not self.sessions:
            return
        s = self._sess(i)
        if s.gone:
            with pytest.raises(NotFound):
                self.store.end_session(s.token, now=self.t)
            return
        got = self.store.end_session(s.token, now=self.t)
        if s.ended_at is None:
            s.ended_at = self.t if s.expires > self.t else s.expires
        assert got.ended_at == s.ended_at

    @rule(i=st.integers(0, 100), ttl=st.sampled_from([5.0, 60.0, 900.0]),
          max_age=st.sampled_from([None, 100.0, 1000.0]))
    def renew_session(self, i, ttl, max_age):
        if not self.sessions:
            return
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

    @rule(i=st.integers(0, 100))
    def add_session_window(self, i):
        if not self.sessions:
            return
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

    @rule(device=st.sampled_from(DEVICES), nonce=st.sampled_from(["n1", "n2", "ñ" * 256]),
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

    # ------------------------------------------------------------------ two at once
    def _both(self, f, g):
        """Run ``f`` and ``g`` on two threads at once (as two replicas, or two calls of
        one server, do); return what each returned or raised."""
        out = [None, None]
        go = threading.Barrier(2)

        def run(i, fn):
            go.wait()
            try:
                out[i] = ("ok", fn())
            except Exception as e:  # noqa: BLE001 - compared below
                out[i] = ("err", e)

        ts = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate((f, g))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not any(t.is_alive() for t in ts), "a store call hung"
        return out

    @rule(i=st.integers(0, 100), other=st.sampled_from(
        ["create_session", "register_device", "register_failure", "finish_ok", "finish_fail",
         "add_window", "unlock", "put_template"]), device=st.sampled_from(DEVICES))
    def delete_user_racing(self, i, other, device):
        """DeleteUser and another call for the same user at once: the other call happens
        wholly before the deletion (and is undone by it) or finds the user gone."""
        if not self.users:
            return
        user = sorted(self.users)[i % len(self.users)]
        t = self.t
        if other == "register_device" and self.devices.get(device, user) != user:
            return  # bound to another user: AlreadyExists whatever the order
        active = [s for s in self.sessions if s.user == user and self._active(s)]
        open_ = sum(1 for s in self.sessions if s.user == user and not s.gone
                    and s.ended_at is None)
        st_ = self.store
        calls = {
            "create_session": lambda: st_.create_session(user, 60.0, now=t),
            "register_device": lambda: st_.register_device(user, device, "s" * 20, now=t),
            "register_failure": lambda: st_.register_failure(user, MAX_FAILURES, LOCK_S,
                                                             now=t),
            "finish_ok": lambda: st_.finish_authentication(
                user, True, score=0.5, reason="r", peer="p", method="Authenticate",
                duration_s=0.01, session_ttl_s=60.0, probe_fingerprint=b"probe", now=t),
            "finish_fail": lambda: st_.finish_authentication(
                user, False, score=0.5, reason="r", peer="p", method="Authenticate",
                duration_s=0.01, max_failures=MAX_FAILURES, lock_seconds=LOCK_S,
                probe_fingerprint=b"probe", now=t),
            "add_window": lambda: st_.add_session_window(
                __import__("hashlib").sha256(active[i % len(active)].token.encode())
                .hexdigest(), user, b"window", keep=KEEP, now=t) if active else None,
            "unlock": lambda: st_.unlock_user(user),
            "put_template": lambda: st_.put_template(user, b"tmpl-again", "m-1", now=t),
        }
        (dk, ended), (ok, got) = self._both(lambda: st_.delete_user(user, now=t),
                                            calls[other])
        assert dk == "ok", ended
        if ok == "err":
            assert isinstance(got, NotFound), got  # it came after the deletion
        before = ok == "ok" and other != "put_template"
        new_session = None
        if before and other in ("create_session", "finish_ok"):
            new_session = got if other == "create_session" else got.session
        if new_session is not None:  # opened before the deletion, which ended it
            self.sessions.append(Sess(new_session.token, user, t, t + 60.0, None))
        if ok == "ok" and other.startswith("finish"):
            self.attempts.append(t)
        want_ended = open_ + (new_session is not None)
        if other == "put_template" and ok == "ok" and got == self.users[user] + 1:
            # the update came first, then the deletion
            self._drop_user(user)
            assert len(ended) == want_ended
        else:
            assert len(ended) == want_ended
            self._drop_user(user)
            if other == "put_template":  # after the deletion: a new enrolment
                assert ok == "ok" and got == 1, (ok, got)
                self.users[user] = 1
        for s in self.sessions:
            if s.gone:
                s.windows = 0

    @rule(i=st.integers(0, 100), kind=st.sampled_from(
        ["register_failure", "finish_ok", "put_template", "take_tokens", "use_nonce",
         "end_session", "renew_session", "register_device"]),
          w1=st.integers(1, 3), w2=st.integers(1, 3))
    def same_call_twice_at_once(self, i, kind, w1, w2):
        """The same call twice at once: what they return is what one order of the two
        would have returned, and the rows are what that order leaves."""
        if not self.users:
            return
        users = sorted(self.users)
        user = users[i % len(users)]
        t, st_ = self.t, self.store
        if kind == "register_failure":
            (k1, a), (k2, b) = self._both(
                *[lambda: st_.register_failure(user, MAX_FAILURES, LOCK_S, now=t)] * 2)
            assert k1 == k2 == "ok", (a, b)
            r1 = self._failure(user, MAX_FAILURES, LOCK_S)
            r2 = self._failure(user, MAX_FAILURES, LOCK_S)
            assert sorted([a, b], key=repr) == sorted([r1, r2], key=repr)
        elif kind == "finish_ok":
            def call():
                return st_.finish_authentication(
                    user, True, score=0.5, reason="r", peer="p", method="Authenticate",
                    duration_s=0.01, session_ttl_s=60.0, now=t)
            (k1, a), (k2, b) = self._both(call, call)
            assert k1 == k2 == "ok", (a, b)
            self.attempts += [t, t]
            f, until = self.lock.get(user, [0, None])
            for out in (a, b):
                if until is not None and until > t:
                    assert out.locked and out.session is None
                else:
                    assert out.session is not None and not out.locked
                    self.sessions.append(Sess(out.session.token, user, t, t + 60.0, None))
            if not (until is not None and until > t) and user in self.lock:
                self.lock[user][0] = 0
        elif kind == "put_template":
            new = [u for u in USERS if u not in self.users]
            if new:  # an enrolment of a new user twice at once: one wins
                u = new[i % len(new)]
                (k1, a), (k2, b) = self._both(*[lambda: st_.put_template(
                    u, b"tmpl", "m-1", create_only=True, now=t)] * 2)
                assert sorted([k1, k2]) == ["err", "ok"], (a, b)
                assert isinstance(a if k1 == "err" else b, AlreadyExists)
                assert (a if k1 == "ok" else b) == 1
                self.users[u] = 1
            else:
                v = self.users[user]
                (k1, a), (k2, b) = self._both(*[lambda: st_.put_template(
                    user, b"tmpl-u", "m-1", now=t)] * 2)
                assert k1 == k2 == "ok" and sorted([a, b]) == [v + 1, v + 2], (a, b)
                self.users[user] = v + 2
        elif kind == "take_tokens":
            (k1, a), (k2, b) = self._both(
                lambda: st_.take_tokens("client", RATE, BURST, w1, 0.0, now=t),
                lambda: st_.take_tokens("client", RATE, BURST, w2, 0.0, now=t))
            assert k1 == k2 == "ok", (a, b)
            tokens, updated = self.bucket or [BURST, t]
            tokens = min(BURST, tokens + max(0.0, t - updated) * RATE)

            def grant(have, want):
                return min(want, math.floor(have)) if have >= 1.0 else 0
            orders = []
            g1 = grant(tokens, w1)
            orders.append((g1, grant(tokens - g1, w2)))
            g2 = grant(tokens, w2)
            orders.append((grant(tokens - g2, w1), g2))
            assert (a, b) in orders, (a, b, orders)
            self.bucket = [tokens - a - b, t]
        elif kind == "use_nonce":
            mine = [d for d, u in self.devices.items()]
            if not mine:
                return
            d = mine[i % len(mine)]
            for k in [k for k, e in self.nonces.items() if e <= t]:
                del self.nonces[k]
            fresh = (d, "n1") not in self.nonces
            (k1, a), (k2, b) = self._both(*[lambda: st_.use_nonce(d, "n1", t + 60.0,
                                                                  now=t)] * 2)
            assert k1 == k2 == "ok", (a, b)
            assert sorted([a, b]) == ([False, True] if fresh else [False, False])
            self.nonces.setdefault((d, "n1"), t + 60.0)
        elif kind in ("end_session", "renew_session"):
            live = [s for s in self.sessions if not s.gone]
            if not live:
                return
            s = live[i % len(live)]
            if kind == "end_session":
                (k1, a), (k2, b) = self._both(*[lambda: st_.end_session(s.token, now=t)] * 2)
                assert k1 == k2 == "ok", (a, b)
                if s.ended_at is None:
                    # (its stream windows stay, as in end_session: README, session_windows)
                    s.ended_at = t if s.expires > t else s.expires
                assert a.ended_at == b.ended_at == s.ended_at
            else:
                active = self._active(s)
                (k1, a), (k2, b) = self._both(*[lambda: st_.renew_session(
                    s.token, 60.0, now=t)] * 2)
                if not active:
                    assert isinstance(a, FailedPrecondition) and isinstance(
                        b, FailedPrecondition), (a, b)
                    return
                assert k1 == k2 == "ok", (a, b)
                s.expires = max(s.expires, t + 60.0)
                assert a.expires_at == b.expires_at == s.expires
        elif kind == "register_device":
            free = [d for d in DEVICES if d not in self.devices]
            if len(users) < 2 or not free:
                return
            d = free[i % len(free)]
            u1, u2 = users[0], users[1]
            (k1, a), (k2, b) = self._both(
                lambda: st_.register_device(u1, d, "s" * 20, now=t),
                lambda: st_.register_device(u2, d, "s" * 20, now=t))
            assert sorted([k1, k2]) == ["err", "ok"], (a, b)
            assert isinstance(a if k1 == "err" else b, AlreadyExists), (a, b)
            self.devices[d] = u1 if k1 == "ok" else u2

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


def test_a_session_ended_twice_at_once_keeps_its_stream_windows(module_store):
    """The model dropped a session's stream windows when two EndSession calls raced, where
    the store keeps them (README, ``session_windows``: kept after the session ends, for
    the user's later replay checks) as the model's own end_session rule does: the
    state machine failed on a correct store (fresh seed 26, NACF_FUZZ_EXAMPLES=4)."""
    StoreModel.store = module_store
    m = StoreModel()
    m.put_template(create_only=False, user="alice")
    m.finish_authentication(accepted=True, device=None, probe=False, user="alice")
    m.add_session_window(i=0)
    m.same_call_twice_at_once(i=0, kind="end_session", w1=1, w2=1)
    m.no_orphan_rows()
    m.sessions_counted_as_the_model()
    m.teardown()
