"""``create_group`` throttled per user (protocol 1.2): at most 10 groups made per hour;
the 11th gets ``rate_limited`` with ``retry_after_ms``; refused requests do not count;
the count is the cluster's, not a node's."""

from __future__ import annotations

from typing import Any

import trio

from chat.server.handlers.groups import CREATE_GROUP_WINDOW

from .cluster_support import DEADLINE, two_nodes
from .support import client, login, register, running_node

HOUR_MS = 3_600_000


def assert_rate_limited(reply: dict[str, Any]) -> int:
    assert (reply["type"], reply["code"]) == ("error", "rate_limited"), reply
    wait = reply["retry_after_ms"]
    assert isinstance(wait, int) and 0 < wait <= HOUR_MS, reply
    return wait


async def test_ten_groups_an_hour_then_rate_limited(database_url: str) -> None:
    assert CREATE_GROUP_WINDOW.limit == 10 and CREATE_GROUP_WINDOW.span_ms == HOUR_MS
    async with running_node(database_url) as node, client(node) as ann, client(node) as bob:
        await register(ann, "ann")
        await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        await ann.call("create_group", name="g0")
        # Refused requests do not count: a taken name, a bad name.
        for _ in range(3):
            taken = await ann.request("create_group", name="G0")
            assert taken["code"] == "group_name_taken", taken
            bad = await ann.request("create_group", name="\u2800")
            assert bad["code"] == "invalid_request", bad
        for n in range(1, 10):
            await ann.call("create_group", name=f"g{n}")
        limited = await ann.request("create_group", name="g10")
        wait = assert_rate_limited(limited)
        assert wait > HOUR_MS - 60_000  # the first of the ten was made moments ago
        # rate_limited comes before the request's own errors (a taken name).
        assert_rate_limited(await ann.request("create_group", name="g1"))
        # invalid_request comes before it.
        assert (await ann.request("create_group", name=""))["code"] == "invalid_request"
        # Nothing was made by the refused request, and other users are not affected.
        assert [g["name"] for g in (await ann.call("groups"))["groups"]][-1] == "g9"
        assert (await bob.call("create_group", name="g10"))["group"]["name"] == "g10"
        # Joining is not creating.
        bobs_group = (await bob.call("groups"))["groups"][0]["id"]
        assert (await ann.call("join_group", group_id=bobs_group))["role"] == "normal"


async def test_the_group_quota_counts_across_nodes(mysql_url: str, redis_url: str) -> None:
    """Groups made on node a count on node b: moving does not start the count again."""
    async with two_nodes(mysql_url, redis_url) as (a, b):
        async with client(a) as first:
            await register(first, "ann")
            await login(first, "ann")
            for n in range(6):
                await first.call("create_group", name=f"a{n}")
        async with client(b) as second:
            with trio.fail_after(DEADLINE):  # until node a has seen the first one close
                while True:
                    reply = await second.request("login", name="ann", password="secret")
                    if reply["type"] == "ok":
                        break
                    await trio.sleep(0.05)
            for n in range(4):
                await second.call("create_group", name=f"b{n}")
            assert_rate_limited(await second.request("create_group", name="b4"))


async def test_simultaneous_creates_make_at_most_ten(mysql_url: str, redis_url: str) -> None:
    """Sixteen requests at once, half on each node, from two devices of one user: ten
    groups, six refusals (the creator's row lock serialises the count)."""
    async with (
        two_nodes(mysql_url, redis_url) as (a, b),
        client(a) as on_a,
        client(b) as on_b,
    ):
        await register(on_a, "ann")
        await on_a.call("login", name="ann", password="secret", device="one")
        await on_b.call("login", name="ann", password="secret", device="two")
        replies: list[dict[str, Any]] = []

        async def make(c: Any, name: str) -> None:
            replies.append(await c.request("create_group", name=name))

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(make, on_a, f"x{n}")
                nursery.start_soon(make, on_b, f"y{n}")
        made = [r for r in replies if r["type"] == "ok"]
        assert len(made) == 10, replies
        for refused in (r for r in replies if r["type"] != "ok"):
            assert_rate_limited(refused)
