"""chat-cli's pure parts: command parsing, completion, group lookup, safe rendering."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from chat.cli import commands as cmd
from chat.cli.remembered import Remembered, TokenFile, check_device, stable_device
from chat.cli.render import clean, incoming, to_text
from chat.cli.state import Completions, Group, Known
from chat.cli.terminal import ChatCompleter
from chat.protocol.messages import GroupMessageEvent, MessageEvent, UserRef


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/register ada s3cret", cmd.Register("ada", "s3cret")),
        ("/login ada", cmd.Login("ada", None)),
        ('/login "Ada Lovelace" "pass word"', cmd.Login("Ada Lovelace", "pass word")),
        ("/msg bob  hello   there ", cmd.Msg("bob", "hello   there")),
        ('/msg "Bob B" "quoted" text', cmd.Msg("Bob B", '"quoted" text')),
        ("/group create rust", cmd.GroupCreate("rust", "")),
        ('/group create rust "for crabs"', cmd.GroupCreate("rust", "for crabs")),
        ("/group create rust for crabs", cmd.GroupCreate("rust", "for crabs")),
        ("/group join 7", cmd.GroupJoin(7)),
        ("/group join #7", cmd.GroupJoin(7)),
        ("/g rust hi all", cmd.GroupSay("rust", "hi all")),
        ("/WHO ada", cmd.Who("ada")),
        ("/friends", cmd.Friends()),
        ("/logout", cmd.Logout()),
        ("/logout everywhere", cmd.Logout(everywhere=True)),
        ("/devices", cmd.Devices()),
        ("/forget-device laptop", cmd.ForgetDevice("laptop")),
        ('/forget-device "old box"', cmd.ForgetDevice("old box")),
        ('/forget-device ""', cmd.ForgetDevice("")),
        ("just text", cmd.Say("just text")),
        ("/quit", cmd.Quit()),
        ("   ", None),
    ],
)
def test_parse(line: str, command: cmd.Command | None) -> None:
    assert cmd.parse(line) == command


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("/msg bob", "missing TEXT"),
        ("/msg", "missing NAME"),
        ("/login", "missing NAME"),
        ("/login a b c", "too many words"),
        ('/who "ada', "unclosed"),
        ("/group join x", "not a group id"),
        ("/group leave 1", "create or join"),
        ("/friends now", "unexpected"),
        ("/logout now", "unexpected 'now'; usage: /logout \\[everywhere\\]"),
        ("/forget-device", "missing NAME"),
        ("/frobnicate", "unknown command"),
    ],
)
def test_parse_rejects_with_usage(line: str, complaint: str) -> None:
    with pytest.raises(cmd.UsageError, match=complaint):
        cmd.parse(line)


def test_history_never_keeps_an_inline_password() -> None:
    assert cmd.without_secret("/login ada s3cret") == "/login ada"
    assert cmd.without_secret('/register "Ada L" s3cret') == '/register "Ada L"'
    assert cmd.without_secret("/msg ada s3cret") == "/msg ada s3cret"


def _complete(text: str, snapshot: Completions) -> list[str]:
    completer = ChatCompleter()
    completer.snapshot = snapshot
    document = Document(text, len(text))
    return [c.text for c in completer.get_completions(document, CompleteEvent())]


def test_tab_completes_commands_friends_and_groups() -> None:
    snapshot = Completions(friends=("bob", "Bo Peep"), names=("bobby",), groups=("rust",))
    assert _complete("/fr", snapshot) == ["/friend ", "/friends "]
    assert _complete("/msg bo", snapshot) == ["bob ", '"Bo Peep" ', "bobby "]
    assert _complete('/msg "Bo P', snapshot) == ['"Bo Peep" ']
    assert _complete("/msg bob hel", snapshot) == []  # the text is not completed
    assert _complete("/g r", snapshot) == ["rust "]
    assert _complete("/group j", snapshot) == ["join "]
    assert _complete("/logout e", snapshot) == ["everywhere "]
    with_devices = Completions(devices=("old box", "phone"))
    assert _complete("/forget-device ", with_devices) == ['"old box" ', "phone "]
    assert _complete("/forget-device p", with_devices) == ["phone "]


def test_groups_resolve_by_id_or_name() -> None:
    known = Known()
    known.groups = {
        3: Group(3, "rust", "", "creator"),
        9: Group(9, "42", "", "normal"),
    }
    assert known.resolve_group("rust") == 3
    assert known.resolve_group("RUST") == 3
    assert known.resolve_group("42") == 9  # a name of yours wins over an id
    assert known.resolve_group("#42") == 42
    assert known.resolve_group("5") == 5  # not yours: the server decides
    with pytest.raises(cmd.UsageError, match="no group called"):
        known.resolve_group("python")


def test_text_from_others_cannot_drive_the_terminal() -> None:
    assert clean("hi\x1b[2Jthere") == "hi\\x1b[2Jthere"
    assert clean("two\nlines") == "two\n  lines"
    line = (("name", "ada"), ("", ": hi"))
    assert to_text(line, colour=False) == "ada: hi"
    assert to_text(line, colour=True) == "\x1b[1;36mada\x1b[0m: hi"


def test_the_device_id_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "config" / "chat-cli" / "device"
    first = stable_device(path)
    assert check_device(first) == first and first.startswith("cli-")
    assert stable_device(path) == first
    assert path.parent.stat().st_mode & 0o777 == 0o700
    path.write_text("\x1b[2J\n")  # not a device name: replaced by a good one
    replaced = stable_device(path)
    assert replaced != first and stable_device(path) == replaced
    with pytest.raises(ValueError, match="control characters"):
        check_device("a\nb")
    with pytest.raises(ValueError, match="1 to 64"):
        check_device("x" * 65)


def test_tokens_are_kept_per_server_and_device(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    tokens.path.write_text(json.dumps({"s:1": {"name": "old", "token": "t0"}}))
    assert tokens.get("s:1", "") == Remembered("old", "t0", "")  # from before devices
    assert tokens.get("s:1", "laptop") is None
    tokens.put("s:1", Remembered("kim", "t1", "laptop"))
    tokens.put("s:1", Remembered("kim", "t2", "phone"))
    assert tokens.get("s:1", "laptop") == Remembered("kim", "t1", "laptop")
    assert tokens.get("s:1", "") == Remembered("old", "t0", "")  # still there
    tokens.forget("s:1", "")
    tokens.forget("s:1", "laptop")
    assert json.loads(tokens.path.read_text()) == {"s:1": {"phone": {"name": "kim", "token": "t2"}}}
    tokens.forget("s:1", "phone")
    assert json.loads(tokens.path.read_text()) == {}


def test_two_first_starts_at_once_agree_on_one_device_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other chat-cli links its id into place between our read and our link."""
    path = tmp_path / "device"
    real_link = os.link

    def other_was_first(source: Path, target: Path) -> None:
        Path(target).write_text("cli-0the0one\n")
        monkeypatch.setattr(os, "link", real_link)
        raise FileExistsError(target)

    monkeypatch.setattr(os, "link", other_was_first)
    assert stable_device(path) == "cli-0the0one"
    assert [p.name for p in tmp_path.iterdir()] == ["device"]  # no temporary file left


def test_own_messages_from_another_device_read_as_yours() -> None:
    known = Known()
    known.me = UserRef(1, "ann")
    known.learn(2, "bob")
    known.groups = {3: Group(3, "den", "", "normal")}

    def shown(event: MessageEvent | GroupMessageEvent) -> str:
        return to_text(incoming(event, known), colour=False).split(" ", 1)[1]  # after HH:MM

    ann, bob = UserRef(1, "ann"), UserRef(2, "bob")
    now = int(time.time() * 1000)
    assert shown(MessageEvent(7, ann, 2, "hi", now, False)) == "you (on another device) -> bob: hi"
    assert shown(MessageEvent(7, ann, 9, "hi", now, False)) == "you (on another device) -> #9: hi"
    assert shown(GroupMessageEvent(7, 3, ann, "hi", now, False)) == (
        "[den] you (on another device): hi"
    )
    assert shown(MessageEvent(7, ann, 1, "note", now, False)) == "ann: note"  # to oneself
    assert shown(MessageEvent(7, bob, 1, "yo", now, False)) == "bob: yo"
    assert shown(GroupMessageEvent(7, 3, bob, "yo", now, True)) == "(offline) [den] bob: yo"
