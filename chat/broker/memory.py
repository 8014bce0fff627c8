"""The in-process broker: one node alone, nothing to run beside it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import trio

from .base import MAX_DEVICES_ONLINE, NoticeHandler, PresenceChange, PresencePush, Push


class MemoryBroker:
    """Presence in a dict and notices by direct call; only for a single node."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._holders: dict[int, dict[str, str]] = {}
        """User id -> device -> holder, for the devices online."""
        self._handler: NoticeHandler | None = None
        self._versions = itertools.count(1)

    async def run(
        self,
        handler: NoticeHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._handler = handler
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._handler = None

    async def claim(self, user_id: int, device: str, holder: str) -> bool:
        devices = self._holders.setdefault(user_id, {})
        if device in devices:
            return devices[device] == holder
        if len(devices) >= MAX_DEVICES_ONLINE:
            return False
        devices[device] = holder
        if len(devices) == 1:
            self._changed(user_id, online=True)
        return True

    async def release(self, user_id: int, device: str, holder: str) -> None:
        devices = self._holders.get(user_id, {})
        if devices.get(device) == holder:
            del devices[device]
            if not devices:
                del self._holders[user_id]
                self._changed(user_id, online=False)

    async def locate(self, user_ids: Sequence[int]) -> dict[int, frozenset[str]]:
        here = frozenset((self.node_id,))
        return {user: here for user in user_ids if user in self._holders}

    async def devices(self, user_id: int) -> dict[str, str]:
        return dict.fromkeys(self._holders.get(user_id, {}), self.node_id)

    async def route(
        self,
        wake: Sequence[int],
        push: Sequence[Push],
        presence: Sequence[PresencePush] = (),
        groups: Sequence[int] = (),
    ) -> None:
        """Nothing to do: there is no other node (the router reached this one's sessions)."""

    async def aclose(self) -> None:
        self._holders.clear()

    def _changed(self, user_id: int, *, online: bool) -> None:
        if self._handler is not None:
            self._handler(PresenceChange(user_id, online, next(self._versions)))
