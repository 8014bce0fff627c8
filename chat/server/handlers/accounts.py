"""Accounts: ``ping``, ``register``, ``login`` and ``logout``."""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import (
    Empty,
    Login,
    Logout,
    Ping,
    Register,
    Result,
    UserRef,
    UserResult,
)
from chat.store import NameTaken, UserRecord

from .login_view import login_result
from .registry import Caller, handler


@handler(Ping, needs_login=False, while_paused=True)
async def ping(caller: Caller, request: Ping) -> Result:
    return Empty()


@handler(Register, needs_login=False)
async def register(caller: Caller, request: Register) -> Result:
    services = caller.services
    password_hash = await services.hasher.hash(request.password)
    try:
        user = await services.store.create_user(request.name, password_hash)
    except NameTaken:
        raise RequestError(ErrorCode.NAME_TAKEN, f"name: {request.name!r} is taken") from None
    return UserResult(UserRef(user.id, user.name))


@handler(Login, needs_login=False)
async def login(caller: Caller, request: Login) -> Result:
    if caller.user is not None:
        raise RequestError(
            ErrorCode.ALREADY_LOGGED_IN, f"this connection is logged in as {caller.user.name!r}"
        )
    services = caller.services
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
    if not await caller.begin_login(user):
        raise RequestError(ErrorCode.ALREADY_ONLINE, f"{user.name!r} is logged in elsewhere")
    try:
        # What this node wrote to an earlier login must be deleted before counting.
        await services.deletions.settle(user.id)
        # Presence is claimed before the snapshot: a message stored from now on either
        # counts in ``offline`` or wakes this session, never neither.
        result = await login_result(services.store, services.router, user)
    except Exception:
        await caller.end_login()
        raise
    return result


@handler(Logout, while_paused=True)
async def logout(caller: Caller, request: Logout) -> Result:
    await caller.end_login()
    return Empty()
