"""Accounts: ``ping``, ``register``, ``login`` and ``logout``."""

from __future__ import annotations

import attrs

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
from ..tokens import new_token, token_hash
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
    if request.token is not None:
        user = await _user_by_token(caller, request.token)
        token: str | None = request.token
    else:
        user = await _user_by_password(caller, request)
        token = None
    if not await caller.begin_login(user):
        raise RequestError(ErrorCode.ALREADY_ONLINE, f"{user.name!r} is logged in elsewhere")
    try:
        # What this node wrote to an earlier login must be deleted before counting.
        await services.deletions.settle(user.id)
        # Presence is claimed before the snapshot: a message stored from now on either
        # counts in ``offline`` or wakes this session, never neither.
        result = await login_result(services.store, services.router, user)
        if token is None:
            token = await _issue_token(caller, user)
    except Exception:
        await caller.end_login()
        raise
    caller.login_token = token_hash(token)
    return attrs.evolve(result, token=token)


async def _user_by_password(caller: Caller, request: Login) -> UserRecord:
    # Throttled there, and only there: a token login must not go through it.
    credentials = await authenticate_password(caller.services, request, caller.address)
    return UserRecord(credentials.id, credentials.name)


# --- session tokens (protocol 1.1): the token itself goes no further than here ------


async def _user_by_token(caller: Caller, token: str) -> UserRecord:
    """The user of a live token: no password hash, one coalesced store call."""
    user = await caller.services.store.user_for_token(token_hash(token))
    if user is None:
        # Unknown, expired and revoked look the same, and like a wrong password.
        raise RequestError(ErrorCode.BAD_CREDENTIALS, "wrong user or password")
    return user


async def _issue_token(caller: Caller, user: UserRecord) -> str:
    """A new token for a password login; the store keeps its hash only."""
    token = new_token()
    await caller.services.store.issue_token(user.id, token_hash(token))
    return token


async def _forget_token(caller: Caller) -> None:
    """Revoke this login's token in the database, which every node asks: cluster-wide
    once committed."""
    if caller.login_token is not None:
        await caller.services.store.revoke_token(caller.login_token)


@handler(Logout, while_paused=True)
async def logout(caller: Caller, request: Logout) -> Result:
    if request.forget:
        await _forget_token(caller)  # before the reply; a failure leaves the login as it was
    await caller.end_login()
    caller.login_token = None
    return Empty()
