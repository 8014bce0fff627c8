"""The logged-in device of one connection: login state, the delivery task, acks.

A ``UserSession`` is what handlers see (``Caller``) and what the router reaches
(``offer``, ``wake``, ``push``, ``resume``, ``revoke``). It queues frames on its
``Connection``, encoded with that connection's codec, and is the connection's
``WriteHooks``: it decides whether delivery's frames may be written now, and
learns which were.

What the device has been given is ``DeviceState``'s (chat/server/delivery.py: a
state machine over stream positions, with no I/O); this module drives it: the
login's backlog, the delivery task that reads the store when a stream must be
read, the hand-off of messages just stored, the writer's reports and the
client's acks, and the positions handed to the node's ``Positions`` to store.

While the node is paused (its presence leases are in doubt: the device may be
logged in elsewhere by now), nothing is delivered: hand-offs turn into reads for
later, the delivery task waits, delivery's frames already queued are held back
(in order) and only replies are written, and transient events are held too (only
the newest presence event per friend: ``HeldEvents``). On resume what was held is
written. If the device's lease had vanished meanwhile (and was re-created),
someone may have logged in as that device elsewhere and out again: the session
then compares the device's stored positions with what it has done; if the store
is ahead (that login was given messages this one holds), this session is stale
and closes, so nothing comes twice; otherwise it goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import trio

from chat.broker import BrokerUnavailable
from chat.protocol import ErrorCode
from chat.protocol.codec import with_seq
from chat.protocol.messages import (
    DeliveredEvent,
    Error,
    Event,
    GroupJoinedEvent,
    GroupMessageEvent,
    LoggedOutEvent,
    MessageEvent,
    Ok,
    UserRef,
)
from chat.store import StoreError, UserRecord
from chat.store.streams import INBOX, DeviceStart, KeptMessage, StreamRange

from .connection import Connection, Nudge, Outgoing
from .delivery import MAX_UNACKED, DeviceState, Mark, Offer, Written
from .held_events import HeldEvents
from .services import Services

log = logging.getLogger(__name__)

RELEASE_SECONDS = 3.0
"""How long the release of a device's presence may take at the end of a login."""


def event_for(message: KeptMessage, *, offline: bool) -> DeliveredEvent:
    sender = UserRef(message.sender_id, message.sender_name)
    if message.group_id is not None:
        return GroupMessageEvent(
            message.message_id, message.group_id, sender, message.body, message.ts, offline
        )
    assert message.recipient_id is not None
    return MessageEvent(
        message.message_id, sender, message.recipient_id, message.body, message.ts, offline
    )


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
        self.device = ""
        self.acks = False
        self.login_token: bytes | None = None
        """The hash of the session token of this login (set by the login handler)."""
        self.state: DeviceState | None = None
        self._held: list[Outgoing] = []
        """Delivery's frames held back while paused or checking, in order."""
        self._wake = trio.Event()
        self._woken_early = False
        """A wake-up or hand-off came before the device's state was read."""
        self._group_mark = 0
        """``Router.mark()`` when the login began (see ``start_device``)."""
        self._acked = trio.Event()
        """Set by each ``ack`` (the delivery task may wait for one)."""
        self._to_follow: set[int] = set()
        """Groups joined on another device: to follow once their position is read."""
        self._delivery_scope: trio.CancelScope | None = None
        self._delivery_done: trio.Event | None = None
        self._held_events = HeldEvents()
        """Transient events held back while logging in or paused (see held_events)."""
        self._logging_in = False
        """The login's kept messages are being queued (transient events wait)."""
        self._writing_held = False
        """Held transient events are being written (newer ones wait behind them)."""
        self._checking = False
        """The device's lease was re-created: compare positions before delivering more."""
        self._revoked = False
        """This session must never deliver again; it is closing."""
        self._ending = False
        """The connection is ending (``ack_timeout``): what is queued is written, nothing
        more is queued."""
        connection.hooks = self

    # --- login state (the Caller interface) ----------------------------------------

    @property
    def address(self) -> str:
        return self.connection.stream.address

    def following(self) -> list[int]:
        """The groups whose log this device follows."""
        return [] if self.state is None else [s for s in self.state.streams if s != INBOX]

    async def begin_login(self, user: UserRecord, device: str, acks: bool) -> bool:
        """Claim the device's presence and route the user's notices here; False if that
        device is logged in elsewhere, or the user has too many devices online."""
        if not await self.services.broker.claim(user.id, device, self.holder):
            return False
        self.user = user
        self.device = device
        self.acks = acks
        self._revoked = False
        self._ending = False
        self._checking = False
        self._woken_early = False
        self._held_events.take()
        self._logging_in = True
        self._wake = trio.Event()
        self._group_mark = self.services.router.mark()
        self.services.router.attach(user.id, self)
        return True

    async def start_device(self) -> DeviceStart:
        """After the claim: make the device known to the store and read where it
        stands. A message stored from the claim on either counts in the backlog or
        makes its stream be read after it, never neither."""
        user = self.user
        assert user is not None
        # What this node had to store for an earlier login of the device first (or
        # ``unavailable``): else this login would count, and deliver, it again.
        await self.services.positions.settle(user.id, self.device)
        online = await self.services.broker.devices(user.id)
        start = await self.services.store.device_login(user.id, self.device, sorted(online))
        for forgotten in start.forgotten:
            log.info("user %d: device %r forgotten (idle, or one too many)", user.id, forgotten)
        state = DeviceState(user.id, self.device, self.acks, start)
        self.state = state
        groups = [stream for stream in start.positions if stream != INBOX]
        router = self.services.router
        router.follow(self, groups)
        # Woken before the session followed them: read them once live.
        state.wake(router.group_woken_since(self._group_mark, groups))
        if self._woken_early:
            state.wake([INBOX])
        return start

    async def go_live(self, offline: int, nursery: trio.Nursery, reply: Ok | None = None) -> None:
        """After the login reply: queue the ``offline`` kept messages, then start the
        delivery task in ``nursery`` (the connection's). ``reply``: the login reply,
        not queued yet, because it carries the first kept messages
        (``Codec.login_carries_kept``).

        Without ``acks`` the reader queues them before it reads the next request (so
        the replies to later requests come after them too). With ``acks`` the delivery
        task queues them while the reader goes on reading: the client's acks must be
        read meanwhile, or a backlog of more than ``MAX_UNACKED`` could never pass."""
        state = self.state
        if self.user is None or state is None:
            return
        self._delivery_done = trio.Event()
        self._delivery_scope = trio.CancelScope()
        if state.acks and reply is None:
            nursery.start_soon(
                self._deliver_all, state, offline, self._delivery_scope, self._delivery_done
            )
            return
        if not await self._start_live(state, offline, reply):
            self._delivery_done.set()
            return
        nursery.start_soon(self._deliver_live, state, self._delivery_scope, self._delivery_done)

    async def _deliver_all(
        self, state: DeviceState, offline: int, scope: trio.CancelScope, done: trio.Event
    ) -> None:
        """The delivery task of an ``acks`` login: the backlog first, then live."""
        try:
            with scope:
                if await self._start_live(state, offline, None):
                    await self._live_loop(state)
        finally:
            done.set()

    async def _start_live(self, state: DeviceState, offline: int, reply: Ok | None) -> bool:
        """Queue the backlog (and ``reply``), write the transient events held meanwhile,
        and turn live delivery on; False if the connection is being ended."""
        try:
            queued = await self._queue_backlog(state, reply)
        except StoreError as exc:
            # The reply promised ``offline`` messages that cannot be read now; closing
            # is the honest answer. They stay kept for the next login.
            self.connection.abort(f"cannot read kept messages of {self.holder}: {exc}")
            await trio.lowlevel.checkpoint()
            return False
        if queued != offline and not self._ending:
            log.error("login %s announced %d kept messages, sent %d", self.holder, offline, queued)
        await self._write_held()  # (if paused, the delivery task writes them on resume)
        self._logging_in = False
        state.live = True
        self._wake.set()
        return True

    async def end_login(self) -> None:
        """Log the device out of this connection: nothing more is queued, the queue is
        written, the device's positions are stored, then presence is released.
        Idempotent."""
        user = self.user
        if user is None:
            return
        if self.state is not None:
            # Nothing more goes into the outbox from now on (a hand-off queued while
            # the flush below waits would be written after it, and not counted).
            self.state.live = False
        if self._delivery_scope is not None and self._delivery_done is not None:
            self._delivery_scope.cancel()
            await self._delivery_done.wait()
        self._delivery_scope = self._delivery_done = None
        if self.state is not None:
            self.state.live = False  # (the delivery task may have turned it on meanwhile)
        self._logging_in = False
        await self.connection.flush()
        self._held_events.take()  # transient: not for anyone else
        self._held.clear()  # not written: they stay kept for the next login
        self.services.router.unfollow(self)  # (while it still knows what it follows)
        state, self.state = self.state, None
        if state is not None:
            self._settle(state, seen=True)
            await self._settle_positions(user)
        self.user = None
        self.services.router.detach(user.id, self)
        # In a scope of its own: a caller out of time (the store was slow to take the
        # positions) must not skip it, or the device would look online until its
        # lease lapsed and its user would never be announced gone.
        with trio.move_on_after(RELEASE_SECONDS, shield=True):
            try:
                await self.services.broker.release(user.id, self.device, self.holder)
            except BrokerUnavailable:
                log.warning("could not release %s now; the lease will expire", self.holder)

    # --- what the router calls -------------------------------------------------------

    def offer(self, stream: int, pos: int, event: DeliveredEvent) -> None:
        """A message was just stored at ``pos`` of ``stream``, a stream of this user:
        queue it now if it is the next one, or read the stream (``DeviceState.offer``)."""
        state = self.state
        if self.user is None or self._revoked or self._ending:
            return
        if state is None:
            self._woken_early = True
            return
        if self.services.router.paused or self._checking or self._to_follow:
            # (A group joined meanwhile: its earlier messages are read first.)
            state.wake([stream])
            self._wake.set()
            return
        decision = state.offer(stream, pos, event.from_.id)
        if decision is Offer.DROP:
            return
        if decision is not Offer.READ and self.connection.has_room() and not state.window_full:
            mark = Mark(stream, pos)
            outgoing = (
                self._outgoing(state, event, mark)
                if decision is Offer.TAKE
                else Outgoing(b"", mark)
            )
            # Queued first: the connection may write it at once and report it written.
            previous = state.queued[stream]
            state.queued_one(stream, pos)
            if self.connection.deliver_nowait(outgoing):
                return
            state.queued[stream] = previous
        state.wake([stream])  # a gap, a read under way, or a full outbox: read it
        self._wake.set()

    def wake(self, streams: Iterable[int] | None) -> None:
        """These streams of the user (None: all) may hold messages not read yet."""
        if self.user is None:
            return
        if self.state is None:
            self._woken_early = True
            return
        self.state.wake(streams)
        self._wake.set()

    def revoke(self) -> None:
        """The device was logged in elsewhere while this node was paused: never deliver
        again (what is held or queued stays kept for that login), and close."""
        self._revoked = True
        self.request_close()

    def resume(self, *, recheck: bool = False) -> None:
        """The node resumed: write what was held back, and read what may have come;
        with ``recheck``, first compare the device's stored positions (see the module)."""
        if recheck:
            self._checking = True
        if self.state is not None:
            self.state.wake(None)
        self._wake.set()
        self.connection.queue_nowait(Nudge())  # a full outbox wakes the writer anyway
        # The delivery task, woken now, writes the transient events held meanwhile.

    def push(self, event: Event) -> None:
        """Queue a transient event now, or hold it while a login's kept messages are
        being queued or the node is paused (then it goes when that is over; a
        presence event held is replaced by a newer one about the same friend)."""
        if self.user is None or self._revoked:
            return
        if isinstance(event, GroupJoinedEvent):
            # Joined on another device: this one follows the group from now on too.
            self._to_follow.add(event.group.id)
            self._wake.set()
        if (
            self._logging_in
            or self._writing_held
            or self._held_events
            or self.services.router.paused
        ):
            self._held_events.hold(event)  # behind what is held already
            return
        self._queue_transient(event)

    def joined(self, group_id: int) -> None:
        """The user joined (or created) a group on this connection: follow its log (its
        position is read by the delivery task; a message offered before that is read
        then)."""
        self._to_follow.add(group_id)
        self._wake.set()

    # --- acks -------------------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """``ack``: raises ``AckError`` for one the protocol refuses."""
        state = self.state
        assert state is not None
        state.ack(seq)
        self._acked.set()
        self.services.positions.report(state.advances())

    # --- transient events ---------------------------------------------------------------

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
                    await self.connection.queue(self._transient(event))
                    self._after_transient(event)
        finally:
            self._writing_held = False

    def _queue_transient(self, event: Event) -> None:
        if not self.connection.has_room() or not self.connection.queue_nowait(
            self._transient(event)
        ):
            if isinstance(event, LoggedOutEvent):
                # Logged out everywhere: nothing more is delivered, and the event waits
                # for room (the delivery task writes it, then the connection closes).
                self._ending = True
                self._held_events.hold(event)
                self._wake.set()
                return
            # A busy client is not a slow one yet (queued messages get their grace time);
            # a transient event is not kept, and the next login's friend list shows it.
            log.warning(
                "outbox of %s full (or closed): a %s event was dropped", self.holder, event.TYPE
            )
            return
        self._after_transient(event)

    def _transient(self, event: Event) -> Outgoing:
        """A transient event's frame; a copy of the user's own message carries ``seq``
        on an ``acks`` connection (never kept: it has no mark)."""
        payload = self.services.encoded.transient(self.connection.codec, event)
        state = self.state
        if (
            isinstance(event, MessageEvent | GroupMessageEvent)
            and state is not None
            and state.acks
            and payload
        ):
            seq = state.next_seq()
            return Outgoing(with_seq(payload, seq), seq=seq, stored_ms=event.ts)
        return Outgoing(payload)

    def _after_transient(self, event: Event) -> None:
        if isinstance(event, LoggedOutEvent):
            # Logged out by another device: the event is queued; close after it.
            self._revoked = True
            self.request_close()

    # --- delivery ---------------------------------------------------------------------

    async def _queue_backlog(self, state: DeviceState, reply: Ok | None) -> int:
        """Queue what was kept for the device at login (up to each stream's head then),
        marked ``offline``, oldest first (after ``reply``, which carries as many of the
        first ones as its codec fits in it). Returns how many messages were queued."""
        page = self.services.settings.delivery_page
        queued = 0
        while not state.backlog_done():
            ranges = state.backlog_ranges(page)
            results = await self.services.store.read_streams(ranges)
            items = state.take(ranges, results, page)
            messages = [item for item in items if isinstance(item, KeptMessage)]
            if reply is not None:
                events = [event_for(message, offline=True) for message in messages]
                payload, carried = self.connection.codec.encode_login(reply, events)
                await self.connection.queue(Outgoing(payload))
                reply = None
                # An empty frame per carried message: had once the reply is written.
                carried_ids = {event.message_id for event in events[:carried]}
                for item in items:
                    if isinstance(item, KeptMessage) and item.message_id in carried_ids:
                        await self.connection.queue(
                            Outgoing(b"", Mark(item.stream, item.pos), stored_ms=item.ts)
                        )
                        queued += 1
                items = [
                    item
                    for item in items
                    if not (isinstance(item, KeptMessage) and item.message_id in carried_ids)
                ]
            queued += await self._queue_items(state, items, offline=True)
            if not items and not results:
                break
        if reply is not None:
            payload, _ = self.connection.codec.encode_login(reply, [])
            await self.connection.queue(Outgoing(payload))
        return queued

    async def _queue_items(
        self, state: DeviceState, items: Sequence[KeptMessage | Mark], *, offline: bool
    ) -> int:
        """Queue a read's items in order (waiting for room); how many were messages."""
        count = 0
        for item in items:
            if self._revoked or self._ending:
                break
            if isinstance(item, Mark):
                await self.connection.queue(Outgoing(b"", item))
                continue
            if state.window_full and not await self._wait_for_acks(state):
                break
            event = event_for(item, offline=offline)
            await self.connection.queue(self._outgoing(state, event, Mark(item.stream, item.pos)))
            count += 1
        return count

    async def _wait_for_acks(self, state: DeviceState) -> bool:
        """More than ``MAX_UNACKED`` events wait for the client's ack: deliver nothing more
        until it acknowledges some (flow control). A client that acknowledges nothing
        for ``ack_wait_seconds`` meanwhile is told ``ack_timeout`` and the connection is
        ended; what it had not acknowledged stays kept for the device. False then."""
        with trio.move_on_after(self.services.settings.ack_wait_seconds):
            while state.window_full:
                self._acked = trio.Event()
                await self._acked.wait()
            return True
        self._ending = True
        error = Error(
            None,
            ErrorCode.ACK_TIMEOUT,
            f"more than {MAX_UNACKED} events not acknowledged: closing",
        )
        await self.connection.queue(Outgoing(self.connection.codec.encode_reply(error)))
        log.warning("closing %s: more than %d events not acknowledged", self.holder, MAX_UNACKED)
        self.request_close()
        return False

    async def _deliver_live(
        self, state: DeviceState, scope: trio.CancelScope, done: trio.Event
    ) -> None:
        """The delivery task (see ``_live_loop``)."""
        try:
            with scope:
                await self._live_loop(state)
        finally:
            done.set()

    async def _live_loop(self, state: DeviceState) -> None:
        """Read the streams marked to be read whenever woken, and queue what they hold."""
        page = self.services.settings.delivery_page
        store = self.services.store
        router = self.services.router
        while True:
            await self._wake.wait()
            await router.wait_live()
            if self._revoked:
                return
            self._wake = trio.Event()
            if self._held_events:
                await self._write_held()
            if self._ending:
                return
            if self._checking and not await self._still_current(state):
                return
            await self._follow_joined(state)
            along: set[int] = set()
            while state.dirty and not router.paused and not self._revoked:
                state.wake(along)
                ranges = state.live_ranges(page)
                state.reading = True
                try:
                    results = await store.read_streams(ranges)
                except StoreError as exc:
                    log.warning("cannot read kept messages of %s: %s", self.holder, exc)
                    state.wake(wanted.stream for wanted in ranges)
                    await trio.sleep(1.0)
                    self._wake.set()
                    break
                finally:
                    state.reading = False
                read = {wanted.stream for wanted in ranges}
                if state.dirty - read:
                    # Streams told of new messages while this read ran, and not in it:
                    # the read may hold a sender's later message while an earlier one
                    # waits in those. Read them all together instead (the set only
                    # grows, so this ends).
                    along = read
                    continue
                along = set()
                # ``take`` moved ``queued`` past what it returned: until all of it is in
                # the outbox (which may wait for room), a hand-off must not go in ahead.
                state.reading = True
                try:
                    await self._queue_items(state, state.take(ranges, results, page), offline=False)
                finally:
                    state.reading = False
            if state.dirty:
                self._wake.set()  # paused meanwhile: read on once live

    async def _still_current(self, state: DeviceState) -> bool:
        """After a re-created lease: the store's positions are not ahead of this
        session's (nobody else was given what this session holds)? Else revoke."""
        try:
            stored = await self.services.store.device_positions(state.user_id, state.device)
        except StoreError as exc:
            log.warning("cannot check the positions of %s: %s", self.holder, exc)
            await trio.sleep(1.0)
            self._wake.set()
            return True
        ahead = [s for s, pos in stored.items() if pos > state.done.get(s, pos)]
        if ahead:
            log.warning(
                "closing %s: its device was given messages elsewhere while this node was paused",
                self.holder,
            )
            self.revoke()
            return False
        self._checking = False
        self.connection.queue_nowait(Nudge())  # what was held back may go now
        return True

    async def _follow_joined(self, state: DeviceState) -> None:
        while self._to_follow:
            group_id = self._to_follow.pop()
            # Hand-offs wait meanwhile (they turn into reads): a message of the group and
            # a later one of its sender elsewhere must not pass each other.
            state.reading = True
            try:
                pos = await self.services.store.group_position(
                    state.user_id, state.device, group_id
                )
            except StoreError as exc:
                log.warning("cannot follow group %d on %s: %s", group_id, self.holder, exc)
                self._to_follow.add(group_id)
                await trio.sleep(1.0)
                self._wake.set()
                return
            finally:
                state.reading = False
            if pos is not None:
                state.follow(group_id, pos)
                self.services.router.follow(self, [group_id])
                state.wake([group_id])

    def _outgoing(self, state: DeviceState, event: DeliveredEvent, mark: Mark) -> Outgoing:
        codec = self.connection.codec
        if isinstance(event, GroupMessageEvent):  # the same bytes for every member
            payload = self.services.encoded.group_message(codec, event)
        else:
            payload = codec.encode_event(event)
        if state.acks and payload:
            seq = state.next_seq()
            return Outgoing(with_seq(payload, seq), mark, seq, event.ts)
        return Outgoing(payload, mark, stored_ms=event.ts)

    # --- the connection's write hooks -----------------------------------------------------

    def writable(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """While the node is paused (or this session revoked or checking), delivery's
        frames are held back and replies go out; once it resumes, what was held goes
        first."""
        if self._revoked or self._checking or self.services.router.paused:
            self._held.extend(item for item in outgoing if item.mark or item.seq)
            outgoing = [item for item in outgoing if not (item.mark or item.seq)]
        elif self._held:
            outgoing, self._held = [*self._held, *outgoing], []
        if self.state is not None and self.state.acks:
            for item in reversed(outgoing):
                if item.seq:
                    self.state.handing(item.seq)
                    break
        return outgoing

    def written(self, outgoing: Sequence[Outgoing]) -> None:
        """Frames that were written: the device has them (without ``acks``), or they
        wait for the client's ack."""
        self.services.metrics.delivered(outgoing)
        state = self.state
        if state is None:
            return
        state.written(Written(item.mark, item.seq) for item in outgoing if item.mark or item.seq)
        if not state.acks:
            self.services.positions.report(state.advances())

    def _settle(self, state: DeviceState, *, seen: bool) -> None:
        self.services.positions.report(state.advances())
        if seen:
            self.services.positions.seen(state.user_id, state.device, time.time_ns() // 1_000_000)

    async def _settle_positions(self, user: UserRecord) -> None:
        """Before the device is released: its positions are stored, so its next login
        (anywhere) does not get what it had again. If that fails or takes too long, the
        node goes on trying (and the device may get those messages again)."""
        with trio.move_on_after(self.services.settings.close_grace_seconds, shield=True):
            try:
                await self.services.positions.settle(user.id, self.device)
            except StoreError as exc:
                log.warning("positions of %s not stored yet: %s", self.holder, exc)


__all__ = ["StreamRange", "UserSession", "event_for"]
