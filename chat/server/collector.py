"""The garbage collector's settings for a serving node.

CPython frees almost everything by reference counting; the cyclic collector only
finds cycles, and a node makes few (a store batch's exceptions, a closed
connection's tasks). But it runs by *allocation counts*: every 700 objects that
stay alive, a young collection, every tenth of those an older one, and now and
then a full one that walks every object of the process. A busy node keeps many
objects alive for a few milliseconds (a thousand sends in flight in a store batch,
each with its call, request and coroutines), so with the defaults it ran a young
collection every few hundred messages and a full one, about 30 ms with the trio
thread stopped, every few seconds, and found almost nothing: measured on the
burst of ``scripts/bench-hot-path``, about a fifth of the node's CPU per message
(docs/performance.md, "Hot path, round 3").

So, once the node has started: what exists then (modules, the settings, the
compiled protocol) is frozen out of every collection (``gc.freeze``), and the
thresholds are raised so that collections run about a hundred times less often;
cycles are still collected, later, and the memory they hold meanwhile is small
(they are rare, and a young collection still comes every ``YOUNG`` objects). What
is frozen is never collected: a start-up object that becomes part of a garbage cycle
later stays in memory (start-up objects live as long as the process anyway).
"""

from __future__ import annotations

import gc

YOUNG = 50_000
"""Objects allocated and still alive since the last collection before a young one
(CPython's default: 700)."""

OLDER = 20
"""Young collections before a collection of the middle generation (default 10)."""

OLDEST = 20
"""Middle collections before a full one is considered (default 10; CPython runs it only
when the objects waiting for it are a quarter of those it already holds)."""


def settle_after_start() -> None:
    """Freeze what start-up made and raise the thresholds (see the module)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDEST)
