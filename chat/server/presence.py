"""Presence announcements: a user's logged-in friends hear when the user comes and goes.

The broker sees every change of a user's ``online`` (a claim, a release, a lease
re-created, a user of a dead node found gone) and hands this node a
``PresenceChange`` for the changes it is to announce, each change to exactly one
node. The ``PresenceAnnouncer`` gathers them: one task takes every change queued
since its last batch, keeps the newest per user (changes may be coalesced), reads
the audience of all of them from the store in one query (``audiences``: the one
place that decides who hears about whom), and hands each event to the router,
which queues it for local friends at once and sends it to the other nodes through
the relay's next batch. So a user with 2,000 friends logging in costs one store
query and a handful of Redis round trips, not one per friend; and the login that
caused it does not wait for any of it.

Each change carries the broker's ``version``, and it travels with the event to
every node, where the router drops an event older than one it already handed out
about the same user: announcements from different nodes may cross on the way,
and the newest state must be the last one each friend sees.

Failures: a batch whose audience cannot be read (the store is down) is kept and
tried again a second later (with anything newer about the same users replacing
it); events that cannot reach another node (Redis is down) are lost, as every
transient event is: the friend list at the next login shows presence.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import trio

from chat.broker import PresenceChange, PresencePush
from chat.protocol.messages import PresenceEvent, UserRef
from chat.store import PresenceAudience, Store, StoreError

from .router import Router

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
"""How long a batch whose audience could not be read waits before it is tried again."""
FANOUT_STEP = 256
"""Friends told at once (every event of the batch for each); between two steps the
node's other tasks run (the writers of the friends told so far among them), so that
telling thousands of friends never holds everyone else up for long."""


class PresenceAnnouncer:
    def __init__(self, store: Store, router: Router, *, fanout_step: int = FANOUT_STEP) -> None:
        self._store = store
        self._router = router
        self._step = fanout_step
        self._pending: dict[int, PresenceChange] = {}
        """The newest change not yet announced, per user."""
        self._more = trio.Event()
        self._busy = False
        self._idle = trio.Event()
        self._idle.set()

    def changed(self, change: PresenceChange) -> None:
        """Announce this change with the next batch (never waits)."""
        queued = self._pending.get(change.user_id)
        if queued is None or queued.version < change.version:
            self._pending[change.user_id] = change
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._more.set()

    async def audiences(self, user_ids: Sequence[int]) -> dict[int, PresenceAudience]:
        """Who hears about each of these users: their friends, from the store.

        Every announcement passes through here, so a rule about who may see whose
        presence (say, blocking) belongs here and nowhere else. Friends who are not
        logged in anywhere are dropped later, by routing."""
        return await self._store.presence_audiences(user_ids)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._more.wait()
            self._more = trio.Event()
            while self._pending:
                batch, self._pending = self._pending, {}
                self._busy = True
                try:
                    await self._announce(batch)
                except StoreError as exc:
                    log.warning(
                        "cannot read who hears about %d presence changes now (%s): retrying",
                        len(batch),
                        exc,
                    )
                    for change in batch.values():
                        self.changed(change)  # anything newer queued meanwhile wins
                    await trio.sleep(RETRY_SECONDS)
                except Exception:
                    # A bug must cost this batch (transient events), never the node.
                    log.exception("announcing %d presence changes failed", len(batch))
                finally:
                    self._busy = False
            self._idle.set()

    async def _announce(self, batch: dict[int, PresenceChange]) -> None:
        audiences = await self.audiences(list(batch))
        events: list[tuple[PresenceEvent, int]] = []  # with their versions
        by_friend: dict[int, list[int]] = defaultdict(list)  # friend -> indexes into events
        for user_id, change in batch.items():
            audience = audiences.get(user_id)
            if audience is None:
                continue
            index = len(events)
            events.append(
                (PresenceEvent(UserRef(user_id, audience.user.name), change.online), change.version)
            )
            # Friends made after the change are not told of it: their friend_added
            # carried the presence of then, and a later change reaches them anyway.
            for friend in audience.friends_before(change.at_ms):
                if friend != user_id:
                    by_friend[friend].append(index)
        # Friend by friend, a step at a time: each friend gets every event of the batch
        # in one step (its writer writes them at once), and between steps the node's
        # other tasks run.
        friends = list(by_friend)
        for start in range(0, len(friends), self._step):
            if start:
                await trio.lowlevel.checkpoint()
            step: dict[int, list[int]] = defaultdict(list)
            for friend in friends[start : start + self._step]:
                for index in by_friend[friend]:
                    step[index].append(friend)
            for index, told in step.items():
                event, version = events[index]
                self._router.presence(PresencePush(tuple(told), event, version))

    async def drain(self) -> None:
        """Wait until every change queued so far has been handed to the router."""
        while self._pending or self._busy:
            await self._idle.wait()
