"""Throttling (protocol 1.1 "Throttling: the rate_limited error", and the node's own
limits): failed password logins per account, cluster-wide; password requests per
client address; the hashing queue; requests per connection."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from chat.client import ChatClient
from chat.server.passwords import HashingBusy, PasswordHasher, hash_password
from chat.server.throttles import PASSWORD_WINDOW_MS, is_trusted, parse_networks

from .cluster_support import cluster_node, make_broker
from .support import client, login, register, running_node


def assert_rate_limited(reply: dict[str, Any]) -> int:
    assert (reply["type"], reply["code"]) == ("error", "rate_limited"), reply
    wait = reply["retry_after_ms"]
    assert isinstance(wait, int) and not isinstance(wait, bool), reply
    assert 0 < wait <= PASSWORD_WINDOW_MS, reply
    return wait


async def fail_five(c: ChatClient, **who: Any) -> None:
    for _ in range(5):
        reply = await c.request("login", password="wrong", **who)
        assert (reply["type"], reply["code"]) == ("error", "bad_credentials"), reply


async def test_five_failed_logins_lock_the_account_only(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as c:
        ann_id = await register(c, "ann")
        await register(c, "bob")
        await fail_five(c, name="ann")
        # The right password is not even checked now, by name or by id.
        assert_rate_limited(await c.request("login", name="ann", password="secret"))
        assert_rate_limited(await c.request("login", id=ann_id, password="secret"))
        # Check order: invalid_request comes first.
        both = await c.request("login", name="ann", id=ann_id, password="secret")
        assert both["code"] == "invalid_request", both
        # Another account is not affected.
        await login(c, "bob")
        # already_logged_in comes before rate_limited.
        again = await c.request("login", name="ann", password="secret")
        assert again["code"] == "already_logged_in", again
        metrics = node.services.metrics.render().decode()
        assert "chat_login_failures_total 5.0" in metrics
        assert 'chat_rate_limited_total{limit="password"} 2.0' in metrics


async def test_names_and_ids_that_do_not_exist_are_throttled_too(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as c:
        await fail_five(c, name="ghost")
        assert_rate_limited(await c.request("login", name="ghost", password="x"))
        await fail_five(c, id=987_654)
        assert_rate_limited(await c.request("login", id=987_654, password="x"))
        # A failure by id counts for that id only: other ids and names are open.
        reply = await c.request("login", id=987_655, password="x")
        assert reply["code"] == "bad_credentials", reply


async def test_failures_by_id_lock_the_name_of_that_account(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as c:
        ann_id = await register(c, "ann")
        await fail_five(c, id=ann_id)
        assert_rate_limited(await c.request("login", name="ann", password="secret"))


async def test_the_lock_is_cluster_wide(mysql_url: str, redis_url: str) -> None:
    async with (
        cluster_node(mysql_url, make_broker(redis_url, "node-a")) as a,
        cluster_node(mysql_url, make_broker(redis_url, "node-b")) as b,
        client(a) as on_a,
        client(b) as on_b,
    ):
        await register(on_a, "ann")
        await fail_five(on_a, name="ann")
        assert_rate_limited(await on_b.request("login", name="ann", password="secret"))


async def test_password_requests_per_address(database_url: str) -> None:
    # Loopback is trusted by default: trust nothing here to see the budget.
    async with (
        running_node(database_url, trusted_addresses=(), address_logins_per_minute=3) as node,
        client(node) as c,
    ):
        await register(c, "ann")
        await register(c, "bob")
        reply = await c.request("login", name="ann", password="wrong")
        assert reply["code"] == "bad_credentials", reply
        # The fourth password request from this address within the minute.
        limited = await c.request("register", name="cat", password="secret")
        assert (limited["type"], limited["code"]) == ("error", "rate_limited"), limited
        assert 0 < limited["retry_after_ms"] <= 60_000
        limited = await c.request("login", name="bob", password="secret")
        assert limited["code"] == "rate_limited", limited
        # Other requests are not counted.
        assert (await c.request("ping"))["type"] == "ok"
        # A bad request is refused before the budget is looked at.
        bad = await c.request("register", name="", password="secret")
        assert bad["code"] == "invalid_request", bad
        metrics = node.services.metrics.render().decode()
        assert 'chat_rate_limited_total{limit="address"} 2.0' in metrics


async def test_loopback_is_exempt_from_the_address_budget(tmp_path: Any) -> None:
    async with (
        running_node(f"sqlite:///{tmp_path / 'chat.db'}", address_logins_per_minute=1) as node,
        client(node) as c,
    ):
        for name in ("ann", "bob", "cat"):
            await register(c, name)


def test_trusted_networks() -> None:
    trusted = parse_networks("127.0.0.0/8, ::1, 10.1.0.0/16")
    assert is_trusted("127.0.0.1", trusted)
    assert is_trusted("::1", trusted)
    assert is_trusted("::ffff:127.0.0.2", trusted)
    assert is_trusted("10.1.2.3", trusted)
    assert not is_trusted("10.2.0.1", trusted)
    assert not is_trusted("", trusted)
    assert parse_networks("") == ()
    with pytest.raises(ValueError, match="nonsense"):
        parse_networks("127.0.0.1,nonsense")


async def test_a_full_hashing_queue_refuses_at_once() -> None:
    hasher = PasswordHasher(concurrency=1, max_queued=2)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(hasher.hash, "one")
        await trio.testing.wait_all_tasks_blocked()
        assert hasher.queued == 2
        with pytest.raises(HashingBusy):
            await hasher.verify("two", None)
        # Unbounded (a trusted client): it waits its turn instead.
        assert await hasher.verify("two", None, bounded=False) is False
    assert hasher.queued == 0


async def test_requests_per_connection(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    async with running_node(url, request_rate=0.5, request_burst=3) as node, client(node) as c:
        for _ in range(3):
            assert (await c.request("ping"))["type"] == "ok"
        limited = await c.request("ping")
        assert (limited["type"], limited["code"]) == ("error", "rate_limited"), limited
        assert 0 < limited["retry_after_ms"] <= 2_000
        # not_logged_in comes first.
        refused = await c.request("find_user", name="ann")
        assert refused["code"] == "not_logged_in", refused
        # Another connection has a budget of its own.
        async with client(node) as other:
            assert (await other.request("ping"))["type"] == "ok"


async def test_simultaneous_guesses_get_about_five_through(database_url: str) -> None:
    async with running_node(database_url) as node:
        async with client(node) as c:
            await register(c, "ann")
        codes: list[str] = []

        async def guess() -> None:
            async with client(node) as g:
                codes.append((await g.request("login", name="ann", password="wrong"))["code"])

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(guess)
        # Five, plus at most one per other pooled connection checking at the same instant.
        pool = node.services.store.pool.limiter.total_tokens
        assert 5 <= codes.count("bad_credentials") <= 5 + int(pool) - 1, codes
        assert codes.count("rate_limited") == 30 - codes.count("bad_credentials"), codes


async def test_a_right_password_does_not_count(database_url: str) -> None:
    async with running_node(database_url) as node, client(node) as c:
        await register(c, "ann")
        for _ in range(4):
            assert (await c.request("login", name="ann", password="wrong"))["code"] == (
                "bad_credentials"
            )
        for _ in range(3):
            await login(c, "ann")
            await c.call("logout")
        assert (await c.request("login", name="ann", password="wrong"))["code"] == (
            "bad_credentials"
        )
        assert_rate_limited(await c.request("login", name="ann", password="secret"))


# --- a flood of guesses from many addresses (issue 24) -----------------------------------


async def test_known_accounts_go_first_then_addresses_take_turns() -> None:
    """One hashing slot, held; then checks queue: three from address a, one from b, and
    one for a recently used account. The known account's goes first; the rest take
    turns by address, so b does not wait behind all of a's."""
    hasher = PasswordHasher(concurrency=1)
    order: list[str] = []
    release = trio.Event()

    async def check(name: str, *, preferred: bool = False, address: str = "") -> None:
        async with hasher.turn(bounded=True, preferred=preferred, address=address):
            order.append(name)
            if name == "holder":
                await release.wait()

    async with trio.open_nursery() as nursery:
        for name, address, preferred in [
            ("holder", "z", False),
            ("a1", "a", False),
            ("a2", "a", False),
            ("a3", "a", False),
            ("b1", "b", False),
            ("known", "c", True),
        ]:
            nursery.start_soon(partial(check, name, preferred=preferred, address=address))
            await trio.testing.wait_all_tasks_blocked()
        assert (hasher.queued, hasher.others) == (6, 5)
        release.set()
    assert order == ["holder", "known", "a1", "b1", "a2", "a3"]
    assert (hasher.queued, hasher.others) == (0, 0)


async def test_a_cancelled_wait_gives_its_turn_on() -> None:
    hasher = PasswordHasher(concurrency=1)
    order: list[str] = []
    release = trio.Event()

    async def check(name: str) -> None:
        async with hasher.turn(bounded=True, preferred=False, address=name):
            order.append(name)
            if name == "holder":
                await release.wait()

    gone = trio.CancelScope()

    async def cancellable() -> None:
        with gone:
            await check("gone")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(check, "holder")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(cancellable)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(check, "next")
        await trio.testing.wait_all_tasks_blocked()
        gone.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert (hasher.queued, hasher.others) == (2, 2)
        release.set()
    assert order == ["holder", "next"]
    assert (hasher.queued, hasher.others) == (0, 0)


async def test_a_known_account_is_never_refused_for_a_full_queue() -> None:
    hasher = PasswordHasher(concurrency=1, max_queued=1)
    async with hasher.turn(bounded=True, preferred=False, address="flood"):
        assert hasher.full()
        with pytest.raises(HashingBusy):
            await hasher.verify("x", None, address="honest")
        assert not hasher.full(preferred=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: hasher.verify("x", None, preferred=True))
            await trio.testing.wait_all_tasks_blocked()
            assert (hasher.queued, hasher.others) == (2, 1)
            nursery.cancel_scope.cancel()


async def test_refusals_for_others_load_cost_the_address_and_account_nothing(
    database_url: str,
) -> None:
    """The hashing queue is full of others' guesses: the honest address's logins are
    refused (``rate_limited``, the queue), and none of those refusals counts against
    its budget of 3 a minute or against the account. Once the queue has room, all 3
    are there; the 4th is refused for the address's own use."""
    async with (
        running_node(
            database_url, trusted_addresses=(), address_logins_per_minute=3, hash_queue=1
        ) as node,
        client(node) as c,
    ):
        await node.services.store.create_user("ann", hash_password("secret"))
        hasher = node.services.hasher
        async with hasher.turn(bounded=True, preferred=False, address="203.0.113.9"):
            for _ in range(6):
                refused = await c.request("login", name="ann", password="secret")
                assert refused["code"] == "rate_limited", refused
                assert "checking too many passwords" in refused["message"], refused
        for _ in range(3):
            await c.call("login", name="ann", password="secret")
            await c.call("logout")
        own = await c.request("login", name="ann", password="secret")
        assert own["code"] == "rate_limited", own
        assert "from here" in own["message"], own


async def test_a_recently_used_account_logs_in_past_a_full_queue(database_url: str) -> None:
    """Checks of accounts with a device seen lately go first, and are not refused for a
    full queue: a flood of guesses for names nobody uses cannot keep them out. An
    account never used waits with the rest (here: refused, the queue being full)."""
    async with running_node(database_url, trusted_addresses=(), hash_queue=1) as node:
        store = node.services.store
        await store.create_user("ann", hash_password("secret"))
        await store.create_user("bob", hash_password("secret"))
        async with client(node) as c:
            await c.call("login", name="ann", password="secret")  # ann's device is seen
        async with (
            node.services.hasher.turn(bounded=True, preferred=False, address="203.0.113.9"),
            client(node) as c,
        ):
            refused = await c.request("login", name="bob", password="secret")
            assert refused["code"] == "rate_limited", refused
            await c.call("login", name="ann", password="secret")
