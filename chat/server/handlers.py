"""One coroutine per request type: check, act, and return the ``ok`` result.

Handlers raise ``RequestError`` for the request's own errors; the session turns
results and errors into replies. The acting user is always ``session.user``,
never an id the client sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from chat.protocol import ErrorCode, RequestError
from chat.protocol.codec import encode_event
from chat.protocol.messages import (
    REQUEST_TYPES,
    AddFriend,
    CreateGroup,
    Empty,
    FindUser,
    FoundUser,
    FriendAddedEvent,
    FriendResult,
    GroupDetail,
    GroupInfo,
    GroupResult,
    GroupSend,
    JoinGroup,
    JoinResult,
    Login,
    LoginResult,
    Logout,
    Member,
    Ping,
    Register,
    Request,
    Result,
    Send,
    Sent,
    UserPresence,
    UserRef,
    UserResult,
)
from chat.store import (
    AlreadyFriends,
    AlreadyMember,
    CannotFriendSelf,
    GroupNameTaken,
    NameTaken,
    NoSuchGroup,
    NoSuchUser,
    NotAMember,
    StoredMessage,
    UserRecord,
)

if TYPE_CHECKING:
    from .session import Session

R = TypeVar("R", bound=Request)
Handler = Callable[["Session", Any], Awaitable[Result]]
_HANDLERS: dict[type, Handler] = {}

# Check order, after decoding: logged-in state, then the request's own errors.
_NEEDS_LOGIN = (Logout, FindUser, AddFriend, Send, CreateGroup, JoinGroup, GroupSend)


def _handles(kind: type[R]) -> Callable[[Callable[[Session, R], Awaitable[Result]]], Any]:
    def register(fn: Callable[[Session, R], Awaitable[Result]]) -> Any:
        _HANDLERS[kind] = fn
        return fn

    return register


# What a logged-in session may still do while its node is paused (leases in doubt).
_WHILE_PAUSED = (Ping, Logout)


async def dispatch(session: Session, request: Request) -> Result:
    if isinstance(request, _NEEDS_LOGIN) and session.user is None:
        raise RequestError(ErrorCode.NOT_LOGGED_IN, f"log in before {request.TYPE}")
    if (
        session.user is not None
        and session.services.router.paused
        and not isinstance(request, _WHILE_PAUSED)
    ):
        # The user may be logged in elsewhere by now: act for them only once that is known.
        raise RequestError(
            ErrorCode.UNAVAILABLE,
            "this server cannot confirm your login right now (Redis does not answer); try again",
        )
    return await _HANDLERS[type(request)](session, request)


def _me(session: Session) -> UserRecord:
    assert session.user is not None  # dispatch checked
    return session.user


@_handles(Ping)
async def ping(session: Session, request: Ping) -> Result:
    return Empty()


@_handles(Register)
async def register(session: Session, request: Register) -> Result:
    services = session.services
    password_hash = await services.hasher.hash(request.password)
    try:
        user = await services.store.create_user(request.name, password_hash)
    except NameTaken:
        raise RequestError(ErrorCode.NAME_TAKEN, f"name: {request.name!r} is taken") from None
    return UserResult(UserRef(user.id, user.name))


@_handles(Login)
async def login(session: Session, request: Login) -> Result:
    if session.user is not None:
        raise RequestError(
            ErrorCode.ALREADY_LOGGED_IN, f"this connection is logged in as {session.user.name!r}"
        )
    services = session.services
    if request.name is not None:
        credentials = await services.store.credentials_by_name(request.name)
    else:
        assert request.id is not None  # the codec checked: exactly one of name and id
        credentials = await services.store.credentials_by_id(request.id)
    stored_hash = credentials.password_hash if credentials else None
    if credentials is None or not await services.hasher.verify(request.password, stored_hash):
        # The same answer whichever part was wrong: it must not reveal which names exist.
        raise RequestError(ErrorCode.BAD_CREDENTIALS, "wrong user or password")
    user = UserRecord(credentials.id, credentials.name)
    if not await session.begin_login(user):
        raise RequestError(ErrorCode.ALREADY_ONLINE, f"{user.name!r} is logged in elsewhere")
    try:
        # Deletions that failed earlier on this node must happen before counting.
        await services.acknowledger.settle(user.id)
        # Presence is claimed before the snapshot: a message stored from now on either
        # counts in ``offline`` or wakes this session, never neither.
        snapshot = await services.store.login_snapshot(user.id)
        online = await services.router.online([friend.id for friend in snapshot.friends])
    except Exception:
        await session.abandon_login()
        raise
    return LoginResult(
        user=UserRef(user.id, user.name),
        friends=[UserPresence(f.id, f.name, f.id in online) for f in snapshot.friends],
        groups=[
            GroupDetail(
                id=m.group.id,
                name=m.group.name,
                description=m.group.description,
                role=m.role,
                members=[Member(x.id, x.name, x.role) for x in m.members],
            )
            for m in snapshot.groups
        ],
        offline=snapshot.pending,
    )


@_handles(Logout)
async def logout(session: Session, request: Logout) -> Result:
    await session.logout()
    return Empty()


@_handles(FindUser)
async def find_user(session: Session, request: FindUser) -> Result:
    services = session.services
    user = await services.store.user_by_name(request.name)
    if user is None:
        raise RequestError(ErrorCode.NO_SUCH_USER, f"name: no user is called {request.name!r}")
    online = await services.router.online([user.id])
    return FoundUser(UserPresence(user.id, user.name, user.id in online))


@_handles(AddFriend)
async def add_friend(session: Session, request: AddFriend) -> Result:
    me = _me(session)
    services = session.services
    try:
        friend = await services.store.add_friend(me.id, request.user_id)
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
    event = FriendAddedEvent(UserPresence(me.id, me.name, True))
    services.router.push(friend.id, encode_event(event))
    online = await services.router.online([friend.id])
    return FriendResult(UserPresence(friend.id, friend.name, friend.id in online))


@_handles(Send)
async def send(session: Session, request: Send) -> Result:
    me = _me(session)
    try:
        stored = await session.services.store.store_direct(
            me.id, request.to, request.text, request.cid
        )
    except NoSuchUser:
        raise RequestError(ErrorCode.NO_SUCH_USER, f"to: no user has id {request.to}") from None
    return _sent(session, stored)


@_handles(CreateGroup)
async def create_group(session: Session, request: CreateGroup) -> Result:
    me = _me(session)
    try:
        group = await session.services.store.create_group(request.name, request.description, me.id)
    except GroupNameTaken:
        raise RequestError(
            ErrorCode.GROUP_NAME_TAKEN, f"name: a group is called {request.name!r} already"
        ) from None
    return GroupResult(GroupInfo(group.id, group.name, group.description))


@_handles(JoinGroup)
async def join_group(session: Session, request: JoinGroup) -> Result:
    me = _me(session)
    try:
        group, role = await session.services.store.join_group(request.group_id, me.id)
    except NoSuchGroup:
        raise RequestError(
            ErrorCode.NO_SUCH_GROUP, f"group_id: no group has id {request.group_id}"
        ) from None
    except AlreadyMember:
        raise RequestError(
            ErrorCode.ALREADY_MEMBER, f"group_id: you are in group {request.group_id} already"
        ) from None
    return JoinResult(GroupInfo(group.id, group.name, group.description), role)


@_handles(GroupSend)
async def group_send(session: Session, request: GroupSend) -> Result:
    me = _me(session)
    try:
        stored = await session.services.store.store_group(
            me.id, request.group_id, request.text, request.cid
        )
    except NoSuchGroup:
        raise RequestError(
            ErrorCode.NO_SUCH_GROUP, f"group_id: no group has id {request.group_id}"
        ) from None
    except NotAMember:
        raise RequestError(
            ErrorCode.NOT_A_MEMBER, f"group_id: you are not in group {request.group_id}"
        ) from None
    return _sent(session, stored)


def _sent(session: Session, stored: StoredMessage) -> Result:
    """The message is durable now; wake its recipients wherever they are (without
    waiting: the wake-ups of other nodes' users go out with the relay's next batch,
    which a stopping node still sends before it lets go of Redis)."""
    if stored.recipients:
        session.services.router.wake(stored.recipients)
    return Sent(stored.message_id, stored.ts)


assert set(_HANDLERS) == set(REQUEST_TYPES.values()), "every request type needs a handler"
