"""``scripts/chaos``: faults under traffic on a local HA set-up, and what users saw.

Starts a set-up of its own (``chat.bench.ha_servers``: three Galera members, a Redis
master with two replicas, three Sentinels, on free ports, in a temporary folder) and
two chat nodes (``python -m chat serve``) on it. Pairs of users chat across the two
nodes (each sender on one node, its recipient on the other), each send with a
``cid`` and retried with the same ``cid`` while the answer is ``unavailable``, as a
client should. Then, one after the other:

1. ``redis-kill``: SIGKILL the Redis master (the Sentinels promote a replica); the
   old master is started again later and rejoins as a replica;
2. ``galera-kill``: SIGKILL the Galera member the nodes write to;
3. ``galera-rejoin``: start it again (it rejoins by state transfer);
4. ``galera-stop``: SIGSTOP the member the nodes write to now, for 10 s, then SIGCONT.

Per fault it prints: the time without service (the first ``unavailable`` after the
fault to the first ``ok`` after it, and the longest stretch without any ``ok`` from the
fault on), the messages ``ok``'d and delivered, lost (``ok``'d, never delivered: must
be 0), duplicates, per-sender order broken, and connections closed.

``--steady SECONDS`` measures instead: the same traffic, every sender sending again as
soon as it has its ``ok``, first on the HA set-up and then on a single MariaDB (no
Galera) and a single Redis started the same way, and prints the rates, their ratio
and the CPU seconds per message of the chat nodes, the database and Redis
(docs/cluster.md, the capacity model).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pymysql
import trio

from chat.client import ChatClient, ConnectionLost, connect

from .ha_servers import GaleraNode, HaSetup, Ports, Process, RedisNode, free_ports

REQUEST_SECONDS = 30.0
"""A request without an answer this long counts as failed (and is retried)."""
RETRY_SECONDS = 0.05
SEND_INTERVAL = 0.1
"""Pause between one sender's sends in the fault run (10 per second per sender)."""


@attrs.define
class Sent:
    sender: int
    message_id: int
    phase: str
    began: float
    answered: float


@attrs.define
class Tally:
    """Everything the users saw, with times (``time.monotonic``)."""

    sent: list[Sent] = attrs.Factory(list)
    unavailable: list[tuple[float, str]] = attrs.Factory(list)
    oks: list[float] = attrs.Factory(list)
    received: dict[int, list[int]] = attrs.Factory(lambda: defaultdict(list))
    """receiver index -> message ids in arrival order."""
    closed: list[tuple[float, str]] = attrs.Factory(list)
    phase: str = "warm-up"
    phase_started: dict[str, float] = attrs.Factory(dict)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_started[phase] = time.monotonic()


@attrs.frozen
class Node:
    process: Process
    port: int


def _python() -> str:
    return sys.executable


def start_node(directory: Path, name: str, database: str, redis_url: str) -> Node:
    port = free_ports(1)[0]
    process = Process(
        name,
        directory,
        [
            _python(),
            *("-m", "chat", "serve", "--host", "127.0.0.1", "--port", str(port)),
            *("--node-id", name, "--database", database, "--redis", redis_url),
            *("--log-level", "INFO", "--request-rate", "100000", "--request-burst", "100000"),
        ],
    )
    process.start()
    deadline = time.monotonic() + 60
    while "listening on" not in process.log_file.read_text(errors="replace"):
        if process.pid is None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: see {process.log_file}")
        time.sleep(0.1)
    return Node(process, port)


def migrate(database: str, directory: Path) -> None:
    with open(directory / "migrate.log", "ab") as log:
        subprocess.run(
            [_python(), "-m", "chat", "migrate", "--database", database],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def written_member(setup: HaSetup, database: str) -> GaleraNode:
    """The Galera member holding the chat nodes' connections (the one written to)."""
    counts: dict[int, int] = {}
    for node in setup.galera:
        try:
            conn = pymysql.connect(
                host="127.0.0.1", port=node.port, user="root", connect_timeout=1, read_timeout=2
            )
        except pymysql.err.MySQLError:
            continue
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s",
                    (database,),
                )
                row = cursor.fetchone()
                counts[node.index] = int(row[0]) if row else 0
        except pymysql.err.MySQLError:
            continue
        finally:
            conn.close()
    index = max(counts, key=lambda i: counts[i])
    return setup.galera[index]


# --- the users -------------------------------------------------------------------------


async def _account(port: int, name: str) -> int:
    async with connect("127.0.0.1", port) as c:
        reply = await c.call("register", name=name, password="secret")
        return int(reply["user"]["id"])


async def _session(port: int, name: str, tally: Tally, job: Any) -> None:
    """Log in on ``port`` and run ``job(client)``; again after a closed connection."""
    while True:
        try:
            async with connect("127.0.0.1", port) as c:
                while (await c.request("login", name=name, password="secret"))["type"] != "ok":  # noqa: ASYNC110
                    await trio.sleep(0.2)  # unavailable, or the old session still holds it
                await job(c)
                return
        except (ConnectionLost, OSError, trio.BrokenResourceError) as exc:
            tally.closed.append((time.monotonic(), f"{name}: {exc}"))
            await trio.sleep(0.2)


async def _sender(
    c: ChatClient, index: int, to: int, tally: Tally, stop: trio.Event, interval: float
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        cid = f"s{index}-{i}"
        began = time.monotonic()
        phase = tally.phase
        while True:
            reply: dict[str, Any] | None = None
            with trio.move_on_after(REQUEST_SECONDS):
                reply = await c.request("send", to=to, text=f"{index}/{i}", cid=cid)
            now = time.monotonic()
            if reply is not None and reply["type"] == "ok":
                tally.oks.append(now)
                tally.sent.append(Sent(index, int(reply["message_id"]), phase, began, now))
                break
            code = "timeout" if reply is None else str(reply.get("code"))
            if code not in ("unavailable", "timeout"):
                raise RuntimeError(f"send refused: {reply}")
            tally.unavailable.append((now, code))
            await trio.sleep(RETRY_SECONDS)
        if interval:
            await trio.sleep(interval)


async def _receiver(c: ChatClient, index: int, tally: Tally, stop: trio.Event) -> None:
    while not stop.is_set():
        with trio.move_on_after(1):
            event = await c.events.receive()
            if event.get("type") == "message":
                tally.received[index].append(int(event["message_id"]))


async def traffic(
    nodes: Sequence[Node],
    pairs: int,
    tally: Tally,
    stop_sending: trio.Event,
    stop_receiving: trio.Event,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``pairs`` senders, half on each node, each writing to a recipient on the other."""
    tag = uuid.uuid4().hex[:6]
    ids: dict[str, int] = {}
    for k in range(pairs):
        for role in ("s", "r"):
            name = f"{role}{k}{tag}"
            ids[name] = await _account(nodes[0].port, name)
    async with trio.open_nursery() as nursery:
        for k in range(pairs):
            receiver_node = nodes[(k + 1) % 2]

            async def receive_job(c: ChatClient, k: int = k) -> None:
                await _receiver(c, k, tally, stop_receiving)

            nursery.start_soon(_session, receiver_node.port, f"r{k}{tag}", tally, receive_job)
        await trio.sleep(1.0)  # the recipients are logged in before anything is sent
        for k in range(pairs):
            sender_node = nodes[k % 2]

            async def send_job(c: ChatClient, k: int = k) -> None:
                await _sender(c, k, ids[f"r{k}{tag}"], tally, stop_sending, interval)
                await stop_receiving.wait()

            nursery.start_soon(_session, sender_node.port, f"s{k}{tag}", tally, send_job)
        task_status.started()


# --- the fault run ---------------------------------------------------------------------


def report(tally: Tally, faults: Sequence[str]) -> dict[str, Any]:
    delivered: dict[int, int] = defaultdict(int)
    order_broken = 0
    for arrived in tally.received.values():
        for message_id in arrived:
            delivered[message_id] += 1
    for arrived in tally.received.values():
        # One sender per receiver: its messages must arrive in increasing id order.
        firsts = list(dict.fromkeys(arrived))
        order_broken += sum(1 for a, b in itertools.pairwise(firsts) if b < a)
    results: dict[str, Any] = {}
    phases = ["warm-up", *faults]
    for n, phase in enumerate(phases):
        start = tally.phase_started.get(phase, 0.0)
        end = float("inf")
        if n + 1 < len(phases):
            end = tally.phase_started.get(phases[n + 1], end)
        in_phase = [s for s in tally.sent if s.phase == phase]
        ids = {s.message_id for s in in_phase}
        unavailable = [t for t, _ in tally.unavailable if start <= t < end]
        oks = sorted(t for t in tally.oks if t >= start)
        first_unavailable = unavailable[0] if unavailable else None
        back = None
        if first_unavailable is not None:
            after = [t for t in oks if t > first_unavailable]
            back = after[0] - first_unavailable if after else None
        window = [start, *[t for t in oks if t < end], min(end, oks[-1] if oks else start)]
        longest = max((b - a for a, b in itertools.pairwise(window)), default=0.0)
        results[phase] = {
            "unavailable_to_ok_s": round(back, 2) if back is not None else 0.0,
            "longest_without_ok_s": round(longest, 2),
            "refusals": len(unavailable),
            "ok": len(in_phase),
            "delivered": sum(1 for i in ids if delivered.get(i)),
            "lost": sum(1 for i in ids if not delivered.get(i)),
            "duplicates": sum(delivered.get(i, 1) - 1 for i in ids if delivered.get(i)),
            "closed": sum(1 for t, _ in tally.closed if start <= t < end),
        }
    results["order_broken"] = order_broken
    return results


async def fault_run(
    setup: HaSetup, nodes: Sequence[Node], database: str, pairs: int
) -> dict[str, Any]:
    tally = Tally()
    tally.enter("warm-up")
    stop_sending, stop_receiving = trio.Event(), trio.Event()
    faults = ["redis-kill", "galera-kill", "galera-rejoin", "galera-stop"]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            traffic, nodes, pairs, tally, stop_sending, stop_receiving, SEND_INTERVAL
        )
        await trio.sleep(8)

        old = setup.redis_master()
        print(f"fault: SIGKILL the Redis master {old.name} (:{old.port})", file=sys.stderr)
        tally.enter("redis-kill")
        old.signal(signal.SIGKILL)
        await trio.sleep(12)
        await trio.to_thread.run_sync(old.wait_gone)
        old.start()  # rejoins as a replica of the new master
        await trio.sleep(5)

        member = await trio.to_thread.run_sync(written_member, setup, database)
        print(f"fault: SIGKILL the written Galera member {member.name}", file=sys.stderr)
        tally.enter("galera-kill")
        member.signal(signal.SIGKILL)
        await trio.sleep(15)

        print(f"fault: {member.name} rejoins", file=sys.stderr)
        tally.enter("galera-rejoin")
        await trio.to_thread.run_sync(member.wait_gone)
        await trio.to_thread.run_sync(member.join)
        await trio.to_thread.run_sync(member.wait_synced)
        await trio.sleep(5)

        member = await trio.to_thread.run_sync(written_member, setup, database)
        print(f"fault: SIGSTOP the written Galera member {member.name} for 10 s", file=sys.stderr)
        tally.enter("galera-stop")
        member.signal(signal.SIGSTOP)
        await trio.sleep(10)
        member.signal(signal.SIGCONT)
        await trio.sleep(20)

        stop_sending.set()
        await trio.sleep(15)  # the last deliveries
        stop_receiving.set()
    return report(tally, faults)


# --- the steady run -------------------------------------------------------------------


async def steady_run(
    nodes: Sequence[Node], pairs: int, seconds: float, servers: dict[str, Sequence[Process]]
) -> dict[str, Any]:
    tally = Tally()
    stop_sending, stop_receiving = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(traffic, nodes, pairs, tally, stop_sending, stop_receiving, 0.0)
        await trio.sleep(3)  # warm up
        count0 = len(tally.sent)
        cpu0 = {
            role: sum(cpu_seconds(p.pid) for p in processes) for role, processes in servers.items()
        }
        started = time.monotonic()
        await trio.sleep(seconds)
        elapsed = time.monotonic() - started
        count = len(tally.sent) - count0
        cpu = {
            role: sum(cpu_seconds(p.pid) for p in processes) - cpu0[role]
            for role, processes in servers.items()
        }
        stop_sending.set()
        await trio.sleep(5)
        stop_receiving.set()
    figures = report(tally, [])["warm-up"]
    return {
        "messages": count,
        "rate": round(count / elapsed, 1),
        "cpu_ms_per_message": {
            role: round(1000 * used / max(count, 1), 3) for role, used in cpu.items()
        },
        "lost": figures["lost"],
        "duplicates": figures["duplicates"],
    }


def single_setup(directory: Path) -> tuple[GaleraNode, RedisNode, str, str]:
    """One MariaDB without Galera and one Redis, on ports of their own."""
    ports = Ports.free()
    setup = HaSetup(directory, ports)
    db = setup.galera[0]
    db.config.write_text(
        "\n".join(
            line
            for line in db.config.read_text().splitlines()
            if not line.startswith(("wsrep", "binlog_format"))
        )
        + "\nwsrep_on=OFF\n"
    )
    db.initialise()
    db.start()
    redis_node = setup.redis[0]
    redis_node.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            pymysql.connect(host="127.0.0.1", port=db.port, user="root", connect_timeout=1).close()
            break
        except pymysql.err.MySQLError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the single MariaDB did not start: {db.tail()}") from None
            time.sleep(0.2)
    return (
        db,
        redis_node,
        f"mysql://root@127.0.0.1:{db.port}/chat_steady",
        f"redis://127.0.0.1:{redis_node.port}/0",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pairs", type=int, default=6, help="users sending (and receiving), default 6"
    )
    parser.add_argument(
        "--steady", type=float, metavar="SECONDS", help="measure rates instead of faults"
    )
    parser.add_argument(
        "--dir", type=Path, help="keep data and logs here (default: a temporary folder)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="with --steady: HA then single, this many times"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="chat-chaos-"))
    directory.mkdir(parents=True, exist_ok=True)
    started: list[Process] = []
    try:
        setup = HaSetup(directory / "ha", Ports.free())
        started += setup.processes()
        print(f"starting the HA set-up in {setup.directory}", file=sys.stderr)
        setup.up()
        database_name = f"chat_chaos_{uuid.uuid4().hex[:8]}"
        database = setup.database_url(database_name)
        migrate(database, directory)
        nodes = [
            start_node(directory, name, database, setup.redis_url())
            for name in ("node-a", "node-b")
        ]
        started += [n.process for n in nodes]
        failed = False
        if args.steady is None:
            results = trio.run(fault_run, setup, nodes, database_name, args.pairs)
        else:
            master = setup.redis_master()
            written = written_member(setup, database_name)
            ha_roles: dict[str, Sequence[Process]] = {
                "chat nodes": [n.process for n in nodes],
                "database": setup.galera,
                "database (written member)": [written],
                "redis": [master],
            }
            db, redis_node, single_db, single_redis = single_setup(directory / "single")
            started += [db, redis_node]
            migrate(single_db, directory)
            single_nodes = [
                start_node(directory, name, single_db, single_redis)
                for name in ("single-a", "single-b")
            ]
            started += [n.process for n in single_nodes]
            single_roles: dict[str, Sequence[Process]] = {
                "chat nodes": [n.process for n in single_nodes],
                "database": [db],
                "redis": [redis_node],
            }
            # Alternated, so that a change of the machine's load hits both alike.
            runs: dict[str, list[dict[str, Any]]] = {"ha": [], "single": []}
            for _ in range(args.rounds):
                for name, run_nodes, roles in (
                    ("ha", nodes, ha_roles),
                    ("single", single_nodes, single_roles),
                ):
                    runs[name].append(
                        trio.run(partial(steady_run, run_nodes, args.pairs, args.steady, roles))
                    )
            rates = {name: sum(r["rate"] for r in rs) / len(rs) for name, rs in runs.items()}
            results = {
                "ha": runs["ha"],
                "single": runs["single"],
                "ratio": round(rates["ha"] / max(rates["single"], 0.1), 2),
            }
            failed = any(r["lost"] or r["duplicates"] for rs in runs.values() for r in rs)
        results["load_1min_at_end"] = os.getloadavg()[0]
        text = json.dumps(results, indent=2)
        print(text)
        if args.json is not None:
            args.json.write_text(text + "\n")
        if args.steady is None:
            failed = any(
                isinstance(v, dict) and (v.get("lost") or v.get("duplicates"))
                for v in results.values()
            )
        return 1 if failed else 0
    finally:
        for process in reversed(started):
            process.stop()
        if args.dir is None:
            # The data folders are hundreds of MB (Galera's caches): keep only the logs.
            for data in directory.glob("**/galera[0-9]"):
                if data.is_dir():
                    shutil.rmtree(data, ignore_errors=True)
        print(f"logs in {directory}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
