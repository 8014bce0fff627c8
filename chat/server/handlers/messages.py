"""One-to-one messages: ``send``."""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import Result, Send, Sent
from chat.store import NoSuchUser, StoredMessage

from .registry import Caller, handler, me


@handler(Send)
async def send(caller: Caller, request: Send) -> Result:
    user = me(caller)
    try:
        stored = await caller.services.store.store_direct(
            user.id, request.to, request.text, request.cid
        )
    except NoSuchUser:
        raise RequestError(ErrorCode.NO_SUCH_USER, f"to: no user has id {request.to}") from None
    return sent(caller, stored)


def sent(caller: Caller, stored: StoredMessage) -> Result:
    """The message is durable now; wake its recipients wherever they are (without
    waiting: the wake-ups of other nodes' users go out with the relay's next batch,
    which a stopping node still sends before it lets go of Redis)."""
    if stored.recipients:
        caller.services.router.wake(stored.recipients)
    return Sent(stored.message_id, stored.ts)
