"""Bad arguments found by the generated-argument tests (test_store_fuzz_args.py), kept as
plain examples: each is refused with ``TypeError``/``ValueError`` or a nacf error naming
what was expected, on SQLite and PostgreSQL, and writes nothing."""

from __future__ import annotations

import pytest

T0 = 1_790_000_000.0
HUGE = 2 ** 1100  # an int no float can hold


def test_an_integer_too_large_for_a_float_is_refused_as_a_bad_time_or_duration(store):
    store.put_template("u", b"tmpl", "m-1", now=T0)
    calls = [
        lambda: store.delete_user("u", now=HUGE),
        lambda: store.create_session("u", HUGE, now=T0),
        lambda: store.create_session("u", 60.0, now=-HUGE),
        lambda: store.register_failure("u", 3, HUGE, now=T0),
        lambda: store.take_tokens("c", HUGE, 5.0, now=T0),
        lambda: store.use_nonce("d", "n", HUGE, now=T0),
        lambda: store.purge_attempts(HUGE),
        lambda: store.purge_sessions(-HUGE),
        lambda: store.count_active_sessions(HUGE),
        lambda: store.record_attempt("u", False, HUGE, "r", "p", 0.1, "Authenticate", now=T0),
        lambda: store.finish_authentication("u", False, score=HUGE, reason="r", peer="p",
                                            method="Authenticate", duration_s=0.1,
                                            session_ttl_s=60.0, now=T0),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="must be"):
            call()
    assert store.get_user("u").template_version == 1
    assert store.count_active_sessions(T0) == 0
    assert store.get_lockout("u").failures == 0


@pytest.mark.parametrize("t", [1e300, -1e300, 1.7e308, 253402300800.0, -62135596801.0])
def test_a_time_no_date_can_have_is_refused(store, t):
    # stats' day boundary raised OverflowError for it; on PostgreSQL the sums of such
    # times (created_at + max_age_s) overflowed DOUBLE PRECISION: UNAVAILABLE
    store.put_template("u", b"tmpl", "m-1", now=T0)
    for call in (lambda: store.stats(now=t), lambda: store.create_session("u", 60.0, now=t),
                 lambda: store.register_failure("u", 1, 60.0, now=t),
                 lambda: store.use_nonce("d", "n", t, now=T0),
                 lambda: store.purge_attempts(t)):
        with pytest.raises(ValueError, match="unix seconds"):
            call()
    assert store.count_active_sessions(T0) == 0 and store.get_lockout("u").failures == 0
    # the last and first second of the range are times
    assert store.stats(now=253402300799.0).attempts_today == 0
    assert store.stats(now=-62135596800.0).attempts_today == 0


def test_a_refill_rate_beyond_1e9_per_second_is_refused(store):
    # a bucket taken at 1e300 tokens/s made every later purge overflow DOUBLE PRECISION on
    # PostgreSQL (refill = idle time x rate): UNAVAILABLE on each sweep, the row never purged
    for call in (lambda: store.take_tokens("c", 1e300, 5.0, now=T0),
                 lambda: store.take_token("c", 2e9, 5.0, now=T0),
                 lambda: store.purge_rate_buckets(1e300, 5.0, now=T0)):
        with pytest.raises(ValueError, match="rate_per_s"):
            call()
    assert store.take_tokens("c", 1e9, 5.0, want=5, now=T0) == 5
    assert store.purge_rate_buckets(1e9, 5.0, now=253402300799.0) == 1


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"])
def test_audit_text_with_nul_or_a_lone_surrogate_is_refused_naming_it(store, bad):
    # PostgreSQL text holds no NUL (DataError: answered UNAVAILABLE, as an outage); no
    # backend stores a lone surrogate (UnicodeEncodeError naming nothing)
    store.put_template("u", b"tmpl", "m-1", now=T0)
    args = {"user_id": "u", "reason": "ok", "peer": "ipv4:1.2.3.4:5", "method": "Authenticate"}
    for name in args:
        kw = {**args, name: bad}
        with pytest.raises(ValueError, match=repr(name)):
            store.record_attempt(kw["user_id"], True, 0.5, kw["reason"], kw["peer"], 0.1,
                                 kw["method"], now=T0)
        if name != "user_id":
            for accepted in (True, False):
                with pytest.raises(ValueError, match=repr(name)):
                    store.finish_authentication(
                        "u", accepted, score=0.5, reason=kw["reason"], peer=kw["peer"],
                        method=kw["method"], duration_s=0.1, session_ttl_s=60.0,
                        max_failures=1, lock_seconds=60.0, now=T0)
    with pytest.raises(ValueError, match="'user_id'"):
        store.recent_attempts(bad)
    assert store.recent_attempts() == []
    assert store.get_lockout("u").failures == 0 and store.count_active_sessions(T0) == 0


def test_a_token_secret_or_key_with_a_lone_surrogate_is_refused_naming_it(store, monkeypatch):
    # no UTF-8 for it: the hashing or encryption raised a UnicodeEncodeError naming nothing
    store.put_template("u", b"tmpl", "m-1", now=T0)
    tok = store.create_session("u", 60.0, now=T0).token
    for call in (lambda: store.get_session("\ud800"),
                 lambda: store.end_session(tok + "\udc80", now=T0),
                 lambda: store.renew_session("\ud800x", 60.0, now=T0)):
        with pytest.raises(ValueError, match="'token'"):
            call()
    with pytest.raises(ValueError, match="'secret'"):
        store.register_device("u", "d", "s" * 16 + "\ud800", now=T0)
    with pytest.raises(ValueError, match="template key"):
        store.rotate_key("\ud800" * 44)
    # an environment variable of bytes that are no UTF-8 holds such surrogates
    from nacf_core.store.crypto import KEY_ENV, load_key
    monkeypatch.setenv(KEY_ENV, "\udcff" * 44)
    with pytest.raises(ValueError, match="template key"):
        load_key(None)
    assert store.get_session(tok).is_active(T0) and store.list_devices("u") == []


@pytest.mark.parametrize("known", [[1], ["u"], "abc", 5, [("u", b"x")]])
def test_read_gallery_refuses_known_stamps_that_are_no_mapping(store, known):
    store.put_template("u", b"tmpl", "m-1", now=T0)
    with pytest.raises(TypeError, match="'known'"):  # was AttributeError: no .get
        store.read_gallery("m-1", known)
    listing, fresh = store.read_gallery("m-1", {})
    assert [u for u, _ in listing] == ["u"] and fresh["u"].blob == b"tmpl"


@pytest.mark.parametrize("name,value", [
    ("template_id", ("x", 1.0)), ("template_id", 5), ("template_id", (1,)),
    ("template_id", (True, T0)), ("template_id", (1, float("nan"))), ("template_id", "ab"),
    ("device_key", (5, T0)), ("device_key", ("\x00", T0)), ("device_key", ("d" * 300, T0)),
    ("device_key", ("d", "x")), ("device_key", ("d",)), ("device_key", "ab")])
def test_finish_authentication_refuses_a_malformed_template_id_or_device_key(store, name,
                                                                            value):
    # on PostgreSQL a device id that is no text reached the server (UndefinedFunction,
    # DataError: UNAVAILABLE); elsewhere int() or a subscript failed naming nothing
    store.put_template("u", b"tmpl", "m-1", now=T0)
    store.register_device("u", "d", "s" * 16, now=T0)
    with pytest.raises((TypeError, ValueError), match=repr(name)):
        store.finish_authentication("u", True, score=0.9, reason="ok", peer="p",
                                    method="Authenticate", duration_s=0.1, session_ttl_s=60.0,
                                    now=T0, **{name: value})
    assert store.count_active_sessions(T0) == 0 and store.recent_attempts() == []


@pytest.mark.parametrize("keep", [2 ** 63, 2 ** 64, 2 ** 1100, 10 ** 7])
def test_add_session_window_refuses_a_keep_no_query_can_take(store, keep):
    # it became the query's OFFSET: an OverflowError on SQLite, "bigint out of range" on
    # PostgreSQL (UNAVAILABLE, as an outage)
    store.put_template("u", b"tmpl", "m-1", now=T0)
    s = store.create_session("u", 60.0, now=T0)
    with pytest.raises(ValueError, match="'keep'"):
        store.add_session_window(s.session_id, "u", b"fp", keep=keep, now=T0)
    assert store.get_session_windows(s.session_id, "u") == []
    assert store.add_session_window(s.session_id, "u", b"fp", keep=10 ** 6, now=T0) is not None


def test_put_template_refuses_meta_nested_too_deep_to_encode(store):
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="'meta'"):  # was RecursionError
        store.put_template("u", b"tmpl", "m-1", {"a": deep}, now=T0)
    assert store.list_users().users == []


def test_register_failure_of_an_unknown_user_writes_no_lockout(store):
    # its row outlived any user (DeleteUser: NotFound) and locked out an account enrolled
    # later under that id; finish_authentication already refused such a reject
    from nacf_core.errors import NotFound

    with pytest.raises(NotFound, match="ghost"):
        store.register_failure("ghost", 1, 600.0, now=T0)
    store.put_template("ghost", b"tmpl", "m-1", now=T0)
    lock = store.get_lockout("ghost")
    assert (lock.failures, lock.locked_until) == (0, None)
    assert store.locked_user_ids(T0) == set()
    store.delete_user("ghost", now=T0)
    with pytest.raises(NotFound, match="ghost"):
        store.register_failure("ghost", 1, 600.0, now=T0)
    assert store.get_lockout("ghost").failures == 0
