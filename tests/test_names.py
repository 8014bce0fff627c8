"""Names of protocol 1.1: stored in NFC; no format characters, no blank ends, not only
white space; unique without regard to case for new users and groups, enforced by
the database; names registered before the rule keep working."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from chat.client import ChatClient
from chat.protocol.lookalike import lookalike_problem
from chat.server.passwords import hash_password
from chat.store import dialect_for, look_key, name_key, open_store
from chat.store.migrations import migration_files, split_statements
from chat.store.sql import Sql

from .bulk_support import PASSWORD
from .cluster_support import two_nodes
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


# --- version 1.2: look-alikes ------------------------------------------------------

INVISIBLE_12 = [
    ("ali\u034fce", "U+034F"),  # combining grapheme joiner (a mark, not Cf)
    ("ali\ufe0fce", "U+FE0F"),  # variation selector 16
    ("alice\U000e0101", "U+E0101"),  # variation selector 18
    ("\u3164", "U+3164"),  # Hangul filler: a "letter" that shows nothing
    ("ann\u115f", "U+115F"),  # Hangul choseong filler
    ("alice\u2800", "U+2800"),  # braille pattern blank
    ("\u2800", "U+2800"),
]
STRAY_MARKS = [
    ("\u0301alice", "U+0301"),  # a mark first
    ("ali \u0308ce", "U+0308"),  # a mark after white space
    ("alice-\u0301", "U+0301"),  # a mark after punctuation
    ("\u20dd", "U+20DD"),  # an enclosing mark alone
]
STACKED = ["x\u0301\u0302\u0303\u0304", "x" + "\u0316" * 10, "\u0301" * 50]
FINE_WITH_MARKS = [
    "x\u0301\u0302\u0303",  # three marks in a row: allowed
    "1\u20e3",  # a keycap on a digit
    "\u0939\u093f\u0928\u094d\u0926\u0940",  # Hindi: vowel signs and virama after letters
    "Zo\u00eb",
]


async def test_register_refuses_the_12_invisible_and_stacked_names(connect: Connect) -> None:
    async with connect() as c:
        for name, code_point in INVISIBLE_12 + STRAY_MARKS:
            reply = await c.request("register", name=name, password="pw")
            assert error_code(reply) == "invalid_request", name
            assert reply["message"].startswith("name:") and code_point in reply["message"], reply
        for name in STACKED:
            reply = await c.request("register", name=name, password="pw")
            assert error_code(reply) == "invalid_request", name
            assert reply["message"].startswith("name:"), reply
        stacked = await c.request("register", name=STACKED[0], password="pw")
        assert "more than 3 combining marks" in stacked["message"]
        for name in FINE_WITH_MARKS:
            assert (await c.call("register", name=name, password="pw"))["user"]["name"] == name


async def test_group_names_follow_the_12_rules(connect: Connect) -> None:
    async with connect() as c:
        await register(c, "ann")
        await login(c, "ann")
        for name in [name for name, _ in INVISIBLE_12 + STRAY_MARKS] + STACKED:
            reply = await c.request("create_group", name=name)
            assert error_code(reply) == "invalid_request", name
            assert reply["message"].startswith("name:"), reply
        await c.call("create_group", name="Chess")
        for variant in ("\u0421hess", "\uff23\uff48\uff45\uff53\uff53", "CHE\u0405S"):
            # Cyrillic Es, fullwidth letters, Cyrillic Dze for an S
            assert error_code(await c.request("create_group", name=variant)) == (
                "group_name_taken"
            ), variant
        assert (await c.call("create_group", name="Chess Club"))["group"]["name"] == "Chess Club"


LOOKALIKES_OF_ALICE = [
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth
    "\u0430lice",  # Cyrillic a
    "al\u0456ce",  # Cyrillic Byelorussian-Ukrainian i
    "\u0430l\u0456\u0441\u0435",  # all Cyrillic that can be
    "AL\u0406CE",  # upper case, with a Cyrillic I
    "\U0001d41a\U0001d425\U0001d422\U0001d41c\U0001d41e",  # mathematical bold
    "a1ice",  # digit one for l: the same skeleton
]


async def test_lookalikes_of_an_existing_name_are_taken(connect: Connect) -> None:
    async with connect() as c:
        await register(c, "alice")
        for variant in LOOKALIKES_OF_ALICE:
            reply = await c.request("register", name=variant, password="x")
            assert error_code(reply) == "name_taken", variant
        await register(c, "modern")
        assert error_code(await c.request("register", name="rnodern", password="x")) == (
            "name_taken"
        )
        # Names that only resemble each other loosely are still free.
        for other in ("alicia", "alice2", "malice"):
            await register(c, other)
        # The other direction: the look-alike first, then the plain name.
        await register(c, "b\u043eb")  # Cyrillic o
        assert error_code(await c.request("register", name="bob", password="x")) == ("name_taken")
        await login(c, "b\u043eb")  # logs in by its exact name


def test_lookalike_keys() -> None:
    """The key itself: equal for each pair that looks alike, different otherwise."""
    base = look_key("alice")
    assert all(look_key(variant) == base for variant in LOOKALIKES_OF_ALICE)
    assert look_key("Alice") == base  # case folding alone, as in 1.1
    assert look_key("alicia") != base
    assert len(base) == 32
    assert lookalike_problem("ali\u034fce") is not None
    assert lookalike_problem("alice") is None


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_the_database_enforces_lookalike_names(kind: str, tmp_path: Path) -> None:
    """A second row with the same look key is refused by the index, not only by the
    check in Python: two nodes racing cannot both take look-alike names."""
    with database(kind, tmp_path) as url:
        store = await trio.to_thread.run_sync(open_store, url)
        store.close()

        def inserts() -> list[str]:
            dialect = dialect_for(url)
            conn = dialect.connect()
            outcomes = []
            try:
                sql = Sql(conn.cursor(), dialect)
                for name in ("alice", "\u0430lice"):
                    dialect.begin(conn, write=True)
                    try:
                        sql.execute(
                            "INSERT INTO users (name, name_key, look_key, password_hash,"
                            " created_at) VALUES (?, ?, ?, 'h', 0)",
                            (name, name_key(name), look_key(name)),
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

        assert await trio.to_thread.run_sync(inserts) == ["accepted", "refused"]


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_lookalikes_registered_before_12_keep_working(kind: str, tmp_path: Path) -> None:
    """A database from before migration 0007 holding ``alice`` and ``alice`` with a Cyrillic U+0430
    (legal under 1.1): after the upgrade both log in, the older one holds the look key,
    and no new look-alike of either can be registered."""
    secret = hash_password(PASSWORD)
    cyrillic = "\u0430lice"
    with database(kind, tmp_path) as url:

        def version_11_database() -> None:
            dialect = dialect_for(url)
            dialect.prepare_database()
            conn = dialect.connect()
            try:
                for version, name, path in migration_files(dialect):
                    if version < 7:
                        statements = split_statements(path.read_text())
                        dialect.apply_migration(conn, statements, (version, name))
                dialect.begin(conn, write=True)
                sql = Sql(conn.cursor(), dialect)
                sql.many(
                    "INSERT INTO users (name, name_key, password_hash, created_at)"
                    " VALUES (?, ?, ?, 0)",
                    [(name, name_key(name), secret) for name in ("alice", cyrillic, "bob")],
                )
                sql.execute(
                    "INSERT INTO chat_groups (name, name_key, description, creator_id, created_at)"
                    " VALUES ('Club', 'club', '', 1, 0), ('\u0421lub', '\u0441lub', '', 2, 0)"
                )
                conn.commit()
            finally:
                conn.close()

        def keys() -> list[tuple[str, bool]]:
            dialect = dialect_for(url)
            conn = dialect.connect()
            try:
                rows = Sql(conn.cursor(), dialect).all(
                    "SELECT name, look_key FROM users ORDER BY id"
                )
            finally:
                conn.close()
            return [
                (row[0].decode() if isinstance(row[0], bytes) else row[0], row[1] is not None)
                for row in rows
            ]

        await trio.to_thread.run_sync(version_11_database)
        async with running_node(url) as node, client(node) as c:
            assert await trio.to_thread.run_sync(keys) == [
                ("alice", True),
                (cyrillic, False),
                ("bob", True),
            ]
            for name in ("alice", cyrillic, "bob"):
                assert (await login(c, name, PASSWORD))["user"]["name"] == name
                await c.call("logout")
            for variant in [*LOOKALIKES_OF_ALICE, "b\u043eb"]:
                assert error_code(await c.request("register", name=variant, password="x")) == (
                    "name_taken"
                ), variant
            await login(c, "bob", PASSWORD)
            for variant in ("club", "\uff43lub", "\u0441lub"):
                assert error_code(await c.request("create_group", name=variant)) == (
                    "group_name_taken"
                ), variant


async def test_two_nodes_racing_for_lookalike_names(mysql_url: str, redis_url: str) -> None:
    """Look-alike names registered at the same moment on two nodes: one of each pair
    wins, whichever node is faster (the unique index decides, not a read before)."""
    pairs = [(f"\uff41lice{n}", f"\u0430lice{n}") for n in range(5)]
    async with two_nodes(mysql_url, redis_url) as (a, b), client(a) as ca, client(b) as cb:
        for first, second in pairs:
            replies: list[dict[str, Any]] = []

            async def one(c: ChatClient, name: str, into: list[dict[str, Any]]) -> None:
                into.append(await c.request("register", name=name, password="pw"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, ca, first, replies)
                nursery.start_soon(one, cb, second, replies)
            kinds = sorted(r["type"] if r["type"] == "ok" else r["code"] for r in replies)
            assert kinds == ["name_taken", "ok"], replies
