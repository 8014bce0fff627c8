"""Brokers: how nodes learn who is online where, and wake each other."""

from .base import (
    Broker,
    BrokerUnavailable,
    Evict,
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
    "Broker",
    "BrokerUnavailable",
    "Evict",
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
