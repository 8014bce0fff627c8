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

It also prints the server's resident memory (``VmRSS``) before the connections
open and while they are held, and the difference per connection. With ``--tls``
the node gets a certificate made on the spot (openssl, self-signed for
127.0.0.1) and every idle connection completes a TLS handshake (verifying it)
before it is held: the memory of an idle TLS connection beside a plain one.
``--login-timeout`` is passed to the node (its default, 60 s, closes connections
that do not log in: give more when opening them takes longer than that).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from chat.client import connect, tls_context

from .local import free_port, fresh_database

TARGET_MS = 200.0
PING_EVERY = 0.05
CONNECT_AT_ONCE = 2_000
"""Connections being opened at once (more only fill the listen backlog)."""
TLS_AT_ONCE = 200
"""TLS handshakes under way at once (each is CPU on both sides, not a wait)."""
LEASE_TROUBLE = ("pausing", "no lease renewal", "logged in elsewhere", "leases had lapsed")


class Pings:
    """Latencies by phase, from the pinger process's lines (``wall_time latency_ms``)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = [(0.0, "idle")]
        self.samples: dict[str, list[float]] = {}

    def mark(self, phase: str) -> None:
        self.marks.append((time.time(), phase))

    def add(self, at: float, ms: float) -> None:
        phase = [name for start, name in self.marks if start <= at][-1]
        self.samples.setdefault(phase, []).append(ms)


async def pinger(port: int, ca_file: str | None) -> None:
    """The honest user, in a process of its own (so the opener's busy event loop does
    not delay reading its replies): logs in, then pings every 50 ms, printing when
    each ping was sent and how long it took; on stdin's end, says whether it is still
    logged in and online."""
    context = tls_context(ca_file) if ca_file else None
    async with connect("127.0.0.1", port, ssl_context=context) as honest:
        await honest.call("register", name="honest", password="pw")
        await honest.call("login", name="honest", password="pw")
        print("ready", flush=True)
        async with trio.open_nursery() as nursery:

            async def ping() -> None:
                while True:
                    at = time.time()
                    started = time.perf_counter()
                    await honest.call("ping")
                    print(f"{at} {(time.perf_counter() - started) * 1000}", flush=True)
                    await trio.sleep(PING_EVERY)

            nursery.start_soon(ping)
            await trio.to_thread.run_sync(sys.stdin.read)
            nursery.cancel_scope.cancel()
        still = await honest.request("find_user", name="honest")
        online = still.get("type") == "ok" and still["user"]["online"] is True
        print(f"online {online}", flush=True)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (the clients trust it as CA)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def main(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fresh_database(args.database)
    port = free_port()
    prefix = f"bench-conn-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "server.log"
        tls: list[str] = []
        context = None
        if args.tls:
            cert, key = make_certificate(Path(directory))
            tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
            context = tls_context(str(cert))
            args.ca_file = str(cert)  # for the pinger
        timeout = ["--login-timeout", str(args.login_timeout)] if args.login_timeout else []
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                [
                    *(sys.executable, "-m", "chat", "serve", "--port", str(port)),
                    *("--database", args.database, "--redis", args.redis),
                    *("--redis-prefix", prefix, "--node-id", "bench-node"),
                    *("--log-level", "WARNING", *tls, *timeout),
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
                        async with connect("127.0.0.1", port, ssl_context=context) as probe:
                            await probe.call("ping")
                        break
                    except OSError:
                        if process.returncode is not None:
                            raise RuntimeError(await output.read_text()) from None
                        await trio.sleep(0.2)
            await run_phases(args, port, process.pid, context)
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


async def run_phases(
    args: argparse.Namespace, port: int, server_pid: int, context: ssl.SSLContext | None
) -> None:
    pings = Pings()
    pinger_args = ["--ping", str(port)] + (["--tls", "--ca-file", args.ca_file] if context else [])
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "chat.bench.connections", *pinger_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdin is not None
    lines: list[str] = []
    ready = trio.Event()

    async def read_lines() -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
            if "ready" in lines:
                ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_lines)
        with trio.fail_after(30):
            await ready.wait()
        await trio.sleep(2)
        rss_before = rss_kib(server_pid)
        streams: list[trio.SocketStream] = []
        secured: list[trio.SSLStream[trio.SocketStream]] = []
        failed = 0
        pings.mark("opening")
        started = time.perf_counter()
        limiter = trio.CapacityLimiter(CONNECT_AT_ONCE if context is None else TLS_AT_ONCE)

        async def open_one() -> None:
            nonlocal failed
            async with limiter:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    failed += 1
                    return
                streams.append(stream)
                if context is not None:
                    tls = trio.SSLStream(stream, context, server_hostname="127.0.0.1")
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError:
                        failed += 1
                        return
                    secured.append(tls)

        async with trio.open_nursery() as openers:
            for _ in range(args.connections):
                openers.start_soon(open_one)
        opened_in = time.perf_counter() - started
        print(
            f"opened {len(streams)} connections in {opened_in:.1f} s"
            + (f" ({failed} failed)" if failed else "")
        )
        pings.mark("held")
        await trio.sleep(args.hold)
        rss_held = rss_kib(server_pid)
        held = len(secured) if context is not None else len(streams)
        print(
            f"server memory (VmRSS): {rss_before / 1024:,.1f} MiB before, "
            f"{rss_held / 1024:,.1f} MiB with {held:,} idle"
            f" {'TLS' if context is not None else 'plain'} connections: "
            f"{(rss_held - rss_before) / max(held, 1):,.1f} KiB per connection"
        )
        pings.mark("closing")
        started = time.perf_counter()
        for stream in streams:
            stream.socket.close()  # all at once: no await between them
        print(f"closed them in {time.perf_counter() - started:.2f} s (client side)")
        await trio.sleep(args.after)
        pings.mark("after")
        await trio.sleep(2)
        await process.stdin.aclose()
        with trio.fail_after(30):
            await process.wait()
        nursery.cancel_scope.cancel()
    online = False
    for line in lines:
        if line.startswith("online "):
            online = line == "online True"
        elif line != "ready":
            at, ms = line.split()
            pings.add(float(at), float(ms))
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
    print(f"honest user still logged in and online at the end: {online}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=19_900)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=8.0)
    parser.add_argument("--database", default="mysql://root@127.0.0.1:3306/chat_bench_conns")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--tls", action="store_true", help="TLS on the node and every connection")
    parser.add_argument(
        "--login-timeout", type=float, help="the node's --login-timeout (default: its own)"
    )
    parser.add_argument("--ping", type=int, help=argparse.SUPPRESS)  # the pinger process
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)  # the pinger's, with --tls
    args = parser.parse_args()
    if args.ping:
        trio.run(pinger, args.ping, args.ca_file if args.tls else None)
    else:
        trio.run(main, args)


if __name__ == "__main__":
    cli()
