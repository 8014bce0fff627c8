"""Numbered, forward-only SQL migrations, each applied once and recorded.

Files are ``migrations/<dialect>/NNNN_name.sql``. Every node applies what is
missing at start; a lock (SQLite's exclusive transaction, MySQL's named lock)
keeps two nodes starting together from applying the same file twice.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .dialect import Connection, Dialect, migrations_root

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migration_files(dialect: Dialect) -> list[tuple[int, str, Path]]:
    folder = migrations_root() / dialect.name
    found = []
    for path in sorted(folder.iterdir()):
        match = _FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {folder}")
    return found


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file: separated by ``;`` at a line's end, comments dropped."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    statements = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [statement.strip() for statement in statements if statement.strip()]


def apply_migrations(dialect: Dialect, conn: Connection) -> list[str]:
    """Apply every pending migration; returns the names of those this call applied."""
    applied: list[str] = []
    dialect.migration_lock(conn, acquire=True)
    try:
        for version, name, path in migration_files(dialect):
            statements = split_statements(path.read_text(encoding="utf-8"))
            if dialect.apply_migration(conn, statements, (version, name)):
                log.info("applied migration %04d_%s", version, name)
                applied.append(f"{version:04d}_{name}")
    finally:
        dialect.migration_lock(conn, acquire=False)
    return applied
