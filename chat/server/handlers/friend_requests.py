"""Friend requests with approval (protocol 1.2): ``settings``, ``friend_requests``,
``accept_friend`` and ``decline_friend``. ``add_friend`` itself stays in
``contacts``; the rules live in ``chat.store.requests``."""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.bounded import page_fit
from chat.protocol.messages import (
    AcceptFriend,
    ChangeSettings,
    DeclineFriend,
    Empty,
    FriendAddedEvent,
    FriendRequestsPage,
    FriendResult,
    ListFriendRequests,
    Result,
    SettingsResult,
    SettingsValues,
    UserPresence,
    UserRef,
)
from chat.store import NoSuchRequest

from .registry import Caller, handler, me


def no_such_request(user_id: int) -> RequestError:
    return RequestError(
        ErrorCode.NO_SUCH_REQUEST, f"user_id: no friend request from {user_id} is waiting"
    )


@handler(ChangeSettings)
async def settings(caller: Caller, request: ChangeSettings) -> Result:
    user = me(caller)
    value = await caller.services.store.change_settings(user.id, request.friend_requests)
    return SettingsResult(SettingsValues(friend_requests=value))


@handler(ListFriendRequests)
async def friend_requests(caller: Caller, request: ListFriendRequests) -> Result:
    user = me(caller)
    page = await caller.services.store.friend_requests(user.id, request.after or 0, request.limit)
    items, more = page_fit(
        [UserRef(u.id, u.name) for u in page.items],
        page.more,
        fixed=FriendRequestsPage([], True),
    )
    return FriendRequestsPage(items, more)


@handler(AcceptFriend)
async def accept_friend(caller: Caller, request: AcceptFriend) -> Result:
    """The friendship is made; the requester gets ``friend_added`` as in version 1."""
    user = me(caller)
    services = caller.services
    try:
        friend = await services.store.accept_friend(user.id, request.user_id)
    except NoSuchRequest:
        raise no_such_request(request.user_id) from None
    services.router.push(friend.id, FriendAddedEvent(UserPresence(user.id, user.name, True)))
    online = await services.router.online([friend.id])
    return FriendResult(UserPresence(friend.id, friend.name, friend.id in online))


@handler(DeclineFriend)
async def decline_friend(caller: Caller, request: DeclineFriend) -> Result:
    """The request is dropped; the requester is told nothing."""
    user = me(caller)
    try:
        await caller.services.store.decline_friend(user.id, request.user_id)
    except NoSuchRequest:
        raise no_such_request(request.user_id) from None
    return Empty()
