from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chat.server import Node

from .cluster_support import RedisServer
from .support import database, mysql_database, running_node
from .ws_support import TRANSPORTS, Connect, connector


@pytest.fixture(params=["sqlite", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses it runs twice: on an SQLite file and on a fresh MariaDB database."""
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def node(database_url: str) -> AsyncIterator[Node]:
    """A node on port 0 for TCP and port 0 for WebSocket (``node.ws_ports``)."""
    async with running_node(database_url, ws_port=0) as running:
        yield running


@pytest.fixture(params=TRANSPORTS)
def connect(request: pytest.FixtureRequest, node: Node) -> Connect:
    """Each test that uses it runs once per transport: ``async with connect() as c``
    gives a ``ChatClient`` connected to ``node`` over TCP, then over WebSocket."""
    return connector(request.param, node)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for one test module (the shared one is never touched)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of its own on the module's private server."""
    return redis_server.new_url()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB database of its own."""
    with mysql_database() as url:
        yield url
