"""Decoding: each kind of bad input gets its code and a message naming the field."""

from typing import Any

import pytest

from chat.protocol import ErrorCode, ProtocolError, decode_request, encode_event, encode_reply
from chat.protocol.messages import (
    Empty,
    Error,
    GroupMessageEvent,
    Login,
    MessageEvent,
    Ok,
    Send,
    UserRef,
)


def fails(frame: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(frame)
    return info.value


@pytest.mark.parametrize(
    "frame",
    [b"nope", b"\xff\xfe", b"[1,2]", b'"text"', b"42", b"null", b'{"type":"ping"', b"NaN"],
)
def test_bad_json(frame: bytes) -> None:
    assert fails(frame).code == ErrorCode.BAD_JSON


def test_unknown_type_comes_before_field_checks_and_keeps_the_rid() -> None:
    error = fails('{"type":"fly","rid":"r1","to":"x"}')
    assert (error.code, error.rid) == (ErrorCode.UNKNOWN_TYPE, "r1")


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ('{"rid":1}', "type"),
        ('{"type":7}', "type"),
        ('{"type":"send","to":"2","text":"hi"}', "to"),
        ('{"type":"send","to":true,"text":"hi"}', "to"),
        ('{"type":"send","to":0,"text":"hi"}', "to"),
        ('{"type":"send","to":2.0,"text":"hi"}', "to"),
        ('{"type":"send","to":2,"text":""}', "text"),
        ('{"type":"send","to":2,"text":"' + "x" * 4097 + '"}', "text"),
        ('{"type":"send","to":2,"text":"ok","cid":""}', "cid"),
        ('{"type":"send","to":2,"text":"ok","cid":"' + "c" * 65 + '"}', "cid"),
        ('{"type":"send","to":2,"text":"ok","cid":null}', "cid"),
        ('{"type":"send","to":2,"text":"\\ud800"}', "text"),
        ('{"type":"register","name":"","password":"p"}', "name"),
        ('{"type":"register","name":"' + "n" * 51 + '","password":"p"}', "name"),
        ('{"type":"register","name":"a\\u0007b","password":"p"}', "name"),
        ('{"type":"register","name":"a\\u0085b","password":"p"}', "name"),
        ('{"type":"register","name":"ab","password":""}', "password"),
        ('{"type":"register","name":"ab","password":"' + "p" * 1025 + '"}', "password"),
        ('{"type":"register","name":"ab"}', "password"),
        ('{"type":"login","password":"p"}', "name"),
        ('{"type":"login","name":"a","id":1,"password":"p"}', "id"),
        ('{"type":"login","id":"1","password":"p"}', "id"),
        ('{"type":"login","name":"a","password":5}', "password"),
        ('{"type":"create_group","name":"g","description":"' + "d" * 201 + '"}', "description"),
        ('{"type":"create_group","name":"g","description":null}', "description"),
        ('{"type":"join_group","group_id":-1}', "group_id"),
        ('{"type":"group_send","group_id":1}', "text"),
        ('{"type":"add_friend","user_id":[1]}', "user_id"),
        ('{"type":"find_user","name":{}}', "name"),
        ('{"type":"ping","rid":true}', "rid"),
        ('{"type":"ping","rid":1.5}', "rid"),
        ('{"type":"ping","rid":"' + "r" * 65 + '"}', "rid"),
        ('{"type":"ping","rid":18446744073709551616}', "rid"),
        ('{"type":"ping","rid":null}', "rid"),
    ],
)
def test_invalid_request_names_the_field(obj: str, field: str) -> None:
    error = fails(obj)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert field in error.message


def test_ids_have_no_upper_bound_in_the_protocol() -> None:
    """The store answers "no such" for ids no database row can have."""
    decoded = decode_request('{"type":"send","to":' + "9" * 40 + ',"text":"hi"}')
    assert isinstance(decoded.request, Send)
    assert decoded.request.to == int("9" * 40)


def test_an_invalid_rid_is_not_echoed() -> None:
    assert fails('{"type":"ping","rid":false}').rid is None


def test_a_valid_rid_is_echoed_on_field_errors() -> None:
    assert fails('{"type":"send","rid":-5,"to":"x","text":"t"}').rid == -5


@pytest.mark.parametrize("rid", ["", "r" * 64, 0, -(2**63), 2**64 - 1])
def test_rid_edges(rid: Any) -> None:
    import json

    assert decode_request(json.dumps({"type": "ping", "rid": rid})).rid == rid


def test_values_at_their_limits_and_extra_fields() -> None:
    decoded = decode_request(
        '{"type":"send","to":9223372036854775807,"text":"'
        + "é" * 4096
        + '","cid":"'
        + "c" * 64
        + '","future_field":[1]}'
    )
    assert isinstance(decoded.request, Send)
    assert len(decoded.request.text) == 4096
    login = decode_request('{"type":"login","id":3,"password":""}').request
    assert login == Login(password="", id=3)  # type: ignore[arg-type]


def test_encode_reply_and_events() -> None:
    assert encode_reply(Ok(None, Empty())) == b'{"type":"ok"}'
    assert encode_reply(Error("r", ErrorCode.BAD_JSON, "m")) == (
        b'{"type":"error","rid":"r","code":"bad_json","message":"m"}'
    )
    message = encode_event(MessageEvent(1, UserRef(2, "ann"), 3, "hi", 4, True))
    assert message == (
        b'{"type":"message","message_id":1,"from":{"id":2,"name":"ann"},'
        b'"to":3,"text":"hi","ts":4,"offline":true}'
    )
    group = encode_event(GroupMessageEvent(1, 9, UserRef(2, "ann"), "hé", 4, False))
    assert b'"group_id":9,"from":{"id":2,"name":"ann"}' in group
    assert "hé".encode() in group
