"""What a session holds back while logging in or paused (chat/server/held_events.py)."""

from __future__ import annotations

from chat.protocol.messages import (
    FriendAddedEvent,
    FriendRemovedEvent,
    PresenceEvent,
    ReadEvent,
    TypingEvent,
    UserPresence,
    UserRef,
)
from chat.server.held_events import HeldEvents


def presence(user_id: int, online: bool) -> PresenceEvent:
    return PresenceEvent(UserRef(user_id, f"u{user_id}"), online)


def friend_added(user_id: int) -> FriendAddedEvent:
    return FriendAddedEvent(UserPresence(user_id, f"u{user_id}", True))


def test_presence_keeps_the_newest_per_friend_however_many_friends() -> None:
    """A long pause over 2,000 friends' comings and goings: one event per friend, the
    newest, placed where that newest came (so it follows what it supersedes)."""
    held = HeldEvents()
    for user_id in range(2000):
        held.hold(presence(user_id, True))
    held.hold(friend_added(5000))
    held.hold(presence(7, False))
    events = held.take()
    assert len(events) == 2001
    assert events[-2:] == [friend_added(5000), presence(7, False)]
    assert presence(7, True) not in events
    assert held.take() == []


def test_friend_events_keep_the_newest_per_friend() -> None:
    """Added then removed: removed is the state, and it goes after the presence event
    it followed; each friend's events are bounded the same way."""
    held = HeldEvents()
    held.hold(friend_added(1))
    held.hold(presence(1, True))
    held.hold(FriendRemovedEvent(UserRef(1, "u1")))
    for user_id in range(2, 500):
        held.hold(friend_added(user_id))
    events = held.take()
    assert events[:2] == [presence(1, True), FriendRemovedEvent(UserRef(1, "u1"))]
    assert len(events) == 2 + 498 and held.dropped == 0


def test_what_is_put_back_goes_first_and_what_is_newer_wins() -> None:
    """A write interrupted by a pause puts the rest back: before what was held since,
    except where something newer about the same friend was held since."""
    held = HeldEvents()
    held.hold(presence(2, True))
    held.put_back([presence(1, True), presence(2, False), friend_added(3)])
    assert held.take() == [presence(1, True), friend_added(3), presence(2, True)]


def test_typing_and_read_events_keep_the_newest_per_friend_and_conversation() -> None:
    """A friend typing through a long pause, markers moving: one of each is left (a
    marker only moves forward, so the newest is the highest)."""
    held = HeldEvents()
    for n in range(300):
        held.hold(TypingEvent(UserRef(1, "u1"), n % 2 == 0))
        held.hold(ReadEvent(n + 1, with_=2))
        held.hold(ReadEvent(n + 1, group_id=2))
        held.hold(ReadEvent(n + 1, by=UserRef(2, "u2")))
    assert held.take() == [
        TypingEvent(UserRef(1, "u1"), False),
        ReadEvent(300, with_=2),
        ReadEvent(300, group_id=2),
        ReadEvent(300, by=UserRef(2, "u2")),
    ]
    assert held.dropped == 0
