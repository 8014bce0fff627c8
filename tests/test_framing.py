"""Line splitting: frames split and joined anywhere, limits enforced without over-buffering."""

import pytest

from chat.protocol import MAX_LINE_BYTES, FrameTooLarge, LineSplitter


def test_lines_split_and_joined_anywhere() -> None:
    data = '{"a":"é"}\n{"b":2}\r\n\n   \n{"c":3}\n'.encode()
    for cut in range(1, len(data)):
        splitter = LineSplitter()
        lines = splitter.feed(data[:cut]) + splitter.feed(data[cut:])
        assert lines == ['{"a":"é"}'.encode(), b'{"b":2}', b'{"c":3}'], cut


def test_byte_by_byte() -> None:
    splitter = LineSplitter()
    lines = []
    for byte in b'{"x":1}\r\n{"y":2}\n':
        lines += splitter.feed(bytes([byte]))
    assert lines == [b'{"x":1}', b'{"y":2}']
    assert splitter.room == MAX_LINE_BYTES + 2  # nothing held


def test_line_at_the_limit_is_accepted() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"x" * 10 + b"\r\n") == [b"x" * 10]
    assert splitter.feed(b"y" * 10 + b"\n") == [b"y" * 10]


def test_complete_line_over_the_limit_is_rejected() -> None:
    with pytest.raises(FrameTooLarge):
        LineSplitter(max_line=10).feed(b"x" * 11 + b"\n")


def test_unfinished_line_over_the_limit_is_rejected_before_its_end() -> None:
    splitter = LineSplitter(max_line=10)
    splitter.feed(b"x" * 11)  # could still be 10 bytes and a "\r"
    with pytest.raises(FrameTooLarge):
        splitter.feed(b"x")


def test_room_never_lets_the_buffer_pass_the_limit() -> None:
    splitter = LineSplitter(max_line=10)
    splitter.feed(b"abc")
    assert splitter.room == 9  # 10 + 2 - the three bytes held
