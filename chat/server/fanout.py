"""The fan-out budget: how many deliveries one user's sends may cause per second."""

from __future__ import annotations

from collections import OrderedDict

import trio

from .throttles import RateLimitedError

FANOUT_USERS = 100_000
"""Users whose fan-out budget a node remembers (the most recently sending)."""


GROUP_SIZES = 100_000
"""Groups whose last known size a node remembers (for what a group send reserves)."""


class FanoutBudget:
    """What one user's sends may make the node deliver, per second: a token bucket per
    user (on this node). While a user's bucket is in debt, that user's next sends get
    ``rate_limited`` until it has refilled, so a member of a large group cannot keep
    the node busy for everyone else. ``rate`` 0 turns it off.

    A send reserves its deliveries when it is accepted, before it is stored (a group
    message: the group's other members as last seen here, else one), and settles
    once stored with what it really caused, or gives the reservation back if it
    stored nothing. Charging only once stored let a pipelining client get all the
    sends it had in flight past each check (16 times 5,000 deliveries each time the
    bucket was back at zero)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()
        """User id -> (tokens, when)."""
        self._group_sizes: OrderedDict[int, int] = OrderedDict()
        """Group id -> its member count when a message to it was last stored here."""

    def reserve(self, user_id: int, group_id: int | None = None) -> int:
        """Raise ``rate_limited`` while the user's bucket is in debt; else take what the
        send will likely cause from it and return that (for ``settle`` or ``refund``)."""
        if self.rate <= 0:
            return 0
        tokens = self._tokens(user_id)
        if tokens < 0:
            wait_ms = max(1, int(-tokens / self.rate * 1000) + 1)
            raise RateLimitedError("fanout", wait_ms, "your messages reach too many people at once")
        deliveries = 1 if group_id is None else self._group_deliveries(group_id)
        self._set(user_id, tokens - deliveries)
        return deliveries

    def settle(
        self, user_id: int, reserved: int, deliveries: int, group: tuple[int, int] | None = None
    ) -> None:
        """A send was stored and causes ``deliveries``: the difference to what it
        reserved is charged (or given back). ``group``: (id, member count) to remember."""
        if self.rate <= 0:
            return
        if group is not None:
            group_id, members = group
            self._group_sizes[group_id] = members
            self._group_sizes.move_to_end(group_id)
            if len(self._group_sizes) > GROUP_SIZES:
                self._group_sizes.popitem(last=False)
        if deliveries != reserved:
            self._set(user_id, self._tokens(user_id) - (deliveries - reserved))

    def refund(self, user_id: int, reserved: int) -> None:
        """A send stored nothing (refused, failed, or a repeated ``cid``)."""
        if self.rate > 0 and reserved:
            self._set(user_id, self._tokens(user_id) + reserved)

    def _group_deliveries(self, group_id: int) -> int:
        members = self._group_sizes.get(group_id)
        return max(1, members - 1) if members is not None else 1

    def _set(self, user_id: int, tokens: float) -> None:
        self._buckets[user_id] = (tokens, trio.current_time())
        self._buckets.move_to_end(user_id)
        if len(self._buckets) > FANOUT_USERS:
            self._buckets.popitem(last=False)

    def _tokens(self, user_id: int) -> float:
        tokens, at = self._buckets.get(user_id, (float(self.burst), 0.0))
        now = trio.current_time()
        return min(float(self.burst), tokens + (now - at) * self.rate) if at else tokens
