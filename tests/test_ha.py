"""High availability: a Redis master failed over by Sentinels, and the Galera member the
nodes write to killed, each under traffic between two nodes. Real servers, started by
the module on private ports (``chat.bench.ha_servers``): a Redis master with two
replicas and three Sentinels, and a three-member Galera cluster. The machine's own
MariaDB and Redis are not touched (but for the Sentinel test's database, which is a
fresh one as everywhere).
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from chat.bench.ha_servers import HaSetup, Ports
from chat.client import ChatClient
from chat.store.mysql import MysqlDialect

from .cluster_support import DEADLINE, Tally, make_broker, receive, two_nodes
from .support import client, login, register

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaSetup]:
    setup = HaSetup(tmp_path_factory.mktemp("ha"), Ports.free())
    try:
        yield setup
    finally:
        setup.remove()


@pytest.fixture(scope="module")
def sentinel_redis(ha: HaSetup) -> HaSetup:
    """The Redis master, its two replicas and the three Sentinels, running."""
    ha.start_redis()
    return ha


@pytest.fixture(scope="module")
def galera(ha: HaSetup) -> HaSetup:
    """The three Galera members, running and synced."""
    ha.start_galera()
    return ha


async def send_when_able(c: ChatClient, to: int, text: str, cid: str) -> dict[str, Any]:
    """Send, retrying (same ``cid``) while the node answers ``unavailable``."""
    with trio.fail_after(DEADLINE):
        while True:
            reply = await c.request("send", to=to, text=text, cid=cid)
            if reply["type"] == "ok":
                return reply
            assert reply["code"] == "unavailable", reply
            await trio.sleep(0.05)


async def chat_through(alice: ChatClient, bob: ChatClient, bob_id: int, fault: Any) -> None:
    """alice writes to bob without pause while ``fault()`` runs; then every ``ok``'d
    message must have reached bob once, in order, and nobody was disconnected."""
    sent, got = Tally(), Tally()
    stop_sending = trio.Event()

    async def sender() -> None:
        i = 0
        while not stop_sending.is_set():
            reply = await send_when_able(alice, bob_id, f"{i}", f"c{i}")
            sent.add(reply["message_id"])
            i += 1
            await trio.sleep(0.02)

    async def receiver() -> None:
        while True:
            got.add((await receive(bob, "message"))["message_id"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        nursery.start_soon(sender)
        with trio.fail_after(DEADLINE):
            await got.reach(5)
        await fault()
        with trio.fail_after(DEADLINE):
            await sent.reach(len(sent) + 20)  # sends go through after the fault
        stop_sending.set()
        with trio.fail_after(DEADLINE):
            await got.reach(len(sent))
        # A last one: a duplicate would have arrived before it.
        last = await send_when_able(alice, bob_id, "last", "last")
        with trio.fail_after(DEADLINE):
            await got.reach(len(sent) + 1)
        nursery.cancel_scope.cancel()
    assert got.items == [*sent.items, last["message_id"]]
    assert sorted(got.items) == got.items  # message_id order
    assert not alice.closed.is_set() and not bob.closed.is_set()


async def test_the_broker_follows_a_sentinel_failover(
    mysql_url: str, sentinel_redis: HaSetup
) -> None:
    """The Redis master is killed (SIGKILL) while alice (node A) writes to bob (node B):
    the Sentinels promote a replica, both nodes' commands and subscriptions follow it,
    and every ``ok``'d message reaches bob once, in order, with nobody disconnected."""
    ha = sentinel_redis
    old = ha.redis_master()
    async with (
        two_nodes(mysql_url, ha.redis_url()) as (a, b),
        client(a) as alice,
        client(b) as bob,
    ):
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")

        async def kill_the_master() -> None:
            assert old.signal(signal.SIGKILL)
            with trio.fail_after(DEADLINE):
                while await trio.to_thread.run_sync(ha.redis_master_port) in (None, old.port):  # noqa: ASYNC110 (asks the Sentinels)
                    await trio.sleep(0.1)

        try:
            await chat_through(alice, bob, bob_id, kill_the_master)
        finally:
            # The old master comes back (empty) and the Sentinels make it a replica.
            old.wait_gone()
            old.start()
        new = ha.redis_master()
        assert new.port != old.port
        # Both nodes hold their users' leases on the new master.
        assert await a.services.broker.locate([bob_id]) == {bob_id: frozenset({"node-b"})}


async def test_writes_move_on_when_the_written_galera_member_is_killed(
    redis_url: str, galera: HaSetup, tmp_path: Path
) -> None:
    """The Galera member both nodes write to (the first listed) is killed (SIGKILL)
    while alice (node A) writes to bob (node B): the nodes move on to the next member,
    sends resume, and every ``ok``'d message reaches bob once, in order; nobody is
    disconnected. The killed member rejoins (state transfer) and is not failed back to."""
    database = galera.database_url(f"chat_ha_{uuid.uuid4().hex[:10]}")
    first = galera.galera[0]
    async with (
        two_nodes(database, redis_url) as (a, b),
        client(a) as alice,
        client(b) as bob,
    ):
        dialects = [node.services.store.dialect for node in (a, b)]
        assert all(isinstance(d, MysqlDialect) and d.port == first.port for d in dialects)
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        await login(alice, "alice")
        await login(bob, "bob")

        async def kill_the_written_member() -> None:
            assert first.signal(signal.SIGKILL)
            first.wait_gone()

        await chat_through(alice, bob, bob_id, kill_the_written_member)
        assert all(isinstance(d, MysqlDialect) and d.port != first.port for d in dialects)
        await trio.to_thread.run_sync(first.join)
        await trio.to_thread.run_sync(first.wait_synced)
        reply = await send_when_able(alice, bob_id, "after the rejoin", "rejoined")
        event = await receive(bob, "message")
        assert event["message_id"] == reply["message_id"]
        assert all(isinstance(d, MysqlDialect) and d.port != first.port for d in dialects)


def test_make_broker_takes_a_sentinel_url() -> None:
    broker = make_broker("redis+sentinel://127.0.0.1:1/chat", "node-a")
    assert broker.endpoint.is_sentinel
