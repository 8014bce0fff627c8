"""History: ``history``, a page of one conversation from the store.

The page is cut to fit one frame: a message may take some 25 KB of JSON (4,096
code points, each escaped in the worst case), so 200 of them would not fit in the
65,536 bytes a frame may hold. A cut keeps the messages nearest the page's anchor
(the newest for ``before`` or no anchor, the oldest for ``after``), so paging on
from the page's edge still yields every message exactly once, and says ``more``.
"""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.bounded import page_fit
from chat.protocol.messages import (
    History,
    HistoryDirect,
    HistoryGroup,
    HistoryItem,
    HistoryResult,
    Result,
    UserRef,
)
from chat.store import HistoryMessage, HistoryPage, NoSuchUser

from .group_access import group_access
from .registry import Caller, handler, me


@handler(History)
async def history(caller: Caller, request: History) -> Result:
    user = me(caller)
    store = caller.services.store
    before, after, limit = request.before, request.after, request.limit
    page: HistoryPage
    if request.with_ is not None:
        try:
            page = await store.history_direct(
                user.id, request.with_, before=before, after=after, limit=limit
            )
        except NoSuchUser:
            raise RequestError(
                ErrorCode.NO_SUCH_USER, f"with: no user has id {request.with_}"
            ) from None
    else:
        assert request.group_id is not None  # the codec checked: exactly one of them
        with group_access(request.group_id):
            page = await store.history_group(
                user.id, request.group_id, before=before, after=after, limit=limit
            )
    items = [history_item(message) for message in page.messages]
    return fit_in_frame(items, page.more, keep_oldest=request.after is not None)


def history_item(message: HistoryMessage) -> HistoryItem:
    """The message as its recipients were (or will be) delivered it, without ``offline``."""
    sender = UserRef(message.sender_id, message.sender_name)
    if message.group_id is not None:
        return HistoryGroup(message.message_id, message.group_id, sender, message.body, message.ts)
    assert message.recipient_id is not None
    return HistoryDirect(message.message_id, sender, message.recipient_id, message.body, message.ts)


def fit_in_frame(items: list[HistoryItem], more: bool, *, keep_oldest: bool) -> HistoryResult:
    """As many of ``items`` (ascending) as fit in one frame, from the anchor's side."""
    ordered = items if keep_oldest else items[::-1]
    kept, more = page_fit(ordered, more, fixed=HistoryResult(messages=[], more=True))
    return HistoryResult(messages=kept if keep_oldest else kept[::-1], more=more)
