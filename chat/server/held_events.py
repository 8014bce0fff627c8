"""Transient events a session holds back for a while, and then queues, in order.

A session holds events while a login's kept messages are being queued (they must
come first) and while the node is paused (its presence lease is in doubt). A
presence event says a friend's current state, so only the newest one about each
friend is worth keeping: holding presence costs one event per friend however
long the wait (the router hands them out in version order, so the last one held
is the newest). Other transient events (``friend_added``) are each kept, up to
``MAX_HELD_OTHERS``; beyond that the oldest go (the friend list of the next login
shows what they said).
"""

from __future__ import annotations

import itertools

from chat.protocol.messages import Event, PresenceEvent

MAX_HELD_OTHERS = 100
"""Transient events other than presence held at once, per session."""


class HeldEvents:
    def __init__(self) -> None:
        self._events: dict[tuple[str, int], Event] = {}
        """In the order to be queued (a dict keeps insertion order)."""
        self._others = 0
        self._serial = itertools.count()
        self.dropped = 0
        """Events let go because too many were held (for logs)."""

    def hold(self, event: Event) -> None:
        if isinstance(event, PresenceEvent):
            key = ("presence", event.user.id)
            self._events.pop(key, None)  # superseded: the newest goes last
        else:
            key = ("event", next(self._serial))
            if self._others >= MAX_HELD_OTHERS:
                oldest = next(k for k in self._events if k[0] == "event")
                del self._events[oldest]
                self.dropped += 1
            else:
                self._others += 1
        self._events[key] = event

    def take(self) -> list[Event]:
        """Everything held, in order; holds nothing afterwards."""
        events = list(self._events.values())
        self._events.clear()
        self._others = 0
        return events

    def __len__(self) -> int:
        return len(self._events)
