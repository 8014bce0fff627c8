"""What can go wrong in the store, as exceptions the server maps to error codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's exceptions."""


class StoreUnavailable(StoreError):
    """The database could not be reached or refused the work; nothing was changed."""


class StoreTimeout(StoreUnavailable):
    """A store call did not finish within the node's deadline (``--db-timeout``); it may
    still complete in the database (see ``chat.store.pool``)."""


class NameTaken(StoreError):
    pass


class GroupNameTaken(StoreError):
    pass


class NoSuchUser(StoreError):
    pass


class NoSuchGroup(StoreError):
    pass


class AlreadyFriends(StoreError):
    pass


class CannotFriendSelf(StoreError):
    pass


class AlreadyMember(StoreError):
    pass


class NotAMember(StoreError):
    pass


class NotFriends(StoreError):
    pass


class CannotBlockSelf(StoreError):
    pass


class AlreadyBlocked(StoreError):
    pass


class NotBlocked(StoreError):
    pass


class Blocked(StoreError):
    """One of the two users has blocked the other: the request is refused (saying no
    more than that, whichever of them did)."""


class RateLimited(StoreError):
    """A throttle refused the request before anything was done."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class NoSuchRequest(StoreError):
    """No friend request from that user waits for this one's answer."""


class NoSuchMessage(StoreError):
    """The message named is not one of the conversation's (or does not exist)."""
