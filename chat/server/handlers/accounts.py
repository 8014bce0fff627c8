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

from ..throttles import authenticate_password, hash_new_password
from .login_view import login_result
from .registry import Caller, handler


@handler(Ping, needs_login=False, while_paused=True)
async def ping(caller: Caller, request: Ping) -> Result:
    return Empty()


@handler(Register, needs_login=False)
async def register(caller: Caller, request: Register) -> Result:
    services = caller.services
    password_hash = await hash_new_password(services, request.password, caller.address)
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
    # Throttled there, and only there: a token login must not go through it.
    credentials = await authenticate_password(services, request, caller.address)
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
