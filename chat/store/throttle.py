"""Sliding-window throttles kept in the database, so that every node of a cluster
(and the single embedded node, which has no Redis) counts the same events.

A ``Window`` allows ``limit`` events of one *bucket* (a string such as
``add_friend:42``, or ``login:name:ann`` for a password throttle) within
``span_ms``. Each counted event is a row of ``rate_events``; a check counts the
bucket's rows inside the window and, when the limit is reached, says how long
until the oldest of the last ``limit`` rows leaves it. Rows older than the window
are deleted when the next one is recorded, so a bucket holds at most ``limit``
rows.

Both functions run inside the caller's transaction: checking, doing the work and
recording the event in one transaction is what makes "at most ``limit``" hold
under concurrent requests. The caller serialises requests of one bucket first
(``lock_bucket_owner``), since two transactions could otherwise both count 99.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .sql import Sql


@attrs.frozen
class Window:
    limit: int
    span_ms: int


def wait_ms(sql: Sql, bucket: str, window: Window, now: int) -> int | None:
    """Milliseconds until one more event of ``bucket`` is allowed; None: allowed now."""
    rows = sql.all(
        "SELECT at FROM rate_events WHERE bucket = ? AND at > ? ORDER BY at DESC LIMIT ?",
        (bucket, now - window.span_ms, window.limit),
    )
    if len(rows) < window.limit:
        return None
    oldest_counted = int(rows[-1][0])
    return max(1, oldest_counted + window.span_ms - now)


def record(sql: Sql, bucket: str, window: Window, now: int) -> None:
    """Count one event of ``bucket`` at ``now`` and forget those the window has passed."""
    prune(sql, [bucket], now - window.span_ms)
    sql.execute("INSERT INTO rate_events (bucket, at) VALUES (?, ?)", (bucket, now))


def prune(sql: Sql, buckets: Sequence[str], before: int) -> None:
    """Delete the buckets' events at or before ``before``: found by a plain read, deleted
    by id, in id order, in one statement. Every delete of this table then locks its rows
    in one order (the primary key's, as ``forget`` does), so two never wait for each
    other in a cycle: a ``DELETE ... WHERE bucket = ? AND at <= ?`` per bucket locked
    rows in scan order and deadlocked (MariaDB 1213) with ``forget`` and with each
    other under login churn."""
    if not buckets:
        return
    marks = ", ".join("?" * len(buckets))
    rows = sql.all(
        f"SELECT id FROM rate_events WHERE bucket IN ({marks}) AND at <= ?", (*buckets, before)
    )
    _delete_ids(sql, sorted(int(row[0]) for row in rows))


def _delete_ids(sql: Sql, ids: Sequence[int]) -> None:
    if ids:
        marks = ", ".join("?" * len(ids))
        sql.execute(f"DELETE FROM rate_events WHERE id IN ({marks})", tuple(ids))


def lockout_ms(sql: Sql, buckets: Sequence[str], window: Window, now: int) -> int | None:
    """A lockout rather than a sliding window: once any of ``buckets`` holds ``limit``
    events within ``span_ms``, it stays shut until ``span_ms`` after the latest of
    them (the password throttle: "until 60 s after the fifth failure"). Milliseconds
    until every one of them is open again; None: open now."""
    if not buckets:
        return None
    marks = ", ".join("?" * len(buckets))
    rows = sql.all(
        f"SELECT COUNT(*), MAX(at) FROM rate_events WHERE bucket IN ({marks}) AND at > ?"
        " GROUP BY bucket",
        (*buckets, now - window.span_ms),
    )
    waits = [int(latest) + window.span_ms - now for count, latest in rows if count >= window.limit]
    return max(1, *waits) if waits else None


def take(sql: Sql, bucket: str, window: Window, now: int) -> int | None:
    """Count one event of ``bucket`` if the window allows it (a budget, such as password
    logins per client address): None if counted, else milliseconds until allowed."""
    wait = wait_ms(sql, bucket, window, now)
    if wait is None:
        record(sql, bucket, window, now)
    return wait


def take_counted(sql: Sql, bucket: str, window: Window, now: int) -> Reservation:
    """``take``, saying which event it counted (to ``forget`` it later)."""
    wait = wait_ms(sql, bucket, window, now)
    if wait is not None:
        return Reservation(wait)
    prune(sql, [bucket], now - window.span_ms)
    event = sql.insert("INSERT INTO rate_events (bucket, at) VALUES (?, ?)", (bucket, now))
    return Reservation(None, (event,))


@attrs.frozen
class Reservation:
    """What ``reserve`` did: refused (``wait_ms``), or counted one event per bucket
    (``ids``, to ``forget`` them if the attempt turns out not to count)."""

    wait_ms: int | None
    ids: tuple[int, ...] = ()


def reserve(sql: Sql, buckets: Sequence[str], window: Window, now: int) -> Reservation:
    """A lockout check that counts the attempt at once when it lets it through.

    For failed password logins: an attempt under way counts as a failure until it
    turns out to be right (then the caller forgets it). Checking first and counting
    only after the slow password check would let every guess sent at the same
    moment through (300 connections: 300 guesses, not 5); counting first lets at
    most ``limit`` through, give or take the few transactions that run at the same
    instant on other pooled connections."""
    wait = lockout_ms(sql, buckets, window, now)
    if wait is not None:
        return Reservation(wait)
    ids = []
    prune(sql, buckets, now - window.span_ms)
    for bucket in buckets:
        ids.append(sql.insert("INSERT INTO rate_events (bucket, at) VALUES (?, ?)", (bucket, now)))
    return Reservation(None, tuple(ids))


def forget(sql: Sql, ids: Sequence[int]) -> None:
    """Un-count events ``reserve`` counted (the attempt did not fail after all)."""
    _delete_ids(sql, sorted(ids))
