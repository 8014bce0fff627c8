"""One-to-one messages: ``send``."""

from __future__ import annotations

from collections.abc import Awaitable

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import (
    DeliveredEvent,
    GroupMessageEvent,
    MessageEvent,
    Result,
    Send,
    Sent,
    UserRef,
)
from chat.store import Blocked, NoSuchUser, StoredMessage, UserRecord

from .registry import Caller, handler, me


@handler(Send, pipelined=True)
def send(caller: Caller, request: Send) -> Awaitable[Result]:
    """Pipelined: the send takes its place in the store's order before this returns."""
    user = me(caller)
    stored_after = caller.services.router.mark()
    storing = caller.services.store.store_direct(user.id, request.to, request.text, request.cid)
    return _send_stored(caller, user, request, storing, stored_after)


async def _send_stored(
    caller: Caller,
    user: UserRecord,
    request: Send,
    storing: Awaitable[StoredMessage],
    stored_after: int,
) -> Result:
    try:
        stored = await storing
    except NoSuchUser:
        raise RequestError(ErrorCode.NO_SUCH_USER, f"to: no user has id {request.to}") from None
    except Blocked:
        # Says nothing more than the code about the recipient, who blocked the sender.
        raise RequestError(
            ErrorCode.BLOCKED, "to: refused: one of you has blocked the other"
        ) from None
    event = MessageEvent(
        stored.message_id, UserRef(user.id, user.name), request.to, request.text, stored.ts, False
    )
    return sent(caller, stored, event, stored_after)


def sent(caller: Caller, stored: StoredMessage, event: DeliveredEvent, stored_after: int) -> Result:
    """The message is durable now: hand it to its recipients held by this node, and
    wake the others wherever they are (``stored_after``: ``Router.mark()`` taken before
    the store was asked). Never waits: the wake-ups of other nodes' users
    go out with the relay's next batch, which a stopping node still sends before it
    lets go of Redis. A retried send (its ``cid`` used already) only wakes: its
    recipients read the first attempt's message from the store."""
    if stored.created:
        caller.services.metrics.stored(
            "group" if isinstance(event, GroupMessageEvent) else "direct"
        )
    if stored.recipients:
        if stored.created:
            caller.services.router.deliver(stored.recipients, event, stored_after)
        else:
            caller.services.router.wake(stored.recipients)
    return Sent(stored.message_id, stored.ts)
