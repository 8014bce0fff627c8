"""Twenty thousand connections opening and closing at once, against another user's
ping and the node's lease renewals (issue 14).

    scripts/bench-connections [--connections 19900] [--database URL] [--redis URL]

(``python -m chat.bench.connections`` in the checkout's .venv.)

Starts a real ``chat-server serve`` process (MariaDB, Redis: presence leases are
what a stalled node loses) and logs one honest user in, who pings every 50 ms
throughout. Then, from this process, ``--connections`` idle TCP connections are
opened at once (as fast as the kernel accepts them), held for ``--hold`` seconds,
and closed at once. Prints the honest user's ping latency (p50, p99, max) in each
phase (idle, opening, held, closing, after), whether any ping went over 200 ms,
whether the node's log shows a lease in doubt (``pausing``, ``no lease renewal``)
or an eviction, and whether the honest user is still logged in at the end.

The default of 19,900 connections is what fits under this machine's file limit
of 20,000 per process (it cannot be raised here); each side holds one descriptor
per connection.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from chat.client import connect
from chat.store import dialect_for

TARGET_MS = 200.0
PING_EVERY = 0.05
CONNECT_AT_ONCE = 2_000
"""Connections being opened at once (more only fill the listen backlog)."""
LEASE_TROUBLE = ("pausing", "no lease renewal", "logged in elsewhere", "leases had lapsed")


def fresh_database(url: str) -> None:
    dialect = dialect_for(url)
    admin = dialect_for(url.rsplit("/", 1)[0] + "/mysql")
    conn = admin.connect()
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{dialect.database}`")  # type: ignore[attr-defined]
    conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pings:
    def __init__(self) -> None:
        self.phase = "idle"
        self.samples: dict[str, list[float]] = {}

    def add(self, ms: float) -> None:
        self.samples.setdefault(self.phase, []).append(ms)


async def main(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fresh_database(args.database)
    port = free_port()
    prefix = f"bench-conn-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "server.log"
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                [
                    *(sys.executable, "-m", "chat", "serve", "--port", str(port)),
                    *("--database", args.database, "--redis", args.redis),
                    *("--redis-prefix", prefix, "--node-id", "bench-node"),
                    *("--log-level", "WARNING"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith("CHAT_")},
            )
        try:
            output = trio.Path(log)
            with trio.fail_after(60):
                while True:
                    try:
                        async with connect("127.0.0.1", port) as probe:
                            await probe.call("ping")
                        break
                    except OSError:
                        if process.returncode is not None:
                            raise RuntimeError(await output.read_text()) from None
                        await trio.sleep(0.2)
            await run_phases(args, port)
            text = await output.read_text(errors="replace")
            trouble = [line for line in text.splitlines() if any(t in line for t in LEASE_TROUBLE)]
            print(f"lease trouble in the node's log: {len(trouble)} lines")
            for line in trouble[:10]:
                print("  " + line)
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def run_phases(args: argparse.Namespace, port: int) -> None:
    pings = Pings()
    async with connect("127.0.0.1", port) as honest, trio.open_nursery() as nursery:
        await honest.call("register", name="honest", password="pw")
        await honest.call("login", name="honest", password="pw")

        async def pinger() -> None:
            while True:
                started = time.perf_counter()
                await honest.call("ping")
                pings.add((time.perf_counter() - started) * 1000)
                await trio.sleep(PING_EVERY)

        nursery.start_soon(pinger)
        await trio.sleep(2)
        streams: list[trio.SocketStream] = []
        failed = 0
        pings.phase = "opening"
        started = time.perf_counter()
        limiter = trio.CapacityLimiter(CONNECT_AT_ONCE)

        async def open_one() -> None:
            nonlocal failed
            async with limiter:
                try:
                    streams.append(await trio.open_tcp_stream("127.0.0.1", port))
                except OSError:
                    failed += 1

        async with trio.open_nursery() as openers:
            for _ in range(args.connections):
                openers.start_soon(open_one)
        opened_in = time.perf_counter() - started
        print(
            f"opened {len(streams)} connections in {opened_in:.1f} s"
            + (f" ({failed} failed)" if failed else "")
        )
        pings.phase = "held"
        await trio.sleep(args.hold)
        pings.phase = "closing"
        started = time.perf_counter()
        for stream in streams:
            stream.socket.close()  # all at once: no await between them
        print(f"closed them in {time.perf_counter() - started:.2f} s (client side)")
        await trio.sleep(args.after)
        pings.phase = "after"
        await trio.sleep(2)
        still = await honest.request("find_user", name="honest")
        nursery.cancel_scope.cancel()
    worst = 0.0
    for phase in ("idle", "opening", "held", "closing", "after"):
        values = pings.samples.get(phase, [])
        if not values:
            continue
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        worst = max(worst, max(values))
        print(
            f"ping while {phase:8} ({len(values):4} pings):"
            f" p50 {statistics.median(values):6.1f} ms, p99 {p99:6.1f} ms,"
            f" max {max(values):6.1f} ms"
        )
    verdict = "met" if worst < TARGET_MS else "NOT met"
    print(f"every ping under {TARGET_MS:.0f} ms: {verdict} (max {worst:.0f} ms)")
    logged_in = still.get("type") == "ok" and still["user"]["online"] is True
    print(f"honest user still logged in and online at the end: {logged_in}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=19_900)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=8.0)
    parser.add_argument("--database", default="mysql://root@127.0.0.1:3306/chat_bench_conns")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    trio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()
