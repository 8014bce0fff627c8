"""Who is connected to this node, and how to reach users on other nodes.

The table of local sessions is touched only from the trio thread (the broker's
notices are handed to ``on_notice`` there too), so it needs no lock. Users held
here are woken by direct call; the others through the ``Relay``, in batches.

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
    Notice,
    Pause,
    PresencePush,
    Push,
    Resume,
    Resync,
    Wake,
)

from .relay import Relay

if TYPE_CHECKING:
    from chat.protocol.messages import DeliveredEvent, Event

    from .user_session import UserSession

log = logging.getLogger(__name__)

PRESENCE_VERSIONS = 100_000
"""Users whose newest presence version is remembered (the most recently changed):
announcements cross within seconds, so forgetting the oldest costs nothing."""


class Router:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.relay = Relay(broker)
        self._local: dict[int, UserSession] = {}
        self.paused = False
        """The broker cannot confirm this node's leases: sessions wait (see the module)."""
        self._resumed = trio.Event()
        self._resumed.set()
        self._marks = 0
        self._presence_versions: OrderedDict[int, int] = OrderedDict()
        """User id -> the newest presence version handed to sessions here."""

    @property
    def node_id(self) -> str:
        return self.broker.node_id

    def attach(self, user_id: int, session: UserSession) -> None:
        self._local[user_id] = session

    def detach(self, user_id: int, session: UserSession) -> None:
        if self._local.get(user_id) is session:
            del self._local[user_id]

    def sessions(self) -> list[UserSession]:
        return list(self._local.values())

    async def wait_live(self) -> None:
        """Return at once unless the node is paused; then when it resumes."""
        while self.paused:
            await self._resumed.wait()

    def on_notice(self, notice: Notice) -> None:
        """Called by the broker, in the trio thread, for every notice addressed to this node."""
        if isinstance(notice, Wake):
            for user_id in notice.user_ids:
                session = self._local.get(user_id)
                if session is not None:
                    session.wake()
        elif isinstance(notice, Push):
            session = self._local.get(notice.user_id)
            if session is not None:
                session.push(notice.event)
        elif isinstance(notice, PresencePush):
            self._deliver_presence(notice)
        elif isinstance(notice, Resync):
            for session in self._local.values():
                session.wake()
        elif isinstance(notice, Evict):
            session = self._local.get(notice.user_id)
            if session is not None and session.holder == notice.holder:
                log.warning(
                    "closing %s: user %d logged in elsewhere while this node could not "
                    "confirm its lease",
                    notice.holder,
                    notice.user_id,
                )
                # Out of the table at once, so no wake-up or resume reaches it again.
                del self._local[notice.user_id]
                session.revoke()
        elif isinstance(notice, Pause):
            if not self.paused:
                self.paused = True
                self._resumed = trio.Event()
        elif isinstance(notice, Resume) and self.paused:
            self.paused = False
            self._resumed.set()
            for user_id, session in self._local.items():
                session.resume(reread=user_id in notice.recreated)

    def wake(self, user_ids: Iterable[int]) -> None:
        """Tell whoever holds these users that the store has messages for them.

        Local users are woken at once; the others with the relay's next batch. Never
        waits: the messages are stored already, and a lost wake-up only delays them.
        """
        remote = []
        for user_id in user_ids:
            session = self._local.get(user_id)
            if session is not None:
                session.wake()
            else:
                remote.append(user_id)
        if remote:
            self.relay.wake(remote)

    def mark(self) -> int:
        """A number larger than every one returned before: what happened before and
        after a moment on this node (a read of the store began, a send was made)."""
        self._marks += 1
        return self._marks

    def deliver(self, user_ids: Iterable[int], event: DeliveredEvent, stored_after: int) -> None:
        """A message was just stored for these users (handed to the store after
        ``mark()`` returned ``stored_after``): a session of this node takes it straight
        into its outbox when it can (see ``UserSession.offer``), or is woken to read it
        from the store; users held elsewhere are woken with the relay."""
        remote = []
        for user_id in user_ids:
            session = self._local.get(user_id)
            if session is None:
                remote.append(user_id)
            elif not session.offer(event, stored_after):
                session.wake()
        if remote:
            self.relay.wake(remote)

    def push(self, user_id: int, event: Event) -> None:
        """Send a transient event to a user if online anywhere; dropped otherwise."""
        session = self._local.get(user_id)
        if session is not None:
            session.push(event)
        else:
            self.relay.push(user_id, event)

    def presence(self, push: PresencePush) -> None:
        """Hand a presence event to each of these users who is online anywhere: local
        ones at once, the others with the relay's next batch."""
        local = tuple(user_id for user_id in push.user_ids if user_id in self._local)
        if local:
            self._deliver_presence(PresencePush(local, push.event, push.version))
        if len(local) < len(push.user_ids):
            remote = tuple(user_id for user_id in push.user_ids if user_id not in self._local)
            self.relay.presence(PresencePush(remote, push.event, push.version))

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
            session = self._local.get(user_id)
            if session is not None:
                session.push(push.event)

    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Which of these users are logged in anywhere in the cluster."""
        local = {user_id for user_id in user_ids if user_id in self._local}
        rest = [user_id for user_id in user_ids if user_id not in local]
        if not rest:
            return local
        try:
            return local | set(await self.broker.locate(rest))
        except BrokerUnavailable:
            log.warning("broker unavailable: presence of %d users unknown", len(rest))
            return local
