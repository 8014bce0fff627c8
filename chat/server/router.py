"""Who is connected to this node, and how to reach users on other nodes.

The table of local sessions is touched only from the trio thread (the broker's
notices are handed to ``on_notice`` there too), so it needs no lock.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from chat.broker import Broker, BrokerUnavailable, Evict, Notice, Push, Resync, Wake

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)


class Router:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._local: dict[int, Session] = {}

    @property
    def node_id(self) -> str:
        return self.broker.node_id

    def attach(self, user_id: int, session: Session) -> None:
        self._local[user_id] = session

    def detach(self, user_id: int, session: Session) -> None:
        if self._local.get(user_id) is session:
            del self._local[user_id]

    def sessions(self) -> list[Session]:
        return list(self._local.values())

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
                session.push(notice.payload)
        elif isinstance(notice, Resync):
            for session in self._local.values():
                session.wake()
        elif isinstance(notice, Evict):
            session = self._local.get(notice.user_id)
            if session is not None and session.holder == notice.holder:
                log.warning("closing %s: its user is logged in elsewhere", notice.holder)
                session.request_close()

    async def wake(self, user_ids: Iterable[int]) -> None:
        """Tell whoever holds these users that the store has messages for them.

        Local users are woken directly. A broker failure is logged, not raised: the
        messages are stored already, and nodes re-read the store when the broker returns.
        """
        remote = []
        for user_id in user_ids:
            session = self._local.get(user_id)
            if session is not None:
                session.wake()
            else:
                remote.append(user_id)
        if not remote:
            return
        try:
            by_node: dict[str, list[int]] = defaultdict(list)
            for user_id, node in (await self.broker.locate(remote)).items():
                by_node[node].append(user_id)
            for node, users in by_node.items():
                await self.broker.notify(node, Wake(tuple(users)))
        except BrokerUnavailable:
            log.warning("broker unavailable: %d recipients will be woken later", len(remote))

    async def push(self, user_id: int, payload: bytes) -> None:
        """Send a transient event to a user if online anywhere; dropped otherwise."""
        session = self._local.get(user_id)
        if session is not None:
            session.push(payload)
            return
        try:
            node = (await self.broker.locate([user_id])).get(user_id)
            if node is not None:
                await self.broker.notify(node, Push(user_id, payload))
        except BrokerUnavailable:
            log.warning("broker unavailable: an event for user %d was dropped", user_id)

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
