"""Upgrading a database of the version before devices (migrations up to 0004), with
messages kept for users who were away, loses nothing: each kept message reaches the
user's device ``""`` (a version 1 login) once, in order, as ``offline``; a named device
known from then on starts after them; nothing kept is lost for group members either.
SQLite and MariaDB, through the real migration files and a real node."""

from __future__ import annotations

from typing import Any

import trio

from chat.server.passwords import hash_password
from chat.store import dialect_for
from chat.store.migrations import migration_files, split_statements

from .support import client, running_node

DEVICES_MIGRATION = 5


def prepare_old_database(url: str) -> dict[str, Any]:
    """A database at migration 0004 as a version 1.1 server left it: ann, bob and cat;
    a group of the three; messages to bob and to the group, some of them already
    written (their delivery rows deleted), some still kept."""
    dialect = dialect_for(url)
    dialect.prepare_database()
    conn = dialect.connect()
    try:
        for version, name, path in migration_files(dialect):
            if version < DEVICES_MIGRATION:
                statements = split_statements(path.read_text(encoding="utf-8"))
                dialect.apply_migration(conn, statements, (version, name))
        dialect.begin(conn, write=True)
        cursor = conn.cursor()

        def run(query: str, args: tuple[Any, ...] = ()) -> int:
            cursor.execute(dialect.sql(query), args)
            return int(cursor.lastrowid or 0)

        secret = hash_password("secret")
        ids = {}
        for name in ("ann", "bob", "cat"):
            ids[name] = run(
                "INSERT INTO users (name, name_key, password_hash, created_at) VALUES (?, ?, ?, 1)",
                (name, name, secret),
            )
        group = run(
            "INSERT INTO chat_groups (name, name_key, description, creator_id, created_at,"
            " member_count) VALUES ('tea', 'tea', '', ?, 1, 3)",
            (ids["ann"],),
        )
        for name in ("ann", "bob", "cat"):
            run(
                "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                " VALUES (?, ?, ?, 1)",
                (group, ids[name], "creator" if name == "ann" else "normal"),
            )
        written: list[int] = []
        kept: list[int] = []
        # Bob had read the first two one-to-one messages and the first group message.
        for n, (kind, was_written) in enumerate(
            [
                ("direct", True),
                ("direct", True),
                ("group", True),
                ("direct", False),
                ("group", False),
                ("direct", False),
            ]
        ):
            if kind == "direct":
                message = run(
                    "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts)"
                    " VALUES (?, ?, NULL, ?, ?)",
                    (ids["ann"], ids["bob"], f"m{n}", 1000 + n),
                )
                recipients = [ids["bob"]]
            else:
                message = run(
                    "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts)"
                    " VALUES (?, NULL, ?, ?, ?)",
                    (ids["ann"], group, f"m{n}", 1000 + n),
                )
                recipients = [ids["bob"], ids["cat"]]
            for recipient in recipients:
                if recipient == ids["bob"] and was_written:
                    continue  # written to bob: its row was deleted
                run(
                    "INSERT INTO deliveries (user_id, message_id) VALUES (?, ?)",
                    (recipient, message),
                )
            (written if was_written else kept).append(message)
        conn.commit()
        cursor.close()
        return {"ids": ids, "group": group, "written": written, "kept": kept}
    finally:
        conn.close()


async def test_kept_messages_survive_the_upgrade_to_devices(database_url: str) -> None:
    old = await trio.to_thread.run_sync(prepare_old_database, database_url)
    async with running_node(database_url) as node:  # opening the store applies 0005
        async with client(node) as bob:
            reply = await bob.call("login", name="bob", password="secret")
            assert (reply["device"], reply["offline"]) == ("", len(old["kept"]))
            events = [await bob.next_event() for _ in old["kept"]]
            assert [(e["message_id"], e["offline"]) for e in events] == [
                (m, True) for m in old["kept"]
            ]
            await bob.call("logout")
            assert (await bob.call("login", name="bob", password="secret"))["offline"] == 0
        async with client(node) as cat:
            # cat never read anything: every group message was kept for cat.
            reply = await cat.call("login", name="cat", password="secret")
            assert reply["offline"] == 2  # both group messages
        async with client(node) as laptop:
            # A device first known now starts after all of it.
            reply = await laptop.call("login", name="bob", password="secret", device="laptop")
            assert reply["offline"] == 0
            # And what comes now reaches both of bob's devices, the old one kept.
        async with client(node) as ann, client(node) as laptop:
            await ann.call("login", name="ann", password="secret")
            await laptop.call("login", name="bob", password="secret", device="laptop")
            sent = await ann.call("send", to=old["ids"]["bob"], text="after the upgrade")
            assert (await laptop.next_event())["message_id"] == sent["message_id"]
        async with client(node) as bob:
            reply = await bob.call("login", name="bob", password="secret")
            assert reply["offline"] == 1
            assert (await bob.next_event())["message_id"] == sent["message_id"]


async def test_conversations_after_the_upgrade_list_the_old_messages(database_url: str) -> None:
    """Migration 0006 fills each user's one-to-one conversations from the messages
    there were (markers at 0: nothing had been marked read), and groups need nothing."""
    old = await trio.to_thread.run_sync(prepare_old_database, database_url)
    ids, group = old["ids"], old["group"]
    newest = max(old["written"] + old["kept"])  # the last of the old messages: to bob
    async with running_node(database_url) as node, client(node) as bob, client(node) as ann:
        await bob.call("login", name="bob", password="secret")
        await ann.call("login", name="ann", password="secret")
        page = (await bob.call("conversations"))["conversations"]
        assert [(c.get("with", c.get("group"))["id"], c["unread"], c["read"]) for c in page] == [
            (ids["ann"], 4, 0),  # four messages from ann, two in the group
            (group, 2, 0),
        ]
        assert page[0]["last"]["message_id"] == newest
        mine = (await ann.call("conversations"))["conversations"]
        assert [(c["unread"], c["last"]["message_id"]) for c in mine] == [
            (0, newest),
            (0, page[1]["last"]["message_id"]),
        ]
