"""Cutting the ``login`` result to the frame limit (version 1.1).

A login shows the user's friends and groups with their members. Without a bound,
300 accounts that add someone as a friend make that user's login reply larger
than any client accepts, and so does one group of thousands. So when everything
does not fit, the lists are cut, each keeping its lowest ids in ascending order,
and every cut is marked: ``friends_more`` / ``groups_more`` at the top level,
``members_more`` with ``member_count`` in a group. The paged requests
(``friends``, ``groups``, ``group_members``) give the rest.

How the room is shared (the protocol leaves it to the server):

1. The friend list and the groups (with their members) split the room evenly;
   what one of them does not need goes to the other. So many friends never push
   out a handful of small groups, nor many groups the friends.
2. Within the groups' share, groups come first (lowest ids), without members.
3. What is left goes to the members, shared evenly among the groups shown, a
   small group's unused share going to the larger ones. A client thus sees every
   group it can, and the first members of each.

Sizes are measured in the V1 encoding, item by item; the whole result is then
measured once more, and cut further should the arithmetic ever be wrong, so the
bound holds whatever the accounting.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .bounded import REPLY_BUDGET, fit_items, json_size, water_fill
from .messages import GroupDetail, LoginResult, UserPresence

MIN_FRIEND_BYTES = len('{"id":1,"name":"a","online":true},')
MIN_MEMBER_BYTES = len('{"id":1,"name":"a","role":"normal"},')
MIN_GROUP_BYTES = len('{"id":1,"name":"a","description":"","role":"normal","members":[]},')
MOST_FRIENDS = REPLY_BUDGET // MIN_FRIEND_BYTES + 1
"""No login reply can show more friends than this: the store reads no more."""
MOST_GROUPS = REPLY_BUDGET // MIN_GROUP_BYTES + 1
MOST_MEMBERS = REPLY_BUDGET // MIN_MEMBER_BYTES + 1
"""Members of all groups together."""

_TOP_MARKS = len(',"friends_more":true,"groups_more":true')


# --- how much to read -----------------------------------------------------------------
# A login reads no more from the database than the reply could show. The bounds follow
# the sharing below from the smallest possible items: whatever the groups are sure to
# claim is room the friends cannot have, and the other way round.


def friends_to_read(member_counts: Sequence[int], budget: int = REPLY_BUDGET) -> int:
    """The most friends a reply can show beside groups with these member counts."""
    groups_claim = min(budget // 2, _least_groups_size(member_counts))
    return min(MOST_FRIENDS, (budget - groups_claim) // MIN_FRIEND_BYTES + 1)


def members_to_read(
    friends_read: int, member_counts: Sequence[int], budget: int = REPLY_BUDGET
) -> int:
    """The most members (of all groups) a reply can show beside ``friends_read`` friends."""
    friends_claim = min(budget // 2, friends_read * MIN_FRIEND_BYTES)
    skeletons = len(member_counts) * MIN_GROUP_BYTES
    return max(0, min(MOST_MEMBERS, (budget - friends_claim - skeletons) // MIN_MEMBER_BYTES + 1))


def _least_groups_size(member_counts: Sequence[int]) -> int:
    """The fewest bytes these groups take with all their members."""
    return sum(MIN_GROUP_BYTES + count * MIN_MEMBER_BYTES for count in member_counts)


def cut_login_result(
    base: LoginResult,
    friends: Sequence[UserPresence],
    groups: Sequence[GroupDetail],
    *,
    friends_more: bool = False,
    groups_more: bool = False,
    budget: int = REPLY_BUDGET,
) -> LoginResult:
    """``base`` (every field set but the lists, which are empty) with as much of
    ``friends`` and ``groups`` as fits in ``budget`` bytes.

    ``friends`` and ``groups`` are ascending by id; each group carries its first
    members (ascending) and its ``member_count``. ``friends_more``/``groups_more``:
    the store holds more than was given."""
    whole = attrs.evolve(
        base,
        friends=list(friends),
        groups=[attrs.evolve(g, members_more=None, member_count=None) for g in groups],
    )
    complete = not friends_more and not groups_more and all(_all_members(g) for g in groups)
    if complete and json_size(whole) <= budget:
        return whole
    result = _share(base, friends, groups, friends_more, groups_more, budget)
    while json_size(result) > budget:  # never, unless the accounting above is wrong
        result = _smaller(result)
    return result


def _all_members(group: GroupDetail) -> bool:
    return group.member_count is None or len(group.members) >= group.member_count


def _share(
    base: LoginResult,
    friends: Sequence[UserPresence],
    groups: Sequence[GroupDetail],
    friends_more: bool,
    groups_more: bool,
    budget: int,
) -> LoginResult:
    room = budget - json_size(base) - _TOP_MARKS
    friend_sizes = [json_size(friend) for friend in friends]
    skeletons = [_skeleton(group) for group in groups]
    skeleton_sizes = [json_size(skeleton) for skeleton in skeletons]
    member_sizes = [[json_size(member) for member in group.members] for group in groups]
    friends_share, groups_share = water_fill(
        [
            _array_size(friend_sizes),
            _array_size(skeleton_sizes) + sum(map(_array_body, member_sizes)),
        ],
        room,
    )
    shown_friends = fit_items(friends, friend_sizes, friends_share)
    shown_groups = fit_items(groups, skeleton_sizes, groups_share)
    members_room = groups_share - _array_size(skeleton_sizes[:shown_groups])
    allowances = water_fill(
        [_array_body(sizes) for sizes in member_sizes[:shown_groups]], members_room
    )
    shown_members = [
        fit_items(group.members, sizes, allowance + 2)
        for group, sizes, allowance in zip(groups, member_sizes, allowances, strict=False)
    ]
    # What the even shares left unused (each group's last member that did not quite fit)
    # goes round again, a member at a time, lowest group ids first.
    left = members_room - sum(
        _array_body(sizes[:shown])
        for sizes, shown in zip(member_sizes, shown_members, strict=False)
    )
    grew = True
    while grew:
        grew = False
        for index, shown in enumerate(shown_members):
            sizes = member_sizes[index]
            if shown < len(sizes) and sizes[shown] + (1 if shown else 0) <= left:
                left -= sizes[shown] + (1 if shown else 0)
                shown_members[index] += 1
                grew = True
    cut_groups = []
    for group, shown in zip(groups, shown_members, strict=False):
        count = group.member_count if group.member_count is not None else len(group.members)
        if shown < count:
            cut_groups.append(
                attrs.evolve(
                    group, members=group.members[:shown], members_more=True, member_count=count
                )
            )
        else:
            cut_groups.append(attrs.evolve(group, members_more=None, member_count=None))
    return attrs.evolve(
        base,
        friends=list(friends[:shown_friends]),
        groups=cut_groups,
        friends_more=True if friends_more or shown_friends < len(friends) else None,
        groups_more=True if groups_more or shown_groups < len(groups) else None,
    )


def _skeleton(group: GroupDetail) -> GroupDetail:
    """The group without members, with room for its cut marks."""
    count = group.member_count if group.member_count is not None else len(group.members)
    return attrs.evolve(group, members=[], members_more=True, member_count=count)


def _array_size(sizes: Sequence[int]) -> int:
    """Bytes of a JSON array of items of these sizes."""
    return 2 + _array_body(sizes)


def _array_body(sizes: Sequence[int]) -> int:
    """Bytes the items add inside an array's brackets, commas included."""
    return sum(sizes) + max(0, len(sizes) - 1)


def _smaller(result: LoginResult) -> LoginResult:
    """Half of the longest list, marked as cut."""
    members = [len(group.members) for group in result.groups]
    if result.friends and len(result.friends) >= max(members, default=0):
        return attrs.evolve(
            result, friends=result.friends[: len(result.friends) // 2], friends_more=True
        )
    if any(members):
        widest = members.index(max(members))
        groups = list(result.groups)
        group = groups[widest]
        groups[widest] = attrs.evolve(
            group,
            members=group.members[: len(group.members) // 2],
            members_more=True,
            member_count=group.member_count or len(group.members),
        )
        return attrs.evolve(result, groups=groups)
    return attrs.evolve(result, groups=result.groups[: len(result.groups) // 2], groups_more=True)
