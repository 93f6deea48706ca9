"""``build_service``: which store URLs get a template key made for them."""

from __future__ import annotations

import pytest

from nacf_core.config import Config
from nacf_core.errors import FailedPrecondition
from nacf_core.server.app import build_service


@pytest.fixture
def no_key_env(monkeypatch):
    monkeypatch.delenv("NACF_TEMPLATE_KEY", raising=False)
    monkeypatch.delenv("NACF_TEMPLATE_KEY_FILE", raising=False)


@pytest.mark.parametrize("url", [
    "{d}/plain.db",               # a plain file path is a SQLite store (open_store)
    "  sqlite:///{d}/blank.db\n",  # blanks around a URL are no part of it
    "SQLite:///{d}/upper.db",      # a URL scheme is case-insensitive
])
def test_a_sqlite_store_of_any_spelling_gets_its_key_made(tmp_path, no_key_env, url):
    data = tmp_path / "data"
    svc = build_service(Config(data_dir=str(data), store_url=url.format(d=tmp_path)))
    try:
        assert svc.store.in_process
        assert (data / "nacf.key").is_file()
    finally:
        svc.store.close()


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1:1/db", " POSTGRES://u@h/db"])
def test_a_shared_store_without_a_key_is_refused_before_it_is_opened(tmp_path, no_key_env,
                                                                      url):
    data = tmp_path / "data"
    with pytest.raises(FailedPrecondition, match="no template key configured for a shared"):
        build_service(Config(data_dir=str(data), store_url=url))
    assert not (data / "nacf.key").exists()


@pytest.mark.parametrize("url", ["mysql://u@h/db", " REDIS://h:6379/0"])
def test_a_store_url_of_another_scheme_is_refused_by_the_configuration(tmp_path, url):
    from nacf_core.config import load_config

    with pytest.raises(ValueError, match="expected sqlite:///PATH.db, postgresql://"):
        load_config(env={"NACF_STORE_URL": url, "NACF_DATA_DIR": str(tmp_path / "d")})
    assert not (tmp_path / "d").exists()


def test_presentation_attack_detection_on_that_cannot_load_is_refused(tmp_path, no_key_env,
                                                                      monkeypatch):
    """With presentation_attack_detection on (the default), a PAD module that failed to
    import (a missing or broken dependency of it) made build_service serve without PAD
    and without a word: replays and non-physiological probes accepted while the
    configuration said they were refused. It is now refused, naming the option; off, the
    service builds without it."""
    import sys

    monkeypatch.setitem(sys.modules, "nacf_core.pad", None)  # any import of it fails
    data = tmp_path / "data"
    with pytest.raises(FailedPrecondition, match="presentation_attack_detection"):
        build_service(Config(data_dir=str(data), store_url=f"{tmp_path}/n.db"))
    svc = build_service(Config(data_dir=str(data), store_url=f"{tmp_path}/n.db",
                               presentation_attack_detection=False))
    try:
        assert svc.pad is None
    finally:
        svc.store.close()


def test_presentation_attack_detection_with_windows_shorter_than_it_judges_is_refused(
        tmp_path, no_key_env):
    """PAD judges at least 2 s of signal; with a model of 1-s windows every
    ContinuousAuthenticate window, and every Authenticate probe under 2 s that matched
    the user, was INVALID_ARGUMENT ("too short for presentation-attack detection"),
    after the decision and with nothing recorded: only a match got it, so it told a
    caller which probes matched, outside the lockout's count. Such a model is now
    refused at start with PAD on, naming both lengths; off, it is served."""
    import dataclasses

    from nacf_core.model import default_model

    path = dataclasses.replace(default_model(16), window_s=1.0, hop_s=0.5).save(
        tmp_path / "short.npz")
    data = tmp_path / "data"
    with pytest.raises(FailedPrecondition, match=r"1 s windows.*at least 2 s"):
        build_service(Config(data_dir=str(data), store_url=f"{tmp_path}/n.db",
                             model_path=str(path)))
    svc = build_service(Config(data_dir=str(data), store_url=f"{tmp_path}/n.db",
                               model_path=str(path), presentation_attack_detection=False))
    try:
        assert svc.pad is None and svc.rec.window_s == 1.0
    finally:
        svc.store.close()


def test_a_store_whose_key_file_is_gone_is_refused_and_no_new_key_is_made(tmp_path,
                                                                          no_key_env):
    """The embedded store exists but DATA_DIR/nacf.key does not (deleted; the database
    restored or copied without it). A new random key was made in its place, and the
    open then failed 'Wrong template key': a key file that opens nothing was left where
    the lost one belongs (to be backed up, or copied to the next host, as the key).
    Refused now before anything is written, naming the missing key file and the store."""
    data = tmp_path / "data"
    svc = build_service(Config(data_dir=str(data)))
    svc.store.put_template("alice", b"t" * 64, "m")
    svc.store.close()
    (data / "nacf.key").unlink()
    with pytest.raises(FailedPrecondition, match="nacf.key.*missing.*nacf.db"):
        build_service(Config(data_dir=str(data)))
    assert not (data / "nacf.key").exists()
