"""Kept messages that were written to their recipient, deleted from the store in batches.

A kept message is deleted from the store only after it was written to the
recipient's connection. The writers of all the node's connections hand what
they wrote here and go on writing at once; one node-level task deletes
everything handed in meanwhile with one transaction, so one commit (on
MariaDB a log flush) serves every connection, and no writer waits for it.

Only two things wait for deletions: the end of a login (logout, close), so
the next login anywhere does not count and deliver them again, and a login,
which first settles what this node still has to delete for its user (or fails
with ``unavailable``) before it counts what is kept. A batch that fails (the
database hiccups) is retried, merged into the next one, until it succeeds.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import attrs
import trio

from chat.store import Store, StoreError

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
"""Pause after a failed batch before the next attempt."""

LINGER_SECONDS = 0.005
"""How long a batch gathers rows before it runs, unless someone waits for it: at a
thousand messages a second, a few per transaction instead of one (each transaction is
a thread hop for the node and a commit for the database)."""

Deleted = Callable[[int, Sequence[int]], None]
"""Told, in the trio thread, which message ids of a user are gone from the store."""


@attrs.define(eq=False)
class _Batch:
    rows: dict[int, set[int]] = attrs.field(factory=lambda: defaultdict(set))
    """user id -> message ids."""
    listeners: list[tuple[Deleted, int, list[int]]] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    error: StoreError | None = None


class Deletions:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._next = _Batch()
        self._last: dict[int, _Batch] = {}
        """The batch that holds a user's newest rows, while it has rows to delete."""
        self._more = trio.Event()
        self._hurry = trio.Event()
        """Someone waits in ``settle``: the next batch runs without lingering."""
        self.batches = 0
        """Transactions run so far (successful or not)."""

    def written(self, user_id: int, message_ids: Iterable[int], deleted: Deleted | None) -> None:
        """These kept messages of the user were written: delete them soon. Never waits."""
        ids = list(message_ids)
        if not ids:
            return
        batch = self._next
        batch.rows[user_id].update(ids)
        if deleted is not None:
            batch.listeners.append((deleted, user_id, ids))
        self._last[user_id] = batch
        self._more.set()

    async def settle(self, user_id: int) -> None:
        """Return once every row handed in for the user so far is deleted. The batches
        it waits for run at once (no lingering, no pause after a failure); if one that
        held the user's rows fails and so does the attempt right after it, raises
        ``StoreError`` (the rows stay queued and are retried)."""
        failed = False
        while (batch := self._last.get(user_id)) is not None:
            self._hurry.set()
            await batch.done.wait()
            if batch.error is not None and self._last.get(user_id) is not batch:
                if failed:
                    raise batch.error
                failed = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._more.wait()
            with trio.move_on_after(LINGER_SECONDS):
                await self._hurry.wait()
            self._more = trio.Event()
            self._hurry = trio.Event()
            batch, self._next = self._next, _Batch()
            self.batches += 1
            try:
                await self._store.forget_delivered(batch.rows)
            except StoreError as exc:
                log.warning(
                    "deleting written messages of %d users failed, retrying: %s",
                    len(batch.rows),
                    exc,
                )
                batch.error = exc
                self._retry(batch)
                batch.done.set()
                with trio.move_on_after(RETRY_SECONDS):
                    await self._hurry.wait()
                continue
            for user_id in batch.rows:
                if self._last.get(user_id) is batch:
                    del self._last[user_id]
            batch.done.set()
            for deleted, user_id, ids in batch.listeners:
                deleted(user_id, ids)

    def _retry(self, failed: _Batch) -> None:
        """Put a failed batch's rows and listeners into the next batch."""
        retry = self._next
        for user_id, ids in failed.rows.items():
            retry.rows[user_id].update(ids)
            if self._last.get(user_id) is failed:
                self._last[user_id] = retry
        retry.listeners[:0] = failed.listeners
        self._more.set()
