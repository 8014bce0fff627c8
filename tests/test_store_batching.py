"""Concurrent sends share one store transaction; each keeps its own answer.

These talk to the store directly (SQLite and MariaDB), many sends at once, so the
coalescer puts them in the same batches: a valid send, one to a missing user, a
repeated ``cid``, group sends that fail their checks, side by side.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import pytest
import trio

from chat.server.positions import Positions
from chat.store import (
    NoSuchGroup,
    NoSuchUser,
    NotAMember,
    Store,
    StoredMessage,
    open_store,
)
from chat.store.streams import INBOX, Advance, KeptMessage, StreamRange

MISSING = 10**12
"""An id no user or group has."""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await trio.to_thread.run_sync(open_store, database_url)
    try:
        yield opened
    finally:
        opened.close()


async def users(store: Store, *names: str) -> list[int]:
    return [(await store.create_user(name, "not-a-hash")).id for name in names]


async def count_messages(store: Store, body: str) -> int:
    query = store.dialect.sql("SELECT COUNT(*) FROM messages WHERE body = ?")

    def work(conn: Any) -> int:
        cursor = conn.cursor()
        try:
            cursor.execute(query, (body,))
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()
            conn.rollback()

    return await store.pool.run(work)


async def kept_for(store: Store, user_id: int) -> list[KeptMessage]:
    """What is kept for the user's device ``""`` (its first device: everything sent to
    it, and to its groups since it joined), in the order a login delivers it."""
    start = await store.device_login(user_id, "", [])
    ranges = [
        StreamRange(user_id, stream, pos, start.heads[stream], 10_000, stream != INBOX)
        for stream, pos in start.positions.items()
    ]
    found = await store.read_streams(ranges)
    return sorted((m for stream in found for m in stream), key=lambda m: m.message_id)


async def together(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the calls concurrently; each one's result or exception, in call order."""
    outcomes: list[Any] = [None] * len(calls)

    async def one(index: int) -> None:
        try:
            outcomes[index] = await calls[index]()
        except Exception as exc:
            outcomes[index] = exc

    async with trio.open_nursery() as nursery:
        for index in range(len(calls)):
            nursery.start_soon(one, index)
    return outcomes


async def test_each_send_in_a_batch_gets_its_own_answer(store: Store) -> None:
    senders = await users(store, *(f"s{i}" for i in range(40)))
    ann, bob = await users(store, "ann", "bob")
    group = await store.create_group("g", "", ann)
    await store.join_group(group.id, bob)
    # Sent before, so a repeat of these cids must answer with the first message.
    first = {s: await store.store_direct(s, bob, f"first {s}", f"c-{s}") for s in senders[:10]}

    calls: list[Callable[[], Awaitable[StoredMessage]]] = []
    expected: list[str] = []
    for i, s in enumerate(senders):
        match i % 5:
            case 0:
                calls.append(partial(store.store_direct, s, bob, f"new {s}", None))
                expected.append("stored")
            case 1:
                calls.append(partial(store.store_direct, s, MISSING, f"lost {s}", f"x-{s}"))
                expected.append("no_such_user")
            case 2 if s in first:
                calls.append(partial(store.store_direct, s, ann, "other text", f"c-{s}"))
                expected.append("repeat")
            case 2:
                calls.append(partial(store.store_direct, s, ann, f"new {s}", f"n-{s}"))
                expected.append("stored")
            case 3:
                calls.append(partial(store.store_group, s, group.id, f"lost {s}", None))
                expected.append("not_a_member")
            case _:
                calls.append(partial(store.store_group, s, MISSING, f"lost {s}", None))
                expected.append("no_such_group")
    calls.append(lambda: store.store_group(ann, group.id, "to the group", "g-1"))
    expected.append("group")
    runs = store.pool.runs
    outcomes = await together(calls)
    # 41 sends made together share a few transactions (one alone, then the rest).
    assert store.pool.runs - runs <= 4, store.pool.runs - runs

    for sender, kind, outcome in zip([*senders, ann], expected, outcomes, strict=True):
        if kind == "stored":
            assert isinstance(outcome, StoredMessage) and outcome.created
            assert await count_messages(store, f"new {sender}") == 1
        elif kind == "repeat":
            assert isinstance(outcome, StoredMessage) and not outcome.created
            assert (outcome.message_id, outcome.ts, outcome.recipient_id) == (
                first[sender].message_id,
                first[sender].ts,
                bob,
            )
        elif kind == "group":
            assert isinstance(outcome, StoredMessage)
            assert (outcome.group_id, outcome.member_count) == (group.id, 2)
        else:
            error = {
                "no_such_user": NoSuchUser,
                "not_a_member": NotAMember,
                "no_such_group": NoSuchGroup,
            }[kind]
            assert isinstance(outcome, error), (kind, outcome)
            assert await count_messages(store, f"lost {sender}") == 0
    assert await count_messages(store, "other text") == 0

    # Everything that got an answer is kept exactly once for its recipient.
    kept = await kept_for(store, bob)
    stored_ids = [o.message_id for o in outcomes if isinstance(o, StoredMessage) and o.created]
    for_bob = [m.message_id for m in first.values()] + [
        o.message_id
        for o, call_kind in zip(outcomes, expected, strict=True)
        if call_kind in ("stored", "group") and (o.recipient_id == bob or o.group_id)
    ]
    assert sorted(row.message_id for row in kept) == sorted(for_bob)
    assert len(set(stored_ids)) == len(stored_ids)


async def test_a_failed_send_does_not_use_up_its_cid(store: Store) -> None:
    ann, bob = await users(store, "ann", "bob")
    outcomes = await together(
        [
            lambda: store.store_direct(ann, MISSING, "lost", "c-1"),
            lambda: store.store_direct(bob, ann, "hello", "c-1"),  # another sender's cid
        ]
    )
    assert isinstance(outcomes[0], NoSuchUser)
    assert isinstance(outcomes[1], StoredMessage) and outcomes[1].created
    stored = await store.store_direct(ann, bob, "now it goes", "c-1")
    assert stored.created and stored.recipient_id == bob


async def test_one_cid_twice_in_a_batch_is_stored_once(store: Store) -> None:
    """Not something one connection can do (its sends are sequential), but the store
    must still answer both with one message: the batch's one-statement insert fails
    and each send goes in alone."""
    ann, bob, cat = await users(store, "ann", "bob", "cat")
    outcomes = await together(
        [
            partial(store.store_direct, cat, ann, "filler", None),  # leads a batch alone
            partial(store.store_direct, ann, bob, "twice 0", "same"),
            partial(store.store_direct, ann, bob, "twice 1", "same"),
            partial(store.store_direct, bob, cat, "alongside", None),
        ]
    )
    assert all(isinstance(outcome, StoredMessage) for outcome in outcomes)
    assert outcomes[1].message_id == outcomes[2].message_id
    assert sorted([outcomes[1].created, outcomes[2].created]) == [False, True]
    assert await count_messages(store, "twice 0") + await count_messages(store, "twice 1") == 1
    assert [row.message_id for row in await kept_for(store, bob)] == [outcomes[1].message_id]
    assert [row.message_id for row in await kept_for(store, cat)] == [outcomes[3].message_id]


async def test_a_cid_race_between_nodes_is_answered_with_one_message(database_url: str) -> None:
    """Two stores (two nodes) send with one cid at once: one message, both told it."""
    first, second = [await trio.to_thread.run_sync(open_store, database_url) for _ in range(2)]
    try:
        ann, bob, cat = await users(first, "ann", "bob", "cat")
        group = await first.create_group("g", "", ann)
        await first.join_group(group.id, bob)
        for n in range(5):
            outcomes = await together(
                [
                    partial(first.store_direct, ann, bob, f"race {n}", f"d-{n}"),
                    partial(second.store_direct, ann, bob, f"race {n}", f"d-{n}"),
                    partial(first.store_group, ann, group.id, f"group race {n}", f"g-{n}"),
                    partial(second.store_group, ann, group.id, f"group race {n}", f"g-{n}"),
                    partial(second.store_direct, cat, bob, f"bystander {n}", None),
                ]
            )
            assert all(isinstance(outcome, StoredMessage) for outcome in outcomes), outcomes
            assert outcomes[0].message_id == outcomes[1].message_id
            assert outcomes[2].message_id == outcomes[3].message_id
            assert await count_messages(first, f"race {n}") == 1
            assert await count_messages(first, f"group race {n}") == 1
            assert await count_messages(first, f"bystander {n}") == 1
        kept = [row.message_id for row in await kept_for(first, bob)]
        assert len(kept) == len(set(kept)) == 15
    finally:
        first.close()
        second.close()


async def test_one_senders_messages_stay_in_order_among_concurrent_sends(store: Store) -> None:
    bob, ann, *others = await users(store, "bob", "ann", *(f"o{i}" for i in range(20)))

    async def ann_sends() -> None:
        for n in range(30):
            await store.store_direct(ann, bob, f"ann {n}", None)

    async def other_sends(sender: int) -> None:
        for n in range(10):
            await store.store_direct(sender, bob, f"other {n}", None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ann_sends)
        for sender in others:
            nursery.start_soon(other_sends, sender)
    kept = await kept_for(store, bob)
    assert [row.body for row in kept if row.sender_id == ann] == [f"ann {n}" for n in range(30)]
    for sender in others:
        assert [row.body for row in kept if row.sender_id == sender] == [
            f"other {n}" for n in range(10)
        ]
    assert len(kept) == 30 + 10 * len(others)


async def test_reads_and_positions_made_together_share_transactions(store: Store) -> None:
    """Forty devices woken at once read their inboxes: a few transactions, not forty.
    Where their forty writers got to is stored by the node's ``Positions``: one
    transaction for all of them."""
    ann, *readers = await users(store, "ann", *(f"r{i}" for i in range(40)))
    for reader in readers:
        await store.store_direct(ann, reader, f"for {reader}", None)
        await store.device_login(reader, "", [])
    runs = store.pool.runs
    ranges = [(StreamRange(reader, INBOX, 0, None, 10),) for reader in readers]
    rows = await together([partial(store.read_streams, wanted) for wanted in ranges])
    assert store.pool.runs - runs <= 4, store.pool.runs - runs
    assert [len(found[0]) for found in rows] == [1] * 40
    positions = Positions(store)
    for reader, found in zip(readers, rows, strict=True):
        positions.report([Advance(reader, "", INBOX, found[0][0].pos)])
    runs = store.pool.runs
    async with trio.open_nursery() as nursery:
        await nursery.start(positions.run)
        await positions.settle(readers[-1], "")
        nursery.cancel_scope.cancel()
    assert (store.pool.runs - runs, positions.batches) == (1, 1)
    assert [await store.device_positions(reader, "") for reader in readers] == [{INBOX: 1}] * 40
    assert [await kept_for(store, reader) for reader in readers] == [[]] * 40


async def test_a_batch_hands_off_every_message_in_order_before_any_sender_resumes(
    store: Store,
) -> None:
    """``on_stored`` runs for each send of a batch right after its commit, in the order
    of the sends, before any of their callers resumes: a recipient's device never sees
    a sender's group message (read from the group's log meanwhile) before an earlier
    direct message of the same batch was handed to it (found as a reordering under
    load). A repeated ``cid`` is told the earlier message; a refused send nothing."""
    ann, bob = await users(store, "ann", "bob")
    group = await store.create_group("g", "", ann)
    await store.store_direct(ann, bob, "before", "c-0")
    told: list[tuple[str, int, bool]] = []
    resumed: list[str] = []

    def hook(name: str) -> Callable[[StoredMessage], None]:
        def on_stored(stored: StoredMessage) -> None:
            told.append((name, stored.message_id, stored.created))
            assert not resumed, "a caller resumed before its batch's hand-offs"

        return on_stored

    sends: list[tuple[str, Awaitable[StoredMessage]]] = [
        ("d1", store.store_direct(ann, bob, "d1", None, hook("d1"))),
        ("g1", store.store_group(ann, group.id, "g1", None, hook("g1"))),
        ("missing", store.store_direct(ann, MISSING, "x", None, hook("missing"))),
        ("again", store.store_direct(ann, bob, "before", "c-0", hook("again"))),
        ("d2", store.store_direct(ann, bob, "d2", None, hook("d2"))),
    ]

    async def wait(name: str, awaitable: Awaitable[StoredMessage]) -> None:
        with contextlib.suppress(NoSuchUser):
            await awaitable
        resumed.append(name)

    async with trio.open_nursery() as nursery:
        for name, awaitable in sends:
            nursery.start_soon(wait, name, awaitable)
    assert [name for name, _, _ in told] == ["d1", "g1", "again", "d2"]
    ids = [message_id for name, message_id, created in told if created]
    assert ids == sorted(ids) and len(ids) == 3
    assert [created for name, _, created in told if name == "again"] == [False]
    assert sorted(resumed) == sorted(name for name, _ in sends)
