"""Every query the chat server makes, written once for both databases.

One public coroutine per use case; each runs one transaction on a pooled
connection in a worker thread (see ``chat.store.pool``). The hot ones (sends,
``pending``) share that transaction with concurrent calls of the same kind
(``chat.store.coalesce``, ``chat.store.sends``); deletions of delivered messages
come in batches already (``chat.server.deletions``). The caller never
holds a transaction across an ``await``: a request's whole read-check-write
happens inside one function here, which is what makes checks such as "is the
``cid`` used already?" and "is the sender a member?" race-free.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import Any, TypeVar

import trio

from . import bulk, contacts, conversations, history, requests, streams, throttle, tokens
from .coalesce import Coalescer, Submitted
from .conversations import ConversationRecord, ReadMarked
from .dialect import Connection, Dialect
from .errors import (
    AlreadyMember,
    GroupNameTaken,
    NameTaken,
    NoSuchGroup,
    NoSuchUser,
    RateLimited,
)
from .names import look_key, name_key
from .pool import ConnectionPool
from .records import (
    Credentials,
    GroupRecord,
    HistoryPage,
    LoginSnapshot,
    MemberRecord,
    MembershipRecord,
    Page,
    PresenceAudience,
    Role,
    StoredMessage,
    UserRecord,
)
from .sends import DirectSend, GroupSend, OnStored, SendOutcome, SendRequest, store_sends
from .sql import Sql as _Sql
from .sql import no_row as _no_row
from .sql import now_ms
from .streams import Advance, DeviceRecord, DeviceStart, KeptMessage, StreamRange
from .throttle import Reservation, Window

T = TypeVar("T")

_CREDENTIALS = (
    "SELECT u.id, u.name, u.password_hash,"
    " (SELECT MAX(d.last_seen) FROM devices d WHERE d.user_id = u.id) FROM users u"
)
"""A password login's look-up: the account and when it was last used (``Credentials``)."""

log = logging.getLogger(__name__)

GROUP_SENDS_PER_SENDER_IN_BATCH = 2
"""Group sends of one sender a send batch takes at most: a member pipelining group sends
(each a savepoint, a check and a log position) makes the batch everyone else's sends
wait for a few milliseconds long, not tens ("Fair batches" in ``coalesce``)."""

SEND_BATCH = 1024
"""Sends stored in one transaction at most. A batch's fixed costs (its thread, a handful
of round trips, the commit) are shared by more sends the more a burst queues; a batch
of 1,024 direct sends takes about 30 ms here (docs/performance.md, "Hot path, round 3")."""

READ_RANGES_PER_STATEMENT = 200
"""Stream ranges read in one statement at most (each is a derived table of its own)."""


class Store:
    """The repository: users, friends, groups, messages and what is kept for delivery."""

    def __init__(self, dialect: Dialect, pool_size: int | None = None) -> None:
        self.dialect = dialect
        self.pool = ConnectionPool(dialect, pool_size or dialect.pool_size)
        # Each coalesced call has the pool's deadline from when it is made, however many
        # batches are stuck ahead of it (``coalesce``, "Deadlines").
        deadlines: dict[str, Any] = {
            "deadline": lambda: self.pool.timeout,
            "expired": self.pool.timed_out,
            # Each batch's transaction gives up by its batch_deadline (ConnectionPool).
            "batches_keep_deadline": True,
        }
        self._read_calls = Coalescer(self._read_batch, **deadlines)
        self._send_calls = Coalescer(
            self._send_batch,
            max_batch=SEND_BATCH,
            chain=_sender,
            heavy=_is_group_send,
            heavy_per_chain=GROUP_SENDS_PER_SENDER_IN_BATCH,
            **deadlines,
        )
        self._token_calls = Coalescer(self._token_batch, **deadlines)
        self.gather_hand_offs: Callable[[], AbstractContextManager[object]] = nullcontext
        """Wraps each send batch's hand-offs (``store_direct``'s ``on_stored``): the node
        gathers the writes they cause there, one per connection
        (``chat.server.connection.gathered_writes``)."""

    def close(self) -> None:
        self.pool.close()

    @property
    def reads_of_kept(self) -> int:
        """Batches of ``read_streams`` run so far (each one read of the store)."""
        return self._read_calls.batches

    @property
    def send_batches(self) -> int:
        """Batches of sends stored so far (each one transaction)."""
        return self._send_calls.batches

    def observe_batches(self, observer: Callable[[str, int, float], None]) -> None:
        """Tell ``observer(kind, calls, seconds)`` about every coalesced transaction
        (kind ``send`` or ``read``): the node's metrics."""
        self._send_calls.observe = partial(observer, "send")
        self._read_calls.observe = partial(observer, "read")

    # --- plumbing -------------------------------------------------------------

    @contextmanager
    def _transaction(self, conn: Connection, *, write: bool) -> Iterator[_Sql]:
        if not write and not self.dialect.reads_in_transaction:
            cursor = conn.cursor()
            try:
                yield _Sql(cursor, self.dialect)
            finally:
                cursor.close()
            return
        self.dialect.begin(conn, write=write)
        cursor = conn.cursor()
        try:
            yield _Sql(cursor, self.dialect)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cursor.close()

    async def _run(
        self, body: Callable[[_Sql], T], *, write: bool, deadline: float | None = None
    ) -> T:
        # As trio.to_thread.run_sync: a caller cancelled already starts nothing.
        await trio.lowlevel.checkpoint_if_cancelled()
        return await self._start(body, write=write, deadline=deadline)

    def _start(
        self, body: Callable[[_Sql], T], *, write: bool, deadline: float | None = None
    ) -> Awaitable[T]:
        """Start ``body`` in a transaction on a worker thread now (``ConnectionPool.start``):
        a coalesced batch starts the moment the previous one is over."""

        def work(conn: Connection) -> T:
            with self._transaction(conn, write=write) as sql:
                return body(sql)

        # A read changes nothing: if its connection breaks, it may simply run again.
        return self.pool.start(work, idempotent=not write, deadline=deadline)

    async def ping(self) -> None:
        """One trivial query: the database answers (within the pool's deadline)."""
        await self._run(lambda sql: sql.one("SELECT 1", ()), write=False)

    # --- accounts -------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> UserRecord:
        """A new user; ``NameTaken`` also when the name equals another after case folding
        or looks like another (the unique ``name_key`` and ``look_key`` indexes enforce
        that across the cluster: ``chat.store.names``)."""
        key = name_key(name)
        look = look_key(name)

        def body(sql: _Sql) -> UserRecord:
            if sql.one(
                "SELECT 1 FROM users WHERE name_key = ? OR look_key = ? OR name = ?",
                (key, look, name),
            ):
                raise NameTaken(name)
            try:
                user_id = sql.insert(
                    "INSERT INTO users (name, name_key, look_key, password_hash, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (name, key, look, password_hash, now_ms()),
                )
            except Exception as exc:
                if self.dialect.is_integrity_error(exc):
                    raise NameTaken(name) from exc
                raise
            return UserRecord(id=user_id, name=name)

        return await self._run(body, write=True)

    async def credentials_by_name(self, name: str) -> Credentials | None:
        row = await self._run(
            partial(_fetch_one, _CREDENTIALS + " WHERE u.name = ?", (name,)),
            write=False,
        )
        return None if row is None else Credentials.from_row(row)

    async def credentials_by_id(self, user_id: int) -> Credentials | None:
        if _no_row(user_id):
            return None
        row = await self._run(
            partial(_fetch_one, _CREDENTIALS + " WHERE u.id = ?", (user_id,)),
            write=False,
        )
        return None if row is None else Credentials.from_row(row)

    async def user_by_name(self, name: str) -> UserRecord | None:
        row = await self._run(
            partial(_fetch_one, "SELECT id, name FROM users WHERE name = ?", (name,)), write=False
        )
        return None if row is None else UserRecord.from_row(row)

    async def login_snapshot(self, user_id: int, reads: contacts.LoginReads) -> LoginSnapshot:
        """The first friends and groups (by id) with their first members, within
        ``reads``, and how many messages are kept (``chat.store.contacts``)."""
        return await self._run(
            partial(contacts.login_snapshot, user_id=user_id, reads=reads), write=False
        )

    # --- friends and blocking ---------------------------------------------------

    async def add_friend(
        self,
        user_id: int,
        friend_id: int,
        window: Window,
        max_waiting: int = requests.MAX_WAITING_REQUESTS,
    ) -> requests.FriendAdd:
        """Make two users friends (both directions), or leave a request when the other
        approves requests (``chat.store.requests``); says which. At most
        ``window.limit`` per ``window.span_ms`` per user (``RateLimited``)."""
        return await self._run(
            partial(
                requests.add_friend,
                user_id=user_id,
                friend_id=friend_id,
                window=window,
                max_waiting=max_waiting,
            ),
            write=True,
        )

    async def accept_friend(self, user_id: int, requester_id: int) -> UserRecord:
        """Accept a waiting request (``NoSuchRequest`` if none): returns the new friend."""
        return await self._run(
            partial(requests.accept, user_id=user_id, requester_id=requester_id), write=True
        )

    async def decline_friend(self, user_id: int, requester_id: int) -> None:
        await self._run(
            partial(requests.decline, user_id=user_id, requester_id=requester_id), write=True
        )

    async def friend_requests(self, user_id: int, after: int, limit: int) -> Page[UserRecord]:
        return await self._run(
            partial(requests.requests_page, user_id=user_id, after=after, limit=limit),
            write=False,
        )

    async def change_settings(self, user_id: int, friend_requests: str | None) -> str:
        """Change what was sent (None: nothing); the ``friend_requests`` setting after."""
        return await self._run(
            partial(requests.change_settings, user_id=user_id, friend_requests=friend_requests),
            write=friend_requests is not None,
        )

    async def presence_hidden(self, target_ids: Sequence[int], viewer_id: int) -> set[int]:
        """Which of ``target_ids`` show ``online: false`` to ``viewer_id`` whatever their
        state (they approve requests and the viewer is not their friend)."""
        return await self._run(
            partial(requests.presence_hidden, target_ids=target_ids, viewer_id=viewer_id),
            write=False,
        )

    async def remove_friend(self, user_id: int, friend_id: int) -> UserRecord:
        return await self._run(
            partial(contacts.remove_friend, user_id=user_id, friend_id=friend_id), write=True
        )

    async def friends(self, user_id: int, after: int, limit: int) -> Page[UserRecord]:
        return await self._run(
            partial(contacts.friends_page, user_id=user_id, after=after, limit=limit),
            write=False,
        )

    async def block(self, user_id: int, target_id: int) -> UserRecord:
        """``user_id`` blocks ``target_id`` (ending their friendship); returns the target."""
        return await self._run(
            partial(contacts.block, user_id=user_id, target_id=target_id), write=True
        )

    async def unblock(self, user_id: int, target_id: int) -> UserRecord:
        return await self._run(
            partial(contacts.unblock, user_id=user_id, target_id=target_id), write=True
        )

    async def blocked(self, user_id: int, after: int, limit: int) -> Page[UserRecord]:
        return await self._run(
            partial(contacts.blocked_page, user_id=user_id, after=after, limit=limit),
            write=False,
        )

    async def blockers_among(self, user_id: int, candidates: Sequence[int]) -> set[int]:
        """Which of ``candidates`` have blocked ``user_id``: they must get nothing from
        it that the protocol refuses (``send``, ``add_friend``) and it must get no
        ``presence`` of theirs. (A block also ends the friendship, so a presence
        fan-out that reads friends from the store excludes them already.)"""
        if not candidates:
            return set()
        return await self._run(
            partial(contacts.blockers_among, user_id=user_id, candidates=candidates),
            write=False,
        )

    # --- throttles -------------------------------------------------------------

    async def throttle_reserve(self, buckets: Sequence[str], window: Window) -> Reservation:
        """A lockout check that counts the attempt when it lets it through
        (``throttle.reserve``): one transaction for all of ``buckets``."""
        return await self._run(
            lambda sql: throttle.reserve(sql, buckets, window, now_ms()), write=True
        )

    async def throttle_forget(self, ids: Sequence[int]) -> None:
        """Un-count events a reservation counted (``throttle.forget``)."""
        await self._run(lambda sql: throttle.forget(sql, ids), write=True)

    async def throttle_take_counted(self, bucket: str, window: Window) -> Reservation:
        """As ``throttle_take``, with the id of the event counted, so that it can be
        forgotten (``throttle_forget``) if the request is refused after all for a reason
        that is not its own (``throttle.take_counted``)."""
        return await self._run(
            lambda sql: throttle.take_counted(sql, bucket, window, now_ms()), write=True
        )

    async def throttle_take(self, bucket: str, window: Window) -> int | None:
        """Count one event of ``bucket`` if its window allows (``throttle.take``): None
        if counted, else milliseconds to wait. Check and count are one transaction;
        two concurrent ones may both pass at the limit (a budget, not an exact bound)."""
        return await self._run(lambda sql: throttle.take(sql, bucket, window, now_ms()), write=True)

    async def presence_audiences(self, user_ids: Sequence[int]) -> dict[int, PresenceAudience]:
        """Each of these users with all their friends, in one read transaction (a
        presence announcement batches many users); users that do not exist are absent.
        (A block ends the friendship, so a blocked user is nobody's audience here.)"""
        if not user_ids:
            return {}
        return await self._run(partial(contacts.presence_audiences, user_ids=user_ids), write=False)

    # --- groups ---------------------------------------------------------------

    async def create_group(
        self, name: str, description: str, creator_id: int, window: Window | None = None
    ) -> GroupRecord:
        """A new group with its creator as first member; ``RateLimited`` first when the
        creator made ``window.limit`` groups within the window (only groups made count;
        no ``window``: not throttled, for tools), then ``GroupNameTaken`` as
        ``create_user`` has ``NameTaken``."""
        key = name_key(name)
        look = look_key(name)

        def body(sql: _Sql) -> GroupRecord:
            # The creator's row lock serialises one user's create_group calls, so two of
            # them cannot both be the tenth (the throttle's rows are shared by every node).
            bucket = f"create_group:{creator_id}"
            created = now_ms()
            if window is not None:
                sql.one(f"SELECT id FROM users WHERE id = ?{sql.dialect.for_update}", (creator_id,))
                wait = throttle.wait_ms(sql, bucket, window, created)
                if wait is not None:
                    raise RateLimited(wait)
            if sql.one(
                "SELECT 1 FROM chat_groups WHERE name_key = ? OR look_key = ? OR name = ?",
                (key, look, name),
            ):
                raise GroupNameTaken(name)
            try:
                group_id = sql.insert(
                    "INSERT INTO chat_groups"
                    " (name, name_key, look_key, description, creator_id, created_at,"
                    " member_count) VALUES (?, ?, ?, ?, ?, ?, 1)",
                    (name, key, look, description, creator_id, created),
                )
            except Exception as exc:
                if self.dialect.is_integrity_error(exc):
                    raise GroupNameTaken(name) from exc
                raise
            sql.execute(
                "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                " VALUES (?, ?, 'creator', ?)",
                (group_id, creator_id, created),
            )
            streams.follow_group(sql, creator_id, group_id)
            if window is not None:
                throttle.record(sql, bucket, window, created)
            return GroupRecord(id=group_id, name=name, description=description)

        return await self._run(body, write=True)

    async def join_group(self, group_id: int, user_id: int) -> tuple[GroupRecord, Role]:
        def body(sql: _Sql) -> tuple[GroupRecord, Role]:
            row = (
                None
                if _no_row(group_id)
                # Locked first: the member row's foreign key would take a shared lock on
                # the group's row, and two joins each holding one and then updating the
                # count deadlock (MariaDB 1213) on every join wave.
                else sql.one(
                    "SELECT id, name, description FROM chat_groups WHERE id = ?"
                    + sql.dialect.for_update,
                    (group_id,),
                )
            )
            if row is None:
                raise NoSuchGroup(group_id)
            if sql.one(
                "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?",
                (group_id, user_id),
            ):
                raise AlreadyMember()
            try:
                sql.execute(
                    "INSERT INTO group_members (group_id, user_id, role, joined_at)"
                    " VALUES (?, ?, 'normal', ?)",
                    (group_id, user_id, now_ms()),
                )
            except Exception as exc:
                if self.dialect.is_integrity_error(exc):
                    raise AlreadyMember() from exc
                raise
            sql.execute(
                "UPDATE chat_groups SET member_count = member_count + 1 WHERE id = ?", (group_id,)
            )
            # The group's row is locked: the head read there is the one the next
            # group message follows, so the new member's devices get exactly what
            # comes after the join.
            streams.follow_group(sql, user_id, group_id)
            return GroupRecord.from_row(row), "normal"

        return await self._run(body, write=True)

    async def groups(self, user_id: int, after: int, limit: int) -> Page[MembershipRecord]:
        """The user's groups with their member counts (no members)."""
        return await self._run(
            partial(contacts.groups_page, user_id=user_id, after=after, limit=limit),
            write=False,
        )

    async def group_members(
        self, user_id: int, group_id: int, after: int, limit: int
    ) -> Page[MemberRecord]:
        """Members of a group the user is in (``NoSuchGroup``, ``NotAMember``)."""
        return await self._run(
            partial(
                contacts.members_page, user_id=user_id, group_id=group_id, after=after, limit=limit
            ),
            write=False,
        )

    # --- messages -------------------------------------------------------------

    def store_direct(
        self,
        sender_id: int,
        recipient_id: int,
        body_text: str,
        cid: str | None,
        on_stored: OnStored | None = None,
    ) -> Coroutine[Any, Any, StoredMessage]:
        """Store a one-to-one message and keep it for its recipient.

        Concurrent sends share one transaction (``chat.store.sends``); this one's
        checks, errors and savepoint are its own, and it returns once committed.
        The send takes its place in the order of sends when this is *called*, not
        when the result is awaited: a connection that pipelines sends calls this as it
        reads each one, so they are stored in the order sent. Always await the result.

        ``on_stored`` is told the message (a new one, or the earlier one of a used
        ``cid``) right after the commit, in the trio thread, before the batch's callers
        resume: each send of a batch in its order, with no checkpoint in between. The
        hand-off to recipients belongs there: done by each caller when it resumes,
        a sender's message in one stream could reach a recipient before an earlier one
        in another (a read of the one stream, started meanwhile, sees the batch's
        commit before the other's hand-off ran)."""
        return self._send(
            self._send_calls.submit(DirectSend(sender_id, recipient_id, body_text, cid, on_stored))
        )

    def store_group(
        self,
        sender_id: int,
        group_id: int,
        body_text: str,
        cid: str | None,
        on_stored: OnStored | None = None,
    ) -> Coroutine[Any, Any, StoredMessage]:
        """Store a group message and keep it for every other member (as ``store_direct``)."""
        return self._send(
            self._send_calls.submit(GroupSend(sender_id, group_id, body_text, cid, on_stored))
        )

    @staticmethod
    async def _send(submitted: Submitted[SendRequest, SendOutcome]) -> StoredMessage:
        outcome = await submitted.result()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _send_batch(self, requests: Sequence[SendRequest]) -> Awaitable[list[SendOutcome]]:
        stored = self._start(
            partial(store_sends, requests=requests),
            write=True,
            deadline=self._send_calls.batch_deadline,
        )
        return self._hand_off(requests, stored)

    async def _hand_off(
        self, requests: Sequence[SendRequest], stored: Awaitable[list[SendOutcome]]
    ) -> list[SendOutcome]:
        """Tell each stored send's ``on_stored``, in batch order, without a checkpoint,
        inside ``gather_hand_offs``."""
        outcomes = await stored
        with self.gather_hand_offs():
            self._tell_stored(requests, outcomes)
        return outcomes

    @staticmethod
    def _tell_stored(requests: Sequence[SendRequest], outcomes: Sequence[SendOutcome]) -> None:
        for request, outcome in zip(requests, outcomes, strict=True):
            if request.on_stored is not None and isinstance(outcome, StoredMessage):
                try:
                    request.on_stored(outcome)
                except Exception:
                    # The message is stored: a bug in one hand-off must not fail the
                    # batch's other sends (the recipient still reads it at a wake-up).
                    log.exception("handing off message %d failed", outcome.message_id)

    async def read_streams(self, ranges: Sequence[StreamRange]) -> list[list[KeptMessage]]:
        """Each range's messages, ascending by position (``chat.store.streams``).

        Concurrent calls share one read (``chat.store.coalesce``): a group message wakes
        every member's device at once, and they read in one statement; the same range
        asked by many (devices at the same place in the same group) is read once."""
        return await self._read_calls(tuple(ranges))

    def _read_batch(
        self, requests: Sequence[tuple[StreamRange, ...]]
    ) -> Awaitable[list[list[list[KeptMessage]]]]:
        # Statements of about READ_RANGES_PER_STATEMENT ranges, never splitting one
        # call's ranges: each call's read must be one snapshot (MariaDB reads outside a
        # transaction, each statement seeing what was committed when it began), or a
        # sender's earlier message could be missed in one stream while a later one is
        # seen in another. Ranges asked by several calls of one statement are read once.
        statements: list[dict[StreamRange, None]] = [{}]
        where: list[int] = []
        for request in requests:
            current = statements[-1]
            fresh = [wanted for wanted in request if wanted not in current]
            if current and len(current) + len(fresh) > READ_RANGES_PER_STATEMENT:
                statements.append(dict.fromkeys(request))
            else:
                current.update(dict.fromkeys(fresh))
            where.append(len(statements) - 1)

        def body(sql: _Sql) -> list[list[list[KeptMessage]]]:
            found = [
                dict(zip(statement, streams.read_ranges(sql, list(statement)), strict=True))
                for statement in statements
            ]
            return [
                [found[number][wanted] for wanted in request]
                for request, number in zip(requests, where, strict=True)
            ]

        return self._start(body, write=False, deadline=self._read_calls.batch_deadline)

    # --- devices ----------------------------------------------------------------

    async def device_login(self, user_id: int, device: str, online: Sequence[str]) -> DeviceStart:
        """Make the device known (forgetting idle or surplus ones that are not in
        ``online``) and read where it stands (``streams.device_login``)."""
        return await self._run(
            lambda sql: streams.device_login(sql, user_id, device, now_ms(), online), write=True
        )

    async def advance(self, moves: Sequence[Advance], seen: Mapping[tuple[int, str], int]) -> None:
        """Move devices' positions forward and note when they were last seen, in one
        transaction (the node's ``Positions`` hands in what every connection delivered
        meanwhile)."""
        if moves or seen:
            await self._run(lambda sql: streams.advance(sql, moves, seen), write=True)

    async def devices(self, user_id: int, online: Sequence[str]) -> list[DeviceRecord]:
        return await self._run(
            lambda sql: streams.known_devices(sql, user_id, now_ms(), online), write=False
        )

    async def forget_device(self, user_id: int, device: str) -> bool:
        """Drop what is kept for the device and revoke its tokens; False if not known."""
        return await self._run(lambda sql: streams.drop_device(sql, user_id, device), write=True)

    async def device_positions(self, user_id: int, device: str) -> dict[int, int]:
        return await self._run(
            lambda sql: streams.device_positions(sql, user_id, device), write=False
        )

    async def group_position(self, user_id: int, device: str, group_id: int) -> int | None:
        return await self._run(
            lambda sql: streams.group_position(sql, user_id, device, group_id), write=False
        )

    # --- history --------------------------------------------------------------

    async def history_direct(
        self, user_id: int, peer_id: int, *, before: int | None, after: int | None, limit: int
    ) -> HistoryPage:
        """A page of the conversation between two users (``chat.store.history``)."""

        def body(sql: _Sql) -> HistoryPage:
            if _no_row(peer_id) or not sql.one("SELECT 1 FROM users WHERE id = ?", (peer_id,)):
                raise NoSuchUser(peer_id)
            ranges = history.direct_ranges(user_id, peer_id)
            return history.read_page(sql, ranges, before=before, after=after, limit=limit)

        return await self._run(body, write=False)

    async def history_group(
        self, user_id: int, group_id: int, *, before: int | None, after: int | None, limit: int
    ) -> HistoryPage:
        """A page of a group's messages, for one of its members only."""

        def body(sql: _Sql) -> HistoryPage:
            contacts.require_member(sql, user_id, group_id)
            ranges = history.group_range(group_id)
            return history.read_page(sql, ranges, before=before, after=after, limit=limit)

        return await self._run(body, write=False)

    # --- conversations and read markers (``chat.store.conversations``) -----------

    async def conversations(
        self, user_id: int, before: int | None, limit: int
    ) -> Page[ConversationRecord]:
        """The user's conversations, newest activity first, below ``before``."""
        return await self._run(
            lambda sql: conversations.conversations_page(sql, user_id, before, limit),
            write=False,
        )

    async def mark_read_direct(self, user_id: int, peer_id: int, message_id: int) -> ReadMarked:
        """Move the user's marker with ``peer_id`` up (``NoSuchUser``, ``NoSuchMessage``)."""
        return await self._run(
            lambda sql: conversations.mark_read_direct(sql, user_id, peer_id, message_id),
            write=True,
        )

    async def mark_read_group(self, user_id: int, group_id: int, message_id: int) -> ReadMarked:
        """Move the member's marker in a group up (``NoSuchGroup``, ``NotAMember``,
        ``NoSuchMessage``)."""
        return await self._run(
            lambda sql: conversations.mark_read_group(sql, user_id, group_id, message_id),
            write=True,
        )

    async def typing_allowed(self, user_id: int, target_id: int) -> bool:
        """Whether the user's typing reaches ``target_id`` (``NoSuchUser``)."""
        return await self._run(
            lambda sql: conversations.typing_allowed(sql, user_id, target_id), write=False
        )

    # --- many accounts at once (``chat.store.bulk``: chat-server import-users) ----

    async def import_in_use(self, accounts: bulk.Accounts) -> bulk.InUse:
        """What keeps ``accounts`` from being imported now: names taken, users unknown."""
        return await self._run(partial(bulk.in_use, accounts=accounts), write=False)

    async def import_accounts(self, accounts: bulk.Accounts) -> bulk.Imported:
        """Write all of ``accounts`` in one transaction, or nothing: ``ImportBlocked``
        names what is in the way (also a name registered while the import ran)."""
        try:
            return await self._run(partial(bulk.write, accounts=accounts), write=True)
        except Exception as exc:
            if not self.dialect.is_integrity_error(exc):
                raise
            blocked = await self.import_in_use(accounts)
            if not blocked:
                raise
            raise bulk.ImportBlocked(blocked) from exc

    # --- session tokens (``chat.store.tokens``: hashes only) --------------------

    async def issue_token(self, user_id: int, device: str, token_hash: bytes) -> None:
        await self._run(partial(_issue_token, user_id, device, token_hash), write=True)

    async def revoke_tokens(self, user_id: int) -> None:
        """Every token of the user (``logout`` everywhere)."""
        await self._run(partial(tokens.revoke_all, user_id=user_id), write=True)

    async def user_for_token(self, token_hash: bytes) -> tuple[UserRecord, str] | None:
        """The user of a live token, whose use slides its expiry; None for an unknown,
        expired or revoked one. Concurrent calls share one transaction (a node restart
        brings thousands of token logins at once)."""
        return await self._token_calls(token_hash)

    def _token_batch(
        self, token_hashes: Sequence[bytes]
    ) -> Awaitable[list[tuple[UserRecord, str] | None]]:
        def body(sql: _Sql) -> list[tuple[UserRecord, str] | None]:
            found = tokens.use(sql, token_hashes, now_ms())
            return [found.get(token_hash) for token_hash in token_hashes]

        return self._start(body, write=True, deadline=self._token_calls.batch_deadline)

    async def revoke_token(self, token_hash: bytes) -> None:
        await self._run(partial(_revoke_token, token_hash), write=True)


def _issue_token(user_id: int, device: str, token_hash: bytes, sql: _Sql) -> None:
    tokens.issue(sql, user_id, device, token_hash, now_ms())


def _revoke_token(token_hash: bytes, sql: _Sql) -> None:
    tokens.revoke(sql, token_hash)


def _fetch_one(query: str, args: Sequence[Any], sql: _Sql) -> Any:
    return sql.one(query, args)


def _is_group_send(request: SendRequest) -> bool:
    """Group sends are the costly ones in a send batch (a savepoint, a membership check
    and the group's log position each); direct sends of a batch go in together."""
    return isinstance(request, GroupSend)


def _sender(request: SendRequest) -> int:
    """A send's chain in the send coalescer: its sender's pipelined sends."""
    return request.sender_id
