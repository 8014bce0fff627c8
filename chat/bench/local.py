"""What the benchmark scripts that start their own server share: a free port, and an
empty database to start it on."""

from __future__ import annotations

import socket
from pathlib import Path

from chat.store import dialect_for


def fresh_database(url: str) -> None:
    """Drop the database ``url`` names (MariaDB) or delete its file (SQLite), so the
    server starts on an empty one."""
    dialect = dialect_for(url)
    if dialect.name != "mysql":
        Path(url[len("sqlite:///") :]).unlink(missing_ok=True)
        return
    admin = dialect_for(url.rsplit("/", 1)[0] + "/mysql")
    conn = admin.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{dialect.database}`")  # type: ignore[attr-defined]
    conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
