"""Subprocess body for the crash and multi-process tests (not a test module).

usage: python _store_worker.py MODE URL KEY_B64 USER [N]

- ``crash``: enroll ``USER`` over and over (each write a new version whose blob and meta
  are derived from the version), printing each committed version, until killed.
- ``bump``: ``N`` template updates of ``USER`` and ``N`` registered failures, then exit.
- ``rotate``: rotate between KEY_B64 and the key in ``USER`` (base64) forever,
  printing the key now in use, until killed.
"""

from __future__ import annotations

import base64
import hashlib
import sys


def blob_for(version: int) -> bytes:
    """64 KiB that identify ``version`` (so a torn write could not pass for either)."""
    return hashlib.sha256(str(version).encode()).digest() * 2048


def main() -> int:
    mode, url, key_b64, user = sys.argv[1:5]
    from nacf_core.errors import NotFound
    from nacf_core.store import open_store

    store = open_store(url, key=base64.b64decode(key_b64))
    if mode == "crash":
        while True:
            try:
                current = store.get_template(user).version
            except NotFound:
                current = 0
            v = store.put_template(user, blob_for(current + 1), "m", {"v": current + 1},
                                   expected_version=current)
            print(v, flush=True)
    if mode == "bump":
        n = int(sys.argv[5])
        for i in range(n):
            store.put_template(user, blob_for(i), "m")
            store.register_failure(user, 10**9, 60)
        store.close()
        return 0
    if mode == "rotate":
        keys = [base64.b64decode(key_b64), base64.b64decode(user)]
        i = 0
        while True:
            i = 1 - i
            store.rotate_key(keys[i])
            print(i, flush=True)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
