"""Key rotation on a live store: bounded by nothing but its own work, and no row left
under the old key by a writer that still holds it."""

from __future__ import annotations

import os
import time

from nacf_core.store import open_store
from nacf_core.store.crypto import Cipher


def test_rotate_key_is_not_cut_by_the_query_timeout(pg_url, key, monkeypatch):
    """Re-encrypting every row of a real store takes longer than one call's query timeout
    (default 30 s: minutes for a few thousand users with their PAD histories): the
    watchdog cut the rotation's connection, so a large PostgreSQL store could never be
    rotated with the default settings."""
    url, _ = pg_url
    s = open_store(url + "&query_timeout=0.3", key=key)
    try:
        for i in range(4):
            s.put_template(f"u{i}", f"t{i}".encode(), "m")
        real = Cipher.encrypt

        def slow(self, plaintext, aad):  # a big store, in miniature
            time.sleep(0.15)
            return real(self, plaintext, aad)

        monkeypatch.setattr(Cipher, "encrypt", slow)
        new = os.urandom(32)
        assert s.rotate_key(new) == 4
        monkeypatch.undo()
        assert s.key_id == Cipher(new).key_id
        assert s.get_template("u3").blob == b"t3"
    finally:
        s.close()
    with open_store(url, key=new) as s2:
        assert [t.blob for t in s2.iter_templates()] == [b"t0", b"t1", b"t2", b"t3"]
