"""Scale-out as processes: ``chat-server serve --workers N`` and a node's readiness.

Real ``python -m chat serve`` processes on MariaDB and a private Redis. Which
worker a connection landed on is read from the workers' own log lines
("connection opened: PEER (NODE-wK/SERIAL)"), so the tests never guess how the
kernel spread the connections.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio

from chat.client import ChatClient, client_over

from .cluster_support import DEADLINE, LEASE_SECONDS, RedisServer, receive
from .ops_support import http_get, parse, value
from .support import ServerProcess, chat_env, free_port, login, register, server_process


@asynccontextmanager
async def workers(
    directory: Path, mysql_url: str, redis_url: str, count: int = 2, *extra: str
) -> AsyncIterator[ServerProcess]:
    async with server_process(
        directory,
        *("--host", "127.0.0.1", "--workers", str(count), "--node-id", "node"),
        *("--database", mysql_url, "--redis", redis_url),
        *("--lease-seconds", str(LEASE_SECONDS), "--log-level", "DEBUG"),
        *extra,
        name="workers",
        ready_text=f"all {count} workers ready",
    ) as parent:
        yield parent


async def dial_worker(parent: ServerProcess, stack: AsyncExitStack) -> tuple[ChatClient, str]:
    """A new connection to the workers' port, and the worker that accepted it."""
    stream = await trio.open_tcp_stream("127.0.0.1", parent.port)
    local = stream.socket.getsockname()[1]
    client = await stack.enter_async_context(client_over(stream))
    await client.call("ping")  # answered: the worker has logged the connection
    pattern = re.compile(rf"connection opened: 127\.0\.0\.1:{local} \((node-w\d+)/")
    with trio.fail_after(DEADLINE):
        while not (found := pattern.search(parent.output())):  # noqa: ASYNC110 (a log file)
            await trio.sleep(0.02)
    return client, found.group(1)


async def one_on_each(
    parent: ServerProcess, stack: AsyncExitStack, count: int = 2
) -> dict[str, ChatClient]:
    """Connections until every worker holds one (the kernel picks; 60 tries is plenty)."""
    chosen: dict[str, ChatClient] = {}
    for _ in range(60):
        client, worker = await dial_worker(parent, stack)
        chosen.setdefault(worker, client)
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"60 connections all went to {sorted(chosen)}")


def children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: their pids and command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ")" not in stat:  # it exited while being read: an empty stat
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def free_port_pair() -> int:
    """A port P such that P and P + 1 were both free a moment ago."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


async def test_users_on_two_workers_chat(mysql_url: str, redis_url: str, tmp_path: Path) -> None:
    http_port = free_port_pair()
    async with (
        workers(tmp_path, mysql_url, redis_url, 2, "--http-port", str(http_port)) as parent,
        AsyncExitStack() as stack,
    ):
        assert len(children(parent.process.pid)) == 2
        on = await one_on_each(parent, stack)
        alice, bob = on["node-w1"], on["node-w2"]
        await register(alice, "alice")
        bob_id = await register(bob, "bob")
        alice_id = (await login(alice, "alice"))["user"]["id"]
        await login(bob, "bob")
        sent = await alice.call("send", to=bob_id, text="across workers")
        assert (await receive(bob, "message"))["message_id"] == sent["message_id"]
        sent = await bob.call("send", to=alice_id, text="and back")
        assert (await receive(alice, "message"))["message_id"] == sent["message_id"]
        found = await alice.call("find_user", name="bob")
        assert found["user"]["online"] is True
        # One HTTP port per worker, each with its own figures: one message stored and
        # one user online on each.
        for worker in (1, 2):
            status, body = await http_get(http_port + worker - 1, "/metrics")
            assert status == 200, body
            figures = parse(body)
            assert value(figures, "chat_messages_stored_total", kind="direct") == 1, worker
            assert value(figures, "chat_users_online") == 1, worker


async def test_a_killed_worker_is_replaced_and_its_users_log_in_again(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with workers(tmp_path, mysql_url, redis_url) as parent, AsyncExitStack() as stack:
        on = await one_on_each(parent, stack)
        victim = on["node-w1"]
        await register(victim, "alice")
        await login(victim, "alice")
        pids = {
            cmd.split("--node-id ")[1].split()[0]: pid
            for pid, cmd in children(parent.process.pid).items()
        }
        os.kill(pids["node-w1"], signal.SIGKILL)
        with trio.fail_after(DEADLINE):
            await victim.closed.wait()
        # The parent starts another node-w1; the survivor was never touched.
        with trio.fail_after(DEADLINE):
            while True:
                now = {
                    cmd.split("--node-id ")[1].split()[0]: pid
                    for pid, cmd in children(parent.process.pid).items()
                }
                if now.get("node-w1") not in (None, pids["node-w1"]):
                    break
                await trio.sleep(0.05)
        assert now["node-w2"] == pids["node-w2"]
        assert "worker node-w1" in parent.output() and "starting it again" in parent.output()
        # alice's lease names the dead worker until it expires; then she is back.
        again, _ = await dial_worker(parent, stack)
        with trio.fail_after(LEASE_SECONDS + DEADLINE):
            while True:
                reply = await again.request("login", name="alice", password="secret")
                if reply["type"] == "ok":
                    break
                assert reply["code"] == "already_online", reply
                await trio.sleep(0.2)
        assert await parent.stop(signal.SIGTERM, within=DEADLINE) == 0, parent.log_tail()


async def test_sigterm_stops_every_worker_and_exits_zero(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with workers(tmp_path, mysql_url, redis_url, count=3) as parent:
        pids = list(children(parent.process.pid))
        assert len(pids) == 3
        async with AsyncExitStack() as stack:
            c, _ = await dial_worker(parent, stack)
            await register(c, "alice")
            await login(c, "alice")
            assert await parent.stop(signal.SIGTERM, within=DEADLINE) == 0, parent.log_tail()
            with trio.fail_after(DEADLINE):
                await c.closed.wait()
        assert not [pid for pid in pids if running(pid)], "workers outlived their parent"
        assert parent.output().count("stopped") >= 3


async def test_workers_die_with_a_killed_parent(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    async with workers(tmp_path, mysql_url, redis_url) as parent:
        pids = list(children(parent.process.pid))
        assert await parent.stop(signal.SIGKILL, within=DEADLINE) == -signal.SIGKILL
        with trio.fail_after(DEADLINE):
            while [pid for pid in pids if running(pid)]:  # noqa: ASYNC110 (other processes)
                await trio.sleep(0.05)


def test_workers_need_redis_and_a_shared_database(tmp_path: Path) -> None:
    for args, says in [
        (["--workers", "2"], "needs --redis"),
        (["--workers", "auto", "--redis", "redis://127.0.0.1:1/0"], "MariaDB/MySQL"),
        (["--workers", "0"], "number of workers"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "chat", "serve", "--port", "0", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=chat_env(),
            timeout=60,
        )
        assert result.returncode == 2, (args, result)
        assert says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


async def test_a_node_is_ready_when_it_accepts_even_on_an_empty_redis(
    mysql_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """No connection is accepted before the node can answer: from the first moment its
    port takes a connection, register and login answer at once (on a Redis this cluster
    never used, with the default 10 s lease: no settling period to sit out)."""
    port = free_port()
    log = tmp_path / "ready.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [
                *(sys.executable, "-m", "chat", "serve", "--port", str(port)),
                *("--node-id", "fresh", "--database", mysql_url),
                *("--redis", redis_server.new_url()),
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=chat_env(),
        )
    try:
        with trio.fail_after(60):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    break
                except OSError:
                    assert process.returncode is None, log.read_text()
                    await trio.sleep(0.01)
        accepted = trio.current_time()
        async with client_over(stream) as c:
            await register(c, "early")
            reply = await c.request("login", name="early", password="secret")
        answered = trio.current_time() - accepted
        assert reply["type"] == "ok", reply
        # Two password hashes take ~0.2 s; a settling period would take 6.7 s.
        assert answered < 2.0, f"first login answered {answered:.1f}s after the port accepted"
        text = log.read_text()
        assert text.index("subscribed to") < text.index(f"port {port}"), text
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(DEADLINE, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()


@pytest.mark.slow
async def test_workers_outlive_the_parents_idle_threads(
    mysql_url: str, redis_url: str, tmp_path: Path
) -> None:
    """trio starts processes from worker threads that end after 10 s idle: nothing tied
    to that thread (such as PR_SET_PDEATHSIG) may stop the workers."""
    async with workers(tmp_path, mysql_url, redis_url) as parent, AsyncExitStack() as stack:
        pids = set(children(parent.process.pid))
        await trio.sleep(12)
        assert set(children(parent.process.pid)) == pids, parent.log_tail()
        c, _ = await dial_worker(parent, stack)
        assert (await c.request("ping"))["type"] == "ok"
