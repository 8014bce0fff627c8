"""chat-cli end to end: a real chat-server process, chat-cli in a pseudo-terminal.

Each test starts ``chat-server`` as a subprocess on port 0 with an SQLite file
in ``tmp_path`` and learns its port from the log. Interactive clients run under
pexpect in a pty (so stdin is a terminal and prompt_toolkit is in charge);
piped clients get their commands on stdin. Timeouts are generous and nothing
asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pexpect.popen_spawn
import pytest
import trio

from chat.client import connect

from .bulk_support import PASSWORD as BULK_PASSWORD
from .bulk_support import bulk_friends, bulk_users
from .support import free_port

pytestmark = pytest.mark.slow

TIMEOUT = 30
"""Seconds pexpect waits for a line: generous, the machine is shared."""
PASSWORD = "pa55-w0rd"
CLI = [sys.executable, "-m", "chat.cli.client"]


class Server:
    """A ``chat-server serve`` process; ``start`` again on the same port after ``kill``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.database = f"sqlite:///{tmp_path / 'chat.db'}"
        self.port = 0
        self.ws_port = 0
        self.http_port = 0
        """Where ``/metrics`` is: what the server counted (requests by type, deliveries)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def start(self, *, port: int = 0, websocket: bool = False) -> None:
        self._starts += 1
        log_path = self.tmp_path / f"server-{self._starts}.log"
        args = [sys.executable, "-m", "chat", "serve", "--port", str(port)]
        args += ["--database", self.database]
        self.http_port = free_port()
        args += ["--http-port", str(self.http_port)]
        if websocket:
            args += ["--ws-port", "0"]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while True:
            text = log_path.read_text(errors="replace")
            found = re.search(r"listening on \S+ port (\d+)", text)
            if found:
                self.port = int(found.group(1))
                ws = re.search(r"WebSocket on port \[(\d+)", text)
                self.ws_port = int(ws.group(1)) if ws else 0
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"chat-server did not start:\n{text}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def counted(self, name: str, **labels: str) -> float:
        """The sum of a counter of the server's ``/metrics`` over the series with ``labels``."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            text = response.read().decode()
        total = 0.0
        for found in re.finditer(rf"^{name}_total(?:{{(.*)}})? (\S+)$", text, re.M):
            have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
            if all(have.get(key) == value for key, value in labels.items()):
                total += float(found.group(2))
        return total

    def wait_counted(self, name: str, at_least: float, **labels: str) -> float:
        """Until the counter reaches ``at_least``; its value then."""
        deadline = time.monotonic() + TIMEOUT
        while (value := self.counted(name, **labels)) < at_least:
            assert time.monotonic() < deadline, f"{name} {labels} stayed at {value}"
            time.sleep(0.05)
        return value

    def kill(self) -> None:
        """Go away without warning (SIGKILL)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    running.start(websocket=True)
    try:
        yield running
    finally:
        running.stop()


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PROMPT_TOOLKIT_NO_CPR": "1",  # pexpect answers no cursor position requests
        "TERM": "xterm",
        "NO_COLOR": "1",
        "XDG_STATE_HOME": str(tmp_path / "state"),  # the history file goes here
        "XDG_CONFIG_HOME": str(tmp_path / "config"),  # and remembered tokens here
        "PYTHONUNBUFFERED": "1",
    }


Spawn = Callable[..., pexpect.spawn]


@pytest.fixture
def cli(server: Server, tmp_path: Path) -> Iterator[Spawn]:
    """Start chat-cli in a pseudo-terminal; every one is closed (and checked) at the end."""
    children: list[tuple[pexpect.spawn, io.StringIO]] = []

    def spawn(*args: str) -> pexpect.spawn:
        child = pexpect.spawn(
            CLI[0],
            [*CLI[1:], "--port", str(server.port), *args],
            env=_env(tmp_path),
            encoding="utf-8",
            timeout=TIMEOUT,
            dimensions=(40, 160),
        )
        transcript = io.StringIO()
        child.logfile_read = transcript
        children.append((child, transcript))
        child.expect_exact("connected to")
        return child

    try:
        yield spawn
    finally:
        for child, transcript in children:
            child.close(force=True)
            assert "Traceback" not in transcript.getvalue()


def run_piped(
    server: Server, commands: str, *args: str, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--port", str(server.port if port is None else port), *args],
        input=commands,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(server.tmp_path),
        check=False,
    )


def login(child: pexpect.spawn, name: str) -> None:
    """Log in with the password asked for at a masked prompt."""
    child.sendline(f"/login {name}")
    child.expect_exact(f"password for {name}:")
    child.sendline(PASSWORD)
    child.expect_exact(f"logged in as {name}")


def drawn(text: str) -> str:
    """A pattern for ``text`` typed at a prompt: drawn maybe in pieces, cursor moves between."""
    between = r"(?:\x1b\[[0-9;?]*[A-Za-z]|\r)*"
    return between.join(re.escape(char) for char in text)


def wait_until_stopped(pid: int) -> None:
    """Until ``pid`` is really stopped (SIGSTOP is delivered asynchronously)."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + TIMEOUT
    while stat.read_text().rpartition(")")[2].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


def wait_for_unread_request(port: int) -> None:
    """Until a connection to the (stopped) server on ``port`` holds bytes it has not read.

    That is the sign that the client sent its request: the reply cannot come.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for row in Path(table).read_text().splitlines()[1:]:
                    fields = row.split()
                    local_port = int(fields[1].rpartition(":")[2], 16)
                    unread = int(fields[4].partition(":")[2], 16)
                    if local_port == port and fields[3] == "01" and unread > 0:  # ESTABLISHED
                        return
        assert time.monotonic() < deadline, "the request never reached the server"
        time.sleep(0.01)


def quit_cleanly(child: pexpect.spawn, *, status: int = 0) -> str:
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == status
    assert isinstance(child.logfile_read, io.StringIO)
    return child.logfile_read.getvalue()


def test_two_users_befriend_chat_and_talk_in_a_group(cli: Spawn) -> None:
    alice = cli()
    alice.sendline("/register alice")
    alice.expect_exact("new password for alice:")
    alice.sendline(PASSWORD)
    alice.expect(drawn("*" * len(PASSWORD)))  # the docs promise a masked echo
    alice.expect_exact("the same password again:")
    alice.sendline(PASSWORD)
    alice.expect_exact("registered alice (#")
    login(alice, "alice")
    alice.expect_exact("no friends yet")

    bob = cli()
    bob.sendline(f"/register bob {PASSWORD}")
    bob.expect_exact("registered bob (#")
    login(bob, "bob")

    alice.sendline("/friend bob")
    alice.expect_exact("bob is your friend now (online)")
    bob.expect_exact("alice added you as a friend (online)")

    alice.send("/msg b\t")  # Tab completes the friend's name
    alice.sendline("hello bob")
    alice.expect_exact("you -> bob: hello bob")
    bob.expect_exact("alice: hello bob")
    bob.sendline("/msg alice hi alice")
    alice.expect_exact("bob: hi alice")
    bob.sendline("and a line without a command")  # goes where the last /msg went
    alice.expect_exact("bob: and a line without a command")

    alice.sendline('/group create rust "for crabs"')
    alice.expect(r"created group rust \(#(\d+)\)")
    group_id = alice.match.group(1)
    bob.sendline(f"/group join {group_id}")
    bob.expect_exact(f"joined group rust (#{group_id})")
    bob.sendline("/g rust hello rustaceans")
    bob.expect_exact("[rust] you: hello rustaceans")
    alice.expect_exact("[rust] bob: hello rustaceans")
    alice.sendline(f"/g {group_id} welcome")
    bob.expect_exact("[rust] alice: welcome")

    alice.sendline("/groups")
    alice.expect_exact(f"#{group_id} rust (creator) - for crabs")
    alice.sendline("/friends")
    alice.expect_exact("1 friend, 1 online")
    alice.sendline("/who bob")
    alice.expect_exact("bob (#2) online, your friend")

    alice.sendline("/msg nobody hi")
    alice.expect_exact("error: name: no user is called 'nobody'")

    quit_cleanly(bob)
    transcript = quit_cleanly(alice, status=1)  # the /msg to nobody failed
    assert PASSWORD not in transcript  # masked: shown as *, never as typed


def test_one_user_on_two_devices_side_by_side(server: Server, cli: Spawn) -> None:
    """Two chat-cli of one user (protocol 1.2 devices): both get what others send; what
    one sends, or a group it joins, shows on the other as the user's own."""
    setup = run_piped(server, f"/register alice {PASSWORD}\n/register bob {PASSWORD}\n")
    assert setup.returncode == 0, setup.stderr
    laptop = cli("--device", "laptop")
    login(laptop, "alice")
    phone = cli("--device", "phone")
    login(phone, "alice")
    bob = cli()
    login(bob, "bob")
    # A device is logged in once: a second chat-cli as the laptop is told how to differ.
    twin = run_piped(server, f"/login alice {PASSWORD}\n", "--device", "laptop")
    assert twin.returncode == 1
    assert "on device 'laptop'" in twin.stderr
    assert "if another chat-cli here uses this device, start this one with --device NAME" in (
        twin.stderr
    )

    bob.sendline("/msg alice hello both")
    for device in (laptop, phone):
        device.expect(r"\d\d:\d\d bob: hello both")

    laptop.sendline("/msg bob from the laptop")
    laptop.expect(r"\d\d:\d\d you -> bob: from the laptop")
    bob.expect(r"\d\d:\d\d alice: from the laptop")
    phone.expect(r"\d\d:\d\d you \(on another device\) -> bob: from the laptop")

    laptop.sendline("/group create den")
    laptop.expect_exact("created group den (#1)")
    phone.expect_exact("you created group den (#1) on another device")
    phone.send("/g d\t")  # the group is in the phone's Tab completion now
    phone.sendline("hi den")
    phone.expect_exact("[den] you: hi den")
    laptop.expect_exact("[den] you (on another device): hi den")
    # Neither shows its own message twice: a later message of the same sender (alice,
    # from the other device) comes after any copy there could have been.
    phone.sendline("/msg bob sentinel from the phone")
    laptop.expect_exact("you (on another device) -> bob: sentinel from the phone")
    laptop.sendline("/msg bob sentinel from the laptop")
    phone.expect_exact("you (on another device) -> bob: sentinel from the laptop")
    for child in (bob, phone, laptop):
        quit_cleanly(child)
    assert isinstance(laptop.logfile_read, io.StringIO)
    assert isinstance(phone.logfile_read, io.StringIO)
    assert "device) -> bob: from the laptop" not in laptop.logfile_read.getvalue()
    assert "you (on another device): hi den" not in phone.logfile_read.getvalue()


def test_devices_are_listed_forgotten_and_logged_out_everywhere(server: Server, cli: Spawn) -> None:
    tokens = server.tmp_path / "config" / "chat-cli" / "tokens.json"
    setup = run_piped(
        server, f"/register alice {PASSWORD}\n/login alice {PASSWORD}\n", "--device", "old box"
    )
    assert setup.returncode == 0, setup.stderr
    laptop = cli("--device", "laptop")
    login(laptop, "alice")
    phone = cli("--device", "phone", "--remember")
    login(phone, "alice")
    assert list(json.loads(tokens.read_text())[f"127.0.0.1:{server.port}"]) == ["phone"]

    laptop.sendline("/devices")
    laptop.expect_exact("3 devices, 2 online:")
    laptop.expect(r"laptop     online  \(this one\)\r?\n")
    laptop.expect(r"phone      online\r?\n")
    laptop.expect(r'"old box"  offline, last seen \d\d:\d\d\r?\n')
    phone.sendline("/devices")
    phone.expect(r"phone      online  \(this one\)")

    laptop.send("/forget-device o\t")  # Tab offers the devices /devices listed
    laptop.sendline("")
    laptop.expect_exact('forgot the device "old box"')
    laptop.sendline("/forget-device phone")
    laptop.expect_exact("error: device: 'phone' is logged in right now; log it out first")
    laptop.sendline("/devices")
    laptop.expect_exact("2 devices, 2 online:")

    laptop.sendline("/logout everywhere")
    laptop.expect_exact("logged out here and on all your other devices")
    phone.expect_exact(
        "you were logged out (/logout everywhere on another of your devices);"
        " /login NAME to log in again"
    )
    assert json.loads(tokens.read_text()) == {}  # revoked by the server, forgotten here
    phone.sendline("/msg alice hi")  # connected again, and logged out
    phone.expect_exact("error: log in first")
    laptop.sendline("/devices")
    laptop.expect_exact("error: log in first")
    login(phone, "alice")  # with the password: the tokens are gone, the account is not
    quit_cleanly(phone, status=1)
    quit_cleanly(laptop, status=1)


def test_friends_coming_and_going_are_shown_and_the_list_stays_live(
    server: Server, cli: Spawn
) -> None:
    setup = run_piped(
        server,
        f"/register alice {PASSWORD}\n/register bob {PASSWORD}\n"
        f"/login alice {PASSWORD}\n/friend bob\n",
    )
    assert setup.returncode == 0, setup.stderr
    alice = cli()
    login(alice, "alice")
    alice.expect_exact("friends: bob offline")

    bob = cli()
    login(bob, "bob")
    alice.expect_exact("* bob is online")
    alice.sendline("/friends")  # live, without asking the server
    alice.expect_exact("1 friend, 1 online")
    bob.sendline("/logout")
    alice.expect_exact("* bob went offline")
    alice.sendline("/friends")
    alice.expect_exact("1 friend, 0 online")
    quit_cleanly(bob)
    quit_cleanly(alice)


def test_messages_that_waited_are_shown_at_login(server: Server, cli: Spawn) -> None:
    setup = run_piped(
        server,
        f"/register alice {PASSWORD}\n/register bob {PASSWORD}\n"
        f"/login bob {PASSWORD}\n/group create team\n",
    )
    assert setup.returncode == 0, setup.stderr

    alice = cli()
    login(alice, "alice")
    alice.sendline("/group join 1")
    alice.expect_exact("joined group team (#1)")
    for line in ("/msg bob first", "/msg bob second", "/g team to the team"):
        alice.sendline(line)
        alice.expect_exact(": " + line.split(" ", 2)[2])

    bob = cli()
    login(bob, "bob")
    bob.expect_exact("3 messages waited for you while you were away:")
    bob.expect_exact("(offline) alice: first")
    bob.expect_exact("(offline) alice: second")
    bob.expect_exact("(offline) [team] alice: to the team")
    alice.sendline("/msg bob now live")
    bob.expect(r"\d\d:\d\d alice: now live")  # no offline marker this time
    quit_cleanly(bob)
    quit_cleanly(alice)


def test_piped_commands_run_in_order_and_the_status_tells(server: Server) -> None:
    first = run_piped(
        server,
        "# a comment\n"
        f"/register carol {PASSWORD}\n/register dave {PASSWORD}\n"
        f"/login carol {PASSWORD}\n/friend dave\n/msg dave hi dave\n/friends\n",
    )
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    out = first.stdout.splitlines()
    assert out[0].startswith("* registered carol (#1)")
    assert out[1].startswith("* registered dave (#2)")
    assert "* logged in as carol (#1)" in out
    assert "* dave is your friend now (offline)" in out
    assert re.search(r"^\d\d:\d\d you -> dave: hi dave$", first.stdout, re.M)
    assert out[-2:] == ["* 1 friend, 0 online:", "  dave  offline"]

    second = run_piped(
        server, f"/login dave wrong\n/login dave {PASSWORD}\n/msg nobody hi\n/groups\n"
    )
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        "chat-cli: line 1: error: wrong user or password",
        "chat-cli: line 3: error: name: no user is called 'nobody'",
    ]
    assert "* friends: carol offline" in second.stdout
    assert re.search(r"^\d\d:\d\d \(offline\) carol: hi dave$", second.stdout, re.M)
    assert second.stdout.endswith("* no groups yet: /group create NAME or /group join ID\n")

    asked = run_piped(server, "/login dave\n")
    assert asked.returncode == 1
    assert "put the password on the line" in asked.stderr


def test_history_of_a_user_and_of_a_group(server: Server) -> None:
    setup = run_piped(
        server,
        f"/register hal {PASSWORD}\n/register ida {PASSWORD}\n/login hal {PASSWORD}\n"
        "/msg ida one\n/msg ida two\n/group create den\n/g den in the den\n/history\n",
    )
    assert setup.returncode == 0, setup.stderr
    # /history with no argument: where the last line went (the group).
    assert re.search(
        r"^\* the last 1 message with \[den\]:\n\d\d:\d\d \[den\] you: in the den$",
        setup.stdout,
        re.M,
    ), setup.stdout
    reply = run_piped(
        server,
        f"/login ida {PASSWORD}\n/msg hal three\n/history hal\n/history hal 2\n"
        "/history #99\n/history hal 0\n",
    )
    assert reply.returncode == 1
    out = reply.stdout
    assert re.search(
        r"^\* the last 3 messages with hal:\n"
        r"\d\d:\d\d hal: one\n\d\d:\d\d hal: two\n\d\d:\d\d you -> hal: three\n",
        out,
        re.M,
    ), out
    assert re.search(
        r"^\* the last 2 messages with hal:\n\d\d:\d\d hal: two\n"
        r"\d\d:\d\d you -> hal: three\n\* older ones: /history hal 4$",
        out,
        re.M,
    ), out
    assert reply.stderr.splitlines() == [
        "chat-cli: line 5: error: group_id: no group has id 99",
        "chat-cli: line 6: error: '0' is not a number of messages (1-1000);"
        " usage: /history [NAME|GROUP] [N]",
    ]


def test_switching_to_a_conversation_shows_its_history(server: Server, cli: Spawn) -> None:
    setup = run_piped(
        server,
        f"/register ann {PASSWORD}\n/register bob {PASSWORD}\n/login bob {PASSWORD}\n"
        "/msg ann first\n/msg ann second\n",
    )
    assert setup.returncode == 0, setup.stderr
    ann = cli()
    login(ann, "ann")
    ann.expect_exact("bob: second")  # kept while ann was away
    ann.sendline("/msg bob third")
    ann.expect_exact("the last 2 messages with bob:")
    ann.expect(r"\d\d:\d\d bob: first\r?\n")
    ann.expect(r"\d\d:\d\d bob: second\r?\n")
    ann.expect_exact("you -> bob: third")
    ann.sendline("/history 2")
    ann.expect_exact("the last 2 messages with bob:")
    ann.expect(r"\d\d:\d\d bob: second\r?\n")
    ann.expect(r"\d\d:\d\d you -> bob: third\r?\n")
    ann.expect_exact("older ones: /history bob 4")
    quit_cleanly(ann)


def test_remember_logs_in_by_itself_and_logout_forgets(server: Server, cli: Spawn) -> None:
    tokens = server.tmp_path / "config" / "chat-cli" / "tokens.json"
    first = run_piped(
        server, f"/register kim {PASSWORD}\n/login kim {PASSWORD}\n/msg kim note\n", "--remember"
    )
    assert first.returncode == 0, first.stderr
    assert tokens.stat().st_mode & 0o777 == 0o600
    assert tokens.parent.stat().st_mode & 0o777 == 0o700
    saved = json.loads(tokens.read_text())
    ((where, by_device),) = saved.items()
    ((device, entry),) = by_device.items()
    assert where == f"127.0.0.1:{server.port}" and entry["name"] == "kim"
    # The token belongs to the device whose login it was: this machine's kept id.
    assert device == (tokens.parent / "device").read_text().strip()
    assert re.fullmatch(r"cli-[0-9a-f]{8}", device)
    assert PASSWORD not in tokens.read_text()
    # The next start in a terminal logs in by itself (no --remember needed), and says so.
    remembered = f"with the login remembered for {where} (/logout forgets it)"
    kim = cli()
    kim.expect_exact(f"logged in as kim (#1) {remembered}")
    quit_cleanly(kim)
    # A piped one does too when asked to.
    again = run_piped(server, "/history kim\n", "--remember")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"* logged in as kim (#1) {remembered}\n"), again.stdout
    assert re.search(r"^\d\d:\d\d you -> kim: note$", again.stdout, re.M)
    # /logout forgets it here and on the server.
    out = run_piped(server, "/logout\n", "--remember")
    assert out.returncode == 0, out.stderr
    assert json.loads(tokens.read_text()) == {}
    tokens.write_text(json.dumps(saved))  # put it back: the server refuses it now
    refused = run_piped(server, "/who kim\n", "--remember")
    assert "* logged in" not in refused.stdout
    assert "the remembered login of kim has expired or was revoked" in refused.stderr
    assert json.loads(tokens.read_text()) == {}


def token_of(server: Server, name: str, **login: Any) -> str:
    """A session token for ``name``, from a login by a plain client (``login``: its
    extra fields, such as ``device``)."""

    async def get() -> str:
        async with connect("127.0.0.1", server.port) as client:
            reply = await client.call("login", name=name, password=PASSWORD, **login)
            return str(reply["token"])

    return trio.run(get)


def test_a_remembered_token_logs_in_again_as_its_device(server: Server) -> None:
    """A token belongs to the device whose login issued it (protocol 1.2): chat-cli keeps
    it with that device and logs in with it as that device, and no other."""
    tokens = server.tmp_path / "config" / "chat-cli" / "tokens.json"
    where = f"127.0.0.1:{server.port}"
    first = run_piped(
        server,
        f"/register kim {PASSWORD}\n/login kim {PASSWORD}\n",
        "--device",
        "laptop",
        "--remember",
    )
    assert first.returncode == 0, first.stderr
    kept = json.loads(tokens.read_text())
    assert list(kept[where]) == ["laptop"]
    # The same device logs in by itself (piped: with --remember). Had it named another
    # device with the token, the server would refuse it (and the line below would be an
    # error instead).
    again = run_piped(server, "/who kim\n", "--device", "laptop", "--remember")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        f"* logged in as kim (#1) with the login remembered for {where} (/logout forgets it)\n"
    ), again.stdout
    # Another device of the same machine does not use it, even with --remember: nothing
    # logs it in.
    for other in ([], ["--device", "phone"]):
        alone = run_piped(server, "/who kim\n", *other, "--remember")
        assert "logged in" not in alone.stdout
        assert alone.stderr == "chat-cli: line 1: error: log in before find_user\n"
    assert json.loads(tokens.read_text()) == kept  # and leaves it be
    # Kept under another device's name, the token is refused by the server, so the
    # client must have named that device with it; it is forgotten.
    device = (tokens.parent / "device").read_text().strip()
    tokens.write_text(json.dumps({where: {device: kept[where]["laptop"]}}))
    moved = run_piped(server, "/who kim\n", "--remember")
    assert "the remembered login of kim has expired or was revoked" in moved.stderr
    assert json.loads(tokens.read_text()) == {}


def test_a_token_kept_before_devices_still_logs_in(server: Server) -> None:
    """A tokens.json from chat-cli before protocol 1.2 (one token per server, issued to
    a login without ``device``) logs in as the device ``""``, unless --device is given."""
    tokens = server.tmp_path / "config" / "chat-cli" / "tokens.json"
    where = f"127.0.0.1:{server.port}"
    assert run_piped(server, f"/register lee {PASSWORD}\n").returncode == 0
    tokens.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = json.dumps({where: {"name": "lee", "token": token_of(server, "lee")}})
    tokens.write_text(old)
    # Piped, a kept token is used only with --remember (which also keeps it again, in
    # the format of now: the file is put back in the old one before the /logout).
    chosen = run_piped(server, "/who lee\n", "--device", "desk", "--remember")
    assert "logged in" not in chosen.stdout
    legacy = run_piped(server, "/who lee\n", "--remember")
    assert legacy.returncode == 0, legacy.stderr
    assert legacy.stdout.startswith(
        f"* logged in as lee (#1) with the login remembered for {where}"
    ), legacy.stdout
    tokens.write_text(old)
    out = run_piped(server, "/logout\n", "--remember")  # forgets it, in the old format too
    assert out.returncode == 0, out.stderr
    assert json.loads(tokens.read_text()) == {}


def test_what_was_shown_is_acknowledged_a_burst_at_a_time(server: Server) -> None:
    """chat-cli logs in with ``acks`` and acknowledges what it printed: without waiting
    for the end, not once per message, and all of it before it leaves."""
    setup = run_piped(
        server,
        f"/register ann {PASSWORD}\n/register bob {PASSWORD}\n/login ann {PASSWORD}\n",
    )
    assert setup.returncode == 0, setup.stderr
    sent = run_piped(
        server, f"/login bob {PASSWORD}\n" + "".join(f"/msg ann n{n}\n" for n in range(20))
    )
    assert sent.returncode == 0, sent.stderr
    before = server.counted("chat_requests", type="ack")
    ann = pexpect.popen_spawn.PopenSpawn(
        [*CLI, "--port", str(server.port)],
        env=_env(server.tmp_path),
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    ann.sendline(f"/login ann {PASSWORD}")
    ann.expect_exact("20 messages waited for you")
    ann.expect_exact("(offline) bob: n19")
    # Acknowledged while the client goes on (stdin is still open), not only at the end.
    server.wait_counted("chat_requests", before + 1, type="ack", outcome="ok")
    ann.sendeof()
    ann.expect(pexpect.EOF)
    assert ann.wait() == 0
    acks = server.counted("chat_requests", type="ack") - before
    assert 1 <= acks < 20, acks  # a burst at a time, never one per message
    assert server.counted("chat_requests", type="ack", outcome="ok") - before == acks
    again = run_piped(server, f"/login ann {PASSWORD}\n")
    assert again.returncode == 0, again.stderr
    assert "waited" not in again.stdout, again.stdout  # all twenty were acknowledged


def test_a_message_written_but_never_shown_comes_again(server: Server, cli: Spawn) -> None:
    """A frozen chat-cli cannot show what the server writes to it: not acknowledged,
    the message is kept for the device and shown at its next login (with version 1
    delivery it would be lost with the connection)."""
    setup = run_piped(server, f"/register ann {PASSWORD}\n/register bob {PASSWORD}\n")
    assert setup.returncode == 0, setup.stderr
    ann = cli()
    login(ann, "ann")
    written = server.counted("chat_deliveries")
    os.kill(ann.pid, signal.SIGSTOP)
    wait_until_stopped(ann.pid)
    sent = run_piped(server, f"/login bob {PASSWORD}\n/msg ann while you were frozen\n")
    assert sent.returncode == 0, sent.stderr
    server.wait_counted("chat_deliveries", written + 1)  # in ann's socket, unread
    ann.kill(signal.SIGKILL)
    ann.close(force=True)
    deadline = time.monotonic() + TIMEOUT
    while True:  # the server may not have seen the old login end yet
        again = run_piped(server, f"/login ann {PASSWORD}\n")
        if "already_online" not in again.stderr and "logged in elsewhere" not in again.stderr:
            break
        assert time.monotonic() < deadline, again.stderr
        time.sleep(0.2)
    assert again.returncode == 0, again.stderr
    assert "* 1 message waited for you while you were away:" in again.stdout, again.stdout
    assert re.search(r"^\d\d:\d\d \(offline\) bob: while you were frozen$", again.stdout, re.M)


def test_a_piped_run_uses_a_remembered_login_only_with_remember(server: Server, cli: Spawn) -> None:
    tokens = server.tmp_path / "config" / "chat-cli" / "tokens.json"
    made = run_piped(server, f"/register alice {PASSWORD}\n/register bob {PASSWORD}\n")
    assert made.returncode == 0, made.stderr
    kept = run_piped(server, f"/login alice {PASSWORD}\n", "--remember")
    assert kept.returncode == 0, kept.stderr
    saved = tokens.read_text()
    # A script that logs in by itself is not logged in as alice behind its back ...
    bob = run_piped(server, f"/login bob {PASSWORD}\n/who alice\n/logout\n")
    assert (bob.returncode, bob.stderr) == (0, ""), bob.stderr
    assert bob.stdout.startswith("* logged in as bob (#2)\n"), bob.stdout
    assert "alice (#1)" in bob.stdout and "remembered" not in bob.stdout
    assert tokens.read_text() == saved  # ... and bob's /logout leaves alice's token alone
    # With --remember it is, and says so.
    used = run_piped(server, "/who bob\n", "--remember")
    assert used.returncode == 0, used.stderr
    where = f"127.0.0.1:{server.port}"
    assert used.stdout.startswith(
        f"* logged in as alice (#1) with the login remembered for {where}"
    ), used.stdout
    # A remembered login that cannot be used says whose it was and why. (In a terminal
    # the remembered login is used without --remember.)
    alice = cli()
    alice.expect_exact(f"logged in as alice (#1) with the login remembered for {where}")
    busy = run_piped(server, "/help\n", "--remember")
    assert busy.returncode == 0, busy.stderr
    assert "* logged in" not in busy.stdout
    assert (
        f"the login remembered for {where} (alice) was not used: "
        "'alice' is logged in elsewhere" in busy.stderr
    ), busy.stderr
    # The terminal has this machine's device: the piped run is told how to differ.
    assert "start this one with --device NAME" in busy.stderr, busy.stderr
    assert tokens.read_text() == saved  # still valid: kept
    quit_cleanly(alice)


def test_piped_over_websocket(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.ws_port}/"
    sent = run_piped(
        server,
        f"/register wes {PASSWORD}\n/register vic {PASSWORD}\n"
        f"/login wes {PASSWORD}\n/msg vic note\n",
        "--url",
        url,
    )
    assert sent.returncode == 0, sent.stderr
    assert re.search(r"^\d\d:\d\d you -> vic: note$", sent.stdout, re.M)
    # The client exits at the end of its input, so an event is only certain when
    # the command waits for it: /login waits for the messages kept for it.
    received = run_piped(server, f"/login vic {PASSWORD}\n", "--url", url)
    assert received.returncode == 0, received.stderr
    assert re.search(r"^\d\d:\d\d \(offline\) wes: note$", received.stdout, re.M)


@pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="watches the server's socket in Linux's /proc"
)
def test_server_goes_away_and_comes_back(server: Server, cli: Spawn) -> None:
    assert run_piped(server, f"/register alice {PASSWORD}\n").returncode == 0
    alice = cli()
    login(alice, "alice")
    alice.sendline("/msg alice note to self")
    alice.expect_exact("you -> alice: note to self")
    alice.send("half a line")
    alice.expect(drawn("half a line"))  # the client has read it
    server.kill()
    alice.expect_exact("error: the connection to 127.0.0.1:")
    alice.expect_exact("was lost")
    alice.expect_exact("reconnect? [Y/n]")
    alice.sendline("y")  # only "y": "half a line" stays with the command line
    alice.expect_exact("connection refused")
    alice.expect_exact("reconnect? [Y/n]")
    server.start(port=server.port)
    alice.sendline("")
    alice.expect_exact("logged in as alice")  # again, with the remembered password
    alice.sendline(" and the rest")  # completes the line that was being typed
    alice.expect_exact("you -> alice: half a line and the rest")

    # A message whose reply never came is sent again, with the same cid.
    os.kill(server.pid, signal.SIGSTOP)
    wait_until_stopped(server.pid)  # it can neither read the request nor answer it
    alice.sendline("/msg alice into the void")
    wait_for_unread_request(server.port)
    server.kill()
    alice.expect_exact("was lost")
    alice.expect_exact("it is sent again when you reconnect")
    alice.expect_exact("reconnect? [Y/n]")
    server.start(port=server.port)
    alice.sendline("y")
    alice.expect_exact("logged in as alice")
    alice.expect_exact("you -> alice: into the void")
    quit_cleanly(alice)


def test_server_goes_away_and_the_user_gives_up(server: Server, cli: Spawn) -> None:
    alice = cli()
    server.kill()
    alice.expect_exact("was lost")
    alice.expect_exact("reconnect? [Y/n]")
    # A key that arrives while the command line is still being taken down is kept for
    # the command line (by design: no question may take what was typed there); a
    # person reads the question first. Typed within a millisecond of it, "n" was once
    # kept that way, and the question went on waiting.
    time.sleep(0.3)
    alice.sendline("n")
    alice.expect(pexpect.EOF)
    alice.close()
    assert alice.exitstatus == 3


CONSOLE_SCRIPT = """
import fcntl, os, signal, struct, sys, termios, threading
import trio, trio.testing
from chat.cli.terminal import TerminalConsole

TYPED = sys.argv[1]
PROMPT = (("", "ready> "),)

def unread():
    return struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, bytes(4)))[0]

async def main():
    console = TerminalConsole(colour=False, history=None)
    async with console.running():
        released = threading.Event()

        def hold():  # runs on the terminal's loop, which reads no keys meanwhile
            os.write(1, b"HOLDING\\r\\n")
            released.wait()

        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async with trio.open_nursery() as nursery:
                reading = trio.CancelScope()

                async def read():
                    with reading:
                        await console.read_line(PROMPT)

                nursery.start_soon(read)
                async for _ in signals:  # the test saw the prompt
                    break
                console._loop.call_soon_threadsafe(hold)
                while unread() < len(TYPED):
                    await trio.sleep(0.01)
                reading.cancel()  # as when the connection drops
                await trio.testing.wait_all_tasks_blocked()  # the prompt is told to stop
                released.set()  # and that comes before the loop reads the keys
        def say(text):  # through the console: one writer to the terminal
            console.show((("", text),))

        say(f"HELD {console.held_line()!r}")
        say(f"ANSWER {await console.confirm('reconnect? ')}")
        line = await console.read_line(PROMPT)
        say(f"LINE {line!r}")

trio.run(main)
"""


@pytest.mark.parametrize(
    ("typed", "held"), [("half a line", None), ("a whole line\r", "a whole line")]
)
def test_keys_typed_as_the_prompt_is_cancelled_stay_with_the_command_line(
    tmp_path: Path, typed: str, held: str | None
) -> None:
    """Keys still unread when the command line is cancelled are not the answer to a question.

    The script holds the terminal's loop while the keys arrive and the prompt
    is cancelled, so the keys are unread when the prompt is told to stop.
    """
    child = pexpect.spawn(
        sys.executable,
        ["-c", CONSOLE_SCRIPT, typed],
        env=_env(tmp_path),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(40, 160),
    )
    child.logfile_read = transcript = io.StringIO()
    try:
        child.expect_exact("ready>")
        child.kill(signal.SIGUSR1)
        child.expect_exact("HOLDING")
        child.send(typed)
        child.expect_exact(f"HELD {held!r}")
        child.expect_exact("reconnect?")
        child.sendline("n")
        child.expect_exact("ANSWER False")
        if held is None:  # the line is offered again, to be finished
            child.sendline(" and the rest")
            child.expect_exact(f"LINE {typed + ' and the rest'!r}")
        else:  # the line was entered: it is the next line read
            child.expect_exact(f"LINE {held!r}")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, transcript.getvalue()


def test_piped_client_sees_the_server_go_away(server: Server) -> None:
    child = pexpect.popen_spawn.PopenSpawn(
        [*CLI, "--port", str(server.port)],
        env=_env(server.tmp_path),
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    child.sendline(f"/register erin {PASSWORD}")
    child.sendline(f"/login erin {PASSWORD}")
    child.expect_exact("logged in as erin")
    server.kill()  # while the client waits for its next line on stdin
    child.expect_exact("was lost")
    child.expect(pexpect.EOF)
    assert "Traceback" not in (child.before or "")
    assert child.wait() == 3


def test_no_server_to_connect_to(server: Server) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = run_piped(server, "/help\n", port=closed_port)
    assert result.returncode == 3
    assert result.stderr.startswith(f"chat-cli: error: cannot connect to 127.0.0.1:{closed_port}")
    assert "Traceback" not in result.stderr


def test_piped_unfriend_block_unblock_blocked_and_members(server: Server) -> None:
    setup = run_piped(
        server,
        "".join(f"/register {name} {PASSWORD}\n" for name in ("ann", "bob", "carol")),
    )
    assert setup.returncode == 0, setup.stderr
    result = run_piped(
        server,
        f"/login ann {PASSWORD}\n/friend bob\n/friend carol\n"
        "/block bob\n/blocked\n/unfriend carol\n/friends\n/unfriend carol\n"
        "/unblock bob\n/blocked\n/block nobody\n"
        "/group create club\n/members club\n/members #999\n/unblock\n",
    )
    assert result.returncode == 1
    out = result.stdout
    assert "* blocked bob: they cannot message you or add you as a friend" in out
    assert "* 1 blocked user:\n  bob #2\n" in out
    assert "* carol is no longer your friend" in out
    assert "* no friends yet: /friend NAME adds one" in out
    assert "* unblocked bob" in out
    assert "* you have blocked nobody" in out
    assert "* club: 1 member:\n  ann #1 (creator)\n" in out
    assert result.stderr.splitlines() == [
        "chat-cli: line 8: error: user_id: 3 is not your friend",
        "chat-cli: line 11: error: name: no user is called 'nobody'",
        "chat-cli: line 14: error: group_id: no group has id 999",
        "chat-cli: line 15: error: missing NAME; usage: /unblock NAME",
    ]

    blocked = run_piped(server, f"/login bob {PASSWORD}\n/block ann\n")
    assert blocked.returncode == 0, blocked.stderr
    refused = run_piped(server, f"/login ann {PASSWORD}\n/msg bob hi\n/friend bob\n")
    assert refused.returncode == 1
    assert [line.split("error: ")[1] for line in refused.stderr.splitlines()] == [
        "to: refused: one of you has blocked the other",
        "user_id: refused: one of you has blocked the other",
    ]


def test_a_cut_friend_list_is_paged_in(server: Server) -> None:
    """1,000 friends with long names do not fit the login reply: the client reads the
    rest a page at a time, and ``/friends`` shows every one."""
    names = ["victim", *(f"{'x' * 40}{n:04d}" for n in range(1_000))]

    async def fill() -> None:
        victim, *others = await bulk_users(server.database, names)
        await bulk_friends(server.database, victim, others)

    trio.run(fill)
    result = run_piped(server, f"/login victim {BULK_PASSWORD}\n/friends\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "* 1000 friends, 0 online (/friends lists them)" in lines
    assert "* 1000 friends, 0 online:" in lines
    listed = [line.split()[0] for line in lines if line.startswith("  x")]
    assert listed == names[1:]


def test_friend_requests_are_shown_and_answered(cli: Spawn) -> None:
    """Protocol 1.2 approval: /settings turns it on, the request shows up live, /requests
    lists it, /accept makes the friendship (the asker is told)."""
    alice = cli()
    alice.sendline(f"/register alice {PASSWORD}")
    alice.expect_exact("registered alice (#")
    login(alice, "alice")
    alice.sendline("/settings")
    alice.expect_exact("friend requests: anyone (anyone may add you as a friend)")
    alice.sendline("/settings friend-requests approve")
    alice.expect_exact("friend requests: approve (anyone who adds you waits for your /accept)")
    alice.sendline("/requests")
    alice.expect_exact("no friend requests are waiting")

    bob = cli()
    bob.sendline(f"/register bob {PASSWORD}")
    bob.expect_exact("registered bob (#")
    login(bob, "bob")
    bob.sendline("/friend alice")
    bob.expect_exact("asked alice to be your friend: waiting for their answer")
    alice.expect_exact("bob asks to be your friend: /accept bob or /decline bob")
    bob.sendline("/who alice")
    bob.expect_exact("alice (#1) offline")  # not shown online to someone still waiting

    alice.sendline("/requests")
    alice.expect_exact("1 friend request waiting (/accept NAME or /decline NAME):")
    alice.expect_exact("bob #2")
    alice.sendline("/accept bob")
    alice.expect_exact("bob is your friend now (online)")
    bob.expect_exact("alice added you as a friend (online)")
    alice.sendline("/requests")
    alice.expect_exact("no friend requests are waiting")
    quit_cleanly(bob)
    quit_cleanly(alice)


def test_piped_decline_and_settings_errors(server: Server) -> None:
    setup = run_piped(
        server,
        "".join(f"/register {name} {PASSWORD}\n" for name in ("ann", "bob")),
    )
    assert setup.returncode == 0, setup.stderr
    asked = run_piped(
        server,
        f"/login ann {PASSWORD}\n/settings friend-requests approve\n/settings maybe\n",
    )
    assert asked.returncode == 1
    assert asked.stderr.splitlines() == [
        "chat-cli: line 3: error: expected friend-requests anyone or friend-requests approve;"
        " usage: /settings [friend-requests anyone|approve]"
    ]
    run_piped(server, f"/login bob {PASSWORD}\n/friend ann\n")
    result = run_piped(
        server,
        f"/login ann {PASSWORD}\n/requests\n/decline bob\n/requests\n/accept bob\n/decline\n",
    )
    assert result.returncode == 1
    out = result.stdout
    assert "* 1 friend request waiting (/accept NAME or /decline NAME):\n  bob #2\n" in out
    assert "* declined bob's friend request" in out
    assert "* no friend requests are waiting" in out
    assert result.stderr.splitlines() == [
        "chat-cli: line 5: error: user_id: no friend request from 2 is waiting",
        "chat-cli: line 6: error: missing NAME; usage: /decline NAME",
    ]


def test_chats_unread_counts_receipts_and_typing(server: Server, cli: Spawn) -> None:
    """``/chats`` lists conversations newest first with unread counts; what a
    conversation shows counts as read, and the sender sees its receipt; a friend
    typing shows as "bob is typing…"."""
    setup = run_piped(
        server,
        f"/register alice {PASSWORD}\n/register bob {PASSWORD}\n/register cy {PASSWORD}\n"
        f"/login bob {PASSWORD}\n/friend alice\n",
    )
    assert setup.returncode == 0, setup.stderr
    alice = cli()
    login(alice, "alice")
    bob = cli()
    login(bob, "bob")
    alice.sendline("/chats")
    alice.expect_exact("no conversations yet")
    bob.sendline("/msg alice one")
    bob.expect(r"you -> alice: one \u2713")  # sent
    bob.sendline("two")
    bob.expect(r"you -> alice: two \u2713")
    alice.expect_exact("bob: two")
    cy = run_piped(server, f"/login cy {PASSWORD}\n/msg alice from cy\n")
    assert cy.returncode == 0, cy.stderr
    alice.expect_exact("cy: from cy")
    alice.sendline("/chats")
    alice.expect_exact("2 conversations, 2 with unread messages:")
    alice.expect(r"\d\d:\d\d cy \(1 unread\)  cy: from cy")
    alice.expect(r"\d\d:\d\d bob \(2 unread\)  bob: two")
    # Reading the conversation marks it read; bob sees the receipt.
    alice.sendline("/history bob")
    alice.expect_exact("the last 2 messages with bob:")
    bob.expect_exact("\u2713\u2713 read by alice")
    alice.sendline("/chats")
    alice.expect_exact("2 conversations, 1 with unread messages:")
    alice.expect(r"bob  bob: two")
    # In the conversation now (/msg), what bob sends is read as it arrives.
    alice.sendline("/msg bob got them")
    bob.expect_exact("alice: got them")
    bob.sendline("three")
    alice.expect_exact("bob: three")
    bob.expect_exact("\u2713\u2713 read by alice")
    alice.sendline("/chats")
    alice.expect_exact("2 conversations, 1 with unread messages:")

    async def type_to_alice() -> None:
        async with connect("127.0.0.1", server.port) as client:
            await client.call("login", name="bob", password=PASSWORD, device="other")
            alice_id = (await client.call("find_user", name="alice"))["user"]["id"]
            await client.call("typing", **{"with": alice_id, "active": True})

    trio.run(type_to_alice)
    alice.expect_exact("bob is typing\u2026")
    quit_cleanly(bob)
    quit_cleanly(alice)
