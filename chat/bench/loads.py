"""The load each scenario puts on the server, as run inside one load process.

Each function logs its users in (setup, not measured unless the scenario is
about logins), meets the other processes at ``worker.sync``, runs, waits for
outstanding deliveries, and returns plain data for ``scenarios`` to merge.
Message text is ``run_id|seq|send_time|padding``: the receiver needs nothing
else to check order and to time the delivery (``time.monotonic`` is one clock
for every process of the machine). One-to-one receipts and ``ok``s are also
tallied per route (``same`` or ``cross`` port, see ``model``).
"""

from __future__ import annotations

import time
from array import array
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .conn import Json
from .model import ROUTES, PlanError, PresencePlan, plan_targets
from .stats import DeliveryChecker
from .worker import BenchError, BenchUser, Worker

PAD = "x" * 40
"""Message bodies carry some text, like a short chat line."""
GROUP_NAME = "{prefix}-g{size}"
JOIN_TRIES = 5


def message_text(worker: Worker, seq: int, sent_at: float) -> str:
    return f"{worker.tag}{seq}|{sent_at:.6f}|{PAD}"


def parse_text(text: str) -> tuple[int, float]:
    _, seq, sent_at, _ = text.split("|", 3)
    return int(seq), float(sent_at)


async def sleep_until_monotonic(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await trio.sleep(delay)


async def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; deliveries arrive meanwhile."""
    with trio.move_on_after(seconds):
        # Polling keeps the receive path free of bookkeeping; 10 ms is far below the figures.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)
        return True
    return condition()


class RouteTally:
    """One route's deliveries (first copies) and ``ok``s in one load process."""

    __slots__ = ("acks", "delivered", "last_receipt", "latencies")

    def __init__(self) -> None:
        self.delivered = 0
        self.latencies = array("d")
        self.acks = array("d")
        self.last_receipt = 0.0

    def result(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "last_receipt": self.last_receipt,
            "latencies": self.latencies.tobytes(),
            "acks": self.acks.tobytes(),
        }


class Receipts:
    """Checks and times the one-to-one messages a load process receives.

    Create it once the users are logged in: it learns each user's port then, to
    tell ``same`` from ``cross`` deliveries.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.checker = DeliveryChecker()
        self.latencies = array("d")
        self.last_receipt = 0.0
        self.wrong_kind = 0
        self.routes = {route: RouteTally() for route in ROUTES}
        config = worker.config
        self._port_of = {user.id: config.port_for(user.index) for user in worker.users.values()}

    def route(self, recipient: int, sender: int) -> RouteTally | None:
        """The tally of a (recipient, sender) pair's route; None for a sender not of this run."""
        sender_port = self._port_of.get(sender)
        if sender_port is None:
            return None
        return self.routes["same" if sender_port == self._port_of.get(recipient) else "cross"]

    def on_event(self, user: BenchUser, event: Json) -> None:
        now = time.monotonic()
        if event.get("type") != "message":
            self.wrong_kind += 1
            return
        seq, sent_at = parse_text(event["text"])
        sender = int(event["from"]["id"])
        if self.checker.received(user.id, sender, seq):
            latency = now - sent_at
            self.latencies.append(latency)
            tally = self.route(user.id, sender)
            if tally is not None:
                tally.delivered += 1
                tally.latencies.append(latency)
                tally.last_receipt = now
        self.last_receipt = now
        self.worker.count_received()

    def acked(self, sender: BenchUser, recipient: BenchUser, seq: int, seconds: float) -> None:
        """``sender`` got ``ok`` for message ``seq`` to ``recipient``, ``seconds`` after sending."""
        self.checker.acked(recipient.id, sender.id, seq)
        tally = self.route(recipient.id, sender.id)
        if tally is not None:
            tally.acks.append(seconds)

    def route_results(self) -> dict[str, dict[str, Any]]:
        return {route: tally.result() for route, tally in self.routes.items()}


def targets_of(worker: Worker, users: list[int]) -> dict[int, int]:
    """Whom each user sends to (``model.plan_targets``, after ``--route``)."""
    try:
        return plan_targets(worker.config, worker.job.worker, users)
    except PlanError as exc:
        raise BenchError(str(exc)) from None


# --- register and login --------------------------------------------------------


class Replies:
    """The answers to one load's sends: ``ok`` latencies (also per route), failed sends,
    and how many pipelined sends are still unanswered."""

    def __init__(self, worker: Worker, receipts: Receipts) -> None:
        self.worker = worker
        self.receipts = receipts
        self.acks = array("d")
        self.errors = 0
        self.outstanding = 0
        self.last_ok = 0.0

    def answered(
        self, me: BenchUser, them: BenchUser, seq: int, sent_at: float, reply: Json
    ) -> bool:
        """Record the answer to send ``seq`` from ``me`` to ``them``; True if it was ``ok``."""
        if reply.get("type") != "ok":
            self.errors += 1
            return False
        self.last_ok = time.monotonic()
        seconds = self.last_ok - sent_at
        self.acks.append(seconds)
        self.receipts.acked(me, them, seq, seconds)
        return True

    def expect(
        self, me: BenchUser, them: BenchUser, seq: int, sent_at: float, *, count_ok: bool
    ) -> Callable[[Json], None]:
        """A reply callback for a pipelined send (counted as outstanding until answered);
        ``count_ok``: count the send in the progress line when its ``ok`` comes."""
        self.outstanding += 1

        def got(reply: Json) -> None:
            self.outstanding -= 1
            if self.answered(me, them, seq, sent_at, reply) and count_ok:
                self.worker.count_sent()

        return got

    def results(self) -> dict[str, Any]:
        return {"sent": len(self.acks), "errors": self.errors, "acks": self.acks.tobytes()}


def delivery_results(receipts: Receipts) -> dict[str, Any]:
    """What a one-to-one load reports of its deliveries (after its waits are over)."""
    return {
        "last_receipt": receipts.last_receipt,
        "delivered": receipts.checker.delivered,
        "latencies": receipts.latencies.tobytes(),
        "wrong_kind": receipts.wrong_kind,
        "routes": receipts.route_results(),
        "verdict": receipts.checker.finish(),
    }


async def auth(worker: Worker) -> dict[str, Any]:
    """Register fresh accounts, then log them in: the cost of scrypt, on purpose."""
    config = worker.config
    limiter = trio.CapacityLimiter(config.login_concurrency)
    users = [await worker.connect(index) for index in worker.job.users]
    for user in users:
        user.name = f"{config.prefix}-a{config.run_id}-{user.index}"
    result: dict[str, Any] = {}
    for phase in ("register", "login"):
        durations = array("d")
        errors = 0
        start_at = await worker.sync()
        await sleep_until_monotonic(start_at)

        async def one(user: BenchUser, kind: str = phase, times: array[float] = durations) -> None:
            nonlocal errors
            async with limiter:
                started = time.monotonic()
                reply = await user.conn.call(kind, name=user.name, password="bench-password")
                if reply.get("type") == "ok":
                    times.append(time.monotonic() - started)
                    worker.count_sent()
                else:
                    errors += 1

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(one, user)
        result[phase] = {
            "latencies": durations.tobytes(),
            "start": start_at,
            "end": time.monotonic(),
            "errors": errors,
        }
    return result


# --- one-to-one ----------------------------------------------------------------------


async def direct(worker: Worker) -> dict[str, Any]:
    """Closed loop: every user sends ``messages`` messages, each after the last one's ``ok``."""
    users = list(worker.job.users)
    await worker.connect_all(users)
    targets = targets_of(worker, users)
    receipts = Receipts(worker)
    worker.on_event = receipts.on_event
    replies = Replies(worker, receipts)

    async def sender(index: int) -> None:
        me, them = worker.users[index], worker.users[targets[index]]
        for seq in range(1, worker.config.messages + 1):
            sent_at = time.monotonic()
            reply = await me.conn.call("send", to=them.id, text=message_text(worker, seq, sent_at))
            if replies.answered(me, them, seq, sent_at, reply):
                worker.count_sent()

    start_at = await worker.sync(len(users))
    await sleep_until_monotonic(start_at)
    async with trio.open_nursery() as nursery:
        for index in users:
            nursery.start_soon(sender, index)
    sends_done = time.monotonic()
    await wait_for(lambda: receipts.checker.missing() == 0, worker.config.drain_seconds)
    return {
        "start": start_at,
        "sends_done": sends_done,
        **replies.results(),
        **delivery_results(receipts),
    }


async def open_loop(worker: Worker) -> dict[str, Any]:
    """Open loop: sends leave on a fixed schedule whether or not earlier ones were answered.

    Latency counts from the *scheduled* time, so a stalled server (or generator)
    shows up as latency instead of quietly lowering the offered rate.
    """
    config = worker.config
    users = list(worker.job.users)
    await worker.connect_all(users)
    targets = targets_of(worker, users)
    receipts = Receipts(worker)
    worker.on_event = receipts.on_event
    rate = config.rate * len(users) / config.users
    interval = 1.0 / rate
    replies = Replies(worker, receipts)

    start_at = await worker.sync(len(users))
    end_at = start_at + config.duration
    seqs: dict[int, int] = defaultdict(int)
    behind = 0.0
    tick = 0
    while True:
        scheduled = start_at + tick * interval
        if scheduled >= end_at:
            break
        now = time.monotonic()
        if scheduled > now:
            await trio.sleep(scheduled - now)
        else:
            behind = max(behind, now - scheduled)
        index = users[tick % len(users)]
        me, them = worker.users[index], worker.users[targets[index]]
        seqs[index] += 1
        seq = seqs[index]
        await me.conn.request(
            "send",
            replies.expect(me, them, seq, scheduled, count_ok=False),
            to=them.id,
            text=message_text(worker, seq, scheduled),
        )
        worker.count_sent()
        tick += 1
    sends_done = time.monotonic()
    await wait_for(lambda: replies.outstanding == 0, config.drain_seconds)
    await wait_for(lambda: receipts.checker.missing() == 0, config.drain_seconds)
    return {
        "start": start_at,
        "sends_done": sends_done,
        "offered": tick,
        "unanswered": replies.outstanding,
        "generator_lag": behind,
        **replies.results(),
        **delivery_results(receipts),
    }


async def burst(worker: Worker) -> dict[str, Any]:
    """Burst: at the common start every user writes its ``messages`` sends at once.

    The sends are pipelined (each is written without waiting for an earlier
    ``ok``), so the server gets ``users x messages`` requests in one go. A
    message's send time is when its request was handed to the connection.
    Deliveries are checked as in ``direct``; ``sends_done`` is the last ``ok``.
    """
    config = worker.config
    users = list(worker.job.users)
    await worker.connect_all(users)
    targets = targets_of(worker, users)
    receipts = Receipts(worker)
    worker.on_event = receipts.on_event
    replies = Replies(worker, receipts)

    async def sender(index: int) -> None:
        me, them = worker.users[index], worker.users[targets[index]]
        for seq in range(1, config.messages + 1):
            sent_at = time.monotonic()
            await me.conn.request(
                "send",
                replies.expect(me, them, seq, sent_at, count_ok=True),
                to=them.id,
                text=message_text(worker, seq, sent_at),
            )

    start_at = await worker.sync(len(users))
    await sleep_until_monotonic(start_at)
    async with trio.open_nursery() as nursery:
        for index in users:
            nursery.start_soon(sender, index)
    written = time.monotonic()
    await wait_for(lambda: replies.outstanding == 0, config.drain_seconds)
    await wait_for(lambda: receipts.checker.missing() == 0, config.drain_seconds)
    return {
        "start": start_at,
        "written": written,
        "sends_done": replies.last_ok or written,
        "unanswered": replies.outstanding,
        **replies.results(),
        **delivery_results(receipts),
    }


async def open_group(worker: Worker, members: list[int]) -> int:
    """The group ``PREFIX-gSIZE`` of user 0, found in its login (one made beforehand,
    say by ``chat-server import-users`` with members who stay offline) or created by
    it; then ``members`` (of this process) log in and join it. Returns its id. User 0
    logs in on the process that has it; every process meets the others once."""
    config = worker.config
    name = GROUP_NAME.format(prefix=config.prefix, size=config.group_size)
    group_id = 0
    if 0 in worker.job.users:
        creator = await worker.connect(0)
        login = await worker.login(creator)
        known = [g["id"] for g in login["groups"] if g["name"] == name]
        if known:
            group_id = int(known[0])
        else:
            reply = await creator.conn.call("create_group", name=name, description="chat-bench")
            if reply.get("type") == "ok":
                group_id = int(reply["group"]["id"])
    group_id = await worker.sync(group_id)
    if not group_id:
        raise BenchError(f"cannot find or create group {name}")
    await worker.connect_all(members)
    limiter = trio.CapacityLimiter(config.login_concurrency)

    async def join(index: int) -> None:
        for _ in range(JOIN_TRIES):
            async with limiter:
                reply = await worker.users[index].conn.call("join_group", group_id=group_id)
            if reply.get("code") != "unavailable":  # a busy database: try again
                break
            await trio.sleep(1.0)
        if reply.get("type") == "error" and reply.get("code") != "already_member":
            raise BenchError(f"cannot join group {group_id}: {reply.get('message')}")

    async with trio.open_nursery() as nursery:
        for index in members:
            nursery.start_soon(join, index)
    return int(group_id)


async def member_count(user: BenchUser, group_id: int) -> int:
    """How many members the group has, as ``groups`` tells one of them (0: not found)."""
    reply = await user.conn.call("groups")
    found = [g for g in reply.get("groups", ()) if g.get("id") == group_id]
    return int(found[0].get("member_count", 0)) if found else 0


async def group(worker: Worker) -> dict[str, Any]:
    """User 0 sends to a group of ``group_size`` members; the others (those of them
    given to the load processes: ``--online``) log in and receive."""
    config = worker.config
    users = list(worker.job.users)
    members = [index for index in users if index != 0]
    group_id = await open_group(worker, members)

    checker = DeliveryChecker()
    last_member: dict[int, float] = defaultdict(float)
    """For each message, the latest delivery seen by this process (latency to the last member)."""
    every = array("d")
    last_receipt = 0.0

    def on_event(user: BenchUser, event: Json) -> None:
        nonlocal last_receipt
        now = time.monotonic()
        if event.get("type") != "group_message" or event.get("group_id") != group_id:
            worker.stale += 1
            return
        seq, sent_at = parse_text(event["text"])
        if checker.received(user.id, int(event["from"]["id"]), seq):
            latency = now - sent_at
            every.append(latency)
            if latency > last_member[seq]:
                last_member[seq] = latency
        last_receipt = now
        worker.count_received()

    worker.on_event = on_event
    start_at = await worker.sync(len(members))
    await sleep_until_monotonic(start_at)
    acked: list[int] = []
    acks = array("d")
    if 0 in users:
        sender = worker.users[0]
        interval = 1.0 / config.group_rate if config.group_rate > 0 else 0.0
        for seq in range(1, config.messages + 1):
            scheduled = start_at + (seq - 1) * interval
            if interval:
                await sleep_until_monotonic(scheduled)
            sent_at = scheduled if interval else time.monotonic()
            reply = await sender.conn.call(
                "group_send", group_id=group_id, text=message_text(worker, seq, sent_at)
            )
            if reply.get("type") == "ok":
                acked.append(seq)
                acks.append(time.monotonic() - sent_at)
                worker.count_sent()
    sends_done = time.monotonic()
    size = await member_count(worker.users[0], group_id) if 0 in users else 0
    all_acked: list[int] = await worker.sync(acked)
    expected = len(members) * len(all_acked)
    await wait_for(lambda: checker.delivered >= expected, config.drain_seconds)
    return {
        "start": start_at,
        "sends_done": sends_done,
        "last_receipt": last_receipt,
        "members": len(members),
        "member_count": size,
        "acked": acked,
        "counts": checker.seen_counts(),
        "last_member": dict(last_member),
        "latencies": every.tobytes(),
        "acks": acks.tobytes(),
        "delivered": checker.delivered,
        "verdict": checker.finish(check_unexpected=False),
    }


# --- offline drain ---------------------------------------------------------------------


async def offline(worker: Worker) -> dict[str, Any]:
    """Pairs: a sender stores ``messages`` messages for a logged-out recipient, who then
    logs in; measured from the login reply to the last kept message."""
    config = worker.config
    users = list(worker.job.users)
    pairs = [(users[i], users[i + 1]) for i in range(0, len(users) - 1, 2)]
    if not pairs:
        raise BenchError("the offline scenario needs at least two users per load process")
    await worker.connect_all(users)
    receipts = Receipts(worker)
    worker.on_event = receipts.on_event
    for _, recipient in pairs:
        reply = await worker.users[recipient].conn.call("logout")
        if reply.get("type") != "ok":
            raise BenchError(f"cannot log out: {reply.get('message')}")

    async def fill(sender_index: int, recipient_index: int) -> None:
        me, them = worker.users[sender_index], worker.users[recipient_index]
        for seq in range(1, config.messages + 1):
            reply = await me.conn.call(
                "send", to=them.id, text=message_text(worker, seq, time.monotonic())
            )
            if reply.get("type") == "ok":
                receipts.checker.acked(them.id, me.id, seq)
                worker.count_sent()

    async with trio.open_nursery() as nursery:
        for sender_index, recipient_index in pairs:
            nursery.start_soon(fill, sender_index, recipient_index)
    start_at = await worker.sync(len(pairs) * config.messages)
    await sleep_until_monotonic(start_at)
    drains: list[dict[str, Any]] = []
    limiter = trio.CapacityLimiter(config.login_concurrency)

    async def drain(recipient_index: int) -> None:
        user = worker.users[recipient_index]
        async with limiter:
            reply = await worker.login(user, register_missing=False)
        replied = time.monotonic()
        drains.append({"user": user.id, "replied": replied, "announced": reply["offline"]})

    async with trio.open_nursery() as nursery:
        for _, recipient_index in pairs:
            nursery.start_soon(drain, recipient_index)
    await wait_for(lambda: receipts.checker.missing() == 0, config.drain_seconds)
    return {
        "start": start_at,
        "drains": drains,
        "last_receipt": receipts.last_receipt,
        "delivered": receipts.checker.delivered,
        "expected": len(pairs) * config.messages,
        "verdict": receipts.checker.finish(),
    }


# --- connection capacity ---------------------------------------------------------------


WARM_UP_USERS = 2
"""Logged in before the baseline is read, so the hash threads' memory is in the baseline."""


async def capacity(worker: Worker) -> dict[str, Any]:
    """Hold logged-in idle connections; then ping each once to prove it is alive."""
    users = list(worker.job.users)
    await worker.connect_all(users[:WARM_UP_USERS])
    await worker.sync()
    started = time.monotonic()
    logins = await worker.connect_all(users[WARM_UP_USERS:])
    held_at = time.monotonic()
    await worker.sync({"held": len(worker.users), "login_start": started, "held_at": held_at})
    pings = array("d")
    failed = 0

    async def ping(user: BenchUser) -> None:
        nonlocal failed
        sent = time.monotonic()
        reply = await user.conn.call("ping")
        if reply.get("type") == "ok":
            pings.append(time.monotonic() - sent)
        else:
            failed += 1

    async with trio.open_nursery() as nursery:
        for user in worker.users.values():
            nursery.start_soon(ping, user)
    await worker.sync()
    return {
        "held": len(worker.users),
        "warm": min(WARM_UP_USERS, len(users)),
        "logins": array("d", logins).tobytes(),
        "login_start": started,
        "held_at": held_at,
        "pings": pings.tobytes(),
        "ping_failed": failed,
        "dropped": sum(1 for user in worker.users.values() if user.conn.closed),
    }


async def resume(worker: Worker) -> dict[str, Any]:
    """Session tokens: what a node restart costs its users, with no password hash.

    Setup (not measured): each user logs in once with its password and keeps the
    session token. Then two measured phases, each ``--messages`` rounds per user:
    ``reconnect``, each round on a new connection (connect, ``login`` with the token,
    ``logout`` so that the next round finds the user free, close), a login counting
    from the connect to its ``ok``; and ``relogin``, the same on one connection kept
    open (the login alone, from the request to its ``ok``)."""
    config = worker.config
    limiter = trio.CapacityLimiter(config.login_concurrency)
    tokens: dict[int, str] = {}

    async def first_login(index: int) -> None:
        async with limiter:
            user = await worker.connect(index)
            tokens[index] = str((await worker.login(user))["token"])
            await user.conn.call("logout")
            await user.conn.aclose()

    with trio.fail_after(config.setup_seconds):
        async with trio.open_nursery() as nursery:
            for index in worker.job.users:
                nursery.start_soon(first_login, index)
    worker.users.clear()
    result: dict[str, Any] = {}
    for phase in ("reconnect", "relogin"):
        durations = array("d")
        errors = 0
        start_at = await worker.sync()
        await sleep_until_monotonic(start_at)

        async def rounds(index: int, phase: str = phase, times: array[float] = durations) -> None:
            nonlocal errors
            kept = None if phase == "reconnect" else await worker.connect(index)
            for _ in range(config.messages):
                async with limiter:
                    started = time.monotonic()
                    user = kept or await worker.connect(index)
                    try:
                        reply = await user.conn.call("login", token=tokens[index])
                        if reply.get("type") != "ok":
                            errors += 1
                            continue
                        times.append(time.monotonic() - started)
                        worker.count_sent()
                        await user.conn.call("logout")
                    finally:
                        if kept is None:
                            await user.conn.aclose()
            if kept is not None:
                await kept.conn.aclose()

        async with trio.open_nursery() as nursery:
            for index in worker.job.users:
                nursery.start_soon(rounds, index)
        worker.users.clear()
        result[phase] = {
            "latencies": durations.tobytes(),
            "start": start_at,
            "end": time.monotonic(),
            "errors": errors,
        }
    return result


# --- presence -------------------------------------------------------------------------


SETTLE_SECONDS = 1.0
"""presence: the quiet time between set-up and the first phase."""


class PresenceWatch:
    """The presence events this load process's watchers receive, phase by phase.

    A phase expects every watcher to hear every changer friend of it go to one state
    (``online``); an event that says that for the first time in the phase counts, with
    its time. Events about other users, or repeating the state already heard in the
    phase, are tallied apart; so are events saying the other state (late ones of an
    earlier phase: the scenario lets things settle between phases)."""

    def __init__(self, worker: Worker, plan: PresencePlan) -> None:
        self.worker = worker
        mine = set(worker.job.users)
        self.friends = {w: cs for w, cs in plan.changer_friends().items() if w in mine}
        self.changer_of: dict[int, int] = {}
        self.online = True
        self.seen: set[tuple[int, int]] = set()
        self.receipts: list[tuple[int, float]] = []
        """(changer index, receipt time) of the phase."""
        self.repeats = 0
        self.strangers = 0
        self.other_state = 0

    @property
    def expected(self) -> int:
        return sum(len(changers) for changers in self.friends.values())

    def begin(self, online: bool) -> None:
        self.online = online
        self.seen = set()
        self.receipts = []

    def on_event(self, user: BenchUser, event: Json) -> None:
        now = time.monotonic()
        if event.get("type") != "presence":
            return  # friend_added at set-up
        changer = self.changer_of.get(int(event["user"]["id"]))
        if changer is None or changer not in self.friends.get(user.index, ()):
            self.strangers += 1
            return
        if event["online"] is not self.online:
            self.other_state += 1
            return
        if (user.index, changer) in self.seen:
            self.repeats += 1
            return
        self.seen.add((user.index, changer))
        self.receipts.append((changer, now))
        self.worker.count_received()


async def _change_presence(
    worker: Worker, user: BenchUser, online: bool, answered: dict[int, float]
) -> None:
    """Log ``user`` in or out; note when the reply came."""
    if online:
        await worker.login(user, register_missing=False)
    else:
        reply = await user.conn.call("logout")
        if reply.get("type") != "ok":
            raise BenchError(f"cannot log out: {reply.get('message')}")
    answered[user.index] = time.monotonic()
    worker.count_sent()


async def presence(worker: Worker) -> dict[str, Any]:
    """Changers log out and in, ``rounds`` times, all at once; their watcher friends
    stay logged in. Measured: when each watcher heard each change, next to when the
    change's request was answered."""
    config = worker.config
    plan = PresencePlan.of(config)
    users = list(worker.job.users)
    watch = PresenceWatch(worker, plan)
    worker.on_event = watch.on_event
    await worker.connect_all(users)
    ids: dict[int, int] = await worker.sync({u.index: u.id for u in worker.users.values()})
    watch.changer_of = {ids[k]: k for k in plan.changers}
    limiter = trio.CapacityLimiter(config.login_concurrency)

    async def befriend(watcher: BenchUser, changer: int) -> None:
        # Watchers ask: each has a few changer friends, while a changer may have
        # thousands, beyond the server's add_friend throttle (100 an hour per user).
        async with limiter:
            reply = await watcher.conn.call("add_friend", user_id=ids[changer])
        if reply.get("type") != "ok" and reply.get("code") != "already_friends":
            raise BenchError(f"add_friend failed: {reply.get('code')}: {reply.get('message')}")

    with trio.fail_after(config.setup_seconds):
        async with trio.open_nursery() as nursery:
            for watcher, changers in watch.friends.items():
                for changer in changers:
                    nursery.start_soon(befriend, worker.users[watcher], changer)
    mine = [worker.users[k] for k in plan.changers if k in worker.users]
    await trio.sleep(SETTLE_SECONDS)  # the set-up's own announcements are not measured
    watch.repeats = watch.strangers = watch.other_state = 0
    start = await worker.sync()  # every phase starts at a moment the parent names
    phases: list[dict[str, Any]] = []
    for _ in range(config.rounds):
        for online in (False, True):
            watch.begin(online)
            answered: dict[int, float] = {}
            await sleep_until_monotonic(start)
            async with trio.open_nursery() as changes:
                for user in mine:
                    changes.start_soon(_change_presence, worker, user, online, answered)
            await wait_for(lambda: len(watch.seen) >= watch.expected, config.drain_seconds)
            phases.append(
                {
                    "online": online,
                    "start": start,
                    "answered": answered,
                    "receipts": list(watch.receipts),
                    "expected": watch.expected,
                }
            )
            start = await worker.sync()
    return {
        "phases": phases,
        "repeats": watch.repeats,
        "strangers": watch.strangers,
        "other_state": watch.other_state,
    }


LOADS: dict[str, Callable[[Worker], Awaitable[Any]]] = {
    "auth": auth,
    "resume": resume,
    "direct": direct,
    "open": open_loop,
    "burst": burst,
    "group": group,
    "offline": offline,
    "capacity": capacity,
    "presence": presence,
}
