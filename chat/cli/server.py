"""``chat-server``: run a node (``serve``), only prepare its database (``migrate``), or
create many accounts at once (``import-users``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from functools import partial

import trio

from chat.broker import Broker, MemoryBroker
from chat.broker.endpoint import RedisEndpoint
from chat.server import Node, Settings
from chat.server.collector import settle_after_start
from chat.server.importing import ImportRefused, import_plan, read_plan
from chat.server.settings import (
    ADDRESS_LOGINS_PER_MINUTE,
    DB_TIMEOUT_SECONDS,
    FANOUT_BURST,
    FANOUT_RATE,
    HASH_QUEUE,
    LOGIN_TIMEOUT_SECONDS,
    MAX_CONNECTIONS,
    REQUEST_BURST,
    REQUEST_RATE,
    TRUSTED_ADDRESSES,
)
from chat.server.throttles import parse_networks
from chat.store import (
    DEFAULT_DATABASE_URL,
    DatabaseConfig,
    MysqlConfig,
    StoreError,
    open_store,
    parse_database_url,
)

from .logformat import formatter
from .workers import Supervisor, announce_ready, cpu_count, reserve_port, watch_parent

log = logging.getLogger("chat.server")

ENV_PREFIX = "CHAT_"
LEASE_SECONDS = 10.0
LEASE_LIMIT = 15.0
"""The protocol frees a dead node's users within 15 s: no lease may be longer."""


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _lease(text: str) -> float:
    value = float(text)
    if not 1 <= value <= LEASE_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and {LEASE_LIMIT} seconds")
    return value


def _workers(text: str) -> int:
    if text == "auto":
        return cpu_count()
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give a number of workers (1 or more) or auto")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-server",
        description="A chat server node. Every flag may also be set as CHAT_<FLAG>, "
        "for example CHAT_DATABASE_URL or CHAT_PORT.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a node")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"), help="address to listen on")
    serve.add_argument(
        "--port", type=_port, default=_port(_env("port", "6000") or "6000"), help="TCP port"
    )
    serve.add_argument(
        "--ws-port",
        type=_port,
        default=_env("ws_port", None),  # a string default goes through type= too
        help="WebSocket port for browsers (protocol v1, one JSON object per text message; "
        "default: off)",
    )
    serve.add_argument(
        "--legacy-port",
        type=_port,
        default=_env("legacy_port", None),
        help="port for clients of the original C++ chat server (its numbered JSON "
        "messages, docs/legacy.md; default: off)",
    )
    serve.add_argument(
        "--tls-cert",
        default=_env("tls_cert", None),
        help="PEM certificate (its chain after it) for TLS on --port and --ws-port, with "
        "--tls-key; reloaded on SIGHUP. --legacy-port stays plain text (default: no TLS)",
    )
    serve.add_argument(
        "--tls-key",
        default=_env("tls_key", None),
        help="PEM private key of --tls-cert",
    )
    _database_flag(serve)
    serve.add_argument(
        "--redis",
        default=_env("redis_url", None),
        help="redis://host:port/db, or redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB] "
        "for a master found through Sentinels, to join a cluster (default: alone, "
        "in-process broker)",
    )
    serve.add_argument(
        "--redis-prefix",
        default=_env("redis_prefix", None),
        help="with --redis: the start of this cluster's Redis keys and channels, so that "
        "several clusters can share one Redis server (default: chat:<database index>)",
    )
    serve.add_argument(
        "--lease-seconds",
        type=_lease,
        default=_env("lease_seconds", "10"),  # a string default goes through type= too
        help="with --redis: how long a killed node's users stay online (1-15, default 10)",
    )
    serve.add_argument(
        "--node-id",
        default=_env("node_id", None),
        help="this node's name in logs and in the cluster (default: HOST-PORT)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=_env("workers", "1"),  # a string default goes through type= too
        help="run N worker processes on the same ports, each a node of the cluster "
        "(NODE-w1, NODE-w2, ...), restarted if they die; auto: one per CPU. More than 1 "
        "needs --redis and a MariaDB/MySQL database (default 1: this process is the node)",
    )
    _operations_flags(serve)
    # Set by the --workers parent for its workers: listen with SO_REUSEPORT.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    _log_flag(serve)

    migrate = commands.add_parser("migrate", help="create the database and apply migrations")
    _database_flag(migrate)
    _log_flag(migrate)

    accounts = commands.add_parser(
        "import-users",
        help="create users, friendships and groups from a JSON lines file, all or nothing",
        description="Create users, friendships and groups from a JSON lines file: one object "
        'per line, {"name": ..., "password": ... (or "password_hash": ...), "friends": [...]} '
        'for a user, {"group": ..., "creator": ..., "members": [...], "description": ...} for '
        "a group. Every line is checked first (names as register checks them); a file with "
        "any problem writes nothing. The database is migrated first. docs/operations.md.",
    )
    accounts.add_argument("file", help="the JSON lines file ('-': standard input)")
    _database_flag(accounts)
    accounts.add_argument(
        "--hash-threads",
        type=_workers,
        default="auto",
        help="threads hashing passwords (each distinct password is hashed once; default "
        "auto: one per CPU)",
    )
    accounts.add_argument(
        "--check",
        action="store_true",
        help="check the file against the database and write nothing",
    )
    _log_flag(accounts)
    return parser


def _operations_flags(serve: argparse.ArgumentParser) -> None:
    """Limits, health and metrics (docs/operations.md)."""
    serve.add_argument(
        "--http-port",
        type=_port,
        default=_env("http_port", None),  # a string default goes through type= too
        help="port of the HTTP endpoint with /metrics (Prometheus), /healthz and /readyz, "
        "on --host; with --workers N, worker k listens on PORT+k-1 (default: off)",
    )
    serve.add_argument(
        "--trusted-addresses",
        type=_networks,
        default=_env("trusted_addresses", ",".join(TRUSTED_ADDRESSES)),
        help="comma-separated client addresses or networks exempt from the per-address "
        "budget and the hashing queue bound (default: the loopback ranges; '' for none)",
    )
    serve.add_argument(
        "--address-logins-per-minute",
        type=_count,
        default=_env("address_logins_per_minute", str(ADDRESS_LOGINS_PER_MINUTE)),
        help="password logins and registrations per minute from one client address "
        f"(default {ADDRESS_LOGINS_PER_MINUTE}; 0: no limit)",
    )
    serve.add_argument(
        "--hash-queue",
        type=_count,
        default=_env("hash_queue", str(HASH_QUEUE)),
        help="password hashes running or waiting before new password requests get "
        f"rate_limited at once (default {HASH_QUEUE}; 0: no bound)",
    )
    serve.add_argument(
        "--request-rate",
        type=float,
        default=_env("request_rate", str(REQUEST_RATE)),
        help=f"requests per second one connection may send on average (default "
        f"{REQUEST_RATE:g}; 0: no limit)",
    )
    serve.add_argument(
        "--request-burst",
        type=_count,
        default=_env("request_burst", str(REQUEST_BURST)),
        help=f"requests one connection may send at once (default {REQUEST_BURST})",
    )
    serve.add_argument(
        "--fanout-rate",
        type=float,
        default=_env("fanout_rate", str(FANOUT_RATE)),
        help="deliveries per second one user's sends may cause on a node, on average (a "
        "one-to-one message counts 1, a group message the other members; default "
        f"{FANOUT_RATE:g}; 0: no limit)",
    )
    serve.add_argument(
        "--fanout-burst",
        type=_count,
        default=_env("fanout_burst", str(FANOUT_BURST)),
        help=f"deliveries one user's sends may cause at once (default {FANOUT_BURST})",
    )
    serve.add_argument(
        "--db-timeout",
        type=_positive_seconds,
        default=_env("db_timeout", str(DB_TIMEOUT_SECONDS)),
        help="seconds a database call may take before the request answers unavailable "
        f"and /readyz turns 503 (default {DB_TIMEOUT_SECONDS:g})",
    )
    serve.add_argument(
        "--login-timeout",
        type=_seconds,
        default=_env("login_timeout", str(LOGIN_TIMEOUT_SECONDS)),
        help="seconds a connection may stay open without logging in "
        f"(default {LOGIN_TIMEOUT_SECONDS:g}; 0: no limit)",
    )
    serve.add_argument(
        "--max-connections",
        type=_count,
        default=_env("max_connections", str(MAX_CONNECTIONS)),
        help="open connections on this node; one more gets an unavailable error and is "
        f"closed (default {MAX_CONNECTIONS}; 0: no limit)",
    )
    serve.add_argument(
        "--proxy-protocol",
        action="store_true",
        default=(_env("proxy_protocol", "") or "").lower() in ("1", "true", "yes", "on"),
        help="the TCP listeners expect a PROXY protocol v1 or v2 header on every "
        "connection (nginx: proxy_protocol on;), so logs and limits see the real client; "
        "a connection without one is refused (default: off)",
    )
    serve.add_argument(
        "--log-format",
        default=_env("log_format", "text"),
        choices=["text", "json"],
        help="text (default, for people) or json: one JSON object per line, for log shippers",
    )


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: give 0 or more seconds")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: give 0 or more")
    return value


def _networks(text: str) -> tuple[str, ...]:
    try:
        return parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=_env("database_url", DEFAULT_DATABASE_URL),
        help="sqlite:///chat.db (default) or mysql://user[:password]@host[:port]/name; "
        "several hosts (host:port,host:port,...: a Galera cluster) are tried in order",
    )


def _log_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default=_env("log_level", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )


class _NodeIdFilter(logging.Filter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        return True


def configure_logging(level: str, node_id: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NodeIdFilter(node_id))
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def make_broker(
    redis: RedisEndpoint | str | None,
    node_id: str,
    lease_seconds: float = LEASE_SECONDS,
    redis_prefix: str | None = None,
) -> Broker:
    if redis is None:
        return MemoryBroker(node_id)
    from chat.broker.redis import RedisBroker

    return RedisBroker(redis, node_id, lease_seconds=lease_seconds, prefix=redis_prefix)


async def serve(
    settings: Settings,
    database: DatabaseConfig | str,
    redis: RedisEndpoint | str | None,
    lease_seconds: float = LEASE_SECONDS,
    redis_prefix: str | None = None,
) -> None:
    # A bad URL or prefix fails first, before the database is touched.
    broker = make_broker(redis, settings.node_id, lease_seconds, redis_prefix)
    store = await trio.to_thread.run_sync(open_store, database)
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            # The certificate is read here: a SIGHUP from now on is a reload (one before
            # was ignored, see main, and these files are the renewed ones anyway).
            node = Node(settings, store, broker)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, node, nursery.cancel_scope)
                nursery.start_soon(watch_parent, node.stop)  # a --workers worker only
                async with trio.open_nursery() as running:
                    await running.start(node.run)
                    settle_after_start()  # the process's: tests' nodes keep the defaults
                    announce_ready()  # to a --workers parent, if there is one
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(2, shield=True):
            await broker.aclose()
        store.close()


async def _stop_on_signal(signals: AsyncIterator[int], node: Node, scope: trio.CancelScope) -> None:
    first = True
    async for signum in signals:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading the TLS certificate")
            await node.reload_certificates()
        elif first:
            log.info("%s: stopping gracefully (again to stop at once)", signal.Signals(signum).name)
            node.stop()
            first = False
        else:
            scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "import-users":
        return _import_users(args)
    if args.command == "migrate":
        configure_logging(args.log_level, "migrate")
        try:
            store = open_store(args.database)
        except (StoreError, ValueError, OSError) as exc:
            log.error("cannot migrate %s: %s", args.database, exc)
            return 1
        store.close()
        log.info("database %s is up to date", store.dialect.describe())
        return 0

    # SIGHUP means "reload the certificate" once serve (or the --workers parent) listens
    # for it; until then its default action would end the process (a renewal hook firing
    # while a node starts), so it is ignored. Workers inherit the ignoring across exec,
    # so they are covered from their first instruction.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    node_id = args.node_id or f"{socket.gethostname()}-{args.port}"
    configure_logging(args.log_level, node_id, args.log_format)
    if (args.tls_cert is None) != (args.tls_key is None):
        log.error("--tls-cert and --tls-key go together: give both, or neither")
        return 2
    try:
        # Parsed once, here: a bad --database or --redis names its bad part at once.
        database = parse_database_url(args.database)
        redis = RedisEndpoint.parse(args.redis) if args.redis is not None else None
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if args.workers > 1:
        return _run_workers(args, node_id, database)
    settings = Settings(
        host=args.host,
        port=args.port,
        node_id=node_id,
        ws_port=args.ws_port,
        legacy_port=args.legacy_port,
        reuse_port=args.reuse_port,
        http_port=args.http_port,
        trusted_addresses=args.trusted_addresses,
        address_logins_per_minute=args.address_logins_per_minute,
        hash_queue=args.hash_queue,
        request_rate=args.request_rate,
        request_burst=args.request_burst,
        fanout_rate=args.fanout_rate,
        fanout_burst=args.fanout_burst,
        db_timeout_seconds=args.db_timeout,
        login_timeout_seconds=args.login_timeout,
        max_connections=args.max_connections,
        proxy_protocol=args.proxy_protocol,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    try:
        trio.run(serve, settings, database, redis, args.lease_seconds, args.redis_prefix)
    except BaseException as raised:
        # Nurseries wrap errors in groups; a lone expected error is a message, not a trace.
        error = _only_error(raised)
        if isinstance(error, KeyboardInterrupt):
            return 0
        if isinstance(error, StoreError | ValueError | OSError):
            log.error("cannot start: %s", error)
            return 1
        raise
    return 0


SHOWN_PROBLEMS = 50
"""``import-users`` prints at most this many problems of a refused file."""


def _import_users(args: argparse.Namespace) -> int:
    """``import-users``: 0 imported (or, with ``--check``, would be), 1 refused or no
    database; nothing is written unless everything is."""
    configure_logging(args.log_level, "import")
    try:
        if args.file == "-":
            plan = read_plan(sys.stdin)
        else:
            with open(args.file, encoding="utf-8") as lines:
                plan = read_plan(lines)
    except OSError as exc:
        log.error("cannot read %s: %s", args.file, exc)
        return 1
    except UnicodeDecodeError as exc:
        log.error("cannot read %s: not UTF-8 (%s)", args.file, exc)
        return 1
    except ImportRefused as refused:
        return _refused(args.file, refused)
    try:
        store = open_store(args.database)
    except (StoreError, ValueError, OSError) as exc:
        log.error("cannot open %s: %s", args.database, exc)
        return 1
    try:
        report = trio.run(
            partial(import_plan, store, plan, threads=args.hash_threads, check_only=args.check)
        )
    except ImportRefused as refused:
        return _refused(args.file, refused)
    except StoreError as exc:
        log.error("nothing was imported: %s", exc)
        return 1
    finally:
        store.close()
    where = store.dialect.describe()
    if report is None:
        print(
            f"{args.file}: {len(plan.users)} users and {len(plan.groups)} groups can be"
            f" imported into {where} (--check: nothing written)"
        )
    else:
        print(f"{report} into {where}")
    return 0


def _refused(file: str, refused: ImportRefused) -> int:
    for problem in refused.problems[:SHOWN_PROBLEMS]:
        print(f"{file}: {problem}", file=sys.stderr)
    more = len(refused.problems) - SHOWN_PROBLEMS
    if more > 0:
        print(f"{file}: ... and {more} more problems", file=sys.stderr)
    print(f"{file}: nothing was imported", file=sys.stderr)
    return 1


def _run_workers(args: argparse.Namespace, node_id: str, database: DatabaseConfig) -> int:
    """The ``--workers`` parent: refuse what cannot work, then supervise."""
    if args.redis is None:
        log.error(
            "--workers %d needs --redis: each worker is a node of its own, and nodes "
            "reach each other's users only through Redis",
            args.workers,
        )
        return 2
    if not isinstance(database, MysqlConfig):
        log.error(
            "--workers %d needs a MariaDB/MySQL database (--database mysql://...) that "
            "every worker shares; SQLite lets only one process write at a time",
            args.workers,
        )
        return 2
    try:
        port, held = reserve_port(args.host, args.port)
        ws_port, ws_held = (
            reserve_port(args.host, args.ws_port) if args.ws_port is not None else (None, None)
        )
        legacy_port, legacy_held = (
            reserve_port(args.host, args.legacy_port)
            if args.legacy_port is not None
            else (None, None)
        )
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1

    def command(worker_id: str) -> list[str]:
        argv = [sys.executable, "-m", "chat", "serve", "--workers", "1", "--reuse-port"]
        argv += ["--host", args.host, "--port", str(port), "--node-id", worker_id]
        argv += ["--database", args.database, "--redis", args.redis]
        argv += ["--lease-seconds", str(args.lease_seconds), "--log-level", args.log_level]
        if ws_port is not None:
            argv += ["--ws-port", str(ws_port)]
        if legacy_port is not None:
            argv += ["--legacy-port", str(legacy_port)]
        if args.redis_prefix is not None:
            argv += ["--redis-prefix", args.redis_prefix]
        if args.http_port is not None:
            # One HTTP port per worker: each shows its own figures (docs/operations.md).
            argv += ["--http-port", str(args.http_port + int(worker_id.rpartition("-w")[2]) - 1)]
        argv += ["--trusted-addresses", ",".join(args.trusted_addresses)]
        argv += ["--address-logins-per-minute", str(args.address_logins_per_minute)]
        argv += ["--hash-queue", str(args.hash_queue), "--request-rate", str(args.request_rate)]
        argv += ["--request-burst", str(args.request_burst), "--db-timeout", str(args.db_timeout)]
        argv += ["--fanout-rate", str(args.fanout_rate), "--fanout-burst", str(args.fanout_burst)]
        argv += ["--login-timeout", str(args.login_timeout)]
        argv += ["--max-connections", str(args.max_connections), "--log-format", args.log_format]
        if args.proxy_protocol:
            argv.append("--proxy-protocol")
        if args.tls_cert is not None:
            argv += ["--tls-cert", args.tls_cert, "--tls-key", args.tls_key]
        return argv

    log.info("starting %d workers on port %d", args.workers, port)
    try:
        return trio.run(Supervisor(args.workers, node_id, command).run)
    finally:
        for sock in (held, ws_held, legacy_held):
            if sock is not None:
                sock.close()


def _only_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
