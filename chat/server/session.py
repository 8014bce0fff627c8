"""One client connection from accept to close: a ``Connection`` and its ``UserSession``.

Tasks, all in the session's nursery:

- the reader (the session's main task) reads frames, decodes them with the
  connection's codec and handles requests one at a time, so replies leave in the
  order the requests came;
- the answerer, once the client pipelines sends (its next frame has arrived before a
  send is answered): the reader only starts such a send (its place in the store's
  order is fixed then, ``handlers.begin``) and reads on, up to ``pipeline_depth``
  sends ahead (then on once half of them are answered); the answerer finishes them one
  after the other and replies, so a client that sends many messages at once has them
  stored in few transactions and answered in few writes, in order. Any other request
  waits until every send before it was answered, so what it sees and what it changes
  comes after them, as if the sends had been handled one by one. A client that waits
  for each answer is served by the reader alone, without the hop. A send that was
  started is carried out even if the connection ends first (its recipients get it; its
  sender no answer), so a cut-off pipeline leaves no gap;
- the writer (``Connection.run_writer``) writes to the connection (a frame handed
  over while it is idle is written at once: ``Connection.deliver_nowait``);
- the delivery task (``UserSession``), while a user is logged in, reads what the
  store keeps for the user and queues it.

The connection is the transport side (stream, codec, outbox, writer: see
connection.py); the user session the login side (presence, delivery, kept
messages: see user_session.py). This module only ties them together and turns
handler results and errors into replies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import trio

from chat.broker import BrokerUnavailable
from chat.protocol import V1, Codec, ErrorCode, ProtocolError, RequestError
from chat.protocol.messages import Error, LoginResult, Ok, Result, Rid
from chat.store import StoreError, StoreUnavailable
from chat.transports import FrameRejected, MessageStream, StreamClosed

from .connection import Connection, Outgoing
from .handlers import begin, dispatch, pipelined
from .services import Services
from .throttles import RequestBudget
from .user_session import UserSession

log = logging.getLogger(__name__)

RATE_LIMITED_PAUSE_MS = 1_000
"""After a ``rate_limited`` reply, the connection's next request is read this much
later at most (``retry_after_ms`` if shorter)."""


class Session:
    def __init__(
        self,
        services: Services,
        stream: MessageStream,
        serial: int,
        codec: Codec = V1,
        *,
        opened_at: float | None = None,
    ) -> None:
        """``opened_at``: when the connection was accepted (``trio.current_time()``), if
        before now: the login timeout counts from then, the PROXY header and the TLS and
        WebSocket handshakes included."""
        self.services = services
        self.stream = stream
        self.holder = f"{services.router.node_id}/{serial}"
        """This connection's name in the cluster's presence table."""
        self.connection = Connection(
            stream, codec, services.settings, f"{stream.peer} ({self.holder})"
        )
        self.user_session = UserSession(services, self.connection, self.holder, self.request_close)
        self._reader_scope = trio.CancelScope()
        settings = services.settings
        self.budget = RequestBudget(settings.request_rate, settings.request_burst)
        self._logged_in = False
        """A login succeeded on this connection (it is exempt from the login timeout)."""
        self.opened_at = trio.current_time() if opened_at is None else opened_at
        self._started: trio.MemorySendChannel[_Started] | None = None
        """To the answerer: pipelined requests, in the order they came (see the module)."""
        self._unanswered = 0
        """Pipelined requests started and not answered yet."""
        self._room = trio.Event()
        self._room_at = -1
        """``_room`` is set when ``_unanswered`` drops to this (-1: nobody waits)."""
        self._answered = trio.Event()
        """Set when ``_unanswered`` drops to 0 (``_answer_pipelined_first`` waits on it)."""
        self._pause_seconds = 0.0
        """After a ``rate_limited`` reply: how long the reader pauses before reading on."""
        self._finishing = trio.Lock()
        """Held by the answerer while it finishes, unanswered, what it had when the
        connection ended, so a request the reader could not hand over comes after."""

    async def run(self) -> None:
        settings = self.services.settings
        closing = self.services.closing
        gated = False
        log.info("connection opened: %s (%s)", self.stream.peer, self.holder)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.connection.run_writer, nursery.cancel_scope)
                with self._reader_scope:
                    await self._read_loop(nursery)
                # Thousands of clients may leave at once (a proxy restarting): closing a
                # few at a time keeps the event loop, and everyone else on it, moving.
                await closing.acquire()
                gated = True
                # The client left or the node is stopping: answer the sends it made, flush
                # what is queued, then go.
                with trio.move_on_after(settings.close_grace_seconds, shield=True):
                    await self._answer_pipelined_first()
                if self._unanswered:
                    # Their answers cannot be written (the client reads nothing): end the
                    # connection. The answerer still finishes those sends before the user
                    # is let go (the nursery waits for it; ``end_login`` comes after).
                    self.connection.abort("pipelined sends not answered within the close grace")
                    await trio.lowlevel.checkpoint()
                with trio.move_on_after(settings.close_grace_seconds, shield=True):
                    await self.user_session.end_login()
                if self._started is not None:
                    self._started.close()  # the answerer ends
                self.connection.close_outbox()
                nursery.cancel_scope.deadline = trio.current_time() + settings.close_grace_seconds
        except Exception:
            # A bug here must cost this connection only, never the node.
            log.exception("session %s failed", self.holder)
        finally:
            with trio.move_on_after(settings.close_grace_seconds, shield=True):
                await self.user_session.end_login()
            with trio.move_on_after(settings.close_grace_seconds, shield=True):
                await self.stream.aclose()  # even if the logout above ran out of time
            if gated:
                closing.release()
            log.info("connection closed: %s (%s)", self.stream.peer, self.holder)

    def login_overdue(self, now: float) -> bool:
        """Open longer than ``login_timeout_seconds`` without a login (the node's
        watchdog asks, so an idle connection costs no timer task of its own)."""
        timeout = self.services.settings.login_timeout_seconds
        return bool(timeout) and not self._logged_in and now - self.opened_at > timeout

    def expire_login(self) -> None:
        """Tell the client it did not log in in time, and close the connection."""
        self._logged_in = True  # once
        timeout = self.services.settings.login_timeout_seconds
        log.info("closing %s (%s): no login within %g s", self.stream.peer, self.holder, timeout)
        self.services.metrics.login_timeouts.inc()
        error = Error(None, ErrorCode.LOGIN_TIMEOUT, f"no login within {timeout:g} s: closing")
        self.connection.queue_nowait(Outgoing(self.connection.codec.encode_reply(error)))
        self.request_close()

    def request_close(self) -> None:
        """Ask the session to finish gracefully (node shutdown): stop reading, flush, close."""
        self._reader_scope.cancel()

    # --- reading --------------------------------------------------------------

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        depth = max(1, self.services.settings.pipeline_depth)
        while True:
            if self._unanswered >= depth:
                await self._wait_for_room(depth)
            try:
                frame = await self.stream.receive()
            except StreamClosed:
                return
            except FrameRejected as exc:
                await self._answer_pipelined_first()
                await self._reply(Error(None, exc.code, exc.message))
                if exc.fatal:
                    return
                continue
            await self._handle_frame(frame, nursery)
            if self._pause_seconds:
                # Told to wait: this connection's next request is read a little later.
                # An honest client waits anyway; a flood that does not gets at most one
                # refusal per connection per pause, instead of as many as the node can
                # answer (every one of which costs the event loop and everyone on it).
                await trio.sleep(self._pause_seconds)
                self._pause_seconds = 0.0

    async def _handle_frame(self, frame: bytes | str, nursery: trio.Nursery) -> None:
        try:
            decoded = self.connection.codec.decode_request(frame)
        except ProtocolError as exc:
            await self._answer_pipelined_first()
            self.services.metrics.answered("-", exc.code.value)  # no type to trust
            await self._reply(Error(exc.rid, exc.code, exc.message))
            return
        rid = decoded.rid
        request = decoded.request
        kind = request.TYPE
        if pipelined(request) and (self._unanswered or self.stream.frames_waiting()):
            # The client sent on without waiting for this answer: read on, too.
            await self._start(rid, kind, nursery, request)
            return
        await self._answer_pipelined_first()
        result = await self._outcome(rid, kind, dispatch(self.user_session, request, self.budget))
        if result is None:
            return
        if isinstance(result, LoginResult) and self.connection.codec.login_carries_kept:
            # The reply itself carries the first kept messages: queued once they are read.
            self._logged_in = True
            await self.user_session.go_live(result.offline, nursery, reply=Ok(rid, result))
            return
        sent = await self._reply(Ok(rid, result))
        if isinstance(result, LoginResult):
            self._logged_in = True
            if sent:
                await self.user_session.go_live(result.offline, nursery)
            else:
                await self.user_session.end_login()

    async def _outcome(
        self, rid: Rid | None, kind: str, work: Awaitable[Result], *, pause: bool = True
    ) -> Result | None:
        """Await a request's handler: its result, or None once its error is queued.
        ``pause``: a ``rate_limited`` refusal pauses the reader (the pipelined path
        does that when it starts the request)."""
        metrics = self.services.metrics
        try:
            result = await work
        except RequestError as exc:
            metrics.answered(kind, exc.code.value)
            await self._reply(Error(rid, exc.code, exc.message, exc.retry_after_ms))
            if exc.code is ErrorCode.RATE_LIMITED:
                metrics.rate_limited.labels(getattr(exc, "limit", kind)).inc()
                if pause:
                    self._pause_after(exc)
            return None
        except (StoreUnavailable, BrokerUnavailable) as exc:
            log.warning("%s failed: %s", kind, exc)
            metrics.answered(kind, ErrorCode.UNAVAILABLE.value)
            await self._reply_error(
                rid, ErrorCode.UNAVAILABLE, "the server cannot do this right now; try again"
            )
            return None
        except StoreError:
            log.exception("%s failed in the store", kind)
            metrics.answered(kind, ErrorCode.UNAVAILABLE.value)
            await self._reply_error(rid, ErrorCode.UNAVAILABLE, "the request failed; try again")
            return None
        except Exception:
            # A bug must cost one request, never the connection or the server.
            log.exception("request %s failed unexpectedly", kind)
            metrics.answered(kind, ErrorCode.INTERNAL_ERROR.value)
            await self._reply_error(rid, ErrorCode.INTERNAL_ERROR, "internal server error")
            return None
        metrics.answered(kind, "ok")
        return result

    def _pause_after(self, refusal: RequestError) -> None:
        """A ``rate_limited`` refusal: the reader reads on a little later."""
        wait = min(refusal.retry_after_ms or 0, RATE_LIMITED_PAUSE_MS) / 1000
        self._pause_seconds = max(self._pause_seconds, wait)

    # --- pipelined requests ---------------------------------------------------------

    async def _start(self, rid: Rid | None, kind: str, nursery: trio.Nursery, request: Any) -> None:
        """Start a pipelined request and hand it to the answerer; waits only while
        ``pipeline_depth`` requests are unanswered already."""
        try:
            work = begin(self.user_session, request, self.budget)
        except Exception as exc:
            work = _refused(exc)  # answered in its turn, after the requests before it
            if isinstance(exc, RequestError) and exc.code is ErrorCode.RATE_LIMITED:
                self._pause_after(exc)
        depth = max(1, self.services.settings.pipeline_depth)
        if self._started is None:
            self._started, started = trio.open_memory_channel[_Started](depth - 1)
            nursery.start_soon(self._answer_in_order, started)
        item = (rid, kind, work)
        self._unanswered += 1
        self.connection.replies_due = self._unanswered
        try:
            if self._unanswered > depth:
                await self._started.send(item)  # full: wait (no WouldBlock twice)
            else:
                try:
                    self._started.send_nowait(item)
                except trio.WouldBlock:
                    await self._started.send(item)
        except trio.Cancelled:
            # Started is started: it still goes to the answerer, in its turn. The wait
            # is bounded: the answerer makes room within ``slow_client_seconds``, or the
            # connection is aborted and the answerer ends, taking it with its leftovers.
            try:
                with trio.CancelScope(shield=True):
                    await self._started.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._finish_after_answerer(item)
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._finish_after_answerer(item)
            await trio.lowlevel.checkpoint()  # the answerer is gone: so is the connection

    async def _finish_after_answerer(self, item: _Started) -> None:
        """The answerer has ended (the connection is ending): finish a request it never
        took, after those it still had (it holds ``_finishing`` while it finishes them)."""
        with trio.CancelScope(shield=True):
            async with self._finishing:
                await self._finish_unanswered([item])

    async def _answer_in_order(self, started: trio.MemoryReceiveChannel[_Started]) -> None:
        """The answerer: finish each pipelined request, in order, and reply. Requests
        whose store calls have run already are answered in a row, without a schedule
        point, so the writer sends their replies in one write."""
        try:
            while True:
                try:
                    rid, kind, work = started.receive_nowait()
                except trio.WouldBlock:
                    try:
                        rid, kind, work = await started.receive()
                    except trio.EndOfChannel:
                        return
                except trio.EndOfChannel:
                    return
                try:
                    # Cancelled, the store call still runs (``Coalescer.submit``) and
                    # its request is finished here: no gap before the later ones.
                    result = await self._outcome(rid, kind, work, pause=False)
                    if result is not None:
                        await self._reply(Ok(rid, result))
                finally:
                    self._answered_one()
        finally:
            with trio.CancelScope(shield=True):
                # Before anyone can see the channel closed (a reader's request that
                # finds it closed is finished after these); free unless that reader
                # is still finishing one of its own from before.
                await self._finishing.acquire()
                try:
                    leftovers: list[_Started] = []
                    while True:
                        try:
                            leftovers.append(started.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    started.close()
                    await self._finish_unanswered(leftovers)
                finally:
                    self._finishing.release()

    async def _finish_unanswered(self, started: list[_Started]) -> None:
        """The connection is ending before these pipelined requests were answered. Each
        was started: a send is queued in the store and will be stored, so it is
        finished all the same (handed to its recipients), in order, before the user's
        presence is let go; only its ``ok`` is not written. Bounded by the store's own
        timeout, and when a batch fails, the sends queued behind it fail at once
        (``Coalescer`` chains)."""
        with trio.CancelScope(shield=True):
            for rid, kind, work in started:
                try:
                    await self._outcome(rid, kind, work, pause=False)
                finally:
                    self._answered_one()

    def _answered_one(self) -> None:
        self._unanswered -= 1
        self.connection.replies_due = self._unanswered
        if self._unanswered <= self._room_at:
            self._room_at = -1
            self._room.set()
        if not self._unanswered:
            self._answered.set()

    async def _wait_for_room(self, depth: int) -> None:
        """``pipeline_depth`` sends are unanswered: read on once half of them are. The
        reader wakes once per half a window, not once per answer, and the sends it
        then reads go to the store together."""
        self._room = trio.Event()
        self._room_at = depth // 2
        await self._room.wait()

    async def _answer_pipelined_first(self) -> None:
        """Wait until every pipelined request read so far is answered (before any other
        request: it must see, and come after, what they did). One waiter at a time:
        the reader, or the session once the reader is done."""
        if self._unanswered:
            self._answered = trio.Event()
            await self._answered.wait()

    async def _reply(self, reply: Ok | Error) -> bool:
        """Queue a reply; False if it was too large for a frame and an ``internal_error``
        went instead. Never happens (results are bounded: chat.protocol.bounded); if a
        bug ever makes one too large, the client gets an error it can read rather
        than a frame it must refuse."""
        payload = self.connection.codec.encode_reply(reply)
        if not payload:
            return True  # the codec's protocol has no such reply: nothing to write
        if len(payload) > self.services.settings.max_frame_bytes:
            log.error("a %d-byte reply was too large to send: %.200r", len(payload), payload)
            error = Error(reply.rid, ErrorCode.INTERNAL_ERROR, "internal server error")
            await self.connection.queue(Outgoing(self.connection.codec.encode_reply(error)))
            return False
        item = Outgoing(payload)
        # A request answered by the reader (nothing pipelined): written at once when the
        # writer is idle; the answerer's replies go to the writer, which joins them.
        if not self._unanswered and self.connection.deliver_nowait(item):
            return True
        await self.connection.queue(item)
        return True

    async def _reply_error(self, rid: Rid | None, code: ErrorCode, message: str) -> None:
        await self._reply(Error(rid, code, message))


_Started = tuple[Rid | None, str, Awaitable[Result]]
"""A pipelined request the reader started: its rid, its type, what finishes it."""


async def _refused(error: Exception) -> Result:
    """A pipelined request refused by its first checks, answered in its turn."""
    raise error
