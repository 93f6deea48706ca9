"""Generated arguments for every public store method, on SQLite and PostgreSQL: wrong
types and hostile values (empty, NUL, 257-character and surrogate ids; blobs that are no
bytes or empty; NaN, infinite, negative and 1e300 times and durations; bools, negatives
and 2**63 for integers; fingerprint lists of mixed types; garbage page tokens) mixed
into otherwise valid calls on a store holding a user, its template, device, session,
PAD history, lockout row, rate bucket and audit rows.

Whatever the call gets, it returns, or raises ``TypeError``/``ValueError`` or a
:class:`~nacf_core.errors.NacfError` with a message; never another exception type
(a driver's error, ``OverflowError``, ``AttributeError``, a codec's ``UnicodeError``)
and never ``Unavailable``, which would report bad input as an outage. A refused call
writes nothing (every table is compared before and after), and a value that is plainly
wrong (a non-finite time, an id that is no id, an integer that is a bool) is refused."""

from __future__ import annotations

import math
import reprlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacf_core.errors import NacfError, NotFound, Unavailable
from nacf_core.store.base import MAX_TIME, MIN_TIME

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
T0 = 1_790_000_000.0
USER, DEV, MODEL = "fz-user", "fz-dev", "m-1"
SECRET = "s" * 24
TABLES = ("store_meta", "users", "templates", "auth_attempts", "devices", "device_nonces",
          "sessions", "lockouts", "rate_buckets", "pad_fingerprints", "session_windows",
          "schema_migrations")


def dump(store) -> dict[str, list]:
    """Every row of every table, in a comparable form."""
    def fn(tx):
        out = {}
        for t in TABLES:
            rows = tx.query(f"SELECT * FROM {t}")
            out[t] = sorted(repr(tuple(bytes(v) if isinstance(v, memoryview) else v
                                       for v in r)) for r in rows)
        return out
    return store._run(fn, write=False)


_SEED: dict[int, dict] = {}


def seed(store) -> dict:
    """Make sure the store holds the user (template, device, PAD history, a lockout row),
    an active session with a stream window, a rate bucket and audit rows; return the
    session's token and id (successful calls of earlier examples may have removed them)."""
    ctx = _SEED.setdefault(id(store), {})
    try:
        store.get_user(USER)
    except NotFound:
        store.put_template(USER, b"template", MODEL, {"epochs": 3},
                           enroll_fingerprints=[b"enroll-fp"], now=T0)
        ctx.pop("token", None)
    try:
        store.get_device(DEV)
    except NotFound:
        store.register_device(USER, DEV, SECRET, now=T0)
    if ctx.get("token") is None or not store.get_session(ctx["token"]).is_active(T0 + 1):
        s = store.create_session(USER, 1e6, device_id=DEV, now=T0)
        ctx["token"], ctx["sid"] = s.token, s.session_id
        store.add_session_window(s.session_id, USER, b"window-fp", keep=4, now=T0)
    if not store.get_lockout(USER).failures:
        store.register_failure(USER, 5, 60.0, now=T0)
    store.take_tokens("fz-client", 1.0, 5.0, now=T0)
    if not store.recent_attempts(USER, limit=1):
        store.record_attempt(USER, True, 0.9, "ok", "ipv4:127.0.0.1:1", 0.1, "Authenticate",
                             now=T0)
    return ctx


# --------------------------------------------------------------------- hostile values
# Each kind of parameter gets values of its own kind and of the others; ``refuse(value)``
# says whether that kind must refuse the value (None: either outcome is acceptable).
ID_VALUES = ["", "\x00", "a\x00b", "x" * 257, "x" * 256, "\ud800", "a\udfff", "\n", " ",
             "😀", "u" * 5000, None, 5, 5.0, b"fz-user", True, [USER], USER, DEV]
TEXT_VALUES = ["", "a\x00", "\x00", "\ud800", "x" * 10_000, "ok", "ü😀", None, 5, b"x"]
FLOAT_VALUES = [math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1e-300, 5e-324, 1e300,
                -1e300, 1.7976931348623157e308, 2 ** 63, -(2 ** 63), 2 ** 1100, True, False,
                "5", "nan", None, [], b"1", 1.5, 60.0, T0]
INT_VALUES = [True, False, -1, 0, 1, 3, 2 ** 31, 10 ** 7, 2 ** 63, -(2 ** 63), 2 ** 64, 2 ** 1100,
              1.5, 3.0, math.nan, "3", None, [3]]
BLOB_VALUES = [b"", b"x", bytearray(b"tmpl"), memoryview(b"tmpl"), bytes(256 << 10), "tmpl",
               5, None, [1, 2], bytes(97), True]
FPS_VALUES = [[b"a", "b"], [b""], b"abc", "abc", [1], None, [bytearray(b"x")], [],
              [memoryview(b"fp")], [b"fp", None], {b"a": 1}, range(3), 5, [b"x" * 70_000]]
TOKEN_VALUES = ["", "\x00", "\ud800", "t" * 5000, "not-a-token", None, 5, b"tok", True]
PAGE_TOKENS = ["", "////", "Zm9v", "AA==", "AA", "_-_-", "ZnotYmFzZTY0", "=" * 8,
               "8J-YgA==", "wA==", "eHh4" * 100, None, 5, b"Zm9v", "\x00", "\ud800"]
DEEP: list = []
for _ in range(100_000):
    DEEP = [DEEP]
META_VALUES = [{"a": DEEP}, {"a": math.nan}, {1: 2, "a": 3}, "abc", 5, [("a", 1)], {"a": object()},
               {"a": b"x"}, {"\ud800": 1}, {"a": "\x00"}, {}, None, [1, 2]]
ANY_VALUES = ID_VALUES + TEXT_VALUES + FLOAT_VALUES + INT_VALUES + BLOB_VALUES + FPS_VALUES


def _is_id(v) -> bool:
    return isinstance(v, str) and 1 <= len(v) <= 256 and v.isprintable()


def _num(v) -> float | None:
    # (a number in a str or bytes, "5", is taken as the number: float() reads it)
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return None


def _refuse_time(v):
    if v is None:
        return None
    f = _num(v)
    return True if f is None or not MIN_TIME <= f <= MAX_TIME else None


def _refuse_score(v):
    # a similarity, stored as the audit row's: any finite number (not only a time's)
    f = _num(v)
    return True if f is None or not math.isfinite(f) else None


def _refuse_pos(v):
    f = _num(v)
    return True if f is None or not math.isfinite(f) or f <= 0 else None


def _refuse_nonneg(v):
    f = _num(v)
    return True if f is None or not math.isfinite(f) or f < 0 else None


def _refuse_int(lo):
    def refuse(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            return True
        return None
    return refuse


def _refuse_blob(v):
    return True if not isinstance(v, (bytes, bytearray, memoryview)) or not bytes(v) else None


def _refuse_fps(v):
    if isinstance(v, (str, bytes, bytearray, memoryview)) or not hasattr(v, "__iter__"):
        return True
    items = list(v)
    return True if any(not isinstance(x, (bytes, bytearray, memoryview)) or not bytes(x)
                       for x in items) else None


def _refuse_token(v):
    return True if not isinstance(v, str) or not v else None


#: kind -> (values, refuse)
KINDS = {
    "id": (ID_VALUES, lambda v: True if not _is_id(v) else None),
    "opt_id": (ID_VALUES, lambda v: None if v is None or _is_id(v) else True),
    "audit_user": (ID_VALUES + TEXT_VALUES, lambda v: True if not isinstance(v, str) else None),
    "opt_audit_user": (ID_VALUES + TEXT_VALUES,
                       lambda v: True if not isinstance(v, (str, type(None))) else None),
    "text": (TEXT_VALUES, lambda v: None),
    "time": (FLOAT_VALUES, _refuse_time),
    "req_time": (FLOAT_VALUES, lambda v: True if v is None else _refuse_time(v)),
    "pos": (FLOAT_VALUES, _refuse_pos),
    "opt_pos": (FLOAT_VALUES, lambda v: None if v is None else _refuse_pos(v)),
    "nonneg": (FLOAT_VALUES, _refuse_nonneg),
    "score": (FLOAT_VALUES, lambda v: None if v is None else _refuse_score(v)),
    "int1": (INT_VALUES, _refuse_int(1)),
    "keep": (INT_VALUES, lambda v: True if _refuse_int(1)(v) or v > 10 ** 6 else None),
    "rate": (FLOAT_VALUES, lambda v: True if _refuse_nonneg(v) or _num(v) > 1e9 else None),
    "int0": (INT_VALUES, lambda v: None if v is None else _refuse_int(0)(v)),
    "page_size": (INT_VALUES, lambda v: True if _refuse_int(1)(v) or v > 1000 else None),
    "limit": (INT_VALUES, lambda v: True if _refuse_int(1)(v) or v > 100_000 else None),
    "blob": (BLOB_VALUES, _refuse_blob),
    "opt_blob": (BLOB_VALUES, lambda v: None if v is None else _refuse_blob(v)),
    "fps": (FPS_VALUES, _refuse_fps),
    "opt_fps": (FPS_VALUES, lambda v: None if v is None else _refuse_fps(v)),
    "token": (TOKEN_VALUES, _refuse_token),
    "page_token": (PAGE_TOKENS, lambda v: None if v == "" else (
        True if not isinstance(v, str) else None)),
    "meta": (META_VALUES, lambda v: None),
    "flag": ([True, False, 0, 1, None, "no", [], [0]], lambda v: None),
    "kind": (["probe", "enroll", "", "other", None, 5, "PROBE"],
             lambda v: None if v in ("probe", "enroll") else True),
    "ids": (["abc", USER, 5, None, [5], ["\x00"], [USER, None], [], [USER], (USER,),
             {USER: 1}, [b"u"], ["x" * 257]], lambda v: None),
    "known_map": ([[1], "abc", 5, {USER: 5}, {5: b""}, {USER: b"x"}, None, {}],
                  lambda v: None),
    "known_ids": ([5, "abc", [None], [2 ** 70], [1.5], None, (), [1]], lambda v: None),
    "template_id": (["ab", 5, (None, None), ("x", 1.0), (2 ** 70, math.nan), (1,),
                     (1, 2, 3), (1, T0), None, (True, "x"), [1, 1e300]], lambda v: None),
    "device_key": ([(5, 1.0), ("\x00", 1.0), (DEV, "x"), "ab", (DEV,), None, (DEV, T0),
                    ("x" * 300, 1.0), (None, None), ("\ud800", 1.0), (DEV, math.inf)],
                   lambda v: None),
    "key": (["", 5, b"short", "k" * 8, None, [], b"\x00" * 31, "\x00" * 40, "\ud800" * 40],
            lambda v: None),
}


def _audit(**extra):
    return {"reason": ("ok", "text"), "peer": ("ipv4:1.2.3.4:5", "text"),
            "method": ("Authenticate", "text"), **extra}


#: method -> {parameter: (valid value or a function of the seed context, kind)}; a
#: parameter whose name starts with '*' is positional.
METHODS = {
    "put_template": {"*user_id": (USER, "id"), "*blob": (b"tmpl", "blob"),
                     "*model_version": (MODEL, "id"), "*meta": ({"a": 1}, "meta"),
                     "create_only": (False, "flag"), "expected_version": (None, "int0"),
                     "enroll_fingerprints": (None, "opt_fps"), "now": (T0, "time")},
    "get_template": {"*user_id": (USER, "id")},
    "iter_templates": {"*model_version": (MODEL, "opt_id")},
    "read_gallery": {"*model_version": (MODEL, "id"), "*known": (None, "known_map")},
    "template_stamps": {"*user_ids": ([USER], "ids")},
    "get_user": {"*user_id": (USER, "id")},
    "list_users": {"*page_size": (10, "page_size"), "*page_token": ("", "page_token")},
    "delete_user": {"*user_id": (USER, "id"), "now": (T0, "time")},
    "register_device": {"*user_id": (USER, "id"), "*device_id": (DEV, "id"),
                        "*secret": (SECRET, "token"), "replace": (True, "flag"),
                        "first_only": (False, "flag"), "now": (T0, "time")},
    "get_device": {"*device_id": (DEV, "id")},
    "use_nonce": {"*device_id": (DEV, "id"), "*nonce": ("n-1", "id"),
                  "*expires_at": (T0 + 60, "req_time"), "now": (T0, "time")},
    "list_devices": {"*user_id": (USER, "id")},
    "device_ids_of": {"*user_ids": ([USER], "ids")},
    "end_user_sessions": {"*user_id": (USER, "id"), "*reason": ("ended", "id"),
                          "device_id": (None, "opt_id"), "now": (T0, "time")},
    "renew_session": {"*token": (lambda c: c["token"], "token"), "*ttl_s": (60.0, "pos"),
                      "max_age_s": (None, "opt_pos"), "now": (T0 + 1, "time")},
    "create_session": {"*user_id": (USER, "id"), "*ttl_s": (60.0, "pos"),
                       "device_id": (None, "opt_id"), "now": (T0, "time")},
    "get_session": {"*token": (lambda c: c["token"], "token")},
    "end_session": {"*token": (lambda c: c["token"], "token"), "*reason": ("ended", "id"),
                    "now": (T0 + 1, "time")},
    "count_active_sessions": {"*now": (T0, "time")},
    "expire_sessions": {"*now": (T0, "time")},
    "register_failure": {"*user_id": (USER, "id"), "*max_failures": (5, "int1"),
                         "*lock_seconds": (60.0, "pos"), "*now": (T0, "time")},
    "reset_failures": {"*user_id": (USER, "id")},
    "unlock_user": {"*user_id": (USER, "id")},
    "get_lockout": {"*user_id": (USER, "id")},
    "locked_user_ids": {"*now": (T0, "time")},
    "take_token": {"*client_id": ("fz-client", "id"), "*rate_per_s": (1.0, "rate"),
                   "*burst": (5.0, "pos"), "*now": (T0, "time")},
    "take_tokens": {"*client_id": ("fz-client", "id"), "*rate_per_s": (1.0, "rate"),
                    "*burst": (5.0, "pos"), "*want": (2, "int1"),
                    "*give_back": (0.0, "nonneg"), "*now": (T0, "time")},
    "purge_rate_buckets": {"*rate_per_s": (1.0, "rate"), "*burst": (5.0, "pos"),
                           "*now": (T0, "time")},
    "record_attempt": {"*user_id": (USER, "audit_user"), "*success": (True, "flag"),
                       "*score": (0.5, "score"), "*reason": ("ok", "text"),
                       "*peer": ("ipv4:1.2.3.4:5", "text"), "*duration_s": (0.1, "nonneg"),
                       "*method": ("Authenticate", "text"), "actor": ("ops-key", "text"),
                       "now": (T0, "time")},
    "recent_attempts": {"*user_id": (USER, "opt_audit_user"), "*limit": (10, "limit")},
    "purge_attempts": {"*older_than": (T0 - 1e6, "req_time")},
    "purge_sessions": {"*older_than": (T0 - 1e6, "req_time")},
    "stats": {"*now": (T0, "time")},
    "count_users_by_model": {},
    "forget_deleted_fingerprints": {},
    "add_fingerprints": {"*user_id": (USER, "id"), "*fingerprints": ([b"fp"], "fps"),
                         "*kind": ("probe", "kind"), "replace": (False, "flag"),
                         "now": (T0, "time")},
    "get_fingerprints": {"*user_id": (USER, "id")},
    "add_session_window": {"*session_id": (lambda c: c["sid"], "id"),
                           "*user_id": (USER, "id"), "*fingerprint": (b"w", "blob"),
                           "keep": (4, "keep"), "now": (T0 + 1, "time")},
    "get_session_windows": {"*session_id": (lambda c: c["sid"], "id"),
                            "*user_id": (USER, "id"), "*known": ((), "known_ids")},
    "get_auth_state": {"*user_id": (USER, "id"), "device_id": (DEV, "opt_id"),
                       "fingerprints": (True, "flag")},
    "finish_authentication": {
        "*user_id": (USER, "id"), "*accepted": (True, "flag"), "score": (0.9, "score"),
        **_audit(), "duration_s": (0.1, "nonneg"), "session_ttl_s": (60.0, "pos"),
        "device_id": (DEV, "opt_id"), "max_failures": (5, "int1"),
        "lock_seconds": (60.0, "pos"), "probe_fingerprint": (None, "opt_blob"),
        "template_id": (None, "template_id"), "device_key": (None, "device_key"),
        "now": (T0 + 1, "time")},
    "rotate_key": {"*new_key": (None, "key")},
}
#: parameters a refusal is only required of when the call uses them
ONLY_ON_ACCEPT = {"session_ttl_s"}
ONLY_ON_REJECT = {"max_failures", "lock_seconds"}
#: kinds whose values from other kinds are tried too (any object in any place)
SWAPPABLE = {"id", "opt_id", "time", "req_time", "pos", "opt_pos", "nonneg", "int1", "int0",
             "keep", "rate", "blob", "opt_blob", "fps", "opt_fps", "token", "text",
             "audit_user", "opt_audit_user", "score"}


@st.composite
def calls(draw, method):
    params = METHODS[method]
    names = list(params)
    n = min(draw(st.sampled_from([1, 1, 1, 2])), len(names))
    hostile = draw(st.lists(st.sampled_from(names), min_size=n, max_size=n, unique=True)) \
        if names else []
    chosen = {}
    for name in hostile:
        kind = params[name][1]
        values = KINDS[kind][0]
        if kind in SWAPPABLE and draw(st.integers(0, 4)) == 0:
            values = ANY_VALUES
        chosen[name] = draw(st.one_of(st.sampled_from(values),
                                      st.text(max_size=12) if kind in ("id", "text") else
                                      st.floats() if kind in ("time", "pos", "nonneg") else
                                      st.sampled_from(values)))
    return chosen


def _build(method, chosen, ctx):
    args, kwargs, must_refuse = [], {}, []
    for name, (valid, kind) in METHODS[method].items():
        if name in chosen:
            v = chosen[name]
            if KINDS[kind][1](v):
                must_refuse.append((name.lstrip("*"), v))
        else:
            v = valid(ctx) if callable(valid) else valid
        if name.startswith("*"):
            args.append(v)
        else:
            kwargs[name] = v
    if method == "finish_authentication":
        accepted = bool(kwargs.get("accepted", args[1]))
        drop = ONLY_ON_REJECT if accepted else ONLY_ON_ACCEPT | {"device_id"}
        must_refuse = [(n, v) for n, v in must_refuse if n not in drop]
    return args, kwargs, must_refuse


def _call(store, method, args, kwargs):
    out = getattr(store, method)(*args, **kwargs)
    if method == "iter_templates":
        out = list(out)
    return out


#: a bounded repr of a call's arguments for messages (one of the metas is 100 000 levels
#: deep: repr() of it recurses past the interpreter's limit)
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother = 4, 120, 120


def check(store, method, chosen):
    ctx = seed(store)
    args, kwargs, must_refuse = _build(method, chosen, ctx)
    before = dump(store)
    try:
        _call(store, method, args, kwargs)
    except Exception as exc:  # noqa: BLE001 - the property is about what it raises
        what = (f"{method}({_SHOW.repr(args):.300}, {_SHOW.repr(kwargs):.300}) raised "
                f"{type(exc).__name__}: {exc}")
        assert isinstance(exc, (TypeError, ValueError, NacfError)), what
        assert not isinstance(exc, UnicodeError), what
        assert not isinstance(exc, Unavailable), what
        assert str(exc).strip(), what
        assert dump(store) == before, f"{what}; and it wrote"
        return
    assert not must_refuse, (f"{method}({_SHOW.repr(args):.300}, {_SHOW.repr(kwargs):.300}) "
                             f"accepted {_SHOW.repr(must_refuse):.300}")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_hostile_arguments_are_refused_cleanly_and_write_nothing(module_store, method):
    @FUZZ
    @given(chosen=calls(method))
    def run(chosen):
        check(module_store, method, chosen)

    run()
