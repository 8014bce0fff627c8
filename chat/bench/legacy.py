"""The same load through protocol v1 and through the legacy port, side by side.

Issue 13's target: the original system's clients (``--legacy-port``) get within
10 % of protocol v1 on the same load, with nothing lost, repeated or reordered.
This runs each load once per protocol, in alternating rounds (so a slower moment
of the machine does not favour one side), against servers already running:

- ``direct``: every user sends ``--messages`` one-to-one messages at once to one
  partner (a permutation: each user also receives from exactly one sender), on the
  same node (``--route same``) or on another one (``--route cross``, needs two ports);
- ``group``: groups of ``--group-size``; every member sends ``--messages`` at once;
- ``offline``: half the users are logged out while the other half sends them
  ``--messages`` each (over v1, acknowledged, so all are stored); then they log in
  through the protocol measured and get everything (legacy: in the login ack and
  right after it).

Every delivery is checked: each sender's messages arrive at each recipient exactly
once and in order; a failure makes the exit status 1. The figures are deliveries
per second (from the first send, or the first login, to the last delivery) and the
median and 99th percentile of send-to-delivery latency.

    .venv/bin/python -m chat.bench.legacy --ports 6000,6002 --legacy-ports 6001,6003
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

Json = dict[str, Any]
PASSWORD = "bench-secret"
DEADLINE = 120.0
REGISTERING = 8
"""Connections registering the users at once (each registration is one scrypt)."""


class Conn:
    """One connection of either protocol; objects from the server end with ``\\n``
    (v1 always, legacy as our server writes them)."""

    def __init__(self, stream: trio.SocketStream, legacy: bool) -> None:
        self.stream = stream
        self.legacy = legacy
        self.on_object: Callable[[Json], None] = lambda obj: None

    @classmethod
    async def open(cls, port: int, legacy: bool, nursery: trio.Nursery) -> Conn:
        conn = cls(await trio.open_tcp_stream("127.0.0.1", port), legacy)
        nursery.start_soon(conn._read)
        return conn

    async def send(self, obj: Json) -> None:
        end = b"\0" if self.legacy else b"\n"
        await self.stream.send_all(json.dumps(obj, separators=(",", ":")).encode() + end)

    async def send_many(self, objs: list[Json]) -> None:
        end = b"\0" if self.legacy else b"\n"
        data = b"".join(json.dumps(o, separators=(",", ":")).encode() + end for o in objs)
        await self.stream.send_all(data)

    async def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = await self.stream.receive_some(65_536)
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.on_object(json.loads(line))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def aclose(self) -> None:
        await self.stream.aclose()


class Tally:
    """Deliveries: per (recipient, sender, kind) the sequence numbers in arrival order."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.seqs: dict[tuple[int, int, str], list[int]] = defaultdict(list)
        self.latencies: list[float] = []
        self.done = trio.Event()
        self.last = 0.0

    def add(self, recipient: int, sender: int, kind: str, text: str) -> None:
        seq, sent_at = text.split(":")[1:3]
        now = time.perf_counter()
        self.latencies.append(now - float(sent_at))
        self.seqs[(recipient, sender, kind)].append(int(seq))
        self.count += 1
        self.last = now
        if self.count >= self.expected:
            self.done.set()

    def problems(self, per_pair: int) -> list[str]:
        bad = []
        for key, seqs in self.seqs.items():
            if seqs != list(range(per_pair)):
                bad.append(f"{key}: {seqs[:10]}... ({len(seqs)})")
        if self.count != self.expected:
            bad.append(f"{self.count} delivered, {self.expected} expected")
        return bad


def delivery(obj: Json) -> tuple[int, str, str] | None:
    """(sender id, kind, text) of a delivered message in either protocol."""
    if obj.get("type") == "message":
        return obj["from"]["id"], "d", obj["text"]
    if obj.get("type") == "group_message":
        return obj["from"]["id"], f"g{obj['group_id']}", obj["text"]
    if obj.get("msgid") == 6:
        return obj["id"], "d", obj["msg"]
    if obj.get("msgid") == 10:
        return obj["id"], f"g{obj['groupid']}", obj["msg"]
    return None


class Bench:
    def __init__(self, args: argparse.Namespace, nursery: trio.Nursery) -> None:
        self.args = args
        self.nursery = nursery
        self.ids: list[int] = []
        self.names: list[str] = []
        self.groups: list[tuple[int, list[int]]] = []  # group id, member indexes

    def port(self, index: int, legacy: bool) -> int:
        ports: list[str] = self.args.legacy_ports if legacy else self.args.ports
        return int(ports[index % len(ports)])

    async def setup(self) -> None:
        args = self.args
        prefix = f"lb{int(time.time()) % 100000}x"
        self.names = [f"{prefix}{i}" for i in range(args.users)]
        self.ids = [0] * args.users

        async def register_some(first: int, step: int) -> None:
            conn = await Conn.open(self.port(first, False), False, self.nursery)
            replies: trio.MemorySendChannel[Json]
            replies, incoming = trio.open_memory_channel[Json](1_000)
            conn.on_object = lambda obj: replies.send_nowait(obj) if "type" in obj else None
            for i in range(first, args.users, step):
                await conn.send({"type": "register", "name": self.names[i], "password": PASSWORD})
                reply = await incoming.receive()
                assert reply["type"] == "ok", reply
                self.ids[i] = reply["user"]["id"]
            await conn.aclose()

        async with trio.open_nursery() as registering:
            for lane in range(REGISTERING):
                registering.start_soon(register_some, lane, REGISTERING)
        # Groups: member indexes 0..size-1, size..2*size-1, ...; the first creates it.
        size = args.group_size
        for start in range(0, args.users - size + 1, size):
            members = list(range(start, start + size))
            conns = await self.login_all(members, legacy=False)
            got, seen = trio.open_memory_channel[Json](1_000)

            def ok_only(obj: Json, got: trio.MemorySendChannel[Json] = got) -> None:
                if obj.get("type") == "ok":
                    got.send_nowait(obj)

            for c in conns.values():
                c.on_object = ok_only
            first = conns[members[0]]
            await first.send({"type": "create_group", "name": f"{prefix}g{start}"})
            group_id = (await seen.receive())["group"]["id"]
            for m in members[1:]:
                await conns[m].send({"type": "join_group", "group_id": group_id})
                await seen.receive()
            self.groups.append((group_id, members))
            await self.close_all(conns)

    async def login_all(self, indexes: list[int], legacy: bool) -> dict[int, Conn]:
        conns: dict[int, Conn] = {}
        done = trio.Event()
        left = [len(indexes)]

        async def log_in(i: int, pause: float = 0.0) -> None:
            await trio.sleep(pause)
            if legacy:
                await conns[i].send({"msgid": 1, "id": self.ids[i], "password": PASSWORD})
            else:
                await conns[i].send({"type": "login", "id": self.ids[i], "password": PASSWORD})

        def acked(obj: Json, *, i: int) -> None:
            if obj.get("type") in ("ok", "error") or obj.get("msgid") == 2:
                if obj.get("code") == "already_online" or obj.get("errno") == 2:
                    # The previous load's connection is still being released: again soon.
                    self.nursery.start_soon(log_in, i, 0.1)
                    return
                assert obj.get("type") == "ok" or obj.get("errno") == 0, obj
                left[0] -= 1
                if not left[0]:
                    done.set()

        for i in indexes:
            conn = await Conn.open(self.port(i, legacy), legacy, self.nursery)
            conn.on_object = partial(acked, i=i)
            conns[i] = conn
            await log_in(i)
        with trio.fail_after(DEADLINE):
            await done.wait()
        return conns

    async def close_all(self, conns: dict[int, Conn]) -> None:
        for conn in conns.values():
            await conn.aclose()
        await trio.sleep(0.3)  # let the nodes release the users before the next login

    def partner(self, i: int) -> int:
        nodes = len(self.args.ports)
        n: int = self.args.users
        if self.args.route == "cross" and nodes > 1:
            return (i + 1) % n if i % 2 == 0 else (i - 1) % n
        return (i + nodes) % n if (i // nodes) % 2 == 0 else (i - nodes) % n

    def send_obj(self, legacy: bool, i: int, to: int | None, group: int | None, seq: int) -> Json:
        text = f"{i}:{seq}:{time.perf_counter():.6f}"
        if legacy:
            base = {"id": self.ids[i], "name": self.names[i], "msg": text, "time": ""}
            if group is None:
                return {"msgid": 6, "toid": to, **base}
            return {"msgid": 10, "groupid": group, **base}
        if group is None:
            return {"type": "send", "to": to, "text": text}
        return {"type": "group_send", "group_id": group, "text": text}

    def listen(self, conns: dict[int, Conn], tally: Tally) -> None:
        for i, conn in conns.items():
            recipient = self.ids[i]

            def on_object(obj: Json, recipient: int = recipient) -> None:
                got = delivery(obj)
                if got is not None:
                    tally.add(recipient, got[0], got[1], got[2])
                elif obj.get("msgid") == 2:
                    for text in obj.get("offlinemsg", []):
                        inner = delivery(json.loads(text))
                        assert inner is not None
                        tally.add(recipient, inner[0], inner[1], inner[2])
                elif obj.get("type") == "error":
                    raise AssertionError(obj)

            conn.on_object = on_object

    async def run(self, load: str, legacy: bool) -> Json:
        args = self.args
        m = args.messages
        if load == "direct":
            users = list(range(args.users))
            conns = await self.login_all(users, legacy)
            tally = Tally(len(users) * m)
            self.listen(conns, tally)
            start = time.perf_counter()
            async with trio.open_nursery() as senders:
                for i in users:
                    to = self.ids[self.partner(i)]
                    objs = [self.send_obj(legacy, i, to, None, s) for s in range(m)]
                    senders.start_soon(conns[i].send_many, objs)
            per_pair = m
        elif load == "group":
            members = [i for _, group in self.groups for i in group]
            conns = await self.login_all(members, legacy)
            size = args.group_size
            tally = Tally(len(members) * (size - 1) * m)
            self.listen(conns, tally)
            start = time.perf_counter()
            async with trio.open_nursery() as senders:
                for group_id, group in self.groups:
                    for i in group:
                        objs = [self.send_obj(legacy, i, None, group_id, s) for s in range(m)]
                        senders.start_soon(conns[i].send_many, objs)
            per_pair = m
        else:  # offline
            senders_ = [i for i in range(args.users) if i < self.partner(i)]
            receivers = [self.partner(i) for i in senders_]
            sconns = await self.login_all(senders_, legacy=False)
            left = [len(senders_) * m]
            stored = trio.Event()

            def ok(obj: Json) -> None:
                if obj.get("type") == "ok":
                    left[0] -= 1
                    if not left[0]:
                        stored.set()

            for c in sconns.values():
                c.on_object = ok
            for i in senders_:
                to = self.ids[self.partner(i)]
                await sconns[i].send_many([self.send_obj(False, i, to, None, s) for s in range(m)])
            with trio.fail_after(DEADLINE):
                await stored.wait()
            await self.close_all(sconns)
            tally = Tally(len(receivers) * m)
            start = time.perf_counter()
            conns = {}
            for i in receivers:
                conn = await Conn.open(self.port(i, legacy), legacy, self.nursery)
                conns[i] = conn
            self.listen(conns, tally)
            for i, conn in conns.items():
                if legacy:
                    await conn.send({"msgid": 1, "id": self.ids[i], "password": PASSWORD})
                else:
                    await conn.send({"type": "login", "id": self.ids[i], "password": PASSWORD})
            per_pair = m
        with trio.move_on_after(DEADLINE):
            await tally.done.wait()
        await trio.sleep(0.2)  # anything repeated would arrive now
        problems = tally.problems(per_pair)
        await self.close_all(conns)
        elapsed = (tally.last or time.perf_counter()) - start
        latencies = sorted(tally.latencies)
        return {
            "load": load,
            "protocol": "legacy" if legacy else "v1",
            "deliveries": tally.count,
            "seconds": round(elapsed, 3),
            "per_second": round(tally.count / elapsed) if elapsed > 0 else 0,
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
            "problems": problems[:5],
        }


async def amain(args: argparse.Namespace) -> int:
    failed = False
    results: dict[tuple[str, str], list[Json]] = defaultdict(list)
    async with trio.open_nursery() as nursery:
        bench = Bench(args, nursery)
        await bench.setup()
        for round_ in range(args.rounds):
            for load in args.loads:
                order = (False, True) if round_ % 2 == 0 else (True, False)
                for legacy in order:
                    result = await bench.run(load, legacy)
                    results[(load, result["protocol"])].append(result)
                    failed = failed or bool(result["problems"])
                    print(json.dumps({"round": round_ + 1, "route": args.route, **result}))
        nursery.cancel_scope.cancel()
    print(
        f"\n{'load':8} {'route':6} {'v1 /s':>9} {'legacy /s':>10} {'ratio':>6}"
        f" {'v1 p50':>7} {'leg p50':>8}"
    )
    for load in args.loads:
        v1 = results[(load, "v1")]
        leg = results[(load, "legacy")]
        v1_rate = statistics.median(r["per_second"] for r in v1)
        leg_rate = statistics.median(r["per_second"] for r in leg)
        v1_p50 = statistics.median(r["p50_ms"] or 0 for r in v1)
        leg_p50 = statistics.median(r["p50_ms"] or 0 for r in leg)
        print(
            f"{load:8} {args.route:6} {v1_rate:9.0f} {leg_rate:10.0f} "
            f"{leg_rate / v1_rate if v1_rate else 0:6.2f} {v1_p50:7.1f} {leg_p50:8.1f}"
        )
    if failed:
        print("a delivery was lost, repeated or reordered: see the problems above")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-legacy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=lambda t: t.split(","), default=["6000"])
    parser.add_argument("--legacy-ports", type=lambda t: t.split(","), default=["6001"])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--route", choices=["same", "cross"], default="same")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--loads", type=lambda t: t.split(","), default=["direct", "group", "offline"]
    )
    args = parser.parse_args(argv)
    if len(args.ports) != len(args.legacy_ports):
        parser.error("give as many --legacy-ports as --ports (the same nodes)")
    if args.users % (2 * len(args.ports)):
        parser.error("--users must be a multiple of twice the number of nodes")
    return trio.run(amain, args)


if __name__ == "__main__":
    sys.exit(main())
