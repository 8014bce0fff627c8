"""A password-guessing flood against an honest user's login (issue 14).

    scripts/bench-guessing [--database URL] [--connections 300] [--seconds 15]

(``python -m chat.bench.guessing`` in the checkout's .venv.)

Starts a real ``chat-server serve`` process on a fresh database for each of three
floods of wrong-password logins from ``--connections`` connections, each
connection sending its next guess as soon as the previous one is answered, while
an honest user logs in and out with the right password every 0.25 s:

1. ``one account, one address``: every guess is for the same account
   (``victim``), from loopback (trusted, as in the issue's measurement). The
   account throttle lets about five through per minute, before any hashing.
2. ``many names, one address``: every guess names a different account (what no
   per-account throttle can stop), all from one untrusted client address. The
   node runs with ``--proxy-protocol --trusted-addresses ''`` and each
   connection of this script sends a PROXY header naming its address: the
   attacker is 203.0.113.66, the honest user 198.51.100.7. The address budget
   (20 per minute) stops the flood.
3. ``many names, many addresses``: the same, each guessing connection from an
   address of its own (a botnet): only the bound on the hashing queue protects
   the honest login, which may itself be told ``rate_limited`` (it then waits
   ``retry_after_ms`` and tries again; the time counted is until it is logged in).

The honest user has logged in once before the flood (an account in use: its
password checks go before those of names nobody uses, issue 24). Each honest login
is timed from the request to the reply (including retries). Prints, per flood:
guesses answered per second by code, and the honest logins' p50, p90, p99 and max,
and whether the p99 is under 1 s (issue 24's target, over a minute of flood:
``--seconds 60``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import trio

from chat.client import ChatClient, ChatError, client_over

from .local import free_port, fresh_database

TARGET_SECONDS = 1.0
PASSWORD = "right-password"


async def start_server(url: str, port: int, log: Path, *flags: str) -> trio.Process:
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "chat", "serve", "--port", str(port), "--database", url, *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("CHAT_")},
        )
    output = trio.Path(log)
    with trio.fail_after(60):
        while f"port {port}" not in await output.read_text(errors="replace"):
            if process.returncode is not None:
                raise RuntimeError((await output.read_text(errors="replace"))[-2000:])
            await trio.sleep(0.1)
    return process


@contextlib.asynccontextmanager
async def dial(port: int, address: str | None) -> AsyncIterator[ChatClient]:
    """A client; with ``address``, the connection first says (PROXY v1) it comes from there."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    if address is not None:
        await stream.send_all(f"PROXY TCP4 {address} 127.0.0.1 40000 {port}\r\n".encode())
    async with client_over(stream) as c:
        yield c


@attrs.frozen
class Scenario:
    title: str
    flags: tuple[str, ...] = ()
    one_account: bool = False
    attacker: Callable[[int], str | None] = lambda n: None
    """The client address of guessing connection ``n`` (None: no PROXY header)."""
    honest: Callable[[int], str | None] = lambda k: None
    """The client address of the honest user's ``k``-th login (each on a connection of
    its own: honest users are many people, each well within the address budget)."""


SCENARIOS = [
    Scenario("one account, one address (loopback)", one_account=True),
    Scenario(
        "many names, one address",
        ("--proxy-protocol", "--trusted-addresses", ""),
        attacker=lambda n: "203.0.113.66",
        honest=lambda k: f"198.51.100.{k % 250 + 1}",
    ),
    Scenario(
        "many names, many addresses",
        ("--proxy-protocol", "--trusted-addresses", ""),
        attacker=lambda n: f"10.{n // 250}.{n % 250}.1",
        honest=lambda k: f"198.51.100.{k % 250 + 1}",
    ),
]


async def flood(
    port: int, connections: int, seconds: float, scenario: Scenario
) -> tuple[Counter[str], list[float]]:
    """Guesses from ``connections`` connections for ``seconds``; an honest user's logins
    meanwhile."""
    answers: Counter[str] = Counter()
    honest: list[float] = []
    refusals: Counter[str] = Counter()
    names = itertools.count()

    async def guesser(n: int) -> None:
        async with dial(port, scenario.attacker(n)) as c:
            while True:
                name = "victim" if scenario.one_account else f"ghost-{next(names)}"
                reply = await c.request("login", name=name, password="wrong")
                answers[reply.get("code", reply["type"])] += 1

    async def honest_user() -> None:
        for k in itertools.count(1):
            async with dial(port, scenario.honest(k)) as c:
                started = time.perf_counter()
                while True:
                    reply = await c.request("login", name="honest", password=PASSWORD)
                    if reply["type"] == "ok":
                        break
                    if reply["code"] != "rate_limited":
                        raise RuntimeError(f"honest login failed: {reply}")
                    refusals[reply["message"]] += 1
                    await trio.sleep(reply["retry_after_ms"] / 1000)
                honest.append(time.perf_counter() - started)
                await c.call("logout")
            await trio.sleep(0.25)

    async with trio.open_nursery() as nursery:
        for n in range(connections):
            nursery.start_soon(guesser, n)
        await trio.sleep(1)  # the flood is under way
        nursery.start_soon(honest_user)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    if refusals:
        print(f"  honest logins refused: {dict(refusals)}")
    return answers, honest


def report(title: str, answers: Counter[str], honest: list[float], seconds: float) -> None:
    total = sum(answers.values())
    rates = ", ".join(f"{code} {count / seconds:.0f}/s" for code, count in answers.most_common())
    print(f"{title}: {total} guesses answered in {seconds + 1:.0f} s ({rates})")
    if not honest:
        print("  honest login: none completed")
        return
    ordered = sorted(honest)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    within = p99 < TARGET_SECONDS
    print(
        f"  honest password login ({len(honest)}): p50 {statistics.median(honest) * 1000:.0f} ms,"
        f" p90 {p90 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(honest) * 1000:.0f} ms"
        f" -> {'met' if within else 'NOT met'} (p99 under {TARGET_SECONDS:g} s)"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for number, scenario in enumerate(SCENARIOS, 1):
            if args.only and number not in args.only:
                continue
            fresh_database(args.database)
            port = free_port()
            process = await start_server(
                args.database, port, Path(directory) / "server.log", *scenario.flags
            )
            try:
                async with dial(port, scenario.honest(0)) as c:
                    for name in ("victim", "honest"):
                        with contextlib.suppress(ChatError):
                            await c.call("register", name=name, password=PASSWORD)
                    # The honest user has used the account before (its checks go first).
                    await c.call("login", name="honest", password=PASSWORD)
                answers, honest = await flood(port, args.connections, args.seconds, scenario)
                report(scenario.title, answers, honest, args.seconds)
            finally:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="mysql://root@127.0.0.1:3306/chat_bench_guessing")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--only", type=int, action="append", help="run this flood only (1, 2, 3); repeatable"
    )
    trio.run(main, parser.parse_args())


if __name__ == "__main__":
    cli()
