"""The original system's wire protocol ("legacy"): numbered JSON messages, as a codec.

The C++ server this project replaces has clients of its own (its terminal
``ChatClient`` and programs written against the same messages). This module lets
them talk to us unchanged: ``LegacySplitter`` finds their request objects in a
byte stream (ended by NUL, by ``\\n`` or by nothing at all), and ``LegacyCodec``
maps each ``msgid`` onto our typed requests and our replies and events back onto
the shapes those clients parse. Everything else (sessions, store, presence,
routing, exactly-once delivery) is the same as for protocol v1.

What the original got wrong stays out: the acting user is always the
connection's logged-in user, whatever ``id`` or ``name`` a request claims (a
mismatch is logged); bad input is logged and skipped, never fatal; the legacy
protocol has no error replies, so a refused request is logged and nothing is
written, except for login (msgid 2) and register (msgid 5), which have acks.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from .codec import DecodedRequest, ProtocolError, dumps, parse_object, request_from_object
from .errors import ErrorCode
from .framing import MAX_LINE_BYTES, FrameTooLarge
from .messages import (
    DeliveredEvent,
    Empty,
    Error,
    Event,
    GroupMessageEvent,
    LoginResult,
    MessageEvent,
    Ok,
    UserResult,
)

log = logging.getLogger(__name__)

LOGIN = 1
LOGIN_ACK = 2
LOGOUT = 3
REGISTER = 4
REGISTER_ACK = 5
CHAT = 6
ADD_FRIEND = 7
CREATE_GROUP = 8
JOIN_GROUP = 9
GROUP_CHAT = 10

LOGIN_ACK_BYTES = 1_000
"""The login ack carries kept messages only while it stays under this size: the
original client reads one 1,024-byte buffer and parses it as one document."""

BAD_LOGIN = "id or password is invalid!"
ACCOUNT_IN_USE = "this account is using, input another!"

_REQUESTS: dict[int, tuple[str, dict[str, str]]] = {
    LOGIN: ("login", {"id": "id", "password": "password"}),
    LOGOUT: ("logout", {}),
    REGISTER: ("register", {"name": "name", "password": "password"}),
    CHAT: ("send", {"toid": "to", "msg": "text"}),
    ADD_FRIEND: ("add_friend", {"friendid": "user_id"}),
    CREATE_GROUP: ("create_group", {"groupname": "name", "groupdesc": "description"}),
    JOIN_GROUP: ("join_group", {"groupid": "group_id"}),
    GROUP_CHAT: ("group_send", {"groupid": "group_id", "msg": "text"}),
}
"""msgid -> our request type, and its legacy field names -> ours. Fields not listed
(``id`` and ``name`` of the sender, ``time``) are claims the server does not trust."""

_ONLINE_ELSEWHERE = frozenset({ErrorCode.ALREADY_ONLINE.value, ErrorCode.ALREADY_LOGGED_IN.value})
_BAD_INPUT = frozenset(
    {
        ErrorCode.BAD_JSON.value,
        ErrorCode.INVALID_REQUEST.value,
        ErrorCode.UNKNOWN_TYPE.value,
        ErrorCode.FRAME_TOO_LARGE.value,
        ErrorCode.BAD_FRAME.value,
    }
)


def legacy_time(ts_ms: int) -> str:
    """A stored ``ts`` (ms since the epoch) as the original's ``time``: the server's
    local time, ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_ms / 1000))


def event_object(event: DeliveredEvent) -> dict[str, Any]:
    """A stored message as the msgid 6 or 10 object its recipients get."""
    if isinstance(event, GroupMessageEvent):
        return {
            "msgid": GROUP_CHAT,
            "id": event.from_.id,
            "name": event.from_.name,
            "groupid": event.group_id,
            "msg": event.text,
            "time": legacy_time(event.ts),
        }
    return {
        "msgid": CHAT,
        "id": event.from_.id,
        "name": event.from_.name,
        "toid": event.to,
        "msg": event.text,
        "time": legacy_time(event.ts),
    }


def _state(online: bool) -> str:
    return "online" if online else "offline"


def _login_ack(result: LoginResult) -> dict[str, Any]:
    """The msgid 2 ack without kept messages: ``friends`` and ``groups`` (only when not
    empty) are lists of strings holding JSON text, as the original's clients expect.

    A group member's ``state`` is known for the user and their friends; other members
    show ``offline`` (our login reply carries presence for friends only)."""
    ack: dict[str, Any] = {
        "msgid": LOGIN_ACK,
        "errno": 0,
        "id": result.user.id,
        "name": result.user.name,
    }
    online = {friend.id for friend in result.friends if friend.online}
    online.add(result.user.id)
    if result.friends:
        ack["friends"] = [
            dumps({"id": f.id, "name": f.name, "state": _state(f.online)}).decode()
            for f in result.friends
        ]
    if result.groups:
        ack["groups"] = [
            dumps(
                {
                    "id": group.id,
                    "groupname": group.name,
                    "groupdesc": group.description,
                    "users": [
                        dumps(
                            {
                                "id": member.id,
                                "name": member.name,
                                "state": _state(member.id in online),
                                "role": member.role,
                            }
                        ).decode()
                        for member in group.members
                    ],
                }
            ).decode()
            for group in result.groups
        ]
    return ack


class LegacyCodec:
    """The original's messages, for one connection (it remembers who logged in on it,
    to log requests that claim to be someone else). ``rid`` of a decoded request is
    its ``msgid``, so a reply knows which ack, if any, it becomes."""

    name = "legacy"

    def __init__(self, peer: str = "") -> None:
        self.peer = peer
        """For logs."""
        self.user_id: int | None = None
        self.user_name: str | None = None

    @property
    def login_carries_kept(self) -> bool:
        return True

    # --- requests -------------------------------------------------------------

    def decode_request(self, frame: bytes | str) -> DecodedRequest:
        obj = parse_object(frame)
        msgid = obj.get("msgid")
        if "msgid" not in obj:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "msgid: required field missing")
        if not isinstance(msgid, int) or isinstance(msgid, bool):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "msgid: must be an integer")
        known = _REQUESTS.get(msgid)
        if known is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown msgid {msgid}")
        kind, renames = known
        if msgid != LOGIN:
            self._check_claims(msgid, obj)
        fields: dict[str, Any] = {"type": kind}
        for theirs, ours in renames.items():
            if theirs in obj:
                fields[ours] = obj[theirs]
        try:
            decoded = request_from_object(fields)
        except ProtocolError as exc:
            message = exc.message
            for theirs, ours in renames.items():
                message = re.sub(rf"\b{ours}:", f"{theirs}:", message)
            raise ProtocolError(exc.code, f"msgid {msgid}: {message}") from None
        return DecodedRequest(decoded.request, msgid)

    def _check_claims(self, msgid: int, obj: dict[str, Any]) -> None:
        """The sender a request names is never trusted; a mismatch is worth a log line
        (a buggy client, or one trying to act as someone else)."""
        if self.user_id is None:
            return
        claimed_id = obj.get("id", self.user_id)
        claimed_name = obj.get("name", self.user_name) if msgid in (CHAT, GROUP_CHAT) else None
        if claimed_id != self.user_id or (
            claimed_name is not None and claimed_name != self.user_name
        ):
            log.warning(
                "legacy %s: msgid %d claims id %.40r name %.60r; acting as user %d",
                self.peer,
                msgid,
                claimed_id,
                claimed_name,
                self.user_id,
            )

    # --- replies --------------------------------------------------------------

    def encode_reply(self, reply: Ok | Error) -> bytes:
        if isinstance(reply, Error):
            return self._encode_error(reply)
        result = reply.result
        if isinstance(result, LoginResult):
            return self.encode_login(reply, ())[0]
        if isinstance(result, UserResult) and reply.rid == REGISTER:
            return dumps({"msgid": REGISTER_ACK, "errno": 0, "id": result.user.id})
        if isinstance(result, Empty) and reply.rid == LOGOUT:
            self.user_id = self.user_name = None
        return b""  # the legacy protocol acknowledges nothing else

    def _encode_error(self, reply: Error) -> bytes:
        bad_input = reply.code in _BAD_INPUT
        (log.warning if bad_input else log.info)(
            "legacy %s: %s %s: %s",
            self.peer,
            "skipped bad input" if bad_input else f"msgid {reply.rid} refused,",
            reply.code,
            reply.message,
        )
        if reply.rid == LOGIN:
            if reply.code in _ONLINE_ELSEWHERE:
                return dumps({"msgid": LOGIN_ACK, "errno": 2, "errmsg": ACCOUNT_IN_USE})
            message = BAD_LOGIN if reply.code == ErrorCode.BAD_CREDENTIALS.value else reply.message
            return dumps({"msgid": LOGIN_ACK, "errno": 1, "errmsg": message})
        if reply.rid == REGISTER:
            return dumps({"msgid": REGISTER_ACK, "errno": 1})
        return b""

    def encode_login(self, reply: Ok, kept: Sequence[DeliveredEvent]) -> tuple[bytes, int]:
        """The ack with as many of ``kept`` in ``offlinemsg`` as keep it under
        ``LOGIN_ACK_BYTES`` (none if the friends and groups alone reach it)."""
        result = reply.result
        assert isinstance(result, LoginResult)
        self.user_id, self.user_name = result.user.id, result.user.name
        ack = _login_ack(result)
        payload = dumps(ack)
        carried: list[str] = []
        for event in kept:
            carried.append(dumps(event_object(event)).decode())
            candidate = dumps({**ack, "offlinemsg": carried})
            if len(candidate) >= LOGIN_ACK_BYTES:
                carried.pop()
                break
            payload = candidate
        return payload, len(carried)

    # --- events ---------------------------------------------------------------

    def encode_event(self, event: Event) -> bytes:
        if isinstance(event, MessageEvent | GroupMessageEvent):
            return dumps(event_object(event))
        return b""  # no presence or friend notices in the legacy protocol


class LegacySplitter:
    """Request objects out of a byte stream, with no I/O.

    An object ends at its closing brace, so requests ended by NUL, by ``\\n`` (or
    ``\\r\\n``) or by nothing at all are all found, several per read or one split
    across reads. A raw NUL or newline cannot occur inside a compact JSON object,
    so each is a hard boundary too: a broken object (an unclosed string or brace)
    ends there and is handed on as a frame (the codec logs it), and the objects
    after it are read as usual. Text outside objects is handed on the same way.
    At most ``max_object`` bytes of one unfinished frame are ever held."""

    _STRUCTURE = re.compile(rb'[{}"\\\x00\n]')

    def __init__(self, max_object: int = MAX_LINE_BYTES) -> None:
        self._max = max_object
        self._pending = b""
        self._scanned = 0
        """How much of ``_pending`` the state below describes."""
        self._depth = 0
        self._in_string = False
        self._escaped_at = -1
        """Position (in ``_pending``) of a character escaped by a backslash."""

    @property
    def room(self) -> int:
        """Bytes that may be read next without holding more than the limit (plus one)."""
        return max(1, self._max + 1 - len(self._pending))

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._pending + data if self._pending else bytes(data)
        frames: list[bytes] = []
        start = 0
        depth, in_string, escaped_at = self._depth, self._in_string, self._escaped_at
        for match in self._STRUCTURE.finditer(buf, self._scanned):
            at = match.start()
            char = buf[at]
            if char in (0, 10):  # NUL or newline: a hard boundary
                self._emit(frames, buf[start:at])
                start = at + 1
                depth, in_string, escaped_at = 0, False, -1
            elif in_string:
                if at == escaped_at:
                    continue
                if char == 92:  # backslash
                    escaped_at = at + 1
                elif char == 34:  # quote
                    in_string = False
            elif char == 34:
                in_string = True
            elif char == 123:  # {
                if depth == 0:
                    self._emit(frames, buf[start:at])  # text before an object
                    start = at
                depth += 1
            elif depth > 0:  # }
                depth -= 1
                if depth == 0:
                    self._emit(frames, buf[start : at + 1])
                    start = at + 1
        self._pending = buf[start:]
        self._scanned = len(self._pending)
        self._depth, self._in_string = depth, in_string
        self._escaped_at = escaped_at - start if escaped_at >= start else -1
        if len(self._pending) > self._max:
            raise FrameTooLarge(f"an object is longer than {self._max} bytes")
        return frames

    def _emit(self, frames: list[bytes], frame: bytes) -> None:
        if len(frame) > self._max:
            raise FrameTooLarge(f"an object is longer than {self._max} bytes")
        if frame.strip(b" \t\r"):
            frames.append(frame)
