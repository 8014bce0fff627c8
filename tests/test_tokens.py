"""Session tokens (protocol 1.1): a login by token is a login like any other, a token
slides its expiry, is revoked by ``logout`` with ``forget`` (cluster-wide, at once) and
by the user's 21st; the database keeps only hashes and no log ever shows one."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest
import trio

from chat.client import ChatClient
from chat.server import Node
from chat.store.tokens import TOKEN_TTL_MS

from .cluster_support import cluster_node, make_broker
from .support import client, login, register
from .test_requests import error_code
from .ws_support import Connect

DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def tcp(node: Node) -> Connect:
    """Clients over TCP only, for what the store decides: the tests that take ``connect``
    run over both transports already, and running these twice would only cost time."""
    return lambda: client(node)


async def run_sql(node: Node, query: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """One statement on the node's own database (``?`` placeholders), committed."""
    store = node.services.store

    def work(conn: Any) -> list[Any]:
        cursor = conn.cursor()
        cursor.execute(store.dialect.sql(query), args)
        rows = list(cursor.fetchall() or [])
        conn.commit()
        return rows

    return await trio.to_thread.run_sync(store.pool.run_blocking, work)


async def token_login(c: ChatClient, token: str) -> dict[str, Any]:
    return await c.request("login", token=token)


async def test_a_token_logs_in_like_the_password(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id, bob_id = await register(ann, "ann"), await register(bob, "bob")
        await login(bob, "bob")
        await bob.call("add_friend", user_id=ann_id)
        group = (await bob.call("create_group", name="club"))["group"]["id"]
        first = await login(ann, "ann")
        token = first["token"]
        assert isinstance(token, str) and 16 <= len(token) <= 256
        await ann.call("join_group", group_id=group)
        await ann.call("logout")
        await bob.call("send", to=ann_id, text="kept for you")
        by_password = await login(ann, "ann")
        assert by_password["token"] != token  # each password login gets a token of its own
        await ann.next_event()
        await ann.call("logout")
        await bob.call("send", to=ann_id, text="kept again")

        reply = await ann.request("login", rid=7, token=token)
        assert reply["type"] == "ok" and reply["rid"] == 7, reply
        assert reply["token"] == token
        assert reply["user"] == {"id": ann_id, "name": "ann"}
        assert reply["friends"] == [{"id": bob_id, "name": "bob", "online": True}]
        assert [g["id"] for g in reply["groups"]] == [group]
        assert reply["offline"] == 1
        kept = await ann.next_event()
        assert (kept["text"], kept["offline"]) == ("kept again", True)
        assert set(reply) == set(by_password) | {"rid"}
        # The same already_logged_in and already_online rules as a password login.
        assert error_code(await token_login(ann, token)) == "already_logged_in"
        async with connect() as again:
            assert error_code(await token_login(again, token)) == "already_online"
        await ann.call("logout")
        # A token used does not stop working, and a password login still does.
        assert (await token_login(ann, token))["type"] == "ok"


async def test_bad_tokens_are_bad_credentials(tcp: Connect) -> None:
    async with tcp() as ann:
        await register(ann, "ann")
        token = (await login(ann, "ann"))["token"]
        await ann.call("logout")
        password_refused = await ann.request("login", name="ann", password="wrong")
        for bad in ("", "x", token[:-1], token + "x", token.upper(), "é" * 300):
            reply = await token_login(ann, bad)
            assert error_code(reply) == "bad_credentials", (bad, reply)
            assert reply["message"] == password_refused["message"]


async def test_malformed_logins_name_the_field(connect: Connect) -> None:
    async with connect() as ann:
        await register(ann, "ann")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"token": 5}, "token"),
            ({"token": None}, "token"),
            ({"token": ["t"]}, "token"),
            ({"token": "t" * 43, "name": "ann"}, "name"),
            ({"token": "t" * 43, "id": 1}, "id"),
            ({"token": "t" * 43, "password": "secret"}, "password"),
            ({"name": "ann"}, "password"),
            ({"password": "secret"}, "name"),
            ({}, "name"),
        ]
        for fields, named in cases:
            reply = await ann.request("login", **fields)
            assert error_code(reply) == "invalid_request", (fields, reply)
            assert named in reply["message"], (fields, reply)
        for forget in (1, "yes", None, [True]):
            reply = await ann.request("logout", forget=forget)
            assert error_code(reply) == "invalid_request" and "forget" in reply["message"]
        assert error_code(await ann.request("logout", forget=True)) == "not_logged_in"


async def test_forget_revokes_and_a_plain_logout_does_not(tcp: Connect) -> None:
    async with tcp() as ann:
        await register(ann, "ann")
        kept = (await login(ann, "ann"))["token"]
        await ann.call("logout")
        forgotten = (await login(ann, "ann"))["token"]
        await ann.call("logout", forget=True)
        assert error_code(await token_login(ann, forgotten)) == "bad_credentials"
        # A token login's own token is what its forget revokes.
        await ann.call("login", token=kept)
        await ann.call("logout", forget=True)
        assert error_code(await token_login(ann, kept)) == "bad_credentials"
        await login(ann, "ann")  # the password still works


async def test_expiry_slides_with_use(node: Node, tcp: Connect) -> None:
    async with tcp() as ann:
        await register(ann, "ann")
        used = (await login(ann, "ann"))["token"]
        await ann.call("logout")
        idle = (await login(ann, "ann"))["token"]
        await ann.call("logout")
        # Both were last used 29 days ago: still valid; using one moves its window.
        await run_sql(node, "UPDATE login_tokens SET last_used = last_used - ?", (29 * DAY_MS,))
        await ann.call("login", token=used)
        await ann.call("logout")
        # Two days later: the idle one is past 30 days, the used one is not.
        await run_sql(node, "UPDATE login_tokens SET last_used = last_used - ?", (2 * DAY_MS,))
        assert error_code(await token_login(ann, idle)) == "bad_credentials"
        assert (await token_login(ann, used))["type"] == "ok"
        await ann.call("logout")
        await run_sql(node, "UPDATE login_tokens SET last_used = last_used - ?", (TOKEN_TTL_MS,))
        assert error_code(await token_login(ann, used)) == "bad_credentials"
        # Expired tokens are deleted when met.
        assert await run_sql(node, "SELECT COUNT(*) FROM login_tokens") == [(0,)]


async def test_the_21st_token_revokes_the_least_recently_used(node: Node) -> None:
    async with client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        await register(bob, "bob")
        bob_token = (await login(bob, "bob"))["token"]
        tokens = []
        for _ in range(20):
            tokens.append((await login(ann, "ann"))["token"])
            await ann.call("logout")
            await trio.sleep(0.002)  # distinct last_used times
        # Using the oldest makes the second oldest the least recently used.
        await ann.call("login", token=tokens[0])
        await ann.call("logout")
        await trio.sleep(0.002)
        newest = (await login(ann, "ann"))["token"]
        await ann.call("logout")
        assert error_code(await token_login(ann, tokens[1])) == "bad_credentials"
        for token in [tokens[0], *tokens[2:], newest]:
            assert (await ann.call("login", token=token))["token"] == token
            await ann.call("logout")
        rows = await run_sql(node, "SELECT user_id, COUNT(*) FROM login_tokens GROUP BY user_id")
        assert sorted(int(count) for _, count in rows) == [1, 20]
        # Another user's tokens are not touched.
        await bob.call("logout")
        assert (await token_login(bob, bob_token))["type"] == "ok"


async def test_no_token_in_clear_in_the_database_or_the_logs(
    node: Node, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with connect() as ann:
        await register(ann, "ann")
        tokens = [(await login(ann, "ann"))["token"]]
        await ann.call("logout")
        await ann.call("login", token=tokens[0])
        await ann.request("login", token=tokens[0])  # already_logged_in
        await ann.call("logout", forget=True)
        tokens.append((await login(ann, "ann"))["token"])
        await ann.call("logout")
        async with connect() as other:
            await ann.call("login", token=tokens[1])
            assert error_code(await token_login(other, tokens[1])) == "already_online"
        await ann.send_raw(b'{"type":"login","token":' + tokens[1].encode() + b"}\n", replies=1)
        await ann.call("logout")
    # The database: every value of every table, as text and as bytes.
    dialect = node.services.store.dialect.name
    listing = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if dialect == "sqlite"
        else "SHOW TABLES"
    )
    dump: list[str] = []
    for (table,) in await run_sql(node, listing):
        name = table.decode() if isinstance(table, bytes) else str(table)
        for row in await run_sql(node, f"SELECT * FROM {name}"):
            dump += [v.hex() + repr(v) if isinstance(v, bytes) else repr(v) for v in row]
    stored = await run_sql(node, "SELECT token_hash FROM login_tokens")
    assert {bytes(row[0]) for row in stored} == {hashlib.sha256(tokens[1].encode()).digest()}
    text = "\n".join(dump)
    log = caplog.text + "\n".join(repr(r.args) for r in caplog.records)
    assert hashlib.sha256(tokens[1].encode()).hexdigest() in text  # the dump saw the hashes
    for token in tokens:
        assert token not in text
        assert token.encode().hex() not in text
        assert token not in log


async def test_forget_on_one_node_revokes_on_the_other(mysql_url: str, redis_url: str) -> None:
    async with (
        cluster_node(mysql_url, make_broker(redis_url, "node-a")) as a,
        cluster_node(mysql_url, make_broker(redis_url, "node-b")) as b,
        client(a) as on_a,
        client(b) as on_b,
    ):
        await register(on_a, "ann")
        token = (await login(on_a, "ann"))["token"]
        await on_a.call("logout")
        # Used on b (and so known there), then forgotten on a.
        await on_b.call("login", token=token)
        await on_b.call("logout")
        await on_a.call("login", token=token)
        await on_a.call("logout", forget=True)
        assert error_code(await token_login(on_b, token)) == "bad_credentials"
        assert error_code(await token_login(on_a, token)) == "bad_credentials"
