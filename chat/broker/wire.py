"""Notices between nodes on the wire: one JSON object per message of a node's channel.

::

    {"wake": [user ids],
     "groups": [group ids],
     "push": [[user id, "event JSON"], [user id, "event JSON", "holder to skip"], ...],
     "presence": [[version, "event JSON", [user ids]], ...]}

    {"resync": true}

Every part is optional, but a message has at least one. ``route`` sends each node
everything one call has for it in one message, and the receiver reads the parts in
the order written (the order above), so a node gets the notices of one call
together and in order, as the routing node's own handler does. Events travel as the
client protocol's JSON (decoded again on arrival into typed values). A push's third
item, the holder of the one connection that must not get it, is left out when there
is none. A message with anything this node does not know (a key, a malformed part)
is dropped whole, with a warning; only an event it cannot read costs that event
alone, never the notices beside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from chat.protocol.codec import BadServerMessage, decode_server_event, encode_event
from chat.protocol.messages import Event, PresenceEvent

from .base import GroupWake, Notice, PresencePush, Push, Resync, Wake

log = logging.getLogger(__name__)

RESYNC = b'{"resync":true}'
"""What a node publishes on the broadcast channel when every node should re-read the
store and renew its leases at once."""


def encode_notices(
    wake: Sequence[int] = (),
    push: Sequence[Push] = (),
    presence: Sequence[PresencePush] = (),
    groups: Sequence[int] = (),
) -> bytes:
    """One message of a node's channel, with the parts in the order they are read."""
    body: dict[str, Any] = {}
    if wake:
        body["wake"] = list(wake)
    if groups:
        body["groups"] = list(groups)
    if push:
        body["push"] = [_push_item(item) for item in push]
    if presence:
        body["presence"] = [
            [item.version, encode_event(item.event).decode(), list(item.user_ids)]
            for item in presence
        ]
    return json.dumps(body, separators=(",", ":")).encode()


def in_order(
    wake: Sequence[int] = (),
    push: Sequence[Push] = (),
    presence: Sequence[PresencePush] = (),
    groups: Sequence[int] = (),
) -> list[Notice]:
    """The notices of one message, in the order a receiver gets them: what a node hands
    its own handler in place of sending itself a message."""
    notices: list[Notice] = []
    if wake:
        notices.append(Wake(tuple(wake)))
    if groups:
        notices.append(GroupWake(tuple(groups)))
    notices.extend(push)
    notices.extend(presence)
    return notices


def decode_notices(data: bytes) -> list[Notice]:
    """Parse a message of a node's channel; nothing (and a warning) for anything
    malformed, never an exception."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeError):
        body = None
    notices = _notices_in(body) if isinstance(body, dict) else None
    if not notices:
        log.warning("ignoring a malformed notice: %r", data[:200])
        return []
    return notices


def _push_item(item: Push) -> list[Any]:
    encoded: list[Any] = [item.user_id, encode_event(item.event).decode()]
    if item.skip:
        encoded.append(item.skip)
    return encoded


def _notices_in(body: dict[str, Any]) -> list[Notice] | None:
    """The notices of a decoded message; None if any part of it is malformed."""
    notices: list[Notice] = []
    for key, value in body.items():
        if key in ("wake", "groups"):
            if not (isinstance(value, list) and value and all(_is_id(u) for u in value)):
                return None
            notices.append(Wake(tuple(value)) if key == "wake" else GroupWake(tuple(value)))
        elif key == "push":
            if not isinstance(value, list):
                return None
            for item in value:
                push = _push_in(item)
                if push is None:
                    return None
                if isinstance(push, Push):
                    notices.append(push)
        elif key == "resync" and value is True:
            notices.append(Resync())
        elif key == "presence":
            if not isinstance(value, list):
                return None
            for item in value:
                presence = _presence_in(item)
                if presence is None:
                    return None
                if isinstance(presence, PresencePush):
                    notices.append(presence)
        else:
            return None
    return notices


def _push_in(item: object) -> Push | bool | None:
    """One ``[user id, "event"]`` or ``[user id, "event", "skip"]``: None if malformed,
    False if its event is not one this node can read (it costs that event only)."""
    if not (
        isinstance(item, list)
        and len(item) in (2, 3)
        and _is_id(item[0])
        and all(isinstance(text, str) for text in item[1:])
    ):
        return None
    event = _event_of(item[1])
    if event is None:
        # One event this node cannot read (say, a newer node's) costs that event
        # only, never the wake-ups beside it.
        log.warning("ignoring an event it cannot read: %r", item[1][:200])
        return False
    return Push(item[0], event, item[2] if len(item) == 3 else "")


def _presence_in(item: object) -> PresencePush | bool | None:
    """One ``[version, "event", [ids]]``: None if malformed, False if its event is not
    a presence event this node can read (it costs that item only)."""
    if not (
        isinstance(item, list)
        and len(item) == 3
        and _is_id(item[0])
        and isinstance(item[1], str)
        and isinstance(item[2], list)
        and item[2]
        and all(_is_id(u) for u in item[2])
    ):
        return None
    event = _event_of(item[1])
    if not isinstance(event, PresenceEvent):
        log.warning("ignoring a presence event it cannot read: %r", item[1][:200])
        return False
    return PresencePush(tuple(item[2]), event, item[0])


def _event_of(text: str) -> Event | None:
    """The typed event in a pushed event's JSON; None if it is not one we know."""
    try:
        message = json.loads(text)
        return decode_server_event(message) if isinstance(message, dict) else None
    except (ValueError, BadServerMessage):
        return None


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
