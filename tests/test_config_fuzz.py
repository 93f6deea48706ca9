"""Generated configuration: whatever a TOML file, an environment variable or a keys file
holds, ``load_config`` returns a validated ``Config`` or raises ``ValueError`` with a
message; never another exception (a TypeError from a table where a number was expected,
an OverflowError from a huge integer, a UnicodeError from bytes that are not text)."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nacf_core.config import _KINDS, Config, load_config

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
OPTIONS = sorted(_KINDS)
KEY = "k" * 24


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                             for c in v) + '"'
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise AssertionError(v)


scalars = st.one_of(
    st.booleans(), st.integers(-2 ** 70, 2 ** 70),
    st.sampled_from([0, -1, 1, 2 ** 63 - 1, -2 ** 63]),
    st.floats(), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 60.0]),
    st.text(max_size=30),
    st.sampled_from(["", "127.0.0.1:0", "[::1]:50051", "0.0.0.0:1", "host:99999", ":", "x:y",
                     "cython", "numba", "sqlite:///tmp/x.db", "postgresql://", "/nonexistent",
                     "1", "true", "inf", "nan", "1e3", "0x10", " 5 "]),
    st.dates())
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.sampled_from(["a", "b"]), scalars, max_size=2))


def _check(**kw) -> None:
    try:
        cfg = load_config(**kw)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, Config)
    cfg.validate()


@FUZZ
@given(options=st.dictionaries(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(
    ["nacf", "unknown_option"])), values, max_size=4), nested=st.booleans())
def test_a_toml_file_of_any_values_loads_or_is_refused_with_a_value_error(
        tmp_path_factory, options, nested):
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in options.items())
    if nested:
        body = "[nacf]\n" + body
    p = tmp_path_factory.mktemp("cfg") / "nacf.toml"
    p.write_text(body, encoding="utf-8")
    _check(path=p, env={}, data_dir=str(p.parent))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_a_config_file_of_any_bytes_loads_or_is_refused_with_a_value_error(
        tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("cfg") / "nacf.toml"
    p.write_bytes(raw)
    _check(path=p, env={})


@FUZZ
@given(env=st.dictionaries(
    st.one_of(st.sampled_from(["NACF_" + o.upper() for o in OPTIONS]),
              st.sampled_from(["NACF_API_KEYS", "NACF_CONFIG", "NACF_GRPC_ADRESS"])),
    st.one_of(st.text(max_size=30).filter(lambda s: "\x00" not in s),
              st.sampled_from(["", "0", "-1", "1e400", "nan", "inf", "true", "yes", "off",
                               "99999999999999999999999", "127.0.0.1:0", KEY,
                               f"{KEY},{KEY}", f"{KEY}, ,x"])), max_size=4))
def test_environment_variables_of_any_value_load_or_are_refused_with_a_value_error(env):
    _check(env=env)


@FUZZ
@given(lines=st.lists(st.one_of(
    st.text(max_size=60).filter(lambda s: "\n" not in s and "\r" not in s),
    st.sampled_from([f"{KEY} authenticate", f"{KEY} admin,enroll", f"{KEY}",
                     f"{KEY} root", "# comment", "", f"{KEY} authenticate # x",
                     "short authenticate", f"{KEY} authenticate enroll admin extra",
                     f"{KEY}\tadmin", "\ufeff" + f"{KEY} admin"])), max_size=6))
def test_a_keys_file_of_any_lines_loads_or_is_refused_with_a_value_error(
        tmp_path_factory, lines):
    p = tmp_path_factory.mktemp("keys") / "keys.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    p.chmod(0o600)
    _check(env={}, api_keys_file=str(p))
