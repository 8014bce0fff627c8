"""One-to-one messages: ``send``."""

from __future__ import annotations

from collections.abc import Awaitable

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import (
    DeliveredEvent,
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
    reserved = caller.services.fanout.reserve(user.id)

    def stored_now(stored: StoredMessage) -> None:
        event = MessageEvent(
            stored.message_id,
            UserRef(user.id, user.name),
            request.to,
            request.text,
            stored.ts,
            False,
        )
        hand_off(caller, user, stored, event, reserved)

    storing = caller.services.store.store_direct(
        user.id, request.to, request.text, request.cid, stored_now
    )
    return _send_stored(caller, user, request, storing, reserved)


async def _send_stored(
    caller: Caller,
    user: UserRecord,
    request: Send,
    storing: Awaitable[StoredMessage],
    reserved: int,
) -> Result:
    try:
        stored = await stored_or_refunded(caller, user, storing, reserved)
    except NoSuchUser:
        raise RequestError(ErrorCode.NO_SUCH_USER, f"to: no user has id {request.to}") from None
    except Blocked:
        # Says nothing more than the code about the recipient, who blocked the sender.
        raise RequestError(
            ErrorCode.BLOCKED, "to: refused: one of you has blocked the other"
        ) from None
    return Sent(stored.message_id, stored.ts)


async def stored_or_refunded(
    caller: Caller, user: UserRecord, storing: Awaitable[StoredMessage], reserved: int
) -> StoredMessage:
    """The stored message; a send that stored nothing gives its fan-out back."""
    try:
        return await storing
    except BaseException:
        caller.services.fanout.refund(user.id, reserved)
        raise


def hand_off(
    caller: Caller,
    user: UserRecord,
    stored: StoredMessage,
    event: DeliveredEvent,
    reserved: int,
) -> None:
    """The message is durable now: hand it to its recipients' devices held by this node,
    wake the others wherever they are, and copy it to the sender's other devices that
    are logged in. Called by the store right after the commit, each send of the batch
    in its order (``Store.store_direct``); never waits: what other nodes must hear goes
    out with the relay's next batch, which a stopping node still sends before it lets
    go of Redis. A retried send (its ``cid`` used already) only wakes its stream again:
    devices read the first attempt's message from the store (one that has it already
    ignores it)."""
    services = caller.services
    router = services.router
    if not stored.created:
        services.fanout.refund(user.id, reserved)  # the earlier attempt was charged
        if stored.group_id is not None:
            router.wake_group(stored.group_id)
        elif stored.recipient_id is not None:
            router.wake([stored.recipient_id])
        return
    services.metrics.stored("group" if stored.group_id is not None else "direct")
    # What it causes, against what it reserved (the next send waits while in debt).
    if stored.group_id is not None:
        services.fanout.settle(
            user.id,
            reserved,
            max(1, stored.member_count - 1),
            (stored.group_id, stored.member_count),
        )
        router.deliver_group(stored.group_id, event, stored.pos)
    else:
        services.fanout.settle(user.id, reserved, 1)
        if stored.recipient_id is not None:
            router.deliver_direct(stored.recipient_id, event, stored.pos)
    if stored.recipient_id != user.id:
        # The sender's other devices see what it wrote (not kept for them); a
        # message to oneself is in the sender's own inbox, for every device.
        router.push(user.id, event, skip=caller.holder)
