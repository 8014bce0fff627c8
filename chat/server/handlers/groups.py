"""Groups: ``create_group``, ``join_group``, ``group_send``, and the version 1.1 lists
``groups`` and ``group_members``."""

from __future__ import annotations

from collections.abc import Awaitable

from chat.protocol import ErrorCode, RequestError
from chat.protocol.bounded import page_fit
from chat.protocol.messages import (
    CreateGroup,
    GroupInfo,
    GroupJoinedEvent,
    GroupMessageEvent,
    GroupResult,
    GroupSend,
    GroupsPage,
    GroupSummary,
    JoinGroup,
    JoinResult,
    ListGroups,
    ListMembers,
    Member,
    MembersPage,
    Result,
    Role,
    Sent,
    UserRef,
)
from chat.store import (
    AlreadyMember,
    GroupNameTaken,
    NoSuchGroup,
    RateLimited,
    StoredMessage,
    UserRecord,
    Window,
)

from .contacts import rate_limited
from .group_access import group_access
from .messages import hand_off, stored_or_refunded
from .registry import Caller, handler, me

CREATE_GROUP_WINDOW = Window(limit=10, span_ms=3_600_000)
"""At most 10 groups made per user per hour (protocol 1.2: group names are global, so
one user must not be able to take thousands of them; refused requests do not count)."""


@handler(CreateGroup)
async def create_group(caller: Caller, request: CreateGroup) -> Result:
    user = me(caller)
    try:
        group = await caller.services.store.create_group(
            request.name, request.description, user.id, CREATE_GROUP_WINDOW
        )
    except RateLimited as exc:
        raise rate_limited(exc, "create_group") from None
    except GroupNameTaken:
        raise RequestError(
            ErrorCode.GROUP_NAME_TAKEN, f"name: a group is called {request.name!r} already"
        ) from None
    info = GroupInfo(group.id, group.name, group.description)
    _joined(caller, user, info, "creator")
    return GroupResult(info)


def _joined(caller: Caller, user: UserRecord, info: GroupInfo, role: Role) -> None:
    """This device follows the group's log now, and the user's other devices are told
    (they follow it too: the store gave each known device a position in it)."""
    caller.joined(info.id)
    caller.services.router.push(user.id, GroupJoinedEvent(info, role), skip=caller.holder)


@handler(JoinGroup)
async def join_group(caller: Caller, request: JoinGroup) -> Result:
    user = me(caller)
    try:
        group, role = await caller.services.store.join_group(request.group_id, user.id)
    except NoSuchGroup:
        raise RequestError(
            ErrorCode.NO_SUCH_GROUP, f"group_id: no group has id {request.group_id}"
        ) from None
    except AlreadyMember:
        raise RequestError(
            ErrorCode.ALREADY_MEMBER, f"group_id: you are in group {request.group_id} already"
        ) from None
    info = GroupInfo(group.id, group.name, group.description)
    _joined(caller, user, info, role)
    return JoinResult(info, role)


@handler(GroupSend, pipelined=True)
def group_send(caller: Caller, request: GroupSend) -> Awaitable[Result]:
    """Pipelined: the send takes its place in the store's order before this returns."""
    user = me(caller)
    reserved = caller.services.fanout.reserve(user.id, request.group_id)

    def stored_now(stored: StoredMessage) -> None:
        event = GroupMessageEvent(
            stored.message_id,
            request.group_id,
            UserRef(user.id, user.name),
            request.text,
            stored.ts,
            False,
        )
        hand_off(caller, user, stored, event, reserved)

    storing = caller.services.store.store_group(
        user.id, request.group_id, request.text, request.cid, stored_now
    )
    return _group_send_stored(caller, user, request, storing, reserved)


async def _group_send_stored(
    caller: Caller,
    user: UserRecord,
    request: GroupSend,
    storing: Awaitable[StoredMessage],
    reserved: int,
) -> Result:
    with group_access(request.group_id):
        stored = await stored_or_refunded(caller, user, storing, reserved)
    return Sent(stored.message_id, stored.ts)


@handler(ListGroups)
async def groups(caller: Caller, request: ListGroups) -> Result:
    user = me(caller)
    page = await caller.services.store.groups(user.id, request.after or 0, request.limit)
    items, more = page_fit(
        [
            GroupSummary(m.group.id, m.group.name, m.group.description, m.role, m.member_count)
            for m in page.items
        ],
        page.more,
        fixed=GroupsPage([], True),
    )
    return GroupsPage(items, more)


@handler(ListMembers)
async def group_members(caller: Caller, request: ListMembers) -> Result:
    user = me(caller)
    with group_access(request.group_id):
        page = await caller.services.store.group_members(
            user.id, request.group_id, request.after or 0, request.limit
        )
    items, more = page_fit(
        [Member(m.id, m.name, m.role) for m in page.items], page.more, fixed=MembersPage([], True)
    )
    return MembersPage(items, more)
