"""``nacf store``: operate the template store (new key, migrate, rotate key, stats, purge).

Examples::

    nacf store new-key /etc/nacf/template.key
    nacf store migrate --store-url postgresql://nacf@db/nacf --key-file /etc/nacf/template.key
    nacf store rotate-key --store-url sqlite:///nacf.db --key-file old.key --new-key-file new.key
    nacf store stats --store-url sqlite:///nacf.db --key-file nacf.key
    nacf store purge-attempts --older-than-days 90 --store-url sqlite:///nacf.db --key-file k
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "ROTATED_WITH_UNREADABLE_ROWS"]

#: exit status of ``rotate-key`` that rotated every readable row and left damaged ones
#: (named on stderr): the store is under the new key, unlike after an error (1)
ROTATED_WITH_UNREADABLE_ROWS = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "store", help="operate the template store (keys, migrations, key rotation, stats)",
        description="Operate the template store. The key comes from --key-file, or from "
                    "NACF_TEMPLATE_KEY (base64 of 32 bytes) / NACF_TEMPLATE_KEY_FILE.")
    sub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    from nacf_core.commands._args import non_empty

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store-url", required=True,
                        help="sqlite:///PATH.db or postgresql://user@host:port/db[?schema=S]")
        # '' (a variable that was not set) is refused: taken as no option, the
        # environment's key stood in for the file meant
        sp.add_argument("--key-file", default=None, type=non_empty("file name"),
                        help="template key file (default: NACF_TEMPLATE_KEY[_FILE])")

    sp = sub.add_parser("new-key", help="write a new random key file (mode 0600)")
    sp.add_argument("path", help="file to create (never overwritten)")
    sp.set_defaults(func=_new_key)

    sp = sub.add_parser("migrate", help="create the store or apply pending schema migrations; "
                                        "print the version (the other actions need a store)")
    common(sp)
    sp.set_defaults(func=_migrate)

    sp = sub.add_parser("rotate-key", help="re-encrypt everything under a new key "
                                           "(one transaction; stop other replicas first); "
                                           "rows that do not decrypt are left as they are "
                                           "and named, exit status 3")
    common(sp)
    sp.add_argument("--new-key-file", required=True, help="the new key (see new-key)")
    sp.set_defaults(func=_rotate)

    sp = sub.add_parser("stats", help="print the monitoring guide's stats, and the active "
                                      "users per model version, as JSON")
    common(sp)
    sp.set_defaults(func=_stats)

    sp = sub.add_parser("purge-attempts", help="delete audit rows older than N days")
    common(sp)
    sp.add_argument("--older-than-days", type=float, required=True)
    sp.set_defaults(func=_purge)


def _open(args: argparse.Namespace, create: bool = False):
    """The store at --store-url; only ``migrate`` creates one (a mistyped URL given to
    ``rotate-key`` or ``stats`` is an error, not a new empty store)."""
    import os
    from pathlib import Path

    from nacf_core.errors import FailedPrecondition
    from nacf_core.store import open_store
    from nacf_core.store.crypto import KEY_ENV, KEY_FILE_ENV

    key = Path(args.key_file) if args.key_file else None
    if key is None and not (os.environ.get(KEY_ENV) or os.environ.get(KEY_FILE_ENV)):
        raise FailedPrecondition(
            f"no template key: give --key-file FILE (the key the store was written with; "
            f"`nacf store new-key FILE` makes one for a new store), or set {KEY_ENV} "
            f"(base64 of 32 bytes) or {KEY_FILE_ENV}.")
    return open_store(args.store_url, key=key, create=create)


def _fail(exc: Exception) -> int:
    print(f"nacf store: error: {exc}", file=sys.stderr)
    return 1


def _new_key(args: argparse.Namespace) -> int:
    from nacf_core.store import Cipher, create_key_file

    try:
        key = create_key_file(args.path)
    except FileExistsError:
        return _fail(FileExistsError(f"{args.path!r} exists; refusing to overwrite a key."))
    except OSError as exc:
        return _fail(exc)
    print(json.dumps({"path": args.path, "key_id": Cipher(key).key_id}))
    return 0


def _run(args: argparse.Namespace, fn, create: bool = False) -> int:
    from nacf_core.errors import NacfError

    try:
        with _open(args, create) as store:
            out = fn(store)
    except (NacfError, ValueError, TypeError) as exc:
        return _fail(exc)
    print(json.dumps(out))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    return _run(args, lambda s: {"backend": s.backend, "schema_version": s.schema_version(),
                                 "key_id": s.key_id}, create=True)


def _rotate(args: argparse.Namespace) -> int:
    from pathlib import Path

    done: dict = {}

    def fn(s):
        old = s.key_id
        r = s.rotate_key(Path(args.new_key_file))
        done.update(rotation=r, key_id=s.key_id)
        return {"rows_reencrypted": r.rows, "old_key_id": old, "new_key_id": s.key_id,
                "unreadable_templates": r.unreadable_templates,
                "unreadable_devices": r.unreadable_devices,
                "unreadable_fingerprints": r.unreadable_fingerprints}

    rc = _run(args, fn)
    r = done.get("rotation")
    if rc or r is None or r.complete:
        return rc
    skipped = [f"{what} {', '.join(repr(i) for i in ids)}" for what, ids in (
        ("the templates of users", r.unreadable_templates),
        ("the secrets of devices", r.unreadable_devices),
        ("PAD fingerprints of users", r.unreadable_fingerprints)) if ids]
    fixes = [fix for fix, ids in (
        ("re-enroll those users (Enroll with update=true)", r.unreadable_templates),
        ("re-register those devices (RegisterDevice with rotate=true)", r.unreadable_devices),
        ("delete and enroll again the users with a damaged PAD fingerprint",
         r.unreadable_fingerprints)) if ids]
    print(f"nacf store: warning: the store is now under the new key (id {done['key_id']}: "
          f"use {args.new_key_file} from now on), but these rows could not be read and were "
          f"left as they were (damaged: altered, truncated or under a lost key): "
          f"{'; '.join(skipped)}. They stay unreadable: {'; '.join(fixes)}.",
          file=sys.stderr)
    return ROTATED_WITH_UNREADABLE_ROWS


def _stats(args: argparse.Namespace) -> int:
    import dataclasses

    # with the active users per model version: after a model change, those enrolled
    # under another one can neither authenticate nor be identified until re-enrolled
    return _run(args, lambda s: {**dataclasses.asdict(s.stats()),
                                 "users_by_model_version": s.count_users_by_model()})


def _purge(args: argparse.Namespace) -> int:
    import time

    days = args.older_than_days
    if not 0 <= days <= 1e6:  # a finite age: inf would be a cut-off at -inf, nan none
        return _fail(ValueError(f"--older-than-days must be a number of days in [0, 1e6], "
                                f"got {days}."))
    from nacf_core.store.base import retention_cutoff

    return _run(args, lambda s: {"deleted": s.purge_attempts(
        retention_cutoff(time.time(), days))})
