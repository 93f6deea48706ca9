"""``nacf store`` subcommands."""

from __future__ import annotations

import json

from nacf_core.cli import main
from nacf_core.store import open_store


def test_store_cli_cycle(tmp_path, capsys):
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert main(["store", "new-key", str(k1)]) == 0
    assert main(["store", "new-key", str(k2)]) == 0
    capsys.readouterr()
    assert main(["store", "new-key", str(k1)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["store", "migrate", "--store-url", url, "--key-file", str(k1)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema_version"] == 9 and out["backend"] == "sqlite"
    with open_store(url, key=k1) as s:
        s.put_template("alice", b"template", "m")
        s.record_attempt("alice", True, 0.9, "ok", "p", 0.01, "Authenticate", now=1.0)
    assert main(["store", "stats", "--store-url", url, "--key-file", str(k1)]) == 0
    assert json.loads(capsys.readouterr().out)["total_active_users"] == 1
    assert main(["store", "purge-attempts", "--older-than-days", "1", "--store-url", url,
                 "--key-file", str(k1)]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 1}
    for bad in ("inf", "nan", "-1"):  # named by the option, not the API's parameter
        assert main(["store", "purge-attempts", "--older-than-days", bad, "--store-url", url,
                     "--key-file", str(k1)]) == 1
        assert "--older-than-days must be a number of days in [0, 1e6]" in \
            capsys.readouterr().err
    assert main(["store", "rotate-key", "--store-url", url, "--key-file", str(k1),
                 "--new-key-file", str(k2)]) == 0
    assert json.loads(capsys.readouterr().out)["rows_reencrypted"] == 1
    assert main(["store", "stats", "--store-url", url, "--key-file", str(k1)]) == 1
    assert "Wrong template key" in capsys.readouterr().err
    with open_store(url, key=k2) as s:
        assert s.get_template("alice").blob == b"template"


def test_new_key_that_cannot_be_written_whole_leaves_no_key_file(tmp_path):
    """A write that failed midway (disk full: here the file-size limit) left a key file
    holding part of a key: not a key, and `new-key` then refused to overwrite it."""
    from _fsize import run_with_file_size_limit

    path = tmp_path / "k"
    out = run_with_file_size_limit(
        "from nacf_core.cli import main\nimport nacf_core.commands.store, nacf_core.store",
        "sys.exit(main(['store', 'new-key', sys.argv[1]]))\n", 10, str(path))
    assert out.returncode == 1 and "nacf store: error:" in out.stderr, out.stderr
    assert not path.exists()
    assert main(["store", "new-key", str(path)]) == 0
    assert len(path.read_bytes()) == 45


def test_actions_other_than_migrate_refuse_a_store_that_does_not_exist(store_url, tmp_path,
                                                                       capsys):
    """A mistyped --store-url (a file or PostgreSQL schema that is not there) made
    rotate-key create a new, empty store and report it rotated, 0 rows re-encrypted
    (the real store still under the old key, which the operator may then discard), and
    stats report 0 users: only migrate creates a store now."""
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    assert main(["store", "new-key", str(k1)]) == main(["store", "new-key", str(k2)]) == 0
    capsys.readouterr()
    key = ["--key-file", str(k1)]
    for argv in (["rotate-key", "--new-key-file", str(k2)], ["stats"],
                 ["purge-attempts", "--older-than-days", "1"]):
        assert main(["store", *argv, "--store-url", store_url, *key]) == 1
        out, err = capsys.readouterr()
        assert out == "" and "There is no nacf store at" in err and "nacf store migrate" in err
    if store_url.startswith("sqlite"):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["k1", "k2"]
    else:
        import psycopg

        dsn, schema = store_url.rsplit("schema=", 1)
        with psycopg.connect(dsn.rstrip("?&")) as conn:
            assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                (schema,)).fetchone() is None
    assert main(["store", "migrate", "--store-url", store_url, *key]) == 0
    assert main(["store", "stats", "--store-url", store_url, *key]) == 0
    capsys.readouterr()


def test_a_wrong_or_missing_key_names_the_key_file_and_the_option(tmp_path, capsys,
                                                                   monkeypatch):
    """The key given with --key-file that is not the store's was reported as 'the
    configured key (NACF_TEMPLATE_KEY / NACF_TEMPLATE_KEY_FILE / key=)', naming neither
    the file nor the option; no key at all told the operator to 'pass key= to
    open_store()', a Python parameter, not --key-file."""
    for var in ("NACF_TEMPLATE_KEY", "NACF_TEMPLATE_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    url = f"sqlite:///{tmp_path / 'n.db'}"
    for k in (k1, k2):
        assert main(["store", "new-key", str(k)]) == 0
    assert main(["store", "migrate", "--store-url", url, "--key-file", str(k1)]) == 0
    capsys.readouterr()

    assert main(["store", "stats", "--store-url", url, "--key-file", str(k2)]) == 1
    err = capsys.readouterr().err
    assert "Wrong template key" in err and f"the key file {str(k2)!r}" in err, err
    assert "key=" not in err
    monkeypatch.setenv("NACF_TEMPLATE_KEY_FILE", str(k2))
    assert main(["store", "stats", "--store-url", url]) == 1
    err = capsys.readouterr().err
    assert f"the key file {str(k2)!r} (NACF_TEMPLATE_KEY_FILE)" in err, err
    monkeypatch.delenv("NACF_TEMPLATE_KEY_FILE")

    for action in (["migrate"], ["stats"], ["purge-attempts", "--older-than-days", "1"]):
        assert main(["store", *action, "--store-url", url]) == 1
        err = capsys.readouterr().err
        assert "--key-file" in err and "open_store" not in err, err


def test_rotate_key_rotates_past_a_damaged_template_and_exits_3_naming_it(tmp_path, capsys):
    """One damaged template stopped `nacf store rotate-key` at that row ('nacf store:
    error: The template of user 'bob' failed authentication', exit 1, nothing rotated):
    the store could not leave a leaked key while any row was damaged. Every readable row
    is rotated now; the damaged ones are left as they were, named on stderr and in the
    JSON, and the exit status is 3 (not 1: the store IS under the new key now)."""
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    url = f"sqlite:///{tmp_path / 'n.db'}"
    for k in (k1, k2):
        assert main(["store", "new-key", str(k)]) == 0
    with open_store(url, key=k1) as s:
        for u in ("alice", "bob", "carol"):
            s.put_template(u, f"t-{u}".encode(), "m")
        s.register_device("carol", "hs-c", "secret-secret-secret")
        s._run(lambda tx: tx.execute("UPDATE templates SET ciphertext = ? WHERE "
                                     "user_id = 'bob'", (b"\0" * 40,)))
    capsys.readouterr()
    assert main(["store", "rotate-key", "--store-url", url, "--key-file", str(k1),
                 "--new-key-file", str(k2)]) == 3
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["rows_reencrypted"] == 3 and got["unreadable_templates"] == ["bob"]
    assert got["unreadable_devices"] == [] and got["unreadable_fingerprints"] == []
    assert "'bob'" in err and "re-enroll" in err and got["new_key_id"] in err, err
    with open_store(url, key=k2) as s:
        assert s.get_template("alice").blob == b"t-alice"
        assert s.get_device("hs-c").secret == "secret-secret-secret"
    assert main(["store", "rotate-key", "--store-url", url, "--key-file", str(k2),
                 "--new-key-file", str(k1)]) == 3  # bob's row is still damaged
    capsys.readouterr()
    # bob re-enrolled: nothing damaged, exit 0
    with open_store(url, key=k1) as s:
        s.put_template("bob", b"t-bob-2", "m")
    assert main(["store", "rotate-key", "--store-url", url, "--key-file", str(k1),
                 "--new-key-file", str(k2)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["unreadable_templates"] == [] and "warning" not in err


def test_purge_attempts_accepts_every_age_it_advertises(tmp_path, capsys):
    """--older-than-days takes up to 1e6 days, but from about 738 000 days on the cut-off
    fell before year 1 and the store refused it, naming its parameter ('older_than'
    must be ... of a date from year 1 to 9999) and exiting 1. Such an age purges
    nothing (no row is that old), as any age past the oldest row does."""
    key = tmp_path / "k"
    url = f"sqlite:///{tmp_path / 'n.db'}"
    assert main(["store", "new-key", str(key)]) == 0
    with open_store(url, key=key) as s:
        s.record_attempt("alice", True, 0.9, "ok", "p", 0.01, "Authenticate", now=1.0)
    capsys.readouterr()
    for days in ("1e6", "800000"):
        assert main(["store", "purge-attempts", "--older-than-days", days, "--store-url",
                     url, "--key-file", str(key)]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out) == {"deleted": 0}
    with open_store(url, key=key) as s:
        assert len(s.recent_attempts("alice")) == 1
