"""Who is connected to this node, and how to reach users' devices on other nodes.

The tables of local sessions (user -> its devices' sessions here; group -> the
sessions whose device follows its log) are touched only from the trio thread (the
broker's notices are handed to ``on_notice`` there too), so they need no lock.
Sessions here are reached by direct call; other nodes through the ``Relay``, in
batches: a user may have devices here and elsewhere at once, so a message for a
user (or a group) is handed to the local sessions *and* routed to the other nodes.

While the broker cannot confirm this node's presence leases (``Pause``), the
node is *paused*: its sessions deliver nothing and answer requests with
``unavailable`` until ``Resume``, so that a user claimed elsewhere meanwhile is
never served by two connections at once.

Presence events about one user may reach this node by different paths (directly
from this node's announcer, through Redis from others') and cross on the way:
the router remembers the newest version it handed out per user and drops older
ones, so each friend's last event is the newest state.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import trio

from chat.broker import (
    Broker,
    BrokerUnavailable,
    Evict,
    GroupWake,
    MemoryBroker,
    Notice,
    Pause,
    PresencePush,
    Push,
    Resume,
    Resync,
    Wake,
)
from chat.store.streams import INBOX

from .relay import Relay

if TYPE_CHECKING:
    from chat.protocol.messages import DeliveredEvent, Event

    from .user_session import UserSession

log = logging.getLogger(__name__)

PRESENCE_VERSIONS = 100_000
"""Users whose newest presence version is remembered (the most recently changed):
announcements cross within seconds, so forgetting the oldest costs nothing."""
GROUP_MARKS = 100_000
"""Groups whose last wake-up is remembered (see ``group_woken_since``)."""


class Router:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.relay = Relay(broker)
        self._alone = isinstance(broker, MemoryBroker)
        """No other node can hold anyone (the in-process broker): nothing to relay."""
        self._local: dict[int, dict[str, UserSession]] = {}
        """User id -> the holder of each of its devices' sessions on this node."""
        self._followers: dict[int, set[UserSession]] = {}
        """Group id -> the local sessions whose device follows its log."""
        self.paused = False
        """The broker cannot confirm this node's leases: sessions wait (see the module)."""
        self._resumed = trio.Event()
        self._resumed.set()
        self._marks = 0
        self._group_marks: OrderedDict[int, int] = OrderedDict()
        """Group id -> ``mark()`` when it was last woken here (the newest groups)."""
        self._forgotten_mark = 0
        """The newest mark of a group dropped from ``_group_marks``."""
        self._presence_versions: OrderedDict[int, int] = OrderedDict()
        """User id -> the newest presence version handed to sessions here."""

    @property
    def node_id(self) -> str:
        return self.broker.node_id

    # --- who is here ------------------------------------------------------------------

    def attach(self, user_id: int, session: UserSession) -> None:
        self._local.setdefault(user_id, {})[session.holder] = session

    def detach(self, user_id: int, session: UserSession) -> None:
        devices = self._local.get(user_id)
        if devices is not None and devices.get(session.holder) is session:
            del devices[session.holder]
            if not devices:
                del self._local[user_id]
        self.unfollow(session)

    def follow(self, session: UserSession, group_ids: Iterable[int]) -> None:
        """The session's device gets these groups' messages: route their wake-ups to it."""
        for group_id in group_ids:
            self._followers.setdefault(group_id, set()).add(session)

    def unfollow(self, session: UserSession) -> None:
        for group_id in list(session.following()):
            followers = self._followers.get(group_id)
            if followers is not None:
                followers.discard(session)
                if not followers:
                    del self._followers[group_id]

    def sessions(self) -> list[UserSession]:
        return [session for devices in self._local.values() for session in devices.values()]

    def sessions_of(self, user_id: int) -> list[UserSession]:
        return list(self._local.get(user_id, {}).values())

    async def wait_live(self) -> None:
        """Return at once unless the node is paused; then when it resumes."""
        while self.paused:
            await self._resumed.wait()

    # --- notices from the broker ----------------------------------------------------------

    def on_notice(self, notice: Notice) -> None:
        """Called by the broker, in the trio thread, for every notice addressed to this node."""
        if isinstance(notice, Wake):
            for user_id in notice.user_ids:
                for session in self.sessions_of(user_id):
                    session.wake([INBOX])
        elif isinstance(notice, GroupWake):
            for group_id in notice.group_ids:
                self._note_group(group_id)
                for session in list(self._followers.get(group_id, ())):
                    session.wake([group_id])
        elif isinstance(notice, Push):
            for session in self.sessions_of(notice.user_id):
                if session.holder != notice.skip:
                    session.push(notice.event)
        elif isinstance(notice, PresencePush):
            self._deliver_presence(notice)
        elif isinstance(notice, Resync):
            for session in self.sessions():
                session.wake(None)
        elif isinstance(notice, Evict):
            evicted = self._local.get(notice.user_id, {}).get(notice.holder)
            if evicted is not None:
                log.warning(
                    "closing %s: its device of user %d logged in elsewhere while this node"
                    " could not confirm its lease",
                    notice.holder,
                    notice.user_id,
                )
                # Out of the table at once, so no wake-up or resume reaches it again.
                self.detach(notice.user_id, evicted)
                evicted.revoke()
        elif isinstance(notice, Pause):
            if not self.paused:
                self.paused = True
                self._resumed = trio.Event()
        elif isinstance(notice, Resume) and self.paused:
            self.paused = False
            self._resumed.set()
            for session in self.sessions():
                session.resume(recheck=session.holder in notice.recreated)

    # --- messages just stored -----------------------------------------------------------

    def mark(self) -> int:
        """A number larger than every one returned before (see ``group_woken_since``)."""
        self._marks += 1
        return self._marks

    def _note_group(self, group_id: int) -> None:
        self._group_marks[group_id] = self.mark()
        self._group_marks.move_to_end(group_id)
        if len(self._group_marks) > GROUP_MARKS:
            _, self._forgotten_mark = self._group_marks.popitem(last=False)

    def group_woken_since(self, mark: int, group_ids: Iterable[int]) -> list[int]:
        """Which of these groups were woken on this node after ``mark()`` returned
        ``mark``: a session that read its groups' heads then, and followed them only
        now, reads those again (it may have missed their wake-up in between)."""
        if self._forgotten_mark > mark:
            return list(group_ids)
        return [g for g in group_ids if self._group_marks.get(g, 0) > mark]

    def deliver_direct(self, recipient_id: int, event: DeliveredEvent, pos: int) -> None:
        """A one-to-one message was just stored at ``pos`` of the recipient's inbox: the
        recipient's devices on this node take it (or read it), the others are woken
        wherever they are. Never waits: the message is stored already."""
        for session in self.sessions_of(recipient_id):
            session.offer(INBOX, pos, event)
        if not self._alone:
            self.relay.wake([recipient_id])

    def deliver_group(self, group_id: int, event: DeliveredEvent, pos: int) -> None:
        """A group message was just stored at ``pos`` of the group's log: every local
        device following the group takes it (or reads it), and every other node is woken
        for the group (it knows its own followers; nobody looks up the members)."""
        self._note_group(group_id)
        for session in list(self._followers.get(group_id, ())):
            session.offer(group_id, pos, event)
        if not self._alone:
            self.relay.groups([group_id])

    def wake(self, user_ids: Iterable[int]) -> None:
        """The inboxes of these users may hold messages their devices have not read."""
        ids = list(user_ids)
        for user_id in ids:
            for session in self.sessions_of(user_id):
                session.wake([INBOX])
        if not self._alone:
            self.relay.wake(ids)

    def wake_group(self, group_id: int) -> None:
        self._note_group(group_id)
        for session in list(self._followers.get(group_id, ())):
            session.wake([group_id])
        if not self._alone:
            self.relay.groups([group_id])

    def push(self, user_id: int, event: Event, skip: str = "") -> None:
        """Send a transient event to each logged-in device of a user, wherever it is,
        except the connection ``skip``; dropped for devices that are not logged in."""
        for session in self.sessions_of(user_id):
            if session.holder != skip:
                session.push(event)
        if not self._alone:
            self.relay.push(user_id, event, skip)

    def presence(self, push: PresencePush) -> None:
        """Hand a presence event to these users' devices wherever they are: local ones
        at once, every node holding a device of theirs with the relay's next batch."""
        local = tuple(user_id for user_id in push.user_ids if user_id in self._local)
        if local:
            self._deliver_presence(PresencePush(local, push.event, push.version))
        if not self._alone:
            self.relay.presence(push)

    def _deliver_presence(self, push: PresencePush) -> None:
        """Queue the event for the local sessions it names, unless this node already
        handed out a newer one about the same user (they crossed on the way)."""
        subject = push.event.user.id
        newest = self._presence_versions.get(subject)
        if newest is not None and push.version < newest:
            return
        self._presence_versions[subject] = push.version
        self._presence_versions.move_to_end(subject)
        if len(self._presence_versions) > PRESENCE_VERSIONS:
            self._presence_versions.popitem(last=False)
        for user_id in push.user_ids:
            for session in self.sessions_of(user_id):
                session.push(push.event)

    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Which of these users are logged in (on some device) anywhere in the cluster."""
        local = {user_id for user_id in user_ids if user_id in self._local}
        rest = [user_id for user_id in user_ids if user_id not in local]
        if not rest:
            return local
        try:
            return local | set(await self.broker.locate(rest))
        except BrokerUnavailable:
            log.warning("broker unavailable: presence of %d users unknown", len(rest))
            return local
