"""Groups: ``create_group``, ``join_group`` and ``group_send``."""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import (
    CreateGroup,
    GroupInfo,
    GroupMessageEvent,
    GroupResult,
    GroupSend,
    JoinGroup,
    JoinResult,
    Result,
    UserRef,
)
from chat.store import AlreadyMember, GroupNameTaken, NoSuchGroup, NotAMember

from .messages import sent
from .registry import Caller, handler, me


@handler(CreateGroup)
async def create_group(caller: Caller, request: CreateGroup) -> Result:
    user = me(caller)
    try:
        group = await caller.services.store.create_group(request.name, request.description, user.id)
    except GroupNameTaken:
        raise RequestError(
            ErrorCode.GROUP_NAME_TAKEN, f"name: a group is called {request.name!r} already"
        ) from None
    return GroupResult(GroupInfo(group.id, group.name, group.description))


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
    return JoinResult(GroupInfo(group.id, group.name, group.description), role)


@handler(GroupSend)
async def group_send(caller: Caller, request: GroupSend) -> Result:
    user = me(caller)
    stored_after = caller.services.router.mark()
    try:
        stored = await caller.services.store.store_group(
            user.id, request.group_id, request.text, request.cid
        )
    except NoSuchGroup:
        raise RequestError(
            ErrorCode.NO_SUCH_GROUP, f"group_id: no group has id {request.group_id}"
        ) from None
    except NotAMember:
        raise RequestError(
            ErrorCode.NOT_A_MEMBER, f"group_id: you are not in group {request.group_id}"
        ) from None
    event = GroupMessageEvent(
        stored.message_id,
        request.group_id,
        UserRef(user.id, user.name),
        request.text,
        stored.ts,
        False,
    )
    return sent(caller, stored, event, stored_after)
