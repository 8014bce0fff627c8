"""chat-cli's pure parts: command parsing, completion, group lookup, safe rendering."""

from __future__ import annotations

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from chat.cli import commands as cmd
from chat.cli.render import clean, to_text
from chat.cli.state import Completions, Group, Known
from chat.cli.terminal import ChatCompleter


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
