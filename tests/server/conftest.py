"""Fixtures of the server tests: one real model per session, fitted on EEGMMIDB
subjects the tests do not enroll."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, shared_data):
    from _server_support import fit_test_model

    return fit_test_model(tmp_path_factory.mktemp("model") / "test-16ch.npz")
