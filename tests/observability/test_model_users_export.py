"""The server exports the model's accuracy and the store's daily active users."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from nacf_core.config import SCOPES, Config
from nacf_core.metrics import Metrics
from nacf_core.model import default_model
from nacf_core.server.app import NacfServer


def test_model_accuracy_and_daily_active_users_come_from_model_and_store(tmp_path):
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    config = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(tmp_path),
                    api_keys={"k" * 24: frozenset(SCOPES)})
    with NacfServer(config, metrics=metrics) as server:
        model = default_model(16)
        cal = model.info["calibration"]
        first = cal[sorted(cal, key=int)[0]]
        expected = 1 - (first["fmr"] + first["fnmr"]) / 2
        got = registry.get_sample_value("nacfauth_model_accuracy",
                                        {"model_version": model.version})
        assert got is not None and np.isclose(got, expected)
        store = server.service.store
        assert registry.get_sample_value("nacfauth_daily_active_users") == 0
        store.put_template("alice", b"x", model.version)
        store.record_attempt("alice", True, 0.9, "", "ipv4:127.0.0.1:1", 0.01, "Authenticate")
        metrics.use_daily_active_users_from(lambda: store.stats().active_users_today)  # no cache
        assert registry.get_sample_value("nacfauth_daily_active_users") == 1


def test_start_warns_once_of_users_enrolled_under_another_model(tmp_path, caplog):
    config = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(tmp_path),
                    api_keys={"k" * 24: frozenset(SCOPES)})
    model = default_model(16)

    def warnings():
        return [r for r in caplog.records
                if getattr(r, "event_type", "") == "users_of_other_model"]

    with caplog.at_level("WARNING", logger="nacf.server"):
        with NacfServer(config, metrics=Metrics(CollectorRegistry())) as server:
            store = server.service.store
            store.put_template("alice", b"x", model.version)
            store.put_template("bob", b"x", "older-model")
            store.put_template("carol", b"x", "older-model")
        assert warnings() == []  # an empty store at start
        with NacfServer(config, metrics=Metrics(CollectorRegistry())):
            pass
    (w,) = warnings()
    assert w.users == 2 and w.users_by_model_version == {"older-model": 2}
    assert w.model_version == model.version
    assert "2 active user(s)" in w.getMessage()


def test_start_warns_of_secret_files_other_users_can_read(tmp_path, caplog, monkeypatch):
    """The template key (created 0600) draws no warning; chmod 644 on it, and a keys file
    readable by its group, draw one warning each, naming the file and its mode."""
    monkeypatch.delenv("NACF_TEMPLATE_KEY", raising=False)
    monkeypatch.delenv("NACF_TEMPLATE_KEY_FILE", raising=False)
    keys = tmp_path / "keys.txt"
    keys.write_text("k" * 24 + " authenticate,enroll,admin\n")
    keys.chmod(0o600)
    config = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(tmp_path),
                    api_keys_file=str(keys), api_keys={"k" * 24: frozenset(SCOPES)})

    def warned():
        return {(r.file, r.mode) for r in caplog.records
                if getattr(r, "event_type", "") == "secret_file_readable"}

    with caplog.at_level("WARNING", logger="nacf.server"):
        with NacfServer(config, metrics=Metrics(CollectorRegistry())):
            pass
        assert warned() == set()
        (tmp_path / "nacf.key").chmod(0o644)
        keys.chmod(0o640)
        with NacfServer(config, metrics=Metrics(CollectorRegistry())):
            pass
    assert warned() == {(str(tmp_path / "nacf.key"), "0644"), (str(keys), "0640")}


def test_start_warns_of_a_sqlite_store_file_other_users_can_read(tmp_path, caplog,
                                                                monkeypatch):
    """A store file made by a nacf of before it created them 0600 (or copied in by hand)
    stays readable by other local users: the audit trail (addresses, scores), session
    hashes and the encrypted templates. The key file's mode drew a warning, the store's
    none; it draws one now, as the other secret files do."""
    monkeypatch.delenv("NACF_TEMPLATE_KEY", raising=False)
    monkeypatch.delenv("NACF_TEMPLATE_KEY_FILE", raising=False)
    config = Config(grpc_address="127.0.0.1:0", metrics_address="", data_dir=str(tmp_path),
                    api_keys={"k" * 24: frozenset(SCOPES)})

    def warned():
        return {(r.file, r.mode) for r in caplog.records
                if getattr(r, "event_type", "") == "secret_file_readable"}

    with caplog.at_level("WARNING", logger="nacf.server"):
        with NacfServer(config, metrics=Metrics(CollectorRegistry())):
            pass
        assert warned() == set()
        (tmp_path / "nacf.db").chmod(0o644)
        with NacfServer(config, metrics=Metrics(CollectorRegistry())):
            pass
    assert warned() == {(str((tmp_path / "nacf.db").resolve()), "0644")}
