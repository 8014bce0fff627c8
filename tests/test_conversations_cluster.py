"""Protocol 1.2 across two nodes: ``read`` events reach the user's devices and the other
user's devices on the other node, receipts are withheld across nodes when either
blocked the other, and ``typing`` reaches a friend's devices wherever they are. Real
MariaDB and Redis; nodes in-process."""

from __future__ import annotations

from .cluster_support import two_nodes
from .support import client, next_is_sentinel, next_of, on, register


async def test_read_reaches_own_devices_and_the_other_users_on_both_nodes(
    mysql_url: str, redis_url: str
) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b):
        async with client(a) as c:
            ann = await register(c, "ann")
            bob = await register(c, "bob")
        async with (
            client(a) as phone,
            client(b) as laptop,
            client(a) as bob_desk,
            client(b) as bob_phone,
        ):
            await on(phone, "ann", "phone")
            await on(laptop, "ann", "laptop")
            await on(bob_desk, "bob", "desk")
            await on(bob_phone, "bob", "phone")
            group = (await bob_desk.call("create_group", name="g"))["group"]["id"]
            await next_of(bob_phone, "group_joined")
            await phone.call("join_group", group_id=group)
            await next_of(laptop, "group_joined")
            message = (await bob_desk.call("send", to=ann, text="hi"))["message_id"]
            in_group = (await bob_desk.call("group_send", group_id=group, text="all"))["message_id"]
            for device in (phone, laptop):
                await next_of(device, "message")
                await next_of(device, "group_message")
            await next_of(bob_phone, "message")  # bob's own copies
            await next_of(bob_phone, "group_message")
            await phone.call("read", **{"with": bob, "message_id": message})
            assert await next_of(laptop, "read") == {
                "type": "read",
                "with": bob,
                "message_id": message,
            }
            receipt = {"type": "read", "by": {"id": ann, "name": "ann"}, "message_id": message}
            assert await next_of(bob_desk, "read") == receipt  # node A
            assert await next_of(bob_phone, "read") == receipt  # node B
            await laptop.call("read", group_id=group, message_id=in_group)  # from node B
            assert await next_of(phone, "read") == {
                "type": "read",
                "group_id": group,
                "message_id": in_group,
            }
            # Both nodes read the same markers.
            for device in (phone, laptop):
                page = (await device.call("conversations"))["conversations"]
                assert [(i["read"], i["unread"]) for i in page] == [(in_group, 0), (message, 0)]


async def test_no_receipt_across_nodes_when_blocked(mysql_url: str, redis_url: str) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b):
        async with client(a) as c:
            ann = await register(c, "ann")
            bob = await register(c, "bob")
            await register(c, "cy")
        async with client(a) as anns, client(b) as bobs, client(b) as cys:
            await on(anns, "ann")
            await on(bobs, "bob")
            await on(cys, "cy")
            message = (await bobs.call("send", to=ann, text="hi"))["message_id"]
            await next_of(anns, "message")
            await bobs.call("block", user_id=ann)
            await anns.call("read", **{"with": bob, "message_id": message})
            await next_is_sentinel(bobs, bob, cys)


async def test_typing_reaches_a_friend_on_the_other_node(mysql_url: str, redis_url: str) -> None:
    async with two_nodes(mysql_url, redis_url) as (a, b):
        async with client(a) as c:
            ann = await register(c, "ann")
            bob = await register(c, "bob")
        async with client(a) as anns, client(b) as bob_b, client(a) as bob_a:
            await on(anns, "ann")
            await on(bob_b, "bob", "laptop")
            await on(bob_a, "bob", "phone")
            await anns.call("add_friend", user_id=bob)
            await next_of(bob_b, "friend_added")
            await next_of(bob_a, "friend_added")
            await anns.call("typing", **{"with": bob, "active": True})
            for device in (bob_b, bob_a):
                assert await next_of(device, "typing") == {
                    "type": "typing",
                    "from": {"id": ann, "name": "ann"},
                    "active": True,
                }
            await bob_b.call("typing", **{"with": ann, "active": False})
            assert (await next_of(anns, "typing"))["from"]["id"] == bob
