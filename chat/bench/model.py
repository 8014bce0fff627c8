"""What the parent tells a load process (picklable, frozen values), and the plan.

The plan is pure code shared by the parent and the load processes: which load
process drives which users (``split_users``), which port each user connects
to (``BenchConfig.port_for``) and whom each user sends to (``plan_targets``).
A one-to-one message is checked where both its sender and its recipient are,
so a sender's recipient is always one of its own load process's users.

Routes: a delivery is ``same`` when the sender and the recipient are connected
to the same port, ``cross`` when to different ones (with one node per port,
``cross`` is a message that travels between nodes).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import attrs

PASSWORD = "bench-password"
DEFAULT_PREFIX = "bench"
ROUTES = ("same", "cross")
"""Delivery routes, by the ports of sender and recipient."""
ROUTE_CHOICES = ("any", *ROUTES)
"""``--route``: whom a sender may pick (``any``: the ring, whatever the ports)."""


class PlanError(ValueError):
    """The asked-for plan cannot be made (e.g. ``--route cross`` with one port)."""


@attrs.frozen
class BenchConfig:
    host: str = "127.0.0.1"
    ports: tuple[int, ...] = (6000,)
    users: int = 100
    messages: int = 100
    group_size: int = 50
    online: int = 0
    """group, flood: members logged in besides the sender (0: every member); the others
    are accounts only (a group made beforehand, e.g. by ``chat-server import-users``)."""
    inflight: int = 50
    """flood: ``group_send`` requests the flooder keeps unanswered at once."""
    devices: int = 3
    """multidevice: logged-in devices per user."""
    rate: float = 1000.0
    duration: float = 10.0
    group_rate: float = 0.0
    """Group messages per second; 0: closed loop (each sent after the last one's ``ok``)."""
    procs: int = 1
    seed: int = 1
    prefix: str = DEFAULT_PREFIX
    route: str = "any"
    """One-to-one scenarios: ``any``, ``same`` or ``cross`` (see ``plan_targets``)."""
    run_id: str = "run"
    """Unique per run: events of earlier runs (kept messages) are recognised and skipped."""
    login_concurrency: int = 32
    """Logins in flight per load process (the server hashes two at a time anyway)."""
    drain_seconds: float = 30.0
    """After the last send, how long to wait for outstanding deliveries before calling them lost."""
    setup_seconds: float = 1800.0
    """Upper bound for a setup phase (registering 10,000 accounts takes minutes by design)."""
    cpu_pids: tuple[int, ...] = ()
    """Local server processes (with their children, such as ``--workers``) whose CPU time
    over the loaded window the one-to-one scenarios report per delivered message."""
    friends: int = 20
    """presence: friends of each user who logs out and in."""
    changers: int = 0
    """presence: users who log out and in (the first ones); 0: a tenth of ``users``."""
    tls: bool = False
    """TLS to the ports, verifying the server against ``ca_file`` (or the system store)."""
    ca_file: str | None = None
    insecure: bool = False
    """TLS without verifying the server's certificate."""
    rounds: int = 3
    """presence: how many times every changer logs out and in again."""

    def user_name(self, index: int) -> str:
        return f"{self.prefix}-u{index}"

    def port_for(self, index: int) -> int:
        """Users are dealt over ``--ports`` in turn: user i on the (i mod n)-th port."""
        return self.ports[index % len(self.ports)]

    @property
    def multi_port(self) -> bool:
        """More than one distinct port: deliveries have routes worth telling apart."""
        return len(set(self.ports)) > 1


@attrs.frozen
class Job:
    """One load process's share of a scenario."""

    scenario: str
    config: BenchConfig
    worker: int
    users: tuple[int, ...]
    """Global user indexes this process drives."""


def split_users(config: BenchConfig, users: Sequence[int]) -> list[tuple[int, ...]]:
    """Each load process's users: as many processes as asked (at most one per user).

    Users are ordered by their place in ``--ports`` and then dealt in turn, so
    the counts differ by at most one and every process gets its share of every
    port (dealing user i to process i mod procs would give each process a single
    port whenever procs and the number of ports share a factor, and then no
    message would ever cross). With one port this is ``users[w::procs]``. User 0
    always goes to process 0 (the group sender).
    """
    procs = max(1, min(config.procs, len(users)))
    count = len(config.ports)
    order = sorted(users, key=lambda index: (index % count, index))
    return [tuple(sorted(order[worker::procs])) for worker in range(procs)]


def ring(config: BenchConfig, worker: int, users: Sequence[int]) -> dict[int, int]:
    """Each user sends to the next one of a ring shuffled by the seed (alone: to itself)."""
    order = list(users)
    random.Random(config.seed * 1000 + worker).shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


def plan_targets(config: BenchConfig, worker: int, users: Sequence[int]) -> dict[int, int]:
    """Whom each of a load process's users sends to, following ``config.route``.

    - ``any``: a ring over all the process's users, whatever their ports;
    - ``same``: a ring over the users of each port (a user alone on its port
      sends to itself);
    - ``cross``: the users of each port send to the users of the next port
      (ports in ascending order, the last one to the first), the j-th sender
      to the (j mod n)-th recipient; raises ``PlanError`` when the process's
      users are all on one port.

    Each sender has exactly one recipient, so per-sender order stays checkable.
    """
    if config.route == "any":
        return ring(config, worker, users)
    if config.route not in ROUTES:
        raise PlanError(f"unknown route {config.route!r} (choose from {', '.join(ROUTE_CHOICES)})")
    by_port: dict[int, list[int]] = defaultdict(list)
    for index in users:
        by_port[config.port_for(index)].append(index)
    rng = random.Random(config.seed * 1000 + worker)
    ports = sorted(by_port)
    for port in ports:
        rng.shuffle(by_port[port])
    targets: dict[int, int] = {}
    if config.route == "same":
        for port in ports:
            group = by_port[port]
            targets.update({group[i]: group[(i + 1) % len(group)] for i in range(len(group))})
        return targets
    if len(ports) < 2:
        if not config.multi_port:
            raise PlanError("--route cross needs two ports or more in --ports (say 6000,6002)")
        raise PlanError(
            f"--route cross: load process {worker} would have users on port"
            f" {ports[0] if ports else '-'} only ({len(users)} of them); give more --users or"
            f" fewer --procs, so that every load process has users on two ports"
        )
    for place, port in enumerate(ports):
        recipients = by_port[ports[(place + 1) % len(ports)]]
        for j, sender in enumerate(by_port[port]):
            targets[sender] = recipients[j % len(recipients)]
    return targets


def check_plan(config: BenchConfig) -> None:
    """Raise ``PlanError`` if the one-to-one scenarios cannot follow ``config.route``."""
    for worker, share in enumerate(split_users(config, range(config.users))):
        plan_targets(config, worker, share)


@attrs.frozen
class PresencePlan:
    """The ``presence`` scenario's friendships: the first ``changers`` users log out and
    in; every other user (a watcher) stays logged in and is told. Each changer has
    ``friends`` watchers as friends, spread so that each watcher has about the same
    number of changer friends."""

    changers: tuple[int, ...]
    watchers: tuple[int, ...]
    friends_of: dict[int, tuple[int, ...]]
    """Changer index -> its watcher friends' indexes."""

    @classmethod
    def of(cls, config: BenchConfig) -> PresencePlan:
        count = config.changers or max(1, config.users // 10)
        if not 1 <= count < config.users:
            raise PlanError(f"presence needs fewer changers ({count}) than users ({config.users})")
        changers = tuple(range(count))
        watchers = tuple(range(count, config.users))
        per = min(config.friends, len(watchers))
        friends_of = {
            k: tuple(watchers[(k * per + j) % len(watchers)] for j in range(per)) for k in changers
        }
        return cls(changers, watchers, friends_of)

    def changer_friends(self) -> dict[int, set[int]]:
        """Watcher index -> the changers it is a friend of."""
        out: dict[int, set[int]] = defaultdict(set)
        for changer, watchers in self.friends_of.items():
            for watcher in watchers:
                out[watcher].add(changer)
        return out
