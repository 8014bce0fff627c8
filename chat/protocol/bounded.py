"""Keeping every frame the server sends within the protocol's 65,536-byte limit.

Version 1.1 promises that no reply or event is larger than a client may send.
Most replies are small by construction (their fields have bounded lengths; see
tests/test_frame_limits.py, which checks the largest possible one of each kind).
Lists are not: a user may have thousands of friends, and a name may take 200
bytes. So paged results (``friends``, ``groups``, ``group_members``,
``blocked``) hold fewer items than asked when more would not fit, and say
``more: true``; the ``login`` result is cut (``chat.protocol.login_cut``).

Sizes are those of the V1 JSON encoding (compact separators, UTF-8, no ASCII
escaping), measured per item with the very function that encodes frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .codec import dumps, unstructure
from .framing import MAX_LINE_BYTES
from .messages import Member, UserPresence, UserRef

T = TypeVar("T")

ENVELOPE_BYTES = 512
"""Kept free in every reply for ``"type":"ok"`` and the largest ``rid`` (64 characters,
each at most 6 bytes as a JSON escape) and its key."""

REPLY_BUDGET = MAX_LINE_BYTES - ENVELOPE_BYTES
"""What a reply's result fields may take."""


def json_size(value: Any) -> int:
    """Bytes of ``value`` (a message value or plain JSON values) as V1 writes it."""
    sizer = _SIZERS.get(type(value))
    if sizer is not None:
        return sizer(value)
    return len(dumps(unstructure(value)))


def _string_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


# The list items a login has thousands of, measured without building their JSON
# (about four times faster; tests/test_frame_limits.py checks them against json_size's
# general path). Each is the size of the item with id 0 and an empty name, plus
# what its id's digits and its name add.
_PRESENCE = len(b'{"id":0,"name":"","online":false}')
_MEMBER = len(b'{"id":0,"name":"","role":""}')
_USER = len(b'{"id":0,"name":""}')
_SIZERS: dict[type, Callable[[Any], int]] = {
    UserPresence: lambda v: (
        _PRESENCE + len(str(v.id)) - 1 + _string_size(v.name) - 2 - (1 if v.online else 0)
    ),
    Member: lambda v: _MEMBER + len(str(v.id)) - 1 + _string_size(v.name) - 2 + len(v.role),
    UserRef: lambda v: _USER + len(str(v.id)) - 1 + _string_size(v.name) - 2,
}


def generic_json_size(value: Any) -> int:
    """``json_size`` without the shortcuts (to check them)."""
    return len(dumps(unstructure(value)))


def fit_items(items: Sequence[T], sizes: Sequence[int], budget: int) -> int:
    """How many of ``items``, from the first, fit in ``budget`` bytes as a JSON array
    (brackets and commas counted)."""
    used = 2  # []
    for count, size in enumerate(sizes):
        used += size + (1 if count else 0)
        if used > budget:
            return count
    return len(items)


def page_fit(
    items: Sequence[T], more: bool, *, fixed: Any, budget: int = REPLY_BUDGET
) -> tuple[list[T], bool]:
    """The longest prefix of ``items`` whose array, beside the result's other fields
    (``fixed``: the result with an empty list and ``more: true``), fits in ``budget``;
    and the page's ``more`` (true also when items were left out here)."""
    room = budget - json_size(fixed) + 2  # the empty list's brackets are counted twice
    sizes = [json_size(item) for item in items]
    count = fit_items(items, sizes, room)
    return list(items[:count]), more or count < len(items)


def water_fill(demands: Sequence[int], total: int) -> list[int]:
    """Share ``total`` among consumers fairly: each gets what it asks or an equal share
    of what is left, whichever is less; what a small one leaves goes to the others."""
    shares = [0] * len(demands)
    left = max(0, total)
    order = sorted(range(len(demands)), key=lambda i: demands[i])
    for position, index in enumerate(order):
        share = min(max(0, demands[index]), left // (len(demands) - position))
        shares[index] = share
        left -= share
    return shares
