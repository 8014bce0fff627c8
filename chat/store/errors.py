"""What can go wrong in the store, as exceptions the server maps to error codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's exceptions."""


class StoreUnavailable(StoreError):
    """The database could not be reached or refused the work; nothing was changed."""


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
