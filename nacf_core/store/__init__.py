"""Template store: users, encrypted templates, devices, sessions, lockout, rate limits,
audit log. One interface (:class:`Store`), two backends (SQLite, PostgreSQL).

>>> store = open_store("sqlite:///nacf.db")                       # doctest: +SKIP
>>> store = open_store("postgresql://nacf@db:5432/nacf?schema=auth")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import stat
from typing import Any
from urllib.parse import urlsplit

from ..config import file_kind
from ..errors import InvalidArgument
from .base import (
    Attempt,
    AuthOutcome,
    AuthState,
    DeviceRecord,
    KeyRotation,
    LockoutState,
    Session,
    Stats,
    Store,
    TemplateRecord,
    UserPage,
    UserRecord,
)
from .crypto import Cipher, create_key_file, load_key

__all__ = [
    "open_store",
    "Store",
    "UserRecord",
    "TemplateRecord",
    "DeviceRecord",
    "Session",
    "Attempt",
    "Stats",
    "LockoutState",
    "UserPage",
    "AuthState",
    "AuthOutcome",
    "KeyRotation",
    "Cipher",
    "load_key",
    "create_key_file",
    "sqlite_path",
]


def open_store(url: str | os.PathLike, key: Any = None, **options: Any) -> Store:
    """Open (creating and migrating if needed) the store at ``url``.

    Parameters
    ----------
    url : str | path-like
        ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
        ``sqlite:///:memory:``, a plain file path (SQLite), or
        ``postgresql://user[:password]@host[:port]/dbname[?schema=NAME&pool_size=N]``
        (``postgres://`` too). ``schema`` puts every table in that PostgreSQL schema
        (created if missing); ``query_timeout=SECONDS`` bounds a transaction's wait for
        the server (default 30, 0: none).
    key : bytes | str | path-like | None
        The template encryption key; ``None`` reads ``NACF_TEMPLATE_KEY`` or
        ``NACF_TEMPLATE_KEY_FILE`` (see :mod:`nacf_core.store.crypto`).
    **options
        Backend options: ``busy_timeout_s`` (SQLite); ``pool_size``,
        ``connect_timeout_s``, ``query_timeout_s`` (PostgreSQL); ``create`` (both,
        default True): False opens only a store that exists (``NotFound`` otherwise, and
        no file or schema is created).

    Raises
    ------
    InvalidArgument
        Unsupported URL scheme.
    Unavailable
        The database cannot be opened or reached.
    FailedPrecondition
        No key configured, or not the key the store was written with.
    NotFound
        ``create=False`` and there is no store at ``url``.
    """
    path = sqlite_path(url)
    if path is None:
        from .postgres import PostgresStore

        return PostgresStore(os.fspath(url).strip(), key, **options)
    from .sqlite import SQLiteStore

    _check_sqlite_path(path)
    return SQLiteStore(path, key, **options)


def sqlite_path(url: str | os.PathLike) -> str | None:
    """The file (or ``":memory:"``) of the SQLite store at ``url`` as :func:`open_store`
    reads it; ``None`` for a PostgreSQL URL.

    Raises
    ------
    InvalidArgument
        Not a store URL (its scheme, a SQLite URL naming no file or with a query).
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str) or not url:
        raise InvalidArgument(f"'url' must be a non-empty store URL, got {url!r}.")
    if "://" in url:
        # a URL read from a file or a secret keeps its line end: blanks around a URL are
        # no part of it (urlsplit drops them from a PostgreSQL URL; in a SQLite path they
        # named another file: a new, empty store beside the real one)
        url = url.strip()
    try:
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    except ValueError as exc:  # a bracket left open, brackets around a name: no password
        raise InvalidArgument(f"the store URL is not valid: {exc}.") from None
    if scheme in ("postgresql", "postgres"):
        return None
    if scheme == "sqlite":
        if "?" in url or "#" in url:
            # a URL's query or fragment (sqlite:///nacf.db?mode=ro) would become part of
            # the file's name: a new, empty store next to the one meant
            raise InvalidArgument(
                f"SQLite URL {url!r} has a query or fragment ('?' or '#'), which nacf does "
                "not read: use sqlite:///path.db (a path with '?' in it: give it without "
                "the sqlite:// scheme).")
        path = url[len("sqlite://"):]
        if path.startswith("/") and not path.startswith("//"):
            path = path[1:]  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
        elif path.startswith("//"):
            path = path[1:]
        if not path:
            raise InvalidArgument(f"SQLite URL {url!r} names no file: use sqlite:///path.db "
                                  f"or sqlite:///:memory:.")
        return path
    if scheme == "":
        head = url.split(":", 1)[0].lower() if ":" in url else ""
        if head in ("sqlite", "postgresql", "postgres"):
            # a URL missing its '//' (sqlite:nacf.db, postgres:db) is no file name meant:
            # taken for one it was a new, empty SQLite store
            form = ("sqlite:///PATH.db (sqlite:////ABS/PATH.db for an absolute path)"
                    if head == "sqlite" else "postgresql://user@host:port/dbname")
            raise InvalidArgument(
                f"store URL {url!r} is missing the '//' after {head + ':'!r}: expected "
                f"{form} (a file of that name: give it as ./{url}).")
        return url
    raise InvalidArgument(
        f"Invalid value for the 'url' parameter. Allowed schemes are 'sqlite', "
        f"'postgresql', but got {scheme!r} instead."
    )


def _check_sqlite_path(path: str) -> None:
    """Refuse a SQLite path that exists and is not a regular file (a directory, a FIFO, a
    device such as ``/dev/zero``): SQLite would fail on it, or block, after creating its
    ``-journal`` and ``-wlock`` files next to it."""
    if path == ":memory:":
        return
    bad = next((c for c in path if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InvalidArgument(f"SQLite store path {path!r} holds a control character "
                              f"({bad!r}): expected a file name (a line end read with the "
                              f"URL from a file?).")
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing (created on open) or unreadable: SQLite says
        return
    if not stat.S_ISREG(mode):
        raise InvalidArgument(f"SQLite store {path!r} is {file_kind(mode)}; expected a "
                              "database file (a regular file, or a path where one can be "
                              "created).")
