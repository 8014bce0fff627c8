"""Latency percentiles and the delivery checker: pure code, no I/O.

The checker is what makes a figure a result. For every (recipient, sender)
pair it keeps the sequence numbers seen: a number seen twice is a duplicate, a
number below the last one seen breaks per-sender order, and a number the sender
got ``ok`` for that never arrived is a loss.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import attrs

Pair = tuple[int, int]
"""(recipient user id, sender user id)."""


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@attrs.frozen
class LatencySummary:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> LatencySummary:
        values = sorted(seconds)
        return cls(
            count=len(values),
            p50_ms=round(percentile(values, 0.50) * 1000, 2),
            p95_ms=round(percentile(values, 0.95) * 1000, 2),
            p99_ms=round(percentile(values, 0.99) * 1000, 2),
            max_ms=round((values[-1] if values else 0.0) * 1000, 2),
        )

    def describe(self) -> str:
        return (
            f"p50 {self.p50_ms:.1f} ms, p95 {self.p95_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms (n={self.count})"
        )


@attrs.define
class Verdict:
    """What went wrong with delivery; a run is good only when every count is zero."""

    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    """Delivered, but the sender never got ``ok`` for it (a failed or unanswered send)."""
    examples: list[str] = attrs.field(factory=list)

    MAX_EXAMPLES = 5

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.out_of_order or self.unexpected)

    def note(self, text: str) -> None:
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(text)

    def merge(self, other: Verdict) -> None:
        self.lost += other.lost
        self.duplicates += other.duplicates
        self.out_of_order += other.out_of_order
        self.unexpected += other.unexpected
        for example in other.examples:
            self.note(example)

    def describe(self) -> str:
        if self.ok:
            return "every delivery checked: exactly once, in order"
        text = (
            f"FAILED: {self.lost} lost, {self.duplicates} duplicated, "
            f"{self.out_of_order} out of order, {self.unexpected} unexpected"
        )
        return text + "".join(f"\n    e.g. {example}" for example in self.examples)


class DeliveryChecker:
    """Exactly once and per-sender order, for every recipient of one load process."""

    def __init__(self) -> None:
        self._seen: dict[Pair, set[int]] = defaultdict(set)
        self._last: dict[Pair, int] = {}
        self._acked: dict[Pair, set[int]] = defaultdict(set)
        self.verdict = Verdict()
        self.delivered = 0
        """First copies received."""

    def acked(self, recipient: int, sender: int, seq: int) -> None:
        """The sender got ``ok`` for message ``seq``: the recipient must get it once."""
        self._acked[(recipient, sender)].add(seq)

    def received(self, recipient: int, sender: int, seq: int) -> bool:
        """Record a delivery; True if it is a first copy (in order or not)."""
        pair = (recipient, sender)
        seen = self._seen[pair]
        if seq in seen:
            self.verdict.duplicates += 1
            self.verdict.note(f"user {recipient} got message {seq} of user {sender} twice")
            return False
        seen.add(seq)
        self.delivered += 1
        last = self._last.get(pair, 0)
        if seq < last:
            self.verdict.out_of_order += 1
            self.verdict.note(f"user {recipient} got message {seq} of user {sender} after {last}")
        else:
            self._last[pair] = seq
        return True

    def missing(self) -> int:
        """Acknowledged messages not received yet."""
        return sum(len(acked - self._seen.get(pair, set())) for pair, acked in self._acked.items())

    def finish(self, *, check_unexpected: bool = True) -> Verdict:
        """Count losses (and deliveries nobody got ``ok`` for); call once, at the end."""
        verdict = self.verdict
        for pair, acked in sorted(self._acked.items()):
            lost = acked - self._seen.get(pair, set())
            if lost:
                verdict.lost += len(lost)
                verdict.note(
                    f"user {pair[0]} never got messages {sorted(lost)[:5]} of user {pair[1]}"
                )
        if check_unexpected:
            for pair, seen in sorted(self._seen.items()):
                extra = seen - self._acked.get(pair, set())
                if extra:
                    verdict.unexpected += len(extra)
                    verdict.note(
                        f"user {pair[0]} got messages {sorted(extra)[:5]} of user {pair[1]}"
                        " that were never acknowledged"
                    )
        return verdict

    def seen_counts(self) -> dict[int, int]:
        """For each sequence number, how many recipients got it (group fan-out)."""
        counts: dict[int, int] = defaultdict(int)
        for seen in self._seen.values():
            for seq in seen:
                counts[seq] += 1
        return dict(counts)
