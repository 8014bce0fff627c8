"""One client connection: its stream, its codec, its outbox, and the task that writes.

The connection knows nothing of users or the store. What it writes are
``Outgoing`` frames, already encoded with the connection's codec (so a
second wire protocol plugs in as another codec); a frame that carries a
``Mark`` (a position of a stream: a kept message) or a ``seq`` is delivery's,
and the connection's ``WriteHooks`` (the user session) decide whether such
frames may be written now and are told, after each write, exactly which of
them left. A frame with no bytes is written as nothing at all: it counts as
written once every frame queued before it was (delivery uses it to pass a
position without an event).

The writer is the task that writes to the stream (the one exception: a delivered
message or a reply handed over while the writer is idle, with nothing queued, is
written at once by the task handing it over, without waiting: ``deliver_nowait``;
what the socket does not take goes to the writer first). It drains a bounded
outbox and joins queued frames into one write, up to ``write_batch_bytes``. A
client that does not keep up is disconnected, never buffered without limit:
a producer that cannot queue within ``slow_client_seconds`` ends the
connection, and so does a write that does not finish within
``slow_client_seconds`` (a client that stopped reading), so nothing waiting on
the writer (a flush, a logout, the release of the user's presence) waits for
ever. The write deadline is kept by the node's watchdog (``overdue``), not by a
cancel scope around every write: a write costs two assignments, not a timer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import attrs
import trio

from chat.protocol import Codec
from chat.transports import LineStream, MessageStream, StreamClosed
from chat.transports.tcp import Rest

from .delivery import Mark
from .settings import Settings

log = logging.getLogger(__name__)

GATHER_SECONDS = 0.0005
"""After a delivered message was written at once (``Connection.deliver_nowait``), the
next ones within this time go to the writer, which joins them into one write."""


class _Gathering:
    """Connections with a write held until the outermost ``gathered_writes`` ends."""

    def __init__(self) -> None:
        self.depth = 0
        self.connections: list[Connection] = []


_gathering = _Gathering()
"""The process's (one trio thread serves every connection of a node)."""


@contextmanager
def gathered_writes() -> Iterator[None]:
    """Writes that delivered messages would make at once (``Connection.deliver_nowait``)
    inside this block are made as it ends, one per connection with everything it got:
    a store batch hands a recipient several messages in one stretch without a checkpoint,
    and they leave in one system call, with no task switch, instead of one write and
    then a wake of the writer for the rest. Use only around code that never waits."""
    _gathering.depth += 1
    try:
        yield
    finally:
        _gathering.depth -= 1
        if not _gathering.depth:
            connections, _gathering.connections = _gathering.connections, []
            for connection in connections:
                try:
                    connection._write_held()
                except Exception:
                    # A bug in one connection's hooks costs that connection, never the
                    # writes held for the others.
                    log.exception("a gathered write to %s failed", connection.name)
                    connection.abort("internal error while writing")


@attrs.define
class Outgoing:
    """A frame for the writer (never changed once made; not frozen: see ``Mark``)."""

    payload: bytes
    mark: Mark | None = None
    """Set for a kept message (or a passed position): once written, the device has it."""
    seq: int = 0
    """Its ``seq`` on an ``acks`` connection (0: none)."""
    stored_ms: int = 0
    """A kept message's ``ts`` (for the stored-to-written histogram); 0: unknown."""


@attrs.frozen
class _Remainder:
    """What a write made at once (``deliver_nowait``) left for the writer: first of all."""

    rest: Rest
    outgoing: Sequence[Outgoing]
    """The frames not written whole yet, in order."""


@attrs.frozen
class Nudge:
    """Nothing to write: wakes the writer to look again at what its hooks hold back."""


@attrs.frozen
class Flush:
    """Set ``done`` once everything queued before it is written (and its hooks told)."""

    done: trio.Event = attrs.field(factory=trio.Event)


class WriteHooks(Protocol):
    def writable(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """What of a batch may be written now (the rest is held back or dropped)."""

    def written(self, outgoing: Sequence[Outgoing]) -> None:
        """These frames left, in this order (also after a write was cut off). Must not
        wait: the writer goes on at once."""


class _WriteEverything:
    def writable(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        return outgoing

    def written(self, outgoing: Sequence[Outgoing]) -> None:
        pass


class Connection:
    def __init__(self, stream: MessageStream, codec: Codec, settings: Settings, name: str) -> None:
        self.stream = stream
        self.codec = codec
        self.name = name
        """For logs: the peer and the holder string."""
        self.hooks: WriteHooks = _WriteEverything()
        self._settings = settings
        self._outbox, self._outbox_reader = trio.open_memory_channel[
            Outgoing | Flush | Nudge | _Remainder
        ](settings.outbox_frames)
        self._room = settings.outbox_frames
        self._pending = 0
        """Items queued and not taken by the writer yet (handed to it, or buffered)."""
        self._idle = False
        """The writer waits for the outbox, with nothing of its own under way."""
        self._closed = False
        self._last_direct = -1.0
        """``trio.current_time()`` of the last write made at once (``deliver_nowait``)."""
        self._held: list[Outgoing] | None = None
        """Frames of a gathered write (``gathered_writes``), made when it ends."""
        self._direct = isinstance(stream, LineStream) and stream.can_send_now
        self.replies_due = 0
        """Requests of this connection being answered (the session counts them): their
        replies are about to be queued, and a delivered message waits to go in the same
        write rather than costing one of its own."""
        self.remainders = 0
        """Writes made at once that the socket took only part of (the writer finished them)."""
        self._scope: trio.CancelScope | None = None
        self._writer_alive = False
        self._write_started: float | None = None
        """``trio.current_time()`` when the write under way began; None between writes."""

    # --- producers -------------------------------------------------------------

    async def queue(self, item: Outgoing | Flush) -> bool:
        """Put an item in the outbox, waiting a little if it is full; a client that
        does not make room in time is disconnected. False if the writer is gone."""
        if self._held is not None:
            self._write_held()  # what was gathered goes first
        try:
            self._outbox.send_nowait(item)
            self._pending += 1
            return True
        except trio.WouldBlock:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False  # the writer is gone with the connection; kept messages stay kept
        with trio.move_on_after(self._settings.slow_client_seconds):
            try:
                await self._outbox.send(item)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return False
            self._pending += 1
            return True
        self.abort("outbox full (client too slow)")
        await trio.lowlevel.checkpoint()  # raises Cancelled: the connection is over
        return False

    def has_room(self) -> bool:
        """The outbox takes one more frame without waiting."""
        return self._pending < self._room

    def queue_nowait(self, item: Outgoing | Nudge) -> bool:
        """Queue without waiting; False if the outbox is full or closed."""
        if self._held is not None:
            self._write_held()  # what was gathered goes first
        try:
            self._outbox.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self._pending += 1
        return True

    def deliver_nowait(self, item: Outgoing) -> bool:
        """Like ``queue_nowait``, for a delivered message (or a reply of a request that
        was not pipelined): when the writer is idle (its
        outbox empty, no write under way, no replies due) and has not written at once
        within the last ``GATHER_SECONDS``, write it now, in this task: one system call,
        and no task switch to the writer. What the socket does not take at once goes to the writer,
        ahead of anything queued later. Within ``GATHER_SECONDS`` of such a write, the
        messages go to the writer instead, which joins those queued meanwhile (a
        recipient of many messages of one store batch) into one write. Inside
        ``gathered_writes()`` (a store batch's hand-offs), such a write is made once at
        its end, with every message the connection got meanwhile.

        Hooks are called as the writer calls them: ``written`` may run before this
        returns (the caller records the frame as queued before calling)."""
        if self._held is not None:
            self._held.append(item)  # after the first one, in a gathered write
            self._pending += 1
            return True
        if not (
            self._direct
            and self._idle
            and self._pending == 0
            and not self._closed
            and not self.replies_due
        ):
            return self.queue_nowait(item)
        now = trio.current_time()
        if now - self._last_direct < GATHER_SECONDS or self._room < 1:
            return self.queue_nowait(item)
        if _gathering.depth:
            self._held = [item]
            self._pending += 1
            _gathering.connections.append(self)
            return True
        self._write_now([item], now)
        return True

    def _write_now(self, items: list[Outgoing], now: float) -> None:
        """Write ``items`` at once (``deliver_nowait``): the writer is idle, nothing queued."""
        self._last_direct = now
        assert isinstance(self.stream, LineStream)
        outgoing = self.hooks.writable(items)
        payloads = [o.payload for o in outgoing if o.payload]
        before = self.stream.frames_sent
        rest: Rest | None = None
        try:
            if payloads:
                rest = self.stream.send_now(payloads)
        except StreamClosed:
            self.hooks.written(_left(outgoing, 0))
            self.abort("connection lost while writing")
            return
        left = _left(outgoing, self.stream.frames_sent - before)
        self.hooks.written(left)
        if rest is not None:
            self._outbox.send_nowait(_Remainder(rest, outgoing[len(left) :]))
            self._pending += 1
            self.remainders += 1

    def _write_held(self) -> None:
        """Make the gathered write (``gathered_writes``), or, if the writer woke or the
        outbox closed meanwhile, hand what was held to the writer, in order."""
        held, self._held = self._held, None
        if not held:
            return
        self._pending -= len(held)
        if self._idle and self._pending == 0 and not self._closed:
            self._write_now(held, trio.current_time())
            return
        for number, item in enumerate(held):
            if not self.queue_nowait(item):
                if not self._closed:
                    # Held frames fit the outbox when held: never expected. Positions
                    # stay unwritten (kept for the device), and the client is not left
                    # with a gap: it reads them again at its next login.
                    log.error("%s: %d held frames found no room", self.name, len(held) - number)
                    self.abort("outbox full (held frames)")
                break

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or the writer is gone)."""
        if not self._writer_alive:
            return
        marker = Flush()
        if await self.queue(marker):
            await marker.done.wait()

    def close_outbox(self) -> None:
        """Nothing more will be queued: the writer ends once it has written the rest."""
        if self._held is not None:
            self._write_held()
        self._closed = True
        self._outbox.close()

    def abort(self, reason: str) -> None:
        """End the connection now (the scope given to ``run_writer`` is cancelled)."""
        log.warning("disconnecting %s: %s", self.name, reason)
        if self._scope is not None:
            self._scope.cancel()

    def overdue(self, now: float) -> bool:
        """A write has been under way longer than ``slow_client_seconds`` (the client
        stopped reading): the node's watchdog then aborts the connection."""
        started = self._write_started
        return started is not None and now - started > self._settings.slow_client_seconds

    # --- the writer --------------------------------------------------------------

    async def run_writer(self, scope: trio.CancelScope) -> None:
        """The writer task; ``scope`` is what ``abort`` cancels (the connection's)."""
        self._scope = scope
        self._writer_alive = True
        settings = self._settings
        items: list[Outgoing | Flush | Nudge] = []
        try:
            while True:
                self._idle = True
                try:
                    first = await self._outbox_reader.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    self._idle = False
                self._pending -= 1
                if isinstance(first, _Remainder):
                    if not await self._write_rest(first):
                        return
                    continue
                items = [first]
                size = len(first.payload) if isinstance(first, Outgoing) else 0
                while size < settings.write_batch_bytes and not isinstance(items[-1], Flush):
                    try:
                        item = self._outbox_reader.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    self._pending -= 1
                    assert not isinstance(item, _Remainder), "a remainder is always first"
                    items.append(item)
                    size += len(item.payload) if isinstance(item, Outgoing) else 0
                outgoing = self.hooks.writable([i for i in items if isinstance(i, Outgoing)])
                payloads = [item.payload for item in outgoing if item.payload]
                before = self.stream.frames_sent
                try:
                    if payloads:
                        self._write_started = trio.current_time()
                        await self.stream.send(payloads)
                except StreamClosed:
                    self.abort("connection lost while writing")
                    return
                finally:
                    self._write_started = None
                    # Also when cancelled or cut off halfway: exactly what left is had.
                    self.hooks.written(_left(outgoing, self.stream.frames_sent - before))
                for item in items:
                    if isinstance(item, Flush):
                        item.done.set()
        finally:
            self._writer_alive = False
            for item in items:  # a batch cut short: its flushes cannot happen either
                if isinstance(item, Flush):
                    item.done.set()
            self._release_flushes()
            self._outbox_reader.close()  # producers now fail fast instead of waiting

    async def _write_rest(self, remainder: _Remainder) -> bool:
        """Write what a write made at once left; False if the connection is lost."""
        assert isinstance(self.stream, LineStream)
        before = self.stream.frames_sent
        try:
            self._write_started = trio.current_time()
            await self.stream.send_rest(remainder.rest)
        except StreamClosed:
            self.abort("connection lost while writing")
            return False
        finally:
            self._write_started = None
            self.hooks.written(_left(remainder.outgoing, self.stream.frames_sent - before))
        return True

    def _release_flushes(self) -> None:
        """The writer is gone: wake anyone waiting for a flush that cannot happen."""
        while True:
            try:
                item = self._outbox_reader.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if isinstance(item, Flush):
                item.done.set()


def _left(outgoing: Sequence[Outgoing], sent: int) -> Sequence[Outgoing]:
    """The frames of ``outgoing`` that left when ``sent`` of its non-empty ones did: an
    empty frame left once every frame before it did."""
    count = 0
    for index, item in enumerate(outgoing):
        if item.payload:
            if count == sent:
                return outgoing[:index]
            count += 1
    return outgoing
