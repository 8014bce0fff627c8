"""What the client knows: who is logged in, friends, groups, and every name seen so far.

Replies and events reach this module already typed (the app decodes them with
``chat.protocol.codec.decode_server_message``), so it reads attributes, not
dictionary keys. No I/O.
"""

from __future__ import annotations

import attrs

from chat.protocol.messages import (
    GroupInfo,
    GroupSummary,
    LoginResult,
    Role,
    UserPresence,
    UserRef,
)

from .commands import UsageError


@attrs.frozen
class Group:
    id: int
    name: str
    description: str
    role: Role


@attrs.frozen
class Conversation:
    """Where a line without ``/`` goes: a user (``group=False``) or a group."""

    id: int
    name: str
    group: bool


@attrs.frozen
class Completions:
    """An immutable snapshot for the completer, which runs in the terminal's thread."""

    friends: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@attrs.define
class Known:
    me: UserRef | None = None
    device: str | None = None
    """The device of this login (protocol 1.2; ``""`` for a login that named none)."""
    devices: tuple[str, ...] = ()
    """The user's device names, as the last ``/devices`` listed them (for completion)."""
    friends: dict[int, UserPresence] = attrs.Factory(dict)
    groups: dict[int, Group] = attrs.Factory(dict)
    names: dict[str, int] = attrs.Factory(dict)
    """Every user name seen (login reply, ``find_user``, senders): the name -> id cache."""
    by_id: dict[int, str] = attrs.Factory(dict)
    conversation: Conversation | None = None
    conversation_of: int | None = None
    """The user whose conversation it is: it survives a reconnect, not a change of user."""

    def learn(self, user_id: int, name: str) -> None:
        self.names[name] = user_id
        self.by_id[user_id] = name

    def name_of(self, user_id: int) -> str | None:
        return self.by_id.get(user_id)

    def logged_in(self, result: LoginResult) -> None:
        if self.conversation_of != result.user.id:
            self.conversation = None
            self.devices = ()
        self.conversation_of = result.user.id
        self.me = result.user
        self.device = result.device
        self.learn(result.user.id, result.user.name)
        self.friends = {friend.id: friend for friend in result.friends}
        self.groups = {
            group.id: Group(group.id, group.name, group.description, group.role)
            for group in result.groups
        }
        for friend in result.friends:
            self.learn(friend.id, friend.name)
        for group in result.groups:
            for member in group.members:
                self.learn(member.id, member.name)

    def logged_out(self) -> None:
        """Forget what belonged to the session; names and ids stay true and stay cached."""
        self.me = None
        self.device = None
        self.devices = ()
        self.friends = {}
        self.groups = {}
        self.conversation = None
        self.conversation_of = None

    def disconnected(self) -> None:
        """Nobody is logged in on the next connection (yet); if the same user logs in
        again there, lines without ``/`` keep going where they went."""
        self.me = None
        self.device = None

    def befriended(self, friend: UserPresence) -> None:
        self.friends[friend.id] = friend
        self.learn(friend.id, friend.name)

    def unfriended(self, user_id: int) -> None:
        """A friendship ended (``/unfriend``, ``/block``, or the other's ``friend_removed``)."""
        self.friends.pop(user_id, None)

    def more_friends(self, friends: list[UserPresence]) -> None:
        """A page of the friend list (``friends``): the login reply was cut, or a refresh."""
        for friend in friends:
            self.befriended(friend)

    def more_groups(self, groups: list[GroupSummary]) -> None:
        """A page of the group list (``groups``), when the login reply was cut."""
        for group in groups:
            self.groups[group.id] = Group(group.id, group.name, group.description, group.role)

    def presence_changed(self, user: UserRef, online: bool) -> bool:
        """A friend's ``presence`` event: keep the friend list live. True when it
        changes what was known (events may repeat what the login reply said)."""
        self.learn(user.id, user.name)
        known = self.friends.get(user.id)
        self.friends[user.id] = UserPresence(user.id, user.name, online)
        return known is None or known.online != online

    def seen(self, user: UserPresence) -> None:
        """A fresh ``find_user`` answer: cache the name and refresh a friend's presence."""
        self.learn(user.id, user.name)
        if user.id in self.friends:
            self.friends[user.id] = user

    def joined(self, group: GroupInfo, role: Role) -> None:
        self.groups[group.id] = Group(group.id, group.name, group.description, role)

    def group_name(self, group_id: int) -> str:
        group = self.groups.get(group_id)
        return group.name if group is not None else f"#{group_id}"

    def resolve_group(self, text: str) -> int:
        """A group by ``#id``, by the name of one of your groups, or by a bare id."""
        if text.startswith("#") and text[1:].isdigit():
            return int(text[1:])
        matches = [group.id for group in self.groups.values() if group.name == text]
        if not matches:
            folded = text.casefold()
            matches = [g.id for g in self.groups.values() if g.name.casefold() == folded]
        if len(matches) == 1:
            return matches[0]
        if text.isdigit() and int(text) > 0:
            return int(text)
        if matches:
            raise UsageError(f"several of your groups are called {text!r}; use its #id")
        raise UsageError(f"you are in no group called {text!r} (/groups lists yours)")

    def completions(self) -> Completions:
        friends = sorted((f.name for f in self.friends.values()), key=str.casefold)
        others = sorted((n for n in self.names if n not in friends), key=str.casefold)
        groups = sorted((g.name for g in self.groups.values()), key=str.casefold)
        devices = sorted((d for d in self.devices if d != self.device), key=str.casefold)
        return Completions(tuple(friends), tuple(others), tuple(groups), tuple(devices))
