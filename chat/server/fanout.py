"""The fan-out budget: how many deliveries one user's sends may cause per second."""

from __future__ import annotations

from collections import OrderedDict

import trio

from .throttles import RateLimitedError

FANOUT_USERS = 100_000
"""Users whose fan-out budget a node remembers (the most recently sending)."""


class FanoutBudget:
    """What one user's sends may make the node deliver, per second: a token bucket per
    user (on this node), charged with the recipients of each message once it is
    stored (a group message: the group's other members). While a user's bucket is
    in debt, that user's next sends get ``rate_limited`` until it has refilled, so
    a member of a large group cannot keep the node busy for everyone else. ``rate``
    0 turns it off."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()
        """User id -> (tokens, when)."""

    def check(self, user_id: int) -> None:
        """Raise ``rate_limited`` while the user's bucket is in debt."""
        if self.rate <= 0:
            return
        tokens = self._tokens(user_id)
        if tokens < 0:
            wait_ms = max(1, int(-tokens / self.rate * 1000) + 1)
            raise RateLimitedError("fanout", wait_ms, "your messages reach too many people at once")

    def charge(self, user_id: int, deliveries: int) -> None:
        if self.rate <= 0:
            return
        tokens = self._tokens(user_id) - deliveries
        self._buckets[user_id] = (tokens, trio.current_time())
        self._buckets.move_to_end(user_id)
        if len(self._buckets) > FANOUT_USERS:
            self._buckets.popitem(last=False)

    def _tokens(self, user_id: int) -> float:
        tokens, at = self._buckets.get(user_id, (float(self.burst), 0.0))
        now = trio.current_time()
        return min(float(self.burst), tokens + (now - at) * self.rate) if at else tokens
