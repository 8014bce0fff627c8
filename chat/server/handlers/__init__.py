"""Request handlers, one module per area; ``dispatch`` runs the one a request needs.

Handlers raise ``RequestError`` for the request's own errors; the session turns
results and errors into replies. The acting user is always the caller's logged-in
user, never an id the client sent. A new request type: its message class in
``chat.protocol.messages``, and a ``@handler`` coroutine in the module of its area.
"""

from . import (
    accounts,
    contacts,
    conversations,
    devices,
    friend_requests,
    groups,
    history,
    messages,
)
from .registry import Caller, begin, check_complete, dispatch, pipelined

check_complete()

__all__ = [
    "Caller",
    "accounts",
    "begin",
    "contacts",
    "conversations",
    "devices",
    "dispatch",
    "friend_requests",
    "groups",
    "history",
    "messages",
    "pipelined",
]
