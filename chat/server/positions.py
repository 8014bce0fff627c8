"""Devices' positions, stored in batches: what every connection delivered, one commit.

A device's position in a stream moves when a message has been written to its
connection (or, with ``acks``, acknowledged). The sessions of a node hand the
moves here and go on at once; one node-level task stores everything handed in
meanwhile in one transaction (``Store.advance``: a few statements, whatever the
number of messages: a position is one number per device and stream), so one
commit serves every connection and nothing on the delivery path waits for it.

Only the end of a login waits (``settle``): before its device's presence is let go,
its positions and its last-seen time are stored, so the device's next login
(anywhere) starts exactly after what it had. A batch that fails (the database
hiccups) is retried, merged into the next one, until it succeeds. A node that dies
before storing a move loses only the move: the device gets those messages again at
its next login (at least once, as the protocol allows when a server dies).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs
import trio

from chat.store import Store, StoreError
from chat.store.streams import Advance

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
"""Pause after a failed batch before the next attempt."""

LINGER_SECONDS = 0.005
"""How long a batch gathers moves before it runs, unless someone waits for it."""

DeviceKey = tuple[int, str]


@attrs.define(eq=False)
class _Batch:
    moves: dict[tuple[int, str, int], int] = attrs.field(factory=dict)
    """(user, device, stream) -> the newest position."""
    seen: dict[DeviceKey, int] = attrs.field(factory=dict)
    done: trio.Event = attrs.field(factory=trio.Event)
    error: StoreError | None = None

    def add(self, move: Advance) -> None:
        key = (move.user_id, move.device, move.stream)
        self.moves[key] = max(self.moves.get(key, 0), move.pos)

    def devices(self) -> set[DeviceKey]:
        return {(user, device) for user, device, _ in self.moves} | set(self.seen)


class Positions:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._next = _Batch()
        self._last: dict[DeviceKey, _Batch] = {}
        """The batch that holds a device's newest moves, while it has any to store."""
        self._more = trio.Event()
        self._hurry = trio.Event()
        """Someone waits in ``settle``: the next batch runs without lingering."""
        self.batches = 0
        """Transactions run so far (successful or not)."""

    def report(self, moves: Iterable[Advance]) -> None:
        """Store these moves soon. Never waits."""
        batch = self._next
        for move in moves:
            batch.add(move)
            self._last[(move.user_id, move.device)] = batch
            self._more.set()

    def seen(self, user_id: int, device: str, at_ms: int) -> None:
        """The device's login ended at ``at_ms``: its ``last_seen``, stored soon."""
        self._next.seen[(user_id, device)] = at_ms
        self._last[(user_id, device)] = self._next
        self._more.set()

    async def settle(self, user_id: int, device: str) -> None:
        """Return once everything reported for the device so far is stored. The
        batches it waits for run at once; if the one holding the device's moves fails
        and so does the attempt right after it, raises ``StoreError`` (the moves stay
        queued and are retried)."""
        key = (user_id, device)
        failed = False
        while (batch := self._last.get(key)) is not None:
            self._hurry.set()
            await batch.done.wait()
            if batch.error is not None and self._last.get(key) is not batch:
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
            moves = [Advance(u, d, s, p) for (u, d, s), p in batch.moves.items()]
            try:
                await self._store.advance(moves, batch.seen)
            except Exception as exc:
                # Any failure (an error the pool does not classify too) costs a retry,
                # never the node's other tasks.
                error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
                if isinstance(exc, StoreError):
                    log.warning(
                        "storing the positions of %d devices failed, retrying: %s",
                        len(batch.devices()),
                        exc,
                    )
                else:
                    log.exception(
                        "storing the positions of %d devices failed", len(batch.devices())
                    )
                batch.error = error
                self._retry(batch)
                batch.done.set()
                with trio.move_on_after(RETRY_SECONDS):
                    await self._hurry.wait()
                continue
            for key in batch.devices():
                if self._last.get(key) is batch:
                    del self._last[key]
            batch.done.set()

    def _retry(self, failed: _Batch) -> None:
        """Put a failed batch's moves into the next batch (newer ones win)."""
        retry = self._next
        for (user, device, stream), pos in failed.moves.items():
            retry.add(Advance(user, device, stream, pos))
        for key, at in failed.seen.items():
            retry.seen.setdefault(key, at)
        for key in failed.devices():
            if self._last.get(key) is failed:
                self._last[key] = retry
        self._more.set()
