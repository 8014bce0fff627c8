"""Every frame the server sends fits the 65,536-byte limit (protocol 1.1).

For each kind of reply and event, the largest one the server can build: the
longest values in the costliest characters (4 bytes of UTF-8 in a name; 6 bytes,
a JSON escape, per control character in a message text), the largest ids, the
longest ``rid``, and for lists as many items as a request may ask for, put
through the same cutting the server does. A reply or event type added to the
protocol without a case here fails ``test_every_kind_is_covered``, so nobody
adds an unbounded one by accident."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import pytest

from chat.protocol import MAX_LINE_BYTES, encode_event, encode_reply
from chat.protocol.bounded import generic_json_size, json_size, page_fit
from chat.protocol.codec import dumps, unstructure, with_seq
from chat.protocol.login_cut import MOST_FRIENDS, MOST_GROUPS, MOST_MEMBERS, cut_login_result
from chat.protocol.messages import (
    BlockedPage,
    ConversationItem,
    ConversationsPage,
    DeviceInfo,
    DevicesResult,
    Empty,
    Error,
    Event,
    FoundUser,
    FriendAddedEvent,
    FriendRemovedEvent,
    FriendRequestEvent,
    FriendRequestsPage,
    FriendResult,
    FriendsPage,
    GroupDetail,
    GroupInfo,
    GroupJoinedEvent,
    GroupMessageEvent,
    GroupResult,
    GroupsPage,
    GroupSummary,
    HistoryDirect,
    HistoryGroup,
    HistoryResult,
    JoinResult,
    LoggedOutEvent,
    LoginResult,
    Member,
    MembersPage,
    MessageEvent,
    Ok,
    PendingFriend,
    PresenceEvent,
    ReadEvent,
    Result,
    Sent,
    SettingsResult,
    SettingsValues,
    TypingEvent,
    UserPresence,
    UserRef,
    UserResult,
)
from chat.server.handlers.contacts import shown
from chat.server.handlers.login_view import LATER_FIELDS_BYTES
from chat.store.streams import MAX_KNOWN_DEVICES

BIG_ID = 2**63 - 1
NAME = "\U0001f600" * 50  # a name: 50 code points, 4 bytes each
DESCRIPTION = "\U0001f600" * 200
TEXT = "\x01" * 4096  # a message text: each control character is a 6-byte escape
RID = "\x01" * 64  # the costliest rid: 64 escapes

USER = UserRef(BIG_ID, NAME)
PRESENCE = UserPresence(BIG_ID, NAME, False)
MEMBER = Member(BIG_ID, NAME, "creator")
GROUP = GroupInfo(BIG_ID, NAME, DESCRIPTION)


def largest_login(groups_read: int = MOST_GROUPS) -> LoginResult:
    """What the store reads at most (``MOST_*``), cut; with ``groups_read`` groups
    sharing the members read."""
    each = MOST_MEMBERS // groups_read
    groups = [
        GroupDetail(BIG_ID, NAME, DESCRIPTION, "creator", [MEMBER] * each, member_count=BIG_ID)
        for _ in range(groups_read)
    ]
    base = LoginResult(USER, [], [], offline=BIG_ID)
    cut = cut_login_result(
        base,
        [PRESENCE] * (MOST_FRIENDS + 1),
        groups,
        friends_more=True,
        groups_more=True,
        budget=MAX_LINE_BYTES - 512 - LATER_FIELDS_BYTES,
    )
    assert len(cut.friends) > 0 and len(cut.groups) > 0
    return cut


@pytest.mark.parametrize("groups_read", [1, 50, MOST_GROUPS])
def test_the_largest_login_fits_whatever_the_shape(groups_read: int) -> None:
    frame = encode_reply(Ok(RID, largest_login(groups_read)))
    assert len(frame) + LATER_FIELDS_BYTES <= MAX_LINE_BYTES


def largest_page(kind: Callable[[list[Any], bool], Result], item: Any, limit: int) -> Result:
    items, more = page_fit([item] * limit, False, fixed=kind([], True))
    assert more and items, "the worst case does need cutting"
    return kind(items, more)


LARGEST_RESULTS: dict[type, Callable[[], Result]] = {
    Empty: Empty,
    UserResult: lambda: UserResult(USER),
    LoginResult: largest_login,
    FoundUser: lambda: FoundUser(PRESENCE),
    FriendResult: lambda: FriendResult(PRESENCE),
    Sent: lambda: Sent(BIG_ID, BIG_ID),
    GroupResult: lambda: GroupResult(GROUP),
    JoinResult: lambda: JoinResult(GROUP, "creator"),
    FriendsPage: lambda: largest_page(FriendsPage, PRESENCE, 500),
    GroupsPage: lambda: largest_page(
        GroupsPage, GroupSummary(BIG_ID, NAME, DESCRIPTION, "creator", BIG_ID), 200
    ),
    MembersPage: lambda: largest_page(MembersPage, MEMBER, 500),
    BlockedPage: lambda: largest_page(BlockedPage, USER, 500),
    HistoryResult: lambda: largest_page(
        HistoryResult, HistoryDirect(BIG_ID, USER, BIG_ID, TEXT, BIG_ID), 200
    ),
    ConversationsPage: lambda: largest_page(
        ConversationsPage,
        ConversationItem(
            HistoryDirect(BIG_ID, USER, BIG_ID, TEXT, BIG_ID), 999, BIG_ID, USER, None, BIG_ID
        ),
        100,
    ),
    # Every known device (at most MAX_KNOWN_DEVICES), each name 64 code points of 4 bytes.
    DevicesResult: lambda: DevicesResult(
        [DeviceInfo("\U0001f600" * 64, True, BIG_ID)] * MAX_KNOWN_DEVICES
    ),
    PendingFriend: lambda: PendingFriend(PRESENCE),
    SettingsResult: lambda: SettingsResult(SettingsValues("approve")),
    FriendRequestsPage: lambda: largest_page(FriendRequestsPage, USER, 500),
}


def test_a_history_page_of_group_messages_fits_too() -> None:
    page = largest_page(HistoryResult, HistoryGroup(BIG_ID, BIG_ID, USER, TEXT, BIG_ID), 200)
    assert len(encode_reply(Ok(RID, page))) <= MAX_LINE_BYTES


LARGEST_EVENTS: dict[type, Callable[[], Event]] = {
    MessageEvent: lambda: MessageEvent(BIG_ID, USER, BIG_ID, TEXT, BIG_ID, True),
    GroupMessageEvent: lambda: GroupMessageEvent(BIG_ID, BIG_ID, USER, TEXT, BIG_ID, False),
    FriendAddedEvent: lambda: FriendAddedEvent(PRESENCE),
    FriendRemovedEvent: lambda: FriendRemovedEvent(USER),
    PresenceEvent: lambda: PresenceEvent(USER, False),
    LoggedOutEvent: lambda: LoggedOutEvent("everywhere"),
    GroupJoinedEvent: lambda: GroupJoinedEvent(GROUP, "creator"),
    FriendRequestEvent: lambda: FriendRequestEvent(USER),
    ReadEvent: lambda: ReadEvent(BIG_ID, by=USER),
    TypingEvent: lambda: TypingEvent(USER, True),
}


def test_a_conversations_page_of_groups_fits_too() -> None:
    item = ConversationItem(
        HistoryGroup(BIG_ID, BIG_ID, USER, TEXT, BIG_ID), 999, BIG_ID, None, USER
    )
    page = largest_page(ConversationsPage, item, 100)
    assert len(encode_reply(Ok(RID, page))) <= MAX_LINE_BYTES


def test_the_largest_message_event_with_a_seq_fits_a_frame() -> None:
    """On an ``acks`` connection a ``seq`` is spliced into the encoded event."""
    frame = with_seq(encode_event(LARGEST_EVENTS[MessageEvent]()), 2**64 - 1)
    assert len(frame) <= MAX_LINE_BYTES


def test_every_kind_is_covered() -> None:
    assert set(get_args(Result)) == set(LARGEST_RESULTS), "add the new result's largest case"
    assert set(get_args(Event)) == set(LARGEST_EVENTS), "add the new event's largest case"


@pytest.mark.parametrize("kind", LARGEST_RESULTS, ids=lambda kind: kind.__name__)
def test_the_largest_reply_fits_a_frame(kind: type) -> None:
    frame = encode_reply(Ok(RID, LARGEST_RESULTS[kind]()))
    # The login result leaves room for fields set after the cut (a session token).
    room = LATER_FIELDS_BYTES if kind is LoginResult else 0
    assert len(frame) + room <= MAX_LINE_BYTES, (kind.__name__, len(frame))


@pytest.mark.parametrize("kind", LARGEST_EVENTS, ids=lambda kind: kind.__name__)
def test_the_largest_event_fits_a_frame(kind: type) -> None:
    frame = encode_event(LARGEST_EVENTS[kind]())
    assert len(frame) <= MAX_LINE_BYTES, (kind.__name__, len(frame))


def test_the_largest_error_fits_a_frame() -> None:
    """Error messages quote what the client sent only through ``shown`` (bounded)."""
    quoted = shown("\x01" * MAX_LINE_BYTES)
    message = f"name: no user is called {quoted}; " + "x" * 500
    frame = encode_reply(Error(RID, "rate_limited", message, retry_after_ms=BIG_ID))
    assert len(frame) <= MAX_LINE_BYTES // 8


def test_a_cut_that_was_not_needed_leaves_no_marks() -> None:
    base = LoginResult(USER, [], [], offline=0)
    groups = [GroupDetail(1, "g", "", "creator", [MEMBER], member_count=1)]
    result = cut_login_result(base, [PRESENCE] * 3, groups)
    assert result.friends_more is None and result.groups_more is None
    assert result.groups[0].members_more is None and result.groups[0].member_count is None
    encoded = encode_reply(Ok(None, result)).decode()
    for mark in ("friends_more", "groups_more", "members_more", "member_count"):
        assert mark not in encoded


@pytest.mark.parametrize(
    "item",
    [
        UserPresence(1, "a", True),
        UserPresence(BIG_ID, NAME, False),
        UserPresence(42, 'quote " and \\ back', True),
        Member(7, "Zoë", "normal"),
        Member(BIG_ID, NAME, "creator"),
        UserRef(123456, "\u00e9\u0301 x"),
        UserRef(BIG_ID, NAME),
    ],
)
def test_the_quick_sizes_are_exact(item: Any) -> None:
    assert json_size(item) == generic_json_size(item) == len(encode_item(item))


def encode_item(item: Any) -> bytes:
    return dumps(unstructure(item))
