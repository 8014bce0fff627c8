"""The delivery state machine on its own: positions in, what to queue, read and store out.

No sockets, no store, no trio: ``DeviceState`` is fed what the store would answer and
what the writer and the client would report (chat/server/delivery.py)."""

from __future__ import annotations

import pytest

from chat.server.delivery import AckError, DeviceState, Mark, Offer, Written
from chat.store.streams import INBOX, Advance, DeviceStart, KeptMessage, StreamRange

ME = 7
FRIEND = 8
GROUP = 3


def kept(stream: int, pos: int, message_id: int, sender: int = FRIEND) -> KeptMessage:
    return KeptMessage(
        stream=stream,
        pos=pos,
        message_id=message_id,
        sender_id=sender,
        sender_name=f"user{sender}",
        recipient_id=None if stream else ME,
        group_id=stream or None,
        body="hi",
        ts=1,
    )


def state(
    positions: dict[int, int] | None = None,
    heads: dict[int, int] | None = None,
    kept_count: int = 0,
    *,
    acks: bool = False,
) -> DeviceState:
    positions = positions or {INBOX: 0, GROUP: 0}
    start = DeviceStart(positions, heads or dict(positions), kept_count, new=False)
    device = DeviceState(ME, "laptop", acks, start)
    return device


def live(positions: dict[int, int] | None = None, *, acks: bool = False) -> DeviceState:
    device = state(positions, acks=acks)
    device.live = True
    return device


def read(
    device: DeviceState,
    ranges: list[StreamRange],
    store: dict[int, list[KeptMessage]],
    page: int | None = None,
) -> list[KeptMessage | Mark]:
    """What the store would answer for ``ranges``, from ``store`` (stream -> messages)."""
    results = []
    for wanted in ranges:
        rows = [
            m
            for m in store.get(wanted.stream, [])
            if m.pos > wanted.after
            and (wanted.upto is None or m.pos <= wanted.upto)
            and not (wanted.without_sender and m.sender_id == ME)
        ]
        results.append(rows[: wanted.limit])
    if page is None:
        page = ranges[0].limit if ranges else 10
    return device.take(ranges, results, limit=page)


# --- hand-off ------------------------------------------------------------------------


def test_the_next_position_is_taken_at_once_and_a_repeat_dropped() -> None:
    device = live()
    assert device.offer(INBOX, 1, FRIEND) is Offer.TAKE
    device.queued_one(INBOX, 1)
    assert device.offer(INBOX, 1, FRIEND) is Offer.DROP
    assert device.offer(INBOX, 2, FRIEND) is Offer.TAKE
    assert not device.dirty


def test_a_gap_makes_the_stream_be_read_and_holds_every_other_hand_off() -> None:
    device = live()
    assert device.offer(INBOX, 2, FRIEND) is Offer.READ  # position 1 was not seen here
    assert device.dirty == {INBOX}
    # While a stream waits to be read, nothing overtakes it, in any stream: one sender's
    # messages to a person and to a group keep their order.
    assert device.offer(GROUP, 1, FRIEND) is Offer.READ
    assert device.dirty == {INBOX, GROUP}


def test_nothing_is_taken_before_the_backlog_is_queued_or_while_reading() -> None:
    device = state()
    assert device.offer(INBOX, 1, FRIEND) is Offer.READ
    device = live()
    device.reading = True
    assert device.offer(INBOX, 1, FRIEND) is Offer.READ


def test_own_group_messages_are_passed_over_but_not_own_messages_to_oneself() -> None:
    device = live()
    assert device.offer(GROUP, 1, ME) is Offer.PASS
    assert device.offer(INBOX, 1, ME) is Offer.TAKE  # a message to oneself: every device


def test_a_stream_the_device_does_not_follow_is_ignored() -> None:
    assert live().offer(99, 1, FRIEND) is Offer.DROP


# --- reads -------------------------------------------------------------------------------


def test_a_read_merges_streams_by_message_id_and_never_queues_twice() -> None:
    device = live()
    device.queued_one(INBOX, 1)  # taken by hand-off already
    device.wake(None)
    store = {
        INBOX: [kept(INBOX, 1, 10), kept(INBOX, 2, 12)],
        GROUP: [kept(GROUP, 1, 11), kept(GROUP, 2, 13)],
    }
    items = read(device, device.live_ranges(10), store)
    assert [m.message_id for m in items if isinstance(m, KeptMessage)] == [11, 12, 13]
    assert device.queued == {INBOX: 2, GROUP: 2}
    assert not device.dirty


def test_a_read_cut_by_its_limit_takes_a_prefix_of_each_stream_and_reads_again() -> None:
    device = live()
    device.wake(None)
    store = {
        INBOX: [kept(INBOX, p, 10 + 2 * p) for p in range(1, 6)],
        GROUP: [kept(GROUP, p, 11 + 2 * p) for p in range(1, 6)],
    }
    first = read(device, device.live_ranges(3), store)
    assert [m.message_id for m in first if isinstance(m, KeptMessage)] == [12, 13, 14]
    assert device.dirty == {INBOX, GROUP}
    seen = [m.message_id for m in first if isinstance(m, KeptMessage)]
    while device.dirty:
        items = read(device, device.live_ranges(3), store)
        seen += [m.message_id for m in items if isinstance(m, KeptMessage)]
    assert seen == sorted(m.message_id for s in store.values() for m in s)


def test_the_backlog_is_bounded_by_the_heads_and_skips_own_group_messages() -> None:
    device = state({INBOX: 0, GROUP: 0}, {INBOX: 2, GROUP: 3}, kept_count=4)
    store = {
        INBOX: [kept(INBOX, 1, 10), kept(INBOX, 2, 12), kept(INBOX, 3, 20)],
        GROUP: [kept(GROUP, 1, 11), kept(GROUP, 2, 13, sender=ME), kept(GROUP, 3, 14)],
    }
    items = read(device, device.backlog_ranges(10), store)
    messages = [m for m in items if isinstance(m, KeptMessage)]
    assert [m.message_id for m in messages] == [10, 11, 12, 14]  # not 13 (own), not 20 (later)
    assert device.backlog_done()
    assert device.queued == {INBOX: 2, GROUP: 3}


def test_a_backlog_range_ending_in_own_messages_is_passed_with_a_mark() -> None:
    device = state({INBOX: 0, GROUP: 0}, {INBOX: 0, GROUP: 2}, kept_count=1)
    store = {GROUP: [kept(GROUP, 1, 11), kept(GROUP, 2, 12, sender=ME)]}
    items = read(device, device.backlog_ranges(10), store)
    assert items[-1] == Mark(GROUP, 2)
    device.written(Written(Mark(GROUP, i.pos) if isinstance(i, KeptMessage) else i) for i in items)
    assert device.advances() == [Advance(ME, "laptop", GROUP, 2)]


# --- written, acknowledged, stored ---------------------------------------------------------


def test_without_acks_a_written_frame_is_had() -> None:
    device = live()
    device.written([Written(Mark(INBOX, 1)), Written(Mark(GROUP, 4))])
    assert device.advances() == [
        Advance(ME, "laptop", INBOX, 1),
        Advance(ME, "laptop", GROUP, 4),
    ]
    assert device.advances() == []  # told once


def test_with_acks_only_what_was_acknowledged_is_had() -> None:
    device = live(acks=True)
    seqs = [device.next_seq() for _ in range(3)]
    assert seqs == [1, 2, 3]
    device.written(
        [
            Written(Mark(INBOX, 1), 1),
            Written(None, 2),  # a copy of one's own message: a seq, nothing kept
            Written(Mark(INBOX, 2), 3),
        ]
    )
    assert device.advances() == []  # written is not read
    device.ack(1)
    assert device.advances() == [Advance(ME, "laptop", INBOX, 1)]
    device.ack(2)
    assert device.advances() == []
    device.ack(1)  # again, or lower: nothing
    device.ack(3)
    assert device.advances() == [Advance(ME, "laptop", INBOX, 2)]
    assert device.unacked == 0


def test_a_mark_with_acks_is_had_once_what_came_before_it_is_acknowledged() -> None:
    device = live(acks=True)
    device.next_seq()
    device.written([Written(Mark(GROUP, 1), 1), Written(Mark(GROUP, 2))])
    assert device.advances() == []
    device.ack(1)
    assert device.advances() == [Advance(ME, "laptop", GROUP, 2)]


def test_an_ack_above_what_was_written_or_without_acks_is_refused() -> None:
    device = live(acks=True)
    device.next_seq()
    with pytest.raises(AckError, match="above the last seq written"):
        device.ack(1)  # queued, not written yet
    device.written([Written(Mark(INBOX, 1), 1)])
    device.ack(1)
    with pytest.raises(AckError, match="did not ask for acks"):
        live().ack(1)


def test_positions_never_move_back() -> None:
    device = live()
    device.written([Written(Mark(INBOX, 5))])
    device.written([Written(Mark(INBOX, 3))])
    assert device.advances() == [Advance(ME, "laptop", INBOX, 5)]


def test_a_joined_group_is_followed_from_its_position() -> None:
    device = live(positions={INBOX: 0})
    assert device.offer(GROUP, 5, FRIEND) is Offer.DROP
    device.follow(GROUP, 4)
    assert device.offer(GROUP, 5, FRIEND) is Offer.TAKE


def test_a_stream_cut_by_its_share_of_the_page_holds_the_others_back() -> None:
    """Three streams share a page of 60: each reads 20. The inbox is cut at 20 (its last
    id read is 40); the groups' later messages (ids above 40) wait for the next read, or
    one of the inbox's unread messages (ids 41 and on) would come after them."""
    other = GROUP + 1
    device = live(positions={INBOX: 0, GROUP: 0, other: 0})
    device.wake(None)
    store = {
        INBOX: [kept(INBOX, p, 2 * p) for p in range(1, 41)],  # ids 2..80
        GROUP: [kept(GROUP, p, 100 + p) for p in range(1, 3)],  # ids 101, 102
        other: [kept(other, 1, 1)],
    }
    ranges = device.live_ranges(60)
    assert [r.limit for r in ranges] == [20, 20, 20]
    items = read(device, ranges, store, page=60)
    ids = [m.message_id for m in items if isinstance(m, KeptMessage)]
    assert ids == [1, *range(2, 41, 2)]
    assert device.dirty == {INBOX, GROUP}
    seen = list(ids)
    while device.dirty:
        items = read(device, device.live_ranges(60), store, page=60)
        seen += [m.message_id for m in items if isinstance(m, KeptMessage)]
    assert seen == sorted(m.message_id for s in store.values() for m in s)
