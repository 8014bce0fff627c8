"""Which failed units of work the store runs again, and when.

A unit of work (one transaction, ``chat.store.pool``) that fails for a reason that
says nothing about the request itself runs again, on the worker thread, before the
caller hears of it:

- **Busy** (``Dialect.is_retryable``): a deadlock (MySQL errno 1213, also how a
  Galera cluster reports a certification conflict), a lock wait that timed out
  (1205). The database rolled the transaction back (or we do), so running all of it
  again is exactly as if the first run had never been. Any unit of work qualifies.
- **Connection lost** (``Dialect.is_disconnect``), for *idempotent* work only (reads:
  running one twice changes nothing). A write whose connection broke may have
  committed before the answer was lost, so it is not run again: it answers
  ``unavailable``, which the protocol allows to have happened.

Bounded: ``attempts`` runs at most, and never a run that would start after the
caller's deadline (``--db-timeout``): a caller that has given up must not have its
request carried out later by a retry. Jittered ("full jitter": a random wait between
zero and an exponentially growing cap): two transactions that deadlocked on each
other and waited the same fixed time would meet again, and again.

This module is pure: the pool asks it, and does the waiting and the counting.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

import attrs

from .dialect import Dialect

ATTEMPTS = 5
"""Runs of one unit of work at most (the first and four retries)."""
FIRST_DELAY = 0.005
"""Cap of the random wait before the first retry, in seconds; it doubles each time."""
MAX_DELAY = 0.25
"""The cap never grows beyond this."""


class Failure(enum.Enum):
    """What a failed run of a unit of work means for running it again."""

    BUSY = "busy"
    """Deadlock or lock wait timeout: rolled back, safe to run again."""
    LOST = "lost"
    """The connection broke: drop it; safe to run again only if the work is idempotent."""
    OTHER = "other"
    """Anything else (a bug, a constraint): the caller's to handle, never retried."""


def classify(dialect: Dialect, exc: BaseException) -> Failure:
    if dialect.is_retryable(exc):
        return Failure.BUSY
    if dialect.is_disconnect(exc):
        return Failure.LOST
    return Failure.OTHER


@attrs.frozen
class RetryPolicy:
    attempts: int = ATTEMPTS
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    uniform: Callable[[], float] = attrs.field(default=random.random, eq=False, repr=False)
    """Uniform in [0, 1): replaceable in tests."""

    def delay(self, attempt: int) -> float:
        """The wait before run ``attempt + 1``, after ``attempt`` runs failed (from 1)."""
        cap = min(self.max_delay, self.first_delay * 2.0 ** (attempt - 1))
        return cap * self.uniform()

    def next_delay(
        self, failure: Failure, attempt: int, *, idempotent: bool, time_left: float | None
    ) -> float | None:
        """How long to wait before running again after run ``attempt`` failed with
        ``failure``, or None: do not run again (give the failure to the caller).

        ``time_left``: seconds until the caller's deadline (None: no deadline); a run
        that could not start before it is not tried."""
        if attempt >= self.attempts:
            return None
        if failure is Failure.OTHER or (failure is Failure.LOST and not idempotent):
            return None
        # A lost connection is replaced by a fresh one: no need to wait for anybody.
        wait = self.delay(attempt) if failure is Failure.BUSY else 0.0
        if time_left is not None and wait >= time_left:
            return None
        return wait
