"""Login/logout churn on a cluster: do leases lapse, do friends hear of it?

    python -m chat.bench.churn --ports 6000,6001 --prefix P --users 1000 --watchers 20
        --duration 60 [--metrics http://127.0.0.1:9100/metrics,...]

Accounts ``P-c0`` .. (churners) and ``P-w0`` .. (watchers), every churner a friend of
one watcher (``P-c{i}`` of ``P-w{i % watchers}``), made beforehand (``import-users``,
with the benchmark's password). The watchers log in and stay, spread over the ports.
Every churner, for ``--duration`` seconds: connects to the next port in turn, logs in
(one device), stays a random 0.2-2 s, logs out (every other time; else it just
closes the connection) and closes; again. A login right after a close may find the
previous session not yet gone (``already_online``): counted, and tried again later.

Counted: cycles, logins refused (by code), and for each churner the presence events
its watcher got (``Heard``): a churner that logged in N times is announced online and
offline at most N times each; more is *spurious*; and it must be seen offline at the
end. From each node's
``/metrics``: leases re-created, store retries, store calls busy or timed out; the
script also counts the servers' log lines "leases had lapsed".
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
import urllib.request
from collections import defaultdict
from typing import Any

import attrs
import trio

from chat.client import ChatError, ConnectionLost, connect

from .model import PASSWORD

SETTLE_SECONDS = 20.0
"""After the churn: how long to wait for the last presence events to arrive."""
STAY = (0.2, 2.0)
"""A churner stays logged in this long (seconds, uniform)."""


class Watch:
    """The presence events of every churner, as their watchers got them."""

    def __init__(self) -> None:
        self.events: dict[str, list[bool]] = defaultdict(list)
        self.changed = trio.Event()

    def heard(self, event: dict[str, Any]) -> None:
        if event.get("type") == "presence":
            self.events[event["user"]["name"]].append(bool(event["online"]))
            self.changed.set()
            self.changed = trio.Event()


async def _watcher(name: str, port: int, watch: Watch, ready: trio.Event, done: trio.Event) -> None:
    async with connect("127.0.0.1", port) as c:
        await c.call("login", name=name, password=PASSWORD)
        ready.set()
        while not done.is_set():
            with trio.move_on_after(0.5):
                watch.heard(await c.events.receive())
        while True:  # what is already here
            try:
                watch.heard(c.events.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break


async def _churner(
    name: str, ports: list[int], until: float, logins: dict[str, int], refused: dict[str, int]
) -> None:
    turn = random.randrange(len(ports))
    while time.monotonic() < until:
        port = ports[turn % len(ports)]
        turn += 1
        failed: str | None = None
        try:
            async with connect("127.0.0.1", port) as c:
                try:
                    await c.call("login", name=name, password=PASSWORD)
                    logins[name] += 1
                    await trio.sleep(random.uniform(*STAY))
                    if turn % 2:  # every other session ends with ``logout``, the rest just close
                        await c.call("logout")
                except ChatError as exc:
                    failed = exc.code
                except ConnectionLost:
                    failed = "connection"
        except OSError:
            failed = "connect"
        if failed is not None:
            refused[failed] += 1
            await trio.sleep(0.5)


@attrs.frozen
class Heard:
    """What a churner's watcher heard, against its ``logins`` (one session at a time)."""

    extra: int
    """Events beyond online and offline once per login: spurious pairs (a lease
    re-created and released again announces one)."""
    repeated: int
    """Events that repeat the state announced before (an offline overtaken by the next
    online, coming from another node: the newest state wins, by design)."""
    unsettled: bool
    """The last state heard is not offline (every churner has logged out by now), or an
    event is still on its way."""

    @classmethod
    def of(cls, heard: list[bool], logins: int) -> Heard:
        previous = [False, *heard[:-1]]
        repeated = sum(1 for before, now in zip(previous, heard, strict=True) if before == now)
        return cls(
            extra=max(0, len(heard) - 2 * logins),
            repeated=repeated,
            unsettled=(bool(heard) and heard[-1]) or (logins > 0 and not heard),
        )


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(chat_[a-z_]+_total)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match:
            found[match[1]] = found.get(match[1], 0.0) + float(match[3])
    return found


async def run(args: argparse.Namespace) -> int:
    ports = [int(port) for port in args.ports.split(",")]
    churners = [f"{args.prefix}-c{i}" for i in range(args.users)]
    watchers = [f"{args.prefix}-w{i}" for i in range(args.watchers)]
    urls = [url for url in args.metrics.split(",") if url]
    before = [await trio.to_thread.run_sync(_metrics, url) for url in urls]
    watch = Watch()
    logins: dict[str, int] = defaultdict(int)
    refused: dict[str, int] = defaultdict(int)
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        for index, name in enumerate(watchers):
            ready = trio.Event()
            nursery.start_soon(_watcher, name, ports[index % len(ports)], watch, ready, done)
            await ready.wait()
        started = time.monotonic()
        until = started + args.duration
        async with trio.open_nursery() as churn:
            for name in churners:
                churn.start_soon(_churner, name, ports, until, logins, refused)
        elapsed = time.monotonic() - started
        # Wait until every churner's events are complete (or the settling time is over).
        with trio.move_on_after(SETTLE_SECONDS):
            while any(Heard.of(watch.events[n], logins[n]).unsettled for n in churners):
                await watch.changed.wait()
        done.set()
    after = [await trio.to_thread.run_sync(_metrics, url) for url in urls]
    spurious = repeated = unsettled = 0
    examples: list[str] = []
    for name in churners:
        heard = Heard.of(watch.events[name], logins[name])
        spurious += heard.extra
        repeated += heard.repeated
        unsettled += heard.unsettled
        if (heard.extra or heard.unsettled) and len(examples) < 3:
            sequence = "".join("+" if online else "-" for online in watch.events[name])
            examples.append(f"{name}: {logins[name]} logins, heard {sequence}")
    cycles = sum(logins.values())

    def delta(metric: str) -> int:
        pairs = zip(after, before, strict=True)
        return int(sum(a.get(metric, 0) - b.get(metric, 0) for a, b in pairs))

    out = sys.stdout
    out.write(
        f"churn: {args.users} users on {len(ports)} nodes for {elapsed:.0f} s: "
        f"{cycles} logins ({cycles / elapsed:.0f}/s), refused {dict(refused) or 0}\n"
    )
    out.write(
        f"presence to {args.watchers} watchers: {2 * cycles} changes, {spurious} spurious "
        f"(beyond one online and one offline per login), {repeated} repeated (an offline "
        f"overtaken by the next online from the other node), {unsettled} churners not "
        f"seen offline at the end\n"
    )
    for example in examples:
        out.write(f"  e.g. {example}\n")
    if urls:
        out.write(
            f"servers: leases re-created {delta('chat_leases_recreated_total')}, "
            f"store retries {delta('chat_store_retries_total')}, "
            f"busy {delta('chat_store_busy_total')}, "
            f"timeouts {delta('chat_store_timeouts_total')}\n"
        )
    failed = spurious or unsettled or set(refused) - {"already_online"}
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", default="6000,6001")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--watchers", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--metrics", default="", help="comma-separated /metrics URLs")
    return trio.run(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
