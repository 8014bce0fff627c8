"""`chat-server` as a user runs it: a real process, its flags, its signals, its exit codes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pymysql
import trio

from chat.client import connect
from chat.store import dialect_for
from chat.store.migrations import migration_files

from .support import (
    PROCESS_START_SECONDS,
    chat_env,
    free_port,
    login,
    mysql_database,
    register,
    server_process,
)


async def test_sigterm_exits_zero_quickly_and_frees_its_users(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'chat.db'}"
    async with server_process(tmp_path, "--database", db) as node:
        async with connect("127.0.0.1", node.port) as ann, connect("127.0.0.1", node.port) as bob:
            await register(ann, "ann")
            await register(bob, "bob")
            carol = await register(ann, "carol")
            await login(ann, "ann")
            await login(bob, "bob")
            sent = await ann.call("send", to=carol, text="for later")
            assert await node.stop(signal.SIGTERM) == 0
            with trio.fail_after(5):
                await ann.closed.wait()
                await bob.closed.wait()
        assert "stopped" in node.output()
        assert "Traceback" not in node.output()
    async with server_process(tmp_path, "--database", db, port=node.port) as again:
        async with connect("127.0.0.1", again.port) as ann, connect("127.0.0.1", again.port) as c:
            await login(ann, "ann")  # not "already_online"
            reply = await login(c, "carol")
            assert reply["offline"] == 1
            assert (await c.next_event())["message_id"] == sent["message_id"]
        assert await again.stop(signal.SIGINT) == 0


async def test_kill_9_loses_no_acknowledged_message(tmp_path: Path) -> None:
    with mysql_database() as db:
        async with (
            server_process(tmp_path, "--database", db) as node,
            connect("127.0.0.1", node.port) as ann,
        ):
            await register(ann, "ann")
            bob = await register(ann, "bob")
            await login(ann, "ann")
            sent = [(await ann.call("send", to=bob, text=str(i)))["message_id"] for i in range(50)]
            node.process.kill()  # SIGKILL right after the last ok
            with trio.fail_after(10):
                await node.process.wait()
        async with server_process(tmp_path, "--database", db) as again:
            async with connect("127.0.0.1", again.port) as c:
                reply = await login(c, "bob")
                assert reply["offline"] == 50
                got = [(await c.next_event())["message_id"] for _ in range(50)]
            assert got == sent
            assert await again.stop() == 0


async def test_no_flags_means_chat_db_in_the_working_directory(tmp_path: Path) -> None:
    env = chat_env(CHAT_PORT=str(free_port()))
    port = int(env["CHAT_PORT"])
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "chat", "serve"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        with trio.fail_after(PROCESS_START_SECONDS):
            while f"port {port}" not in log.read_text():
                assert process.returncode is None, log.read_text()
                await trio.sleep(0.05)
        assert (tmp_path / "chat.db").exists()
        async with connect("127.0.0.1", port) as c:
            assert await c.call("ping") == {"type": "ok"}
        process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=chat_env(),
        timeout=60,
        check=False,
    )


async def test_migrate_is_safe_when_two_nodes_start_together(tmp_path: Path) -> None:
    with mysql_database() as db:
        procs = [
            await trio.lowlevel.open_process(
                [sys.executable, "-m", "chat", "migrate", "--database", db],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=chat_env(),
            )
            for _ in range(3)
        ]
        codes = [await p.wait() for p in procs]
        assert codes == [0, 0, 0]
        dialect = dialect_for(db)
        conn = pymysql.connect(
            host="127.0.0.1",
            port=dialect.port,  # type: ignore[attr-defined]
            user=dialect.user,  # type: ignore[attr-defined]
            password=dialect.password,  # type: ignore[attr-defined]
            database=dialect.database,  # type: ignore[attr-defined]
        )
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT version FROM schema_migrations ORDER BY version")
                versions = [row[0] for row in cursor.fetchall()]
        finally:
            conn.close()
        assert versions == [version for version, _, _ in migration_files(dialect)]
        assert _run("migrate", "--database", db, cwd=tmp_path).returncode == 0


async def test_bad_settings_are_clear_errors_not_tracebacks(tmp_path: Path) -> None:
    cases = [
        ("serve", "--database", "postgres://nowhere/db"),
        ("serve", "--database", "mysql://root@127.0.0.1:1/nothing_listens_here"),
        ("serve", "--port", "70000"),
        ("migrate", "--database", "sqlite://relative-without-slash.db"),
    ]
    for args in cases:
        result = _run(*args, cwd=tmp_path)
        assert result.returncode in (1, 2), (args, result)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip(), args


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    async with server_process(tmp_path, "--database", f"sqlite:///{tmp_path / 'a.db'}") as first:
        result = _run(
            "serve",
            "--port",
            str(first.port),
            "--database",
            f"sqlite:///{tmp_path / 'b.db'}",
            cwd=tmp_path,
        )
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "address" in result.stderr.lower()
