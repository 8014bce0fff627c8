"""The handler registry: one entry per request type, and the checks every request gets.

A handler is registered with ``@handler(RequestType, ...)`` next to its code, in
the module of its area (accounts, contacts, messages, groups). It receives a
``Caller``, the narrow view of a connection that handlers need (who is logged
in, the node's services, and the two steps of a login), never the session
itself. ``dispatch`` applies the checks in the protocol's order: logged-in
state first, then (while the node is paused) ``unavailable``, then the
request's own checks, which are the handler's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import attrs

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import REQUEST_TYPES, Request, Result
from chat.store import UserRecord
from chat.store.streams import DeviceStart

from ..services import Services
from ..throttles import RequestBudget

R = TypeVar("R", bound=Request)


class Caller(Protocol):
    """What a handler may see and do of the connection that made the request."""

    @property
    def user(self) -> UserRecord | None:
        """Who is logged in on this connection (never an id the client sent)."""

    @property
    def services(self) -> Services: ...

    @property
    def address(self) -> str:
        """The client's IP address (the real one behind a proxy speaking the PROXY
        protocol), for per-address limits and logs."""

    @property
    def device(self) -> str:
        """The device of this connection's login (``""``: logins without one)."""

    @property
    def holder(self) -> str:
        """This connection's name in the cluster (the one connection to skip)."""

    login_token: bytes | None
    """The hash of the token this connection's login used or received (what
    ``logout`` with ``forget`` revokes); None while logged out."""

    async def begin_login(self, user: UserRecord, device: str, acks: bool) -> bool:
        """Claim the device's presence for this connection; False if that device is
        logged in elsewhere, or the user has too many devices online."""

    async def start_device(self) -> DeviceStart:
        """After ``begin_login``: make the device known and read what is kept for it."""

    async def end_login(self) -> None:
        """Log the device out of this connection (also to undo a login that failed)."""

    def ack(self, seq: int) -> None:
        """The client acknowledged events up to ``seq`` (``AckError`` if it may not)."""

    def joined(self, group_id: int) -> None:
        """The user joined (or created) a group on this connection: follow its log."""


HandlerFn = Callable[[Caller, Any], Awaitable[Result]]


@attrs.frozen
class _Entry:
    run: HandlerFn
    needs_login: bool
    while_paused: bool
    pipelined: bool


_HANDLERS: dict[type, _Entry] = {}
"""Request class -> its handler."""


def handler(
    kind: type[R],
    *,
    needs_login: bool = True,
    while_paused: bool = False,
    pipelined: bool = False,
) -> Callable[[Callable[[Caller, R], Awaitable[Result]]], Callable[[Caller, R], Awaitable[Result]]]:
    """Register the decorated coroutine for requests of ``kind``.

    ``needs_login``: refused with ``not_logged_in`` on a connection not logged in.
    ``while_paused``: still served for a logged-in user while the node is paused (its
    presence leases in doubt); every other request then answers ``unavailable``.
    ``pipelined``: the connection reads on while the request is under way (see
    ``begin``). The handler is then a plain function that does, before it returns,
    everything that fixes the request's place in the order of the user's requests
    (a send: its place in the store's order), and returns a coroutine that finishes
    the request; the session awaits those coroutines one after the other, in the
    order the requests came, so what they do after the store answered (a reply, the
    hand-off to recipients) keeps that order too.
    """

    def register(
        fn: Callable[[Caller, R], Awaitable[Result]],
    ) -> Callable[[Caller, R], Awaitable[Result]]:
        if kind in _HANDLERS:
            raise ValueError(f"two handlers for {kind.__name__}")
        _HANDLERS[kind] = _Entry(fn, needs_login, while_paused, pipelined)
        return fn

    return register


async def dispatch(caller: Caller, request: Request, budget: RequestBudget | None = None) -> Result:
    """Run ``request``'s handler after the checks every request gets; ``budget`` is the
    connection's (``rate_limited`` comes after ``not_logged_in``, before the request's
    own errors)."""
    return await _checked(caller, request, budget).run(caller, request)


def pipelined(request: Request) -> bool:
    """The connection may read on while this request is under way (``begin``)."""
    return _HANDLERS[type(request)].pipelined


def begin(
    caller: Caller, request: Request, budget: RequestBudget | None = None
) -> Awaitable[Result]:
    """Start a pipelined request without waiting: the checks every request gets and
    the handler's first step happen now (raising the request's early errors), and the
    returned awaitable, which must be awaited, finishes it."""
    entry = _checked(caller, request, budget)
    assert entry.pipelined, f"{request.TYPE} is not pipelined"
    return entry.run(caller, request)


def _checked(caller: Caller, request: Request, budget: RequestBudget | None) -> _Entry:
    """The checks every request gets, in the protocol's order; the request's entry."""
    entry = _HANDLERS[type(request)]
    user = caller.user
    if entry.needs_login and user is None:
        raise RequestError(ErrorCode.NOT_LOGGED_IN, f"log in before {request.TYPE}")
    if budget is not None:
        budget.spend()
    if user is not None and caller.services.router.paused and not entry.while_paused:
        # The user may be logged in elsewhere by now: act for them only once that is known.
        raise RequestError(
            ErrorCode.UNAVAILABLE,
            "this server cannot confirm your login right now (Redis does not answer); try again",
        )
    return entry


def me(caller: Caller) -> UserRecord:
    """The logged-in user, in a handler registered with ``needs_login``."""
    assert caller.user is not None  # dispatch checked
    return caller.user


def check_complete() -> None:
    """Every request type of the protocol has a handler (checked at import)."""
    missing = set(REQUEST_TYPES.values()) - set(_HANDLERS)
    if missing:
        raise AssertionError(f"no handler for {sorted(kind.__name__ for kind in missing)}")
