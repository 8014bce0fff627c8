"""The login of a crowded account: size and time of the reply.

    scripts/bench-login [--database URL] [--redis URL] [--logins N] [--long-names]

(``python -m chat.bench.login`` in the checkout's .venv.)

One user with 5,000 friends and 50 groups of 2,000 members each (issue 11). The
fixture goes into a fresh database through ``chat-server import-users`` (a JSON
lines file; one password for every account, so it is hashed once); then a real
``chat-server serve`` process is started on it, and the user logs in and out N
times over TCP with its password, then N times with the session token the first
login gave (a token login skips the password check, so it shows what the lists,
presence and the reply cost on their own). Each login is timed from just before
the request is written to the moment the whole reply line has been read (so it
includes the server's work, the database, Redis if given, and the client's
read), and its size in bytes is the line's. Everything after the import goes
over the wire: the benchmark knows the server only by its protocol. Prints one
line per password login and a summary: p50, p90, max, and whether every reply
was within 65,536 bytes and the median under 200 ms. With ``--long-names``
every name is 50 characters of 4-byte UTF-8.

Settings: --database (default mysql://root@127.0.0.1:3306/chat_bench_login; the
database is dropped and made again), --redis (default: none, the in-process
broker; give one to include the cluster's presence lookups); --friends,
--groups, --members make the account smaller (tests) or larger.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chat.protocol import MAX_LINE_BYTES

from .local import free_port, fresh_database

REPO = Path(__file__).resolve().parent.parent.parent
FRIENDS = 5_000
GROUPS = 50
MEMBERS = 2_000
TARGET_MS = 200
PASSWORD = "bench-secret"
ME = "crowded"
IMPORT_USERS = [sys.executable, "-m", "chat", "import-users"]


def fixture(
    long_names: bool, friends: int = FRIENDS, groups: int = GROUPS, members: int = MEMBERS
) -> Iterator[dict[str, Any]]:
    """``import-users`` lines: the crowded user ``crowded``, its friends, its groups and
    their members (drawn from the friends; ``crowded`` in every group)."""

    def name(n: int) -> str:
        return f"{'😀' * 44}{n:06d}" if long_names else f"friend-{n:05d}"

    others = [name(n) for n in range(1, friends + 1)]
    yield {"name": ME, "password": PASSWORD, "friends": others}
    for other in others:
        yield {"name": other, "password": PASSWORD}
    for g in range(groups):
        creator = others[g * 97 % len(others)]
        start = g * 61 % len(others)
        chosen = {ME, creator}
        for k in range(len(others)):
            if len(chosen) >= members:
                break
            chosen.add(others[(start + k) % len(others)])
        yield {
            "group": f"{'😀' * 45}{g:05d}" if long_names else f"group-{g:03d}",
            "creator": creator,
            "members": sorted(chosen - {creator}),
            "description": "a crowded group",
        }


def fill(url: str, long_names: bool, **sizes: int) -> str:
    """A fresh database ``url`` with the fixture, written by ``chat-server import-users``
    (so the benchmark needs nothing of the server but its command line and protocol);
    returns what the import reported."""
    fresh_database(url)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".jsonl") as lines:
        for line in fixture(long_names, **sizes):
            lines.write(json.dumps(line, ensure_ascii=False) + "\n")
        lines.flush()
        done = subprocess.run(
            [*IMPORT_USERS, lines.name, "--database", url, "--log-level", "WARNING"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=_without_chat_settings(),
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"import-users failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip()


def _without_chat_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}


def read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def timed_logins(
    sock: socket.socket, buffer: bytearray, login: dict[str, Any], rounds: int, show: bool
) -> tuple[list[float], list[int], str | None]:
    """``rounds`` times log in with ``login`` and out again (keeping the token): the
    milliseconds and bytes of each reply, and the token the last one carried."""
    request = json.dumps(login).encode() + b"\n"
    times, sizes, token = [], [], None
    for n in range(rounds):
        began = time.perf_counter()
        sock.sendall(request)
        line = read_line(sock, buffer)
        elapsed = (time.perf_counter() - began) * 1000
        reply = json.loads(line)
        if reply.get("type") != "ok":
            raise RuntimeError(f"login refused: {reply}")
        token = reply.get("token")
        if show:
            marks = [k for k in ("friends_more", "groups_more") if k in reply]
            cut = sum(1 for g in reply["groups"] if g.get("members_more"))
            print(
                f"login {n + 1:2d}: {len(line):6d} bytes {elapsed:7.1f} ms  "
                f"{len(reply['friends'])} friends, {len(reply['groups'])} groups, "
                f"{sum(len(g['members']) for g in reply['groups'])} members shown; "
                f"marks: {', '.join(marks) or '-'}, {cut} groups members_more"
            )
        times.append(elapsed)
        sizes.append(len(line))
        sock.sendall(b'{"type":"logout"}\n')  # forget: false, the token stays valid
        read_line(sock, buffer)
    return times, sizes, token


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[max(0, int(len(ordered) * 0.9) - 1)]
    return (
        f"p50 {statistics.median(ordered):.1f} ms, p90 {p90:.1f} ms, max {ordered[-1]:.1f} ms"
        f" over {len(ordered)} logins"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database", default="mysql://root@127.0.0.1:3306/chat_bench_login")
    parser.add_argument("--redis", default=None)
    parser.add_argument("--logins", type=int, default=30)
    parser.add_argument("--long-names", action="store_true")
    parser.add_argument("--friends", type=int, default=FRIENDS)
    parser.add_argument("--groups", type=int, default=GROUPS)
    parser.add_argument("--members", type=int, default=MEMBERS)
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        imported = fill(
            args.database,
            args.long_names,
            friends=args.friends,
            groups=args.groups,
            members=args.members,
        )
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(
        f"fixture: {args.friends} friends, {args.groups} groups of {args.members} members,"
        f" written in {time.monotonic() - started:.1f} s by import-users: {imported}"
    )

    port = free_port()
    command = [sys.executable, "-m", "chat", "serve", "--port", str(port)]
    command += ["--database", args.database, "--log-level", "WARNING"]
    if args.redis:
        command += ["--redis", args.redis]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_without_chat_settings()
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        print(log.read().decode(errors="replace"), file=sys.stderr)
                        return 2
                    time.sleep(0.1)
            sock.settimeout(30)
            buffer = bytearray()
            with_password = {"type": "login", "name": ME, "password": PASSWORD}
            times, sizes, token = timed_logins(sock, buffer, with_password, args.logins, True)
            if token is None:
                print("the login reply carried no token", file=sys.stderr)
                return 2
            by_token, token_sizes, _ = timed_logins(
                sock, buffer, {"type": "login", "token": token}, args.logins, False
            )
            sock.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    sizes += token_sizes
    print(
        f"token logins (no password check): {summary(by_token)}; password check, by"
        f" difference of medians: {statistics.median(times) - statistics.median(by_token):.1f}"
        f" ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"reply: at most {max(sizes)} bytes (limit {MAX_LINE_BYTES}); "
        f"password logins: {summary(times)} (target: under {TARGET_MS} ms)"
    )
    within = max(sizes) <= MAX_LINE_BYTES and statistics.median(times) < TARGET_MS
    print("met" if within else "NOT met")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
