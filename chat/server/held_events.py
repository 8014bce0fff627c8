"""Transient events a session holds back for a while, and then queues, in order.

A session holds events while a login's kept messages are being queued (they must
come first), while the node is paused (its presence lease is in doubt), and while
it is writing what it held (so nothing newer overtakes it). An event says a
friend's current state, so only the newest one about each friend and kind is worth
keeping: a presence event replaces the held presence event about the same user,
a ``friend_added`` or ``friend_removed`` the held one about the same friend, a
``typing`` the held one from the same friend, a ``read`` the held one about the same
conversation (or, a receipt, by the same user). So
holding costs about one event per friend however long the wait, and the newest
state is never the one let go. (The router hands presence events out in version
order, so the last one held is the newest.) Each replacement goes last, after
whatever it followed. Any other kind is kept as it comes, up to
``MAX_HELD_OTHERS``; beyond that the oldest of them go.
"""

from __future__ import annotations

import itertools
from collections import deque

from chat.protocol.messages import (
    Event,
    FriendAddedEvent,
    FriendRemovedEvent,
    PresenceEvent,
    ReadEvent,
    TypingEvent,
)

MAX_HELD_OTHERS = 100
"""Events of other kinds held at once, per session."""


class HeldEvents:
    def __init__(self) -> None:
        self._events: dict[tuple[str, int], Event] = {}
        """In the order to be queued (a dict keeps insertion order)."""
        self._others: deque[tuple[str, int]] = deque()
        self._serial = itertools.count()
        self.dropped = 0
        """Events let go because too many of other kinds were held (for logs)."""

    def hold(self, event: Event) -> None:
        if isinstance(event, PresenceEvent):
            key = ("presence", event.user.id)
        elif isinstance(event, FriendAddedEvent | FriendRemovedEvent):
            key = ("friend", event.friend.id)  # added then removed: removed is the state
        elif isinstance(event, TypingEvent):
            key = ("typing", event.from_.id)
        elif isinstance(event, ReadEvent):
            key = _read_key(event)  # markers only move forward: the newest is the highest
        else:
            key = ("other", next(self._serial))
            self._others.append(key)
            if len(self._others) > MAX_HELD_OTHERS:
                del self._events[self._others.popleft()]
                self.dropped += 1
        self._events.pop(key, None)  # superseded: the newest goes last
        self._events[key] = event

    def put_back(self, events: list[Event]) -> None:
        """Hold ``events`` (taken earlier, not written) again, before what was held
        since; where something newer about the same friend was held since, it wins."""
        newer, self._events = self._events, {}
        others, self._others = self._others, deque()
        for event in events:
            self.hold(event)
        for key, event in newer.items():
            self._events.pop(key, None)
            self._events[key] = event
        self._others.extend(others)

    def take(self) -> list[Event]:
        """Everything held, in order; holds nothing afterwards."""
        events = list(self._events.values())
        self._events.clear()
        self._others.clear()
        return events

    def __len__(self) -> int:
        return len(self._events)


def _read_key(event: ReadEvent) -> tuple[str, int]:
    if event.by is not None:
        return ("read_by", event.by.id)
    if event.group_id is not None:
        return ("read_group", event.group_id)
    return ("read_with", event.with_ or 0)
