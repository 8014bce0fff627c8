"""What this node has learnt from the database's throttles: buckets that are shut,
and until when.

A flood against one account or from one address is mostly refused; asking the
database again for every refused request would make the flood cost the database
(and, through the shared pool, every honest request) as much as before. Once
the database has said a bucket is shut for ``wait_ms``, nothing can open it
sooner (no request removes another's events), so this node refuses it from
memory until then. It is a cache of the database's answer, not a second limit:
other nodes learn the same from the database on their first try.
"""

from __future__ import annotations

import trio

MAX_ENTRIES = 100_000
"""Bounded memory: past this many, expired entries are dropped (and if that is not
enough, the oldest learnt)."""


class Lockouts:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._until: dict[str, float] = {}
        self._max = max_entries

    def wait_ms(self, bucket: str) -> int | None:
        """Milliseconds until ``bucket`` may open, as last learnt; None: not known shut."""
        until = self._until.get(bucket)
        if until is None:
            return None
        left = until - trio.current_time()
        if left <= 0:
            del self._until[bucket]
            return None
        return max(1, int(left * 1000))

    def shut(self, bucket: str, wait_ms: int) -> None:
        """The database said ``bucket`` is shut for ``wait_ms``."""
        if len(self._until) >= self._max:
            self._prune()
        self._until[bucket] = trio.current_time() + wait_ms / 1000

    def _prune(self) -> None:
        now = trio.current_time()
        self._until = {b: t for b, t in self._until.items() if t > now}
        while len(self._until) >= self._max:
            del self._until[next(iter(self._until))]
