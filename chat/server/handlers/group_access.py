"""The protocol's answers when a request names a group it may not use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chat.protocol import ErrorCode, RequestError
from chat.store import NoSuchGroup, NotAMember


@contextmanager
def group_access(group_id: int) -> Iterator[None]:
    """Turn the store's ``NoSuchGroup`` and ``NotAMember`` for ``group_id`` into the
    request errors ``no_such_group`` and ``not_a_member`` (naming the field)."""
    try:
        yield
    except NoSuchGroup:
        raise RequestError(
            ErrorCode.NO_SUCH_GROUP, f"group_id: no group has id {group_id}"
        ) from None
    except NotAMember:
        raise RequestError(
            ErrorCode.NOT_A_MEMBER, f"group_id: you are not in group {group_id}"
        ) from None
