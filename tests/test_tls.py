"""TLS on the listeners (``--tls-cert``/``--tls-key``), end to end over real sockets.

A certificate authority is made at test time (``trustme``); the node's certificate
names 127.0.0.1 and localhost, and clients verify it against that authority, as they
would against a real one. Nodes run in-process where the test looks inside them
(counters, frames written), as ``chat-server`` processes where a signal or the
command line is the point (SIGHUP, chat-cli).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trustme

from chat.client import client_over, connect, connect_websocket, tls_context
from chat.server import Node
from chat.transports import LineStream, StreamClosed
from chat.transports.tls import Wire

from .cluster_support import (
    dial,
    nginx_proxy,
    nginx_tls_context,
    receive,
    run_nginx,
    two_nodes,
)
from .support import ServerProcess, chat_env, free_port, register, running_node, server_process
from .ws_support import render_web_conf

PASSWORD = "pa55-w0rd"
CLI = [sys.executable, "-m", "chat.cli.client"]
TIMEOUT = 30


class Pair:
    """A certificate and key for 127.0.0.1/localhost, as the files a node is given."""

    def __init__(self, ca: trustme.CA, directory: Path, name: str = "server") -> None:
        self.ca = ca
        self.cert = directory / f"{name}.pem"
        self.key = directory / f"{name}.key"
        self.ca_file = directory / f"{name}-ca.pem"
        issued = ca.issue_cert("127.0.0.1", "localhost")
        self.cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(self.key))
        ca.cert_pem.write_to_path(str(self.ca_file))

    def client_context(self) -> ssl.SSLContext:
        return tls_context(str(self.ca_file))


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(trustme.CA(), tmp_path)


@pytest.fixture
async def tls_node(pair: Pair, tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(
        f"sqlite:///{tmp_path / 'chat.db'}",
        ws_port=0,
        tls_cert=str(pair.cert),
        tls_key=str(pair.key),
        login_timeout_seconds=1.0,
    ) as node:
        yield node


async def test_v1_over_tls_tcp_and_wss(tls_node: Node, pair: Pair) -> None:
    context = pair.client_context()
    wss = f"wss://localhost:{tls_node.ws_ports[0]}/"
    async with (
        connect("127.0.0.1", tls_node.ports[0], ssl_context=context) as tcp,
        connect_websocket(wss, ssl_context=context) as ws,
    ):
        alice = await register(tcp, "alice", PASSWORD)
        bob = await register(ws, "bob", PASSWORD)
        await tcp.call("login", name="alice", password=PASSWORD)
        await ws.call("login", name="bob", password=PASSWORD)
        await tcp.call("send", to=bob, text="over tls")
        event = await ws.next_event()
        while event.get("type") != "message":
            event = await ws.next_event()
        assert (event["from"]["id"], event["text"]) == (alice, "over tls"), event
        await ws.call("send", to=alice, text="over wss")
        event = await tcp.next_event()
        while event.get("type") != "message":
            event = await tcp.next_event()
        assert (event["from"]["id"], event["text"]) == (bob, "over wss"), event


async def test_a_client_that_does_not_trust_the_authority_is_refused(
    tls_node: Node, tmp_path: Path
) -> None:
    stranger = Pair(trustme.CA(), tmp_path, "stranger")
    with pytest.raises(trio.BrokenResourceError) as refused:
        async with connect("127.0.0.1", tls_node.ports[0], ssl_context=stranger.client_context()):
            pass
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


async def test_plain_text_on_the_tls_port_is_closed_and_others_go_on(
    tls_node: Node, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with connect("127.0.0.1", tls_node.ports[0], ssl_context=pair.client_context()) as c:
        await register(c, "carol", PASSWORD)
        plain = await trio.open_tcp_stream("127.0.0.1", tls_node.ports[0])
        await plain.send_all(b'{"type": "login", "name": "carol", "password": "x"}\n')
        with trio.fail_after(5):
            received = b""
            try:
                while chunk := await plain.receive_some(4096):
                    received += chunk
            except trio.BrokenResourceError:
                pass  # a reset is a close too
        await plain.aclose()
        assert b"{" not in received  # no reply in plain text: at most a TLS alert
        # The TLS client did not notice.
        reply = await c.call("login", name="carol", password=PASSWORD)
        assert reply["type"] == "ok"
    refused = tls_node.services.metrics.connections_refused.labels("tls_handshake")
    assert refused._value.get() == 1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


async def test_a_stalled_handshake_is_closed_by_the_login_timeout(tls_node: Node) -> None:
    silent = await trio.open_tcp_stream("127.0.0.1", tls_node.ports[0])
    started = trio.current_time()
    with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
        assert await silent.receive_some(4096) == b""
    waited = trio.current_time() - started
    assert 0.9 <= waited < 5, waited  # the login timeout is 1 s
    await silent.aclose()


async def test_the_login_timeout_counts_from_the_accept(pair: Pair, tmp_path: Path) -> None:
    """A client that takes most of the login timeout to start its handshake gets only
    the rest of it to log in: connect, handshake and login share one deadline."""
    async with running_node(
        f"sqlite:///{tmp_path / 'chat.db'}",
        tls_cert=str(pair.cert),
        tls_key=str(pair.key),
        login_timeout_seconds=2.0,
    ) as node:
        raw = await trio.open_tcp_stream("127.0.0.1", node.ports[0])
        connected = trio.current_time()
        await trio.sleep(1.5)
        tls = trio.SSLStream(raw, pair.client_context(), server_hostname="localhost")
        with trio.fail_after(5):
            await tls.do_handshake()  # within the 0.5 s left
        received = b""
        with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
            while chunk := await tls.receive_some(4096):
                received += chunk
        waited = trio.current_time() - connected
        await trio.aclose_forcefully(tls)
    assert b"login_timeout" in received, received
    # 2 s from the connect (and the watchdog's quarter period), not 2 s from the handshake.
    assert 1.9 <= waited < 3.0, waited


class _HeaderFirst(trio.abc.Stream):
    """A TCP stream whose first write carries ``header`` in front: the PROXY header and
    the ClientHello in one segment, as a proxy may send them."""

    def __init__(self, stream: trio.abc.Stream, header: bytes) -> None:
        self.stream = stream
        self.header = header

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data, self.header = self.header + bytes(data), b""
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_a_proxy_protocol_header_before_the_tls_handshake(
    pair: Pair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--proxy-protocol`` with TLS (a TCP proxy in front that passes TLS through): the
    header in plain text, then the handshake; the node names the proxied client. The
    header alone in its first write, and glued to the ClientHello in one."""
    caplog.set_level(logging.INFO, logger="chat.server.session")
    async with running_node(
        f"sqlite:///{tmp_path / 'chat.db'}",
        tls_cert=str(pair.cert),
        tls_key=str(pair.key),
        proxy_protocol=True,
    ) as node:
        port = node.ports[0]
        alone = await trio.open_tcp_stream("127.0.0.1", port)
        await alone.send_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 6000\r\n")
        glued = _HeaderFirst(
            await trio.open_tcp_stream("127.0.0.1", port),
            b"PROXY TCP4 203.0.113.8 127.0.0.1 40002 6000\r\n",
        )
        for name, raw in (("kim", alone), ("lee", glued)):
            tls = trio.SSLStream(raw, pair.client_context(), server_hostname="localhost")
            async with client_over(tls) as c:
                await register(c, name, PASSWORD)
                reply = await c.call("login", name=name, password=PASSWORD)
                assert reply["type"] == "ok", reply
        # Straight to TLS without the header: refused, no session.
        bare = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(bare, pair.client_context(), server_hostname="localhost")
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await tls.do_handshake()
        await trio.aclose_forcefully(tls)
        refused = node.services.metrics.connections_refused.labels("proxy_header")
        assert refused._value.get() == 1
    opened = [r.getMessage() for r in caplog.records if "connection opened" in r.getMessage()]
    assert len(opened) == 2, opened
    assert opened[0].startswith("connection opened: 203.0.113.7:40001 via 127.0.0.1:"), opened
    assert opened[1].startswith("connection opened: 203.0.113.8:40002 via 127.0.0.1:"), opened


@pytest.mark.parametrize("wired", [False, True], ids=["send_all each", "wire batch"])
async def test_a_write_cut_off_counts_only_the_frames_that_left(pair: Pair, wired: bool) -> None:
    """Over TLS a frame counts as written only once all of it left: the peer, reading
    everything that arrived, finds exactly ``frames_sent`` whole frames. Over any TLS
    stream (a write per frame) and over the node's ``Wire`` (the frames' records held,
    then put on the socket in one go, counted by the bytes the kernel took)."""
    server_sock, client_sock = trio.socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 16_384)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 16_384)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(pair.cert), str(pair.key))
    server_stream = trio.SocketStream(server_sock)
    transport: trio.abc.Stream = Wire(server_stream, server_stream) if wired else server_stream
    server_tls = trio.SSLStream(transport, server_context, server_side=True)
    client_tls = trio.SSLStream(
        trio.SocketStream(client_sock), pair.client_context(), server_hostname="localhost"
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_tls.do_handshake)
        await client_tls.do_handshake()
    line = LineStream(server_tls, "test")
    frames = [b"x" * 999 for _ in range(2_000)]  # 2 MB: far more than the buffers hold
    with trio.move_on_after(0.5) as cut:
        await line.send(frames)  # nobody reads: the write stalls
    assert cut.cancelled_caught
    assert 0 < line.frames_sent < len(frames)
    if wired:  # cut off: later writes fail at once, none goes out after the cut
        with pytest.raises(StreamClosed):
            await line.send([b"after the cut"])
    await server_tls.transport_stream.aclose()
    received = b""
    with trio.fail_after(10):
        try:
            while chunk := await client_tls.receive_some(65_536):
                received += chunk
        except trio.BrokenResourceError:
            pass  # no close_notify: the write was cut
    assert received.count(b"\n") == line.frames_sent
    await client_tls.aclose()


async def test_chat_bench_over_tls_delivers_every_message(pair: Pair, tmp_path: Path) -> None:
    """The burst scenario over TLS: every message delivered once (the writer's count of
    frames written, a write per frame under TLS, stays exact), the server verified."""
    async with running_node(
        f"sqlite:///{tmp_path / 'bench.db'}", tls_cert=str(pair.cert), tls_key=str(pair.key)
    ) as node:  # the default login timeout: registering hashes passwords, which takes time
        result = await trio.run_process(
            [
                *(sys.executable, "-m", "chat.bench.cli", "--ports", str(node.ports[0])),
                *("--tls", "--ca-file", str(pair.ca_file), "--scenario", "burst"),
                *("--users", "4", "--messages", "50", "--prefix", f"tls{os.getpid()}"),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    burst = json.loads(result.stdout.decode().splitlines()[-1])["results"]["burst"]
    assert burst["sent"] == burst["delivered"] == 4 * 50, burst
    assert burst["unanswered"] == burst["send_errors"] == 0


# --- chat-server processes -------------------------------------------------------


def _cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        **chat_env(),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


def run_cli(tmp_path: Path, commands: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=commands,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_cli_env(tmp_path),
        check=False,
    )


@pytest.fixture
def served(pair: Pair, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``chat-server serve`` with TLS (a blocking process for chat-cli's blocking runs)."""
    log = tmp_path / "server.log"
    args = [sys.executable, "-m", "chat", "serve", "--port", "0"]
    args += ["--database", f"sqlite:///{tmp_path / 'chat.db'}"]
    env = {**chat_env(), "CHAT_TLS_CERT": str(pair.cert), "CHAT_TLS_KEY": str(pair.key)}
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        port = _port_from(log, process)
        yield process, port
    finally:
        process.terminate()
        process.wait(10)


def _port_from(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + TIMEOUT
    while True:
        text = log.read_text(errors="replace")
        found = re.search(r"listening on \S+ port (\d+) with TLS", text)
        if found:
            return int(found.group(1))
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"chat-server did not start:\n{text}")
        time.sleep(0.05)


def test_chat_cli_over_tls_verifies_the_server(
    served: tuple[subprocess.Popen[bytes], int], pair: Pair, tmp_path: Path
) -> None:
    _, port = served
    done = run_cli(
        tmp_path,
        f"/register dana {PASSWORD}\n/register eve {PASSWORD}\n/login dana {PASSWORD}\n"
        "/friend eve\n/msg eve hello\n",
        "--tls",
        "--ca-file",
        str(pair.ca_file),
        "--port",
        str(port),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "* logged in as dana" in done.stdout
    # tls://HOST:PORT says the same; eve gets the message kept for her.
    received = run_cli(
        tmp_path,
        f"/login eve {PASSWORD}\n",
        "--ca-file",
        str(pair.ca_file),
        "--url",
        f"tls://localhost:{port}",
    )
    assert received.returncode == 0, received.stderr
    assert "dana: hello" in received.stdout


def test_chat_cli_refuses_an_unknown_authority_unless_insecure(
    served: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    _, port = served
    refused = run_cli(tmp_path, f"/register fay {PASSWORD}\n", "--tls", "--port", str(port))
    assert refused.returncode == 3, refused
    assert "certificate is not trusted" in refused.stderr, refused.stderr
    assert "--ca-file" in refused.stderr
    insecure = run_cli(
        tmp_path, f"/register fay {PASSWORD}\n", "--tls", "--insecure", "--port", str(port)
    )
    assert insecure.returncode == 0, insecure.stderr
    assert "WARNING: --insecure" in insecure.stderr
    assert "NOT checked" in insecure.stderr
    assert "* registered fay" in insecure.stdout
    # A plain client on the TLS port: no conversation, and a clean failure.
    plain = run_cli(tmp_path, f"/register gus {PASSWORD}\n", "--port", str(port))
    assert plain.returncode == 3, plain
    assert "Traceback" not in plain.stderr


async def _peer_certificate(port: int, ca_file: Path) -> dict[str, object]:
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=tls_context(str(ca_file))
    )
    await stream.do_handshake()
    certificate = stream.getpeercert()
    await stream.aclose()
    assert certificate is not None
    return dict(certificate)


async def _logged(server: ServerProcess, text: str) -> None:
    """Until the server's log says ``text`` (a log file: nothing to wait on but time)."""
    with trio.fail_after(10):
        while text not in server.output():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_sighup_reloads_the_certificate(tmp_path: Path) -> None:
    first = Pair(trustme.CA(), tmp_path, "first")
    second = Pair(trustme.CA(), tmp_path, "second")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(first.cert.read_bytes())
    live_key.write_bytes(first.key.read_bytes())
    args = ["--database", f"sqlite:///{tmp_path / 'chat.db'}"]
    args += ["--tls-cert", str(live_cert), "--tls-key", str(live_key)]
    async with server_process(tmp_path, *args) as server:
        before = await _peer_certificate(server.port, first.ca_file)
        async with connect("127.0.0.1", server.port, ssl_context=first.client_context()) as kept:
            # Renewed: new files in place (a broken pair first: it is refused, and kept).
            live_cert.write_bytes(b"not a certificate")
            server.process.send_signal(signal.SIGHUP)
            await _logged(server, "cannot reload the TLS certificate")
            assert await _peer_certificate(server.port, first.ca_file) == before
            live_cert.write_bytes(second.cert.read_bytes())
            live_key.write_bytes(second.key.read_bytes())
            server.process.send_signal(signal.SIGHUP)
            await _logged(server, "reloaded the TLS certificate")
            after = await _peer_certificate(server.port, second.ca_file)
            assert after["issuer"] != before["issuer"]
            assert after["serialNumber"] != before["serialNumber"]
            # The connection made before the reload goes on with the old certificate.
            await register(kept, "hal", PASSWORD)
        with pytest.raises(trio.BrokenResourceError):
            await _peer_certificate(server.port, first.ca_file)
        assert await server.stop() == 0
        assert "Traceback" not in server.output()


async def test_sighup_reaches_the_workers(mysql_url: str, redis_url: str, tmp_path: Path) -> None:
    """``serve --workers 2`` with TLS: SIGHUPs to the parent while its workers start do
    not kill them (they start with SIGHUP ignored until they listen for it), and once
    they run, a SIGHUP after new files are in place reaches both: every new connection,
    whichever worker the kernel gives it to, gets the new certificate."""
    first = Pair(trustme.CA(), tmp_path, "first")
    second = Pair(trustme.CA(), tmp_path, "second")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(first.cert.read_bytes())
    live_key.write_bytes(first.key.read_bytes())
    port = free_port()
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [
                *(sys.executable, "-m", "chat", "serve", "--port", str(port), "--workers", "2"),
                *("--host", "127.0.0.1", "--node-id", "node"),
                *("--database", mysql_url, "--redis", redis_url, "--log-level", "INFO"),
                *("--tls-cert", str(live_cert), "--tls-key", str(live_key)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=chat_env(),
        )
    try:
        with trio.fail_after(120):
            while "starting 2 workers" not in log.read_text():
                assert process.returncode is None, log.read_text()
                await trio.sleep(0.01)
            hangups = 0
            while "all 2 workers ready" not in log.read_text():
                assert process.returncode is None, log.read_text()
                process.send_signal(signal.SIGHUP)  # as the workers import, migrate, bind
                hangups += 1
                await trio.sleep(0.05)
        text = log.read_text()
        assert hangups >= 5, hangups
        assert "exited" not in text, text
        assert await _peer_certificate(port, first.ca_file)
        # The SIGHUPs held back for a starting worker are passed on as it becomes
        # ready: let those reloads finish (the log still for a second) first.
        with trio.fail_after(30):
            quiet, seen = trio.current_time(), log.read_text()
            while trio.current_time() - quiet < 1:
                await trio.sleep(0.1)
                if (now := log.read_text()) != seen:
                    quiet, seen = trio.current_time(), now
        live_cert.write_bytes(second.cert.read_bytes())
        live_key.write_bytes(second.key.read_bytes())
        offset = len(log.read_text())
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            for worker in ("node-w1", "node-w2"):
                pattern = re.compile(rf"\[{worker}\] .*reloaded the TLS certificate")
                while not pattern.search(log.read_text()[offset:]):  # noqa: ASYNC110
                    await trio.sleep(0.05)
        for _ in range(10):  # SO_REUSEPORT spreads these over both workers
            with pytest.raises(trio.BrokenResourceError):
                await _peer_certificate(port, first.ca_file)
            assert await _peer_certificate(port, second.ca_file)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
        assert "Traceback" not in log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- the cluster behind nginx's TLS ----------------------------------------------


async def test_the_cluster_through_nginx_tls(
    mysql_url: str, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipped nginx config terminates TLS: protocol v1 on the stream port (the
    PROXY protocol still names the client to the nodes), the page and /ws over HTTPS."""
    caplog.set_level(logging.INFO, logger="chat.server.session")
    https_port = free_port()
    async with (
        two_nodes(mysql_url, redis_url, proxy_protocol=True, ws_port=0) as (a, b),
        nginx_proxy((a.ports[0], b.ports[0]), tmp_path / "stream") as port,
        run_nginx(
            render_web_conf(free_port(), (a.ws_ports[0], b.ws_ports[0]), https_port),
            tmp_path / "web",
        ),
    ):
        wss = f"wss://localhost:{https_port}/ws"
        async with (
            dial(port, tls=True) as tcp,
            connect_websocket(wss, ssl_context=nginx_tls_context()) as ws,
        ):
            ivy = await register(tcp, "ivy", PASSWORD)
            jay = await register(ws, "jay", PASSWORD)
            await tcp.call("login", name="ivy", password=PASSWORD)
            await ws.call("login", name="jay", password=PASSWORD)
            await tcp.call("send", to=jay, text="through nginx")
            assert (await receive(ws, "message"))["text"] == "through nginx"
            await ws.call("send", to=ivy, text="and back")
            assert (await receive(tcp, "message"))["text"] == "and back"
        # Plain text on nginx's TLS port: no chat, only nginx's refusal.
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(b'{"type": "login", "name": "ivy", "password": "x"}\n')
        with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
            while chunk := await plain.receive_some(4096):
                assert b'"type"' not in chunk
        await plain.aclose()
        # The page itself over HTTPS, verified.
        page = await trio.open_ssl_over_tcp_stream(
            "localhost", https_port, ssl_context=nginx_tls_context()
        )
        await page.send_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        body = b""
        with trio.fail_after(10), contextlib.suppress(trio.BrokenResourceError):
            while part := await page.receive_some(65_536):
                body += part
        assert body.startswith(b"HTTP/1.1 200"), body[:200]
        assert b"<html" in body.lower()
    opened = [r.getMessage() for r in caplog.records if "connection opened" in r.getMessage()]
    assert any(" via 127.0.0.1:" in line for line in opened), opened
