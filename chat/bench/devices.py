"""Scenarios for protocol 1.2 (devices, acknowledged delivery) and the fan-out budget.

- ``flood``: user 0 keeps ``--inflight`` ``group_send`` requests unanswered at once,
  for ``--duration`` s, to its group ``PREFIX-gSIZE`` of ``--group-size`` members, of
  whom ``--online`` (default 50) are logged in and read; the others are accounts only
  (a group made beforehand, e.g. by ``chat-server import-users``). Meanwhile two users
  outside the group (``PREFIX-uSIZE`` and the next) each ``send`` the other a message
  every 0.1 s, on a fixed schedule. The pair runs alone first, as long, so its latency
  with and without the flood comes from one run. The pair runs in a load process of
  its own, so the flood's readers do not slow its client. Counted: group sends stored
  (``ok``) and refused (``rate_limited``, the server's fan-out budget, or others);
  every one stored must reach every reader once, in order.
- ``stall``: user 0 logs in as a device new in this run (``x-RUNID``) with ``acks``,
  acknowledges the first tenth of what it gets, reads a twenty-fifth more without
  acknowledging (and until its acks are answered), then stops reading, while users
  1.. (``--users`` - 1 of them) send it ``--messages`` each, pipelined. A moment after
  the last ``ok`` its connection is cut (closed, if the server has not cut it
  already); it logs in again as that device and reads everything, acknowledging as it
  reads, and again (at most ``MAX_LOGINS`` times) while a login still brings messages
  and some are missing (the server may cut a login too).
  Counted: ``ok``'d messages never read (lost), read-but-unacknowledged ones that did
  not come again (lost under the ``acks`` contract), acknowledged ones that came
  again, and repeats. A server without protocol 1.2 ignores ``device`` and ``acks``
  and writes no ``seq``: then nothing is acknowledged, and a message read once counts
  as had (version 1).
- ``multidevice``: every user logs in ``--devices`` times as devices ``d0``, ``d1``,
  ...; device k of user i connects to the port of user i + k (``--ports``), so a
  user's devices are spread over the nodes. Device ``d0`` sends ``--messages`` to the
  next user of a ring, each after the last ``ok``. Every device of the recipient must
  get each message once, in per-sender order, and every other device of the sender a
  copy, the same way (the sending connection gets none).

The parent's half of each scenario is here too (``SCENARIOS``; the load processes'
half is ``LOADS``), next to the half it merges.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import attrs
import trio

from .conn import ConnectionLost, Json
from .loads import (
    Receipts,
    Replies,
    member_count,
    message_text,
    open_group,
    parse_text,
    sleep_until_monotonic,
    targets_of,
    wait_for,
)
from .model import PASSWORD, BenchConfig
from .runner import Load
from .scenarios import (
    Figures,
    _finish,
    _latency,
    _rate,
    _verdict,
    _with_cpu,
    cpu_seconds,
    machine_ticks,
)
from .stats import DeliveryChecker, LatencySummary, Verdict
from .worker import BenchError, BenchUser, Worker

PAIR_INTERVAL = 0.1
"""flood: each of the pair sends one message this often (seconds)."""
DEFAULT_READERS = 50
"""flood: members logged in to read, unless ``--online`` says otherwise."""
STALL_DEVICE = "x-{run_id}"
"""stall: the device, new in each run (it starts at the inbox's head: nothing of an
earlier run is kept for it)."""
ACK_EVERY = 50
"""stall: the second login acknowledges at least every this many messages."""
ACK_TICK = 0.2
"""stall: and what it has read this often (seconds), when fewer came."""
STALL_SETTLE = 3.0
"""stall: seconds between the last ``ok`` and the cut, for the server to write (or to
give up on the reader) whatever it can."""
RELOGIN_SECONDS = 30.0
"""stall: how long the second login retries ``already_online`` (the first connection's
session may still be closing)."""
ACK_RETRY_SECONDS = 0.05
QUIET_SECONDS = 1.0
"""stall: after everything expected came, how long to listen for repeats."""
MAX_LOGINS = 5
"""stall: logins after the stall, at most (one the server cuts is followed by another)."""


# --- flood ---------------------------------------------------------------------------


def flood_readers(config: BenchConfig) -> int:
    return min(config.online or DEFAULT_READERS, config.group_size - 1)


def flood_pair(config: BenchConfig) -> tuple[int, int]:
    """The two users outside the group (user indexes past its members)."""
    return config.group_size, config.group_size + 1


class PairTraffic:
    """The pair's messages, each way every ``PAIR_INTERVAL``, checked and timed; the
    figures of each phase are cut from one running tally."""

    def __init__(self, worker: Worker, a: BenchUser, b: BenchUser) -> None:
        self.worker = worker
        self.a, self.b = a, b
        self.receipts = Receipts(worker)
        self.replies = Replies(worker, self.receipts)
        self.seqs: dict[int, int] = defaultdict(int)
        self._marks = (0, 0, 0)

    async def run(self, start: float, seconds: float) -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._one_way, self.a, self.b, start, seconds, 0.0)
            nursery.start_soon(self._one_way, self.b, self.a, start, seconds, PAIR_INTERVAL / 2)
        drain = self.worker.config.drain_seconds
        await wait_for(lambda: self.replies.outstanding == 0, drain)
        await wait_for(lambda: self.receipts.checker.missing() == 0, drain)
        acks, latencies, errors = self._marks
        self._marks = (len(self.replies.acks), len(self.receipts.latencies), self.replies.errors)
        return {
            "sent": len(self.replies.acks) - acks,
            "errors": self.replies.errors - errors,
            "acks": self.replies.acks[acks:].tobytes(),
            "latencies": self.receipts.latencies[latencies:].tobytes(),
        }

    async def _one_way(
        self, me: BenchUser, them: BenchUser, start: float, seconds: float, offset: float
    ) -> None:
        tick = 0
        while (scheduled := start + offset + tick * PAIR_INTERVAL) < start + seconds:
            await sleep_until_monotonic(scheduled)
            self.seqs[me.index] += 1
            seq = self.seqs[me.index]
            await me.conn.request(
                "send",
                self.replies.expect(me, them, seq, scheduled, count_ok=True),
                to=them.id,
                text=message_text(self.worker, seq, scheduled),
            )
            tick += 1


class Flooder:
    """User 0 keeps ``inflight`` group sends unanswered; its readers check them."""

    def __init__(self, worker: Worker, group_id: int, readers: list[BenchUser]) -> None:
        self.worker = worker
        self.group_id = group_id
        self.readers = readers
        self.checker = DeliveryChecker()
        self.acked: list[int] = []
        self.ok_latencies = array("d")
        self.refused: Counter[str] = Counter()
        self.refused_latencies = array("d")
        self.retry_after: list[int] = []
        self.reader_latencies = array("d")
        self.last_reader: dict[int, float] = defaultdict(float)
        """Per message: from its request to its last reader."""
        self.last_receipt: dict[int, float] = defaultdict(float)
        self.ok_at: dict[int, float] = {}
        self.wrong_kind = 0

    def on_event(self, user: BenchUser, event: Json) -> None:
        now = time.monotonic()
        if event.get("type") != "group_message" or event.get("group_id") != self.group_id:
            self.wrong_kind += event.get("type") in ("message", "group_message")
            return
        seq, sent_at = parse_text(event["text"])
        if self.checker.received(user.id, int(event["from"]["id"]), seq):
            latency = now - sent_at
            self.reader_latencies.append(latency)
            self.last_reader[seq] = max(self.last_reader[seq], latency)
            self.last_receipt[seq] = now
        self.worker.count_received()

    async def run(self, sender: BenchUser, start: float, seconds: float) -> None:
        inflight = self.worker.config.inflight
        slots = trio.Semaphore(inflight)
        end = start + seconds
        seq = 0

        def answer(number: int, sent_at: float) -> Callable[[Json], None]:
            def got(reply: Json) -> None:
                slots.release()
                took = time.monotonic() - sent_at
                if reply.get("type") == "ok":
                    self.acked.append(number)
                    self.ok_latencies.append(took)
                    self.ok_at[number] = time.monotonic()
                    return
                self.refused[str(reply.get("code"))] += 1
                self.refused_latencies.append(took)
                if reply.get("retry_after_ms") is not None:
                    self.retry_after.append(int(reply["retry_after_ms"]))

            return got

        await sleep_until_monotonic(start)
        while True:
            # Only the wait for a free slot is cut short: a request is never cut mid-write.
            with trio.move_on_after(max(0.0, end - time.monotonic())) as waiting:
                await slots.acquire()
            if waiting.cancelled_caught or time.monotonic() >= end:
                if not waiting.cancelled_caught:
                    slots.release()
                break
            seq += 1
            sent_at = time.monotonic()
            await sender.conn.request(
                "group_send",
                answer(seq, sent_at),
                group_id=self.group_id,
                text=message_text(self.worker, seq, sent_at),
            )
            self.worker.count_sent()
        drain = self.worker.config.drain_seconds
        await wait_for(lambda: slots.value == inflight, drain)
        for reader in self.readers:
            for number in self.acked:
                self.checker.acked(reader.id, sender.id, number)
        await wait_for(lambda: self.checker.missing() == 0, drain)

    def results(self) -> dict[str, Any]:
        return {
            "readers": len(self.readers),
            "stored": len(self.acked),
            "refused": dict(self.refused),
            "ok_latencies": self.ok_latencies.tobytes(),
            "refused_latencies": self.refused_latencies.tobytes(),
            "retry_after_ms": self.retry_after,
            "delivered": self.checker.delivered,
            "reader_latencies": self.reader_latencies.tobytes(),
            "last_reader": list(self.last_reader.values()),
            # The sender's request may wait behind its own refused ones (the server reads
            # on later after a refusal): from its ``ok`` on is the delivery alone (0 when
            # the last reader had it before the sender had the ``ok``).
            "last_reader_after_ok": [
                max(0.0, at - self.ok_at[seq])
                for seq, at in self.last_receipt.items()
                if seq in self.ok_at
            ],
            "wrong_kind": self.wrong_kind,
            "verdict": self.checker.finish(),
        }


async def flood_load(worker: Worker) -> dict[str, Any]:
    """Process 0: the flooder (user 0) and the readers; process 1: the pair."""
    config = worker.config
    users = list(worker.job.users)
    flooding = worker.job.worker == 0
    readers = [index for index in users if index != 0] if flooding else []
    group_id = await open_group(worker, readers)
    if flooding:
        flooder = Flooder(worker, group_id, [worker.users[index] for index in readers])
        worker.on_event = flooder.on_event
        size = await member_count(worker.users[0], group_id)
    else:
        await worker.connect_all(users)
        pair = PairTraffic(worker, worker.users[users[0]], worker.users[users[1]])
        worker.on_event = pair.receipts.on_event
    phases: dict[str, Any] = {}
    start = await worker.sync()
    for phase in ("quiet", "flood"):
        if not flooding:
            phases[phase] = await pair.run(start, config.duration)
        elif phase == "flood":
            await flooder.run(worker.users[0], start, config.duration)
        else:
            await sleep_until_monotonic(start + config.duration)
        phases[phase + "_end"] = time.monotonic()
        if phase == "quiet":
            start = await worker.sync()
    if flooding:
        return {"member_count": size, **flooder.results(), **phases}
    return {**phases, "verdict": pair.receipts.checker.finish(), "wrong": pair.receipts.wrong_kind}


def flood(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    shares = [tuple(range(flood_readers(config) + 1)), flood_pair(config)]
    with Load("flood", config, (), progress, shares=shares) as load:
        load.go(max(load.gather()))  # the group's id, from process 0
        load.gather()  # readers joined, the pair logged in
        marks = [(cpu_seconds(config.cpu_pids), machine_ticks())]
        load.go_at()
        load.gather()  # the quiet phase is over
        marks.append((cpu_seconds(config.cpu_pids), machine_ticks()))
        load.go_at()
        flooder, pair = load.results()
        marks.append((cpu_seconds(config.cpu_pids), machine_ticks()))
    figures: Figures = {
        "group_size": config.group_size,
        "member_count": flooder["member_count"],
        "readers": flooder["readers"],
        "inflight": config.inflight,
        "duration": config.duration,
    }
    for number, phase in enumerate(("quiet", "flood")):
        part = pair[phase]
        figures[f"pair_{phase}"] = {
            "sent": part["sent"],
            "errors": part["errors"],
            "send_ok": _latency([part["acks"]]),
            "send_receipt": _latency([part["latencies"]]),
            **_cpu_between(marks[number], marks[number + 1]),
        }
    quiet_p99 = figures["pair_quiet"]["send_ok"]["p99_ms"]
    flood_p99 = figures["pair_flood"]["send_ok"]["p99_ms"]
    figures["pair_p99_ratio"] = round(flood_p99 / quiet_p99, 2) if quiet_p99 else None
    refused = sum(flooder["refused"].values())
    retry = sorted(flooder["retry_after_ms"])
    figures["group_sends"] = {
        "stored": flooder["stored"],
        "refused": flooder["refused"],
        "answered": flooder["stored"] + refused,
        "ok_latency": _latency([flooder["ok_latencies"]]),
        "refused_latency": _latency([flooder["refused_latencies"]]),
        "retry_after_ms": {"min": retry[0], "max": retry[-1]} if retry else None,
        "delivered": flooder["delivered"],
        "to_any_reader": _latency([flooder["reader_latencies"]]),
        "to_last_reader": attrs.asdict(LatencySummary.of(flooder["last_reader"])),
        "to_last_reader_after_ok": attrs.asdict(LatencySummary.of(flooder["last_reader_after_ok"])),
    }
    used = figures["pair_flood"].get("server_cpu_seconds")
    if flooder["stored"] and used is not None:
        figures["group_sends"]["server_cpu_ms_per_stored"] = round(
            used / flooder["stored"] * 1000, 2
        )
    verdict = Verdict()
    verdict.merge(flooder["verdict"])
    verdict.merge(pair["verdict"])
    errors = figures["pair_quiet"]["errors"] + figures["pair_flood"]["errors"]
    wrong = flooder["wrong_kind"] + pair["wrong"]
    return _finish(
        figures,
        verdict,
        f"{errors} of the pair's sends failed" if errors else "",
        f"{wrong} unexpected events" if wrong else "",
    )


def _cpu_between(start: tuple[Any, Any], end: tuple[Any, Any]) -> Figures:
    """The servers' CPU seconds and the machine's busy share between two marks."""
    figures: Figures = {}
    if start[0] is not None and end[0] is not None:
        figures["server_cpu_seconds"] = round(end[0].total - start[0].total, 3)
    if start[1] is not None and end[1] is not None:
        busy, total = end[1][0] - start[1][0], end[1][1] - start[1][1]
        figures["machine_cpu_busy"] = round(busy / total, 3) if total else None
    return figures


# --- stall ---------------------------------------------------------------------------


Key = tuple[int, int]
"""(sender id, the sender's message number)."""


@attrs.define
class Reading:
    """One login of the stalling device: what it read, in order (key and ``seq``, 0 for
    none), and the highest ``seq`` whose ``ack`` was answered ``ok``."""

    got: list[tuple[Key, int]] = attrs.field(factory=list)
    announced: int = 0
    offline: int = 0
    acked_seq: int = 0
    sent_seq: int = 0
    """The highest ``seq`` acknowledged so far (answered or not)."""
    cut_by_server: bool = False

    def acked(self) -> set[Key]:
        return {key for key, seq in self.got if seq and seq <= self.acked_seq}

    def result(self) -> dict[str, Any]:
        return {
            "announced": self.announced,
            "read": len(self.got),
            "offline": self.offline,
            "acked": len(self.acked()),
            "cut_by_server": self.cut_by_server,
        }


class StallReader:
    """The stalling device's logins: the first acknowledges the first tenth of what it
    reads, reads at least a twenty-fifth more (until its acks are answered), then stops
    reading; each later one reads and acknowledges everything as it goes."""

    def __init__(self, worker: Worker, total: int) -> None:
        self.worker = worker
        self.ack_first = max(1, total // 10)
        self.read_more = max(1, total // 25)
        self.readings: list[Reading] = []
        self.ack_errors = 0
        self.acks_refused = 0
        """Acks refused as above the last seq written, then sent again."""

    def on_event(self, user: BenchUser, event: Json) -> None:
        if not self.readings or user.conn.closed:
            return  # the connection of an earlier login
        reading = self.readings[-1]
        if event.get("type") == "error" and event.get("code") == "ack_timeout":
            reading.cut_by_server = True
        if event.get("type") != "message":
            return
        seq = int(event.get("seq") or 0)
        reading.got.append(((int(event["from"]["id"]), parse_text(event["text"])[0]), seq))
        reading.offline += event.get("offline") is True
        self.worker.count_received()
        if len(self.readings) > 1:
            if seq and seq - reading.sent_seq >= ACK_EVERY:
                self._ack(user, reading, seq)
            return
        read = len(reading.got)
        if seq and read <= self.ack_first and (read % 10 == 0 or read == self.ack_first):
            self._ack(user, reading, seq)
        # Stop once the acks were answered (their answers queue behind messages).
        if read >= self.ack_first + self.read_more and reading.acked_seq >= reading.sent_seq:
            user.conn.pause_reading()

    def _ack(self, user: BenchUser, reading: Reading, seq: int, tries: int = 3) -> None:
        """Acknowledge up to ``seq``; an ``ack`` refused as "above the last seq written"
        (a server that counts a frame written only once its whole batch was: the
        client can be quicker) is counted and sent again a little later."""
        reading.sent_seq = max(reading.sent_seq, seq)

        def got(reply: Json) -> None:
            if reply.get("type") == "ok":
                reading.acked_seq = max(reading.acked_seq, seq)
            elif reply.get("code") == "invalid_request" and tries > 1:
                self.acks_refused += 1
                self.worker.nursery.start_soon(self._ack_later, user, reading, seq, tries - 1)
            elif reply.get("code") != "bench_connection_lost":
                self.ack_errors += 1

        async def send() -> None:
            # Not ``call``: the first login stops reading, so its answer may never come.
            with contextlib.suppress(ConnectionLost):  # cut meanwhile
                await user.conn.request("ack", got, seq=seq)

        self.worker.nursery.start_soon(send)

    async def _ack_later(self, user: BenchUser, reading: Reading, seq: int, tries: int) -> None:
        await trio.sleep(ACK_RETRY_SECONDS)
        if not user.conn.closed:
            self._ack(user, reading, seq, tries)

    async def ack_meanwhile(self, user: BenchUser, reading: Reading) -> None:
        """A later login also acknowledges what it has read every ``ACK_TICK``."""
        while not user.conn.closed:
            await trio.sleep(ACK_TICK)
            latest = max((seq for _, seq in reading.got[-ACK_EVERY:]), default=0)
            if latest > reading.sent_seq:
                self._ack(user, reading, latest)

    def had(self, seqs: bool) -> set[Key]:
        """What the device has had: acknowledged (``ok``) on some login, or, from a
        server that writes no ``seq``, read."""
        had: set[Key] = set()
        for reading in self.readings:
            had |= reading.acked() if seqs else {key for key, _ in reading.got}
        return had


async def _login_again(worker: Worker, user: BenchUser, device: str) -> Json:
    """Log in with ``acks``, retrying while an earlier connection's session is still
    closing (``already_online``)."""
    deadline = time.monotonic() + RELOGIN_SECONDS
    while True:
        reply = await user.conn.call(
            "login", name=user.name, password=PASSWORD, device=device, acks=True
        )
        if reply.get("type") == "ok":
            user.id = int(reply["user"]["id"])
            return reply
        if reply.get("code") != "already_online" or time.monotonic() > deadline:
            raise BenchError(f"cannot log in again: {reply.get('code')}: {reply.get('message')}")
        await trio.sleep(0.2)


async def _read_again(worker: Worker, reader: StallReader, ok: set[Key], seqs: bool) -> None:
    """One more login of the device: read (and acknowledge) until it has everything,
    the server cut it, or it read all the login announced and nothing more came."""
    config = worker.config
    user = await worker.connect(worker.job.users[0], device=0)
    reading = Reading()
    reader.readings.append(reading)
    device = STALL_DEVICE.format(run_id=config.run_id)
    login = await _login_again(worker, user, device)
    reading.announced = int(login.get("offline", 0))
    worker.nursery.start_soon(reader.ack_meanwhile, user, reading)
    had = reader.had(seqs)

    def over() -> bool:
        read = {key for key, _ in reading.got}
        return user.conn.closed or ok <= had | read or len(reading.got) >= reading.announced

    await wait_for(over, config.drain_seconds)
    await trio.sleep(QUIET_SECONDS)  # repeats, or what a lossy server did not announce
    if not user.conn.closed and seqs and reading.got:
        latest = max(seq for _, seq in reading.got)
        with trio.move_on_after(QUIET_SECONDS):
            if (await user.conn.call("ack", seq=latest)).get("type") == "ok":
                reading.acked_seq = max(reading.acked_seq, latest)
    reading.cut_by_server = reading.cut_by_server or user.conn.closed
    await user.conn.aclose()


async def stall_load(worker: Worker) -> dict[str, Any]:
    """One process: user 0 stalls (see the module), the others send to it."""
    config = worker.config
    reader_index, *senders = worker.job.users
    await worker.connect_all(senders)
    first = await worker.connect(reader_index)
    reader = StallReader(worker, len(senders) * config.messages)
    reader.readings.append(Reading())
    worker.on_event = reader.on_event
    device = STALL_DEVICE.format(run_id=config.run_id)
    login = await worker.login(first, device=device, acks=True)
    reader.readings[0].announced = int(login.get("offline", 0))
    receipts = Receipts(worker)  # only for the send latencies
    replies = Replies(worker, receipts)
    ok: set[Key] = set()

    async def send_all(index: int) -> None:
        me = worker.users[index]
        for seq in range(1, config.messages + 1):
            sent_at = time.monotonic()
            expect = replies.expect(me, first, seq, sent_at, count_ok=True)

            def got(reply: Json, seq: int = seq, expect: Callable[[Json], None] = expect) -> None:
                expect(reply)
                if reply.get("type") == "ok":
                    ok.add((me.id, seq))

            await me.conn.request("send", got, to=first.id, text=message_text(worker, seq, sent_at))

    start = await worker.sync()
    await sleep_until_monotonic(start)
    async with trio.open_nursery() as nursery:
        for index in senders:
            nursery.start_soon(send_all, index)
    await wait_for(lambda: replies.outstanding == 0, config.drain_seconds)
    sends_done = time.monotonic()
    await trio.sleep(STALL_SETTLE)
    reader.readings[0].cut_by_server |= first.conn.closed
    await first.conn.aclose()
    seqs = any(seq for _, seq in reader.readings[0].got)
    for _ in range(MAX_LOGINS):
        await _read_again(worker, reader, ok, seqs)
        if ok <= reader.had(seqs) or not reader.readings[-1].got:
            break  # everything had, or nothing more comes
    return {
        "sent": len(ok),
        "send_errors": replies.errors,
        "unanswered": replies.outstanding,
        "acks": replies.acks.tobytes(),
        "sends_seconds": sends_done - start,
        "seqs": seqs,
        "logins": [reading.result() for reading in reader.readings],
        "ack_errors": reader.ack_errors,
        "acks_refused": reader.acks_refused,
        "complete": ok <= reader.had(seqs),
        **stall_verdict(ok, reader.readings, seqs),
    }


def stall_verdict(ok: set[Key], readings: list[Reading], seqs: bool) -> dict[str, Any]:
    """What the logins got, against what was ``ok``'d (see the module). Without
    ``seq`` (version 1), a message read counts as had."""
    verdict = Verdict()
    had: set[Key] = set()
    owed: set[Key] = set()
    """Read and not acknowledged on a login: must come again on a later one."""
    seen: set[Key] = set()
    acked_again = came_again = repeats = 0
    for reading in readings:
        keys = [key for key, _ in reading.got]
        counts = Counter(keys)
        repeats += sum(count - 1 for count in counts.values())
        acked_again += len(counts.keys() & had)
        came_again += len(counts.keys() & owed)
        acked = reading.acked() if seqs else set(counts)
        owed = (owed - counts.keys()) | (counts.keys() - acked)
        had |= acked
        seen |= counts.keys()
        last: dict[int, int] = {}
        for sender, number in keys:
            if number < last.get(sender, 0):
                verdict.out_of_order += 1
                verdict.note(f"message {number} of user {sender} came after {last[sender]}")
            last[sender] = max(last.get(sender, 0), number)
    lost = ok - seen
    not_again = (owed & ok) if seqs else set()
    verdict.lost = len(lost) + len(not_again)
    verdict.duplicates = acked_again + repeats
    verdict.unexpected = len(seen - ok)
    for what, missing in (("never read", lost), ("read, not acknowledged, not again", not_again)):
        if missing:
            verdict.note(f"{what}: {len(missing)}, e.g. {sorted(missing)[:3]}")
    first = readings[0]
    return {
        "lost": len(lost),
        "not_again": len(not_again),
        "acked_again": acked_again,
        "unacked_first": len(first.got) - len(first.acked()) if seqs else 0,
        "came_again": came_again,
        "repeats": repeats,
        "verdict": verdict,
    }


def stall(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    with Load("stall", config, (), progress, shares=[tuple(range(config.users))]) as load:
        load.gather()
        load.go_at()
        (result,) = load.results()
    verdict = result.pop("verdict")
    figures: Figures = {
        "senders": config.users - 1,
        "messages": config.messages,
        **{k: v for k, v in result.items() if k != "acks"},
        "send_ok": _latency([result["acks"]]),
    }
    figures["acks_given"] = figures.pop("seqs")
    problems = [
        f"{result['send_errors']} sends failed" if result["send_errors"] else "",
        f"{result['ack_errors']} acks failed" if result["ack_errors"] else "",
        f"{result['acks_refused']} acks of a seq read refused (above the last seq written)"
        if result["acks_refused"]
        else "",
        ""
        if result["complete"]
        else f"{len(result['logins']) - 1} logins after the stall did not bring everything",
    ]
    if not figures["acks_given"]:
        # Version 1: nothing can be acknowledged; what was written and not read is lost.
        problems.append("the server wrote no seq: it does not know acks (protocol 1.2)")
    return _finish(figures, verdict, *problems)


# --- multidevice ---------------------------------------------------------------------

DEVICE_KEY = 64
"""Checker keys: a device's is its user id times this plus its number."""


async def multidevice_load(worker: Worker) -> dict[str, Any]:
    config = worker.config
    users = list(worker.job.users)
    limiter = trio.CapacityLimiter(config.login_concurrency)
    devices: dict[int, list[BenchUser]] = defaultdict(list)

    async def log_in(index: int, device: int) -> None:
        async with limiter:
            user = await worker.connect(index, None if device == 0 else device)
            await worker.login(user, register_missing=device == 0, device=f"d{device}")
            devices[index].append(user)
            worker.count_sent()

    with trio.fail_after(config.setup_seconds):
        for first in (True, False):  # the first device registers a missing account
            async with trio.open_nursery() as nursery:
                for index in users:
                    for device in [0] if first else range(1, config.devices):
                        nursery.start_soon(log_in, index, device)
    targets = targets_of(worker, users)
    checker = DeliveryChecker()
    to_recipients = array("d")
    own_copies = array("d")
    last_receipt = 0.0
    wrong = 0

    def on_event(user: BenchUser, event: Json) -> None:
        nonlocal last_receipt, wrong
        now = time.monotonic()
        if event.get("type") != "message":
            wrong += event.get("type") == "group_message"
            return
        seq, sent_at = parse_text(event["text"])
        sender = int(event["from"]["id"])
        own = sender == user.id and event.get("to") != user.id
        key = user.id * DEVICE_KEY + user.device
        if checker.received(key, -sender if own else sender, seq):
            (own_copies if own else to_recipients).append(now - sent_at)
        last_receipt = now
        worker.count_received()

    worker.on_event = on_event
    acks = array("d")
    errors = 0

    async def sender(index: int) -> None:
        nonlocal errors
        me, them = worker.users[index], worker.users[targets[index]]
        for seq in range(1, config.messages + 1):
            sent_at = time.monotonic()
            reply = await me.conn.call("send", to=them.id, text=message_text(worker, seq, sent_at))
            if reply.get("type") != "ok":
                errors += 1
                continue
            acks.append(time.monotonic() - sent_at)
            worker.count_sent()
            for device in range(config.devices):
                checker.acked(them.id * DEVICE_KEY + device, me.id, seq)
                if device and them is not me:  # a message to oneself is no copy
                    checker.acked(me.id * DEVICE_KEY + device, -me.id, seq)

    start = await worker.sync(len(users))
    await sleep_until_monotonic(start)
    async with trio.open_nursery() as nursery:
        for index in users:
            nursery.start_soon(sender, index)
    sends_done = time.monotonic()
    await wait_for(lambda: checker.missing() == 0, config.drain_seconds)
    return {
        "start": start,
        "sends_done": sends_done,
        "sent": len(acks),
        "errors": errors,
        "acks": acks.tobytes(),
        "last_receipt": last_receipt,
        "delivered": checker.delivered,
        "to_recipients": to_recipients.tobytes(),
        "own_copies": own_copies.tobytes(),
        "wrong": wrong,
        "verdict": checker.finish(),
    }


def multidevice(config: BenchConfig, progress: TextIO | None, server_pid: int | None) -> Figures:
    with Load("multidevice", config, range(config.users), progress) as load:
        load.gather()
        cpu_before, machine_before = cpu_seconds(config.cpu_pids), machine_ticks()
        start = load.go_at()
        results = load.results()
        cpu_after, machine_after = cpu_seconds(config.cpu_pids), machine_ticks()
    sent = sum(result["sent"] for result in results)
    delivered = sum(result["delivered"] for result in results)
    last = max(result["last_receipt"] for result in results)
    figures: Figures = {
        "users": config.users,
        "devices": config.devices,
        "sent": sent,
        "delivered": delivered,
        "expected": sent * (2 * config.devices - 1),
        "sends_per_second": _rate(sent, max(r["sends_done"] for r in results) - start),
        "delivered_per_second": _rate(delivered, last - start),
        "latency": _latency(
            blob for result in results for blob in (result["to_recipients"], result["own_copies"])
        ),
        "to_recipients": _latency(result["to_recipients"] for result in results),
        "own_copies": _latency(result["own_copies"] for result in results),
        "ack_latency": _latency(result["acks"] for result in results),
    }
    _with_cpu(figures, (cpu_before, cpu_after), (machine_before, machine_after))
    errors = sum(result["errors"] for result in results)
    wrong = sum(result["wrong"] for result in results)
    return _finish(
        figures,
        _verdict(results),
        f"{errors} sends failed" if errors else "",
        f"{wrong} unexpected events" if wrong else "",
    )


Scenario = Callable[[BenchConfig, "TextIO | None", "int | None"], Figures]
SCENARIOS: dict[str, Scenario] = {"flood": flood, "stall": stall, "multidevice": multidevice}
LOADS: dict[str, Callable[[Worker], Awaitable[Any]]] = {
    "flood": flood_load,
    "stall": stall_load,
    "multidevice": multidevice_load,
}
