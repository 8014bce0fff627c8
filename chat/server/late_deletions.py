"""Deletions of delivered messages that failed, retried until they succeed.

The writer deletes a kept message once it has been written to the recipient's
connection. If that deletion fails (the database hiccups), the message is still
kept, and the recipient's next login would get it a second time. So the failed
deletion is handed here: the node retries it in the background, and a login
first settles its user's deferred deletions (or fails with ``unavailable``)
before it counts what is kept.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

import trio

from chat.store import Store, StoreError

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


class LateDeletions:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._backlog: dict[int, set[int]] = defaultdict(set)
        self._more = trio.Event()

    def defer(self, user_id: int, seqs: Iterable[int]) -> None:
        """Delete these later: written to the user's connection, not yet forgotten."""
        self._backlog[user_id].update(seqs)
        self._more.set()

    async def settle(self, user_id: int) -> None:
        """Delete this user's deferred rows now; raises ``StoreError`` if that fails."""
        seqs = set(self._backlog.get(user_id, ()))
        if not seqs:
            return
        await self._store.forget_written(user_id, sorted(seqs))
        left = self._backlog.get(user_id, set()) - seqs
        if left:
            self._backlog[user_id] = left
        else:
            self._backlog.pop(user_id, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._more.wait()
            self._more = trio.Event()
            while self._backlog:
                try:
                    for user_id in list(self._backlog):
                        await self.settle(user_id)
                except StoreError as exc:
                    log.warning("deferred deletions still failing: %s", exc)
                    await trio.sleep(RETRY_SECONDS)
