from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chat.server import Node

from .support import database, running_node


@pytest.fixture(params=["sqlite", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses it runs twice: on an SQLite file and on a fresh MariaDB database."""
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def node(database_url: str) -> AsyncIterator[Node]:
    async with running_node(database_url) as running:
        yield running
