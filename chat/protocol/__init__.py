"""Protocol v1: typed messages, the JSON codec and line framing. No I/O, no trio."""

from .codec import (
    V1,
    Codec,
    DecodedRequest,
    ProtocolError,
    decode_request,
    encode_event,
    encode_reply,
)
from .errors import ErrorCode, RequestError
from .framing import MAX_LINE_BYTES, FrameTooLarge, LineSplitter

__all__ = [
    "MAX_LINE_BYTES",
    "V1",
    "Codec",
    "DecodedRequest",
    "ErrorCode",
    "FrameTooLarge",
    "LineSplitter",
    "ProtocolError",
    "RequestError",
    "decode_request",
    "encode_event",
    "encode_reply",
]
