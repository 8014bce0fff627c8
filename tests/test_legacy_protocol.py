"""The original system's protocol without I/O: finding objects in a byte stream, and
the codec's mapping of msgids to requests and of replies and events to msgids."""

from __future__ import annotations

import json

import pytest

from chat.protocol import FrameTooLarge, ProtocolError
from chat.protocol.legacy import LOGIN_ACK_BYTES, LegacyCodec, LegacySplitter
from chat.protocol.messages import (
    AddFriend,
    CreateGroup,
    Empty,
    Error,
    FriendAddedEvent,
    GroupDetail,
    GroupMessageEvent,
    GroupSend,
    JoinGroup,
    Login,
    LoginResult,
    Logout,
    Member,
    MessageEvent,
    Ok,
    PresenceEvent,
    Register,
    Send,
    Sent,
    UserPresence,
    UserRef,
    UserResult,
)

A = b'{"msgid":6,"msg":"a {\\"quoted\\"} }{ brace"}'
B = b'{"msgid":7,"friendid":2}'
C = '{"msgid":6,"msg":"é\\\\"}'.encode()


@pytest.mark.parametrize("end", [b"\0", b"\n", b"\r\n", b"", b" "])
def test_objects_found_with_any_terminator_split_anywhere(end: bytes) -> None:
    data = A + end + B + end + C + end
    for cut in range(len(data) + 1):
        splitter = LegacySplitter()
        assert splitter.feed(data[:cut]) + splitter.feed(data[cut:]) == [A, B, C], cut


def test_byte_by_byte() -> None:
    splitter = LegacySplitter()
    frames = []
    for byte in A + B + b"\0" + C:
        frames += splitter.feed(bytes([byte]))
    assert frames == [A, B, C]


def test_broken_objects_and_text_end_at_a_boundary_and_the_next_is_read() -> None:
    splitter = LegacySplitter()
    data = b'{"msgid":6,"msg":"unclosed\0' + B + b'\nnot json\n{"open":{\0' + C + b"[1]" + A
    frames = splitter.feed(data)
    assert frames == [b'{"msgid":6,"msg":"unclosed', B, b"not json", b'{"open":{', C, b"[1]", A]


def test_an_object_over_the_limit_is_refused_without_holding_more() -> None:
    splitter = LegacySplitter(max_object=100)
    assert splitter.feed(b"{" + b"x" * 98 + b"}") == [b"{" + b"x" * 98 + b"}"]
    splitter.feed(b'{"a":"' + b"x" * 90)
    assert splitter.room <= 5
    with pytest.raises(FrameTooLarge):
        splitter.feed(b"x" * 10)
    with pytest.raises(FrameTooLarge):
        LegacySplitter(max_object=100).feed(b"{" + b"x" * 100 + b"}\0")


# --- the codec ------------------------------------------------------------------


def test_each_request_msgid_becomes_our_request_and_claims_are_ignored() -> None:
    codec = LegacyCodec()
    cases = {
        '{"msgid":1,"id":7,"password":"pw"}': Login(id=7, password="pw"),  # type: ignore[arg-type]
        '{"msgid":3,"id":99}': Logout(),
        '{"msgid":4,"name":"ann","password":"pw"}': Register("ann", "pw"),  # type: ignore[arg-type]
        '{"msgid":6,"id":99,"name":"eve","toid":5,"msg":"hi","time":"x"}': Send(5, "hi"),  # type: ignore[arg-type]
        '{"msgid":7,"id":99,"friendid":5}': AddFriend(5),  # type: ignore[arg-type]
        '{"msgid":8,"id":99,"groupname":"g","groupdesc":""}': CreateGroup("g", ""),  # type: ignore[arg-type]
        '{"msgid":9,"id":99,"groupid":3}': JoinGroup(3),  # type: ignore[arg-type]
        '{"msgid":10,"id":99,"name":"eve","groupid":3,"msg":"yo","time":"x"}': GroupSend(3, "yo"),  # type: ignore[arg-type]
    }
    for frame, request in cases.items():
        decoded = codec.decode_request(frame.encode())
        assert decoded.request == request, frame
        assert decoded.rid == json.loads(frame)["msgid"]


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"id":1}', "msgid: required"),
        (b'{"msgid":"6"}', "msgid: must be an integer"),
        (b'{"msgid":42}', "unknown msgid 42"),
        (b'{"msgid":2,"errno":0}', "unknown msgid 2"),
        (b'{"msgid":6,"toid":"5","msg":"hi"}', "toid: must be an integer"),
        (b'{"msgid":6,"toid":5}', "msg: required field missing"),
        (b'{"msgid":1,"password":"x"}', "id"),
        (b'{"msgid":9,"groupid":null}', "groupid: must not be null"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(frame: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        LegacyCodec().decode_request(frame)
    assert problem in raised.value.message


def _result(friends: int = 1, groups: int = 1) -> LoginResult:
    return LoginResult(
        user=UserRef(1, "ann"),
        friends=[UserPresence(2 + i, f"bob{i}", i == 0) for i in range(friends)],
        groups=[
            GroupDetail(
                10 + i,
                f"g{i}",
                "desc",
                "creator",
                [
                    Member(1, "ann", "creator"),
                    Member(2, "bob0", "normal"),
                    Member(9, "x", "normal"),
                ],
            )
            for i in range(groups)
        ],
        offline=0,
    )


def test_login_ack_holds_json_text_in_its_lists() -> None:
    payload, carried = LegacyCodec().encode_login(Ok(1, _result()), [])
    ack = json.loads(payload)
    assert carried == 0 and "offlinemsg" not in ack
    assert (ack["msgid"], ack["errno"], ack["id"], ack["name"]) == (2, 0, 1, "ann")
    assert [json.loads(f) for f in ack["friends"]] == [{"id": 2, "name": "bob0", "state": "online"}]
    group = json.loads(ack["groups"][0])
    assert (group["id"], group["groupname"], group["groupdesc"]) == (10, "g0", "desc")
    assert [json.loads(u) for u in group["users"]] == [
        {"id": 1, "name": "ann", "state": "online", "role": "creator"},
        {"id": 2, "name": "bob0", "state": "online", "role": "normal"},
        {"id": 9, "name": "x", "state": "offline", "role": "normal"},
    ]
    bare, _ = LegacyCodec().encode_login(Ok(1, _result(friends=0, groups=0)), [])
    assert json.loads(bare) == {"msgid": 2, "errno": 0, "id": 1, "name": "ann"}


def test_login_ack_carries_kept_messages_while_under_1000_bytes() -> None:
    kept = [MessageEvent(i, UserRef(2, "bob0"), 1, f"message {i}", 0, True) for i in range(50)]
    payload, carried = LegacyCodec().encode_login(Ok(1, _result()), kept)
    assert 0 < carried < 50
    assert len(payload) < LOGIN_ACK_BYTES
    ack = json.loads(payload)
    texts = [json.loads(m)["msg"] for m in ack["offlinemsg"]]
    assert texts == [f"message {i}" for i in range(carried)]
    # One more would have passed the limit.
    more, _ = LegacyCodec().encode_login(Ok(1, _result()), kept[: carried + 1])
    assert len(json.loads(more)["offlinemsg"]) == carried


def test_replies_and_events_as_the_original_writes_them() -> None:
    codec = LegacyCodec()
    assert json.loads(codec.encode_reply(Ok(4, UserResult(UserRef(7, "ann"))))) == {
        "msgid": 5,
        "errno": 0,
        "id": 7,
    }
    assert json.loads(codec.encode_reply(Error(4, "name_taken", "taken"))) == {
        "msgid": 5,
        "errno": 1,
    }
    assert json.loads(codec.encode_reply(Error(1, "bad_credentials", "no"))) == {
        "msgid": 2,
        "errno": 1,
        "errmsg": "id or password is invalid!",
    }
    assert json.loads(codec.encode_reply(Error(1, "already_online", "no")))["errno"] == 2
    # No acks for anything else, and no error replies.
    assert codec.encode_reply(Ok(6, Sent(1, 2))) == b""
    assert codec.encode_reply(Ok(3, Empty())) == b""
    assert codec.encode_reply(Error(None, "bad_json", "x")) == b""
    assert codec.encode_reply(Error(6, "not_friends", "x")) == b""
    ts = 1_700_000_000_000
    direct = json.loads(codec.encode_event(MessageEvent(1, UserRef(2, "bob"), 1, "hi", ts, False)))
    assert direct.pop("time").count(":") == 2
    assert direct == {"msgid": 6, "id": 2, "name": "bob", "toid": 1, "msg": "hi"}
    group = json.loads(
        codec.encode_event(GroupMessageEvent(1, 3, UserRef(2, "bob"), "yo", ts, True))
    )
    assert (group["msgid"], group["groupid"], group["id"], group["msg"]) == (10, 3, 2, "yo")
    assert codec.encode_event(PresenceEvent(UserRef(2, "bob"), True)) == b""
    assert codec.encode_event(FriendAddedEvent(UserPresence(2, "bob", True))) == b""
