"""The chat as a person sees it: commands in, lines out, events at any moment.

Task tree, per connection (``App._converse``)::

    connection nursery
    ├── event pump      (prints events the moment they arrive)
    ├── acker           (acknowledges what the pump printed, a burst at a time)
    └── command loop    (reads a line, runs it, waits for its reply)

Whoever notices first that the connection is gone (the pump, when the event
channel ends, or a command, when its reply cannot come) cancels the connection
nursery, so a prompt or a stdin read in progress ends too. The app then says
so, and in a terminal offers to reconnect; after reconnecting it logs in again
with the same name and password and resends a message whose ``ok`` never came,
with the same ``cid``, so the server delivers it at most once. A line entered
just as the connection dropped, before it could be sent, is kept by the console
and runs first on the new connection.

Devices and acknowledged delivery (protocol 1.2): every login names this
client's device (``--device``, or the id kept in the config folder; a session
token belongs to the device whose login issued it, so it is kept, and used
again, with that device) and asks for ``acks``. The server then keeps each
message for this device until the client says it was shown: the pump notes the
highest ``seq`` it printed, and once the burst of events that arrived together
is printed the acker sends one ``ack`` for all of it (the next burst waits for
that reply, then goes in one ack too). The last of them is acknowledged before
``/logout`` and before leaving, so a message the client did not get to print
comes again, marked ``(offline)``, at the next login instead of being lost with
the connection.

Everything the client knows (friends, groups, names) lives in ``Known``; how it
is shown lives in ``render``; where lines come from lives in the ``Console``.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from chat.client import ChatClient, ConnectionLost
from chat.protocol.codec import BadServerMessage, decode_server_event, decode_server_message
from chat.protocol.messages import (
    BlockedPage,
    ConversationsPage,
    DevicesResult,
    FoundUser,
    FriendAddedEvent,
    FriendRemovedEvent,
    FriendRequestEvent,
    FriendRequestsPage,
    FriendResult,
    FriendsPage,
    GroupJoinedEvent,
    GroupMessageEvent,
    GroupResult,
    GroupsPage,
    JoinResult,
    LoggedOutEvent,
    LoginResult,
    MembersPage,
    MessageEvent,
    PresenceEvent,
    ReadEvent,
    Sent,
    TypingEvent,
    UserRef,
    UserResult,
)

from . import commands as cmd
from . import render
from .commands import UsageError, quote
from .connection import CannotConnect, Target, open_client
from .remembered import Remembered, TokenFile
from .render import Line, notice
from .state import Conversation, Known
from .terminal import Console

OFFLINE_WAIT_SECONDS = 10.0
"""How long ``/login`` waits for the kept messages the login reply announced."""
SUMMARY_FRIENDS = 20
"""The login summary names friends up to this many; beyond it, it counts them."""


P = TypeVar("P", FriendsPage, GroupsPage, MembersPage, BlockedPage, FriendRequestsPage)
_LIST_KEYS = {
    "friends": "friends",
    "groups": "groups",
    "group_members": "members",
    "blocked": "users",
    "friend_requests": "requests",
}
HISTORY_PAGE = 200
"""The most messages one ``history`` request may ask for."""
TYPING_QUIET_SECONDS = 10.0
""""bob is typing" is shown at most once in this long per friend (a typing client
repeats ``active: true`` every few seconds)."""


class Exit(enum.IntEnum):
    OK = 0
    COMMAND_FAILED = 1
    USAGE = 2
    CONNECTION = 3


class Outcome(enum.Enum):
    QUIT = "quit"
    LOST = "lost"
    ENDED = "ended"
    """The server logged this device out (``/logout everywhere`` on another) and closed."""


class CommandFailed(Exception):
    """The server answered ``error``; the message is the server's own."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@enum.unique
class _Kind(enum.Enum):
    DIRECT = "send"
    GROUP = "group_send"


class _Unsent:
    """A ``send`` or ``group_send`` whose reply has not come yet (kept to resend it)."""

    def __init__(self, kind: _Kind, fields: dict[str, Any], show: Callable[[Sent], Line]) -> None:
        self.kind = kind
        self.fields = fields
        self.show = show


class App:
    def __init__(
        self,
        target: Target,
        console: Console,
        tokens: TokenFile | None = None,
        *,
        remember: bool = False,
        device: str,
        device_chosen: bool = False,
    ) -> None:
        self.target = target
        self.console = console
        self.tokens = tokens
        """Where remembered tokens are: one found for this server logs in at start, in a
        terminal always, in a piped run only with ``remember`` (a script that logs in
        by itself must not find itself logged in as someone else)."""
        self.remember = remember
        """Keep the token of each login in ``tokens`` (per server and device), and use a
        kept one in a piped run too (``--remember``)."""
        self.device = device
        """The device a password login names (``--device``, or this machine's id)."""
        self.device_chosen = device_chosen
        """``device`` came from ``--device``: only its own remembered token is used."""
        self.known = Known()
        self._token: str | None = None
        """The session token of the last login: a reconnect logs in with it."""
        self._token_device = ""
        """The device that token belongs to (a token login must name it again)."""
        self._ended = False
        """The server said ``logged_out``: the connection's end is no loss."""
        self._shown_seq = 0
        """The highest ``seq`` printed since this connection's last login."""
        self._acked_seq = 0
        """The highest ``seq`` the server has been told of (``ack``)."""
        self._ack_wanted = trio.Event()
        self._ack_lock = trio.Lock()
        """One ``ack`` at a time, and none while a login resets the count."""
        self.failures = 0
        self._client: ChatClient | None = None
        self._scope: trio.CancelScope | None = None
        self._credentials: tuple[str, str] | None = None
        """The last successful login, to log in again after a reconnect."""
        self._unsent: _Unsent | None = None
        self._events_lock = trio.Lock()
        """Held by ``/login`` until its summary is printed, so kept messages follow it."""
        self._offline_left = 0
        self._offline_done = trio.Event()
        self.marks = render.Marks.for_encoding(getattr(sys.stdout, "encoding", None))
        """Ticks for receipts, or words where the terminal's encoding lacks them."""
        self._to_mark: dict[tuple[bool, int], int] = {}
        """(group?, id) of a conversation -> the newest message shown in it, to mark read."""
        self._mark_wanted = trio.Event()
        self._receipts: dict[int, int] = {}
        """User id -> the highest message id a receipt of theirs said they read."""
        self._typing_shown: dict[int, float] = {}

    # -- connections --------------------------------------------------------------

    async def run(self) -> int:
        """Converse until ``/quit`` or the end of input; return the exit status."""
        while True:
            outcome = await self._connection()
            if outcome is Outcome.QUIT:
                return Exit.COMMAND_FAILED if self.failures else Exit.OK
            if outcome is Outcome.ENDED:
                continue  # connect again, logged out, to /login as anyone
            if not self.console.interactive:
                if self._unsent is not None:
                    self.console.problem(render.error("your last message may not have been sent"))
                return Exit.CONNECTION
            if not await self.console.confirm("* reconnect? [Y/n] "):
                return Exit.CONNECTION

    async def _connection(self) -> Outcome:
        try:
            async with open_client(self.target) as client:
                return await self._converse(client)
        except CannotConnect as exc:
            self.console.problem(render.error(str(exc)))
            return Outcome.LOST

    async def _converse(self, client: ChatClient) -> Outcome:
        self._client = client
        outcome = Outcome.LOST
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._pump, client)
                nursery.start_soon(self._acker)
                nursery.start_soon(self._marker)
                if self.console.interactive:
                    self.console.show(notice(f"connected to {self.target}; /help lists commands"))
                await self._resume()
                outcome = await self._command_loop()
                if outcome is Outcome.QUIT:
                    await self._ack()  # what was shown is not kept for the next login
                nursery.cancel_scope.cancel()
        finally:
            self._client = None
            self._scope = None
        if outcome is Outcome.QUIT:
            return outcome
        if self._ended:
            self._ended = False
            self.known.disconnected()
            return Outcome.ENDED
        self.known.disconnected()
        self.console.problem(render.error(f"the connection to {self.target} was lost"))
        if self._unsent is not None and self.console.interactive:
            self.console.show(
                notice("your last message got no reply; it is sent again when you reconnect")
            )
        if self.console.held_line() is not None:
            self.console.show(notice("the line you just entered runs when you reconnect"))
        return Outcome.LOST

    def _lose(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _resume(self) -> None:
        """After a reconnect: log in again, then resend what had no reply. At the first
        connection: log in with the token remembered for this server and device, if any
        (in a piped run only with ``--remember``)."""
        if self._token is None and self._credentials is None:
            remembered = self._remembered()
            if remembered is not None:
                await self._login_with_token(
                    remembered.token, remembered.device, remembered.name, remembered=True
                )
        elif self._token is not None and self.known.me is None:
            await self._login_with_token(self._token, self._token_device, None)
        if self._credentials is not None and self.known.me is None:
            name, password = self._credentials
            try:
                await self._login(name, password)
            except (CommandFailed, BadServerMessage) as exc:
                self._credentials = None
                self.console.problem(render.error(f"could not log in again as {name}: {exc}"))
        unsent, self._unsent = self._unsent, None
        if unsent is None:
            return
        if self.known.me is None:
            self.console.problem(render.error("your last message may not have been sent"))
            return
        try:
            await self._send(unsent)
        except (CommandFailed, BadServerMessage) as exc:
            self.console.problem(render.error(f"your last message was not sent: {exc}"))

    def _remembered(self) -> Remembered | None:
        """The token kept for this server and device, if this run may use it (in a
        piped run only with ``--remember``). Without ``--device``, one kept by a
        chat-cli from before devices (device ``""``) serves too."""
        if self.tokens is None or not (self.console.interactive or self.remember):
            return None
        server = str(self.target)
        found = self.tokens.get(server, self.device)
        if found is None and not self.device_chosen:
            found = self.tokens.get(server, "")
        return found

    async def _pump(self, client: ChatClient) -> None:
        async for message in client.events:
            async with self._events_lock:
                self._on_event(message)
                seq = message.get("seq")
                if isinstance(seq, int) and not isinstance(seq, bool):
                    self._shown_seq = max(self._shown_seq, seq)
            if client.events.statistics().current_buffer_used == 0:
                self._ack_wanted.set()  # the burst is shown: acknowledge it
        self._lose()

    async def _acker(self) -> None:
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted = trio.Event()
            await self._ack()

    async def _ack(self) -> None:
        """Acknowledge, in one ``ack``, every event shown since the last one."""
        async with self._ack_lock:
            seq = self._shown_seq
            if seq <= self._acked_seq or self.known.me is None:
                return
            reply = await self._request("ack", seq=seq)
            self._acked_seq = seq
        if reply.get("type") == "error":
            self.console.problem(render.error(f"acknowledging messages: {reply.get('message')}"))

    async def _marker(self) -> None:
        """Mark read what was shown of the conversation one is in (``read``): the
        newest message of each conversation shown since the last time, one request each."""
        while True:
            await self._mark_wanted.wait()
            self._mark_wanted = trio.Event()
            pending, self._to_mark = self._to_mark, {}
            for (group, where), message_id in pending.items():
                if self.known.me is not None:
                    await self._mark_read(group, where, message_id)

    async def _mark_read(self, group: bool, where: int, message_id: int) -> None:
        # Only a courtesy to the sender: a refusal (left the group meanwhile) is not shown.
        field: dict[str, Any] = {"group_id": where} if group else {"with": where}
        await self._request("read", message_id=message_id, **field)

    def _shown_in_conversation(self, event: MessageEvent | GroupMessageEvent) -> None:
        """A message from someone else shown while its conversation is the current one:
        it counts as read."""
        me, current = self.known.me, self.known.conversation
        if me is None or current is None or event.from_.id == me.id:
            return
        if isinstance(event, GroupMessageEvent):
            key = (True, event.group_id)
        else:
            key = (False, event.from_.id)
        if key == (current.group, current.id):
            self._to_mark[key] = max(self._to_mark.get(key, 0), event.message_id)
            self._mark_wanted.set()

    async def _request(self, kind: str, **fields: Any) -> dict[str, Any]:
        assert self._client is not None, "requests are made inside _converse"
        try:
            return await self._client.request(kind, **fields)
        except (ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError):
            self._lose()
            await trio.sleep_forever()  # cancelled at once: _lose cancelled our scope

    async def _call(self, kind: str, **fields: Any) -> dict[str, Any]:
        reply = await self._request(kind, **fields)
        if reply.get("type") == "error":
            code = reply.get("code")
            raise CommandFailed(
                str(reply.get("message") or code), code if isinstance(code, str) else None
            )
        return reply

    # -- events -------------------------------------------------------------------

    def _on_event(self, message: dict[str, Any]) -> None:
        if message.get("type") == "error":
            # An error no request waits for: the server says why it is closing.
            self.console.problem(render.error(str(message.get("message"))))
            return
        try:
            event = decode_server_event(message)
        except BadServerMessage as exc:
            self.console.problem(render.error(str(exc)))
            return
        if isinstance(event, LoggedOutEvent):
            # Another device logged out everywhere; the server closes this connection.
            self._ended = True
            self._forget_token(self._token)
            self._credentials = None
            self.known.logged_out()
            why = (
                "/logout everywhere on another of your devices"
                if event.reason == "everywhere"
                else f"the server says {event.reason!r}"
            )
            self.console.show(
                notice(("error", "you were logged out"), f" ({why}); /login NAME to log in again")
            )
        elif isinstance(event, GroupJoinedEvent):
            # Joined (or created) on another device: its messages come here too now.
            self.known.joined(event.group, event.role)
            verb = "created" if event.role == "creator" else "joined"
            self.console.show(
                notice(
                    f"you {verb} group ",
                    ("group", render.clean(event.group.name)),
                    f" (#{event.group.id}) on another device",
                )
            )
        elif isinstance(event, MessageEvent | GroupMessageEvent):
            self.known.learn(event.from_.id, event.from_.name)
            self.console.show(render.incoming(event, self.known))
            self._typing_shown.pop(event.from_.id, None)  # they sent it: typing again is news
            self._shown_in_conversation(event)
            if event.offline and self._offline_left > 0:
                self._offline_left -= 1
                if self._offline_left == 0:
                    self._offline_done.set()
        elif isinstance(event, ReadEvent):
            # A receipt: the other person read up to one's message. (A marker moved on
            # another of one's own devices needs nothing here.)
            if event.by is not None and event.message_id > self._receipts.get(event.by.id, 0):
                self._receipts[event.by.id] = event.message_id
                self.known.learn(event.by.id, event.by.name)
                self.console.show(render.receipt(event.by.name, self.marks))
        elif isinstance(event, TypingEvent):
            now = trio.current_time()
            last = self._typing_shown.get(event.from_.id)
            if event.active and (last is None or now - last > TYPING_QUIET_SECONDS):
                self._typing_shown[event.from_.id] = now
                self.console.show(render.typing(event.from_.name, self.marks))
        elif isinstance(event, FriendRemovedEvent):
            self.known.unfriended(event.friend.id)
            self.console.show(
                notice(("name", render.clean(event.friend.name)), " ended your friendship")
            )
        elif isinstance(event, PresenceEvent):
            # The server tells friends when a user comes or goes (protocol 1.1): the
            # friend list stays live. An event that changes nothing is not shown.
            if self.known.presence_changed(event.user, event.online):
                self.console.show(render.presence_change(event))
        elif isinstance(event, FriendRequestEvent):
            self.known.learn(event.from_.id, event.from_.name)
            name = render.clean(event.from_.name)
            self.console.show(
                notice(
                    ("name", name),
                    " asks to be your friend: ",
                    f"/accept {quote(event.from_.name)} or /decline {quote(event.from_.name)}",
                )
            )
        elif isinstance(event, FriendAddedEvent):
            self.known.befriended(event.friend)
            self.console.show(
                notice(
                    ("name", render.clean(event.friend.name)),
                    " added you as a friend (",
                    render.presence(event.friend),
                    ")",
                )
            )
        self._completions()

    # -- commands -----------------------------------------------------------------

    async def _command_loop(self) -> Outcome:
        while True:
            line = await self.console.read_line(self._prompt())
            if line is None:
                return Outcome.QUIT
            if not self.console.interactive and line.lstrip().startswith("#"):
                continue  # a comment in a script
            try:
                command = cmd.parse(line)
                if command is None:
                    continue
                if isinstance(command, cmd.Quit):
                    return Outcome.QUIT
                await self._execute(command)
            except (UsageError, CommandFailed, BadServerMessage) as exc:
                self.failures += 1
                self.console.problem(render.error(str(exc)))
            self._completions()

    def _prompt(self) -> Line:
        me = self.known.me
        if me is None:
            return (("", "> "),)
        line: list[render.Fragment] = [("me", render.clean(me.name))]
        to = self.known.conversation
        if to is not None:
            line.append(("dim", " -> "))
            if to.group:
                line.append(("group", f"[{render.clean(to.name)}]"))
            else:
                line.append(("name", render.clean(to.name)))
        line.append(("", "> "))
        return tuple(line)

    async def _execute(self, command: cmd.Command) -> None:
        match command:
            case cmd.Register(name, password):
                await self._register(name, password)
            case cmd.Login(name, password):
                if self.known.me is not None:
                    raise UsageError(f"you are logged in as {self.known.me.name}; /logout first")
                if password is None:
                    password = await self._ask_password(f"password for {name}: ")
                try:
                    await self._login(name, password)
                except CommandFailed as exc:
                    if exc.code != "already_online":
                        raise
                    raise CommandFailed(
                        f"{exc}; if another chat-cli here uses this device,"
                        " start this one with --device NAME",
                        exc.code,
                    ) from None
            case cmd.Logout(everywhere):
                self._need_login()
                await self._ack()  # what was shown is not kept for the next login
                # The token is revoked on the server too: nobody logs in with it again.
                # Everywhere: every token of the user, and every other device is closed.
                await self._call("logout", forget=True, everywhere=everywhere)
                self._forget_token(self._token)
                self.known.logged_out()
                self._credentials = None
                if everywhere:
                    self.console.show(
                        notice("logged out here and on all your other devices (they were told)")
                    )
                else:
                    self.console.show(notice("logged out"))
            case cmd.Devices():
                self._need_login()
                devices = decode_server_message(DevicesResult, await self._call("devices")).devices
                self.known.devices = tuple(d.device for d in devices)
                for line in render.device_list(devices, self.known.device):
                    self.console.show(line)
            case cmd.ForgetDevice(device):
                self._need_login()
                await self._call("forget_device", device=device)
                self.known.devices = tuple(d for d in self.known.devices if d != device)
                if self.tokens is not None:
                    self.tokens.forget(str(self.target), device)
                self.console.show(
                    notice(
                        "forgot the device ",
                        ("name", render.device_name(device)),
                        ": nothing is kept for it any more, and its logins are revoked",
                    )
                )
            case cmd.Who(name):
                found = decode_server_message(
                    FoundUser, await self._call("find_user", name=name)
                ).user
                self.known.seen(found)
                self.console.show(render.person(found, self.known))
            case cmd.Friend(name):
                self._need_login()
                user_id = await self._user_id(name)
                reply = await self._call("add_friend", user_id=user_id)
                friend = decode_server_message(FriendResult, reply)
                if reply.get("pending"):
                    # The other user approves requests (protocol 1.2): asked, not friends.
                    self.console.show(
                        notice(
                            "asked ",
                            ("name", render.clean(friend.friend.name)),
                            " to be your friend: waiting for their answer",
                        )
                    )
                    return
                self.known.befriended(friend.friend)
                self.console.show(
                    notice(
                        ("name", render.clean(friend.friend.name)),
                        " is your friend now (",
                        render.presence(friend.friend),
                        ")",
                    )
                )
            case cmd.Friends():
                self._need_login()
                for line in render.friend_list(self.known):
                    self.console.show(line)
            case cmd.Unfriend(name):
                self._need_login()
                user_id = await self._user_id(name)
                await self._call("remove_friend", user_id=user_id)
                self.known.unfriended(user_id)
                self.console.show(notice(("name", render.clean(name)), " is no longer your friend"))
            case cmd.Block(name):
                self._need_login()
                user_id = await self._user_id(name)
                await self._call("block", user_id=user_id)
                self.known.unfriended(user_id)
                self.console.show(
                    notice(
                        "blocked ",
                        ("name", render.clean(name)),
                        ": they cannot message you or add you as a friend (/unblock undoes it)",
                    )
                )
            case cmd.Unblock(name):
                self._need_login()
                await self._call("unblock", user_id=await self._user_id(name))
                self.console.show(notice("unblocked ", ("name", render.clean(name))))
            case cmd.BlockedList():
                self._need_login()
                users = [
                    user
                    for page in await self._pages("blocked", BlockedPage)
                    for user in page.users
                ]
                for user in users:
                    self.known.learn(user.id, user.name)
                for line in render.blocked_list(users):
                    self.console.show(line)
            case cmd.Requests():
                self._need_login()
                waiting = [
                    user
                    for page in await self._pages("friend_requests", FriendRequestsPage)
                    for user in page.requests
                ]
                for user in waiting:
                    self.known.learn(user.id, user.name)
                for line in render.request_list(waiting):
                    self.console.show(line)
            case cmd.Accept(name):
                self._need_login()
                user_id = await self._user_id(name)
                accepted = decode_server_message(
                    FriendResult, await self._call("accept_friend", user_id=user_id)
                )
                self.known.befriended(accepted.friend)
                self.console.show(
                    notice(
                        ("name", render.clean(accepted.friend.name)),
                        " is your friend now (",
                        render.presence(accepted.friend),
                        ")",
                    )
                )
            case cmd.Decline(name):
                self._need_login()
                await self._call("decline_friend", user_id=await self._user_id(name))
                self.console.show(
                    notice("declined ", ("name", render.clean(name)), "'s friend request")
                )
            case cmd.ChangeSettings(friend_requests):
                self._need_login()
                fields = {} if friend_requests is None else {"friend_requests": friend_requests}
                reply = await self._call("settings", **fields)
                value = str(reply["settings"]["friend_requests"])
                self.console.show(render.settings_line(value))
            case cmd.Members(which):
                self._need_login()
                group_id = self.known.resolve_group(which)
                members = [
                    member
                    for page in await self._pages("group_members", MembersPage, group_id=group_id)
                    for member in page.members
                ]
                for member in members:
                    self.known.learn(member.id, member.name)
                for line in render.member_list(self.known.group_name(group_id), members):
                    self.console.show(line)
            case cmd.Msg(name, text):
                self._need_login()
                await self._direct(await self._user_id(name), text)
            case cmd.GroupCreate(name, description):
                self._need_login()
                reply = await self._call("create_group", name=name, description=description)
                group = decode_server_message(GroupResult, reply).group
                self.known.joined(group, "creator")
                self.console.show(
                    notice(
                        "created group ",
                        ("group", render.clean(group.name)),
                        f" (#{group.id}); others join with /group join {group.id}",
                    )
                )
            case cmd.GroupJoin(group_id):
                self._need_login()
                joined = decode_server_message(
                    JoinResult, await self._call("join_group", group_id=group_id)
                )
                self.known.joined(joined.group, joined.role)
                self.console.show(
                    notice(
                        "joined group ",
                        ("group", render.clean(joined.group.name)),
                        f" (#{joined.group.id}); /g {quote(joined.group.name)} TEXT speaks there",
                    )
                )
            case cmd.Groups():
                self._need_login()
                for line in render.group_list(self.known.groups.values()):
                    self.console.show(line)
            case cmd.GroupSay(group, text):
                self._need_login()
                await self._to_group(self.known.resolve_group(group), text)
            case cmd.Say(text):
                self._need_login()
                to = self.known.conversation
                if to is None:
                    raise UsageError(
                        "commands start with / (see /help); after a /msg or /g, "
                        "lines without / go to the same place"
                    )
                if to.group:
                    await self._to_group(to.id, text)
                else:
                    await self._direct(to.id, text)
            case cmd.HistoryOf(where, count):
                self._need_login()
                await self._show_history(await self._conversation(where), count)
            case cmd.Chats():
                self._need_login()
                page = decode_server_message(ConversationsPage, await self._call("conversations"))
                for item in page.conversations:
                    if item.with_ is not None:
                        self.known.learn(item.with_.id, item.with_.name)
                for line in render.chat_list(page.conversations, self.known):
                    self.console.show(line)
                if page.more:
                    self.console.show(notice("older conversations: /history NAME shows any"))
            case cmd.Help():
                for text in cmd.HELP.splitlines():
                    self.console.show(render.plain(text))
            case cmd.Quit():
                pass

    def _need_login(self) -> None:
        if self.known.me is None:
            raise UsageError("log in first: /login NAME (or /register NAME to make an account)")

    async def _ask_password(self, prompt: str) -> str:
        if not self.console.interactive:
            raise UsageError("put the password on the line: there is no terminal to ask on")
        password = await self.console.read_secret(prompt)
        if not password:
            raise UsageError("no password given")
        return password

    async def _register(self, name: str, password: str | None) -> None:
        if password is None:
            password = await self._ask_password(f"new password for {name}: ")
            again = await self._ask_password("the same password again: ")
            if again != password:
                raise UsageError("the two passwords differ; nothing was registered")
        user = decode_server_message(
            UserResult, await self._call("register", name=name, password=password)
        ).user
        self.known.learn(user.id, user.name)
        hint = "" if self.known.me else f"; /login {quote(user.name)} to use it"
        self.console.show(
            notice("registered ", ("name", render.clean(user.name)), f" (#{user.id}){hint}")
        )

    async def _login(self, name: str, password: str) -> None:
        await self._enter(self.device, {"name": name, "password": password})
        self._credentials = (name, password)

    async def _login_with_token(
        self, token: str, device: str, name: str | None, *, remembered: bool = False
    ) -> None:
        """Log in with a session token, as the device it belongs to (``remembered``: the
        one kept in the token file, at start); one the server refuses is forgotten."""
        async with self._ack_lock:
            reply = await self._request("login", token=token, **_login_fields(device))
        if reply.get("type") == "ok":
            how = f"with the login remembered for {self.target} (/logout forgets it)"
            await self._enter(device, reply=reply, how=how if remembered else "")
            return
        who = name or (
            self.known.conversation_of and self.known.name_of(self.known.conversation_of)
        )
        if reply.get("code") == "bad_credentials":
            self._forget_token(token, device)
            self.console.problem(
                render.error(
                    f"the remembered login{' of ' + who if who else ''} has expired or was"
                    " revoked; /login NAME"
                )
            )
        elif remembered:
            # At start, already_online is another chat-cli here using this device.
            hint = (
                "if another chat-cli here uses this device, start this one with --device NAME"
                if reply.get("code") == "already_online"
                else "/login NAME"
            )
            self.console.problem(
                render.error(
                    f"the login remembered for {self.target}{f' ({who})' if who else ''} was"
                    f" not used: {reply.get('message')}; {hint}"
                )
            )
        else:
            self.console.problem(render.error(f"could not log in again: {reply.get('message')}"))

    def _forget_token(self, token: str | None, device: str | None = None) -> None:
        """This run is done with ``token`` (of ``device``, by default the device of the
        last login): forget it, also in the token file if it is the one kept there for
        that server and device (a login made without ``--remember`` leaves the kept one
        alone)."""
        self._token = None
        if self.tokens is None or token is None:
            return
        server = str(self.target)
        device = self._token_device if device is None else device
        kept = self.tokens.get(server, device)
        if kept is not None and kept.token == token:
            self.tokens.forget(server, device)

    async def _enter(
        self,
        device: str,
        fields: dict[str, Any] | None = None,
        reply: dict[str, Any] | None = None,
        how: str = "",
    ) -> None:
        """A login as ``device``: by ``fields``, or the ``reply`` of one already made
        (``how``: said after "logged in as NAME")."""
        async with self._events_lock:
            if reply is None:
                assert fields is not None
                async with self._ack_lock:
                    reply = await self._call("login", **fields, **_login_fields(device))
            # Its events count ``seq`` from 1 again; the pump waits for this lock.
            self._shown_seq = self._acked_seq = 0
            result = decode_server_message(LoginResult, reply)
            self.known.logged_in(result)
            # A long list was cut to fit the reply: the rest comes a page at a time.
            if result.friends_more:
                await self._all_friends(after=result.friends[-1].id if result.friends else None)
            if result.groups_more:
                after = {"after": result.groups[-1].id} if result.groups else {}
                for page in await self._pages("groups", GroupsPage, **after):
                    self.known.more_groups(page.groups)
            self._token = result.token
            self._token_device = device
            if self.remember and self.tokens is not None and result.token is not None:
                self.tokens.put(
                    str(self.target), Remembered(result.user.name, result.token, device)
                )
            self._offline_left = result.offline
            self._offline_done = trio.Event()
            if result.offline == 0:
                self._offline_done.set()
            for line in self._login_summary(result, how):
                self.console.show(line)
            self._completions()
        # Kept messages follow the reply: wait for them, so a script sees them all.
        with trio.move_on_after(OFFLINE_WAIT_SECONDS):
            await self._offline_done.wait()

    def _login_summary(self, result: LoginResult, how: str = "") -> list[Line]:
        lines = [
            notice(
                "logged in as ",
                ("me", render.clean(result.user.name)),
                f" (#{result.user.id})" + (f" {how}" if how else ""),
            )
        ]
        everyone = list(self.known.friends.values())
        if len(everyone) > SUMMARY_FRIENDS:
            online = sum(friend.online for friend in everyone)
            lines.append(
                notice(
                    render.count(len(everyone), "friend"),
                    f", {online} online (/friends lists them)",
                )
            )
        elif everyone:
            friends: list[str | render.Fragment] = ["friends: "]
            ordered = sorted(everyone, key=lambda f: (not f.online, f.name.casefold()))
            for i, friend in enumerate(ordered):
                if i:
                    friends.append(", ")
                friends += [("name", render.clean(friend.name)), " ", render.presence(friend)]
            lines.append(notice(*friends))
        else:
            lines.append(notice("no friends yet: /friend NAME adds one"))
        if self.known.groups:
            groups: list[str | render.Fragment] = ["groups: "]
            for i, group in enumerate(sorted(self.known.groups.values(), key=lambda g: g.id)):
                if i:
                    groups.append(", ")
                groups += [("group", render.clean(group.name)), ("dim", f" #{group.id}")]
            lines.append(notice(*groups))
        if result.offline:
            waited = render.count(result.offline, "message")
            lines.append(notice(("offline", f"{waited} waited for you while you were away:")))
        return lines

    async def _user_id(self, name: str) -> int:
        """A user's id: from what this client has seen, or else from ``find_user``."""
        user_id = self.known.names.get(name)
        if user_id is None:
            found = decode_server_message(FoundUser, await self._call("find_user", name=name)).user
            self.known.seen(found)
            user_id = found.id
        return user_id

    async def _all_friends(self, after: int | None = None) -> None:
        """Read the friend list from ``after`` on, a page at a time, into ``known``."""
        fields = {} if after is None else {"after": after}
        for page in await self._pages("friends", FriendsPage, **fields):
            self.known.more_friends(page.friends)

    async def _pages(self, kind: str, cls: type[P], **fields: Any) -> list[P]:
        """Every page of a list request (``friends``, ``groups``, ``group_members``,
        ``blocked``): each asks for ids after the last one of the page before."""
        pages: list[P] = []
        while True:
            reply = await self._call(kind, **fields)
            page = decode_server_message(cls, reply)
            pages.append(page)
            items = reply.get(_LIST_KEYS[kind]) or []
            if not reply.get("more") or not items:
                return pages
            fields = {**fields, "after": items[-1]["id"]}

    async def _conversation(self, where: str | None) -> Conversation:
        """What ``/history`` shows: the current conversation, a group (``#7``, or the
        name of one of yours) or a user."""
        if where is None:
            if self.known.conversation is None:
                raise UsageError("no conversation yet: /history NAME or /history GROUP")
            return self.known.conversation
        if (where.startswith("#") and where[1:].isdigit()) or any(
            g.name.casefold() == where.casefold() for g in self.known.groups.values()
        ):
            group_id = self.known.resolve_group(where)
            return Conversation(group_id, self.known.group_name(group_id), group=True)
        user_id = await self._user_id(where)
        return Conversation(user_id, self.known.name_of(user_id) or where, group=False)

    async def _show_history(self, where: Conversation, count: int) -> None:
        """The last ``count`` messages of a conversation, oldest first, paged backwards."""
        fields: dict[str, Any] = {"group_id": where.id} if where.group else {"with": where.id}
        items: list[dict[str, Any]] = []
        more = True
        while more and len(items) < count:
            reply = await self._call(
                "history", **fields, limit=min(HISTORY_PAGE, count - len(items))
            )
            page, more = list(reply.get("messages") or []), bool(reply.get("more"))
            items[:0] = page
            if not page:
                break
            fields["before"] = page[0]["message_id"]
        shown = (
            ("group", f"[{render.clean(where.name)}]")
            if where.group
            else (
                "name",
                render.clean(where.name),
            )
        )
        if not items:
            self.console.show(notice("no messages with ", shown, " yet"))
            return
        self.console.show(
            notice(f"the last {render.count(len(items), 'message')} with ", shown, ":")
        )
        for item in items:
            self.console.show(self._history_line(where, item))
        # Shown: read, up to the newest (the server ignores a marker that would go back).
        await self._mark_read(where.group, where.id, int(items[-1]["message_id"]))
        if more:
            self.console.show(
                notice(
                    f"older ones: /history {quote(where.name)} {min(count * 2, cmd.HISTORY_MAX)}"
                )
            )

    def _history_line(self, where: Conversation, item: dict[str, Any]) -> Line:
        event: MessageEvent | GroupMessageEvent
        if where.group:
            event = decode_server_message(GroupMessageEvent, {**item, "offline": False})
        else:
            event = decode_server_message(MessageEvent, {**item, "offline": False})
        sender: UserRef = event.from_
        self.known.learn(sender.id, sender.name)
        if self.known.me is not None and sender.id == self.known.me.id:
            if where.group:
                return render.sent_group(where.name, event.text, event.ts)
            return render.sent_direct(where.name, event.text, event.ts)
        return render.incoming(event, self.known)

    async def _switch_to(self, where: Conversation) -> None:
        """In a terminal, a new conversation opens with its last messages."""
        if self.known.conversation == where:
            return
        self.known.conversation = where
        if self.console.interactive:
            with contextlib.suppress(CommandFailed):  # the send says what is wrong
                await self._show_history(where, cmd.HISTORY_DEFAULT)

    async def _direct(self, user_id: int, text: str) -> None:
        name = self.known.name_of(user_id) or f"#{user_id}"
        await self._switch_to(Conversation(user_id, name, group=False))
        fields = {"to": user_id, "text": text, "cid": uuid.uuid4().hex}
        await self._send(
            _Unsent(
                _Kind.DIRECT,
                fields,
                lambda sent: self._with_sent_mark(render.sent_direct(name, text, sent.ts)),
            )
        )

    def _with_sent_mark(self, line: Line) -> Line:
        """In a terminal, a direct message shows its "sent" tick (a piped run's output
        stays as scripts read it)."""
        return render.sent_mark(line, self.marks) if self.console.interactive else line

    async def _to_group(self, group_id: int, text: str) -> None:
        name = self.known.group_name(group_id)
        await self._switch_to(Conversation(group_id, name, group=True))
        fields = {"group_id": group_id, "text": text, "cid": uuid.uuid4().hex}
        await self._send(
            _Unsent(_Kind.GROUP, fields, lambda sent: render.sent_group(name, text, sent.ts))
        )

    async def _send(self, unsent: _Unsent) -> None:
        """Send and show it; kept in ``_unsent`` until the reply, to resend if the line drops."""
        self._unsent = unsent
        try:
            reply = await self._call(unsent.kind.value, **unsent.fields)
        except CommandFailed:
            self._unsent = None
            raise
        self._unsent = None
        self.console.show(unsent.show(decode_server_message(Sent, reply)))

    def _completions(self) -> None:
        self.console.completions(self.known.completions())


def _login_fields(device: str) -> dict[str, Any]:
    """What every login adds (protocol 1.2): acknowledged delivery, and the device;
    the device ``""`` is a login that names none."""
    return {"acks": True, **({"device": device} if device else {})}
