"""Contacts: ``find_user`` and ``add_friend``."""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import (
    AddFriend,
    FindUser,
    FoundUser,
    FriendAddedEvent,
    FriendResult,
    Result,
    UserPresence,
)
from chat.store import AlreadyFriends, CannotFriendSelf, NoSuchUser

from .registry import Caller, handler, me


@handler(FindUser)
async def find_user(caller: Caller, request: FindUser) -> Result:
    services = caller.services
    user = await services.store.user_by_name(request.name)
    if user is None:
        raise RequestError(ErrorCode.NO_SUCH_USER, f"name: no user is called {request.name!r}")
    online = await services.router.online([user.id])
    return FoundUser(UserPresence(user.id, user.name, user.id in online))


@handler(AddFriend)
async def add_friend(caller: Caller, request: AddFriend) -> Result:
    user = me(caller)
    services = caller.services
    try:
        friend = await services.store.add_friend(user.id, request.user_id)
    except CannotFriendSelf:
        raise RequestError(ErrorCode.CANNOT_FRIEND_SELF, "user_id: that is you") from None
    except NoSuchUser:
        raise RequestError(
            ErrorCode.NO_SUCH_USER, f"user_id: no user has id {request.user_id}"
        ) from None
    except AlreadyFriends:
        raise RequestError(
            ErrorCode.ALREADY_FRIENDS, f"user_id: {request.user_id} is your friend already"
        ) from None
    event = FriendAddedEvent(UserPresence(user.id, user.name, True))
    services.router.push(friend.id, event)
    online = await services.router.online([friend.id])
    return FriendResult(UserPresence(friend.id, friend.name, friend.id in online))
