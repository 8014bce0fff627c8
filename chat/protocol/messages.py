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
ListLimit = NewType("ListLimit", int)  # 1-500: friends, blocked users, group members
GroupListLimit = NewType("GroupListLimit", int)  # 1-200: groups
Position = NewType("Position", int)  # a place among message ids: 0 or any positive integer
HistoryLimit = NewType("HistoryLimit", int)  # 1-200
Token = NewType("Token", str)  # any string: a login attempt is checked, not validated
Flag = NewType("Flag", bool)  # a JSON boolean, never a number or a string
DeviceName = NewType("DeviceName", str)  # 1-64 code points, no control characters (login)
DeviceRef = NewType("DeviceRef", str)  # 0-64 code points, no control characters ("" too)
AckSeq = NewType("AckSeq", int)  # a positive integer that fits in 64 bits
FriendRequestsSetting = NewType("FriendRequestsSetting", str)  # "anyone" or "approve"

FRIEND_REQUESTS_ANYONE = "anyone"
FRIEND_REQUESTS_APPROVE = "approve"
FRIEND_REQUESTS_SETTINGS = (FRIEND_REQUESTS_ANYONE, FRIEND_REQUESTS_APPROVE)
MessageId = NewType("MessageId", int)  # a positive integer
ConversationLimit = NewType("ConversationLimit", int)  # 1-100

HISTORY_LIMIT_DEFAULT = 50
HISTORY_LIMIT_MAX = 200
CONVERSATIONS_LIMIT_DEFAULT = 50
CONVERSATIONS_LIMIT_MAX = 100

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
    """Log in by ``name`` or by ``id`` (exactly one of them) with ``password``, or by
    ``token`` alone (protocol 1.1); the codec checks which combination was sent.
    ``device`` names the client's device (protocol 1.2; None: the device ``""``), and
    ``acks`` asks for acknowledged delivery."""

    TYPE: ClassVar[str] = "login"
    password: Secret | None = None
    name: LookupName | None = None
    id: UserId | None = None
    token: Token | None = None
    device: DeviceName | None = None
    acks: Flag = Flag(False)


@attrs.frozen
class Logout:
    """``forget``: also revoke the token this connection's login used or received;
    ``everywhere`` (1.2): log out every other device of the user and revoke every token."""

    TYPE: ClassVar[str] = "logout"
    forget: Flag = Flag(False)
    everywhere: Flag = Flag(False)


@attrs.frozen
class Ack:
    """Every event of this connection with ``seq`` up to this one was received (1.2)."""

    TYPE: ClassVar[str] = "ack"
    seq: AckSeq


@attrs.frozen
class ListDevices:
    """``devices``: the user's known devices (1.2)."""

    TYPE: ClassVar[str] = "devices"


@attrs.frozen
class ForgetDevice:
    TYPE: ClassVar[str] = "forget_device"
    device: DeviceRef


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


# --- requests of version 1.1: contacts ----------------------------------------------


@attrs.frozen
class RemoveFriend:
    TYPE: ClassVar[str] = "remove_friend"
    user_id: UserId


@attrs.frozen
class Block:
    TYPE: ClassVar[str] = "block"
    user_id: UserId


@attrs.frozen
class Unblock:
    TYPE: ClassVar[str] = "unblock"
    user_id: UserId


@attrs.frozen
class ListBlocked:
    """``blocked``: the users this user has blocked, a page at a time."""

    TYPE: ClassVar[str] = "blocked"
    after: UserId | None = None
    limit: ListLimit = ListLimit(500)


@attrs.frozen
class ListFriends:
    TYPE: ClassVar[str] = "friends"
    after: UserId | None = None
    limit: ListLimit = ListLimit(500)


@attrs.frozen
class ListGroups:
    TYPE: ClassVar[str] = "groups"
    after: GroupId | None = None
    limit: GroupListLimit = GroupListLimit(200)


@attrs.frozen
class ListMembers:
    TYPE: ClassVar[str] = "group_members"
    group_id: GroupId
    after: UserId | None = None
    limit: ListLimit = ListLimit(500)


@attrs.frozen
class ChangeSettings:
    """``settings``: read the user's settings, changing those sent (protocol 1.2)."""

    TYPE: ClassVar[str] = "settings"
    friend_requests: FriendRequestsSetting | None = None


@attrs.frozen
class ListFriendRequests:
    """``friend_requests``: the users waiting for this user's answer, a page at a time."""

    TYPE: ClassVar[str] = "friend_requests"
    after: UserId | None = None
    limit: ListLimit = ListLimit(500)


@attrs.frozen
class AcceptFriend:
    TYPE: ClassVar[str] = "accept_friend"
    user_id: UserId


@attrs.frozen
class DeclineFriend:
    TYPE: ClassVar[str] = "decline_friend"
    user_id: UserId


FRIEND_REQUEST_REQUESTS = (ChangeSettings, ListFriendRequests, AcceptFriend, DeclineFriend)

CONTACT_REQUESTS = (
    RemoveFriend,
    Block,
    Unblock,
    ListBlocked,
    ListFriends,
    ListGroups,
    ListMembers,
)


@attrs.frozen
class History:
    """A page of one conversation: ``with_`` (wire name ``with``) a user, or a group;
    ``before`` or ``after`` are positions (exclusive), not lookups: ``after: 0`` pages
    from the very first message, since every id is above it."""

    TYPE: ClassVar[str] = "history"
    with_: UserId | None = None
    group_id: GroupId | None = None
    before: Position | None = None
    after: Position | None = None
    limit: HistoryLimit = HistoryLimit(HISTORY_LIMIT_DEFAULT)


@attrs.frozen
class ListConversations:
    """``conversations`` (1.2): the user's conversations, newest activity first;
    ``before`` a message id (exclusive) to page to older activity."""

    TYPE: ClassVar[str] = "conversations"
    before: Position | None = None
    limit: ConversationLimit = ConversationLimit(CONVERSATIONS_LIMIT_DEFAULT)


@attrs.frozen
class MarkRead:
    """``read`` (1.2): move the user's read marker in a conversation (``with_``, wire
    name ``with``, a user; or ``group_id``) up to ``message_id``."""

    TYPE: ClassVar[str] = "read"
    message_id: MessageId
    with_: UserId | None = None
    group_id: GroupId | None = None


@attrs.frozen
class Typing:
    """``typing`` (1.2): tell a friend this user is (or stopped) typing; never kept."""

    TYPE: ClassVar[str] = "typing"
    with_: UserId
    active: Flag


CONVERSATION_REQUESTS = (ListConversations, MarkRead, Typing)


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
    | RemoveFriend
    | Block
    | Unblock
    | ListBlocked
    | ListFriends
    | ListGroups
    | ListMembers
    | History
    | Ack
    | ListDevices
    | ForgetDevice
    | ChangeSettings
    | ListFriendRequests
    | AcceptFriend
    | DeclineFriend
    | ListConversations
    | MarkRead
    | Typing
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
        *CONTACT_REQUESTS,
        History,
        Ack,
        ListDevices,
        ForgetDevice,
        *FRIEND_REQUEST_REQUESTS,
        *CONVERSATION_REQUESTS,
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
    """A group in the ``login`` result. ``members_more`` and ``member_count`` are set
    (and sent) only when the reply had to leave members out."""

    id: int
    name: str
    description: str
    role: Role
    members: list[Member]
    members_more: bool | None = None
    member_count: int | None = None


@attrs.frozen
class GroupSummary:
    """A group in a ``groups`` page."""

    id: int
    name: str
    description: str
    role: Role
    member_count: int


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
    """``friends_more`` and ``groups_more`` are set (and sent) only when the reply had
    to leave some out to stay within the frame limit (``chat.protocol.login_cut``)."""

    user: UserRef
    friends: list[UserPresence]
    groups: list[GroupDetail]
    offline: int
    friends_more: bool | None = None
    groups_more: bool | None = None
    token: str | None = None
    """The session token (protocol 1.1); set by the login handler after the cut, for
    which ``chat.server.handlers.login_view`` keeps room."""
    device: str | None = None
    """The device name (protocol 1.2; ``""`` included), set by the login handler."""


@attrs.frozen
class FoundUser:
    user: UserPresence


@attrs.frozen
class FriendResult:
    friend: UserPresence


@attrs.frozen
class PendingFriend:
    """``add_friend`` towards a user who approves requests (protocol 1.2): asked, not
    yet friends; ``friend.online`` is always false."""

    friend: UserPresence
    pending: bool = True


@attrs.frozen
class SettingsValues:
    friend_requests: str


@attrs.frozen
class SettingsResult:
    settings: SettingsValues


@attrs.frozen
class FriendRequestsPage:
    requests: list[UserRef]
    more: bool


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


@attrs.frozen
class FriendsPage:
    friends: list[UserPresence]
    more: bool


@attrs.frozen
class GroupsPage:
    groups: list[GroupSummary]
    more: bool


@attrs.frozen
class MembersPage:
    members: list[Member]
    more: bool


@attrs.frozen
class BlockedPage:
    users: list[UserRef]
    more: bool


@attrs.frozen
class HistoryDirect:
    """A one-to-one message in a ``history`` page: the ``message`` event without ``offline``."""

    message_id: int
    from_: UserRef
    to: int
    text: str
    ts: int


@attrs.frozen
class HistoryGroup:
    """A group message in a ``history`` page: the ``group_message`` event without ``offline``."""

    message_id: int
    group_id: int
    from_: UserRef
    text: str
    ts: int


HistoryItem = HistoryDirect | HistoryGroup


@attrs.frozen
class HistoryResult:
    messages: list[HistoryItem]
    more: bool


@attrs.frozen
class ConversationItem:
    """One conversation in a ``conversations`` page: ``with_`` (wire name ``with``)
    the other user, or ``group``; its newest message as ``history`` shows it; the
    user's marker ``read`` and the messages from others above it (at most 999)."""

    last: HistoryItem
    unread: int
    read: int
    with_: UserRef | None = None
    group: UserRef | None = None
    """The group's id and name."""
    peer_read: int | None = None
    """Extension: in a one-to-one conversation with another user, that user's read
    marker (what its read receipts said; left out when either blocked the other)."""


@attrs.frozen
class ConversationsPage:
    conversations: list[ConversationItem]
    more: bool


@attrs.frozen
class DeviceInfo:
    device: str
    online: bool
    last_seen: int


@attrs.frozen
class DevicesResult:
    devices: list[DeviceInfo]


Result = (
    Empty
    | UserResult
    | LoginResult
    | FoundUser
    | FriendResult
    | Sent
    | GroupResult
    | JoinResult
    | FriendsPage
    | GroupsPage
    | MembersPage
    | BlockedPage
    | HistoryResult
    | DevicesResult
    | PendingFriend
    | SettingsResult
    | FriendRequestsPage
    | ConversationsPage
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
    retry_after_ms: int | None = None
    """Sent with ``rate_limited`` only."""


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


@attrs.frozen
class FriendRemovedEvent:
    TYPE: ClassVar[str] = "friend_removed"
    friend: UserRef


@attrs.frozen
class PresenceEvent:
    """A friend's ``online`` changed (protocol 1.1). Never kept: the friend list at
    login shows presence."""

    TYPE: ClassVar[str] = "presence"
    user: UserRef
    online: bool


@attrs.frozen
class LoggedOutEvent:
    """This device was logged out by another (``logout`` with ``everywhere``), just
    before its connection is closed (protocol 1.2)."""

    TYPE: ClassVar[str] = "logged_out"
    reason: str


@attrs.frozen
class GroupJoinedEvent:
    """The user joined or created a group on another of its devices (an extension:
    other devices learn of it without asking; they get its messages from then on)."""

    TYPE: ClassVar[str] = "group_joined"
    group: GroupInfo
    role: Role


@attrs.frozen
class FriendRequestEvent:
    """``from_`` (wire name ``from``) asks this user to be friends (protocol 1.2); never
    kept: ``friend_requests`` lists the waiting ones."""

    TYPE: ClassVar[str] = "friend_request"
    from_: UserRef


@attrs.frozen
class ReadEvent:
    """A read marker moved (1.2). To the user's other devices: ``with_`` (wire name
    ``with``) or ``group_id`` says which conversation; to the other user of a
    one-to-one conversation (a read receipt): ``by`` read it up to ``message_id``.
    Exactly one of the three is set; the others are not sent."""

    TYPE: ClassVar[str] = "read"
    message_id: int
    with_: int | None = None
    group_id: int | None = None
    by: UserRef | None = None


@attrs.frozen
class TypingEvent:
    """A friend is typing to this user, or stopped (1.2); never kept."""

    TYPE: ClassVar[str] = "typing"
    from_: UserRef
    active: bool


Event = (
    MessageEvent
    | GroupMessageEvent
    | FriendAddedEvent
    | FriendRemovedEvent
    | PresenceEvent
    | LoggedOutEvent
    | GroupJoinedEvent
    | FriendRequestEvent
    | ReadEvent
    | TypingEvent
)
DeliveredEvent = MessageEvent | GroupMessageEvent
"""A stored message, as its recipients get it."""
