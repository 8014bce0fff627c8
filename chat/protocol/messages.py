"""The wire messages of protocol v1 as typed values.

Requests are what a client may send; each class names its ``type`` in
``TYPE``. Replies and events are built by the server and turned into JSON by
``chat.protocol.codec``. Field types are ``NewType`` aliases so that the codec
can attach one precise check (and one precise error message) to each kind of
value, instead of trusting whatever JSON delivered.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NewType

import attrs

UserId = NewType("UserId", int)
GroupId = NewType("GroupId", int)
Name = NewType("Name", str)  # users and groups: 1-50 code points, no control characters
Password = NewType("Password", str)  # 1-1024 code points, at registration
Secret = NewType("Secret", str)  # any string: a login attempt is checked, not validated
LookupName = NewType("LookupName", str)  # any string: a name to look up
Text = NewType("Text", str)  # 1-4096 code points
Description = NewType("Description", str)  # 0-200 code points
ClientMessageId = NewType("ClientMessageId", str)  # 1-64 code points

Role = Literal["creator", "normal"]


# --- requests ---------------------------------------------------------------


@attrs.frozen
class Ping:
    TYPE: ClassVar[str] = "ping"


@attrs.frozen
class Register:
    TYPE: ClassVar[str] = "register"
    name: Name
    password: Password


@attrs.frozen
class Login:
    """Log in by ``name`` or by ``id`` (exactly one of them)."""

    TYPE: ClassVar[str] = "login"
    password: Secret
    name: LookupName | None = None
    id: UserId | None = None


@attrs.frozen
class Logout:
    TYPE: ClassVar[str] = "logout"


@attrs.frozen
class FindUser:
    TYPE: ClassVar[str] = "find_user"
    name: LookupName


@attrs.frozen
class AddFriend:
    TYPE: ClassVar[str] = "add_friend"
    user_id: UserId


@attrs.frozen
class Send:
    TYPE: ClassVar[str] = "send"
    to: UserId
    text: Text
    cid: ClientMessageId | None = None


@attrs.frozen
class CreateGroup:
    TYPE: ClassVar[str] = "create_group"
    name: Name
    description: Description = Description("")


@attrs.frozen
class JoinGroup:
    TYPE: ClassVar[str] = "join_group"
    group_id: GroupId


@attrs.frozen
class GroupSend:
    TYPE: ClassVar[str] = "group_send"
    group_id: GroupId
    text: Text
    cid: ClientMessageId | None = None


Request = (
    Ping
    | Register
    | Login
    | Logout
    | FindUser
    | AddFriend
    | Send
    | CreateGroup
    | JoinGroup
    | GroupSend
)

REQUEST_TYPES: dict[str, type[Request]] = {
    cls.TYPE: cls
    for cls in (
        Ping,
        Register,
        Login,
        Logout,
        FindUser,
        AddFriend,
        Send,
        CreateGroup,
        JoinGroup,
        GroupSend,
    )
}

# --- values in replies and events --------------------------------------------


@attrs.frozen
class UserRef:
    id: int
    name: str


@attrs.frozen
class UserPresence:
    id: int
    name: str
    online: bool


@attrs.frozen
class Member:
    id: int
    name: str
    role: Role


@attrs.frozen
class GroupInfo:
    id: int
    name: str
    description: str


@attrs.frozen
class GroupDetail:
    id: int
    name: str
    description: str
    role: Role
    members: list[Member]


# --- replies -----------------------------------------------------------------

Rid = str | int


@attrs.frozen
class Empty:
    """An ``ok`` with no result fields (ping, logout)."""


@attrs.frozen
class UserResult:
    user: UserRef


@attrs.frozen
class LoginResult:
    user: UserRef
    friends: list[UserPresence]
    groups: list[GroupDetail]
    offline: int


@attrs.frozen
class FoundUser:
    user: UserPresence


@attrs.frozen
class FriendResult:
    friend: UserPresence


@attrs.frozen
class Sent:
    message_id: int
    ts: int


@attrs.frozen
class GroupResult:
    group: GroupInfo


@attrs.frozen
class JoinResult:
    group: GroupInfo
    role: Role


Result = (
    Empty | UserResult | LoginResult | FoundUser | FriendResult | Sent | GroupResult | JoinResult
)


@attrs.frozen
class Ok:
    rid: Rid | None
    result: Result


@attrs.frozen
class Error:
    rid: Rid | None
    code: str
    message: str


# --- events ------------------------------------------------------------------


@attrs.frozen
class MessageEvent:
    TYPE: ClassVar[str] = "message"
    message_id: int
    from_: UserRef
    to: int
    text: str
    ts: int
    offline: bool


@attrs.frozen
class GroupMessageEvent:
    TYPE: ClassVar[str] = "group_message"
    message_id: int
    group_id: int
    from_: UserRef
    text: str
    ts: int
    offline: bool


@attrs.frozen
class FriendAddedEvent:
    TYPE: ClassVar[str] = "friend_added"
    friend: UserPresence


Event = MessageEvent | GroupMessageEvent | FriendAddedEvent
DeliveredEvent = MessageEvent | GroupMessageEvent
"""A stored message, as its recipients get it."""
