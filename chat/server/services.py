"""What every session of a node shares."""

from __future__ import annotations

import attrs

from chat.broker import Broker
from chat.store import Store

from .encoded import EncodedEvents
from .late_deletions import LateDeletions
from .passwords import PasswordHasher
from .router import Router
from .settings import Settings


@attrs.frozen
class Services:
    settings: Settings
    store: Store
    broker: Broker
    router: Router
    hasher: PasswordHasher
    late_deletions: LateDeletions
    encoded: EncodedEvents = attrs.field(factory=EncodedEvents)
