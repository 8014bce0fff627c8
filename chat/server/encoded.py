"""Events encoded once per codec and shared by every recipient's connection.

A message to a group of 500 is read from the store by 500 sessions; each would
encode the same event (same id, group, sender, text, time) into the same bytes.
Here the first one encodes it and the others take the bytes. Stored messages
never change, so an entry is never stale; the table keeps the most recently
used ``size`` entries.

A transient event (a friend's presence, to 2,000 friends on this node) is handed
to every recipient as one and the same object, one recipient after the other:
the last one encoded is remembered by identity, per codec.
"""

from __future__ import annotations

from collections import OrderedDict

from chat.protocol import Codec
from chat.protocol.messages import Event, GroupMessageEvent

CACHED_EVENTS = 512
"""Encoded group events kept at most (each at most a few KiB)."""


class EncodedEvents:
    def __init__(self, size: int = CACHED_EVENTS) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, int, bool], bytes] = OrderedDict()
        self.encoded = 0
        """Events encoded so far (the rest came from the table)."""
        self._last: dict[str, tuple[Event, bytes]] = {}
        """Codec name -> the transient event encoded last, and its bytes."""

    def transient(self, codec: Codec, event: Event) -> bytes:
        """The bytes of a pushed event; the same object again costs nothing."""
        last = self._last.get(codec.name)
        if last is not None and last[0] is event:
            return last[1]
        payload = codec.encode_event(event)
        self._last[codec.name] = (event, payload)
        return payload

    def group_message(self, codec: Codec, event: GroupMessageEvent) -> bytes:
        key = (codec.name, event.message_id, event.offline)
        payload = self._entries.get(key)
        if payload is not None:
            self._entries.move_to_end(key)
            return payload
        payload = codec.encode_event(event)
        self.encoded += 1
        self._entries[key] = payload
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return payload
