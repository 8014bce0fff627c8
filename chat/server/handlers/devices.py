"""Devices (protocol 1.2): ``ack``, ``devices`` and ``forget_device``."""

from __future__ import annotations

from chat.protocol import ErrorCode, RequestError
from chat.protocol.messages import (
    Ack,
    DeviceInfo,
    DevicesResult,
    Empty,
    ForgetDevice,
    ListDevices,
    Result,
)
from chat.store.sql import now_ms

from ..delivery import AckError
from .registry import Caller, handler, me


@handler(Ack, while_paused=True)
async def ack(caller: Caller, request: Ack) -> Result:
    """Served while the node is paused too: an ack only ever lets the store forget."""
    try:
        caller.ack(request.seq)
    except AckError as exc:
        raise RequestError(ErrorCode.INVALID_REQUEST, str(exc)) from None
    return Empty()


@handler(ListDevices)
async def devices(caller: Caller, request: ListDevices) -> Result:
    user = me(caller)
    services = caller.services
    online = await services.broker.devices(user.id)
    known = await services.store.devices(user.id, sorted(online))
    now = now_ms()
    return DevicesResult(
        [
            DeviceInfo(
                record.device,
                record.device in online,
                now if record.device in online else record.last_seen,
            )
            for record in known
        ]
    )


@handler(ForgetDevice)
async def forget_device(caller: Caller, request: ForgetDevice) -> Result:
    user = me(caller)
    services = caller.services
    online = await services.broker.devices(user.id)
    if request.device in online:
        raise RequestError(
            ErrorCode.ALREADY_ONLINE,
            f"device: {request.device!r} is logged in right now; log it out first",
        )
    if not await services.store.forget_device(user.id, request.device):
        raise RequestError(ErrorCode.NO_SUCH_DEVICE, f"device: no device {request.device!r}")
    return Empty()
