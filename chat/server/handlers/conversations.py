"""Conversations (protocol 1.2): ``conversations``, ``read`` and ``typing``.

``read`` moves a marker in the store (``chat.store.conversations``) and then tells,
as transient events routed like any other push (on any node): the user's other
devices (``read`` with ``with`` or ``group_id``), and in a one-to-one conversation
the other user's devices (a receipt, ``read`` with ``by``) unless either blocked
the other. A marker that did not move tells nobody. ``typing`` is checked against
the store (friends, not blocked) and pushed; it is never stored.
"""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.bounded import page_fit
from chat.protocol.messages import (
    ConversationItem,
    ConversationsPage,
    Empty,
    ListConversations,
    MarkRead,
    ReadEvent,
    Result,
    Typing,
    TypingEvent,
    UserRef,
)
from chat.store import ConversationRecord, NoSuchMessage, NoSuchUser, ReadMarked

from .contacts import no_such_user
from .group_access import group_access
from .history import history_item
from .registry import Caller, handler, me


@handler(ListConversations)
async def conversations(caller: Caller, request: ListConversations) -> Result:
    user = me(caller)
    page = await caller.services.store.conversations(user.id, request.before, request.limit)
    items, more = page_fit(
        [conversation_item(record) for record in page.items],
        page.more,
        fixed=ConversationsPage([], True),
    )
    return ConversationsPage(items, more)


def conversation_item(record: ConversationRecord) -> ConversationItem:
    return ConversationItem(
        last=history_item(record.last),
        unread=record.unread,
        read=record.read,
        with_=None if record.peer is None else UserRef(record.peer.id, record.peer.name),
        group=None if record.group is None else UserRef(record.group.id, record.group.name),
        peer_read=record.peer_read,
    )


def no_such_message(message_id: int) -> RequestError:
    return RequestError(
        ErrorCode.NO_SUCH_MESSAGE,
        f"message_id: {message_id} is not a message of this conversation",
    )


@handler(MarkRead)
async def read(caller: Caller, request: MarkRead) -> Result:
    user = me(caller)
    services = caller.services
    marked: ReadMarked
    try:
        if request.with_ is not None:
            try:
                marked = await services.store.mark_read_direct(
                    user.id, request.with_, request.message_id
                )
            except NoSuchUser:
                raise no_such_user(request.with_, "with") from None
        else:
            assert request.group_id is not None  # the codec checked: exactly one of them
            with group_access(request.group_id):
                marked = await services.store.mark_read_group(
                    user.id, request.group_id, request.message_id
                )
    except NoSuchMessage:
        raise no_such_message(request.message_id) from None
    if marked.moved:
        mine = ReadEvent(request.message_id, with_=request.with_, group_id=request.group_id)
        services.router.push(user.id, mine, skip=caller.holder)
        if marked.receipt and marked.peer is not None:
            receipt = ReadEvent(request.message_id, by=UserRef(user.id, user.name))
            services.router.push(marked.peer.id, receipt)
    return Empty()


@handler(Typing)
async def typing(caller: Caller, request: Typing) -> Result:
    """Dropped (still ``ok``) towards a user who is not a friend or has blocked this one."""
    user = me(caller)
    services = caller.services
    try:
        allowed = await services.store.typing_allowed(user.id, request.with_)
    except NoSuchUser:
        raise no_such_user(request.with_, "with") from None
    if allowed:
        event = TypingEvent(UserRef(user.id, user.name), request.active)
        services.router.push(request.with_, event)
    return Empty()
