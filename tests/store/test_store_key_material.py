"""Key material and ciphertexts that are not what they should be: refused clearly."""

from __future__ import annotations

import os

import pytest

from nacf_core.errors import FailedPrecondition


@pytest.mark.parametrize("length", [0, 5, 7])
def test_a_truncated_ciphertext_fails_authentication(store, length):
    """A ciphertext shorter than a nonce (a truncated or overwritten row) raised the AEAD
    library's ValueError ("Nonce must be between 8 and 128 bytes"): not the
    FailedPrecondition naming the row that any other damaged ciphertext gets (the service
    answered UNAVAILABLE, "retry later", for a row no retry can read, and a rotation
    stopped without saying which row)."""
    store.put_template("alice", b"alice-template", "m")
    store.register_device("alice", "hs-1", "secret-secret-secret")
    short = os.urandom(length)
    store._run(lambda tx: tx.execute(
        "UPDATE templates SET ciphertext = ? WHERE user_id = ?", (short, "alice")))
    store._run(lambda tx: tx.execute(
        "UPDATE devices SET secret_ct = ? WHERE device_id = ?", (short, "hs-1")))
    with pytest.raises(FailedPrecondition, match="alice.*altered"):
        store.get_template("alice")
    with pytest.raises(FailedPrecondition, match="hs-1.*altered"):
        store.get_device("hs-1")
    with pytest.raises(FailedPrecondition, match="'alice'"):
        store.rotate_key(os.urandom(32))
