"""Storing messages: concurrent sends share one transaction, each keeps its own answer.

A send used to be a transaction of its own: a few round trips and a commit (on
MariaDB a log flush), on a pool of a few connections, so the commit wait bounded
how many messages a node could store. ``Store.store_direct`` and
``Store.store_group`` now go through a ``Coalescer``: the sends made while a
batch runs are stored together in the next one, with one commit. What each
sender may rely on is what a transaction of its own gave it:

- **Its own checks and answer.** A batch answers every send separately: its
  ``StoredMessage``, or its error as an exception *value* that ``Store`` raises
  in the caller (``NoSuchUser``, ``Blocked``, ``NoSuchGroup``, ``NotAMember``). A send
  whose ``cid`` was used already gets the earlier message (and wakes its stream
  again), and stores nothing.
- **Rolled back alone.** A send that fails after it began writing is undone
  alone and the others still commit. A group send writes several statements
  under a SAVEPOINT of its own and rolls back to it. A direct send writes one
  statement (its delivery row goes in later with the batch's others), and a
  statement is atomic, so it needs none: the checked direct sends of a batch
  go in with one ``INSERT ... RETURNING`` where the database has it; if that
  statement is refused (a ``cid`` another node stored meanwhile), the database
  undid it whole, and each goes in again alone, the one refused answering with
  the earlier message.
- **Durable before ``ok``.** No send is answered before its batch committed; a
  failure of the transaction itself (a lost connection) is every send's error,
  and a deadlock makes the pool run the whole batch again.
- **Order.** A batch starts after all its calls were made and stores them in
  call order, and batches run one at a time. A user's sends are called in the
  order sent (a pipelining connection submits each as it reads it, so several
  may share a batch), so their rows are committed in that order; if a batch
  fails, the sender's sends queued behind it fail too (``Coalescer`` chains).
- ``ts`` is the server's clock, read inside the transaction just before the insert.

Checks only read, so they run before anything is written: there is nothing to
undo when they fail. Recipients of direct sends and used ``cid``s are looked up
for the whole batch in one query each, and the stored ones move their
conversations' rows (``chat.store.conversations.note_direct``) in one upsert. So a
batch of direct sends costs a fixed handful of round trips and one commit, however
many sends it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from .contacts import require_member
from .conversations import note_direct
from .errors import Blocked, NoSuchUser, StoreError
from .records import StoredMessage, text
from .sql import Sql, no_row, now_ms
from .streams import allocate_inbox, allocate_log

OnStored = Callable[[StoredMessage], None]
"""Told a send's message once its batch committed (see ``Store.store_direct``)."""


@attrs.define
class DirectSend:
    """A one-to-one send for the coalescer (never changed once made; not frozen: one is
    made per message, see ``chat.server.delivery.Mark``)."""

    sender_id: int
    recipient_id: int
    body: str
    cid: str | None
    on_stored: OnStored | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class GroupSend:
    sender_id: int
    group_id: int
    body: str
    cid: str | None
    on_stored: OnStored | None = attrs.field(default=None, eq=False, repr=False)


SendRequest = DirectSend | GroupSend
SendOutcome = StoredMessage | Exception
"""A stored (or earlier) message, or the send's own error, to be raised in its caller."""


def store_sends(sql: Sql, requests: Sequence[SendRequest]) -> list[SendOutcome]:
    """Store a batch of sends in the caller's transaction; one outcome per send, in order.

    Raises only what breaks the transaction itself (the caller then rolls it all back)."""
    return _Batch(sql, requests).run()


class _Batch:
    def __init__(self, sql: Sql, requests: Sequence[SendRequest]) -> None:
        self.sql = sql
        self.requests = requests
        self.used_cids = _used_cids(sql, requests)
        self.users, self.blocked = _recipients(
            sql, [r for r in requests if isinstance(r, DirectSend) and not no_row(r.recipient_id)]
        )
        self.outcomes: list[SendOutcome | None] = [None] * len(requests)
        self.checked: list[int] = []
        """Direct sends that passed their checks, not stored yet: stored together."""

    def run(self) -> list[SendOutcome]:
        for number, request in enumerate(self.requests):
            try:
                if isinstance(request, DirectSend):
                    if not self._check_direct(number, request):
                        self.checked.append(number)
                else:
                    self._store_checked()  # in call order
                    self._done(number, self._group(request, f"send_{number}"))
            except StoreError as exc:  # a check failed before anything was written
                self._done(number, exc)
        self._store_checked()
        answered = [outcome for outcome in self.outcomes if outcome is not None]
        assert len(answered) == len(self.requests), "every send has its answer"
        return answered

    def _done(self, number: int, outcome: SendOutcome) -> None:
        self.outcomes[number] = outcome
        request = self.requests[number]
        if isinstance(outcome, StoredMessage) and outcome.created and request.cid is not None:
            self.used_cids.add((request.sender_id, request.cid))

    def _earlier(self, request: SendRequest) -> StoredMessage | None:
        if request.cid is None or (request.sender_id, request.cid) not in self.used_cids:
            return None
        return earlier_send(self.sql, request.sender_id, request.cid)

    def _check_direct(self, number: int, request: DirectSend) -> bool:
        """Answer the send if its checks decide it (True); False: it is to be stored."""
        earlier = self._earlier(request)
        if earlier is not None:
            self._done(number, earlier)
            return True
        if request.recipient_id not in self.users:
            raise NoSuchUser(request.recipient_id)
        if (request.recipient_id, request.sender_id) in self.blocked:
            raise Blocked()
        return False

    def _store_checked(self) -> None:
        """Store the checked direct sends: their inbox positions, then their messages.

        Positions first, for all of them in one statement (the recipients' rows stay
        locked until the commit, so each inbox's positions commit in order). Where the
        database can return the ids, all messages go in with one statement; if it fails
        (a ``cid`` stored meanwhile by another node, or twice in this batch), the
        database undid it whole, and each message goes in again alone. A single
        statement is atomic, and a direct send writes nothing else, so a send whose
        message is refused has written nothing: it needs no SAVEPOINT."""
        numbers, self.checked = self.checked, []
        if not numbers:
            return
        sends = [send for n in numbers if isinstance(send := self.requests[n], DirectSend)]
        counts: dict[int, int] = {}
        for send in sends:
            counts[send.recipient_id] = counts.get(send.recipient_id, 0) + 1
        first = allocate_inbox(self.sql, counts)
        positions: list[int] = []
        for send in sends:
            positions.append(first[send.recipient_id])
            first[send.recipient_id] += 1
        stored: list[SendOutcome] | None = None
        if len(sends) > 1 and self.sql.dialect.insert_returning:
            try:
                stored = self._insert_all(sends, positions)
            except Exception as exc:
                if self._lost(exc):
                    raise
        if stored is None:
            stored = [
                self._insert_one(send, pos) for send, pos in zip(sends, positions, strict=True)
            ]
        # Each conversation's newest message, for both users' lists: one statement.
        note_direct(
            self.sql,
            [
                (send.sender_id, send.recipient_id, outcome.message_id)
                for send, outcome in zip(sends, stored, strict=True)
                if isinstance(outcome, StoredMessage) and outcome.created
            ],
        )
        for number, outcome in zip(numbers, stored, strict=True):
            self._done(number, outcome)

    def _insert_all(
        self, sends: Sequence[DirectSend], positions: Sequence[int]
    ) -> list[SendOutcome]:
        ts = now_ms()
        args: list[object] = []
        for send, pos in zip(sends, positions, strict=True):
            args += (send.sender_id, send.recipient_id, send.body, ts, send.cid, pos)
        rows = self.sql.all(
            "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts, cid, pos) VALUES "
            + ", ".join("(?, ?, NULL, ?, ?, ?, ?)" for _ in sends)
            + " RETURNING id",
            args,
        )
        # Ids grow in the order the rows were inserted (the order of VALUES), whatever
        # order RETURNING lists them in.
        ids = sorted(int(row[0]) for row in rows)
        assert len(ids) == len(sends)
        return [
            StoredMessage(message_id, ts, pos, True, recipient_id=send.recipient_id)
            for message_id, send, pos in zip(ids, sends, positions, strict=True)
        ]

    def _insert_one(self, send: DirectSend, pos: int) -> SendOutcome:
        ts = now_ms()
        try:
            message_id = self.sql.insert(
                "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts, cid, pos)"
                " VALUES (?, ?, NULL, ?, ?, ?, ?)",
                (send.sender_id, send.recipient_id, send.body, ts, send.cid, pos),
            )
        except Exception as exc:
            return self._failed(send, exc)
        return StoredMessage(message_id, ts, pos, True, recipient_id=send.recipient_id)

    def _group(self, request: GroupSend, savepoint: str) -> SendOutcome:
        earlier = self._earlier(request)
        if earlier is not None:
            return earlier
        require_member(self.sql, request.sender_id, request.group_id)
        # Several statements: undone together, and alone, if one of them fails.
        self.sql.execute(f"SAVEPOINT {savepoint}")
        try:
            stored = _write_group(request, self.sql)
        except Exception as exc:
            if not self._lost(exc):
                self.sql.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                self.sql.execute(f"RELEASE SAVEPOINT {savepoint}")
            return self._failed(request, exc)
        self.sql.execute(f"RELEASE SAVEPOINT {savepoint}")
        return stored

    def _lost(self, exc: Exception) -> bool:
        """The whole transaction is lost (a deadlock, a dropped connection), not one send."""
        dialect = self.sql.dialect
        return dialect.is_retryable(exc) or dialect.is_disconnect(exc)

    def _failed(self, request: SendRequest, exc: Exception) -> SendOutcome:
        """A send's write failed and was undone: its own answer, or the batch's failure."""
        if self._lost(exc):
            raise exc
        if request.cid is not None and self.sql.dialect.is_integrity_error(exc):
            # Another node stored this cid meanwhile: answer with its message.
            earlier = earlier_send(self.sql, request.sender_id, request.cid)
            if earlier is not None:
                return earlier
        return exc


def _write_group(request: GroupSend, sql: Sql) -> StoredMessage:
    """One row, whatever the number of members: the message at the next position of
    the group's log (the members' devices find it there)."""
    pos, member_count = allocate_log(sql, request.group_id)
    ts = now_ms()
    message_id = sql.insert(
        "INSERT INTO messages (sender_id, recipient_id, group_id, body, ts, cid, pos)"
        " VALUES (?, NULL, ?, ?, ?, ?, ?)",
        (request.sender_id, request.group_id, request.body, ts, request.cid, pos),
    )
    return StoredMessage(
        message_id, ts, pos, True, group_id=request.group_id, member_count=member_count
    )


def _recipients(sql: Sql, sends: Sequence[DirectSend]) -> tuple[set[int], set[tuple[int, int]]]:
    """Which recipients exist, and which (recipient, sender) pairs are blocked: one
    query for the whole batch (the block check rides on the existence check)."""
    if not sends:
        return set(), set()
    recipients = sorted({send.recipient_id for send in sends})
    senders = sorted({send.sender_id for send in sends})
    rows = sql.all(
        "SELECT u.id, b.blocked_id FROM users u LEFT JOIN blocks b ON b.blocker_id = u.id"
        f" AND b.blocked_id IN ({', '.join('?' for _ in senders)})"
        f" WHERE u.id IN ({', '.join('?' for _ in recipients)})",
        (*senders, *recipients),
    )
    existing = {int(row[0]) for row in rows}
    blocked = {(int(row[0]), int(row[1])) for row in rows if row[1] is not None}
    return existing, blocked


def _used_cids(sql: Sql, requests: Sequence[SendRequest]) -> set[tuple[int, str]]:
    """Which of the batch's (sender, cid) pairs are stored already (a superset is
    fine: a hit is confirmed by ``earlier_send``)."""
    asked = {(r.sender_id, r.cid) for r in requests if r.cid is not None}
    if not asked:
        return set()
    senders = sorted({sender for sender, _ in asked})
    cids = sorted({cid for _, cid in asked})
    sender_marks = ", ".join("?" for _ in senders)
    cid_marks = ", ".join("?" for _ in cids)
    rows = sql.all(
        f"SELECT sender_id, cid FROM messages"
        f" WHERE sender_id IN ({sender_marks}) AND cid IN ({cid_marks})",
        (*senders, *cids),
    )
    return {(int(row[0]), text(row[1])) for row in rows} & asked


def earlier_send(sql: Sql, sender_id: int, cid: str) -> StoredMessage | None:
    """The message this sender stored with this ``cid``, if any. Its stream is woken
    again: the first attempt may have been stored without waking anyone (its reply, or
    its wake-up, was lost); a device that has it already ignores the wake."""
    row = sql.one(
        "SELECT m.id, m.ts, m.pos, m.recipient_id, m.group_id, g.member_count FROM messages m"
        " LEFT JOIN chat_groups g ON g.id = m.group_id WHERE m.sender_id = ? AND m.cid = ?",
        (sender_id, cid),
    )
    if row is None:
        return None
    return StoredMessage(
        int(row[0]),
        int(row[1]),
        int(row[2]),
        False,
        recipient_id=None if row[3] is None else int(row[3]),
        group_id=None if row[4] is None else int(row[4]),
        member_count=0 if row[5] is None else int(row[5]),
    )
