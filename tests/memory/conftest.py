"""Store fixtures: every store test runs against SQLite (a tmp dir) and a real PostgreSQL (a tmp server)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from omni.memory.store import MemoryStore
from omni.memory.testing import HashingEmbedder
from tests.memory.postgres import PostgresServer, unavailable

_db_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    why = unavailable()
    if why:
        pytest.skip(f"PostgreSQL backend not tested: {why}")
    root = Path(tempfile.mkdtemp(prefix="omni-pg-"))
    server = PostgresServer(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh, empty store lives: a directory, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "mem")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"t{next(_db_names)}")


@pytest.fixture
def store(store_location: str) -> Iterator[MemoryStore]:
    s = MemoryStore.open(store_location)
    yield s
    s.close()


@pytest.fixture
def embed() -> HashingEmbedder:
    return HashingEmbedder()
