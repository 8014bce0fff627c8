"""Contacts: ``find_user``, ``add_friend``, and the version 1.1 requests
``remove_friend``, ``block``, ``unblock``, ``blocked`` and ``friends``."""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.bounded import page_fit
from chat.protocol.messages import (
    AddFriend,
    Block,
    BlockedPage,
    Empty,
    FindUser,
    FoundUser,
    FriendAddedEvent,
    FriendRemovedEvent,
    FriendRequestEvent,
    FriendResult,
    FriendsPage,
    ListBlocked,
    ListFriends,
    PendingFriend,
    RemoveFriend,
    Result,
    Unblock,
    UserPresence,
    UserRef,
)
from chat.store import (
    AlreadyBlocked,
    AlreadyFriends,
    Blocked,
    CannotBlockSelf,
    CannotFriendSelf,
    NoSuchUser,
    NotBlocked,
    NotFriends,
    RateLimited,
    Window,
)

from .registry import Caller, handler, me

ADD_FRIEND_WINDOW = Window(limit=100, span_ms=3_600_000)
"""At most 100 friendships made per user per hour (refused requests do not count)."""

SHOWN_NAME = 60
"""An error message quotes at most this much of a name the client sent."""


def shown(name: str) -> str:
    """A client's string, quoted and shortened for an error message (a reply must stay
    within the frame limit, and a lookup name may be as long as a frame)."""
    return repr(name if len(name) <= SHOWN_NAME else name[:SHOWN_NAME] + "…")


def no_such_user(user_id: int, field: str = "user_id") -> RequestError:
    return RequestError(ErrorCode.NO_SUCH_USER, f"{field}: no user has id {user_id}")


def blocked(field: str = "user_id") -> RequestError:
    # Says nothing more than the code: not who blocked whom, nor anything about them.
    return RequestError(ErrorCode.BLOCKED, f"{field}: refused: one of you has blocked the other")


def rate_limited(exc: RateLimited, what: str) -> RequestError:
    seconds = -(-exc.retry_after_ms // 1000)
    return RequestError(
        ErrorCode.RATE_LIMITED,
        f"too many {what} requests; try again in {seconds} s",
        retry_after_ms=exc.retry_after_ms,
    )


@handler(FindUser)
async def find_user(caller: Caller, request: FindUser) -> Result:
    services = caller.services
    user = await services.store.user_by_name(request.name)
    if user is None:
        raise RequestError(ErrorCode.NO_SUCH_USER, f"name: no user is called {shown(request.name)}")
    return FoundUser(UserPresence(user.id, user.name, await shown_online(caller, user.id)))


async def shown_online(caller: Caller, user_id: int) -> bool:
    """``online`` of a user as this caller may see it: false for a user who approves
    friend requests and is not the caller's friend (protocol 1.2), whatever it is."""
    services = caller.services
    if user_id not in await services.router.online([user_id]):
        return False
    viewer = caller.user
    if viewer is None or viewer.id == user_id:
        return True
    return user_id not in await services.store.presence_hidden([user_id], viewer.id)


@handler(AddFriend)
async def add_friend(caller: Caller, request: AddFriend) -> Result:
    user = me(caller)
    services = caller.services
    try:
        added = await services.store.add_friend(user.id, request.user_id, ADD_FRIEND_WINDOW)
    except RateLimited as exc:
        raise rate_limited(exc, "add_friend") from None
    except CannotFriendSelf:
        raise RequestError(ErrorCode.CANNOT_FRIEND_SELF, "user_id: that is you") from None
    except NoSuchUser:
        raise no_such_user(request.user_id) from None
    except Blocked:
        raise blocked() from None
    except AlreadyFriends:
        raise RequestError(
            ErrorCode.ALREADY_FRIENDS, f"user_id: {request.user_id} is your friend already"
        ) from None
    friend = added.friend
    if added.outcome != "friends":
        # Asked, not friends: the target is told once (not again for a repeat), and
        # shows offline to the requester until the friendship exists.
        if added.outcome == "pending":
            services.router.push(friend.id, FriendRequestEvent(UserRef(user.id, user.name)))
        return PendingFriend(UserPresence(friend.id, friend.name, False))
    event = FriendAddedEvent(UserPresence(user.id, user.name, True))
    services.router.push(friend.id, event)
    online = await services.router.online([friend.id])
    return FriendResult(UserPresence(friend.id, friend.name, friend.id in online))


@handler(RemoveFriend)
async def remove_friend(caller: Caller, request: RemoveFriend) -> Result:
    user = me(caller)
    services = caller.services
    try:
        friend = await services.store.remove_friend(user.id, request.user_id)
    except NoSuchUser:
        raise no_such_user(request.user_id) from None
    except NotFriends:
        raise RequestError(
            ErrorCode.NOT_FRIENDS, f"user_id: {request.user_id} is not your friend"
        ) from None
    services.router.push(friend.id, FriendRemovedEvent(UserRef(user.id, user.name)))
    return Empty()


@handler(ListFriends)
async def friends(caller: Caller, request: ListFriends) -> Result:
    user = me(caller)
    services = caller.services
    page = await services.store.friends(user.id, request.after or 0, request.limit)
    online = await services.router.online([friend.id for friend in page.items])
    items, more = page_fit(
        [UserPresence(f.id, f.name, f.id in online) for f in page.items],
        page.more,
        fixed=FriendsPage([], True),
    )
    return FriendsPage(items, more)


@handler(Block)
async def block(caller: Caller, request: Block) -> Result:
    """Block a user: their ``send`` and ``add_friend`` to this user are refused, and any
    friendship ends, without an event (the blocked user is told nothing)."""
    user = me(caller)
    try:
        await caller.services.store.block(user.id, request.user_id)
    except CannotBlockSelf:
        raise RequestError(ErrorCode.CANNOT_BLOCK_SELF, "user_id: that is you") from None
    except NoSuchUser:
        raise no_such_user(request.user_id) from None
    except AlreadyBlocked:
        raise RequestError(
            ErrorCode.ALREADY_BLOCKED, f"user_id: you have blocked {request.user_id} already"
        ) from None
    return Empty()


@handler(Unblock)
async def unblock(caller: Caller, request: Unblock) -> Result:
    user = me(caller)
    try:
        await caller.services.store.unblock(user.id, request.user_id)
    except NoSuchUser:
        raise no_such_user(request.user_id) from None
    except NotBlocked:
        raise RequestError(
            ErrorCode.NOT_BLOCKED, f"user_id: you have not blocked {request.user_id}"
        ) from None
    return Empty()


@handler(ListBlocked)
async def blocked_users(caller: Caller, request: ListBlocked) -> Result:
    user = me(caller)
    page = await caller.services.store.blocked(user.id, request.after or 0, request.limit)
    items, more = page_fit(
        [UserRef(u.id, u.name) for u in page.items], page.more, fixed=BlockedPage([], True)
    )
    return BlockedPage(items, more)
