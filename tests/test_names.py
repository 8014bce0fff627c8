"""Names of protocol 1.1: stored in NFC; no format characters, no blank ends, not only
white space; unique without regard to case for new users and groups, enforced by
the database; names registered before the rule keep working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from chat.server.passwords import hash_password
from chat.store import dialect_for, name_key, open_store
from chat.store.migrations import migration_files, split_statements
from chat.store.sql import Sql

from .bulk_support import PASSWORD
from .support import client, database, login, register, running_node
from .ws_support import Connect


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error", reply
    return str(reply["code"])


LOOK_ALIKES = [
    ("alice\u200b", "U+200B"),  # zero width space
    ("\u202ealice", "U+202E"),  # right-to-left override
    ("al\u00adice", "U+00AD"),  # soft hyphen
    ("\ufeffalice", "U+FEFF"),  # byte order mark
    ("alice\u2060", "U+2060"),  # word joiner
]
BLANK_ENDS = [" alice", "alice ", "\u00a0alice", "alice\u3000", "alice\u2003", "\u1680alice"]
ONLY_WHITE = [" ", "   ", "\u00a0", "\u3000\u2002"]


async def test_register_refuses_invisible_and_blank_names(connect: Connect) -> None:
    async with connect() as c:
        for name, code_point in LOOK_ALIKES:
            reply = await c.request("register", name=name, password="pw")
            assert error_code(reply) == "invalid_request", name
            assert reply["message"].startswith("name:") and code_point in reply["message"]
        for name in BLANK_ENDS:
            reply = await c.request("register", name=name, password="pw")
            assert error_code(reply) == "invalid_request", name
            assert reply["message"].startswith("name:") and "white space" in reply["message"]
        for name in ONLY_WHITE:
            reply = await c.request("register", name=name, password="pw")
            assert error_code(reply) == "invalid_request", name
            assert "only white space" in reply["message"]
        # White space inside a name is fine.
        assert (await c.call("register", name="alice smith", password="pw"))["user"]["name"] == (
            "alice smith"
        )


async def test_group_names_follow_the_same_rules(connect: Connect) -> None:
    async with connect() as c:
        await register(c, "ann")
        await login(c, "ann")
        for name in [name for name, _ in LOOK_ALIKES] + BLANK_ENDS + ONLY_WHITE:
            reply = await c.request("create_group", name=name)
            assert error_code(reply) == "invalid_request", name
            assert reply["message"].startswith("name:")
        created = await c.call("create_group", name="Chess Club")
        for variant in ("chess club", "CHESS CLUB", "Chess Club"):
            taken = await c.request("create_group", name=variant)
            assert error_code(taken) == "group_name_taken", variant
        decomposed = await c.call("create_group", name="Cafe\u0301")
        assert decomposed["group"]["name"] == "Caf\u00e9"
        assert error_code(await c.request("create_group", name="CAF\u00c9")) == "group_name_taken"
        assert created["group"]["id"] != decomposed["group"]["id"]


async def test_names_are_unique_without_regard_to_case(connect: Connect) -> None:
    async with connect() as c:
        await register(c, "Bob")
        for variant in ("bob", "BOB", "bOb"):
            assert error_code(await c.request("register", name=variant, password="x")) == (
                "name_taken"
            )
        await register(c, "Straße")
        assert error_code(await c.request("register", name="STRASSE", password="x")) == (
            "name_taken"
        )
        await register(c, "ΣΊΣΥΦΟΣ")
        assert error_code(await c.request("register", name="σίσυφος", password="x")) == (
            "name_taken"
        )
        # Login and find_user still match the stored name exactly.
        assert error_code(await c.request("login", name="bob", password="secret")) == (
            "bad_credentials"
        )
        await login(c, "Bob")
        assert error_code(await c.request("find_user", name="BOB")) == "no_such_user"
        assert (await c.call("find_user", name="Bob"))["user"]["name"] == "Bob"


async def test_names_are_stored_in_nfc_and_measured_after_it(connect: Connect) -> None:
    async with connect() as c:
        reply = await c.call("register", name="Zoe\u0301", password="pw")
        assert reply["user"]["name"] == "Zo\u00e9"
        assert error_code(await c.request("register", name="Zo\u00e9", password="pw")) == (
            "name_taken"
        )
        # 100 code points as sent, 50 after NFC: accepted.
        long_name = "e\u0301" * 50
        assert (await c.call("register", name=long_name, password="pw"))["user"]["name"] == (
            "\u00e9" * 50
        )
        too_long = await c.request("register", name="e\u0301" * 51, password="pw")
        assert error_code(too_long) == "invalid_request" and "51" in too_long["message"]
        await login(c, "Zo\u00e9", "pw")


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_the_database_enforces_case_insensitive_names(kind: str, tmp_path: Path) -> None:
    """Not only a check in Python: a second row with the same folded name is refused."""
    with database(kind, tmp_path) as url:
        store = await trio.to_thread.run_sync(open_store, url)
        store.close()

        def inserts(table: str, columns: str, values: str) -> list[str]:
            """Insert ``Bob`` then ``bOB`` with their keys; what became of each."""
            dialect = dialect_for(url)
            conn = dialect.connect()
            outcomes = []
            try:
                sql = Sql(conn.cursor(), dialect)
                for name in ("Bob", "bOB"):
                    dialect.begin(conn, write=True)
                    try:
                        sql.execute(
                            f"INSERT INTO {table} (name, name_key, {columns})"
                            f" VALUES (?, ?, {values})",
                            (name, name_key(name)),
                        )
                        conn.commit()
                        outcomes.append("accepted")
                    except Exception as exc:
                        conn.rollback()
                        refused = dialect.is_integrity_error(exc)
                        outcomes.append("refused" if refused else f"failed: {exc}")
            finally:
                conn.close()
            return outcomes

        users = await trio.to_thread.run_sync(
            inserts, "users", "password_hash, created_at", "'h', 0"
        )
        assert users == ["accepted", "refused"]
        groups = await trio.to_thread.run_sync(
            inserts, "chat_groups", "description, creator_id, created_at", "'', 1, 0"
        )
        assert groups == ["accepted", "refused"]


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_names_registered_before_the_rule_keep_working(kind: str, tmp_path: Path) -> None:
    """A database made by version 1 with ``Bob``, ``bob`` and `` carol``: after the
    migration all three log in, and no new look-alike of them can be registered."""
    secret = hash_password(PASSWORD)
    with database(kind, tmp_path) as url:

        def version_1_database() -> None:
            dialect = dialect_for(url)
            dialect.prepare_database()
            conn = dialect.connect()
            try:
                for version, name, path in migration_files(dialect):
                    if version <= 2:
                        statements = split_statements(path.read_text())
                        dialect.apply_migration(conn, statements, (version, name))
                dialect.begin(conn, write=True)
                sql = Sql(conn.cursor(), dialect)
                sql.many(
                    "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, 0)",
                    [("Bob", secret), ("bob", secret), (" carol", secret)],
                )
                sql.execute(
                    "INSERT INTO chat_groups (name, description, creator_id, created_at)"
                    " VALUES ('Club', '', 1, 0), ('club', '', 2, 0)"
                )
                sql.execute(
                    "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                    " SELECT id, creator_id, 'creator', 0 FROM chat_groups"
                )
                conn.commit()
            finally:
                conn.close()

        await trio.to_thread.run_sync(version_1_database)
        async with running_node(url) as node, client(node) as c:
            for name in ("Bob", "bob", " carol"):
                assert (await login(c, name))["user"]["name"] == name
                groups = (await c.call("groups"))["groups"]
                await c.call("logout")
                if name != " carol":
                    assert [g["member_count"] for g in groups] == [1]
            for variant in ("BOB", "bob", "Bob"):
                assert error_code(await c.request("register", name=variant, password="x")) == (
                    "name_taken"
                )
            await register(c, "carol")  # " carol" folds to another key
            await login(c, "carol")
            for variant in ("CLUB", "club", "Club"):
                assert error_code(await c.request("create_group", name=variant)) == (
                    "group_name_taken"
                )
