"""Accounts: ``ping``, ``register``, ``login`` and ``logout``."""

from __future__ import annotations

import attrs

from chat.broker import MAX_DEVICES_ONLINE
from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import (
    Empty,
    LoggedOutEvent,
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
from .registry import Caller, handler, me


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
    device = request.device if request.device is not None else ""
    if request.token is not None:
        user = await _user_by_token(caller, request.token, device)
        token: str | None = request.token
    else:
        user = await _user_by_password(caller, request)
        token = None
    if not await caller.begin_login(user, device, request.acks):
        shown = "" if not device else f" on device {device!r}"
        raise RequestError(
            ErrorCode.ALREADY_ONLINE,
            f"{user.name!r} is logged in elsewhere{shown}"
            f" (or on {MAX_DEVICES_ONLINE} devices already)",
        )
    try:
        # Presence is claimed before the device's state is read: a message stored from
        # now on either counts in ``offline`` or is read after it, never neither.
        start = await caller.start_device()
        result = await login_result(services.store, services.router, user, start.kept)
        if token is None:
            token = await _issue_token(caller, user, device)
    except Exception:
        await caller.end_login()
        raise
    caller.login_token = token_hash(token)
    return attrs.evolve(result, token=token, device=device)


async def _user_by_password(caller: Caller, request: Login) -> UserRecord:
    # Throttled there, and only there: a token login must not go through it.
    credentials = await authenticate_password(caller.services, request, caller.address)
    return UserRecord(credentials.id, credentials.name)


# --- session tokens (protocol 1.1): the token itself goes no further than here ------


async def _user_by_token(caller: Caller, token: str, device: str) -> UserRecord:
    """The user of a live token issued to this device: no password hash, one coalesced
    store call."""
    found = await caller.services.store.user_for_token(token_hash(token))
    if found is None or found[1] != device:
        # Unknown, expired, revoked and another device's look the same, and like a
        # wrong password.
        raise RequestError(ErrorCode.BAD_CREDENTIALS, "wrong user or password")
    return found[0]


async def _issue_token(caller: Caller, user: UserRecord, device: str) -> str:
    """A new token for a password login, bound to its device; the store keeps its
    hash only."""
    token = new_token()
    await caller.services.store.issue_token(user.id, device, token_hash(token))
    return token


async def _forget_token(caller: Caller) -> None:
    """Revoke this login's token in the database, which every node asks: cluster-wide
    once committed."""
    if caller.login_token is not None:
        await caller.services.store.revoke_token(caller.login_token)


@handler(Logout, while_paused=True)
async def logout(caller: Caller, request: Logout) -> Result:
    user = me(caller)
    if request.everywhere:
        # Before the reply: every token is revoked, and every other device is told and
        # closed (wherever it is; one that is not reachable now cannot log in again
        # with a token, and its login ends within the presence limits).
        await caller.services.store.revoke_tokens(user.id)
        caller.services.router.push(user.id, LoggedOutEvent("everywhere"), skip=caller.holder)
    elif request.forget:
        await _forget_token(caller)  # before the reply; a failure leaves the login as it was
    await caller.end_login()
    caller.login_token = None
    return Empty()
