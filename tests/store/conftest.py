"""Fixtures running every store test against both backends.

PostgreSQL comes from ``NACF_TEST_POSTGRES_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test gets a fresh schema that is
dropped afterwards. A missing server FAILS these tests (CI guarantees one): it is never
a skip.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from nacf_core.store import open_store

PG_DSN = os.environ.get("NACF_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _pg_url(schema: str) -> str:
    sep = "&" if "?" in PG_DSN else "?"
    return f"{PG_DSN}{sep}schema={schema}"


def _drop_schema(schema: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is required for the store tests and did not answer at {PG_DSN!r} "
            f"(set NACF_TEST_POSTGRES_DSN; .ci/run starts a server): {exc}",
            pytrace=False,
        )


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    """A URL for a fresh, empty store of each backend (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    request.getfixturevalue("pg_available")
    schema = f"nacf_t_{uuid.uuid4().hex[:12]}"
    try:
        yield _pg_url(schema)
    finally:
        _drop_schema(schema)


@pytest.fixture
def pg_url(pg_available):
    """``(url, schema)`` of a fresh PostgreSQL schema (dropped afterwards), and the DSN."""
    schema = f"nacf_t_{uuid.uuid4().hex[:12]}"
    try:
        yield _pg_url(schema), PG_DSN
    finally:
        _drop_schema(schema)


@pytest.fixture
def store(store_url, key):
    s = open_store(store_url, key=key)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql",
                                                               marks=pytest.mark.postgres)])
def module_store(request, tmp_path_factory):
    """One store per backend for a whole module (the generated-input tests, whose
    examples each set up what they need), on a new file or PostgreSQL schema."""
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path_factory.mktemp('ms') / 'store.db'}",
                       key=os.urandom(32))
        yield s
        s.close()
        return
    request.getfixturevalue("pg_available")
    schema = f"nacf_ms_{uuid.uuid4().hex[:12]}"
    s = open_store(_pg_url(schema), key=os.urandom(32))
    try:
        yield s
    finally:
        s.close()
        _drop_schema(schema)
