"""The logged-in user of one connection: login state, the delivery task, kept messages.

A ``UserSession`` is what handlers see (``Caller``) and what the router reaches
(``wake``, ``push``, ``resume``, ``request_close``). It queues frames on its
``Connection``, encoded with that connection's codec, and is the connection's
``WriteHooks``: it decides whether kept messages may be written now and, once
they are, tells the store to forget them.

Delivery: while a user is logged in, the delivery task reads what the store keeps
for the user and queues it. It never trusts a notice's content: a wake-up only
says "read the store", so a lost or repeated notice changes nothing. A kept
message is forgotten by the store only after it was written to the connection.

While the node is paused (its presence leases are in doubt: the user may be
logged in elsewhere by now), nothing is delivered: the delivery task waits, kept
messages are held back (in order) and only replies are written, and transient
events are held too (only the newest presence event per friend: ``HeldEvents``).
On resume what was held is written; if the login ends first, the kept messages
stay kept for the next login (and the transient events go). If the user's lease
had vanished meanwhile (and was re-created), someone may have logged in as the
user elsewhere and been delivered those very messages: then the session forgets
every kept message it had queued (they carry the session's *generation*, which
the resume bumps), and re-reads the store once the writer has passed them, so
nothing comes twice and the order holds.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import trio

from chat.broker import BrokerUnavailable
from chat.protocol.messages import (
    DeliveredEvent,
    Event,
    GroupMessageEvent,
    MessageEvent,
    Ok,
    UserRef,
)
from chat.store import PendingDelivery, StoreError, UserRecord

from .connection import Connection, Nudge, Outgoing, Receipt
from .held_events import HeldEvents
from .services import Services

log = logging.getLogger(__name__)


def event_for(row: PendingDelivery, *, offline: bool) -> DeliveredEvent:
    sender = UserRef(row.sender_id, row.sender_name)
    if row.group_id is not None:
        return GroupMessageEvent(row.message_id, row.group_id, sender, row.body, row.ts, offline)
    assert row.recipient_id is not None
    return MessageEvent(row.message_id, sender, row.recipient_id, row.body, row.ts, offline)


class UserSession:
    def __init__(
        self,
        services: Services,
        connection: Connection,
        holder: str,
        close: Callable[[], None],
    ) -> None:
        self.services = services
        self.connection = connection
        self.holder = holder
        """This connection's name in the cluster's presence table."""
        self.request_close = close
        """Ask the connection to finish gracefully (an eviction, the node stopping)."""
        self.user: UserRecord | None = None
        self.login_token: bytes | None = None
        """The hash of the session token of this login (set by the login handler)."""
        self._held: list[Outgoing] = []
        """Kept messages held back while the node is paused, in order."""
        self._generation = 0
        """Bumped when queued kept messages must be forgotten and read again."""
        self._forgetting = False
        """Kept messages of an older generation may still be queued."""
        self._inflight: set[int] = set()
        """Message ids of kept messages queued or written, not yet known to be gone
        from the store."""
        self._forgotten: set[int] = set()
        """Of those, the ones whose deletion committed while a read was under way."""
        self._reading = False
        """The delivery task's read of the store is under way."""
        self._last_read = 0
        """``Router.mark()`` when the newest read of the store for this login returned
        (its statement ran at some moment before that, perhaps well after the call)."""
        self._wake = trio.Event()
        self._idle = False
        """The delivery task waits for a wake-up: everything the store kept for the
        user when it last read is queued (see ``offer``)."""
        self._delivery_scope: trio.CancelScope | None = None
        self._delivery_done: trio.Event | None = None
        self._held_events = HeldEvents()
        """Transient events held back while logging in or paused (see held_events)."""
        self._logging_in = False
        """The login's kept messages are being queued (transient events wait)."""
        self._writing_held = False
        """Held transient events are being written (newer ones wait behind them)."""
        self._revoked = False
        """The user was logged in elsewhere while this node was paused: this session
        must never deliver again; it is closing."""
        connection.hooks = self

    # --- login state (the Caller interface) ----------------------------------------

    @property
    def address(self) -> str:
        return self.connection.stream.address

    async def begin_login(self, user: UserRecord) -> bool:
        """Claim the user's presence and route its notices here; False if online elsewhere."""
        if not await self.services.broker.claim(user.id, self.holder):
            return False
        self.user = user
        self._revoked = False
        self._held_events.take()
        self._logging_in = True
        self._inflight.clear()
        self._forgotten.clear()
        self._wake = trio.Event()
        self._last_read = self.services.router.mark()
        self.services.router.attach(user.id, self)
        return True

    async def go_live(self, offline: int, nursery: trio.Nursery, reply: Ok | None = None) -> None:
        """After the login reply: queue the ``offline`` kept messages, then start the
        delivery task in ``nursery`` (the connection's). ``reply``: the login reply,
        not queued yet, because it carries the first kept messages
        (``Codec.login_carries_kept``)."""
        user = self.user
        if user is None:
            return
        generation = self._generation
        try:
            queued = await self._queue_kept(user, offline, generation, reply)
        except StoreError as exc:
            # The reply promised ``offline`` messages that cannot be read now; closing
            # is the honest answer. They stay kept for the next login.
            self.connection.abort(f"cannot read kept messages of user {user.id}: {exc}")
            await trio.lowlevel.checkpoint()
            return
        if queued != offline:
            log.error(
                "login of user %d announced %d kept messages, sent %d", user.id, offline, queued
            )
        await self._write_held()  # (if paused, the delivery task writes them on resume)
        self._logging_in = False
        self._delivery_done = trio.Event()
        self._delivery_scope = trio.CancelScope()
        self._wake.set()
        nursery.start_soon(
            self._deliver_live, user, generation, self._delivery_scope, self._delivery_done
        )

    async def end_login(self) -> None:
        """Log the user out of this connection: nothing more is queued, the queue is
        written and forgotten by the store, then presence is released. Idempotent."""
        user = self.user
        if user is None:
            return
        if self._delivery_scope is not None and self._delivery_done is not None:
            self._delivery_scope.cancel()
            await self._delivery_done.wait()
        self._delivery_scope = self._delivery_done = None
        self._logging_in = False
        await self.connection.flush()
        self._held_events.take()  # transient: not for anyone else
        self._held.clear()  # not written: they stay kept for the next login
        await self._settle_deletions(user)
        self.user = None
        self.services.router.detach(user.id, self)
        try:
            await self.services.broker.release(user.id, self.holder)
        except BrokerUnavailable:
            log.warning("could not release user %d now; the lease will expire", user.id)

    # --- what the router calls -------------------------------------------------------

    def wake(self) -> None:
        """The store may hold new messages for this session's user."""
        self._wake.set()

    def revoke(self) -> None:
        """The user was logged in elsewhere while this node was paused: never deliver
        again (what is held or queued stays kept for that login), and close."""
        self._revoked = True
        self.request_close()

    def resume(self, *, reread: bool = False) -> None:
        """The node resumed: write what was held back, and read what may have come;
        with ``reread``, forget the kept messages queued so far and read them again."""
        if reread:
            self._generation += 1
            self._forgetting = True
        self._wake.set()
        self.connection.queue_nowait(Nudge())  # a full outbox wakes the writer anyway
        # The delivery task, woken now, writes the transient events held meanwhile.

    def offer(self, event: DeliveredEvent, stored_after: int) -> bool:
        """Take a message just stored for this user straight into the outbox, without
        reading it back from the store; False if the store must be read instead.

        ``stored_after`` is ``Router.mark()`` taken before the message was handed to
        the store: if a read of this login returned after that, its statement may
        have run after the message was committed (a read waits for its batch, and its
        thread, for a while), so it may have returned the message already, which may
        be written and deleted by now: only a read can tell. Otherwise only while the
        delivery task is idle: then every
        message stored for the user before this one is queued already (a message
        stored after the last read began would have woken it), so queuing this one
        now keeps each sender's order. Not while a read is under way or due (it may
        return older messages, which must go first), nor while paused, forgetting or
        logging in. The store keeps the message until it is written, like any other."""
        user = self.user
        if (
            user is None
            or self._last_read > stored_after
            or not self._idle
            or self._wake.is_set()
            or self._forgetting
            or self._revoked
            or self.services.router.paused
        ):
            return False
        if event.message_id in self._inflight:
            return True
        if not self.connection.queue_nowait(self._outgoing(user, event, self._generation)):
            return False  # a full outbox: the delivery task waits for room instead
        self._inflight.add(event.message_id)
        return True

    def push(self, event: Event) -> None:
        """Queue a transient event now, or hold it while a login's kept messages are
        being queued or the node is paused (then it goes when that is over; a
        presence event held is replaced by a newer one about the same friend)."""
        if self.user is None or self._revoked:
            return
        if (
            self._logging_in
            or self._writing_held
            or self._held_events
            or self.services.router.paused
        ):
            self._held_events.hold(event)  # behind what is held already
            return
        self._queue_transient(event)

    async def _write_held(self) -> None:
        """Write the held transient events, in order, waiting for room in the outbox (a
        friend's newest state must not be dropped for want of room), and those held
        meanwhile after them. Not while paused (they wait for the resume, which wakes
        the delivery task); never for a session that was revoked or logged out."""
        if self._writing_held:
            return
        self._writing_held = True
        try:
            while self._held_events and not self.services.router.paused:
                events = self._held_events.take()
                for index, event in enumerate(events):
                    # Looked at before each one: the wait for room may be long.
                    if self._revoked or self.user is None:
                        self._held_events.take()
                        return
                    if self.services.router.paused:
                        self._held_events.put_back(events[index:])
                        return
                    payload = self.services.encoded.transient(self.connection.codec, event)
                    await self.connection.queue(Outgoing(payload))
        finally:
            self._writing_held = False

    def _queue_transient(self, event: Event) -> None:
        payload = self.services.encoded.transient(self.connection.codec, event)
        if not self.connection.queue_nowait(Outgoing(payload)):
            # A busy client is not a slow one yet (queued messages get their grace time);
            # a transient event is not kept, and the next login's friend list shows it.
            log.warning(
                "outbox of %s full (or closed): a %s event was dropped", self.holder, event.TYPE
            )

    # --- delivery ---------------------------------------------------------------------

    async def _queue_kept(
        self, user: UserRecord, count: int, generation: int, reply: Ok | None = None
    ) -> int:
        """Queue the ``count`` oldest kept messages, marked ``offline`` (after ``reply``,
        which carries as many of the first ones as its codec fits in it)."""
        page = self.services.settings.delivery_page
        after = queued = 0
        while queued < count:
            self._reading = True
            try:
                rows = await self.services.store.pending(
                    user.id, min(page, count - queued), after_seq=after
                )
            finally:
                self._reading = False
                self._last_read = self.services.router.mark()
            if not rows:
                break
            carried = 0
            if reply is not None:
                carried = await self._queue_login_reply(user, reply, rows, generation)
                reply = None
            for row in rows[carried:]:
                self._inflight.add(row.message_id)
                await self.connection.queue(self._kept(user, row, True, generation))
            after = rows[-1].seq
            queued += len(rows)
        if reply is not None:
            await self._queue_login_reply(user, reply, [], generation)
        return queued

    async def _queue_login_reply(
        self, user: UserRecord, reply: Ok, rows: Sequence[PendingDelivery], generation: int
    ) -> int:
        """Queue a login reply that carries the first of ``rows``, then one empty frame
        for each message it carries: an empty frame writes nothing and counts as written
        once the reply has been, so the store forgets each carried message exactly when
        the reply that carries it has left. Returns how many it carries."""
        events = [event_for(row, offline=True) for row in rows]
        payload, carried = self.connection.codec.encode_login(reply, events)
        await self.connection.queue(Outgoing(payload))
        for event in events[:carried]:
            self._inflight.add(event.message_id)
            receipt = Receipt(user.id, event.message_id, generation, event.ts)
            await self.connection.queue(Outgoing(b"", receipt))
        return carried

    async def _deliver_live(
        self, user: UserRecord, generation: int, scope: trio.CancelScope, done: trio.Event
    ) -> None:
        """Read what the store keeps for the user whenever woken, and queue it.

        ``generation`` is the one the login's kept messages were queued under. Every
        read stamps what it queues with the generation current when it began, and a
        read loop stops as soon as the node pauses or the generation moves on; after a
        move, the writer first drops the forgotten messages (a flush), then the store
        is read again from the oldest kept message, so the order holds."""
        page = self.services.settings.delivery_page
        try:
            with scope:
                while True:
                    self._idle = True
                    try:
                        await self._wake.wait()
                    finally:
                        self._idle = False
                    await self.services.router.wait_live()
                    if self._revoked:
                        return
                    if self._held_events:
                        await self._write_held()
                    self._wake = trio.Event()
                    if generation != self._generation:
                        # Let the writer drop the forgotten messages before reading again.
                        generation = self._generation
                        await self.connection.flush()
                        self._forgetting = generation != self._generation
                    while True:
                        if self.services.router.paused or generation != self._generation:
                            self._wake.set()  # read on once live (and forgotten) again
                            break
                        limit = len(self._inflight) + page
                        self._reading = True
                        try:
                            rows = await self.services.store.pending(user.id, limit)
                        except StoreError as exc:
                            log.warning("cannot read kept messages of user %d: %s", user.id, exc)
                            await trio.sleep(1.0)
                            self._wake.set()
                            break
                        finally:
                            self._reading = False
                            self._last_read = self.services.router.mark()
                        for row in rows:
                            if row.message_id not in self._inflight:
                                self._inflight.add(row.message_id)
                                await self.connection.queue(
                                    self._kept(user, row, False, generation)
                                )
                        # Deleted while the read ran, so perhaps in its result (skipped
                        # above): no later read returns them.
                        self._inflight -= self._forgotten
                        self._forgotten.clear()
                        if len(rows) < limit:
                            break
        finally:
            done.set()

    def _kept(
        self, user: UserRecord, row: PendingDelivery, offline: bool, generation: int
    ) -> Outgoing:
        return self._outgoing(user, event_for(row, offline=offline), generation)

    def _outgoing(self, user: UserRecord, event: DeliveredEvent, generation: int) -> Outgoing:
        codec = self.connection.codec
        if isinstance(event, GroupMessageEvent):  # the same bytes for every member
            payload = self.services.encoded.group_message(codec, event)
        else:
            payload = codec.encode_event(event)
        return Outgoing(payload, Receipt(user.id, event.message_id, generation, event.ts))

    # --- the connection's write hooks -----------------------------------------------------

    def writable(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """While the node is paused (or this session revoked), kept messages are held
        back and replies go out; once it resumes, what was held goes first. Kept
        messages of an older generation are forgotten (see the module)."""
        if self._forgetting:
            current = self._generation
            for item in [*self._held, *outgoing]:
                if item.receipt is not None and item.receipt.generation != current:
                    self._inflight.discard(item.receipt.message_id)
            self._held = [
                item
                for item in self._held
                if item.receipt is not None and item.receipt.generation == current
            ]
            outgoing = [
                item
                for item in outgoing
                if item.receipt is None or item.receipt.generation == current
            ]
        if self._revoked or self.services.router.paused:
            self._held.extend(item for item in outgoing if item.receipt is not None)
            return [item for item in outgoing if item.receipt is None]
        if self._held:
            outgoing, self._held = [*self._held, *outgoing], []
        return outgoing

    def written(self, outgoing: Sequence[Outgoing]) -> None:
        """Kept messages that were written: the node's ``Deletions`` deletes them from
        the store soon, and tells this session once they are gone."""
        self.services.metrics.delivered(outgoing)
        written: dict[int, list[int]] = defaultdict(list)
        for item in outgoing:
            if item.receipt is not None:
                written[item.receipt.user_id].append(item.receipt.message_id)
        for user_id, message_ids in written.items():
            self.services.deletions.written(user_id, message_ids, self._deleted)

    def _deleted(self, user_id: int, message_ids: Sequence[int]) -> None:
        """Gone from the store: no read begun from now on returns them. A read under way
        still may, so until it is done they stay in ``_inflight`` (and are skipped)."""
        if self.user is None or self.user.id != user_id:
            return  # an earlier login's (its deletion outlasted the logout's grace)
        if self._reading:
            self._forgotten.update(message_ids)
        else:
            self._inflight.difference_update(message_ids)

    async def _settle_deletions(self, user: UserRecord) -> None:
        """Before the user is released: what was written is deleted from the store, so
        the next login (anywhere) does not get it again. If that fails or takes too
        long, the node goes on trying, and a next login here settles it first."""
        with trio.move_on_after(self.services.settings.close_grace_seconds, shield=True):
            try:
                await self.services.deletions.settle(user.id)
            except StoreError as exc:
                log.warning("written messages of user %d not deleted yet: %s", user.id, exc)
