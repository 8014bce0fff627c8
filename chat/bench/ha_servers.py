"""A local high-availability set-up: three Galera MariaDB nodes, one Redis master with
two replicas, three Sentinels. Each server runs on ports of its own with a data
folder of its own under one directory, so the machine's own MariaDB and Redis are
never touched.

Used by ``scripts/cluster up --ha`` (through ``python -m chat.bench.ha_servers``),
by ``scripts/chaos`` and by the tests of failover. Every process is started by this
module and stopped by its pid file, whose command line must still name this set-up's
directory (a recycled pid is never signalled).

Timeouts are tuned for a fast failover on one machine (docs/cluster.md):

- Galera: a member silent for ``evs.suspect_timeout`` (2 s here, 5 s by default) is
  suspected and, once every other member agrees, evicted (``evs.inactive_timeout``,
  3 s here, 15 s by default); the survivors pause writes until then.
- Sentinel: a master silent for ``down-after-milliseconds`` (1 s here, 30 s by
  default) is subjectively down; with two of three Sentinels agreeing it is failed
  over to a replica.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
MASTER_NAME = "chat"
START_SECONDS = 90.0
GALERA_OPTIONS = (
    "evs.keepalive_period=PT0.5S",
    "evs.inactive_check_period=PT0.5S",
    "evs.suspect_timeout=PT2S",
    "evs.inactive_timeout=PT3S",
    "evs.install_timeout=PT3S",
    "gcache.size=64M",
)
"""Galera's failure detection, tuned from its defaults (5 s suspect, 15 s inactive)."""
SENTINEL_DOWN_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10000


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (the kernel's choice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@attrs.frozen
class Ports:
    """Every port of the set-up."""

    mysql: tuple[int, ...]
    galera: tuple[int, ...]
    ist: tuple[int, ...]
    sst: tuple[int, ...]
    redis: tuple[int, ...]
    """The first is the master at start, the others its replicas."""
    sentinel: tuple[int, ...]

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """Fixed ports for ``scripts/cluster``: MariaDB on base..base+2, Redis on
        base+10..12, Sentinels on base+20..22, Galera's own on base+30..."""
        return cls(
            mysql=(base, base + 1, base + 2),
            galera=(base + 30, base + 31, base + 32),
            ist=(base + 33, base + 34, base + 35),
            sst=(base + 36, base + 37, base + 38),
            redis=(base + 10, base + 11, base + 12),
            sentinel=(base + 20, base + 21, base + 22),
        )

    @classmethod
    def free(cls) -> Ports:
        ports = free_ports(18)
        return cls(*(tuple(ports[i : i + 3]) for i in range(0, 18, 3)))


class Process:
    """One server process of the set-up, with its pid file and log."""

    def __init__(self, name: str, directory: Path, argv: Sequence[str]) -> None:
        self.name = name
        self.directory = directory
        self.argv = list(argv)
        self.pid_file = directory / f"{name}.pid"
        self.log_file = directory / f"{name}.log"

    env: dict[str, str] | None = None

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives scripts/cluster; not hit by its ^C
            )
        self._child = process
        self.pid_file.write_text(f"{process.pid} {_start_time(process.pid)}")

    @property
    def pid(self) -> int | None:
        """The pid, if the process of the pid file lives and is the one we started (same
        start time: servers rewrite their command lines, so those prove nothing)."""
        try:
            pid_text, _, started = self.pid_file.read_text().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        child = getattr(self, "_child", None)
        if child is not None and child.pid == pid and child.poll() is not None:
            return None  # our child, exited (and now reaped)
        if _start_time(pid) != started or _state(pid) in ("Z", "X", None):
            return None
        return pid

    def signal(self, signum: int) -> bool:
        pid = self.pid
        if pid is None:
            return False
        os.kill(pid, signum)
        return True

    def stop(self, grace: float = 20.0) -> None:
        pid = self.pid
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pid is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.pid is not None:
            os.kill(pid, signal.SIGKILL)
            while self.pid is not None:
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def wait_gone(self, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while self.pid is not None and time.monotonic() < deadline:
            time.sleep(0.05)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()
    except OSError:
        return None


def _start_time(pid: int) -> str:
    """When the process started (clock ticks since boot): a pid and this name one process."""
    fields = _stat_fields(pid)
    return fields[19] if fields else ""


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class GaleraNode(Process):
    def __init__(self, directory: Path, index: int, ports: Ports) -> None:
        self.index = index
        self.port = ports.mysql[index]
        name = f"galera{index + 1}"
        self.data = directory / name
        cluster = ",".join(f"127.0.0.1:{p}" for p in ports.galera)
        options = (
            f"gmcast.listen_addr=tcp://127.0.0.1:{ports.galera[index]};"
            f"ist.recv_addr=127.0.0.1:{ports.ist[index]};" + ";".join(GALERA_OPTIONS)
        )
        config = directory / f"{name}.cnf"
        config.write_text(
            "[mysqld]\n"
            f"datadir={self.data}\n"
            f"port={self.port}\n"
            "bind-address=127.0.0.1\n"
            f"socket={directory / name}.sock\n"
            f"pid-file={directory / name}.mysqld.pid\n"
            "user=root\n"
            "skip-name-resolve=0\n"
            "performance_schema=OFF\n"
            "innodb_buffer_pool_size=64M\n"
            "innodb_log_file_size=32M\n"
            # Durability comes from the other members (a commit is on all of them).
            "innodb_flush_log_at_trx_commit=2\n"
            "binlog_format=ROW\n"
            "default_storage_engine=InnoDB\n"
            "innodb_autoinc_lock_mode=2\n"
            "wsrep_on=ON\n"
            f"wsrep_provider={GALERA_PROVIDER}\n"
            "wsrep_cluster_name=chat-ha\n"
            f"wsrep_cluster_address=gcomm://{cluster}\n"
            f"wsrep_node_address=127.0.0.1:{ports.galera[index]}\n"
            f"wsrep_node_name={name}\n"
            "wsrep_sst_method=rsync\n"
            f"wsrep_sst_receive_address=127.0.0.1:{ports.sst[index]}\n"
            f'wsrep_provider_options="{options}"\n'
        )
        self.config = config
        super().__init__(name, directory, ["mariadbd", f"--defaults-file={config}"])

    def initialise(self) -> None:
        """The system tables of the first member (the others get them by SST)."""
        self.data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mariadb-install-db",
                f"--defaults-file={self.config}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def bootstrap(self) -> None:
        """Start as the first member of a new cluster."""
        self.argv = ["mariadbd", f"--defaults-file={self.config}", "--wsrep-new-cluster"]
        self.start()
        self.argv = ["mariadbd", f"--defaults-file={self.config}"]

    def join(self) -> None:
        """Start as a member of the running cluster (a state transfer brings it up to
        date: incremental from a survivor's cache when it can, whole otherwise)."""
        self.data.mkdir(parents=True, exist_ok=True)
        _open_to_state_transfer(self.data)
        self.start()

    def synced(self) -> bool:
        """The member is in the primary component and synced (takes writes)."""
        if not _answers(self.port):
            return False
        import pymysql

        try:
            conn = pymysql.connect(
                host="127.0.0.1", port=self.port, user="root", connect_timeout=1, read_timeout=2
            )
        except pymysql.err.MySQLError:
            return False
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW STATUS LIKE 'wsrep_local_state_comment'")
                row = cursor.fetchone()
            return row is not None and row[1] == "Synced"
        except pymysql.err.MySQLError:
            return False
        finally:
            conn.close()

    def wait_synced(self, seconds: float = START_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while not self.synced():
            if self.pid is None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not synced in {seconds:g} s: {self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        """The end of the server's error log (mariadbd writes it to stderr here)."""
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _open_to_state_transfer(folder: Path) -> None:
    """Let a state transfer write into a joiner's data folder. ``wsrep_sst_rsync``
    starts an rsync daemon with a configuration without ``uid``, and an rsync daemon
    started by root writes as ``nobody``: where the servers run as root (a test
    machine), the joiner's folder is given to ``nobody`` (root reads it all the same).
    A real deployment runs mariadbd as ``mysql``, whose daemon writes as ``mysql``."""
    if os.geteuid() != 0:
        return
    nobody = pwd.getpwnam("nobody")
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, nobody.pw_uid, nobody.pw_gid)


class RedisNode(Process):
    def __init__(self, directory: Path, index: int, ports: Ports, conf: Path) -> None:
        self.port = ports.redis[index]
        name = f"redis{index + 1}"
        # A copy of its own: Sentinel's reconfigurations rewrite the file (CONFIG REWRITE).
        own = directory / f"{name}.conf"
        if not own.exists():
            shutil.copyfile(conf, own)
        argv = [
            "redis-server",
            str(own),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no"),
            *("--dir", str(directory), "--logfile", ""),
            *("--dbfilename", f"{name}.rdb"),
        ]
        if index > 0:
            argv += ["--replicaof", "127.0.0.1", str(ports.redis[0])]
        super().__init__(name, directory, argv)


class SentinelNode(Process):
    def __init__(self, directory: Path, index: int, ports: Ports) -> None:
        self.port = ports.sentinel[index]
        name = f"sentinel{index + 1}"
        self.config = directory / f"{name}.conf"
        super().__init__(name, directory, ["redis-server", str(self.config), "--sentinel"])
        self._master = ports.redis[0]

    def write_config(self) -> None:
        """Sentinel rewrites its file as it learns; a fresh set-up starts from this."""
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self._master} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {SENTINEL_DOWN_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 2\n"
        )


class HaSetup:
    """The whole set-up under ``directory``; its layout is kept in ``setup.json`` so
    that ``down`` and ``status`` find it again."""

    def __init__(self, directory: Path, ports: Ports | None = None) -> None:
        self.directory = directory.resolve()
        state = self.directory / "setup.json"
        if ports is None:
            ports = Ports(**{k: tuple(v) for k, v in json.loads(state.read_text()).items()})
        self.ports = ports
        self.directory.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(attrs.asdict(ports)))
        conf = Path(__file__).resolve().parents[2] / "infra/redis/redis.conf"
        self.galera = [GaleraNode(self.directory, i, ports) for i in range(3)]
        self.redis = [RedisNode(self.directory, i, ports, conf) for i in range(3)]
        self.sentinels = [SentinelNode(self.directory, i, ports) for i in range(3)]

    def database_url(self, name: str, user: str = "root") -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports.mysql)
        return f"mysql://{user}@{hosts}/{name}"

    def redis_url(self, db: int = 0) -> str:
        sentinels = ",".join(f"127.0.0.1:{p}" for p in self.ports.sentinel)
        return f"redis+sentinel://{sentinels}/{MASTER_NAME}/{db}"

    def processes(self) -> list[Process]:
        return [*self.galera, *self.redis, *self.sentinels]

    # --- Galera ---------------------------------------------------------------------

    def start_galera(self) -> None:
        first, *others = self.galera
        if not (first.data / "mysql").is_dir():
            first.initialise()
        first.bootstrap()
        first.wait_synced()
        for node in others:  # one at a time: each joiner takes a state transfer
            node.join()
            node.wait_synced()

    def written_galera(self, database_url_hosts: Sequence[int] | None = None) -> GaleraNode:
        """The member a node writes to when every member is up: the first listed."""
        return self.galera[0]

    # --- Redis ----------------------------------------------------------------------

    def start_redis(self) -> None:
        for node in self.redis:
            node.start()
        for node in self.redis:
            _wait_port(node)
        for sentinel in self.sentinels:
            sentinel.write_config()
            sentinel.start()
        for sentinel in self.sentinels:
            _wait_port(sentinel)
        self.wait_sentinels()

    def redis_master_port(self) -> int | None:
        """The master's port as the Sentinels' majority sees it."""
        import redis

        votes: dict[int, int] = {}
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                address: Any = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                port = int(address[1])
                votes[port] = votes.get(port, 0) + 1
            except (redis.RedisError, TypeError):
                continue
            finally:
                client.close()
        best = max(votes.items(), key=lambda item: item[1], default=None)
        return best[0] if best is not None and best[1] >= 2 else None

    def redis_master(self) -> RedisNode:
        port = self.redis_master_port()
        for node in self.redis:
            if node.port == port:
                return node
        raise RuntimeError("the Sentinels agree on no master")

    def wait_sentinels(self, seconds: float = 30.0) -> None:
        """Until every Sentinel knows the replicas and the other Sentinels (a failover
        needs them)."""
        import redis

        deadline = time.monotonic() + seconds
        while True:
            ready = 0
            for sentinel in self.sentinels:
                client = redis.Redis(port=sentinel.port, socket_timeout=1)
                try:
                    state: Any = client.sentinel_master(MASTER_NAME)
                    if int(state["num-other-sentinels"]) >= 2 and int(state["num-slaves"]) >= 2:
                        ready += 1
                except redis.RedisError:
                    pass
                finally:
                    client.close()
            if ready == len(self.sentinels):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinels did not find each other and the replicas")
            time.sleep(0.2)

    # --- all --------------------------------------------------------------------------

    def up(self) -> None:
        self.start_redis()
        self.start_galera()

    def down(self) -> None:
        for process in reversed(self.processes()):
            process.stop()

    def status(self) -> list[tuple[str, int | None, int]]:
        rows: list[tuple[str, int | None, int]] = []
        for node in self.galera:
            rows.append((node.name, node.pid, node.port))
        for redis_node in self.redis:
            rows.append((redis_node.name, redis_node.pid, redis_node.port))
        for sentinel in self.sentinels:
            rows.append((sentinel.name, sentinel.pid, sentinel.port))
        return rows

    def remove(self) -> None:
        self.down()
        shutil.rmtree(self.directory, ignore_errors=True)


def _wait_port(process: Process, seconds: float = 20.0) -> None:
    port = getattr(process, "port")  # noqa: B009 (every server here has one)
    deadline = time.monotonic() + seconds
    while not _answers(port):
        if process.pid is None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not start: see {process.log_file}")
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chat.bench.ha_servers",
        description="Start or stop a local HA set-up: 3 Galera MariaDB nodes, a Redis "
        "master with 2 replicas, 3 Sentinels (docs/cluster.md).",
    )
    parser.add_argument("command", choices=["up", "down", "status", "urls"])
    parser.add_argument("--dir", type=Path, required=True, help="where data, logs and pids go")
    parser.add_argument(
        "--base-port",
        type=int,
        default=7300,
        help="MariaDB on BASE..BASE+2, Redis on BASE+10.., Sentinels on BASE+20.., "
        "Galera's own ports from BASE+30 (default 7300)",
    )
    parser.add_argument("--database-name", default="chat")
    args = parser.parse_args(argv)
    known = (args.dir / "setup.json").exists()
    if args.command == "up":
        setup = HaSetup(args.dir, None if known else Ports.from_base(args.base_port))
        if any(p.pid is not None for p in setup.processes()):
            print(f"already running in {setup.directory}: stop it first", file=sys.stderr)
            return 1
        try:
            setup.up()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            print(f"cannot start the HA set-up: {exc}", file=sys.stderr)
            setup.down()
            return 1
        print(f"database {setup.database_url(args.database_name)}")
        print(f"redis {setup.redis_url()}")
        return 0
    if not known:
        print(f"no HA set-up in {args.dir}", file=sys.stderr)
        return 0 if args.command == "down" else 1
    setup = HaSetup(args.dir)
    if args.command == "down":
        setup.down()
    elif args.command == "status":
        for name, pid, port in setup.status():
            where = f"127.0.0.1:{port}"
            print(f"{name:<15} {pid if pid is not None else '-':<8} {where}")
    else:
        print(f"database {setup.database_url(args.database_name)}")
        print(f"redis {setup.redis_url()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
