"""What one logged-in device has been given and has confirmed: a state machine, no I/O.

The store keeps each stream (the user's inbox, each of its groups' logs) in
positions, and each device's place in each stream (``chat.store.streams``). A
device's login session holds, per stream:

- ``queued``: the last position handed to its connection's outbox (or passed over:
  the user's own group messages are not delivered to the user's devices);
- ``done``: the last position the device has *had*: written to the connection, or,
  with ``acks``, acknowledged by the client. This is what the store is told
  (``Advance``), in batches, and what a next login starts from.

Everything else follows from positions, which is what makes it checkable:

- **Hand-off or read.** A message just stored is *offered* with its position. It is
  taken straight into the outbox only if it is the very next position of its
  stream and nothing is being read or waits to be read (``TAKE``); a position
  already queued is a duplicate (``DROP``); anything else (a gap: a message this
  node did not see, a wake-up from another node, a full outbox) marks the stream
  to be read from ``queued`` (``READ``). A read returns what lies beyond, merged
  across streams by message id (one sender's messages keep their order across a
  one-to-one conversation and a group), so nothing is queued twice, nothing is
  skipped, and a lost wake-up only delays.
- **The login's backlog.** At login the store says each stream's position and head:
  what lies between is kept for the device, counted in the login's ``offline``,
  and queued first, marked ``offline``, exactly that many. Then live delivery
  starts from the heads.
- **Written or acknowledged.** Without ``acks``, a frame's position is done once the
  writer reports it written. With ``acks``, every message event gets ``seq`` (1, 2,
  3, ... in the order written); ``ack N`` makes done every position written up to
  the frame with ``seq`` N; what was written and not acknowledged when the
  connection ends stays kept for the device.
- **Positions passed without an event** (the user's own group messages, a range of
  the backlog that held only those) are queued as a *mark*: a frame with no bytes,
  which counts as written when the frames before it were, so ``done`` moves past
  them too.

``DeviceState`` is driven by ``chat.server.user_session`` (reads, the outbox,
acks) and unit-tested on its own (tests/test_delivery_state.py).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence

import attrs

from chat.store.streams import INBOX, Advance, DeviceStart, KeptMessage, StreamRange, merge

MAX_UNACKED = 1_000
"""Events queued or written to an ``acks`` connection and not acknowledged: one more goes
out, then delivery waits for the client's acks (and ends the connection with
``ack_timeout`` if none comes in time); what it had not acknowledged stays kept."""


class Offer(enum.Enum):
    TAKE = "take"
    """Queue it now (then call ``queued``)."""
    DROP = "drop"
    """Queued already (or not a stream of this device): nothing to do."""
    READ = "read"
    """The stream must be read from the store first (it is marked to be read)."""
    PASS = "pass"
    """Not for this device (its own group message): pass over it (``queued`` with no
    event: queue a mark)."""


@attrs.define
class Mark:
    """Where a queued frame stands in its stream. (Never changed once made; not frozen,
    as one is made for every delivered message, and a frozen attrs class's
    ``__init__`` costs three times a plain one's.)"""

    stream: int
    pos: int


@attrs.frozen
class Written:
    """A frame the writer wrote: its mark (a kept message or a passed position) and its
    ``seq`` (0: none)."""

    mark: Mark | None
    seq: int = 0


MIN_PER_STREAM = 20
"""Rows read from one stream at least, however many streams share a read's page."""


def _share(limit: int, streams: int) -> int:
    """Rows to read from each of ``streams`` for a page of ``limit``: a read of many
    streams does not read ``limit`` rows from every one of them (``take`` cuts at the
    first stream that may hold more)."""
    return max(min(MIN_PER_STREAM, limit), -(-limit // max(streams, 1)))


class AckError(ValueError):
    """An ``ack`` the protocol refuses (``invalid_request``)."""


class DeviceState:
    """One device's delivery while it is logged in on one connection (see the module)."""

    def __init__(self, user_id: int, device: str, acks: bool, start: DeviceStart) -> None:
        self.user_id = user_id
        self.device = device
        self.acks = acks
        self.queued: dict[int, int] = dict(start.positions)
        self.done: dict[int, int] = dict(start.positions)
        self.heads: dict[int, int] = dict(start.heads)
        """Each stream's head at login: the backlog ends there."""
        self.backlog_left = start.kept
        """Messages of the login's backlog not queued yet."""
        self.live = False
        """The backlog is queued: live delivery runs."""
        self.dirty: set[int] = set()
        """Streams to read from ``queued`` on."""
        self.reading = False
        """A read of the store is under way (offers wait for it)."""
        self._next_seq = 1
        self.written_seq = 0
        """The highest ``seq`` written to the connection."""
        self.handed_seq = 0
        """The highest ``seq`` handed to the transport (a write under way may have
        delivered it already: the client may acknowledge it before the writer says)."""
        self.acked_seq = 0
        self._unacked: deque[Written] = deque()
        """Written frames with a seq or a mark, not yet acknowledged (``acks`` only)."""
        self._reported: dict[int, int] = dict(start.positions)
        """What ``advances`` last handed out, per stream."""
        self._moved: set[int] = set()
        """Streams whose ``done`` moved since ``advances`` last looked."""

    # --- streams ----------------------------------------------------------------

    @property
    def streams(self) -> list[int]:
        return list(self.queued)

    def follow(self, stream: int, pos: int) -> None:
        """The user joined a group: this device gets its messages after ``pos``."""
        if stream not in self.queued:
            self.queued[stream] = self.done[stream] = self._reported[stream] = pos
            self.heads[stream] = pos

    # --- hand-off, and what to read -------------------------------------------------

    def offer(self, stream: int, pos: int, sender_id: int) -> Offer:
        """A message was just stored at ``pos`` of ``stream`` (see the module)."""
        queued = self.queued.get(stream)
        if queued is None or pos <= queued:
            return Offer.DROP
        if not self.live or self.reading or self.dirty or pos != queued + 1:
            self.dirty.add(stream)
            return Offer.READ
        if stream != INBOX and sender_id == self.user_id:
            return Offer.PASS
        return Offer.TAKE

    def queued_one(self, stream: int, pos: int) -> None:
        """A message (or a mark) at ``pos`` of ``stream`` went into the outbox."""
        self.queued[stream] = max(self.queued[stream], pos)

    def wake(self, streams: Iterable[int] | None = None) -> None:
        """Read these streams (all of them: None) from where they are queued."""
        wanted = self.queued if streams is None else streams
        self.dirty.update(stream for stream in wanted if stream in self.queued)

    def backlog_ranges(self, limit: int) -> list[StreamRange]:
        """The next page of the login's backlog: each stream up to its head at login,
        without the user's own group messages (not kept for the user's devices)."""
        streams = [s for s, queued in self.queued.items() if queued < self.heads.get(s, queued)]
        each = _share(limit, len(streams))
        return [
            StreamRange(self.user_id, s, self.queued[s], self.heads[s], each, s != INBOX)
            for s in streams
        ]

    def live_ranges(self, limit: int) -> list[StreamRange]:
        """The streams marked to be read, from where they are queued, with no end."""
        streams = [s for s in sorted(self.dirty) if s in self.queued]
        self.dirty = set()
        each = _share(limit, len(streams))
        return [
            StreamRange(self.user_id, s, self.queued[s], None, each, s != INBOX) for s in streams
        ]

    def take(
        self, ranges: Sequence[StreamRange], results: Sequence[Sequence[KeptMessage]], limit: int
    ) -> list[KeptMessage | Mark]:
        """What to queue, in order, from a read of ``ranges``: messages merged by id (at
        most ``limit``), each stream's part a prefix of what was read, then a mark for
        each backlog range read to its end whose last positions held nothing to deliver.
        Streams read only in part are marked to be read again (live), or stay in the
        backlog. ``queued`` moves as it goes; the caller queues every item."""
        items: list[KeptMessage | Mark] = []
        # A range cut by its own limit may hold more below the ids the others returned:
        # take nothing past the last id it returned.
        cut = [
            rows[-1].message_id
            for w, rows in zip(ranges, results, strict=True)
            if rows and len(rows) >= w.limit
        ]
        ceiling = min(cut) if cut else None
        merged = merge(results, limit)
        if ceiling is not None:
            merged = [m for m in merged if m.message_id <= ceiling]
        for message in merged:
            if message.pos <= self.queued.get(message.stream, message.pos):
                continue
            self.queued[message.stream] = message.pos
            items.append(message)
        for wanted, rows in zip(ranges, results, strict=True):
            stream = wanted.stream
            whole = len(rows) < wanted.limit and (not rows or rows[-1].pos <= self.queued[stream])
            if not whole:
                if self.live:
                    self.dirty.add(stream)
                continue
            if wanted.upto is not None and self.queued[stream] < wanted.upto:
                self.queued[stream] = wanted.upto
                items.append(Mark(stream, wanted.upto))
        return items

    def backlog_done(self) -> bool:
        return all(self.queued[s] >= self.heads.get(s, 0) for s in self.queued)

    # --- written and acknowledged -----------------------------------------------------

    def next_seq(self) -> int:
        """The ``seq`` for the next message event queued (``acks`` only)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def handing(self, seq: int) -> None:
        """The writer is about to write a frame with this ``seq``."""
        self.handed_seq = max(self.handed_seq, seq)

    def written(self, frames: Iterable[Written]) -> None:
        """The writer wrote these frames, in order."""
        for frame in frames:
            if frame.seq:
                self.written_seq = max(self.written_seq, frame.seq)
            if self.acks:
                if frame.seq or frame.mark is not None:
                    self._unacked.append(frame)
                    self._settle_acked()
            elif frame.mark is not None:
                self._done(frame.mark)

    def ack(self, seq: int) -> None:
        """``ack seq``: every event written with a ``seq`` up to it was received."""
        if not self.acks:
            raise AckError("seq: this connection did not ask for acks at login")
        highest = max(self.written_seq, self.handed_seq)
        if seq > highest:
            raise AckError(f"seq: {seq} is above the last seq written ({highest})")
        self.acked_seq = max(self.acked_seq, seq)
        self._settle_acked()

    def _settle_acked(self) -> None:
        # A mark with no seq of its own is had once everything before it is.
        while self._unacked and (
            self._unacked[0].seq == 0 or self._unacked[0].seq <= self.acked_seq
        ):
            frame = self._unacked.popleft()
            if frame.mark is not None:
                self._done(frame.mark)

    @property
    def window_full(self) -> bool:
        """An ``acks`` connection has more than ``MAX_UNACKED`` events unacknowledged:
        no more until it acknowledges some."""
        return self.acks and self.unacked > MAX_UNACKED

    @property
    def unacked(self) -> int:
        """Events queued or written with a ``seq`` and not acknowledged."""
        return self._next_seq - 1 - self.acked_seq

    def _done(self, mark: Mark) -> None:
        if mark.stream in self.done and mark.pos > self.done[mark.stream]:
            self.done[mark.stream] = mark.pos
            self._moved.add(mark.stream)

    def advances(self) -> list[Advance]:
        """Positions done since last asked: to be stored."""
        if not self._moved:
            return []
        moves = []
        for stream in sorted(self._moved):
            pos = self.done[stream]
            if pos > self._reported.get(stream, 0):
                moves.append(Advance(self.user_id, self.device, stream, pos))
                self._reported[stream] = pos
        self._moved.clear()
        return moves
