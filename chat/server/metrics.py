"""A node's Prometheus metrics, one registry per node.

Each node owns a ``CollectorRegistry`` of its own (not prometheus_client's global
one), so several nodes in one process (the tests, a benchmark) never add up each
other's figures, and ``/metrics`` shows exactly one node.

Two kinds of figures:

- events counted where they happen (requests, stored messages, deliveries,
  failed logins, throttled requests, refused connections): prometheus_client
  counters and histograms, incremented on the trio thread;
- state read at scrape time (connections, users online, database and Redis up,
  broker notices): a collector that looks at the node when ``/metrics`` is
  asked, so the hot path pays nothing for them.

``docs/operations.md`` says what each one means.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .connection import Outgoing

DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)
"""Seconds from stored to written: most are milliseconds; kept messages of a user who
was away show in the last buckets."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STORE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class Metrics:
    """The figures a node counts as things happen; ``render`` gives the exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chat_requests",
            "Requests answered, by type and outcome (ok or the error code).",
            ["type", "outcome"],
            registry=r,
        )
        self.messages_stored = Counter(
            "chat_messages_stored",
            "Messages stored by this node (a repeated cid is not counted again).",
            ["kind"],
            registry=r,
        )
        self.deliveries = Counter(
            "chat_deliveries",
            "message and group_message events written to connections.",
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "chat_delivery_seconds",
            "From a message being stored to its event being written to a recipient.",
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.store_batch_size = Histogram(
            "chat_store_batch_size",
            "Calls served by one coalesced store transaction, by kind (send, pending).",
            ["kind"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.store_batch_seconds = Histogram(
            "chat_store_batch_seconds",
            "Duration of one coalesced store transaction, by kind (send, pending).",
            ["kind"],
            buckets=STORE_SECONDS_BUCKETS,
            registry=r,
        )
        self.login_failures = Counter(
            "chat_login_failures",
            "Password logins refused with bad_credentials.",
            registry=r,
        )
        self.rate_limited = Counter(
            "chat_rate_limited",
            "Requests refused with rate_limited, by the limit that refused them.",
            ["limit"],
            registry=r,
        )
        self.connections_refused = Counter(
            "chat_connections_refused",
            "Connections closed by the node before any request, by reason.",
            ["reason"],
            registry=r,
        )
        self.login_timeouts = Counter(
            "chat_login_timeouts",
            "Connections closed because they had not logged in within --login-timeout.",
            registry=r,
        )
        # Labels known in advance show as 0 from the start: a rate() needs a first sample.
        for limit in ("password", "address", "hashing", "connection", "add_friend"):
            self.rate_limited.labels(limit)
        for reason in ("max_connections", "proxy_header", "tls_handshake"):
            self.connections_refused.labels(reason)
        for kind in ("direct", "group"):
            self.messages_stored.labels(kind)
        self._answered: dict[tuple[str, str], Any] = {}
        self._stored: dict[str, Any] = {}

    # Counted once per request or message: the labelled child is looked up once and
    # kept (``labels`` takes a lock and builds a key each time: 4x the ``inc``).

    def answered(self, kind: str, outcome: str) -> None:
        """A request of type ``kind`` was answered: ``ok`` or an error code."""
        child = self._answered.get((kind, outcome))
        if child is None:
            child = self._answered[(kind, outcome)] = self.requests.labels(kind, outcome)
        child.inc()

    def stored(self, kind: str) -> None:
        """A message was stored (``direct`` or ``group``)."""
        child = self._stored.get(kind)
        if child is None:
            child = self._stored[kind] = self.messages_stored.labels(kind)
        child.inc()

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        """The Prometheus text exposition of every figure of this node."""
        return generate_latest(self.registry)

    def delivered(self, outgoing: Sequence[Outgoing]) -> None:
        """Messages that were just written (a ``WriteHooks.written`` batch)."""
        now_ms = time.time() * 1000
        count = 0
        for item in outgoing:
            if item.stored_ms:
                count += 1
                self.delivery_seconds.observe(max(0.0, now_ms - item.stored_ms) / 1000)
        if count:
            self.deliveries.inc(count)

    def store_batch(self, kind: str, calls: int, seconds: float) -> None:
        """One coalesced store transaction is over (``Store.observe_batches``)."""
        self.store_batch_size.labels(kind).observe(calls)
        self.store_batch_seconds.labels(kind).observe(seconds)


class StateCollector(Collector):
    """Figures read from the node at scrape time, through callables given by the node
    (so this module knows nothing of sessions, routers or brokers)."""

    def __init__(
        self,
        *,
        connections: Callable[[], dict[str, int]],
        users_online: Callable[[], int],
        database_up: Callable[[], bool],
        redis_up: Callable[[], bool | None],
        notices: Callable[[], tuple[int, int]],
        store_timeouts: Callable[[], int],
        store_retries: Callable[[], tuple[int, int]] = lambda: (0, 0),
        leases_recreated: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._connections = connections
        self._users_online = users_online
        self._database_up = database_up
        self._redis_up = redis_up
        self._notices = notices
        self._store_timeouts = store_timeouts
        self._store_retries = store_retries
        self._leases_recreated = leases_recreated

    def collect(self) -> Iterable[Metric]:
        connections = GaugeMetricFamily(
            "chat_connections", "Open client connections, by transport.", labels=["transport"]
        )
        for transport, count in sorted(self._connections().items()):
            connections.add_metric([transport], count)
        yield connections
        yield GaugeMetricFamily(
            "chat_users_online", "Users logged in on this node.", value=self._users_online()
        )
        yield GaugeMetricFamily(
            "chat_database_up",
            "1 if the database answered the last health check in time, else 0.",
            value=1 if self._database_up() else 0,
        )
        redis_up = self._redis_up()
        if redis_up is not None:  # alone, with the in-process broker, there is no Redis
            yield GaugeMetricFamily(
                "chat_redis_up",
                "1 if Redis answered the last health check in time, else 0.",
                value=1 if redis_up else 0,
            )
        sent, received = self._notices()
        yield CounterMetricFamily(
            "chat_broker_notices_sent",
            "Notice messages this node published for other nodes.",
            value=sent,
        )
        yield CounterMetricFamily(
            "chat_broker_notices_received",
            "Notice messages this node received from other nodes.",
            value=received,
        )
        yield CounterMetricFamily(
            "chat_store_timeouts",
            "Store calls not finished within --db-timeout (answered unavailable).",
            value=self._store_timeouts(),
        )
        retried, gave_up = self._store_retries()
        yield CounterMetricFamily(
            "chat_store_retries",
            "Store transactions run again after a deadlock, lock wait or lost connection.",
            value=retried,
        )
        yield CounterMetricFamily(
            "chat_store_busy",
            "Store calls still deadlocked or waiting for a lock after every retry"
            " (answered unavailable).",
            value=gave_up,
        )
        recreated = self._leases_recreated()
        if recreated is not None:  # only the Redis broker has leases
            yield CounterMetricFamily(
                "chat_leases_recreated",
                "Presence leases of this node found missing at a heartbeat and re-created.",
                value=recreated,
            )
