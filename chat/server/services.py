"""What every session of a node shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from chat.broker import Broker
from chat.store import Store

from .encoded import EncodedEvents
from .lockouts import Lockouts
from .metrics import Metrics
from .passwords import PasswordHasher
from .positions import Positions
from .router import Router
from .settings import CLOSING_AT_ONCE, Settings

if TYPE_CHECKING:
    from .fanout import FanoutBudget


@attrs.frozen
class Services:
    settings: Settings
    store: Store
    broker: Broker
    router: Router
    hasher: PasswordHasher
    positions: Positions
    fanout: FanoutBudget
    encoded: EncodedEvents = attrs.field(factory=EncodedEvents)
    metrics: Metrics = attrs.field(factory=Metrics)
    lockouts: Lockouts = attrs.field(factory=Lockouts)
    closing: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(CLOSING_AT_ONCE)
    )
    """Sessions closing at once (see ``Session.run``)."""
