"""What a typed line means: parsing ``/commands`` into typed values. No I/O.

Names may contain spaces (the protocol forbids only control characters), so an
argument may be quoted: ``/msg "Ada Lovelace" hello``. The last argument of a
command that ends in free text (``/msg``, ``/g``, a group description) takes the
rest of the line verbatim, quotes and all.
"""

from __future__ import annotations

import attrs


class UsageError(Exception):
    """The line is not a valid command; the message says how to write it."""


@attrs.frozen
class Register:
    name: str
    password: str | None


@attrs.frozen
class Login:
    name: str
    password: str | None


@attrs.frozen
class Logout:
    everywhere: bool = False
    """``/logout everywhere``: every other device of the user too, and every token."""


@attrs.frozen
class Devices:
    pass


@attrs.frozen
class ForgetDevice:
    device: str


@attrs.frozen
class Who:
    name: str


@attrs.frozen
class Friend:
    name: str


@attrs.frozen
class Friends:
    pass


@attrs.frozen
class Unfriend:
    name: str


@attrs.frozen
class Block:
    name: str


@attrs.frozen
class Unblock:
    name: str


@attrs.frozen
class BlockedList:
    pass


@attrs.frozen
class Requests:
    """``/requests``: the friend requests waiting for this user's answer."""


@attrs.frozen
class Accept:
    name: str


@attrs.frozen
class Decline:
    name: str


@attrs.frozen
class ChangeSettings:
    """``/settings [friend-requests anyone|approve]``: None shows them unchanged."""

    friend_requests: str | None = None


@attrs.frozen
class Members:
    group: str


@attrs.frozen
class Msg:
    name: str
    text: str


@attrs.frozen
class GroupCreate:
    name: str
    description: str


@attrs.frozen
class GroupJoin:
    group_id: int


@attrs.frozen
class Groups:
    pass


@attrs.frozen
class GroupSay:
    group: str
    text: str


@attrs.frozen
class Say:
    """A line without ``/``: goes to whoever the last ``/msg`` or ``/g`` went to."""

    text: str


@attrs.frozen
class HistoryOf:
    """``/history [NAME|GROUP] [N]``: ``where`` None is the current conversation."""

    where: str | None
    count: int


@attrs.frozen
class Chats:
    """``/chats``: the conversations, newest first, with unread counts."""


@attrs.frozen
class Help:
    pass


@attrs.frozen
class Quit:
    pass


Command = (
    Register
    | Login
    | Logout
    | Devices
    | ForgetDevice
    | Who
    | Friend
    | Friends
    | Unfriend
    | Block
    | Unblock
    | BlockedList
    | Requests
    | Accept
    | Decline
    | ChangeSettings
    | Members
    | Msg
    | GroupCreate
    | GroupJoin
    | Groups
    | GroupSay
    | Say
    | HistoryOf
    | Chats
    | Help
    | Quit
)

USAGE: dict[str, str] = {
    "/register": "/register NAME [PASSWORD]",
    "/login": "/login NAME [PASSWORD]",
    "/logout": "/logout [everywhere]",
    "/devices": "/devices",
    "/forget-device": "/forget-device NAME",
    "/who": "/who NAME",
    "/friend": "/friend NAME",
    "/friends": "/friends",
    "/unfriend": "/unfriend NAME",
    "/block": "/block NAME",
    "/unblock": "/unblock NAME",
    "/blocked": "/blocked",
    "/requests": "/requests",
    "/accept": "/accept NAME",
    "/decline": "/decline NAME",
    "/settings": "/settings [friend-requests anyone|approve]",
    "/members": "/members GROUP",
    "/msg": "/msg NAME TEXT",
    "/group": "/group create NAME [DESCRIPTION]  or  /group join ID",
    "/groups": "/groups",
    "/g": "/g GROUP TEXT",
    "/history": "/history [NAME|GROUP] [N]",
    "/chats": "/chats",
    "/help": "/help",
    "/quit": "/quit",
}
COMMAND_NAMES = tuple(USAGE)
GROUP_ACTIONS = ("create", "join")
LOGOUT_OPTIONS = ("everywhere",)

HELP = """\
Commands (arguments with spaces go in quotes: /msg "Ada L" hi):
  /register NAME [PASSWORD]   create an account (the password is asked for if left out)
  /login NAME [PASSWORD]      log in; messages that waited for you are shown, marked (offline)
  /logout                     log out and stay connected
  /logout everywhere          log out here and on all your other devices (each is told)
  /devices                    where you are logged in: each device, online or when last seen
  /forget-device NAME         drop a device that is not logged in: what was kept for it,
                              and its remembered logins ("" is the device of old clients)
  /who NAME                   look a user up: id and whether they are online
  /friend NAME                add a friend (friendship is mutual)
  /friends                    your friends and who of them is online (kept up to date:
                              the server says when a friend comes or goes)
  /unfriend NAME              end a friendship (for both of you; they are told if online)
  /block NAME                 block a user: they can no longer message you or add you as
                              a friend, and a friendship ends (they are not told)
  /unblock NAME               undo /block
  /blocked                    the users you have blocked
  /requests                   friend requests waiting for your answer
  /accept NAME                accept NAME's friend request: you become friends
  /decline NAME               drop NAME's friend request (they are not told)
  /settings                   your settings; /settings friend-requests approve makes
                              anyone who adds you wait for /accept (anyone: the default)
  /msg NAME TEXT              send a direct message
  /group create NAME [DESC]   create a group; you become its creator
  /group join ID              join a group by its id
  /groups                     the groups you are in
  /members GROUP              the members of one of your groups (by name or id)
  /g GROUP TEXT               send to a group, named by id or by its name
  TEXT (no slash)             send to whoever your last /msg or /g went to
  /history [NAME|GROUP] [N]   the last N messages (20) with a user or in a group
                              (default: where your last /msg or /g went); what it
                              shows counts as read (the sender sees it read)
  /chats                      your conversations, newest first, with what is unread
  /help                       this text
  /quit                       leave (Ctrl-D works too)
Tab completes commands, friends' names, group names and device names (after /devices).
What you send from another of your devices shows here as "you (on another device)".
A direct message of yours gets one tick once sent, and "read by NAME" with two ticks once
the other person has read it (words instead of ticks where the terminal cannot show them).
Messages that arrive in the conversation you are in count as read."""


def split_args(rest: str, count: int) -> tuple[list[str], str]:
    """Take up to ``count`` (possibly quoted) words from ``rest``; return them and the rest.

    The rest is returned verbatim apart from the whitespace that separated it.
    """
    words: list[str] = []
    pos = 0
    while len(words) < count:
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        if pos >= len(rest):
            break
        if rest[pos] in "\"'":
            quote = rest[pos]
            end = rest.find(quote, pos + 1)
            if end < 0:
                raise UsageError(f"unclosed {quote} quote")
            words.append(rest[pos + 1 : end])
            pos = end + 1
            if pos < len(rest) and not rest[pos].isspace():
                raise UsageError(f"put a space after the closing {quote} quote")
        else:
            start = pos
            while pos < len(rest) and not rest[pos].isspace():
                pos += 1
            words.append(rest[start:pos])
    return words, rest[pos:].strip()


def parse(line: str) -> Command | None:
    """The command on ``line``, or ``None`` for a blank line; raises ``UsageError``."""
    stripped = line.strip()
    if not stripped:
        return None
    if not stripped.startswith("/"):
        return Say(stripped)
    head, _, rest = stripped.partition(" ")
    head = head.lower()
    parser = _PARSERS.get(head)
    if parser is None:
        raise UsageError(f"unknown command {head}; /help lists the commands")
    try:
        return parser(rest)
    except UsageError as exc:
        raise UsageError(f"{exc}; usage: {USAGE.get(head, head)}") from None


def _exactly(rest: str, count: int, what: str) -> list[str]:
    words, extra = split_args(rest, count)
    if len(words) < count:
        raise UsageError(f"missing {what}")
    if extra:
        raise UsageError(f"unexpected {extra!r}")
    return words


def _nothing(rest: str) -> None:
    if rest.strip():
        raise UsageError(f"unexpected {rest.strip()!r}")


def _credentials(rest: str) -> tuple[str, str | None]:
    words, extra = split_args(rest, 2)
    if not words:
        raise UsageError("missing NAME")
    if extra:
        raise UsageError("too many words (quote a name or password with spaces)")
    return words[0], words[1] if len(words) > 1 else None


def _register(rest: str) -> Command:
    return Register(*_credentials(rest))


def _login(rest: str) -> Command:
    return Login(*_credentials(rest))


def _logout(rest: str) -> Command:
    words, extra = split_args(rest, 1)
    if extra or (words and words[0].lower() not in LOGOUT_OPTIONS):
        raise UsageError(f"unexpected {rest.strip()!r}")
    return Logout(everywhere=bool(words))


def _devices(rest: str) -> Command:
    _nothing(rest)
    return Devices()


def _forget_device(rest: str) -> Command:
    return ForgetDevice(*_exactly(rest, 1, "NAME"))


def _who(rest: str) -> Command:
    return Who(*_exactly(rest, 1, "NAME"))


def _friend(rest: str) -> Command:
    return Friend(*_exactly(rest, 1, "NAME"))


def _friends(rest: str) -> Command:
    _nothing(rest)
    return Friends()


def _unfriend(rest: str) -> Command:
    return Unfriend(*_exactly(rest, 1, "NAME"))


def _block(rest: str) -> Command:
    return Block(*_exactly(rest, 1, "NAME"))


def _unblock(rest: str) -> Command:
    return Unblock(*_exactly(rest, 1, "NAME"))


def _blocked(rest: str) -> Command:
    _nothing(rest)
    return BlockedList()


def _requests(rest: str) -> Command:
    _nothing(rest)
    return Requests()


def _accept(rest: str) -> Command:
    return Accept(*_exactly(rest, 1, "NAME"))


def _decline(rest: str) -> Command:
    return Decline(*_exactly(rest, 1, "NAME"))


FRIEND_REQUEST_SETTINGS = ("anyone", "approve")


def _settings(rest: str) -> Command:
    if not rest.strip():
        return ChangeSettings()
    words = rest.split()
    if (
        len(words) == 2
        and words[0] in ("friend-requests", "friend_requests")
        and words[1] in FRIEND_REQUEST_SETTINGS
    ):
        return ChangeSettings(words[1])
    raise UsageError("expected friend-requests anyone or friend-requests approve")


def _members(rest: str) -> Command:
    return Members(*_exactly(rest, 1, "GROUP"))


def _msg(rest: str) -> Command:
    words, text = split_args(rest, 1)
    if not words:
        raise UsageError("missing NAME")
    if not text:
        raise UsageError("missing TEXT")
    return Msg(words[0], text)


def _group(rest: str) -> Command:
    words, rest = split_args(rest, 1)
    action = words[0].lower() if words else ""
    if action == "create":
        names, description = split_args(rest, 1)
        if not names:
            raise UsageError("missing NAME")
        if len(description) >= 2 and description[0] == description[-1] and description[0] in "\"'":
            description = description[1:-1]
        return GroupCreate(names[0], description)
    if action == "join":
        (text,) = _exactly(rest, 1, "ID")
        return GroupJoin(_group_id(text))
    raise UsageError("say create or join")


def _group_id(text: str) -> int:
    digits = text.removeprefix("#")
    if not digits.isdigit() or int(digits) < 1:
        raise UsageError(f"{text!r} is not a group id (a positive number)")
    return int(digits)


def _groups(rest: str) -> Command:
    _nothing(rest)
    return Groups()


def _group_say(rest: str) -> Command:
    words, text = split_args(rest, 1)
    if not words:
        raise UsageError("missing GROUP")
    if not text:
        raise UsageError("missing TEXT")
    return GroupSay(words[0], text)


HISTORY_DEFAULT = 20
HISTORY_MAX = 1000


def _history(rest: str) -> Command:
    words, extra = split_args(rest, 2)
    if extra:
        raise UsageError(f"unexpected {extra!r}")
    where: str | None = None
    count = HISTORY_DEFAULT
    if len(words) == 2:
        where, count = words[0], _count(words[1])
    elif len(words) == 1 and words[0].isdigit():
        count = _count(words[0])  # a user called "5": /history 5 20
    elif words:
        where = words[0]
    return HistoryOf(where, count)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= HISTORY_MAX:
        raise UsageError(f"{text!r} is not a number of messages (1-{HISTORY_MAX})")
    return int(text)


def _chats(rest: str) -> Command:
    _nothing(rest)
    return Chats()


def _help(rest: str) -> Command:
    return Help()


def _quit(rest: str) -> Command:
    return Quit()


_PARSERS = {
    "/register": _register,
    "/login": _login,
    "/logout": _logout,
    "/devices": _devices,
    "/forget-device": _forget_device,
    "/who": _who,
    "/friend": _friend,
    "/friends": _friends,
    "/unfriend": _unfriend,
    "/block": _block,
    "/unblock": _unblock,
    "/blocked": _blocked,
    "/requests": _requests,
    "/accept": _accept,
    "/decline": _decline,
    "/settings": _settings,
    "/members": _members,
    "/msg": _msg,
    "/group": _group,
    "/groups": _groups,
    "/g": _group_say,
    "/history": _history,
    "/chats": _chats,
    "/help": _help,
    "/quit": _quit,
    "/exit": _quit,
}


def without_secret(line: str) -> str:
    """``line`` as it may be kept in the history: a password given inline is dropped."""
    stripped = line.strip()
    head, _, rest = stripped.partition(" ")
    if head.lower() not in ("/login", "/register"):
        return line
    try:
        words, _ = split_args(rest, 1)
    except UsageError:
        return head
    if not words:
        return head
    return f"{head} {quote(words[0])}"


def quote(name: str) -> str:
    """A name as it must be typed: quoted when it holds whitespace or starts with a quote."""
    if name and not any(c.isspace() for c in name) and name[0] not in "\"'":
        return name
    return f"'{name}'" if '"' in name else f'"{name}"'
