"""Wake-ups and events for users (and groups) on other nodes, sent in batches.

A message to a user held by another node must wake that node. Doing it per
message (a presence look-up and a publish, each a round trip from a worker
thread) made a message that crosses nodes cost three to four times a local one.
The relay queues instead: one task takes everything queued since its last
batch and hands it to ``Broker.route``, which looks the users up and sends each
node one message for the whole batch. While a batch is out, the next one
gathers, so the busier the node, the larger the batches.

A wake-up is only a hint (the message is in the store already), so nobody waits
for the relay: a sender gets its ``ok`` once its message is stored. If a batch
cannot be sent (Redis is down), it is dropped with a warning: the broker
announces a ``Resync`` to every node once Redis answers again, and every
session re-reads the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from chat.broker import Broker, BrokerUnavailable, PresencePush, Push
from chat.protocol.messages import Event

log = logging.getLogger(__name__)

MAX_PUSHES = 10_000
"""Events queued for other nodes at most; more are dropped (they are never kept anyway)."""
MAX_PRESENCE = 10_000
"""Presence events (each for many friends) queued for other nodes at most."""


class Relay:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._wake: dict[int, None] = {}
        """Users to wake, in the order asked (a dict as an ordered set)."""
        self._groups: dict[int, None] = {}
        """Groups to wake on every other node."""
        self._push: list[Push] = []
        self._presence: list[PresencePush] = []
        self._more = trio.Event()
        self._busy = False
        self._idle = trio.Event()
        self._idle.set()

    def wake(self, user_ids: Iterable[int]) -> None:
        """Wake these users wherever they are held, with the next batch."""
        self._wake.update(dict.fromkeys(user_ids))
        self._kick()

    def groups(self, group_ids: Iterable[int]) -> None:
        """Wake these groups on every other node, with the next batch."""
        self._groups.update(dict.fromkeys(group_ids))
        self._kick()

    def push(self, user_id: int, event: Event, skip: str = "") -> None:
        """Hand an event to this user's devices wherever they are held (but the
        connection ``skip``), with the next batch."""
        if len(self._push) >= MAX_PUSHES:
            log.warning("too many events queued for other nodes: one for user %d dropped", user_id)
            return
        self._push.append(Push(user_id, event, skip))
        self._kick()

    def presence(self, push: PresencePush) -> None:
        """Hand a presence event to these users wherever they are held, with the next batch."""
        if len(self._presence) >= MAX_PRESENCE:
            log.warning(
                "too many presence events queued for other nodes: one about user %d dropped",
                push.event.user.id,
            )
            return
        self._presence.append(push)
        self._kick()

    def _kick(self) -> None:
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._more.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._more.wait()
            self._more = trio.Event()
            while self._wake or self._push or self._presence or self._groups:
                wake, self._wake = list(self._wake), {}
                groups, self._groups = list(self._groups), {}
                push, self._push = self._push, []
                presence, self._presence = self._presence, []
                self._busy = True
                try:
                    await self._broker.route(wake, push, presence, groups)
                except BrokerUnavailable as exc:
                    log.warning(
                        "broker unavailable: %d wake-ups, %d group wake-ups, %d events and"
                        " %d presence events not sent (%s)",
                        len(wake),
                        len(groups),
                        len(push),
                        len(presence),
                        exc,
                    )
                except Exception:
                    # A bug must cost this batch (hints only), never the node's routing.
                    log.exception("routing a batch to other nodes failed")
                finally:
                    self._busy = False
            self._idle.set()

    async def drain(self) -> None:
        """Wait until everything queued so far has been handed to the broker."""
        while self._wake or self._groups or self._push or self._presence or self._busy:
            await self._idle.wait()
