"""Where lines come from and where output goes: a terminal, or pipes.

``TerminalConsole`` gives line editing, history and completion with
prompt_toolkit without letting it own the program. prompt_toolkit is an
asyncio library and its prompt blocks, so it gets one worker thread of its own
running an asyncio loop; a trio task owns that thread for the console's whole
life. The trio side hands work to the loop with ``run_coroutine_threadsafe``
and ``call_soon_threadsafe`` and never touches prompt_toolkit objects itself.
Everything that writes to the terminal runs on that loop, one write at a time:
while a prompt is shown, output goes through ``run_in_terminal``, which hides
the prompt, prints, and draws the prompt again with the half-typed line intact
(what ``patch_stdout`` does, without a second writer thread).

Keystrokes go where they were typed. prompt_toolkit keeps keys read beyond the
end of a line as typeahead for the next prompt (so "/login NAME", Enter and the
password typed at once work). When the trio side cancels the command line
because the connection dropped, everything typed at it up to that moment,
including keys still unread in the terminal, is processed into that line, and
keys read too late for it are held for the next command-line prompt: none of
them becomes the answer to "reconnect?". A line entered at that very moment,
which the app did not get to run, is held as well and is the next line
``read_line`` returns. Only keys typed into a cancelled password prompt are
dropped.

``PipedConsole`` is for scripts: it reads stdin line by line and prints plain
lines, errors to stderr with the number of the line that failed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import trio
from prompt_toolkit import PromptSession
from prompt_toolkit.application import Application, run_in_terminal
from prompt_toolkit.application.current import get_app_or_none
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import ANSI
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input.typeahead import get_typeahead, store_typeahead
from prompt_toolkit.key_binding import KeyPress

from .commands import COMMAND_NAMES, GROUP_ACTIONS, LOGOUT_OPTIONS, quote, without_secret
from .render import Line, clean, to_text
from .state import Completions

T = TypeVar("T")

ABORT_GRACE_SECONDS = 5.0
"""How long a cancelled prompt may take to give the terminal back."""


class Console(Protocol):
    interactive: bool
    """True when a person is typing: passwords can be asked for, reconnects offered."""

    async def read_line(self, prompt: Line) -> str | None:
        """The next command line; ``None`` at the end of input (Ctrl-D, end of the pipe)."""

    async def read_secret(self, prompt: str) -> str | None:
        """A line typed masked (each character shows as ``*``); ``None`` if the person gave
        up (Ctrl-C, Ctrl-D)."""

    async def confirm(self, question: str) -> bool:
        """A yes/no question, yes by default."""

    def show(self, line: Line) -> None:
        """Print a line (output, events)."""

    def problem(self, line: Line) -> None:
        """Print a line that says something went wrong."""

    def completions(self, snapshot: Completions) -> None:
        """What Tab may offer from now on."""

    def held_line(self) -> str | None:
        """A line entered as the connection dropped, not run yet: ``read_line`` returns it next."""


def colour_wanted(stream: TextIO, choice: bool | None = None) -> bool:
    """Colour for a terminal, unless ``--no-colour`` or ``NO_COLOR`` (no-color.org) says no."""
    if choice is not None:
        return choice
    if os.environ.get("NO_COLOR"):
        return False
    return stream.isatty() and os.environ.get("TERM") != "dumb"


# --- pipes ---------------------------------------------------------------------


class PipedConsole:
    """Commands from stdin, one per line; plain output lines; problems on stderr.

    Writes to stdout happen on the trio thread: this client serves one person
    and nothing else waits on it, so a slow reader of our output may hold it up.
    Reading stdin happens in a worker thread that is abandoned if the read is
    cancelled (a thread blocked in ``readline`` cannot be interrupted).
    """

    interactive = False

    def __init__(
        self,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        colour: bool = False,
    ) -> None:
        self._stdin = stdin or sys.stdin
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        self._colour = colour
        self.line_number = 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[PipedConsole]:
        yield self

    async def read_line(self, prompt: Line) -> str | None:
        line: str = await trio.to_thread.run_sync(self._stdin.readline, abandon_on_cancel=True)
        if not line:
            return None
        self.line_number += 1
        return line.rstrip("\r\n")

    async def read_secret(self, prompt: str) -> str | None:
        return None

    async def confirm(self, question: str) -> bool:
        return False

    def show(self, line: Line) -> None:
        self._write(self._stdout, to_text(line, colour=self._colour))

    def problem(self, line: Line) -> None:
        where = f"line {self.line_number}: " if self.line_number else ""
        self._write(self._stderr, "chat-cli: " + where + to_text(line, colour=False))

    def completions(self, snapshot: Completions) -> None:
        pass

    def held_line(self) -> str | None:
        return None  # a script ends when its connection drops

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:
            pass  # whoever read our output stopped; the commands still run


# --- a terminal ------------------------------------------------------------------


class _Interrupted(Exception):
    """Ctrl-C at a prompt (``KeyboardInterrupt`` must not cross into asyncio)."""


class _Aborted(Exception):
    """The trio side cancelled the prompt."""


class TerminalConsole:
    interactive = True

    def __init__(self, *, colour: bool, history: Path | None) -> None:
        self._colour = colour
        self._history_path = history
        self._loop = asyncio.new_event_loop()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._completer = ChatCompleter()
        self._sessions: dict[str, PromptSession[str]] = {}
        self._held_lines: deque[str] = deque()
        """Lines entered as their prompt was cancelled, not run yet (trio side)."""
        # The rest belongs to the terminal's loop.
        self._unfinished = ""
        """A line being typed when its prompt was cancelled: offered again next time."""
        self._held_keys: list[KeyPress] = []
        """Keys typed at the command line that no question may take: typed into it next."""
        self._aborting = False
        """The prompt being shown was told to stop by the trio side."""

    # -- life cycle (trio side)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TerminalConsole]:
        """Run the terminal's thread for as long as the block lasts; flush output at the end."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._thread)
            try:
                yield self
            finally:
                with trio.move_on_after(ABORT_GRACE_SECONDS, shield=True):
                    await self._in_loop(self._queue.join)
                self._loop.call_soon_threadsafe(self._loop.stop)

    async def _thread(self) -> None:
        await trio.to_thread.run_sync(self._run_loop)

    def _run_loop(self) -> None:
        """The terminal thread: prompt_toolkit's asyncio loop, until ``running`` ends."""
        loop = self._loop
        asyncio.set_event_loop(loop)
        writer = loop.create_task(self._writer())
        try:
            loop.run_forever()
        finally:
            writer.cancel()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _in_loop(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        too_late: Callable[[T], None] | None = None,
    ) -> T:
        """Run a coroutine on the terminal's loop and wait for it, cancellably.

        When the trio side is cancelled the prompt is told to exit and the
        terminal is given back (raw mode off) before the cancellation goes on.
        A result that is there all the same (the line was entered just then)
        goes to ``too_late`` instead of being lost.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            if not done.is_set():
                self._loop.call_soon_threadsafe(self._abort, future)
                with trio.move_on_after(ABORT_GRACE_SECONDS, shield=True):
                    await done.wait()
            finished = future.done() and not future.cancelled() and future.exception() is None
            if finished and too_late is not None:
                too_late(future.result())
            raise
        return future.result()

    # -- Console (trio side)

    async def read_line(self, prompt: Line) -> str | None:
        shown = to_text(prompt, colour=self._colour)
        if self._held_lines:
            line = self._held_lines.popleft()
            self.show((*prompt, ("", clean(line))))  # what runs now, on the new connection
            return line
        try:
            return await self._in_loop(
                lambda: self._prompt("main", shown, secret=False), self._hold_line
            )
        except _Interrupted:
            return ""

    def _hold_line(self, line: str | None) -> None:
        if line is not None:
            self._held_lines.append(line)

    def held_line(self) -> str | None:
        return self._held_lines[0] if self._held_lines else None

    async def read_secret(self, prompt: str) -> str | None:
        try:
            return await self._in_loop(lambda: self._prompt("secret", prompt, secret=True))
        except _Interrupted:
            return None

    async def confirm(self, question: str) -> bool:
        while True:
            try:
                answer = await self._in_loop(lambda: self._prompt("ask", question, secret=False))
            except _Interrupted:
                return False
            if answer is None:
                return False
            answer = answer.strip().lower()
            if answer in ("", "y", "yes"):
                return True
            if answer in ("n", "no"):
                return False

    def show(self, line: Line) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, to_text(line, colour=self._colour))

    problem = show

    def completions(self, snapshot: Completions) -> None:
        self._completer.snapshot = snapshot  # one reference swap: safe across threads

    # -- the terminal's loop

    def _session(self, kind: str) -> PromptSession[str]:
        session = self._sessions.get(kind)
        if session is None:
            if kind == "main":
                session = PromptSession(
                    history=_history(self._history_path),
                    completer=self._completer,
                    complete_while_typing=False,
                )
            else:
                session = PromptSession()  # no history: passwords and answers are not kept
            self._sessions[kind] = session
        return session

    async def _prompt(self, kind: str, message: str, *, secret: bool) -> str | None:
        """One prompt; keys it leaves unread are sorted out when it was cancelled."""
        session = self._session(kind)
        default = ""
        if kind == "main":
            default, self._unfinished = self._unfinished, ""
            # Keys held for the command line come before anything typed since.
            held, self._held_keys = self._held_keys, []
            store_typeahead(session.input, held + get_typeahead(session.input))
        elif kind == "ask":
            # Typed at the command line before "reconnect?" was shown: not an answer.
            # (A password prompt does take typeahead: "/login NAME", Enter, password.)
            self._held_keys += get_typeahead(session.input)
        shown = ANSI(message) if self._colour else message
        self._aborting = False
        entered = False
        try:
            line = await session.prompt_async(shown, is_password=secret, default=default)
            entered = True
            return line
        except KeyboardInterrupt:
            raise _Interrupted from None
        except EOFError:
            return None
        finally:
            if self._aborting:
                # Keys read after the prompt was told to stop.
                left = get_typeahead(session.input)
                if kind == "main" or entered:
                    self._held_keys += left
                # Else dropped: they may be the rest of a password.

    def _abort(self, future: concurrent.futures.Future[Any]) -> None:
        """Stop the prompt being shown, keeping what was typed (terminal's loop)."""
        self._aborting = True
        app = get_app_or_none()
        if app is None or not app.is_running or app.future is None:
            future.cancel()  # not shown yet
            return
        try:
            if app.context is not None:
                app.context.copy().run(_take_typed_keys, app)
        finally:
            # Unless those keys ended it (Enter: the line goes to ``too_late``).
            if not app.future.done():
                main = self._sessions.get("main")
                if main is not None and app is main.app:
                    self._unfinished = app.current_buffer.text
                app.exit(exception=_Aborted())

    async def _writer(self) -> None:
        """The only writer to the terminal: queued lines, above the prompt if one is shown."""
        while True:
            texts = [await self._queue.get()]
            while not self._queue.empty():
                texts.append(self._queue.get_nowait())
            data = "".join(text + "\n" for text in texts)
            try:
                app = get_app_or_none()
                if app is not None and app.is_running:
                    await run_in_terminal(functools.partial(_emit, data))
                else:
                    _emit(data)
            finally:
                for _ in texts:
                    self._queue.task_done()


def _take_typed_keys(app: Application[Any]) -> None:
    """Process the keys typed so far, even those still unread in the terminal.

    An application told to exit processes no more keys, and it stops reading
    only at a later turn of the loop: keys it read meanwhile would stay
    unprocessed, and keys it never read would go to whatever prompt comes next.
    """
    while keys := app.input.read_keys():
        app.key_processor.feed_multiple(keys)
        app.key_processor.process_keys()


def _emit(data: str) -> None:
    try:
        sys.stdout.write(data)
        sys.stdout.flush()
    except OSError:
        pass  # the terminal went away; there is nobody to tell


# --- history and completion ---------------------------------------------------------


class _PrivateHistory(FileHistory):
    """A history file that never keeps a password typed on a ``/login`` line."""

    def append_string(self, string: str) -> None:
        super().append_string(without_secret(string))


def default_history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "chat-cli" / "history"


def _history(path: Path | None) -> History:
    if path is None:
        return InMemoryHistory()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return _PrivateHistory(str(path))


class ChatCompleter(Completer):
    """Tab: command names, then friends' names, other known names, group names, or the
    names of your other devices (as ``/devices`` last listed them)."""

    def __init__(self) -> None:
        self.snapshot = Completions()

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/"):
            return
        head, space, rest = text.partition(" ")
        if not space:
            yield from _matching(text, COMMAND_NAMES, suffix=" ")
            return
        position = _word_at_end(rest)
        if position is None:
            return
        index, partial, quoted = position
        candidates = _candidates(head.lower(), index, self.snapshot)
        start = -(len(partial) + (1 if quoted else 0))
        folded = partial.casefold()
        for name, meta in candidates:
            if name.casefold().startswith(folded):
                yield Completion(
                    quote(name) + " ", start_position=start, display=name, display_meta=meta
                )


def _matching(text: str, words: Iterable[str], suffix: str) -> Iterator[Completion]:
    lowered = text.lower()
    for word in words:
        if word.startswith(lowered):
            yield Completion(word + suffix, start_position=-len(text), display=word)


def _candidates(head: str, index: int, snapshot: Completions) -> list[tuple[str, str]]:
    friends = [(name, "friend") for name in snapshot.friends]
    others = [(name, "") for name in snapshot.names]
    if index != 0:
        return []
    if head in ("/msg", "/who"):
        return friends + others
    if head == "/friend":
        return others + friends
    if head == "/g":
        return [(name, "group") for name in snapshot.groups]
    if head == "/group":
        return [(action, "") for action in GROUP_ACTIONS]
    if head == "/logout":
        return [(option, "") for option in LOGOUT_OPTIONS]
    if head == "/forget-device":
        return [(name, "device") for name in snapshot.devices]
    return []


def _word_at_end(rest: str) -> tuple[int, str, bool] | None:
    """Which argument the cursor is in, what of it is typed, and whether it opened a quote.

    ``None`` when the cursor sits right after a closing quote (nothing to complete).
    """
    index = 0
    pos = 0
    while True:
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        if pos >= len(rest):
            return index, "", False
        if rest[pos] in "\"'":
            end = rest.find(rest[pos], pos + 1)
            if end < 0:
                return index, rest[pos + 1 :], True
            pos = end + 1
            if pos >= len(rest):
                return None
        else:
            start = pos
            while pos < len(rest) and not rest[pos].isspace():
                pos += 1
            if pos >= len(rest):
                return index, rest[start:], False
        index += 1
