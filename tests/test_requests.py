"""Every request and every error code of protocol v1, on both stores and over both
transports: each test takes the ``connect`` fixture and runs over TCP, then over
WebSocket (one JSON object per text message). What only one transport has (its
framing, limits and closes) is in test_bad_input.py and test_websocket.py."""

from __future__ import annotations

from typing import Any

import trio

from .support import login, next_is_sentinel, register
from .ws_support import Connect


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error", reply
    assert isinstance(reply["message"], str) and reply["message"]
    return str(reply["code"])


async def test_ping_with_and_without_rid(connect: Connect) -> None:
    async with connect() as c:
        assert await c.request("ping") == {"type": "ok"}
        assert await c.request("ping", rid="abc") == {"type": "ok", "rid": "abc"}
        assert await c.request("ping", rid=-7) == {"type": "ok", "rid": -7}


async def test_register(connect: Connect) -> None:
    async with connect() as c:
        reply = await c.request("register", rid=1, name="Zoë 🚀", password="pw")
        assert reply["type"] == "ok" and reply["rid"] == 1
        assert reply["user"]["name"] == "Zoë 🚀"
        assert isinstance(reply["user"]["id"], int) and reply["user"]["id"] > 0
        taken = await c.request("register", rid=2, name="Zoë 🚀", password="other")
        assert error_code(taken) == "name_taken" and taken["rid"] == 2
        bad = await c.request("register", name="a\nb", password="pw")
        assert error_code(bad) == "invalid_request" and "name" in bad["message"]


async def test_login_by_name_and_by_id(connect: Connect) -> None:
    async with connect() as c:
        user_id = await register(c, "ann", "pw1")
        reply = await c.request("login", rid="L", name="ann", password="pw1")
        token = reply.get("token")
        assert isinstance(token, str)
        assert reply == {
            "type": "ok",
            "rid": "L",
            "user": {"id": user_id, "name": "ann"},
            "friends": [],
            "groups": [],
            "offline": 0,
            "token": token,
            "device": "",
        }
        assert error_code(await c.request("login", id=user_id, password="pw1")) == (
            "already_logged_in"
        )
        assert (await c.call("logout")) == {"type": "ok"}
        by_id = await c.call("login", id=user_id, password="pw1")
        assert by_id["user"] == {"id": user_id, "name": "ann"}


async def test_bad_credentials_look_the_same(connect: Connect) -> None:
    async with connect() as c:
        user_id = await register(c, "ann", "right")
        replies = [
            await c.request("login", name="ann", password="wrong"),
            await c.request("login", name="nobody", password="right"),
            await c.request("login", id=user_id, password="wrong"),
            await c.request("login", id=user_id + 1000, password="right"),
        ]
        assert {error_code(r) for r in replies} == {"bad_credentials"}
        assert len({r["message"] for r in replies}) == 1


async def test_already_online_and_free_after_logout_or_close(connect: Connect) -> None:
    async with connect() as first:
        await register(first, "ann")
        await login(first, "ann")
        async with connect() as second:
            assert error_code(await second.request("login", name="ann", password="secret")) == (
                "already_online"
            )
            # Wrong password is checked before presence: it does not reveal who is online.
            assert error_code(await second.request("login", name="ann", password="x")) == (
                "bad_credentials"
            )
            await first.call("logout")  # a logout frees the user before its reply
            await login(second, "ann")
    async with connect() as third:  # the second connection closed: ann is free again
        # ... once the server has seen the close, which may come after this login:
        # retry while she is still online, within a deadline.
        with trio.fail_after(10):
            while True:
                reply = await third.request("login", name="ann", password="secret")
                if reply["type"] == "ok":
                    break
                assert error_code(reply) == "already_online"
                await trio.sleep(0.05)


async def test_not_logged_in(connect: Connect) -> None:
    async with connect() as c:
        requests: list[dict[str, Any]] = [
            {"type": "logout"},
            {"type": "find_user", "name": "x"},
            {"type": "add_friend", "user_id": 1},
            {"type": "send", "to": 1, "text": "t"},
            {"type": "create_group", "name": "g"},
            {"type": "join_group", "group_id": 1},
            {"type": "group_send", "group_id": 1, "text": "t"},
        ]
        for request in requests:
            kind = request.pop("type")
            reply = await c.request(kind, rid=kind, **request)
            assert error_code(reply) == "not_logged_in" and reply["rid"] == kind


async def test_invalid_request_comes_before_not_logged_in(connect: Connect) -> None:
    async with connect() as c:
        reply = await c.request("send", to="x", text="t")
        assert error_code(reply) == "invalid_request" and "to" in reply["message"]
        assert error_code(await c.request("teleport")) == "unknown_type"


async def test_find_user(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        bob_id = await register(bob, "bob")
        await register(ann, "ann")
        await login(ann, "ann")
        found = await ann.call("find_user", name="bob")
        assert found["user"] == {"id": bob_id, "name": "bob", "online": False}
        await login(bob, "bob")
        assert (await ann.call("find_user", name="bob"))["user"]["online"] is True
        missing = await ann.request("find_user", name="carol")
        assert error_code(missing) == "no_such_user"
        await bob.call("logout")  # a logout frees the user before its reply
        assert (await ann.call("find_user", name="bob"))["user"]["online"] is False


async def test_add_friend_is_mutual_and_notifies(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        reply = await ann.call("add_friend", user_id=bob_id)
        assert reply["friend"] == {"id": bob_id, "name": "bob", "online": True}
        event = await bob.next_event()
        assert event == {
            "type": "friend_added",
            "friend": {"id": ann_id, "name": "ann", "online": True},
        }
        assert error_code(await ann.request("add_friend", user_id=bob_id)) == "already_friends"
        assert error_code(await bob.request("add_friend", user_id=ann_id)) == "already_friends"
        assert error_code(await ann.request("add_friend", user_id=ann_id)) == "cannot_friend_self"
        assert error_code(await ann.request("add_friend", user_id=bob_id + 99)) == "no_such_user"
        await bob.call("logout")
        relog = await login(bob, "bob")
        assert relog["friends"] == [{"id": ann_id, "name": "ann", "online": True}]
        await ann.call("logout")
        again = await bob.call("logout")
        assert again == {"type": "ok"}
        relog = await login(bob, "bob")
        assert relog["friends"] == [{"id": ann_id, "name": "ann", "online": False}]


async def test_friend_added_is_not_kept_for_offline_users(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await ann.call("add_friend", user_id=bob_id)
        reply = await login(bob, "bob")
        assert reply["offline"] == 0
        assert reply["friends"] == [{"id": ann_id, "name": "ann", "online": True}]
        # A kept friend_added would come at the login, before ann's next message.
        await next_is_sentinel(bob, bob_id, sender=ann)


async def test_send_and_errors(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        sent = await ann.call("send", rid=5, to=bob_id, text="hello")
        assert sent["rid"] == 5 and sent["message_id"] > 0 and sent["ts"] > 1_600_000_000_000
        event = await bob.next_event()
        assert event == {
            "type": "message",
            "message_id": sent["message_id"],
            "from": {"id": ann_id, "name": "ann"},
            "to": bob_id,
            "text": "hello",
            "ts": sent["ts"],
            "offline": False,
        }
        assert error_code(await ann.request("send", to=bob_id + 50, text="x")) == "no_such_user"
        too_long = await ann.request("send", to=bob_id, text="x" * 4097)
        assert error_code(too_long) == "invalid_request" and "text" in too_long["message"]
        empty = await ann.request("send", to=bob_id, text="")
        assert error_code(empty) == "invalid_request" and "text" in empty["message"]
        await next_is_sentinel(bob, bob_id, sender=ann)  # the refused sends delivered nothing


async def test_send_to_self(connect: Connect) -> None:
    async with connect() as ann:
        ann_id = await register(ann, "ann")
        await login(ann, "ann")
        sent = await ann.call("send", to=ann_id, text="note to self")
        event = await ann.next_event()
        assert (event["message_id"], event["to"], event["from"]["id"]) == (
            sent["message_id"],
            ann_id,
            ann_id,
        )


async def test_long_unicode_text_is_kept_whole(connect: Connect) -> None:
    text = "ü🙂\u0000\t\n" + "字" * 4091
    assert len(text) == 4096
    async with connect() as ann, connect() as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await ann.call("send", to=bob_id, text=text)
        await login(bob, "bob")
        event = await bob.next_event()
        assert event["text"] == text and event["offline"] is True


async def test_groups(connect: Connect) -> None:
    async with connect() as ann, connect() as bob, connect() as cat:
        ann_id = await register(ann, "ann")
        bob_id = await register(bob, "bob")
        cat_id = await register(cat, "cat")
        for c, name in ((ann, "ann"), (bob, "bob"), (cat, "cat")):
            await login(c, name)
        created = await ann.call("create_group", name="tea", description="green & black")
        group = created["group"]
        assert group["name"] == "tea" and group["description"] == "green & black"
        plain = await ann.call("create_group", name="coffee")
        assert plain["group"]["description"] == ""
        assert error_code(await bob.request("create_group", name="tea")) == "group_name_taken"
        joined = await bob.call("join_group", group_id=group["id"])
        assert joined == {"type": "ok", "group": group, "role": "normal"}
        assert error_code(await bob.request("join_group", group_id=group["id"])) == (
            "already_member"
        )
        assert error_code(await ann.request("join_group", group_id=group["id"])) == (
            "already_member"
        )
        assert error_code(await bob.request("join_group", group_id=group["id"] + 99)) == (
            "no_such_group"
        )
        assert error_code(await cat.request("group_send", group_id=group["id"], text="hi")) == (
            "not_a_member"
        )
        assert error_code(await cat.request("group_send", group_id=9999, text="hi")) == (
            "no_such_group"
        )
        sent = await bob.call("group_send", group_id=group["id"], text="brew?")
        event = await ann.next_event()
        assert event == {
            "type": "group_message",
            "message_id": sent["message_id"],
            "group_id": group["id"],
            "from": {"id": bob_id, "name": "bob"},
            "text": "brew?",
            "ts": sent["ts"],
            "offline": False,
        }
        # bob's next message to himself, then to cat, must be the next event each gets:
        # a copy of his group message would come first (one sender, in order).
        await next_is_sentinel(bob, bob_id, sender=bob)  # the sender gets no copy
        await next_is_sentinel(cat, cat_id, sender=bob)  # not a member

        await ann.call("logout")
        relog = await login(ann, "ann")
        assert relog["groups"] == [
            {
                "id": group["id"],
                "name": "tea",
                "description": "green & black",
                "role": "creator",
                "members": [
                    {"id": ann_id, "name": "ann", "role": "creator"},
                    {"id": bob_id, "name": "bob", "role": "normal"},
                ],
            },
            {
                "id": plain["group"]["id"],
                "name": "coffee",
                "description": "",
                "role": "creator",
                "members": [{"id": ann_id, "name": "ann", "role": "creator"}],
            },
        ]
        assert cat_id not in {m["id"] for g in relog["groups"] for m in g["members"]}


async def test_cid_makes_a_retry_harmless(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        group = (await ann.call("create_group", name="g"))["group"]
        await bob.call("join_group", group_id=group["id"])
        first = await ann.call("send", to=bob_id, text="once", cid="c-1")
        again = await ann.call("send", to=bob_id, text="different text", cid="c-1")
        assert (again["message_id"], again["ts"]) == (first["message_id"], first["ts"])
        # The cid is shared by send and group_send.
        crossed = await ann.call("group_send", group_id=group["id"], text="x", cid="c-1")
        assert crossed["message_id"] == first["message_id"]
        # A failed request does not use up its cid.
        failed = await ann.request("send", to=bob_id + 77, text="lost", cid="c-2")
        assert error_code(failed) == "no_such_user"
        fresh = await ann.call("group_send", group_id=group["id"], text="g", cid="c-2")
        assert fresh["message_id"] != first["message_id"]
        events = [await bob.next_event(), await bob.next_event()]
        assert [e["text"] for e in events] == ["once", "g"]
        await next_is_sentinel(bob, bob_id, sender=ann)  # the retries delivered nothing
        # Another user's cid is theirs alone.
        other = await bob.call("send", to=bob_id, text="mine", cid="c-1")
        assert other["message_id"] != first["message_id"]


async def test_logout_stops_events_and_keeps_messages(connect: Connect) -> None:
    async with connect() as ann, connect() as bob:
        await register(ann, "ann")
        bob_id = await register(bob, "bob")
        await login(ann, "ann")
        await login(bob, "bob")
        assert await bob.call("logout") == {"type": "ok"}
        assert error_code(await bob.request("logout")) == "not_logged_in"
        away = [await ann.call("send", to=bob_id, text=f"while away {i}") for i in range(2)]
        relog = await login(bob, "bob")
        assert relog["offline"] == 2
        # The kept messages are the first events bob's connection got at all: one
        # written while he was logged out would have come before them.
        events = [await bob.next_event(), await bob.next_event()]
        assert [(e["message_id"], e["offline"]) for e in events] == [
            (sent["message_id"], True) for sent in away
        ]
        await next_is_sentinel(bob, bob_id, sender=ann)  # then live, and nothing twice


async def test_one_reply_per_request_in_order(connect: Connect) -> None:
    """Pipelined requests: replies keep the order, each with its own rid."""
    async with connect() as c:
        await register(c, "ann")
        lines = b"".join(
            [
                b'{"type":"ping","rid":1}\n',
                b'{"type":"login","name":"ann","password":"secret","rid":2}\n',
                b'{"type":"find_user","name":"nobody","rid":3}\n',
                b"not json\n",
                b'{"type":"ping"}\n',
                b'{"type":"create_group","name":"g","rid":"six"}\n',
            ]
        )
        replies = await c.send_raw(lines, replies=6)
        assert [r.get("rid") for r in replies] == [1, 2, 3, None, None, "six"]
        assert [r["type"] for r in replies] == ["ok", "ok", "error", "error", "ok", "ok"]
        assert [r.get("code") for r in replies[2:4]] == ["no_such_user", "bad_json"]


async def test_ids_beyond_any_row_are_not_found(connect: Connect) -> None:
    huge = 2**64 + 5
    async with connect() as c:
        await register(c, "ann")
        assert error_code(await c.request("login", id=huge, password="secret")) == (
            "bad_credentials"
        )
        await login(c, "ann")
        assert error_code(await c.request("send", to=huge, text="x")) == "no_such_user"
        assert error_code(await c.request("add_friend", user_id=huge)) == "no_such_user"
        assert error_code(await c.request("join_group", group_id=huge)) == "no_such_group"
        assert error_code(await c.request("group_send", group_id=huge, text="x")) == (
            "no_such_group"
        )
