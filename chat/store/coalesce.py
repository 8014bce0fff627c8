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

Cancellation: a cancelled caller whose batch has not started leaves the queue
(its call never happened). A cancelled leader whose batch never started hands
the batch back to the queue, where the next waiting caller picks it up. Once
started, a batch is never abandoned (the pool finishes every transaction it
began), and a cancelled caller in it waits for it, shielded, and gets its
result, as a call in a worker thread would; the cancellation reaches it at its
next checkpoint.
"""

from __future__ import annotations

import copy
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
        try:
            while not call.done:
                if self._busy:
                    await self._finished.wait()
                else:
                    await self._lead()
        except BaseException as exc:
            if call in self._queue:  # its batch has not started: the call never happened
                self._queue.remove(call)
                raise
            if call.done or not isinstance(exc, trio.Cancelled):
                raise
            # Its batch is running. Like a call in a worker thread, it completes (its
            # caller may have to act on it, e.g. wake a message's recipients); the
            # cancellation is delivered at the caller's next checkpoint.
            await self._finish_shielded(call, exc)
        if call.error is not None:
            raise _fresh(call.error)
        return call.result  # type: ignore[return-value]

    async def _finish_shielded(self, call: _Call[Req, Res], cancelled: BaseException) -> None:
        with trio.CancelScope(shield=True):
            while not call.done:
                if call in self._queue:  # its batch was handed back before it ran
                    self._queue.remove(call)
                    raise cancelled
                await self._finished.wait()  # not queued, not done: its batch is running

    async def _lead(self) -> None:
        """Run the next batch: the queued calls, up to ``max_batch``."""
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


def _fresh(error: Exception) -> Exception:
    """A copy of a batch's error for one caller: raising one object in many tasks would
    chain every caller's frames onto one traceback."""
    try:
        copied = copy.copy(error)
    except Exception:
        return error
    return copied.with_traceback(error.__traceback__)
