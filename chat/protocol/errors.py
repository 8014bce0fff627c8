"""Error codes of protocol v1, 1.1 and 1.2, and the exception that carries one to the reply."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # framing and decoding
    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_REQUEST = "invalid_request"
    # session state
    NOT_LOGGED_IN = "not_logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    # requests' own errors
    NAME_TAKEN = "name_taken"
    BAD_CREDENTIALS = "bad_credentials"
    ALREADY_ONLINE = "already_online"
    NO_SUCH_USER = "no_such_user"
    ALREADY_FRIENDS = "already_friends"
    CANNOT_FRIEND_SELF = "cannot_friend_self"
    GROUP_NAME_TAKEN = "group_name_taken"
    NO_SUCH_GROUP = "no_such_group"
    ALREADY_MEMBER = "already_member"
    NOT_A_MEMBER = "not_a_member"
    # version 1.1: contacts and throttling
    NOT_FRIENDS = "not_friends"
    CANNOT_BLOCK_SELF = "cannot_block_self"
    ALREADY_BLOCKED = "already_blocked"
    NOT_BLOCKED = "not_blocked"
    BLOCKED = "blocked"
    RATE_LIMITED = "rate_limited"
    # version 1.2: devices and acknowledged delivery
    NO_SUCH_DEVICE = "no_such_device"
    ACK_TIMEOUT = "ack_timeout"
    # version 1.2: friend requests with approval
    NO_SUCH_REQUEST = "no_such_request"
    # version 1.2: conversations
    NO_SUCH_MESSAGE = "no_such_message"
    # extension: the server could not do it now (the database or broker is unreachable);
    # nothing was changed and the client may retry.
    UNAVAILABLE = "unavailable"
    # extension: the connection did not log in within the server's login timeout; the
    # server closes it after this error (which carries no rid).
    LOGIN_TIMEOUT = "login_timeout"
    # extension: a bug in the server; it is logged, and only this request failed.
    INTERNAL_ERROR = "internal_error"


class RequestError(Exception):
    """A request failed in a way the client is told about: it becomes an ``error`` reply."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        """With ``rate_limited``: when the client may try again."""
