"""``chat-bench``: drive a running server or cluster and print what it can carry.

Prints one summary block per scenario and, last, one JSON line with every
figure (``{"chat_bench": 1, "ok": ..., "results": {...}}``). Exit status: 0
when every check passed, 1 when a delivery was lost, repeated or reordered (or
requests failed), 2 when the run could not be done at all.

Scale-out: with ``--ports`` naming one node per port, the one-to-one scenarios
(``direct``, ``open``, ``burst``) report their figures per route as well
(``results[name]["routes"]["same"|"cross"]``), and ``--route same|cross`` makes
every message stay on its sender's port or leave it.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from .devices import SCENARIOS as DEVICE_SCENARIOS
from .model import (
    DEFAULT_PREFIX,
    ROUTE_CHOICES,
    BenchConfig,
    PlanError,
    PresencePlan,
    check_plan,
)
from .report import describe, json_line
from .runner import LoadFailed
from .scenarios import ALL, ONE_TO_ONE, Figures
from .scenarios import SCENARIOS as BASE_SCENARIOS
from .worker import raise_file_limit

SCENARIOS = {**BASE_SCENARIOS, **DEVICE_SCENARIOS}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write ports as 6000,6002") from None
    if not ports or not all(0 < port < 65536 for port in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: write ports as 6000,6002")
    return ports


def _pids(text: str) -> tuple[int, ...]:
    try:
        pids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write pids as 1234,5678") from None
    if not all(pid > 0 for pid in pids):
        raise argparse.ArgumentTypeError(f"{text!r}: write pids as 1234,5678")
    return pids


def _scenarios(text: str) -> list[str]:
    names: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if name == "all":
            names.extend(ALL)
        elif name in SCENARIOS:
            names.append(name)
        else:
            choices = ", ".join([*SCENARIOS, "all"])
            raise argparse.ArgumentTypeError(f"unknown scenario {name!r} (choose from {choices})")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-bench",
        description="Load a running chat server or cluster over TCP with simulated users; "
        "check every delivery; print a summary and one JSON line of figures.",
        epilog="Scenarios: auth = registrations and logins per second; direct = closed loop, "
        "every user sends --messages messages to one other user, each after the last ok; "
        "open = --rate sends per second in total for --duration s, on a fixed schedule; "
        "burst = every user writes its --messages sends at once, pipelined, all users "
        "starting together (delivered/s from the start to the last delivery); group = "
        "fan-out to --group-size members; offline = messages kept for logged-out users, "
        "drained at login; capacity = --users idle logged-in connections; resume = token "
        "logins per second: every user logs in with its session token --messages times on a "
        "new connection each, then as often on one connection (login, logout). "
        "presence = --changers users with --friends friends each log out and in (--rounds "
        "times), timed until every friend was told. "
        "flood = one member keeps --inflight group sends unanswered for --duration s while "
        "two other users exchange a message each way every 0.1 s (before and during the "
        "flood); stall = a device with acks stops reading while --users - 1 senders send "
        "it --messages each, is cut off and logs in again: nothing lost, nothing "
        "acknowledged comes again; multidevice = every user logged in as --devices devices "
        "spread over --ports, every message to each device of the recipient and a copy to "
        "each other device of the sender. "
        "With several --ports (say one per cluster node), direct, open and burst also "
        "report each route: same (sender and recipient on one port) and cross.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="server or load balancer address")
    parser.add_argument(
        "--tls", action="store_true", help="TLS to every port, verifying the server"
    )
    parser.add_argument("--ca-file", help="with --tls: PEM of the authority to trust")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="with --tls: do not verify the server's certificate (a warning says so)",
    )
    parser.add_argument(
        "--ports",
        type=_ports,
        default=(6000,),
        help="comma-separated ports; user i connects to the (i mod n)-th one, and every load "
        "process gets users on each port (default 6000)",
    )
    parser.add_argument(
        "--scenario",
        type=_scenarios,
        default=list(ALL),
        help="comma-separated: auth, direct, open, burst, group, offline, capacity, resume, "
        "presence, flood, stall, multidevice, or all "
        "(= auth,direct,open,group,offline; default all)",
    )
    parser.add_argument(
        "--users",
        type=_positive_int,
        default=100,
        help="simulated users (for capacity: connections to hold; default 100)",
    )
    parser.add_argument(
        "--messages",
        type=_positive_int,
        default=100,
        help="messages per sender (direct, burst, offline), to the group (group), or reconnects"
        " per user (resume); default 100",
    )
    parser.add_argument(
        "--route",
        choices=ROUTE_CHOICES,
        default="any",
        help="direct, open, burst: whom a sender picks. any = the next user of a ring "
        "(default); same = a user on the sender's own port; cross = a user on another "
        "port (needs two ports or more)",
    )
    parser.add_argument("--group-size", type=_positive_int, default=50, help="default 50")
    parser.add_argument(
        "--online",
        type=_positive_int,
        default=None,
        help="group, flood: members logged in to read, besides the sender (default: all of "
        "them for group, 50 for flood); the others are members who stay offline, which only "
        "a group made beforehand has (its name is PREFIX-gSIZE, creator PREFIX-u0, e.g. from "
        "chat-server import-users)",
    )
    parser.add_argument(
        "--inflight",
        type=_positive_int,
        default=50,
        help="flood: group_send requests kept unanswered at once (default 50)",
    )
    parser.add_argument(
        "--devices",
        type=_positive_int,
        default=3,
        help="multidevice: devices logged in per user, dealt over --ports (default 3)",
    )
    parser.add_argument(
        "--rate",
        type=_positive,
        default=1000.0,
        help="open loop: messages per second offered, in total (default 1000)",
    )
    parser.add_argument(
        "--group-rate",
        type=_non_negative,
        default=0.0,
        help="group messages per second; 0 = closed loop (default)",
    )
    parser.add_argument(
        "--duration", type=_positive, default=10.0, help="open loop: seconds (default 10)"
    )
    parser.add_argument("--procs", type=_positive_int, default=1, help="load processes (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="shuffles who sends to whom")
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="account names are PREFIX-u0, PREFIX-u1, ...; registered on first use and "
        "reused by later runs (default %(default)s)",
    )
    parser.add_argument(
        "--server-pid",
        type=_positive_int,
        default=None,
        help="pid of a local server process: capacity reports its memory per connection",
    )
    parser.add_argument(
        "--cpu-pids",
        type=_pids,
        default=(),
        help="comma-separated pids of local server processes: direct, open, burst, group, "
        "flood and multidevice report their CPU time (and their children's, e.g. --workers) "
        "per delivered message (flood: per phase), over the loaded window only",
    )
    parser.add_argument(
        "--friends",
        type=_positive_int,
        default=20,
        help="presence: friends of each user who logs out and in (default 20)",
    )
    parser.add_argument(
        "--changers",
        type=_positive_int,
        default=None,
        help="presence: how many users log out and in (default a tenth of --users)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="presence: how many times they log out and in again (default 3)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=_positive,
        default=30.0,
        help="how long to wait for outstanding deliveries before calling them lost",
    )
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        host=args.host,
        ports=args.ports,
        users=args.users,
        messages=args.messages,
        group_size=args.group_size,
        online=args.online or 0,
        inflight=args.inflight,
        devices=args.devices,
        rate=args.rate,
        duration=args.duration,
        group_rate=args.group_rate,
        procs=args.procs,
        seed=args.seed,
        prefix=args.prefix,
        route=args.route,
        run_id=uuid.uuid4().hex[:10],
        drain_seconds=args.drain_seconds,
        cpu_pids=args.cpu_pids,
        friends=args.friends,
        changers=args.changers or 0,
        rounds=args.rounds,
        tls=args.tls or args.insecure or args.ca_file is not None,
        ca_file=args.ca_file,
        insecure=args.insecure,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from(args)
    if config.insecure:
        print(
            "chat-bench: WARNING: --insecure: the server's certificate is NOT checked",
            file=sys.stderr,
        )
    limit = raise_file_limit()
    if "capacity" in args.scenario and limit < config.users + 100:
        print(
            f"chat-bench: only {limit} open files allowed; raise `ulimit -n` to hold"
            f" {config.users} connections",
            file=sys.stderr,
        )
        return 2
    if "offline" in args.scenario and config.users < 2 * config.procs:
        print("chat-bench: offline needs at least two users per load process", file=sys.stderr)
        return 2
    if "stall" in args.scenario and config.users < 2:
        print("chat-bench: stall needs --users 2 or more (a reader, senders)", file=sys.stderr)
        return 2
    if "flood" in args.scenario and config.group_size < 2:
        print("chat-bench: flood needs --group-size 2 or more", file=sys.stderr)
        return 2
    try:
        if any(name in ONE_TO_ONE for name in args.scenario):
            check_plan(config)
        if "presence" in args.scenario:
            PresencePlan.of(config)
    except PlanError as exc:
        print(f"chat-bench: {exc}", file=sys.stderr)
        return 2
    results: dict[str, Figures] = {}
    ok = True
    status = 0
    for name in args.scenario:
        try:
            figures = SCENARIOS[name](config, sys.stderr, args.server_pid)
        except LoadFailed as exc:
            print(f"chat-bench: {name}: {exc}", file=sys.stderr)
            results[name] = {"ok": False, "error": str(exc).splitlines()[-1][:500]}
            ok = False
            status = 2
            break
        results[name] = figures
        ok = ok and bool(figures["ok"])
        print("\n".join(describe(name, figures)), flush=True)
    if status == 0 and not ok:
        status = 1
    params: dict[str, Any] = attrs.asdict(config)
    params["ports"] = list(config.ports)
    params["scenarios"] = args.scenario
    print(json_line(params, results, ok), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
