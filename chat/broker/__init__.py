"""Brokers: how nodes learn who is online where, and wake each other."""

from .base import (
    MAX_DEVICES_ONLINE,
    Broker,
    BrokerUnavailable,
    Evict,
    GroupWake,
    Notice,
    NoticeHandler,
    Pause,
    PresenceChange,
    PresencePush,
    Push,
    Resume,
    Resync,
    Wake,
)
from .memory import MemoryBroker

__all__ = [
    "MAX_DEVICES_ONLINE",
    "Broker",
    "BrokerUnavailable",
    "Evict",
    "GroupWake",
    "MemoryBroker",
    "Notice",
    "NoticeHandler",
    "Pause",
    "PresenceChange",
    "PresencePush",
    "Push",
    "Resume",
    "Resync",
    "Wake",
]
