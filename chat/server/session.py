"""One client connection: a reader, a writer, and (once logged in) a delivery task.

Tasks, all in the session's nursery:

- the reader (the session's main task) reads frames and handles requests one at a
  time, so replies leave in the order the requests came;
- the writer is the only task that writes to the connection; it drains a bounded
  outbox, joins queued frames into one write, and *after* a kept message has been
  written it acknowledges it to the store, which forgets it;
- the delivery task, while a user is logged in, reads what the store keeps for
  the user and queues it. It never trusts a notice's content: a wake-up only
  says "read the store", so a lost or repeated notice changes nothing.

A client that does not read is not buffered without limit: the outbox holds
``outbox_frames`` frames, and a producer that cannot queue within
``slow_client_seconds`` disconnects the client; so does a write to the connection
that does not finish within ``slow_client_seconds`` (a client that stopped
reading), so nothing waiting on the writer (a flush, a logout, the release of the
user's presence) waits for ever. Messages not yet written stay in the store for
the next login.

While the node is paused (its presence leases are in doubt: the user may be
logged in elsewhere by now), nothing is delivered: the delivery task waits, the
writer holds back kept messages (in order) and writes only replies, and
transient events are dropped. On resume the writer writes what it held; if the
session ends first, what it held stays kept for the next login. If the user's lease
had vanished meanwhile (and was re-created), someone may have logged in as the user
elsewhere and been delivered those very messages: then the session forgets every kept
message it had queued (they carry the session's *generation*, which the resume
bumps), and re-reads the store once the writer has passed them, so nothing comes twice
and the order holds.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence

import attrs
import trio

from chat.broker import BrokerUnavailable
from chat.protocol import ErrorCode, ProtocolError, RequestError, decode_request, encode_reply
from chat.protocol.codec import encode_event
from chat.protocol.messages import (
    Error,
    Event,
    GroupMessageEvent,
    LoginResult,
    MessageEvent,
    Ok,
    Rid,
    UserRef,
)
from chat.store import PendingDelivery, StoreError, StoreUnavailable, UserRecord
from chat.transports import FrameRejected, MessageStream, StreamClosed

from .handlers import dispatch
from .services import Services

log = logging.getLogger(__name__)

MAX_HELD_PUSHES = 100
"""Transient events held while a login's kept messages are being queued."""


@attrs.frozen
class Outgoing:
    payload: bytes
    user_id: int = 0
    seq: int = 0
    """Non-zero for a kept message: acknowledge ``(user_id, seq)`` once written."""
    generation: int = 0
    """The session's generation when a kept message was queued (see the module)."""


@attrs.frozen
class Nudge:
    """Nothing to write: wakes the writer to look at what it holds back (on resume)."""


@attrs.frozen
class Flush:
    """Set ``done`` once everything queued before it is written and acknowledged."""

    done: trio.Event = attrs.field(factory=trio.Event)


def event_for(row: PendingDelivery, *, offline: bool) -> Event:
    sender = UserRef(row.sender_id, row.sender_name)
    if row.group_id is not None:
        return GroupMessageEvent(row.message_id, row.group_id, sender, row.body, row.ts, offline)
    assert row.recipient_id is not None
    return MessageEvent(row.message_id, sender, row.recipient_id, row.body, row.ts, offline)


class Session:
    def __init__(self, services: Services, stream: MessageStream, serial: int) -> None:
        self.services = services
        self.stream = stream
        self.holder = f"{services.router.node_id}/{serial}"
        """This connection's name in the cluster's presence table."""
        self.user: UserRecord | None = None
        settings = services.settings
        self._outbox, self._outbox_reader = trio.open_memory_channel[Outgoing | Flush | Nudge](
            settings.outbox_frames
        )
        self._held: list[Outgoing] = []
        """Kept messages the writer holds back while the node is paused, in order."""
        self._generation = 0
        """Bumped when queued kept messages must be forgotten and read again."""
        self._forgetting = False
        """Kept messages of an older generation may still be queued."""
        self._inflight: set[int] = set()
        """Kept messages queued or written, not yet known to be gone from the store."""
        self._acknowledged: set[int] = set()
        """Of those, the ones whose deletion has committed."""
        self._wake = trio.Event()
        self._delivery_scope: trio.CancelScope | None = None
        self._delivery_done: trio.Event | None = None
        self._held_pushes: list[bytes] | None = None
        self._reader_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._writer_alive = False

    # --- life cycle -----------------------------------------------------------

    async def run(self) -> None:
        settings = self.services.settings
        log.info("connection opened: %s (%s)", self.stream.peer, self.holder)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._writer_alive = True
                nursery.start_soon(self._writer)
                with self._reader_scope:
                    await self._read_loop()
                # The client left or the node is stopping: flush what is queued, then go.
                with trio.move_on_after(settings.close_grace_seconds, shield=True):
                    await self.end_login()
                self._outbox.close()
                nursery.cancel_scope.deadline = trio.current_time() + settings.close_grace_seconds
        except Exception:
            # A bug here must cost this connection only, never the node.
            log.exception("session %s failed", self.holder)
        finally:
            with trio.move_on_after(settings.close_grace_seconds, shield=True):
                await self.end_login()
                await self.stream.aclose()
            log.info("connection closed: %s (%s)", self.stream.peer, self.holder)

    def request_close(self) -> None:
        """Ask the session to finish gracefully (node shutdown): stop reading, flush, close."""
        self._reader_scope.cancel()

    def _abort(self, reason: str) -> None:
        log.warning("disconnecting %s (%s): %s", self.stream.peer, self.holder, reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- reading --------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                frame = await self.stream.receive()
            except StreamClosed:
                return
            except FrameRejected as exc:
                await self._queue(Outgoing(encode_reply(Error(None, exc.code, exc.message))))
                if exc.fatal:
                    return
                continue
            await self._handle_frame(frame)

    async def _handle_frame(self, frame: bytes | str) -> None:
        try:
            decoded = decode_request(frame)
        except ProtocolError as exc:
            await self._queue(Outgoing(encode_reply(Error(exc.rid, exc.code, exc.message))))
            return
        rid = decoded.rid
        try:
            result = await dispatch(self, decoded.request)
        except RequestError as exc:
            await self._reply_error(rid, exc.code, exc.message)
            return
        except (StoreUnavailable, BrokerUnavailable) as exc:
            log.warning("%s failed: %s", decoded.request.TYPE, exc)
            await self._reply_error(
                rid, ErrorCode.UNAVAILABLE, "the server cannot do this right now; try again"
            )
            return
        except StoreError:
            log.exception("%s failed in the store", decoded.request.TYPE)
            await self._reply_error(rid, ErrorCode.UNAVAILABLE, "the request failed; try again")
            return
        except Exception:
            # A bug must cost one request, never the connection or the server.
            log.exception("request %s failed unexpectedly", decoded.request.TYPE)
            await self._reply_error(rid, ErrorCode.INTERNAL_ERROR, "internal server error")
            return
        await self._queue(Outgoing(encode_reply(Ok(rid, result))))
        if isinstance(result, LoginResult):
            await self._after_login(result.offline)

    async def _reply_error(self, rid: Rid | None, code: ErrorCode, message: str) -> None:
        await self._queue(Outgoing(encode_reply(Error(rid, code, message))))

    # --- login state ----------------------------------------------------------

    async def begin_login(self, user: UserRecord) -> bool:
        """Claim the user's presence and route its notices here; False if online elsewhere."""
        if not await self.services.broker.claim(user.id, self.holder):
            return False
        self.user = user
        self._held_pushes = []
        self._inflight.clear()
        self._acknowledged.clear()
        self._wake = trio.Event()
        self.services.router.attach(user.id, self)
        return True

    async def _after_login(self, offline: int) -> None:
        """Queue the ``offline`` kept messages right after the reply, then go live."""
        user = self.user
        if user is None or self._nursery is None:
            return
        try:
            queued = await self._queue_kept(user, offline)
        except StoreError as exc:
            # The reply promised ``offline`` messages that cannot be read now; closing
            # is the honest answer. They stay kept for the next login.
            self._abort(f"cannot read kept messages of user {user.id}: {exc}")
            await trio.lowlevel.checkpoint()
            return
        if queued != offline:
            log.error(
                "login of user %d announced %d kept messages, sent %d", user.id, offline, queued
            )
        held, self._held_pushes = self._held_pushes or [], None
        for payload in held:
            await self._queue(Outgoing(payload))
        self._delivery_done = trio.Event()
        self._delivery_scope = trio.CancelScope()
        self._wake.set()
        self._nursery.start_soon(
            self._deliver_live, user, self._delivery_scope, self._delivery_done
        )

    async def end_login(self) -> None:
        """Log the user out of this connection: nothing more is queued, the queue is
        written and acknowledged, then presence is released. Idempotent."""
        user = self.user
        if user is None:
            return
        if self._delivery_scope is not None and self._delivery_done is not None:
            self._delivery_scope.cancel()
            await self._delivery_done.wait()
        self._delivery_scope = self._delivery_done = None
        self._held_pushes = None
        await self._flush()
        self._held.clear()  # not written: they stay kept for the next login
        self.user = None
        self.services.router.detach(user.id, self)
        try:
            await self.services.broker.release(user.id, self.holder)
        except BrokerUnavailable:
            log.warning("could not release user %d now; the lease will expire", user.id)

    # --- delivery -------------------------------------------------------------

    def wake(self) -> None:
        """The store may hold new messages for this session's user."""
        self._wake.set()

    def resume(self, *, reread: bool = False) -> None:
        """The node resumed: write what was held back, and read what may have come;
        with ``reread``, forget the kept messages queued so far and read them again."""
        if reread:
            self._generation += 1
            self._forgetting = True
        self._wake.set()
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            self._outbox.send_nowait(Nudge())  # a full outbox wakes the writer anyway

    def push(self, payload: bytes) -> None:
        """Queue a transient event now, or hold it while a login is being served."""
        if self.user is None or self.services.router.paused:
            return
        if self._held_pushes is not None:
            if len(self._held_pushes) < MAX_HELD_PUSHES:
                self._held_pushes.append(payload)
            return
        try:
            self._outbox.send_nowait(Outgoing(payload))
        except trio.WouldBlock:
            # A busy client is not a slow one yet (queued messages get their grace time);
            # a transient event is not kept, and the next login's friend list shows it.
            log.warning("outbox of %s full: a %d-byte event was dropped", self.holder, len(payload))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _queue_kept(self, user: UserRecord, count: int) -> int:
        """Queue the ``count`` oldest kept messages, marked ``offline``."""
        page = self.services.settings.delivery_page
        after = queued = 0
        while queued < count:
            rows = await self.services.store.pending(
                user.id, min(page, count - queued), after_seq=after
            )
            if not rows:
                break
            for row in rows:
                self._inflight.add(row.seq)
                await self._queue(self._kept(user, row, offline=True))
            after = rows[-1].seq
            queued += len(rows)
        return queued

    async def _deliver_live(
        self, user: UserRecord, scope: trio.CancelScope, done: trio.Event
    ) -> None:
        page = self.services.settings.delivery_page
        generation = self._generation
        try:
            with scope:
                while True:
                    await self._wake.wait()
                    await self.services.router.wait_live()
                    self._wake = trio.Event()
                    if generation != self._generation:
                        # Let the writer drop the forgotten messages before reading again.
                        generation = self._generation
                        await self._flush()
                        self._forgetting = generation != self._generation
                    while True:
                        limit = len(self._inflight) + page
                        # Acknowledged before this read began: surely gone from its result.
                        # One acknowledged while it runs may still be in it: it stays in
                        # ``_inflight`` (and is skipped) until the next read.
                        settled = set(self._acknowledged)
                        try:
                            rows = await self.services.store.pending(user.id, limit)
                        except StoreError as exc:
                            log.warning("cannot read kept messages of user %d: %s", user.id, exc)
                            await trio.sleep(1.0)
                            self._wake.set()
                            break
                        self._inflight -= settled
                        self._acknowledged -= settled
                        for row in rows:
                            if row.seq not in self._inflight:
                                self._inflight.add(row.seq)
                                await self._queue(self._kept(user, row, offline=False))
                        if len(rows) < limit:
                            break
        finally:
            done.set()

    def _kept(self, user: UserRecord, row: PendingDelivery, *, offline: bool) -> Outgoing:
        payload = encode_event(event_for(row, offline=offline))
        return Outgoing(payload, user.id, row.seq, self._generation)

    # --- the outbox and the writer ---------------------------------------------

    async def _queue(self, item: Outgoing | Flush | Nudge) -> None:
        """Put an item in the outbox, waiting a little if it is full; a client that
        does not make room in time is disconnected."""
        try:
            self._outbox.send_nowait(item)
            return
        except trio.WouldBlock:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the writer is gone with the connection; kept messages stay kept
        with trio.move_on_after(self.services.settings.slow_client_seconds):
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                await self._outbox.send(item)
            return
        self._abort("outbox full (client too slow)")
        await trio.lowlevel.checkpoint()  # raises Cancelled: the session is over

    async def _flush(self) -> None:
        if not self._writer_alive:
            return
        marker = Flush()
        await self._queue(marker)
        await marker.done.wait()

    async def _writer(self) -> None:
        batch_bytes = self.services.settings.write_batch_bytes
        try:
            async for first in self._outbox_reader:
                items = [first]
                size = len(first.payload) if isinstance(first, Outgoing) else 0
                while size < batch_bytes and not isinstance(items[-1], Flush):
                    try:
                        item = self._outbox_reader.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    items.append(item)
                    size += len(item.payload) if isinstance(item, Outgoing) else 0
                outgoing = self._writable([item for item in items if isinstance(item, Outgoing)])
                before = self.stream.frames_sent
                try:
                    with trio.move_on_after(self.services.settings.slow_client_seconds) as write:
                        if outgoing:
                            await self.stream.send([item.payload for item in outgoing])
                except StreamClosed:
                    self._abort("connection lost while writing")
                    return
                finally:
                    # Also when cancelled or cut off halfway: what left is not kept any more.
                    written = outgoing[: self.stream.frames_sent - before]
                    with trio.move_on_after(self.services.settings.close_grace_seconds) as scope:
                        scope.shield = True
                        await self._acknowledge(written)
                if write.cancelled_caught:
                    self._abort("a write did not finish in time (client not reading)")
                    return
                for item in items:
                    if isinstance(item, Flush):
                        item.done.set()
        finally:
            self._writer_alive = False
            self._release_flushes()
            self._outbox_reader.close()  # producers now fail fast instead of waiting

    def _writable(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """What may be written now: while the node is paused, kept messages are held
        back (replies go out); once it resumes, what was held goes first. Kept messages
        of an older generation are forgotten (see the module)."""
        current = self._generation
        if self._forgetting:
            self._inflight.difference_update(
                item.seq for item in [*self._held, *outgoing] if item.generation != current
            )
            self._held = [item for item in self._held if item.generation == current]
            outgoing = [item for item in outgoing if not item.seq or item.generation == current]
        if self.services.router.paused:
            self._held.extend(item for item in outgoing if item.seq)
            return [item for item in outgoing if not item.seq]
        if self._held:
            outgoing, self._held = [*self._held, *outgoing], []
        return outgoing

    async def _acknowledge(self, items: Sequence[Outgoing]) -> None:
        written: dict[int, list[int]] = defaultdict(list)
        for item in items:
            if item.seq:
                written[item.user_id].append(item.seq)
        pending = list(written.items())
        for index, (user_id, seqs) in enumerate(pending):
            try:
                await self.services.store.acknowledge(user_id, seqs)
            except StoreError as exc:
                # Still kept (and still in ``_inflight``, so not queued again here): the
                # node retries the deletion, and the next login settles it first.
                log.warning(
                    "acknowledging %d messages of user %d failed: %s", len(seqs), user_id, exc
                )
                self.services.acknowledger.defer(user_id, seqs)
                continue
            except trio.Cancelled:
                # Cut short (the close grace ran out): what was written is still deleted,
                # later, by the node. Deleting a row twice is harmless.
                for later_user, later_seqs in pending[index:]:
                    self.services.acknowledger.defer(later_user, later_seqs)
                raise
            self._acknowledged.update(seqs)

    def _release_flushes(self) -> None:
        """The writer is gone: wake anyone waiting for a flush that cannot happen."""
        while True:
            try:
                item = self._outbox_reader.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if isinstance(item, Flush):
                item.done.set()
