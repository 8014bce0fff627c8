"""What a ``login`` reply shows: friends and groups, read with bounds and cut to the
frame limit (``chat.protocol.login_cut``). Kept apart from the login handler, which
decides *whether* the user logs in; this decides what the user sees."""

from __future__ import annotations

import attrs

from chat.protocol.bounded import REPLY_BUDGET
from chat.protocol.login_cut import (
    MOST_GROUPS,
    cut_login_result,
    friends_to_read,
    members_to_read,
)
from chat.protocol.messages import GroupDetail, LoginResult, Member, UserPresence, UserRef
from chat.store import LoginReads, Store, UserRecord

from ..router import Router

LATER_FIELDS_BYTES = 640
"""Room left in the cut result for top-level fields set after it is built (a session
token of up to 256 characters, a device name of up to 64): the cut keeps the reply
within the limit with them."""


READS = LoginReads(groups=MOST_GROUPS, friends=friends_to_read, members=members_to_read)
"""No more rows than the reply could show."""


async def login_result(store: Store, router: Router, user: UserRecord, offline: int) -> LoginResult:
    """The logged-in user's result, never over the frame limit; ``offline``: the
    messages kept for the device (``Caller.start_device``)."""
    snapshot = await store.login_snapshot(user.id, READS)
    # Cut as if every friend were offline (``false`` is the longer value), then ask the
    # cluster only about the friends shown: a few hundred ids, not thousands.
    cut = cut_login_result(
        LoginResult(user=UserRef(user.id, user.name), friends=[], groups=[], offline=offline),
        [UserPresence(f.id, f.name, False) for f in snapshot.friends],
        [
            GroupDetail(
                id=m.group.id,
                name=m.group.name,
                description=m.group.description,
                role=m.role,
                members=[Member(x.id, x.name, x.role) for x in m.members],
                member_count=m.member_count,
            )
            for m in snapshot.groups
        ],
        friends_more=snapshot.friends_more,
        groups_more=snapshot.groups_more,
        budget=REPLY_BUDGET - LATER_FIELDS_BYTES,
    )
    online = await router.online([friend.id for friend in cut.friends])
    return attrs.evolve(cut, friends=[attrs.evolve(f, online=f.id in online) for f in cut.friends])
