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
    assert out["schema_version"] == 2 and out["backend"] == "sqlite"
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
    import subprocess
    import sys

    path = tmp_path / "k"
    code = (
        "import resource, signal, sys\n"
        "from nacf_core.cli import main\n"
        "import nacf_core.commands.store, nacf_core.store\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10, resource.RLIM_INFINITY))\n"
        "sys.exit(main(['store', 'new-key', sys.argv[1]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "nacf store: error:" in out.stderr, out.stderr
    assert not path.exists()
    assert main(["store", "new-key", str(path)]) == 0
    assert len(path.read_bytes()) == 45
