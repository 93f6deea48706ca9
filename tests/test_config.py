"""Wrong input to the configuration and the API keys file: a clear ``ValueError`` that
names the file or the environment variable and the option, never another exception."""

from __future__ import annotations

import dataclasses

import pytest

from nacf_core import config as config_module
from nacf_core.config import SCOPES, Config, load_api_keys, load_config


# ------------------------------------------------------------------ config: TOML values
@pytest.mark.parametrize("line, message", [
    ("max_workers = inf", "'max_workers' must be an integer, got inf"),
    ("max_workers = nan", "'max_workers' must be an integer, got nan"),
    ("max_workers = 3.9", "'max_workers' must be an integer, got 3.9"),
    ("max_workers = 1e308", r"'max_workers' must be an integer in \[1, 2147483647\]"),
    ("max_concurrent_rpcs = 9223372036854775807", r"'max_concurrent_rpcs' must be an integer in"),
    ("max_workers = 0", r"'max_workers' must be an integer in \[1, "),
    ("max_workers = true", "'max_workers' must be an integer, got True"),
    ("max_workers = [1]", "'max_workers' must be an integer"),
    ("max_workers = 1979-05-27", "'max_workers' must be an integer"),
    ("grace_period_s = 1" + "0" * 400,
     r"'grace_period_s' must be a finite number in \(0, 1e\+09\]"),
    ("grace_period_s = 1e300", "'grace_period_s' must be a finite number in"),
    ("grace_period_s = inf", "'grace_period_s' must be a finite number in"),
    ("grace_period_s = nan", "'grace_period_s' must be a finite number in"),
    ("grace_period_s = true", "'grace_period_s' must be a number, got True"),
    ("session_ttl_s = false", "'session_ttl_s' must be a number, got False"),
    ('data_dir = "a\\u0000b"', "'data_dir' must not contain control characters"),
    ("reuse_port = 1.5", "'reuse_port' must be a boolean"),
    ('require_device_proof = ""', "'require_device_proof' must be a boolean"),
])
def test_config_file_wrong_values(tmp_path, line, message):
    f = tmp_path / "c.toml"
    f.write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as e:
        load_config(f, env={})
    assert str(f) in str(e.value)


def test_config_file_integral_float_and_bom(tmp_path):
    f = tmp_path / "c.toml"
    f.write_bytes(b"\xef\xbb\xbfmax_workers = 4.0\ngrace_period_s = 3\n")
    c = load_config(f, env={})
    assert c.max_workers == 4 and type(c.max_workers) is int
    assert c.grace_period_s == 3.0 and type(c.grace_period_s) is float


def test_config_file_options_under_a_nacf_table(tmp_path):
    """The docstring's ``[nacf]`` table: its options are read like top-level ones (it was
    refused as "unknown option 'nacf'"); an option given in both places is refused, not
    silently resolved one way."""
    f = tmp_path / "c.toml"
    f.write_text('data_dir = "d"\n[nacf]\nrate_limit_per_s = 3\nmax_workers = 2\n')
    c = load_config(f, env={})
    assert (c.rate_limit_per_s, c.max_workers, c.data_dir) == (3.0, 2, "d")
    f.write_text('max_workers = 4\n[nacf]\nmax_workers = 2\n')
    with pytest.raises(ValueError, match="'max_workers' is given both at the top level and "
                                         r"under \[nacf\]") as e:
        load_config(f, env={})
    assert str(f) in str(e.value)
    f.write_text('[nacf]\nmax_workers = 2\n[server]\nmax_workers = 3\n')
    with pytest.raises(ValueError, match="unknown option 'server'"):
        load_config(f, env={})


def test_config_file_not_utf8(tmp_path):
    f = tmp_path / "c.toml"
    f.write_bytes(b"max_workers = 4 # caf\xe9\n")
    with pytest.raises(ValueError, match=r"config file \(--config\) '.*c\.toml' is not UTF-8"):
        load_config(f, env={})
    with pytest.raises(ValueError, match=r"config file \(NACF_CONFIG\) '.*c\.toml' is not UTF-8"):
        load_config(None, env={"NACF_CONFIG": str(f)})


def test_config_file_invalid_or_too_deep_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("max_workers = [\n")
    with pytest.raises(ValueError, match=r"'.*c\.toml' is not valid TOML"):
        load_config(f, env={})
    f.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match="nested too deeply"):
        load_config(f, env={})


# ------------------------------------------------------------------ config: env and flags
@pytest.mark.parametrize("var, value, message", [
    ("NACF_MAX_WORKERS", "3.9", "must be an integer, got '3.9'"),
    ("NACF_MAX_WORKERS", "1e3", "must be an integer, got '1e3'"),
    ("NACF_MAX_WORKERS", "inf", "must be an integer, got 'inf'"),
    ("NACF_MAX_WORKERS", "\u0663", "must be an integer"),  # an Arabic-Indic digit
    ("NACF_MAX_WORKERS", "9" * 5000, r"must be an integer in \[1, 2147483647\], got '9999"),
    ("NACF_MAX_WORKERS", "99999999999", r"must be an integer in \[1, 2147483647\]"),
    ("NACF_GRACE_PERIOD_S", "inf", "must be a finite number in"),
    ("NACF_GRACE_PERIOD_S", "nan", "must be a finite number in"),
    ("NACF_GRACE_PERIOD_S", "1e999", "must be a finite number in"),
    ("NACF_GRACE_PERIOD_S", "1e300", "must be a finite number in"),
    ("NACF_GRACE_PERIOD_S", "soon", "must be a number"),
    ("NACF_REUSE_PORT", "maybe", "must be a boolean"),
    # a blank value is no "false": it turned the device proof off without a word
    ("NACF_REQUIRE_DEVICE_PROOF", " ", "must be a boolean"),
    ("NACF_PRESENTATION_ATTACK_DETECTION", "\t", "must be a boolean"),
    ("NACF_DATA_DIR", "a\nb", "must not contain control characters"),
])
def test_config_env_wrong_values(var, value, message):
    with pytest.raises(ValueError, match=message) as e:
        load_config(None, env={var: value})
    assert f"environment variable {var}" in str(e.value)
    assert len(str(e.value)) < 300


def test_misspelt_environment_variables_are_warned_about(caplog):
    """A variable that looks like an option but is none would be ignored without a word:
    it is named with the option it resembles; other tools' NACF_ variables are left
    alone, and the variable really is ignored (the default stays)."""
    env = {"NACF_RATE_LIMIT": "5", "NACF_SESSION_TTL": "60", "NACF_SHARED_DATA": "/data",
           "NACF_API_KEYS": "k" * 20, "NACF_LOCKOUT_THRESHOLD": "7"}
    with caplog.at_level("WARNING", logger="nacf.config"):
        cfg = load_config(env=env)
    got = sorted(r.getMessage() for r in caplog.records)
    assert len(got) == 2, got
    assert "NACF_RATE_LIMIT is not a nacf option" in got[0]
    assert "did you mean NACF_RATE_LIMIT_PER_S?" in got[0]
    assert "did you mean NACF_SESSION_TTL_S?" in got[1]
    assert cfg.rate_limit_per_s == Config().rate_limit_per_s and cfg.lockout_threshold == 7


def test_an_empty_metrics_address_variable_turns_the_sidecar_off():
    """``nacf serve --help`` lists NACF_METRICS_ADDRESS as "(empty: no sidecar)", and
    --metrics-address '' and metrics_address = "" turn it off, but an empty variable was
    taken as unset: the sidecar started on 127.0.0.1:9464 (a second process on the host
    then failed on the port). It does now; any other empty variable still leaves the
    option's default."""
    c = load_config(None, env={"NACF_METRICS_ADDRESS": "", "NACF_DATA_DIR": "",
                               "NACF_GRPC_ADDRESS": "", "NACF_KERNEL_BACKEND": "",
                               "NACF_MAX_WORKERS": "", "NACF_REQUIRE_DEVICE_PROOF": ""})
    assert c.metrics_address == ""
    d = Config()
    assert (c.store_url, c.grpc_address, c.kernel_backend, c.max_workers,
            c.require_device_proof) == (d.store_url, d.grpc_address, d.kernel_backend,
                                        d.max_workers, d.require_device_proof)


@pytest.mark.parametrize("source", ["environment", "file", "flag"])
def test_an_empty_store_url_is_refused_not_taken_for_the_local_store(tmp_path, source):
    """A replica whose NACF_STORE_URL came from a secret with no value (or a script's
    --store-url "$URL" with URL unset) started on a SQLite store of its own in data_dir:
    users enrolled through the others unknown there, lockouts and rate limits not shared.
    An empty store URL is refused, naming where it came from; left out, it is still the
    local store."""
    env, path, flags = {}, None, {}
    if source == "environment":
        env = {"NACF_STORE_URL": ""}
    elif source == "file":
        path = tmp_path / "nacf.toml"
        path.write_text('store_url = " "\n')
    else:
        flags = {"store_url": ""}
    with pytest.raises(ValueError) as ei:
        load_config(path, env=env, **flags)
    msg = str(ei.value)
    assert "store_url" in msg and "is empty" in msg and "leave it out" in msg
    assert {"environment": "NACF_STORE_URL", "file": str(path),
            "flag": "option 'store_url'"}[source] in msg
    assert load_config(None, env={}).store_url == ""  # left out: the local store


def test_config_env_integer_text():
    c = load_config(None, env={"NACF_MAX_WORKERS": " +7 ", "NACF_GRACE_PERIOD_S": "2.5"})
    assert c.max_workers == 7 and c.grace_period_s == 2.5


@pytest.mark.parametrize("option, value", [
    ("max_workers", 10 ** 400), ("max_workers", 3.9), ("max_workers", float("inf")),
    ("grace_period_s", 10 ** 400), ("grace_period_s", True), ("grace_period_s", float("nan")),
    ("grace_period_s", [1]), ("grpc_address", object()),
])
def test_config_overrides_wrong_values(option, value):
    with pytest.raises(ValueError, match=f"option '{option}'"):
        load_config(None, env={}, **{option: value})


@pytest.mark.parametrize("option, value", [
    ("grace_period_s", 10 ** 400), ("grace_period_s", 1e300), ("max_workers", 2 ** 40),
    ("identify_max_k", 10 ** 400), ("rate_limit_lease", 1.0),
])
def test_config_constructor_bounds(option, value):
    with pytest.raises(ValueError, match=f"option '{option}'"):
        Config(**{option: value})


# ------------------------------------------------------------------ config and keys: paths
@pytest.mark.parametrize("loader", ["config", "keys"])
def test_special_paths_are_refused(special_path, raised_without_blocking, loader):
    path = special_path
    fn = (lambda: load_config(path, env={})) if loader == "config" else (
        lambda: load_api_keys(path))
    exc = raised_without_blocking(fn)
    assert isinstance(exc, ValueError), repr(exc)
    assert "expected a regular file" in str(exc) and str(path) in str(exc)


def test_oversized_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "MAX_FILE_BYTES", 100)
    f = tmp_path / "c.toml"
    f.write_text("# padding\n" * 11)
    with pytest.raises(ValueError, match=r"'.*c\.toml' is larger than the limit of 100 bytes"):
        load_config(f, env={})
    k = tmp_path / "keys"
    k.write_text("# padding\n" * 11)
    with pytest.raises(ValueError, match="larger than the limit of 100 bytes"):
        load_api_keys(k)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read config file \(--config\) '.*nope'"):
        load_config(tmp_path / "nope", env={})
    with pytest.raises(ValueError, match=r"cannot read keys file .*'.*nope'"):
        load_api_keys(tmp_path / "nope")


# ------------------------------------------------------------------ keys file
def test_keys_file_not_utf8(tmp_path):
    for name in ("keys", "keys.toml"):
        f = tmp_path / name
        f.write_bytes(b"k1 admin # caf\xe9\n" if name == "keys" else b'[keys]\n"k1" = ["\xe9"]\n')
        with pytest.raises(ValueError, match=f"'.*{name}' is not UTF-8"):
            load_api_keys(f)


@pytest.mark.parametrize("text, message", [
    ("keys = 5\n", "'keys' must be a table"),
    ('keys = "k1"\n', "'keys' must be a table"),
    ('[keys]\n"k1" = [1]\n', "scopes must be a list of strings"),
    ('[keys]\n"k1" = ["admin", 3]\n', "scopes must be a list of strings"),
    ('[keys]\n"k1" = 5\n', "scopes must be a list of strings"),
    ('[keys.sub]\n"k1" = ["admin"]\n', "scopes must be a list of strings"),
    ('[keys]\n"k1" = ["superuser"]\n', "scopes must be among"),
    ("[keys\n", "is not valid TOML"),
    # a misspelt table gave no key at all, without a word
    ('[key]\n"k1" = ["admin"]\n', r"expected only a \[keys\] table of .*, got a table \[key\]"),
    ('"k1-secret" = ["admin"]\n[keys]\n"k2" = ["admin"]\n',
     r"expected only a \[keys\] table of .*, got 1 top-level entry outside it \(not shown"),
])
def test_keys_toml_wrong_structure(tmp_path, text, message):
    f = tmp_path / "keys.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        load_api_keys(f)
    assert str(f) in str(e.value) and "secret" not in str(e.value)


def test_keys_toml_scopes_as_list_or_string(tmp_path):
    f = tmp_path / "keys.toml"
    f.write_text('[keys]\n"key-one-0123" = ["authenticate"]\n"key-two-0123" = "enroll, admin"\n')
    assert load_api_keys(f) == {"key-one-0123": {"authenticate"},
                                "key-two-0123": {"enroll", "admin"}}


@pytest.mark.parametrize("name, data", [
    ("keys", b"\x00 admin\n"),
    ("keys", b"k\x01ey admin\n"),
    ("keys", "k\u00e9y admin\n".encode()),
    ("keys", b"k\x7fey admin\n"),
    ("keys.toml", b'[keys]\n"\\u0000" = ["admin"]\n'),
    ("keys.toml", b'[keys]\n" " = ["admin"]\n'),
    ("keys.toml", b'[keys]\n"" = ["admin"]\n'),
    ("keys.toml", b'[keys]\n"secret-key " = ["admin"]\n'),
    ("keys.toml", b'[keys]\n"secret\\tkey" = ["admin"]\n'),
    ("keys.toml", b'[keys]\n"' + b"x" * 5000 + b'" = ["admin"]\n'),
])
def test_keys_metadata_cannot_carry_are_refused(tmp_path, name, data):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(ValueError) as e:
        load_api_keys(f)
    assert str(f) in str(e.value)
    assert "printable ASCII" in str(e.value) or "empty" in str(e.value) \
        or "characters long" in str(e.value)
    assert "secret" not in str(e.value)  # a key is never echoed


def test_a_key_given_twice_is_refused_not_given_the_union_of_its_scopes(tmp_path):
    """A key on two lines of the keys file (a later line meant to narrow it, a pasted
    duplicate) was given the scopes of both: ``k authenticate,admin`` then
    ``k authenticate`` kept admin without a word. It is refused naming both places,
    never showing the key; so is a key of the file also in NACF_API_KEYS (every scope)."""
    f = tmp_path / "keys"
    f.write_text("secret-key-one authenticate,admin\nother-key-0123 enroll\n"
                 "# narrowed:\nsecret-key-one authenticate\n")
    with pytest.raises(ValueError, match=r"keys:4: key secr\.\.\. is given on line 1 "
                                         "already") as e:
        load_api_keys(f)
    assert "secret-key-one" not in str(e.value)
    f.write_text("secret-key-one authenticate\n")
    with pytest.raises(ValueError, match=r"keys:1: key secr\.\.\. is given in NACF_API_KEYS "
                                         r"\(every scope\) already") as e:
        load_api_keys(f, "other-key-0123,secret-key-one")
    assert "secret-key-one" not in str(e.value)
    t = tmp_path / "keys.toml"
    t.write_text('[keys]\n"secret-key-one" = ["authenticate"]\n')
    with pytest.raises(ValueError, match=r"key #1 of \[keys\]: key secr\.\.\. is given in "
                                         r"NACF_API_KEYS \(every scope\) already"):
        load_api_keys(t, "secret-key-one")
    dup = tmp_path / "dup"
    dup.write_text("a-key-0123 admin\na-key-0123 admin\n")
    with pytest.raises(ValueError, match="dup:2: key a-ke... is given on line 1 already"):
        load_config(None, env={"NACF_API_KEYS_FILE": str(dup)})
    assert load_api_keys(f, "other-key-0123") == {
        "secret-key-one": {"authenticate"}, "other-key-0123": set(SCOPES)}


def test_a_keys_file_line_without_scopes_does_not_echo_the_key(tmp_path):
    """A line holding a key alone (a key pasted as for NACF_API_KEYS) was refused with
    the whole line in the message, so the key went to stderr and, on a SIGHUP reload,
    into the JSON log."""
    f = tmp_path / "keys"
    for text in ("secret-key-one-0123\n", "secret-key-one-0123   # no scopes\n"):
        f.write_text(text)
        with pytest.raises(ValueError, match=r"keys:1: expected '<key> <scope>") as e:
            load_api_keys(f)
        assert "secret" not in str(e.value) and "secr..." in str(e.value)


def test_a_hash_inside_a_key_is_part_of_the_key_not_a_comment(tmp_path):
    """A key holding '#' (printable ASCII, taken in NACF_API_KEYS) was cut there in the
    keys file: refused, showing the part before the '#'. A line starting with '#' and a
    '#' after the key still begin a comment."""
    f = tmp_path / "keys"
    f.write_text("# key scopes\n  # indented comment\nsecret#key-0123 admin  # ops\n"
                 "other-key-0123 authenticate,enroll#no space before it\n")
    assert load_api_keys(f) == {"secret#key-0123": {"admin"},
                                "other-key-0123": {"authenticate", "enroll"}}
    assert load_api_keys(None, "secret#key-0123") == {"secret#key-0123": set(SCOPES)}


@pytest.mark.parametrize("value", ["\x00", "good-key-0123,bad\x01key", "k\u00e9y"])
def test_env_keys_metadata_cannot_carry_are_refused(value):
    with pytest.raises(ValueError, match="NACF_API_KEYS: key #"):
        load_api_keys(None, value)
    with pytest.raises(ValueError, match="NACF_API_KEYS"):
        load_config(None, env={"NACF_API_KEYS": value})


def test_config_api_keys_checked():
    with pytest.raises(ValueError, match="API key #1 must be printable ASCII"):
        Config(api_keys={"\x00": frozenset(SCOPES)})
    assert Config(api_keys={"key-0123456789": frozenset(SCOPES)}).api_keys


# ------------------------------------------------------------------ addresses
@pytest.mark.parametrize("value, message", [
    # gRPC reads an unbracketed IPv6 address whole (port 443): it could not bind, and
    # the error said "address in use"
    ("::1:50051", r"an IPv6 host goes in brackets: '\[::1\]:50051'"),
    ("[127.0.0.1]:50051", "brackets hold an IPv6 address only"),
    ("[::1:50051", "brackets hold an IPv6 address only"),
    ("127.0.0.1]:50051", "brackets hold an IPv6 address only"),
    ("[nope]:50051", "brackets hold an IPv6 address only"),
    (" 127.0.0.1:50051", "the host must not contain spaces"),
    ("127.0.0.1:5_0051", r"a port in \[0, 65535\] \(decimal digits\)"),
    ("127.0.0.1:+50051", r"a port in \[0, 65535\]"),
    ("127.0.0.1:\u0665\u0660", r"a port in \[0, 65535\]"),
    ("127.0.0.1:65536", r"a port in \[0, 65535\]"),
    (":50051", "with a host"),
])
def test_addresses_gRPC_cannot_bind_are_refused_with_what_was_expected(value, message):
    from nacf_core.config import parse_address

    with pytest.raises(ValueError, match=message) as e:
        parse_address("grpc_address", value)
    assert "'grpc_address'" in str(e.value)
    with pytest.raises(ValueError, match=message):
        load_config(None, env={"NACF_METRICS_ADDRESS": value})


@pytest.mark.parametrize("option, value, message", [
    ("grpc_address", "nohost", "must be HOST:PORT, got 'nohost'"),
    ("metrics_address", "127.0.0.1:99999", r"must be HOST:PORT with a port in \[0, 65535\]"),
    ("metrics_address", "::1:9464", r"an IPv6 host goes in brackets: '\[::1\]:9464'"),
    ("kernel_backend", "gpu", "must be one of 'cython', 'numba', 'reference', got 'gpu'"),
])
def test_addresses_and_backend_name_the_file_or_variable_they_came_from(tmp_path, option,
                                                                        value, message):
    """The module's promise: a wrong value names the file or the environment variable, as
    the numbers do. A wrong address or backend said only "option 'grpc_address' ...", so
    with a config file and NACF_* variables the operator did not know which to fix."""
    f = tmp_path / "c.toml"
    f.write_text(f'{option} = "{value}"\n')
    with pytest.raises(ValueError, match=message) as e:
        load_config(f, env={})
    assert str(e.value).startswith(f"{f}: option '{option}'")
    var = "NACF_" + option.upper()
    with pytest.raises(ValueError, match=message) as e:
        load_config(None, env={var: value})
    assert str(e.value).startswith(f"environment variable {var} (option '{option}')")
    with pytest.raises(ValueError, match=message) as e:
        load_config(None, env={}, **{option: value})
    assert str(e.value).startswith(f"option '{option}'")


@pytest.mark.parametrize("value, parsed", [
    ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:50051", ("::1", 50051)),
    ("[::]:9464", ("::", 9464)), ("localhost:65535", ("localhost", 65535)),
    ("nacf-0.nacf.svc:50051", ("nacf-0.nacf.svc", 50051)), ("0.0.0.0:9464", ("0.0.0.0", 9464)),
])
def test_addresses_accepted(value, parsed):
    from nacf_core.config import parse_address

    assert parse_address("grpc_address", value) == parsed


# ------------------------------------------------------------------ absurd but in range
@pytest.mark.parametrize("value", ["0.5", "0.999", "1e-9"])
def test_a_rate_limit_burst_below_one_token_is_refused(tmp_path, value):
    """A request takes one whole token: a bucket that holds less never admits one, so
    every call was refused RESOURCE_EXHAUSTED by a server that had started without a
    word. Refused at start, naming the option, from each source."""
    with pytest.raises(ValueError, match=r"environment variable NACF_RATE_LIMIT_BURST "
                                         r"\(option 'rate_limit_burst'\) must be a finite "
                                         r"number in \[1, 1e\+09\]"):
        load_config(None, env={"NACF_RATE_LIMIT_BURST": value})
    f = tmp_path / "c.toml"
    f.write_text(f"rate_limit_burst = {value}\n")
    with pytest.raises(ValueError, match=r"option 'rate_limit_burst' must be a finite number "
                                         r"in \[1, 1e\+09\]") as e:
        load_config(f, env={})
    assert str(f) in str(e.value)
    with pytest.raises(ValueError, match="option 'rate_limit_burst'"):
        load_config(None, env={}, rate_limit_burst=float(value))
    with pytest.raises(ValueError, match="option 'rate_limit_burst'"):
        Config(rate_limit_burst=float(value))
    assert load_config(None, env={"NACF_RATE_LIMIT_BURST": "1"}).rate_limit_burst == 1.0


@pytest.mark.parametrize("value", ["0.5", "0.01"])
def test_a_device_proof_skew_below_one_second_is_refused(tmp_path, value):
    """x-device-timestamp is whole unix seconds: a proof made now is up to 1 s behind the
    server clock, so an allowed skew under 1 s refused fresh proofs as stale at random
    (about half of them at 0.5 s)."""
    with pytest.raises(ValueError, match=r"NACF_PROOF_MAX_SKEW_S \(option 'proof_max_skew_s'\) "
                                         r"must be a finite number in \[1, 1e\+09\]"):
        load_config(None, env={"NACF_PROOF_MAX_SKEW_S": value})
    f = tmp_path / "c.toml"
    f.write_text(f"proof_max_skew_s = {value}\n")
    with pytest.raises(ValueError, match=r"option 'proof_max_skew_s' must be a finite number "
                                         r"in \[1, 1e\+09\]"):
        load_config(f, env={})
    assert load_config(None, env={"NACF_PROOF_MAX_SKEW_S": "1"}).proof_max_skew_s == 1.0


def test_the_readme_lists_every_option_with_its_flag_and_default():
    """The README's table of options is the one place an operator sees every option, its
    flag and its default next to each other; six options (proof_max_skew_s,
    rate_limit_lease, purge_interval_s, identify_max_k, model_path, reuse_port) were named
    nowhere in it. The table must list exactly the options of the code, with the flags of
    ``nacf serve`` and the defaults of ``Config``."""
    import argparse
    import re
    from pathlib import Path

    from nacf_core.cli import build_parser
    from nacf_core.config import OPTION_HELP

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {m[1]: (m[2], m[3]) for m in re.finditer(
        r"^\| `([a-z_]+)` \| ([^|]+) \| ([^|]+) \| [^|]+ \|$", readme, re.M)}
    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    flags = {a.dest: a.option_strings for a in sub._actions if a.dest in OPTION_HELP}

    def shown(v):
        if isinstance(v, bool):
            return f"`{str(v).lower()}`"
        if isinstance(v, float):
            return f"`{v:g}`"
        return '`""`' if v == "" else f"`{v}`"

    d = Config()
    want = {k: (" / ".join(f"`{f}`" for f in flags[k]) if k in flags else "—",
                shown(getattr(d, k))) for k in OPTION_HELP}
    assert {k: rows.get(k) for k in want} == want
    assert set(OPTION_HELP) == {f.name for f in dataclasses.fields(Config)} - {"api_keys"}


def test_a_session_max_age_below_the_session_ttl_is_refused():
    from nacf_core.config import Config

    with pytest.raises(ValueError, match="'session_max_age_s' .* is below 'session_ttl_s'"):
        Config(session_ttl_s=900, session_max_age_s=600)
    assert Config(session_ttl_s=900, session_max_age_s=900).session_max_age_s == 900


def test_serve_help_names_the_toml_keys_as_they_are_not_as_flags(tmp_path):
    """``nacf serve --help`` said the TOML keys "are the option names below with '_' for
    '-'", which reads as the flags with underscores; but the flags are not spelt like the
    options (--rate-limit is rate_limit_per_s, --session-ttl session_ttl_s, --model
    model_path), so ``rate_limit = 5`` from --rate-limit was refused as an unknown option.
    The help now gives the key for a flag as an example, and that example loads."""
    import re

    from nacf_core.cli import build_parser

    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    text = serve.format_help()
    assert "'_' for '-'" not in text
    m = re.search(r"e\.g\. ([a-z_]+) = ([0-9.]+)\s+for (--[a-z-]+) \2", text)
    assert m, text[:600]
    key, value, flag = m.groups()
    dest = next(a.dest for a in serve._actions if flag in a.option_strings)
    assert dest == key and key.replace("_", "-") != flag[2:]
    path = tmp_path / "nacf.toml"
    path.write_text(f"{key} = {value}\n")
    assert getattr(load_config(path, env={}), key) == float(value)


def test_session_ttl_help_says_continuous_authentication_renews_it():
    """The README says a session lasts session_ttl_s from its opening or from the last
    window ContinuousAuthenticate verified (each renews it: no upper bound while it is
    verified), but ``nacf serve --help`` gave it as the 'session lifetime after a
    successful authentication' and --session-ttl as the 'session lifetime', a bound a
    session kept verified does not have."""
    from nacf_core.cli import build_parser
    from nacf_core.config import OPTION_HELP

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flag = next(a for a in serve._actions if "--session-ttl" in a.option_strings)
    for text in (OPTION_HELP["session_ttl_s"], flag.help):
        assert "ContinuousAuthenticate" in text and "renew" in text, text


def test_model_path_help_names_the_model_nacf_serve_loads():
    """``nacf serve --help`` said an empty model_path means 'the shipped model for the
    montage', but nacf serve has no montage to choose by: it always loads the shipped
    16-channel model (eegmmidb-16ch), as the README says, so an 8-channel headset's
    signals are refused for the channels they lack."""
    from nacf_core.config import OPTION_HELP
    from nacf_core.model import default_model

    assert default_model(16).n_channels == 16
    assert "montage" not in OPTION_HELP["model_path"]
    assert "16-channel" in OPTION_HELP["model_path"], OPTION_HELP["model_path"]


def test_purge_interval_help_does_not_claim_session_expiry_waits_for_it():
    """``nacf serve --help`` said purge_interval_s is 'how often the retention purge and
    session expiry run' (default 3600 s: expired sessions kept for up to an hour), but
    sessions expire every 30 s at most (AuthService.maintenance: min(30, purge_interval_s));
    only the retention purge waits for purge_interval_s, as the README says."""
    from nacf_core.config import OPTION_HELP

    text = OPTION_HELP["purge_interval_s"]
    assert "retention purge" in text and "30 s" in text, text


def test_max_streams_per_client_is_half_of_max_streams_unless_given(tmp_path):
    """One client's bound on open streams (max_streams_per_client) follows max_streams
    when not given (0: half of it, rounded up), comes from the file, the environment and
    ``nacf serve --max-streams-per-client`` like max_streams, never exceeds max_streams,
    and a negative value is refused naming the option."""
    import argparse

    from nacf_core.cli import build_parser

    assert Config().streams_per_client == 8
    assert [Config(max_streams=n).streams_per_client for n in (1, 2, 3)] == [1, 1, 2]
    assert Config(max_streams=4, max_streams_per_client=3).streams_per_client == 3
    assert Config(max_streams=4, max_streams_per_client=10).streams_per_client == 4
    f = tmp_path / "nacf.toml"
    f.write_text("max_streams = 6\nmax_streams_per_client = 5\n")
    assert load_config(f, env={}).streams_per_client == 5
    assert load_config(f, env={"NACF_MAX_STREAMS_PER_CLIENT": "0"}).streams_per_client == 3
    with pytest.raises(ValueError, match=r"NACF_MAX_STREAMS_PER_CLIENT.*max_streams_per_client"
                                         r".*\[0, "):
        load_config(None, env={"NACF_MAX_STREAMS_PER_CLIENT": "-1"})
    serve = next(a for a in build_parser()._actions
                 if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    assert serve.parse_args(["--max-streams-per-client", "2"]).max_streams_per_client == 2
    text = serve.format_help()
    assert "--max-streams-per-client" in text and "NACF_MAX_STREAMS_PER_CLIENT" in text


def test_tls_client_ca_help_says_a_certificate_alone_admits_only_without_api_keys():
    """``nacf serve --help`` said of tls_client_ca_file that 'a verified client
    certificate carries every scope', but with API keys configured every mTLS call needs
    its key and gets that key's scopes (README, TLS; the interceptor): an operator
    reading the help would expect a certificate to admit an admin call on its own."""
    from nacf_core.config import OPTION_HELP

    text = OPTION_HELP["tls_client_ca_file"]
    assert "no API key" in text and "every scope" in text, text


@pytest.mark.parametrize("value", ["601", "1e6", "2000"])
def test_stream_max_seconds_has_an_upper_bound(tmp_path, value):
    """stream_max_seconds took anything up to 1e9 s (31 years): a typo (20000 for 20)
    let one AuthenticateStream hold a stream thread and buffer its signal for as long as
    its client kept sending. It is now at most 600 s (10 minutes), the bound named in the
    message, in ``nacf serve --help`` and in the README; 600 itself is taken."""
    f = tmp_path / "c.toml"
    f.write_text(f"stream_max_seconds = {value}\n")
    with pytest.raises(ValueError, match=r"'stream_max_seconds' must be a finite number in "
                                         r"\(0, 600\], got "):
        load_config(f, env={})
    with pytest.raises(ValueError, match=r"\(0, 600\]"):
        load_config(None, env={"NACF_STREAM_MAX_SECONDS": value})
    f.write_text("stream_max_seconds = 600\n")
    assert load_config(f, env={}).stream_max_seconds == 600
    assert "600" in config_module.OPTION_HELP["stream_max_seconds"]
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = next(r for r in readme.splitlines() if r.startswith("| `stream_max_seconds`"))
    assert "600" in row, row


_PATH_OPTIONS = ("data_dir", "store_key_file", "model_path", "tls_cert_file", "tls_key_file",
                 "tls_client_ca_file", "api_keys_file")


@pytest.mark.parametrize("option", _PATH_OPTIONS)
@pytest.mark.parametrize("source", ["environment", "file", "flag"])
@pytest.mark.parametrize("value", [" /var/lib/nacf", "/var/lib/nacf ", "   ", "x\u00a0"])
def test_a_file_or_directory_name_with_stray_whitespace_is_refused(tmp_path, option, source,
                                                                  value):
    """NACF_DATA_DIR=" /var/lib/nacf" (a space after '=' in a manifest or an env file) was
    taken as it came: the server made a directory ' ' in its working directory and started
    on a new empty store and key there, apart from the users it was meant to serve, and a
    file option's stray space only showed as a file not found. A file or directory name
    with leading or trailing whitespace is now refused, naming the option and where it
    came from; the same name without it loads."""
    env, path, flags = {}, None, {}
    if source == "environment":
        env = {"NACF_" + option.upper(): value}
    elif source == "file":
        path = tmp_path / "nacf.toml"
        path.write_text(f'{option} = "{value}"\n')
    else:
        flags = {option: value}
    with pytest.raises(ValueError) as ei:
        load_config(path, env=env, **flags)
    msg = str(ei.value)
    assert f"option {option!r}" in msg and "leading or trailing whitespace" in msg, msg
    assert {"environment": "NACF_" + option.upper(), "file": str(path),
            "flag": f"option {option!r}"}[source] in msg


def test_a_file_or_directory_name_with_inner_spaces_loads(tmp_path):
    c = load_config(None, env={"NACF_DATA_DIR": str(tmp_path / "my data"),
                               "NACF_MODEL_PATH": "/models/my model.npz"})
    assert (c.data_dir, c.model_path) == (str(tmp_path / "my data"), "/models/my model.npz")


@pytest.mark.parametrize("line, want", [
    ("require_device_proof = 0", "a boolean"),
    ('require_device_proof = "false"', "a boolean"),
    ('presentation_attack_detection = "no"', "a boolean"),
    ("allow_open_loopback = 1", "a boolean"),
    ('max_workers = "8"', "an integer"),
    ('rate_limit_per_s = "20"', "a number"),
    ('lockout_seconds = "1e3"', "a number"),
    ("data_dir = 1", "a string"),
    ("model_path = 3.5", "a string"),
    ("store_url = 5", "a string"),
    ("tls_cert_file = 0", "a string"),
])
def test_a_toml_value_of_the_wrong_type_is_refused_not_converted(tmp_path, line, want):
    """The file's values were converted as an environment variable's text is: TOML's
    ``require_device_proof = 0`` (or ``"false"``) turned the device proof off, ``data_dir
    = 1`` named a directory '1', ``max_workers = "8"`` passed for 8; TOML has types, and a
    value of another type than the option's is a mistake (a quoted number, a number for a
    file name), now refused naming the option, the type expected and what came."""
    f = tmp_path / "c.toml"
    f.write_text(line + "\n")
    option = line.split(" = ")[0]
    with pytest.raises(ValueError, match=f"{f}: option '{option}' must be {want}") as ei:
        load_config(f, env={})
    assert "TOML" in str(ei.value)


def test_toml_values_of_the_options_type_load(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('require_device_proof = false\nmax_workers = 8.0\nrate_limit_per_s = 20\n'
                 'lockout_seconds = 1e3\ndata_dir = "d"\n')
    c = load_config(f, env={})
    assert (c.require_device_proof, c.max_workers, c.rate_limit_per_s, c.lockout_seconds,
            c.data_dir) == (False, 8, 20.0, 1000.0, "d")
    # the environment's text is parsed as before
    c = load_config(None, env={"NACF_REQUIRE_DEVICE_PROOF": "false", "NACF_MAX_WORKERS": "8"})
    assert (c.require_device_proof, c.max_workers) == (False, 8)


def _serve_config(argv, env):
    """The Config ``nacf serve ARGV`` would run with under ``env``."""
    from nacf_core.cli import build_parser
    from nacf_core.commands import serve

    args = build_parser().parse_args(["serve", *argv])
    return load_config(args.config, env=env,
                       **{k: getattr(args, k, None) for k in serve._FLAG_KEYS})


@pytest.mark.parametrize("option", ["allow_open_loopback", "reuse_port",
                                    "require_device_proof", "presentation_attack_detection"])
def test_a_boolean_flag_overrides_the_file_and_the_environment_both_ways(tmp_path, option):
    """Flags win over the file and the environment, but --allow-open-loopback and
    --reuse-port could only say true: with allow_open_loopback = true in the file (or
    NACF_REUSE_PORT=1 in the environment) no command line could turn it off (argparse:
    unrecognized arguments: --no-allow-open-loopback). Every boolean option now has its
    --no- form, as require_device_proof had."""
    flag = "--" + option.replace("_", "-")
    f = tmp_path / "c.toml"
    for value in (True, False):
        f.write_text(f"{option} = {str(value).lower()}\n")
        env = {"NACF_" + option.upper(): str(value).lower()}
        for source_env, path in ((env, None), ({}, f)):
            argv = (["--config", str(path)] if path else []) + [
                flag if not value else "--no-" + flag[2:]]
            assert getattr(_serve_config(argv, source_env), option) is (not value), argv


def test_every_option_has_a_flag_in_nacf_serve():
    """Every option is settable by the file, the environment and the command line; six
    (proof_max_skew_s, stream_max_seconds, continuous_mismatch_windows, signal_loss_s,
    purge_interval_s, identify_max_k) had no flag, so a run that needed one of them
    changed (a test run with a short purge interval, a longer stream) had to write a file
    or export a variable, and `nacf serve --help` named them only in its epilog."""
    import argparse

    from nacf_core.cli import build_parser
    from nacf_core.commands import serve
    from nacf_core.config import OPTION_HELP

    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    dests = {a.dest for a in sub._actions if a.option_strings}
    assert set(OPTION_HELP) - dests == set()
    assert set(OPTION_HELP) - set(serve._FLAG_KEYS) == set()


def test_a_numeric_flag_overrides_the_file_and_the_environment(tmp_path):
    import argparse

    from nacf_core.cli import build_parser

    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    flags = {a.dest: a.option_strings[0] for a in sub._actions if a.option_strings}
    special = {"max_message_bytes": (70000, 80000, 90000),
               "session_max_age_s": (1000, 2000, 3000)}
    f = tmp_path / "c.toml"
    for option, kind in config_module._KINDS.items():
        if kind not in (int, float):
            continue
        in_file, in_env, on_line = special.get(option, (3, 4, 5))
        f.write_text(f"{option} = {in_file}\n")
        c = _serve_config(["--config", str(f), flags[option], str(on_line)],
                          {"NACF_" + option.upper(): str(in_env)})
        assert getattr(c, option) == on_line, option
