"""Transports: adapters from a connection to the ``MessageStream`` interface."""

from .base import FrameRejected, MessageStream, StreamClosed
from .tcp import LineStream, enable_keepalive
from .websocket import WebSocketStream, serve_websocket, serve_websocket_stream

__all__ = [
    "FrameRejected",
    "LineStream",
    "MessageStream",
    "StreamClosed",
    "WebSocketStream",
    "enable_keepalive",
    "serve_websocket",
    "serve_websocket_stream",
]
