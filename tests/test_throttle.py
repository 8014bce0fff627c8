"""The sliding-window throttle kept in the database (``chat.store.throttle``), on both
stores: ``Store.throttle_take`` (check and count in one transaction), on the same
window arithmetic as ``add_friend``'s in-transaction check."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from chat.store import Window, open_store

from .support import database

WINDOW = Window(limit=3, span_ms=3_000)
"""Long enough that a stalled machine does not let an event leave the window early."""


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_a_bucket_allows_its_limit_per_window(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url:
        store = await trio.to_thread.run_sync(open_store, url)
        try:
            for pause in (0.5, 0, 0):  # the first event well before the others
                assert await store.throttle_take("login:name:ann", WINDOW) is None
                await trio.sleep(pause)
            wait = await store.throttle_take("login:name:ann", WINDOW)  # refused: not counted
            assert wait is not None and 0 < wait <= WINDOW.span_ms
            # Other buckets are not affected.
            assert await store.throttle_take("login:name:bob", WINDOW) is None
            # Once the oldest event has left the window, one more is allowed, and then
            # the limit is reached again (the two later events are still in the window).
            await trio.sleep(wait / 1000 + 0.05)
            assert await store.throttle_take("login:name:ann", WINDOW) is None
            again = await store.throttle_take("login:name:ann", WINDOW)
            assert again is not None and 0 < again <= WINDOW.span_ms
        finally:
            store.close()
