"""One client connection from accept to close: a ``Connection`` and its ``UserSession``.

Tasks, all in the session's nursery:

- the reader (the session's main task) reads frames, decodes them with the
  connection's codec and handles requests one at a time, so replies leave in the
  order the requests came;
- the writer (``Connection.run_writer``) is the only task that writes to the
  connection;
- the delivery task (``UserSession``), while a user is logged in, reads what the
  store keeps for the user and queues it.

The connection is the transport side (stream, codec, outbox, writer: see
connection.py); the user session the login side (presence, delivery, kept
messages: see user_session.py). This module only ties them together and turns
handler results and errors into replies.
"""

from __future__ import annotations

import logging

import trio

from chat.broker import BrokerUnavailable
from chat.protocol import V1, Codec, ErrorCode, ProtocolError, RequestError
from chat.protocol.messages import Error, LoginResult, Ok, Rid
from chat.store import StoreError, StoreUnavailable
from chat.transports import FrameRejected, MessageStream, StreamClosed

from .connection import Connection, Outgoing
from .handlers import dispatch
from .services import Services
from .throttles import RequestBudget
from .user_session import UserSession

log = logging.getLogger(__name__)

RATE_LIMITED_PAUSE_MS = 1_000
"""After a ``rate_limited`` reply, the connection's next request is read this much
later at most (``retry_after_ms`` if shorter)."""


class Session:
    def __init__(
        self, services: Services, stream: MessageStream, serial: int, codec: Codec = V1
    ) -> None:
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
        self.opened_at = trio.current_time()

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
                # The client left or the node is stopping: flush what is queued, then go.
                with trio.move_on_after(settings.close_grace_seconds, shield=True):
                    await self.user_session.end_login()
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
        while True:
            try:
                frame = await self.stream.receive()
            except StreamClosed:
                return
            except FrameRejected as exc:
                await self._reply(Error(None, exc.code, exc.message))
                if exc.fatal:
                    return
                continue
            await self._handle_frame(frame, nursery)

    async def _handle_frame(self, frame: bytes | str, nursery: trio.Nursery) -> None:
        metrics = self.services.metrics
        try:
            decoded = self.connection.codec.decode_request(frame)
        except ProtocolError as exc:
            metrics.requests.labels("-", exc.code.value).inc()  # no type to trust
            await self._reply(Error(exc.rid, exc.code, exc.message))
            return
        rid = decoded.rid
        kind = decoded.request.TYPE
        try:
            result = await dispatch(self.user_session, decoded.request, self.budget)
        except RequestError as exc:
            metrics.requests.labels(kind, exc.code.value).inc()
            await self._reply(Error(rid, exc.code, exc.message, exc.retry_after_ms))
            if exc.code is ErrorCode.RATE_LIMITED:
                metrics.rate_limited.labels(getattr(exc, "limit", kind)).inc()
                # Told to wait: this connection's next request is read a little later.
                # An honest client waits anyway; a flood that does not gets at most one
                # refusal per connection per pause, instead of as many as the node can
                # answer (every one of which costs the event loop and everyone on it).
                await trio.sleep(min(exc.retry_after_ms or 0, RATE_LIMITED_PAUSE_MS) / 1000)
            return
        except (StoreUnavailable, BrokerUnavailable) as exc:
            log.warning("%s failed: %s", kind, exc)
            metrics.requests.labels(kind, ErrorCode.UNAVAILABLE.value).inc()
            await self._reply_error(
                rid, ErrorCode.UNAVAILABLE, "the server cannot do this right now; try again"
            )
            return
        except StoreError:
            log.exception("%s failed in the store", kind)
            metrics.requests.labels(kind, ErrorCode.UNAVAILABLE.value).inc()
            await self._reply_error(rid, ErrorCode.UNAVAILABLE, "the request failed; try again")
            return
        except Exception:
            # A bug must cost one request, never the connection or the server.
            log.exception("request %s failed unexpectedly", kind)
            metrics.requests.labels(kind, ErrorCode.INTERNAL_ERROR.value).inc()
            await self._reply_error(rid, ErrorCode.INTERNAL_ERROR, "internal server error")
            return
        metrics.requests.labels(kind, "ok").inc()
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
        await self.connection.queue(Outgoing(payload))
        return True

    async def _reply_error(self, rid: Rid | None, code: ErrorCode, message: str) -> None:
        await self._reply(Error(rid, code, message))
