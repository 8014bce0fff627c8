"""The chat node: sessions, routing, presence and shutdown."""

from .node import Node
from .settings import Settings

__all__ = ["Node", "Settings"]
