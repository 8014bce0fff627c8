"""Coalescing: many concurrent calls of one query become one transaction.

A node serves thousands of sessions, and each one that is woken reads its kept
messages (``pending``) and, after writing them, deletes them (``acknowledge``).
Done one by one, a group message to 500 members costs 500 reads and 500
deletions, each a thread hop and a transaction (a deletion: a commit, so a log
flush). Here the first caller runs a batch with everything queued; calls made
while it runs wait and go, together, in the next batch.

What callers may rely on, exactly as with a call of their own:

- a batch *starts* after every call in it was made (a call never joins a batch
  that is already running), so a read sees everything committed before the call;
- a call returns only after its batch's transaction committed, and raises the
  batch's error if it failed.

Cancellation: a cancelled caller that waits leaves the queue. A cancelled
leader whose batch never started hands the batch back to the queue, where the
next waiting caller picks it up; once started, a batch is never abandoned (the
pool finishes every transaction it began).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

Req = TypeVar("Req")
Res = TypeVar("Res")

MAX_BATCH = 256
"""Calls run in one batch at most; the rest go in the next one."""


@attrs.define(eq=False)
class _Call(Generic[Req, Res]):
    request: Req
    result: Res | None = None
    error: Exception | None = None
    done: bool = False


class Coalescer(Generic[Req, Res]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Awaitable[Sequence[Res]]],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: list[_Call[Req, Res]] = []
        self._busy = False
        self._finished = trio.Event()
        """Set when the running batch ends (a fresh one per batch)."""

    async def __call__(self, request: Req) -> Res:
        call: _Call[Req, Res] = _Call(request)
        self._queue.append(call)
        while not call.done:
            if self._busy:
                try:
                    await self._finished.wait()
                except BaseException:
                    if call in self._queue:
                        self._queue.remove(call)
                    raise
                continue
            try:
                await self._lead()
            except BaseException:
                if call in self._queue:  # cancelled before its batch ran
                    self._queue.remove(call)
                raise
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    async def _lead(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        self._busy = True
        finished = False
        try:
            results = await self._run_batch([call.request for call in batch])
            for call, result in zip(batch, results, strict=True):
                call.result = result
            finished = True
        except Exception as exc:
            for call in batch:
                call.error = exc
            finished = True
        finally:
            if finished:
                for call in batch:
                    call.done = True
            else:
                # Cancelled before the batch ran: the others wait for it still.
                self._queue[:0] = [call for call in batch if not call.done]
            self._busy = False
            self._finished.set()
            self._finished = trio.Event()
