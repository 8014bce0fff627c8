"""What a session holds back while logging in or paused (chat/server/held_events.py)."""

from __future__ import annotations

from chat.protocol.messages import FriendAddedEvent, PresenceEvent, UserPresence, UserRef
from chat.server.held_events import MAX_HELD_OTHERS, HeldEvents


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


def test_other_events_are_bounded_and_the_oldest_go() -> None:
    held = HeldEvents()
    for user_id in range(MAX_HELD_OTHERS + 5):
        held.hold(friend_added(user_id))
    held.hold(presence(1, True))
    events = held.take()
    assert events[0] == friend_added(5) and events[-2] == friend_added(MAX_HELD_OTHERS + 4)
    assert events[-1] == presence(1, True)
    assert held.dropped == 5
