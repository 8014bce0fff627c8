"""JSON <-> typed messages, with one private cattrs converter.

Decoding is where untrusted input becomes typed values, so every check of the
protocol lives here, in the order the protocol gives: not JSON or not an
object (``bad_json``), unknown ``type`` (``unknown_type``), then ``rid`` and
the fields (``invalid_request``, with a message that names the field).
cattrs' default hooks are lenient (``"5"`` becomes ``5``, ``True`` becomes
``1``), so each value kind gets a strict hook of its own.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import cattrs
import orjson
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import make_converter

from .errors import ErrorCode, RequestError
from .lookalike import lookalike_problem
from .messages import (
    CONVERSATIONS_LIMIT_MAX,
    FRIEND_REQUESTS_SETTINGS,
    HISTORY_LIMIT_MAX,
    REQUEST_TYPES,
    AckSeq,
    ClientMessageId,
    ConversationItem,
    ConversationLimit,
    DeliveredEvent,
    Description,
    DeviceName,
    DeviceRef,
    Error,
    Event,
    Flag,
    FriendAddedEvent,
    FriendRemovedEvent,
    FriendRequestEvent,
    FriendRequestsSetting,
    GroupDetail,
    GroupId,
    GroupJoinedEvent,
    GroupListLimit,
    GroupMessageEvent,
    History,
    HistoryDirect,
    HistoryGroup,
    HistoryLimit,
    ListLimit,
    LoggedOutEvent,
    LoginResult,
    LookupName,
    MarkRead,
    MessageEvent,
    MessageId,
    Name,
    Ok,
    Password,
    Position,
    PresenceEvent,
    ReadEvent,
    Request,
    Rid,
    Secret,
    Text,
    Token,
    Typing,
    TypingEvent,
    UserId,
)

MAX_RID_LENGTH = 64
RID_RANGE = (-(2**63), 2**64 - 1)
"""``rid`` "fits in 64 bits": accept both the signed and the unsigned reading."""


@attrs.frozen
class DecodedRequest:
    request: Request
    rid: Rid | None


class ProtocolError(RequestError):
    """A frame that could not become a request; the ``rid`` is echoed when it was valid."""

    def __init__(self, code: ErrorCode, message: str, rid: Rid | None = None) -> None:
        super().__init__(code, message)
        self.rid = rid


# --- strict value checks ------------------------------------------------------


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_json_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON "\ud800" escapes decode to lone surrogates, which no database stores.
        raise ValueError("contains an unpaired surrogate, which is not valid Unicode") from None
    return value


def _bounded_string(low: int, high: int) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _string(value)
        if not low <= len(text) <= high:
            raise ValueError(f"must be {low} to {high} characters long, not {len(text)}")
        return text

    return check


WHITE_SPACE = frozenset(
    chr(code)
    for code in (
        *range(0x0009, 0x000E),
        0x0020,
        0x0085,
        0x00A0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
    )
)
"""Unicode's White_Space property (PropList.txt, unchanged since Unicode 6.3). Not
``str.isspace``, which differs from it (it takes U+001C..U+001F, for one)."""


def _name(value: object) -> str:
    """A new user or group name (version 1.1 and 1.2 rules): stored in NFC, lengths
    counted after that; no control (Cc) or format (Cf) characters, nothing that looks
    like another name with invisible characters, blank ends, or stacked combining
    marks (``chat.protocol.lookalike``)."""
    text = unicodedata.normalize("NFC", _string(value))
    if not 1 <= len(text) <= 50:
        raise ValueError(f"must be 1 to 50 characters long, not {len(text)}")
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc":
            raise ValueError(f"must not contain control characters (found U+{ord(char):04X})")
        if category == "Cf":
            raise ValueError(
                f"must not contain invisible format characters (found U+{ord(char):04X})"
            )
    if all(char in WHITE_SPACE for char in text):
        raise ValueError("must not be only white space")
    if text[0] in WHITE_SPACE or text[-1] in WHITE_SPACE:
        raise ValueError("must not begin or end with white space")
    problem = lookalike_problem(text)  # the version 1.2 rules
    if problem is not None:
        raise ValueError(problem)
    return text


def _device(low: int) -> Callable[[object], str]:
    """A device name (protocol 1.2): up to 64 code points, no control characters."""

    def check(value: object) -> str:
        text = _string(value)
        if not low <= len(text) <= 64:
            raise ValueError(f"must be {low} to 64 characters long, not {len(text)}")
        for char in text:
            if unicodedata.category(char) == "Cc":
                raise ValueError(f"must not contain control characters (found U+{ord(char):04X})")
        return text

    return check


_password = _bounded_string(1, 1024)
_description = _bounded_string(0, 200)


def check_new_name(value: object) -> str:
    """A new user or group name checked as ``register`` and ``create_group`` check it:
    the name as stored (NFC), or ``ValueError`` saying what is wrong (for tools that
    make accounts without a request, such as ``chat-server import-users``)."""
    return _name(value)


def check_new_password(value: object) -> str:
    """A password checked as ``register`` checks it, or ``ValueError``."""
    return _password(value)


def check_description(value: object) -> str:
    """A group description checked as ``create_group`` checks it, or ``ValueError``."""
    return _description(value)


def _bounded_int(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be an integer, not {_json_kind(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high}, not {value}")
        return value

    return check


def _one_of(choices: Sequence[str]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            shown = " or ".join(f'"{choice}"' for choice in choices)
            raise ValueError(f"must be {shown}")
        return value

    return check


def _positive_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"must be an integer, not {_json_kind(value)}")
    if value < 1:
        raise ValueError(f"must be a positive integer, not {value}")
    return value


def _position(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"must be an integer, not {_json_kind(value)}")
    if value < 0:
        raise ValueError(f"must be 0 or a positive integer, not {value}")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_json_kind(value)}")
    return value


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


T = TypeVar("T")


def _hook(check: Callable[[object], T]) -> Callable[[object, Any], T]:
    return lambda value, _type: check(value)


def check_rid(value: object) -> Rid:
    """Validate a ``rid``: a string of at most 64 characters or a 64-bit integer."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a string or an integer, not {_json_kind(value)}")
    if isinstance(value, str):
        if len(value) > MAX_RID_LENGTH:
            raise ValueError(f"must be at most {MAX_RID_LENGTH} characters long")
        return _string(value)
    if not RID_RANGE[0] <= value <= RID_RANGE[1]:
        raise ValueError("must fit in 64 bits")
    return value


# --- the converter ------------------------------------------------------------


def _configure_converter(converter: cattrs.Converter) -> None:
    strict: dict[Any, Callable[[object], object]] = {
        UserId: _positive_id,
        GroupId: _positive_id,
        Name: _name,
        Password: _password,
        Secret: _string,
        LookupName: _string,
        Text: _bounded_string(1, 4096),
        Description: _description,
        ClientMessageId: _bounded_string(1, 64),
        ListLimit: _bounded_int(1, 500),
        GroupListLimit: _bounded_int(1, 200),
        Position: _position,
        HistoryLimit: _bounded_int(1, HISTORY_LIMIT_MAX),
        Token: _string,
        Flag: _flag,
        DeviceName: _device(1),
        DeviceRef: _device(0),
        AckSeq: _bounded_int(1, RID_RANGE[1]),
        FriendRequestsSetting: _one_of(FRIEND_REQUESTS_SETTINGS),
        MessageId: _positive_id,
        ConversationLimit: _bounded_int(1, CONVERSATIONS_LIMIT_MAX),
    }
    for kind, check in strict.items():
        converter.register_structure_hook(kind, _hook(check))
    for event_cls in (
        MessageEvent,
        GroupMessageEvent,
        HistoryDirect,
        HistoryGroup,
        FriendRequestEvent,
    ):
        converter.register_unstructure_hook(
            event_cls,
            make_dict_unstructure_fn(event_cls, converter, from_=override(rename="from")),
        )
        converter.register_structure_hook(
            event_cls,
            make_dict_structure_fn(event_cls, converter, from_=override(rename="from")),
        )
    for marked in (GroupDetail, LoginResult):  # inner first: the outer one uses it
        # The cut marks are sent only when set: an uncut login result carries none.
        converter.register_unstructure_hook(
            marked, make_dict_unstructure_fn(marked, converter, _cattrs_omit_if_default=True)
        )

    converter.register_structure_hook(
        TypingEvent,
        make_dict_structure_fn(TypingEvent, converter, from_=override(rename="from")),
    )
    converter.register_unstructure_hook(
        TypingEvent,
        make_dict_unstructure_fn(TypingEvent, converter, from_=override(rename="from")),
    )
    for with_optional in (ReadEvent, ConversationItem):
        # Which of with, group_id and by it carries: the others are not sent.
        converter.register_unstructure_hook(
            with_optional,
            make_dict_unstructure_fn(
                with_optional,
                converter,
                _cattrs_omit_if_default=True,
                with_=override(rename="with"),
            ),
        )
        converter.register_structure_hook(
            with_optional,
            make_dict_structure_fn(with_optional, converter, with_=override(rename="with")),
        )
    for renamed in (History, MarkRead, Typing):
        converter.register_structure_hook(
            renamed, make_dict_structure_fn(renamed, converter, with_=override(rename="with"))
        )


WIRE_NAMES: dict[type, dict[str, str]] = {
    History: {"with_": "with"},
    MarkRead: {"with_": "with"},
    Typing: {"with_": "with"},
}
"""Request fields whose wire name is a Python keyword (the structure hooks above rename
them too)."""

_converter = make_converter(detailed_validation=False)
"""The fast one: valid requests and everything the server sends."""
_configure_converter(_converter)
_explaining_converter = make_converter(detailed_validation=True)
"""Used only to say what is wrong with a request the fast one refused: it names every
bad field, at a cost that valid requests need not pay."""
_configure_converter(_explaining_converter)


def _describe(exc: ClassValidationError, renames: dict[str, str]) -> str:
    problems: list[str] = []
    with_notes, without = exc.group_exceptions()
    for error, note in with_notes:
        name = renames.get(note.name, note.name)
        if isinstance(error, KeyError):
            problems.append(f"{name}: required field missing")
        else:
            problems.append(f"{name}: {error}")
    problems.extend(str(error) for error in without)
    return "; ".join(problems) or "invalid request"


# --- decoding -----------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_object(frame: bytes | str) -> dict[str, Any]:
    """Parse one frame into a JSON object, or raise ``bad_json``.

    orjson parses; the standard library's parser only explains a refusal, and reads
    the frames whose meaning orjson would change: orjson turns an integer beyond 64
    bits into a float, where the checks must see the integer to say what is wrong."""
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return _parse_object_slowly(frame)
    if not isinstance(value, dict) or any(type(item) is float for item in value.values()):
        return _parse_object_slowly(frame)
    return value


def _parse_object_slowly(frame: bytes | str) -> dict[str, Any]:
    try:
        text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"frame is not valid UTF-8 ({exc.reason})"
        ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"frame must be a JSON object, not {_json_kind(value)}"
        )
    return value


def _login_fields(fields: dict[str, Any]) -> str | None:
    """A ``token`` alone, or ``name`` or ``id`` (one of them) with ``password``."""
    if "token" in fields:
        mixed = [key for key in ("name", "id", "password") if key in fields]
        if mixed:
            return f"token, {', '.join(mixed)}: a token login takes the token alone"
        return None
    if ("name" in fields) == ("id" in fields):
        return "name, id: give exactly one of name or id (or a token alone)"
    if "password" not in fields:
        return "password: required field missing"
    return None


def _history_fields(fields: dict[str, Any]) -> str | None:
    """``with`` or ``group_id`` (one of them), and at most one of ``before`` and ``after``."""
    if ("with" in fields) == ("group_id" in fields):
        return "with, group_id: give exactly one of with or group_id"
    if "before" in fields and "after" in fields:
        return "before, after: give at most one of before or after"
    return None


def _read_fields(fields: dict[str, Any]) -> str | None:
    """``with`` or ``group_id``, one of them."""
    if ("with" in fields) == ("group_id" in fields):
        return "with, group_id: give exactly one of with or group_id"
    return None


_COMBINATIONS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "login": _login_fields,
    "history": _history_fields,
    "read": _read_fields,
}
"""Rules about which fields go together, checked before each field's own check."""


def decode_request(frame: bytes | str) -> DecodedRequest:
    """Turn one frame into a typed request, or raise ``ProtocolError`` saying why not."""
    return request_from_object(parse_object(frame))


def request_from_object(obj: dict[str, Any]) -> DecodedRequest:
    """A parsed JSON object (v1 field names) as a typed request, with every check of
    ``decode_request`` after parsing; another codec that maps its own messages onto
    v1's reuses these checks."""
    rid: Rid | None = None
    rid_problem: str | None = None
    if "rid" in obj:
        try:
            rid = check_rid(obj["rid"])
        except ValueError as exc:
            rid_problem = f"rid: {exc}"

    kind = obj.get("type")
    if "type" not in obj:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "type: required field missing", rid)
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"type: must be a string, not {_json_kind(kind)}", rid
        )
    cls = REQUEST_TYPES.get(kind)
    if cls is None:
        shown = json.dumps(kind)[:80]
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {shown}", rid)
    if rid_problem is not None:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, rid_problem)

    fields = {key: value for key, value in obj.items() if key not in ("type", "rid")}
    renames = WIRE_NAMES.get(cls, {})
    for field in attrs.fields_dict(cls):
        key = renames.get(field, field)
        if key in fields and fields[key] is None:
            # No field of the protocol takes null; an optional field is left out instead.
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{key}: must not be null", rid)
    combination = _COMBINATIONS.get(cls.TYPE)
    problem = combination(fields) if combination else None
    if problem is not None:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, problem, rid)
    try:
        request = _converter.structure(fields, cls)
    except Exception:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, _explain(fields, cls, renames), rid
        ) from None
    return DecodedRequest(request=request, rid=rid)


def _explain(fields: dict[str, Any], cls: type[Request], renames: dict[str, str]) -> str:
    """Why the fast converter refused these fields, naming each bad one (by its wire name)."""
    try:
        _explaining_converter.structure(fields, cls)
    except ClassValidationError as exc:
        return _describe(exc, renames)
    except ForbiddenExtraKeysError as exc:  # pragma: no cover - extra keys are allowed
        return str(exc)
    except Exception as exc:  # pragma: no cover - the two converters agree
        return f"invalid request: {exc}"
    return "invalid request"  # pragma: no cover - the two converters agree


# --- encoding -----------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    """JSON as V1 writes it: compact, UTF-8, non-ASCII characters as they are."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        # orjson refuses a lone surrogate (say, in an error message quoting bad input);
        # the standard library escapes it, and the frame stays valid JSON.
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def unstructure(value: Any) -> Any:
    """A message value as the plain JSON values V1 writes for it."""
    return _converter.unstructure(value)


def encode_reply(reply: Ok | Error) -> bytes:
    """One reply as UTF-8 JSON (no terminator: framing belongs to the transport)."""
    out: dict[str, Any]
    if isinstance(reply, Ok):
        out = {"type": "ok"}
        if reply.rid is not None:
            out["rid"] = reply.rid
        out.update(_converter.unstructure(reply.result))
    else:
        out = {"type": "error"}
        if reply.rid is not None:
            out["rid"] = reply.rid
        out["code"] = str(reply.code)
        out["message"] = reply.message
        if reply.retry_after_ms is not None:
            out["retry_after_ms"] = reply.retry_after_ms
    return dumps(out)


def encode_event(event: Event) -> bytes:
    """One event as UTF-8 JSON; callers encode once and send the bytes to every recipient."""
    out: dict[str, Any] = {"type": event.TYPE}
    out.update(_converter.unstructure(event))
    return dumps(out)


def with_seq(payload: bytes, seq: int) -> bytes:
    """An encoded event with ``seq`` added (an ``acks`` connection, protocol 1.2): the
    bytes encoded once for every recipient, with the field spliced in before the
    closing brace, instead of encoding the event again per connection."""
    assert payload.endswith(b"}")
    return b'%s,"seq":%d}' % (payload[:-1], seq)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        MessageEvent,
        GroupMessageEvent,
        FriendAddedEvent,
        FriendRemovedEvent,
        PresenceEvent,
        LoggedOutEvent,
        GroupJoinedEvent,
        FriendRequestEvent,
        ReadEvent,
        TypingEvent,
    )
}


class BadServerMessage(ValueError):
    """What the server sent does not match the protocol (used by clients)."""


def decode_server_message(cls: type[T], message: dict[str, Any]) -> T:
    """A reply's fields or an event, from the server, as ``cls`` (clients use this)."""
    try:
        return _converter.structure(message, cls)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise BadServerMessage(f"unexpected {cls.__name__} from the server: {exc}") from None


def decode_server_event(message: dict[str, Any]) -> Event | None:
    """The event in ``message``; ``None`` for a type this client does not know (newer server)."""
    cls = EVENT_TYPES.get(str(message.get("type")))
    return None if cls is None else decode_server_message(cls, message)


class Codec(Protocol):
    """A wire format for a connection: how requests are read and replies and events
    written. Protocol v1 is ``V1``; another (such as the original system's) plugs in
    beside it, and a connection encodes what it sends with its own codec."""

    @property
    def name(self) -> str: ...

    def decode_request(self, frame: bytes | str) -> DecodedRequest: ...

    def encode_reply(self, reply: Ok | Error) -> bytes:
        """The reply's bytes; empty: the protocol has no such reply, nothing is written."""

    def encode_event(self, event: Event) -> bytes:
        """The event's bytes; empty: the protocol has no such event, nothing is written."""

    @property
    def login_carries_kept(self) -> bool:
        """The login reply itself carries the first kept messages (``encode_login``), so
        it is written only once they have been read; v1 announces a count instead."""

    def encode_login(self, reply: Ok, kept: Sequence[DeliveredEvent]) -> tuple[bytes, int]:
        """The login reply carrying the first of ``kept`` (the oldest kept messages, in
        order), and how many of them it carries; the rest are sent as events after it."""


@attrs.frozen
class JsonCodec:
    """Protocol v1 and its additions: one JSON object per frame."""

    name: str = "v1"

    def decode_request(self, frame: bytes | str) -> DecodedRequest:
        return decode_request(frame)

    def encode_reply(self, reply: Ok | Error) -> bytes:
        return encode_reply(reply)

    def encode_event(self, event: Event) -> bytes:
        return encode_event(event)

    @property
    def login_carries_kept(self) -> bool:
        return False

    def encode_login(self, reply: Ok, kept: Sequence[DeliveredEvent]) -> tuple[bytes, int]:
        return encode_reply(reply), 0


V1: Codec = JsonCodec()


__all__ = [
    "EVENT_TYPES",
    "V1",
    "BadServerMessage",
    "Codec",
    "DecodedRequest",
    "JsonCodec",
    "ProtocolError",
    "check_description",
    "check_new_name",
    "check_new_password",
    "check_rid",
    "decode_request",
    "decode_server_event",
    "decode_server_message",
    "dumps",
    "encode_event",
    "encode_reply",
    "parse_object",
    "request_from_object",
    "unstructure",
    "with_seq",
]
