"""Transports: adapters from a connection to the ``MessageStream`` interface."""

from .base import FrameRejected, MessageStream, StreamClosed
from .tcp import LineStream, enable_keepalive

__all__ = ["FrameRejected", "LineStream", "MessageStream", "StreamClosed", "enable_keepalive"]
