"""How things look: lines of styled fragments, shown in colour or as plain text. No I/O.

A ``Line`` is a tuple of ``(style, text)`` fragments; ``to_text`` turns it into
a string with ANSI colours (for a terminal) or without (for a pipe or a file),
so the wording is decided once for both. Text that came from other people goes
through ``clean`` first: a message must not be able to move the cursor or
recolour the terminal with escape sequences of its own.
"""

from __future__ import annotations

import datetime
import unicodedata
from collections.abc import Iterable

import attrs

from chat.protocol.messages import (
    ConversationItem,
    DeviceInfo,
    GroupMessageEvent,
    Member,
    MessageEvent,
    PresenceEvent,
    UserPresence,
    UserRef,
)

from .commands import quote
from .state import Group, Known

Fragment = tuple[str, str]
Line = tuple[Fragment, ...]

_SGR = {
    "time": "2",
    "name": "1;36",
    "me": "1;34",
    "group": "35",
    "offline": "33",
    "notice": "32",
    "error": "1;31",
    "online": "32",
    "away": "2",
    "dim": "2",
}


def to_text(line: Line, *, colour: bool) -> str:
    if not colour:
        return "".join(text for _, text in line)
    parts = []
    for style, text in line:
        code = _SGR.get(style)
        parts.append(f"\x1b[{code}m{text}\x1b[0m" if code and text else text)
    return "".join(parts)


def clean(text: str, indent: str = "  ") -> str:
    """``text`` safe to print: control characters shown as ``\\xNN``, newlines indented."""
    out = []
    for char in text:
        if char == "\n":
            out.append("\n" + indent)
        elif char == "\t":
            out.append("    ")
        elif unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            out.append(f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def clock(ts_ms: int, now: datetime.datetime | None = None) -> str:
    """Local time of a server timestamp: ``14:02``, with the date when it is not today."""
    when = datetime.datetime.fromtimestamp(ts_ms / 1000)
    now = now or datetime.datetime.now()
    if when.date() == now.date():
        return when.strftime("%H:%M")
    return when.strftime("%Y-%m-%d %H:%M")


def notice(*parts: str | Fragment) -> Line:
    """A line from the client itself: ``* text``."""
    return (("notice", "* "), *_fragments(parts))


def error(text: str) -> Line:
    return (("error", "error: "), ("", clean(text)))


def plain(*parts: str | Fragment) -> Line:
    return tuple(_fragments(parts))


def _fragments(parts: Iterable[str | Fragment]) -> list[Fragment]:
    return [("", part) if isinstance(part, str) else part for part in parts]


ANOTHER_DEVICE = "you (on another device)"


def own_copy(event: MessageEvent | GroupMessageEvent, known: Known) -> bool:
    """A message this user sent from another of its devices (protocol 1.2): a group
    message from oneself, or a direct one from oneself to someone else (one sent to
    oneself is an ordinary message, as in version 1)."""
    me = known.me
    if me is None or event.from_.id != me.id:
        return False
    return isinstance(event, GroupMessageEvent) or event.to != me.id


def incoming(event: MessageEvent | GroupMessageEvent, known: Known) -> Line:
    """A message someone sent: time, ``(offline)`` if it waited, ``[group]``, sender, text.
    What the user sent from another device reads like what it sent from here, marked."""
    line: list[Fragment] = [("time", clock(event.ts) + " ")]
    if event.offline:
        line.append(("offline", "(offline) "))
    if own_copy(event, known):
        if isinstance(event, GroupMessageEvent):
            line.append(("group", f"[{clean(known.group_name(event.group_id))}] "))
            line += [("me", ANOTHER_DEVICE), ("", ": " + clean(event.text))]
        else:
            to = known.name_of(event.to) or f"#{event.to}"
            line += [("me", ANOTHER_DEVICE), ("", " -> "), ("name", clean(to))]
            line.append(("", ": " + clean(event.text)))
        return tuple(line)
    if isinstance(event, GroupMessageEvent):
        line.append(("group", f"[{clean(known.group_name(event.group_id))}] "))
    mine = known.me is not None and event.from_.id == known.me.id
    line.append(("me" if mine else "name", clean(event.from_.name)))
    line.append(("", ": " + clean(event.text)))
    return tuple(line)


def sent_direct(to_name: str, text: str, ts: int) -> Line:
    return (
        ("time", clock(ts) + " "),
        ("me", "you"),
        ("", " -> "),
        ("name", clean(to_name)),
        ("", ": " + clean(text)),
    )


def sent_group(group_name: str, text: str, ts: int) -> Line:
    return (
        ("time", clock(ts) + " "),
        ("group", f"[{clean(group_name)}] "),
        ("me", "you"),
        ("", ": " + clean(text)),
    )


def presence(user: UserPresence) -> Fragment:
    return ("online", "online") if user.online else ("away", "offline")


def presence_change(event: PresenceEvent) -> Line:
    """``* alice is online`` / ``* alice went offline``."""
    change = ("online", "is online") if event.online else ("away", "went offline")
    return notice(("name", clean(event.user.name)), " ", change)


def device_name(name: str) -> str:
    """A device as it is typed after ``/forget-device``: quoted when it must be
    (``""`` is the device of clients that name none)."""
    return clean(quote(name))


def device_list(devices: Iterable[DeviceInfo], current: str | None) -> list[Line]:
    """``/devices``: this one first, then the others online, then by when last seen."""
    ordered = sorted(
        devices, key=lambda d: (d.device != current, not d.online, -d.last_seen, d.device)
    )
    if not ordered:
        return [notice("no devices known")]
    online = sum(d.online for d in ordered)
    lines = [notice(f"{count(len(ordered), 'device')}, {online} online:")]
    width = max(len(device_name(d.device)) for d in ordered)
    for device in ordered:
        line: list[Fragment] = [("", "  "), ("name", device_name(device.device).ljust(width))]
        line.append(("", "  "))
        if device.online:
            line.append(("online", "online"))
        else:
            line += [("away", "offline"), ("", ", last seen " + clock(device.last_seen))]
        if device.device == current:
            line.append(("me", "  (this one)"))
        lines.append(tuple(line))
    return lines


def person(user: UserPresence, known: Known) -> Line:
    """``/who``: name, id, presence, and whether it is a friend."""
    line: list[Fragment] = [
        ("name", clean(user.name)),
        ("dim", f" (#{user.id}) "),
        presence(user),
    ]
    if user.id in known.friends:
        line.append(("", ", your friend"))
    elif known.me is not None and user.id == known.me.id:
        line.append(("", ", that is you"))
    return tuple(line)


def friend_list(known: Known) -> list[Line]:
    friends = sorted(known.friends.values(), key=lambda f: (not f.online, f.name.casefold()))
    if not friends:
        return [notice("no friends yet: /friend NAME adds one")]
    online = sum(f.online for f in friends)
    lines = [notice(f"{count(len(friends), 'friend')}, {online} online:")]
    width = max(len(clean(f.name)) for f in friends)
    for friend in friends:
        lines.append(
            (("", "  "), ("name", clean(friend.name).ljust(width)), ("", "  "), presence(friend))
        )
    return lines


def blocked_list(users: Iterable[UserRef]) -> list[Line]:
    ordered = sorted(users, key=lambda u: u.name.casefold())
    if not ordered:
        return [notice("you have blocked nobody")]
    lines = [notice(f"{count(len(ordered), 'blocked user')}:")]
    for user in ordered:
        lines.append((("", "  "), ("name", clean(user.name)), ("dim", f" #{user.id}")))
    return lines


def request_list(users: Iterable[UserRef]) -> list[Line]:
    """The friend requests waiting for an answer (protocol 1.2), by name."""
    ordered = sorted(users, key=lambda u: u.name.casefold())
    if not ordered:
        return [notice("no friend requests are waiting")]
    lines = [
        notice(f"{count(len(ordered), 'friend request')} waiting (/accept NAME or /decline NAME):")
    ]
    for user in ordered:
        lines.append((("", "  "), ("name", clean(user.name)), ("dim", f" #{user.id}")))
    return lines


def settings_line(friend_requests: str) -> Line:
    meaning = (
        "anyone who adds you waits for your /accept"
        if friend_requests == "approve"
        else "anyone may add you as a friend"
    )
    return notice(f"friend requests: {friend_requests} ({meaning})")


def member_list(group_name: str, members: Iterable[Member]) -> list[Line]:
    ordered = list(members)
    lines = [notice(("group", clean(group_name)), f": {count(len(ordered), 'member')}:")]
    for member in ordered:
        line: list[Fragment] = [("", "  "), ("name", clean(member.name)), ("dim", f" #{member.id}")]
        if member.role == "creator":
            line.append(("dim", " (creator)"))
        lines.append(tuple(line))
    return lines


def group_list(groups: Iterable[Group]) -> list[Line]:
    ordered = sorted(groups, key=lambda g: g.id)
    if not ordered:
        return [notice("no groups yet: /group create NAME or /group join ID")]
    lines = [notice(f"{count(len(ordered), 'group')}:")]
    for group in ordered:
        line: list[Fragment] = [
            ("", "  "),
            ("dim", f"#{group.id} "),
            ("group", clean(group.name)),
        ]
        if group.role == "creator":
            line.append(("dim", " (creator)"))
        if group.description:
            line.append(("", " - " + clean(group.description)))
        lines.append(tuple(line))
    return lines


@attrs.frozen
class Marks:
    """How receipts look: ticks where the terminal can show them, words elsewhere."""

    sent: str
    read: str
    typing: str

    @classmethod
    def for_encoding(cls, encoding: str | None) -> Marks:
        try:
            "\u2713\u2026".encode(encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            return cls(sent="(sent)", read="(read)", typing="is typing...")
        return cls(sent="\u2713", read="\u2713\u2713", typing="is typing\u2026")


def sent_mark(line: Line, marks: Marks) -> Line:
    """A direct message just sent, with its "sent" mark."""
    return (*line, ("dim", " " + marks.sent))


def receipt(name: str, marks: Marks) -> Line:
    """``✓✓ read by bob``: bob has read the conversation up to one's latest message."""
    return (("dim", marks.read + " read by "), ("name", clean(name)))


def typing(name: str, marks: Marks) -> Line:
    return (("dim", "  "), ("name", clean(name)), ("dim", " " + marks.typing))


CHAT_PREVIEW = 60
"""Characters of a conversation's last message shown by ``/chats``."""


def chat_list(items: Iterable[ConversationItem], known: Known) -> list[Line]:
    """``/chats``: newest first, unread counts, the last message's start."""
    ordered = list(items)
    if not ordered:
        return [notice("no conversations yet: /msg NAME TEXT starts one")]
    unread = sum(1 for item in ordered if item.unread)
    lines = [notice(f"{count(len(ordered), 'conversation')}, {unread} with unread messages:")]
    for item in ordered:
        line: list[Fragment] = [("", "  "), ("time", clock(item.last.ts) + " ")]
        if item.group is not None:
            line.append(("group", f"[{clean(item.group.name)}]"))
        elif item.with_ is not None:
            line.append(("name", clean(item.with_.name)))
        if item.unread:
            shown = "999+" if item.unread >= 999 else str(item.unread)
            line.append(("offline", f" ({shown} unread)"))
        sender = item.last.from_
        who = "you" if known.me is not None and sender.id == known.me.id else sender.name
        text = (
            item.last.text
            if len(item.last.text) <= CHAT_PREVIEW
            else (item.last.text[:CHAT_PREVIEW] + "...")
        )
        line.append(("dim", f"  {clean(who)}: {clean(text, indent=' ')}"))
        lines.append(tuple(line))
    return lines


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
