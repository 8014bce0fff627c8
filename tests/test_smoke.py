from chat.server import Node

from .support import client, login, register


async def test_two_users_chat(node: Node) -> None:
    async with client(node) as alice, client(node) as bob:
        alice_id = await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")
        sent = await alice.call("send", to=bob_id, text="hi bob")
        event = await bob.next_event()
        assert event["type"] == "message"
        assert event["message_id"] == sent["message_id"]
        assert event["from"] == {"id": alice_id, "name": "alice"}
        assert event["offline"] is False
